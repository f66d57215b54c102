"""The SHOW subcommands: each one's columns (names, order and types as PgDoorman 3.10 sends them) and the
builder that fills the rows from an observation snapshot. Builders only read (through pgdoorman.observe)
and return a ResultSet; rendering to the wire is resultset.render's job.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pgdoorman import __version__, logs
from pgdoorman.admin.parser import SHOW_SUBCOMMANDS
from pgdoorman.admin.resultset import INT4, NUMERIC, TEXT, Cell, ResultSet
from pgdoorman.core.stats import percentile
from pgdoorman.observe import ClientInfo, Observer, Snapshot, StatementInfo, StatsSampler, sockets

Columns = list[tuple[str, int]]

POOLS_COLUMNS: Columns = [
    ("database", TEXT), ("user", TEXT), ("pool_mode", TEXT),
    ("cl_idle", NUMERIC), ("cl_active", NUMERIC), ("cl_waiting", NUMERIC), ("cl_cancel_req", NUMERIC),
    ("sv_active", NUMERIC), ("sv_idle", NUMERIC), ("sv_used", NUMERIC), ("sv_login", NUMERIC),
    ("pool_size", NUMERIC), ("maxwait", NUMERIC), ("maxwait_us", NUMERIC), ("avg_xact_time", NUMERIC),
    ("paused", NUMERIC), ("fallback_active", NUMERIC), ("oldest_active_age_ms", NUMERIC),
]
POOLS_EXTENDED_COLUMNS: Columns = [
    ("database", TEXT), ("user", TEXT),
    ("cl_active", NUMERIC), ("cl_waiting", NUMERIC),
    ("sv_active", NUMERIC), ("sv_idle", NUMERIC), ("sv_used", NUMERIC), ("sv_login", NUMERIC),
    ("maxwait", NUMERIC), ("maxwait_us", NUMERIC), ("pool_mode", TEXT),
    ("bytes_recieved", NUMERIC),  # sic: PgDoorman's spelling, kept for scripts that parse it
    ("bytes_sent", NUMERIC),
    ("query_0.99", NUMERIC), ("transaction_0.99", NUMERIC),
    ("query_0.95", NUMERIC), ("transaction_0.95", NUMERIC),
    ("query_0.5", NUMERIC), ("transaction_0.5", NUMERIC),
]
POOLS_MEMORY_COLUMNS: Columns = [
    ("database", TEXT), ("user", TEXT),
    ("pool_prepared_count", NUMERIC), ("pool_prepared_bytes", NUMERIC),
    ("client_prepared_count", NUMERIC), ("client_prepared_bytes", NUMERIC),
    ("client_named_count", NUMERIC), ("client_anonymous_count", NUMERIC),
    ("client_anonymous_evictions_alive", NUMERIC), ("async_clients", NUMERIC),
]
INTERNER_COLUMNS: Columns = [("kind", TEXT), ("entries", NUMERIC), ("bytes", NUMERIC)]
INTERNER_TOP_COLUMNS: Columns = [("hash", TEXT), ("kind", TEXT), ("bytes", NUMERIC), ("idle_ms", NUMERIC),
                                 ("query", TEXT)]
CLIENTS_COLUMNS: Columns = [
    ("client_id", TEXT), ("database", TEXT), ("user", TEXT), ("application_name", TEXT), ("addr", TEXT),
    ("tls", TEXT), ("state", TEXT), ("wait", TEXT),
    ("transaction_count", NUMERIC), ("query_count", NUMERIC), ("error_count", NUMERIC), ("age_seconds", NUMERIC),
    ("pinned", TEXT),
]
SERVERS_COLUMNS: Columns = [
    ("server_id", TEXT), ("server_process_id", TEXT), ("database_name", TEXT), ("user", TEXT),
    ("application_name", TEXT), ("tls", TEXT), ("state", TEXT), ("wait", TEXT),
    ("transaction_count", NUMERIC), ("query_count", NUMERIC), ("bytes_sent", NUMERIC), ("bytes_received", NUMERIC),
    ("age_seconds", NUMERIC), ("prepare_cache_hit", NUMERIC), ("prepare_cache_miss", NUMERIC),
    ("prepare_cache_size", NUMERIC), ("pinned", TEXT),
]
STATS_COLUMNS: Columns = [
    ("database", TEXT), ("user", TEXT),
    ("total_xact_count", NUMERIC), ("total_query_count", NUMERIC), ("total_received", NUMERIC),
    ("total_sent", NUMERIC), ("total_xact_time", NUMERIC), ("total_query_time", NUMERIC),
    ("total_wait_time", NUMERIC), ("total_errors", NUMERIC),
    ("avg_xact_count", NUMERIC), ("avg_query_count", NUMERIC), ("avg_recv", NUMERIC), ("avg_sent", NUMERIC),
    ("avg_errors", NUMERIC), ("avg_xact_time", NUMERIC), ("avg_query_time", NUMERIC), ("avg_wait_time", NUMERIC),
]
DATABASES_COLUMNS: Columns = [
    ("name", TEXT), ("host", TEXT), ("port", TEXT), ("database", TEXT), ("force_user", TEXT),
    ("pool_size", INT4), ("min_pool_size", INT4), ("reserve_pool", INT4), ("pool_mode", TEXT),
    ("max_connections", INT4), ("current_connections", INT4),
]
USERS_COLUMNS: Columns = [("name", TEXT), ("pool_mode", TEXT)]
CONFIG_COLUMNS: Columns = [("key", TEXT), ("value", TEXT), ("default", TEXT), ("changeable", TEXT)]
CONNECTIONS_COLUMNS: Columns = [
    ("total", NUMERIC), ("errors", NUMERIC), ("tls", NUMERIC), ("plain", NUMERIC), ("cancel", NUMERIC),
]
LISTS_COLUMNS: Columns = [("list", TEXT), ("items", INT4)]
PREPARED_STATEMENTS_COLUMNS: Columns = [
    ("pool", TEXT), ("hash", NUMERIC), ("name", TEXT), ("query", TEXT), ("count_used", NUMERIC), ("kind", TEXT),
]
# One row: the process's sockets by kind and state (observe/sockets.py).
SOCKETS_COLUMNS: Columns = [(name, NUMERIC) for name in sockets.COLUMNS]
POOL_COORDINATOR_COLUMNS: Columns = [
    ("database", TEXT), ("max_db_conn", NUMERIC), ("current", NUMERIC), ("reserve_size", NUMERIC),
    ("reserve_used", NUMERIC), ("evictions", NUMERIC), ("reserve_acq", NUMERIC), ("exhaustions", NUMERIC),
]
POOL_SCALING_COLUMNS: Columns = [
    ("user", TEXT), ("database", TEXT), ("inflight", NUMERIC), ("creates", NUMERIC), ("gate_waits", NUMERIC),
    ("gate_budget_ex", NUMERIC), ("antic_notify", NUMERIC), ("antic_timeout", NUMERIC),
    ("create_fallback", NUMERIC), ("replenish_def", NUMERIC),
]
HELP_COLUMNS: Columns = [("item", TEXT)]
LOG_LEVEL_COLUMNS: Columns = [("log_level", TEXT)]
VERSION_COLUMNS: Columns = [("version", TEXT)]
STARTUP_PARAMETERS_COLUMNS: Columns = [
    ("user", TEXT), ("database", TEXT), ("parameter", TEXT), ("value", TEXT), ("source", TEXT), ("state", TEXT),
]
# One row per pool with a LISTEN connection (transaction mode LISTEN/NOTIFY, core/listen.py).
LISTENERS_COLUMNS: Columns = [
    ("user", TEXT), ("database", TEXT), ("state", TEXT), ("server_pid", NUMERIC), ("channels", NUMERIC),
    ("clients", NUMERIC), ("connects", NUMERIC), ("failures", NUMERIC), ("received", NUMERIC),
    ("delivered", NUMERIC), ("overflows", NUMERIC), ("removed", NUMERIC),
]
AUTH_QUERY_COLUMNS: Columns = [
    ("database", TEXT), ("cache_entries", NUMERIC), ("cache_hits", NUMERIC), ("cache_misses", NUMERIC),
    ("cache_refetches", NUMERIC), ("cache_rate_limited", NUMERIC), ("auth_success", NUMERIC),
    ("auth_failure", NUMERIC), ("executor_queries", NUMERIC), ("executor_errors", NUMERIC),
    ("dynamic_pools_current", NUMERIC), ("dynamic_pools_created", NUMERIC), ("dynamic_pools_destroyed", NUMERIC),
]

HELP_ITEMS = (
    "SHOW HELP|CONFIG|DATABASES|POOLS|POOLS_EXTENDED|POOLS_MEMORY|PREPARED_STATEMENTS|CLIENTS|SERVERS|USERS|VERSION",
    "SHOW LISTS",
    "SHOW SOCKETS",
    "SHOW CONNECTIONS",
    "SHOW STATS",
    "SHOW LOG_LEVEL",
    "SHOW AUTH_QUERY",
    "SHOW STARTUP_PARAMETERS",
    "SHOW LISTENERS",
    "SHOW POOL_COORDINATOR",
    "SHOW POOL_SCALING",
    "SHOW INTERNER [n]",
    "SET log_level = '<level>'",
    "RELOAD",
    "SHUTDOWN",
    "UPGRADE",
    "PAUSE [db]",
    "RESUME [db]",
    "RECONNECT [db]",
    "KILL <db>",
    "RESET INTERNER",
)

# Settings that only a restart (or binary upgrade) applies: SHOW CONFIG says changeable = no.
RESTART_ONLY = frozenset({
    "host", "port", "backlog", "unix_socket_dir", "unix_socket_mode", "worker_threads",
    "worker_cpu_affinity_pinning", "worker_stack_size", "max_blocking_threads", "tokio_global_queue_interval",
    "tokio_event_interval", "query_interner_gc_interval_seconds", "tls_certificate", "tls_private_key",
    "tls_ca_cert", "tls_mode",
    "daemon_pid_file", "web.host", "web.port", "web.enabled",
})
SECRET_KEYS = frozenset({"admin_password", "server_password", "password"})


def version_string() -> str:
    return f"PgDoorman {__version__} (pgdoorman, Python {sys.version_info[0]}.{sys.version_info[1]})"


@dataclass
class ShowContext:
    """What the builders read: the observer, one lazily taken snapshot shared by a Query's statements, and
    the stats sampler."""

    obs: Observer
    _snap: Snapshot | None = None

    @property
    def snap(self) -> Snapshot:
        if self._snap is None:
            self._snap = self.obs.snapshot()
        return self._snap

    @property
    def sampler(self) -> StatsSampler:
        return self.obs.sampler


# ------------------------------------------------------------------------------------------ builders
def show_help(ctx: ShowContext) -> ResultSet:
    return ResultSet(HELP_COLUMNS, [[item] for item in HELP_ITEMS])


def show_version(ctx: ShowContext) -> ResultSet:
    return ResultSet(VERSION_COLUMNS, [[version_string()]])


def show_log_level(ctx: ShowContext) -> ResultSet:
    return ResultSet(LOG_LEVEL_COLUMNS, [[logs.current_filter()]])


def split_maxwait(us: int) -> tuple[int, int]:
    """PgBouncer's maxwait (whole seconds) and maxwait_us (the microseconds part)."""
    return us // 1_000_000, us % 1_000_000


