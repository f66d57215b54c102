"""Collectors: the metric families of a scrape, built from the live pooler at scrape time.

Names, types and labels follow PgDoorman 3.10 (see docs/metrics.md) so its Grafana dashboard and alert
rules work unchanged. Everything is read through pgdoorman.observe: pool state comes from one snapshot per
scrape, so the clients and servers counts agree with `SHOW POOLS` taken at the same moment; counters are
the per-worker shards summed at read time.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from pgdoorman import __version__, logs
from pgdoorman.core.fallback import API_BUCKETS
from pgdoorman.core.stats import STREAM_KIND_NAMES, percentile
from pgdoorman.metrics import webstats
from pgdoorman.metrics.exposition import Family, cumulative_at, render
from pgdoorman.metrics.process import cached_socket_counts, memory_bytes
from pgdoorman.observe import Observer, PoolView, PreparedView, Snapshot, Totals

# Histogram buckets in seconds, as PgDoorman's.
QUERY_BUCKETS = (0.0005, 0.005, 0.05, 0.5, 5.0)
TRANSACTION_BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)
WAIT_BUCKETS = (0.0001, 0.001, 0.01, 0.1, 1.0)
# pg_doorman_pools_errors_total keeps its cardinality fixed: these buckets and nothing else.
ERROR_BUCKETS = ("08", "53", "57", "25P02", "26000", "other")
PERCENTILES = (("99", 0.99), ("95", 0.95), ("90", 0.90), ("50", 0.50))
CONNECTION_TYPES = ("plain", "tls", "cancel", "total")
REJECTION_REASONS = ("hba", "tls_required", "tls_handshake_fail", "protocol_error", "invalid_startup",
                     "too_many_clients")


def error_bucket(code: str) -> str:
    """PgDoorman's SQLSTATE rollup. The core may record a class ('42') or a full code ('25P02')."""
    if code in ("25P02", "26000"):
        return code
    cls = code[:2]
    if cls in ("08", "53", "57"):
        return cls
    if cls == "26":  # class 26 has a single code, 26000
        return "26000"
    return "other"


def errors_by_bucket(by_class: dict[str, int]) -> dict[str, int]:
    out = dict.fromkeys(ERROR_BUCKETS, 0)
    for code, n in by_class.items():
        out[error_bucket(code)] += n
    return out


def histogram_buckets(counts: Sequence[int], bounds_s: Sequence[float]) -> list[tuple[float, int]]:
    cum = cumulative_at(counts, [b * 1e6 for b in bounds_s])
    return list(zip(bounds_s, cum, strict=True))


def collect(obs: Observer, snap: Snapshot | None = None) -> list[Family]:
    """Every family of a scrape, in PgDoorman's order: the process and listener, then the pools."""
    snap = snap or obs.snapshot()
    obs.sampler.track_prepared(snap.servers)
    fams = _process_families(obs)
    fams += _listener_families(obs)
    fams.append(_users_configured(obs))
    rows = _pool_rows(obs, snap)
    fams += _pool_state_families(rows)
    fams += _pool_traffic_families(rows)
    fams += _pool_latency_families(rows)
    fams.append(_pool_errors_family(rows))
    fams.append(_server_login_failures_family(obs))
    fams += _pool_pinning_families(rows)
    fams.append(_pool_query_timeouts_family(rows))
    fams += _streaming_families(rows)
    fams.append(_pool_handed_family(rows))
    fams += _pool_prepared_families(rows)
    fams += _interner_families(rows)
    fams += _check_query_families(rows)
    fams += _auth_query_families(obs)
    fams += _startup_parameters_family(obs)
    fams += _fallback_families(obs)
    fams += _coordinator_families(obs)
    fams += _scaling_families(obs)
    fams += webstats.families(obs.config)
    fams += _listen_families(obs)
    return fams