def show_pools(ctx: ShowContext) -> ResultSet:
    rows: list[list[Cell]] = []
    now = time.monotonic()
    for v in ctx.snap.pools:
        p = v.info
        secs, us = split_maxwait(v.maxwait_us)
        avg = ctx.sampler.averages_for(v.key, ctx.obs.totals(v.key), now)
        rows.append([
            p.database, p.user, p.mode,
            v.cl_idle, v.cl_active, v.cl_waiting, 0,
            v.sv_active, v.sv_idle, v.sv_used, v.sv_login,
            p.pool_size, secs, us, avg.xact_time,
            1 if p.paused else 0, 1 if p.fallback_active else 0, v.oldest_active_age_ms,
        ])
    return ResultSet(POOLS_COLUMNS, rows)


def show_pools_extended(ctx: ShowContext) -> ResultSet:
    rows: list[list[Cell]] = []
    for v in ctx.snap.pools:
        p = v.info
        t = ctx.obs.totals(v.key)
        (qc, qn, _), (xc, xn, _), _ = t.hists
        q = [int(percentile(qc, qn, x)) for x in (0.99, 0.95, 0.5)]
        x = [int(percentile(xc, xn, x_)) for x_ in (0.99, 0.95, 0.5)]
        rows.append([
            p.database, p.user, v.cl_active, v.cl_waiting,
            v.sv_active, v.sv_idle, v.sv_used, v.sv_login,
            v.maxwait_us / 1_000_000, v.maxwait_us % 1_000_000, p.mode,
            t.bytes_in, t.bytes_out,
            q[0], x[0], q[1], x[1], q[2], x[2],
        ])
    return ResultSet(POOLS_EXTENDED_COLUMNS, rows)


def show_pools_memory(ctx: ShowContext) -> ResultSet:
    rows: list[list[Cell]] = []
    for v in ctx.snap.pools:
        pv = ctx.obs.prepared(v)
        # Flush-based "async" clients are not tracked (they get no per-session names here).
        rows.append([v.info.database, v.info.user, pv.pool_entries, pv.pool_bytes, pv.client_entries,
                     pv.client_bytes, pv.client_named, pv.client_anonymous, pv.client_anon_evicted, 0])
    return ResultSet(POOLS_MEMORY_COLUMNS, rows)


def show_prepared_statements(ctx: ShowContext) -> ResultSet:
    rows: list[list[Cell]] = []
    for v in ctx.snap.pools:
        named_ids: set[int] = set()
        unnamed_ids: set[int] = set()
        for c in v.clients:
            named_ids.update(c.ps_named)
            unnamed_ids.update(c.ps_anon)
        for st in ctx.obs.statements(v.key):
            kind = st.kind
            if kind is None:
                # How connected clients refer to it now ('' when none does).
                n, a = st.ident in named_ids, st.ident in unnamed_ids
                kind = "mixed" if n and a else "named" if n else "anonymous" if a else ""
            rows.append([v.info.name, st.hash, st.name, st.query, st.uses, kind])
    return ResultSet(PREPARED_STATEMENTS_COLUMNS, rows)