# ---------------------------------------------------------------- process
def _process_families(obs: Observer) -> list[Family]:
    """Build info, log level and memory of the pooler process."""
    F = Family
    return [
        F("pg_doorman_build_info", "gauge",
          "Build information of the running pooler; always 1, the version is in the label.")
        .add(1, {"version": __version__}),
        F("pg_doorman_log_level", "gauge",
          "Current log filter (as SHOW LOG_LEVEL reports it); always 1, the filter is in the label.")
        .add(1, {"level": logs.current_filter()}),
        F("pg_doorman_total_memory", "gauge", "Resident memory of the pooler process in bytes.")
        .add(memory_bytes()),
        *_memory_budget_families(obs),
        *_worker_families(obs),
    ]


def _worker_families(obs: Observer) -> list[Family]:
    """The worker threads and general.worker_placement (pgdoorman's own metrics; docs/performance.md)."""
    clients = Family("pg_doorman_worker_clients", "gauge", "Client connections each worker thread serves now.")
    share = Family("pg_doorman_worker_cpu_share", "gauge",
                   "CPU seconds each worker thread used per second over the last second it measured (with two "
                   "workers or more; worker_busy_percent compares it).")
    moved = Family("pg_doorman_worker_clients_moved_total", "counter",
                   "Idle clients moved between workers by worker_placement pack (away from a busy worker, or "
                   "back to a lower one with room): `out` of this worker, `in` to it.")
    for wid, n, cpu, spilled, adopted in obs.worker_loads():
        w = {"worker": str(wid)}
        clients.add(n, w)
        share.add(round(cpu, 3), w)
        moved.add(spilled, {**w, "direction": "out"}).add(adopted, {**w, "direction": "in"})
    return [clients, share, moved]


def _memory_budget_families(obs: Observer) -> list[Family]:
    """max_memory_usage (pgdoorman's own metrics; docs/robustness.md)."""
    used, limit, refused = obs.memory_budget()
    return [
        Family("pg_doorman_memory_budget_bytes", "gauge",
               "max_memory_usage: bytes the relay holds now (queued output, messages read whole) and the limit.")
        .add(used, {"kind": "used"}).add(limit, {"kind": "limit"}),
        Family("pg_doorman_memory_budget_refused_total", "counter",
               "Client messages refused with 53200 because they would have passed max_memory_usage.")
        .add(refused),
    ]


def _listener_families(obs: Observer) -> list[Family]:
    """Client connections accepted and rejected, and the sockets the process holds."""
    F = Family
    conns = obs.connection_counts()
    total_f = F("pg_doorman_connections_total", "counter",
                "Client connections accepted since start, by type: plain, tls, cancel (cancel requests) and total.")
    gauge_f = F("pg_doorman_connection_count", "gauge",
                "DEPRECATED: the same values as pg_doorman_connections_total exposed as a gauge.")
    for ctype in CONNECTION_TYPES:
        total_f.add(conns[ctype], {"type": ctype})
        gauge_f.add(conns[ctype], {"type": ctype})
    fams = [total_f, gauge_f]
    rejections = obs.rejections()
    rej = F("pg_doorman_listener_rejections_total", "counter",
            "Client connections rejected before authentication completed, by reason.")
    for r in REJECTION_REASONS:
        rej.add(int(rejections.get(r, 0)), {"reason": r})
    fams.append(rej)
    socks = cached_socket_counts()
    if socks is not None:
        sf = F("pg_doorman_sockets", "gauge",
               "Sockets held by the pooler process by type (tcp, tcp6, unix, unknown); refreshed every 15 s.")
        for stype in ("tcp", "tcp6", "unix", "unknown"):
            sf.add(socks.get(stype, 0), {"type": stype})
        fams.append(sf)
    return fams


def _users_configured(obs: Observer) -> Family:
    users = Family("pg_doorman_users_configured", "gauge",
                   "One series per configured (user, database, pool_mode), value 1.")
    cfg = obs.config
    for db, pc in cfg.pools.items():
        for u in pc.users:
            users.add(1, {"user": u.username, "database": db, "pool_mode": cfg.pool_mode_for(pc, u)})
    return users


# ---------------------------------------------------------------- pools
@dataclass(frozen=True)
class _PoolRow:
    """What the pool families read of one pool, read once per scrape in the snapshot's order."""

    view: PoolView
    labels: dict[str, str]
    totals: Totals
    wait_ms: float  # the sampler's average wait per transaction over the last 15 s
    prepared: PreparedView
    prepared_hits_total: int
    prepared_misses_total: int


def _pool_rows(obs: Observer, snap: Snapshot) -> list[_PoolRow]:
    rows: list[_PoolRow] = []
    for v in snap.pools:
        t = obs.totals(v.key)
        wait_ms = obs.sampler.averages_for(v.key, t).wait_time / 1000.0
        pv = obs.prepared(v)
        hits_total, misses_total = obs.sampler.prepared_totals(v.key)
        labels = {"user": v.info.user, "database": v.info.database}
        rows.append(_PoolRow(v, labels, t, wait_ms, pv, hits_total, misses_total))
    return rows


def _pool_state_families(rows: list[_PoolRow]) -> list[Family]:
    """Clients and servers by status, size, pause state, oldest transaction and longest wait."""
    F = Family
    clients = F("pg_doorman_pools_clients", "gauge",
                "Clients per pool by status: idle (between transactions), waiting (queued for a server), "
                "active (linked to a server).")
    servers = F("pg_doorman_pools_servers", "gauge",
                "Server connections per pool by status: active (linked to a client) or idle (available).")
    pool_size = F("pg_doorman_pool_size", "gauge", "Configured maximum number of server connections per pool.")
    paused = F("pg_doorman_pools_paused", "gauge", "1 while the pool is paused (PAUSE), 0 when running.")
    oldest = F("pg_doorman_pools_oldest_active_age_ms", "gauge",
               "Age in milliseconds of the longest-running transaction on an active server of the pool; "
               "0 when no server is active.")
    maxwait = F("pg_doorman_pools_maxwait_microseconds", "gauge",
                "Longest wait, in microseconds, of a client queued for a server right now.")
    for row in rows:
        v, p, ud = row.view, row.view.info, row.labels
        for status, n in (("idle", v.cl_idle), ("waiting", v.cl_waiting), ("active", v.cl_active)):
            clients.add(n, {"status": status, **ud})
        for status, n in (("active", v.sv_active), ("idle", v.sv_idle)):
            servers.add(n, {"status": status, **ud})
        pool_size.add(p.pool_size, ud)
        paused.add(1 if p.paused else 0, ud)
        oldest.add(v.oldest_active_age_ms, ud)
        maxwait.add(v.maxwait_us, ud)
    return [clients, servers, pool_size, paused, oldest, maxwait]


def _pool_traffic_families(rows: list[_PoolRow]) -> list[Family]:
    """Bytes, queries and transactions per pool, and their total times."""
    F = Family
    bytes_total = F("pg_doorman_pools_bytes_total", "counter",
                    "Bytes through the pool by direction: received (from clients) and sent (to clients).")
    bytes_gauge = F("pg_doorman_pools_bytes", "gauge",
                    "DEPRECATED: pg_doorman_pools_bytes_total exposed as a gauge.")
    q_total = F("pg_doorman_pools_queries_total", "counter", "Queries completed per pool.")
    q_count = F("pg_doorman_pools_queries_count", "gauge", "DEPRECATED: pg_doorman_pools_queries_total as a gauge.")
    x_total = F("pg_doorman_pools_transactions_total", "counter", "Transactions completed per pool.")
    x_count = F("pg_doorman_pools_transactions_count", "gauge",
                "DEPRECATED: pg_doorman_pools_transactions_total as a gauge.")
    q_time = F("pg_doorman_pools_queries_total_time", "gauge", "Total query time per pool in milliseconds.")
    x_time = F("pg_doorman_pools_transactions_total_time", "gauge",
               "Total transaction time per pool in milliseconds.")
    for row in rows:
        t, ud = row.totals, row.labels
        for direction, n in (("received", t.bytes_in), ("sent", t.bytes_out)):
            bytes_total.add(n, {"direction": direction, **ud})
            bytes_gauge.add(n, {"direction": direction, **ud})
        q_total.add(t.query_count, ud)
        q_count.add(t.query_count, ud)
        x_total.add(t.xact_count, ud)
        x_count.add(t.xact_count, ud)
        q_time.add(t.query_time_us / 1000.0, ud)
        x_time.add(t.xact_time_us / 1000.0, ud)
    return [bytes_total, bytes_gauge, q_total, q_count, x_total, x_count, q_time, x_time]