def _interned(ctx: ShowContext) -> list[StatementInfo]:
    """Every pool's cached statements: a query text is one object, held by its pool's cache entry."""
    return [st for v in ctx.snap.pools for st in ctx.obs.statements(v.key)]


def show_interner(ctx: ShowContext) -> ResultSet:
    """The query texts of the pools' statement caches (PgDoorman's query interner): rows `named` (some client
    prepared it under a name) and `anonymous` (only ever unnamed: dropped once idle past
    query_interner_anon_idle_ttl_seconds)."""
    sums = {"named": [0, 0], "anonymous": [0, 0]}
    for st in _interned(ctx):
        row = sums["named" if st.named else "anonymous"]
        row[0] += 1
        row[1] += st.text_bytes
    return ResultSet(INTERNER_COLUMNS, [[k, n, b] for k, (n, b) in sums.items()])


def show_interner_top(ctx: ShowContext, n: int) -> ResultSet:
    """SHOW INTERNER <n>: the n largest texts."""
    top = sorted(_interned(ctx), key=lambda st: -st.text_bytes)[:n]
    return ResultSet(INTERNER_TOP_COLUMNS, [
        [f"{st.hash:016x}", "named" if st.named else "anonymous", st.text_bytes, st.idle_ms, st.query[:120]]
        for st in top])


def client_host(addr: str) -> str:
    """The IP part of 'ip:port' ('unix' stays 'unix'); IPv6 keeps its colons."""
    if addr.startswith("["):
        return addr[1 : addr.find("]")] if "]" in addr else addr
    host, sep, port = addr.rpartition(":")
    if sep and port.isdigit():
        return host
    return addr


def client_wait(c: ClientInfo) -> str:
    """PgDoorman's wait column: a queued client waits on nothing ('idle'); otherwise the pooler is
    reading from it, or writing when output is queued for it."""
    if c.state == "waiting":
        return "idle"
    return "write" if c.writing else "read"


def show_clients(ctx: ShowContext) -> ResultSet:
    rows: list[list[Cell]] = []
    wall = ctx.snap.wall
    for c in ctx.snap.clients:
        if c.state == "login":
            continue
        rows.append([
            c.id, c.database, c.user, c.application_name, client_host(c.addr),
            "true" if c.tls else "false", c.state, client_wait(c),
            c.xact_count, c.query_count, c.error_count, max(0, int(wall - c.connect_time)), c.pinned,
        ])
    return ResultSet(CLIENTS_COLUMNS, rows)


def show_servers(ctx: ShowContext) -> ResultSet:
    rows: list[list[Cell]] = []
    now = ctx.snap.taken
    for s in ctx.snap.servers:
        st = s.state
        if st == "closed":
            continue
        wait = "write" if s.writing else ("read" if st == "active" else "idle")
        rows.append([
            f"0x{s.id:08X}", str(s.pid), s.pool[0], s.pool[1], s.application_name,
            "true" if s.tls else "false", st, wait,
            s.xact_count, s.query_count, s.bytes_out, s.bytes_in, max(0, int(now - s.created)),
            s.ps_hits, s.ps_misses, s.ps_cached, s.pinned,
        ])
    return ResultSet(SERVERS_COLUMNS, rows)