def _pool_latency_families(rows: list[_PoolRow]) -> list[Family]:
    """Query, transaction and wait latency per pool: histograms, and the deprecated percentiles and average."""
    F = Family
    q_hist = F("pg_doorman_pools_query_duration_seconds", "histogram",
               "Query latency per pool in seconds (first byte of the query to the ReadyForQuery that ends it).")
    x_hist = F("pg_doorman_pools_transaction_duration_seconds", "histogram",
               "Transaction latency per pool in seconds (first query to the ReadyForQuery that ends the transaction).")
    w_hist = F("pg_doorman_pools_wait_duration_seconds", "histogram",
               "Time clients spent queued for a server connection, per pool, in seconds.")
    q_pct = F("pg_doorman_pools_queries_percentile", "gauge",
              "DEPRECATED: query latency percentiles (50/90/95/99) per pool in milliseconds; "
              "use pg_doorman_pools_query_duration_seconds.")
    x_pct = F("pg_doorman_pools_transactions_percentile", "gauge",
              "DEPRECATED: transaction latency percentiles (50/90/95/99) per pool in milliseconds; "
              "use pg_doorman_pools_transaction_duration_seconds.")
    avg_wait = F("pg_doorman_pools_avg_wait_time", "gauge",
                 "DEPRECATED: average client wait per transaction over the last 15 s, in milliseconds; "
                 "use pg_doorman_pools_wait_duration_seconds.")
    for row in rows:
        ud = row.labels
        (qc, qn, qs), (xc, xn, xs), (wc, wn, ws) = row.totals.hists
        q_hist.add_histogram(ud, histogram_buckets(qc, QUERY_BUCKETS), qs / 1e6, qn)
        x_hist.add_histogram(ud, histogram_buckets(xc, TRANSACTION_BUCKETS), xs / 1e6, xn)
        w_hist.add_histogram(ud, histogram_buckets(wc, WAIT_BUCKETS), ws / 1e6, wn)
        for label, q in PERCENTILES:
            q_pct.add(percentile(qc, qn, q) / 1000.0, {"percentile": label, **ud})
            x_pct.add(percentile(xc, xn, q) / 1000.0, {"percentile": label, **ud})
        avg_wait.add(row.wait_ms, ud)
    return [q_hist, x_hist, w_hist, q_pct, x_pct, avg_wait]


def _pool_errors_family(rows: list[_PoolRow]) -> Family:
    errors = Family("pg_doorman_pools_errors_total", "counter",
                    "Errors returned by PostgreSQL per pool, by SQLSTATE bucket: 08, 53, 57, 25P02, 26000 or other.")
    for row in rows:
        for bucket, n in errors_by_bucket(row.totals.errors_by_class).items():
            errors.add(n, {**row.labels, "sqlstate": bucket})
    return errors


def _server_login_failures_family(obs: Observer) -> Family:
    """pg_doorman_server_login_failures_total{user,database,sqlstate}: series appear once counted, and stay
    (RELOAD and pools going away included)."""
    f = Family("pg_doorman_server_login_failures_total", "counter",
               "Server connections the pooler failed to open or log in to PostgreSQL, per pool, by the SQLSTATE "
               "class of the error its waiting client gets (08: could not connect, 28: authentication, "
               "3D: no such database, 53: too many connections, 57: shutting down or starting up, ...).")
    for (database, user, cls), n in sorted(obs.server_login_failures().items()):
        f.add(n, {"user": user, "database": database, "sqlstate": cls})
    return f


def _pool_pinning_families(rows: list[_PoolRow]) -> list[Family]:
    """Transaction-mode clients pinned to their server (docs/transaction-mode.md)."""
    F = Family
    pinned = F("pg_doorman_pools_clients_pinned", "gauge",
               "Clients pinned to their server between transactions (temporary tables, session advisory locks, "
               "WITH HOLD cursors, SQL prepared statements), per pool.")
    pins = F("pg_doorman_pools_pins_total", "counter", "Times a client was pinned to its server, per pool.")
    refused = F("pg_doorman_pools_pinning_refused_total", "counter",
                "Statements refused with 0A000 because they would pin the client (transaction_pinning: refuse).")
    for row in rows:
        pinned.add(row.view.cl_pinned, row.labels)
        pins.add(row.totals.pins, row.labels)
        refused.add(row.totals.refused, row.labels)
    return [pinned, pins, refused]


def _streaming_families(rows: list[_PoolRow]) -> list[Family]:
    """Messages of at least message_size_to_be_stream bytes relayed in pieces (all are; these are counted)."""
    events = Family("pg_doorman_streaming_events_total", "counter",
                    "DataRow, CopyData and FunctionCallResponse messages of at least message_size_to_be_stream "
                    "bytes relayed in pieces, per pool and kind; result=error when a connection closed in "
                    "the middle of one.")
    size = Family("pg_doorman_streaming_bytes_total", "counter",
                  "Bytes of those streamed messages (whole messages, the failed ones included), per pool and kind.")
    for row in rows:
        st = row.totals.streams
        for k, kind in enumerate(STREAM_KIND_NAMES):
            events.add(st[3 * k], {**row.labels, "kind": kind, "result": "ok"})
            events.add(st[3 * k + 1], {**row.labels, "kind": kind, "result": "error"})
            size.add(st[3 * k + 2], {**row.labels, "kind": kind})
    return [events, size]


def _pool_query_timeouts_family(rows: list[_PoolRow]) -> Family:
    fam = Family("pg_doorman_pools_query_timeouts_total", "counter",
                 "Requests the pooler cancelled on their server because they ran longer than the pool's "
                 "query_timeout (a pgdoorman metric, not PgDoorman's).")
    for row in rows:
        fam.add(row.totals.query_timeouts, row.labels)
    return fam


def _pool_handed_family(rows: list[_PoolRow]) -> Family:
    fam = Family("pg_doorman_pools_servers_handed_total", "counter",
                 "Servers handed to a waiting client as they were freed (or found idle), by whether the client "
                 "is on the server's worker thread or another one, which the server then moves to "
                 "(a pgdoorman metric, not PgDoorman's).")
    for row in rows:
        fam.add(row.totals.handed_local, {**row.labels, "worker": "same"})
        fam.add(row.totals.handed_moved, {**row.labels, "worker": "other"})
    return fam


def _check_query_families(rows: list[_PoolRow]) -> list[Family]:
    """PgDoorman's two pooler_check_query counters (process-wide, no labels): the pools' sum."""
    backend = Family("pg_doorman_pooler_check_query_backend_total", "counter",
                     "Pooler check queries sent to PostgreSQL because no answer to general.pooler_check_query "
                     "was kept for the pool yet (after start, or a RELOAD that changed it).")
    cache = Family("pg_doorman_pooler_check_query_cache_total", "counter",
                   "Pooler check queries answered with the pool's kept answer, without a server.")
    backend.add(sum(r.totals.check_backend for r in rows), {})
    cache.add(sum(r.totals.check_cache for r in rows), {})
    return [backend, cache]