def show_stats(ctx: ShowContext) -> ResultSet:
    rows: list[list[Cell]] = []
    now = time.monotonic()
    for p in ctx.obs.pools():
        t = ctx.obs.totals(p.key)
        a = ctx.sampler.averages_for(p.key, t, now)
        rows.append([
            p.database, p.user,
            t.xact_count, t.query_count, t.bytes_in, t.bytes_out, t.xact_time_us, t.query_time_us,
            t.wait_time_us, t.errors,
            a.xact_count, a.query_count, a.recv, a.sent, a.errors, a.xact_time, a.query_time, a.wait_time,
        ])
    return ResultSet(STATS_COLUMNS, rows)


def show_databases(ctx: ShowContext) -> ResultSet:
    rows: list[list[Cell]] = []
    for p in ctx.obs.pools():
        rows.append([
            p.database, p.server_host, str(p.server_port), p.server_database, p.user,
            p.pool_size, p.min_pool_size, p.reserve_pool_size, p.mode,
            p.pool_size, p.total,
        ])
    return ResultSet(DATABASES_COLUMNS, rows)


def show_users(ctx: ShowContext) -> ResultSet:
    return ResultSet(USERS_COLUMNS, [[p.user, p.mode] for p in ctx.obs.pools()])


def _config_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (tuple, list)):
        return ",".join(_config_text(x) for x in v)
    if isinstance(v, dict) or hasattr(v, "items"):
        return ",".join(f"{k}={_config_text(x)}" for k, x in v.items())
    return str(v)


def _config_rows(obj: Any, prefix: str) -> list[list[Cell]]:
    rows: list[list[Cell]] = []
    if not dataclasses.is_dataclass(obj):
        return rows
    for f in dataclasses.fields(obj):
        key = prefix + f.name
        value = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING:
            default = _config_text(f.default)
        else:
            default = "-"
        if f.name in SECRET_KEYS:
            value = "********" if value else ""
            default = "-"
        rows.append([key, _config_text(value), default, "no" if key in RESTART_ONLY else "yes"])
    return rows


def show_config(ctx: ShowContext) -> ResultSet:
    cfg = ctx.obs.config
    rows = _config_rows(cfg.general, "")
    rows += _config_rows(cfg.web, "web.")
    for name, pc in cfg.pools.items():
        base = f"pools.{name}."
        for key in ("server_host", "server_port", "server_database", "pool_mode"):
            rows.append([base + key, _config_text(getattr(pc, key)), "-", "yes"])
        for u in pc.users:
            ubase = f"{base}users.{u.username}."
            rows.append([ubase + "pool_size", str(u.pool_size), "-", "yes"])
            rows.append([ubase + "min_pool_size", str(u.min_pool_size or 0), "-", "yes"])
            rows.append([ubase + "pool_mode", u.pool_mode or pc.pool_mode, "-", "yes"])
    return ResultSet(CONFIG_COLUMNS, rows)


def show_connections(ctx: ShowContext) -> ResultSet:
    n = ctx.obs.connection_counts()
    return ResultSet(CONNECTIONS_COLUMNS, [[n["total"], n["errors"], n["tls"], n["plain"], n["cancel"]]])


def show_lists(ctx: ShowContext) -> ResultSet:
    snap = ctx.snap
    pools = [v.info for v in snap.pools]
    states = [c.state for c in snap.clients]
    free_clients = states.count("idle")
    used_clients = states.count("active") + states.count("waiting")
    login_clients = states.count("login")
    free_servers = sum(1 for s in snap.servers if s.state == "idle")
    used_servers = sum(1 for s in snap.servers if s.state in ("active", "used"))
    dns = ctx.obs.dns_counts()
    rows: list[list[Cell]] = [
        # +1: the admin database and the admin user count, as in PgBouncer.
        ["databases", len({p.database for p in pools}) + 1],
        ["users", len({p.user for p in pools}) + 1],
        ["pools", len(pools)],
        ["free_clients", free_clients],
        ["used_clients", used_clients],
        ["login_clients", login_clients],
        ["free_servers", free_servers],
        ["used_servers", used_servers],
        ["dns_names", dns["names"]],  # server host names cached (net/resolve.py)
        ["dns_zones", 0],  # no zone serial checks (PgBouncer's dns_zone_check_period)
        ["dns_queries", dns["queries"]],  # lookups in flight
        ["dns_pending", 0],  # unused in PgBouncer too
    ]
    return ResultSet(LISTS_COLUMNS, rows)