def _pool_prepared_families(rows: list[_PoolRow]) -> list[Family]:
    """The prepared statement caches of the pool, its clients and its servers."""
    F = Family
    prepared = [
        F("pg_doorman_pool_prepared_cache_entries", "gauge", "Entries in the pool-level prepared statement cache."),
        F("pg_doorman_pool_prepared_cache_bytes", "gauge", "Approximate bytes of the pool-level prepared statement cache."),
        F("pg_doorman_clients_prepared_cache_entries", "gauge", "Entries in all clients' prepared statement caches."),
        F("pg_doorman_clients_prepared_cache_bytes", "gauge", "Approximate bytes of all clients' prepared statement caches."),
        F("pg_doorman_clients_prepared_named_entries", "gauge", "Named entries in all clients' prepared statement caches."),
        F("pg_doorman_clients_prepared_anonymous_entries", "gauge",
          "Anonymous entries in all clients' prepared statement caches."),
        F("pg_doorman_clients_prepared_anonymous_evictions_total", "counter",
          "Evictions from the clients' anonymous prepared statement LRU."),
        F("pg_doorman_servers_prepared_hits", "gauge",
          "Parses skipped because the server already held the statement, summed over the pool's current "
          "servers (drops when servers close; use the _total counter for rates)."),
        F("pg_doorman_servers_prepared_misses", "gauge",
          "Parses sent to a server that did not hold the statement, summed over the pool's current servers."),
        F("pg_doorman_servers_prepared_hits_total", "counter",
          "Parses skipped because the server already held the statement, per pool, since start."),
        F("pg_doorman_servers_prepared_misses_total", "counter",
          "Parses sent to a server that did not hold the statement, per pool, since start."),
        F("pg_doorman_async_clients_count", "gauge", "Clients using Flush-based (async) pipelining."),
    ]
    for row in rows:
        pv = row.prepared
        for f, n in zip(prepared, (
            pv.pool_entries, pv.pool_bytes, pv.client_entries, pv.client_bytes, pv.client_named,
            pv.client_anonymous,
            pv.anon_evictions,
            pv.server_hits, pv.server_misses, row.prepared_hits_total, row.prepared_misses_total,
            0,  # Flush-based "async" clients are not tracked
        ), strict=True):
            f.add(n, row.labels)
    return prepared


def _interner_families(rows: list[_PoolRow]) -> list[Family]:
    """PgDoorman's query interner: here the texts of the pools' statement caches (one object each), by kind."""
    F = Family
    entries = F("pg_doorman_query_interner_entries", "gauge",
                "Query texts held by the pools' prepared statement caches, by kind (named: some client prepared "
                "it under a name; anonymous: only ever unnamed).")
    size = F("pg_doorman_query_interner_bytes", "gauge", "Bytes of those query texts, by kind.")
    evicted = F("pg_doorman_query_interner_evictions_total", "counter",
                "Unnamed-only statements dropped from the pools' caches once idle past "
                "query_interner_anon_idle_ttl_seconds.")
    named = anon = (0, 0)
    ttl = 0
    for row in rows:
        pv = row.prepared
        named = (named[0] + pv.interned_named[0], named[1] + pv.interned_named[1])
        anon = (anon[0] + pv.interned_anonymous[0], anon[1] + pv.interned_anonymous[1])
        ttl += pv.interner_ttl_evictions
    for kind, (n, b) in (("named", named), ("anonymous", anon)):
        entries.add(n, {"kind": kind})
        size.add(b, {"kind": kind})
    evicted.add(ttl, {"kind": "anonymous", "reason": "ttl_expired"})
    return [entries, size, evicted]


# ---------------------------------------------------------------- auth_query
# (family, label, help, [(label value, counter key)]): a gauge and its `_total` counter, as PgDoorman pairs them.
_AUTH_QUERY_FAMILIES = (
    ("pg_doorman_auth_query_cache", "type", "auth_query cache lookups by outcome",
     (("hits", "cache_hits"), ("misses", "cache_misses"), ("refetches", "cache_refetches"),
      ("rate_limited", "cache_rate_limited"))),
    ("pg_doorman_auth_query_auth", "result", "logins of auth_query users by result",
     (("success", "auth_success"), ("failure", "auth_failure"))),
    ("pg_doorman_auth_query_executor", "type", "auth_query executor queries and errors",
     (("queries", "executor_queries"), ("errors", "executor_errors"))),
    ("pg_doorman_auth_query_dynamic_pools", "type", "auth_query dynamic pools created and destroyed",
     (("created", "dynamic_pools_created"), ("destroyed", "dynamic_pools_destroyed"))),
)