def show_auth_query(ctx: ShowContext) -> ResultSet:
    """One row per pool with an auth_query: its cache, logins, executor and dynamic pools."""
    names = [c[0] for c in AUTH_QUERY_COLUMNS[1:]]
    return ResultSet(AUTH_QUERY_COLUMNS, [[db, *(d.get(k, 0) for k in names)] for db, d in ctx.obs.auth_query()])


def show_sockets(ctx: ShowContext) -> ResultSet:
    """A snapshot at most a second old (observe/sockets.py); no row where /proc is not available."""
    states = sockets.cached(sockets.SHOW_MAX_AGE)
    rows: list[list[Cell]] = [] if states is None else [[states[name] for name in sockets.COLUMNS]]
    return ResultSet(SOCKETS_COLUMNS, rows)


def show_startup_parameters(ctx: ShowContext) -> ResultSet:
    """What each pool's server connections send in their StartupMessage, with the level each setting came from,
    and the auth_query settings dropped for the packet's size."""
    return ResultSet(STARTUP_PARAMETERS_COLUMNS, [list(r) for r in ctx.obs.startup_parameters()])


def show_listeners(ctx: ShowContext) -> ResultSet:
    """Each pool's LISTEN connection: up or down, its backend, the channels it LISTENs on for how many
    clients, and its counters (notifications received, copies delivered to clients, clients closed for a
    full queue)."""
    names = [c[0] for c in LISTENERS_COLUMNS[2:]]
    return ResultSet(LISTENERS_COLUMNS, [[user, db, *(d[k] for k in names)] for user, db, d in ctx.obs.listeners()])


def show_pool_coordinator(ctx: ShowContext) -> ResultSet:
    """One row per database with max_db_connections: its cap, servers now, reserve, and what the coordinator
    did since start."""
    return ResultSet(POOL_COORDINATOR_COLUMNS, [list(r) for r in ctx.obs.pool_coordinator()])


def show_pool_scaling(ctx: ShowContext) -> ResultSet:
    """One row per pool: server connections being opened, and the connection scaling's counters."""
    return ResultSet(POOL_SCALING_COLUMNS, [list(r) for r in ctx.obs.pool_scaling()])


SHOW_BUILDERS: dict[str, Callable[[ShowContext], ResultSet]] = {
    "help": show_help,
    "config": show_config,
    "databases": show_databases,
    "pools": show_pools,
    "pools_extended": show_pools_extended,
    "pools_memory": show_pools_memory,
    "prepared_statements": show_prepared_statements,
    "clients": show_clients,
    "servers": show_servers,
    "connections": show_connections,
    "stats": show_stats,
    "version": show_version,
    "users": show_users,
    "log_level": show_log_level,
    "lists": show_lists,
    "auth_query": show_auth_query,
    "startup_parameters": show_startup_parameters,
    "sockets": show_sockets,
    "listeners": show_listeners,
    "pool_coordinator": show_pool_coordinator,
    "pool_scaling": show_pool_scaling,
    "interner": show_interner,
}
assert set(SHOW_BUILDERS) == set(SHOW_SUBCOMMANDS), "parser and builders disagree on SHOW subcommands"

# Columns per subcommand, for tests and docs (help/version/log_level are single-column tables).
SHOW_COLUMNS: dict[str, Columns] = {
    "help": HELP_COLUMNS, "config": CONFIG_COLUMNS, "databases": DATABASES_COLUMNS, "pools": POOLS_COLUMNS,
    "pools_extended": POOLS_EXTENDED_COLUMNS, "pools_memory": POOLS_MEMORY_COLUMNS,
    "prepared_statements": PREPARED_STATEMENTS_COLUMNS, "clients": CLIENTS_COLUMNS, "servers": SERVERS_COLUMNS,
    "connections": CONNECTIONS_COLUMNS, "stats": STATS_COLUMNS, "version": VERSION_COLUMNS,
    "users": USERS_COLUMNS, "log_level": LOG_LEVEL_COLUMNS, "lists": LISTS_COLUMNS, "sockets": SOCKETS_COLUMNS,
    "auth_query": AUTH_QUERY_COLUMNS, "startup_parameters": STARTUP_PARAMETERS_COLUMNS,
    "listeners": LISTENERS_COLUMNS,
    "pool_coordinator": POOL_COORDINATOR_COLUMNS, "pool_scaling": POOL_SCALING_COLUMNS,
    "interner": INTERNER_COLUMNS,
}