def _auth_query_families(obs: Observer) -> list[Family]:
    """pg_doorman_auth_query_{cache,auth,executor,dynamic_pools} (gauges: current values, with `entries` and
    `current`) and their `_total` counters, per database with an auth_query."""
    rows = obs.auth_query()
    if not rows:
        return []
    fams: list[Family] = []
    for name, label, what, kinds in _AUTH_QUERY_FAMILIES:
        gauge = Family(name, "gauge", f"{what[0].upper()}{what[1:]}, current values.")
        total = Family(f"{name}_total", "counter", f"{what[0].upper()}{what[1:]} since start.")
        for db, d in rows:
            if name == "pg_doorman_auth_query_cache":
                gauge.add(d.get("cache_entries", 0), {"type": "entries", "database": db})
            if name == "pg_doorman_auth_query_dynamic_pools":
                gauge.add(d.get("dynamic_pools_current", 0), {"type": "current", "database": db})
            for value, key in kinds:
                gauge.add(d.get(key, 0), {label: value, "database": db})
                total.add(d.get(key, 0), {label: value, "database": db})
        fams += [gauge, total]
    return fams


def _startup_parameters_family(obs: Observer) -> list[Family]:
    """pg_doorman_startup_parameters_dropped_total{pool,reason}: settings of the startup_parameters cascade
    left out (an auth_query row's that do not fit or are invalid, or in dedicated mode)."""
    counts = obs.startup_dropped()
    if not counts:
        return []
    f = Family("pg_doorman_startup_parameters_dropped_total", "counter",
               "Startup parameters dropped from the cascade since start, by pool and reason.")
    for (pool, reason), n in sorted(counts.items()):
        f.add(n, {"pool": pool, "reason": reason})
    return [f]


_FALLBACK_REASONS = ("connect_error", "startup_error", "server_unavailable", "timeout", "other")


def _fallback_families(obs: Observer) -> list[Family]:
    """PgDoorman's Patroni-assisted fallback metrics, per configured pool with patroni_api_urls."""
    views = obs.fallbacks()
    if not views:
        return []
    fams = {name: Family(name, kind, text) for name, kind, text in (
        ("pg_doorman_patroni_api_requests_total", "counter", "Requests to Patroni's API (GET /cluster)."),
        ("pg_doorman_patroni_api_errors_total", "counter", "Failed requests to Patroni's API."),
        ("pg_doorman_patroni_api_duration_seconds", "histogram", "Duration of requests to Patroni's API."),
        ("pg_doorman_fallback_active", "gauge", "1 while new server connections go to a fallback host."),
        ("pg_doorman_fallback_host", "gauge", "The fallback host in use (1), by pool, host and port."),
        ("pg_doorman_fallback_connections_total", "counter", "Server connections opened to fallback hosts."),
        ("pg_doorman_fallback_cache_hits_total", "counter",
         "Server connections sent to the kept fallback host without asking Patroni."),
        ("pg_doorman_fallback_candidate_failures_total", "counter", "Fallback candidates that failed, by reason."),
    )}
    for v in views:
        pool = {"pool": v.pool}
        fams["pg_doorman_patroni_api_requests_total"].add(v.api_requests, pool)
        fams["pg_doorman_patroni_api_errors_total"].add(v.api_errors, pool)
        cum = list(itertools.accumulate(v.api_buckets))
        fams["pg_doorman_patroni_api_duration_seconds"].add_histogram(
            pool, list(zip(API_BUCKETS, cum, strict=True)), round(v.api_seconds, 6), v.api_requests)
        fams["pg_doorman_fallback_active"].add(1 if v.active else 0, pool)
        if v.active:
            fams["pg_doorman_fallback_host"].add(1, {"pool": v.pool, "host": v.host, "port": str(v.port)})
        fams["pg_doorman_fallback_connections_total"].add(v.connections, pool)
        fams["pg_doorman_fallback_cache_hits_total"].add(v.cache_hits, pool)
        for reason in _FALLBACK_REASONS:
            fams["pg_doorman_fallback_candidate_failures_total"].add(v.failures.get(reason, 0),
                                                                     {"pool": v.pool, "reason": reason})
    return list(fams.values())
# ---------------------------------------------------------------- pool coordinator and connection scaling
def _coordinator_families(obs: Observer) -> list[Family]:
    """pg_doorman_pool_coordinator{type,database} (gauges) and pg_doorman_pool_coordinator_total (counters),
    per database with max_db_connections (SHOW POOL_COORDINATOR's numbers)."""
    rows = obs.pool_coordinator()
    if not rows:
        return []
    gauge = Family("pg_doorman_pool_coordinator", "gauge",
                   "Pool coordinator per database: server connections, reserve in use, and the limits.")
    total = Family("pg_doorman_pool_coordinator_total", "counter",
                   "Pool coordinator per database since start: evictions, reserve acquisitions, exhaustions.")
    for db, max_db, current, reserve_size, reserve_used, evictions, reserve_acq, exhaustions in rows:
        for kind, v in (("connections", current), ("reserve_in_use", reserve_used), ("max_connections", max_db),
                        ("reserve_pool_size", reserve_size)):
            gauge.add(v, {"type": kind, "database": db})
        for kind, v in (("evictions", evictions), ("reserve_acquisitions", reserve_acq),
                        ("exhaustions", exhaustions)):
            total.add(v, {"type": kind, "database": db})
    return [gauge, total]


_SCALING_KINDS = ("creates_started", "burst_gate_waits", "burst_gate_budget_exhausted", "anticipation_wakes_notify",
                  "anticipation_wakes_timeout", "create_fallback", "replenish_deferred")


def _scaling_families(obs: Observer) -> list[Family]:
    """pg_doorman_pool_scaling{type=inflight_creates} and pg_doorman_pool_scaling_total{type} per pool
    (SHOW POOL_SCALING's numbers under PgDoorman's label values)."""
    gauge = Family("pg_doorman_pool_scaling", "gauge", "Server connections being opened now, per pool.")
    total = Family("pg_doorman_pool_scaling_total", "counter",
                   "Connection scaling per pool since start: creates, burst gate waits, anticipation outcomes.")
    for user, db, inflight, *counters in obs.pool_scaling():
        gauge.add(inflight, {"type": "inflight_creates", "user": user, "database": db})
        for kind, v in zip(_SCALING_KINDS, counters, strict=True):
            total.add(v, {"type": kind, "user": user, "database": db})
    return [gauge, total]


def _listen_families(obs: Observer) -> list[Family]:
    """pg_doorman_listen_*{user,database}: each pool's LISTEN connection (transaction mode LISTEN/NOTIFY)."""
    rows = obs.listeners()
    if not rows:
        return []
    up = Family("pg_doorman_listen_connection_up", "gauge", "1 while the pool's LISTEN connection is logged in.")
    chans = Family("pg_doorman_listen_channels", "gauge", "Channels the pool's LISTEN connection listens on.")
    clients = Family("pg_doorman_listen_clients", "gauge", "Clients listening on at least one channel.")
    notes = Family("pg_doorman_listen_notifications_total", "counter",
                   "Notifications received by the LISTEN connection (type=received) and copies written or queued "
                   "to listening clients (type=delivered).")
    fails = Family("pg_doorman_listen_connection_failures_total", "counter",
                   "LISTEN connections lost or refused (each is opened again).")
    over = Family("pg_doorman_listen_overflows_total", "counter",
                  "Listening clients closed because their notifications could not be written (54000).")
    for user, db, d in rows:
        if d["removed"]:
            continue  # (a removed pool's: a pool configured again under its name would have the same labels)
        lab = {"user": user, "database": db}
        up.add(1 if d["state"] == "up" else 0, lab)
        chans.add(d["channels"], lab)
        clients.add(d["clients"], lab)
        notes.add(d["received"], {**lab, "type": "received"})
        notes.add(d["delivered"], {**lab, "type": "delivered"})
        fails.add(d["failures"], lab)
        over.add(d["overflows"], lab)
    return [up, chans, clients, notes, fails, over]


def render_metrics(obs: Observer) -> str:
    return render(collect(obs))
