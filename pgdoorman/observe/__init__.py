"""The observation API and the control interface of a running pooler: what the admin console and the
metrics endpoint read and act through. They import this module, never app, worker or the connections.

`Observer` turns the live pooler (a `Source`, which `App` satisfies) into plain snapshots: pools, clients
and servers as frozen dataclasses with their states as names, per-pool counter totals summed over the
workers' lock-free shards, connection counts, and the 15-second sampler behind SHOW STATS averages.
`Control` is the `Protocol` of what the console may ask the pooler to do (reload, pause, kill, ...).

Nothing here mutates the pooler. Worker-owned containers are copied with `list(...)` and the copy is
retried if the owner resized it meanwhile; counters are plain ints read without locks, so a snapshot is a
consistent-enough picture, not an atomic one. This is the one package above the connections that reads
their fields (observe/snapshot.py); interfaces.py holds Source and Control, totals.py the counters and
the sampler.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pgdoorman.core import startup_params
from pgdoorman.net import resolve
from pgdoorman.observe.interfaces import (
    CancelCounts,
    Control,
    PoolKey,
    Source,
    UnknownDatabase,
    WorkerView,
    copy_of,
    dict_copy,
)
from pgdoorman.observe.snapshot import (
    CLIENT_STATES,
    ClientInfo,
    FallbackView,
    PoolInfo,
    PoolView,
    PreparedView,
    ServerInfo,
    Snapshot,
    StatementInfo,
    client_id,
    fallback_view,
    live_clients,
    live_servers,
    pool_info,
    pool_interner,
    pool_statement_sizes,
    pool_statements,
    server_info,
    take_snapshot,
)
from pgdoorman.observe.totals import Averages, StatsSampler, Totals, averages, pool_totals

if TYPE_CHECKING:
    from pgdoorman.config import Config
    from pgdoorman.core.pool import Pool

__all__ = [
    "CLIENT_STATES", "Averages", "CancelCounts", "ClientInfo", "Control", "Observer", "PoolInfo", "PoolKey",
    "PoolView", "PreparedView", "ServerInfo", "Snapshot", "Source", "StatementInfo", "StatsSampler", "Totals",
    "UnknownDatabase", "WorkerView", "averages", "client_id", "copy_of", "dict_copy",
    "live_clients", "live_servers", "pool_info", "pool_interner", "pool_statement_sizes", "pool_statements", "pool_totals",
    "server_info", "take_snapshot",
]


# ------------------------------------------------------------------------------------------ the API
class Observer:
    """The read side handed to the admin console and the metrics endpoint. One per process, made by the
    composition root; its sampler starts on first use (the first admin session or the metrics listener),
    so a pooler nobody watches runs no sampler thread."""

    def __init__(self, src: Source, sampler_extra: Callable[[], None] | None = None) -> None:
        self._src = src
        self._extra = sampler_extra
        self._sampler: StatsSampler | None = None
        self._lock = threading.Lock()

    @property
    def config(self) -> Config:
        return self._src.config

    @property
    def sampler(self) -> StatsSampler:
        """The stats sampler, started on first use."""
        with self._lock:
            if self._sampler is None:
                self._sampler = StatsSampler(self._src, extra=self._extra).start()
            return self._sampler

    def start_sampler(self) -> None:
        self.sampler  # noqa: B018 (the property starts it)

    def stop(self) -> None:
        with self._lock:
            if self._sampler is not None:
                self._sampler.stop()
                self._sampler = None

    def snapshot(self) -> Snapshot:
        return take_snapshot(self._src)

    def pools(self) -> list[PoolInfo]:
        return [pool_info(p) for p in copy_of(self._src.pool_list)]

    def _pool(self, key: PoolKey) -> Pool | None:
        for p in copy_of(self._src.pool_list):
            if (p.database, p.username) == key:
                return p
        return None

    def totals(self, key: PoolKey) -> Totals:
        """The pool's counters now (zeros for a pool that went away)."""
        p = self._pool(key)
        return pool_totals(p) if p is not None else Totals()

    def statements(self, key: PoolKey) -> list[StatementInfo]:
        """The entries of a pool's prepared statement cache."""
        p = self._pool(key)
        return pool_statements(p) if p is not None else []

    def prepared(self, v: PoolView) -> PreparedView:
        pv = PreparedView()
        p = self._pool(v.key)
        if p is not None:
            pv.pool_entries, pv.pool_bytes = pool_statement_sizes(p)
            pv.anon_evictions = int(getattr(p.ps_cache, "anon_evictions", 0))
            pool_interner(p, pv)
        for c in v.clients:
            pv.client_named += len(c.ps_named)
            pv.client_bytes += c.ps_bytes
            pv.client_anonymous += len(c.ps_anon)
            pv.client_anon_evicted += c.ps_anon_evicted
        pv.client_entries = pv.client_named + pv.client_anonymous
        for s in v.servers:
            pv.server_hits += s.ps_hits
            pv.server_misses += s.ps_misses
            pv.server_cached += s.ps_cached
        return pv

    def connection_counts(self) -> dict[str, int]:
        """total / errors / tls / plain / cancel since start."""
        src = self._src
        total = int(src.total_accepted)
        cancel = int(getattr(src.cancels, "requests", 0))
        tls = int(src.tls_connections)
        errors = int(src.connection_errors)
        plain = max(0, total - tls - cancel - errors)
        return {"total": total, "errors": errors, "tls": tls, "plain": plain, "cancel": cancel}

    def dns_counts(self) -> dict[str, int]:
        """The server host name cache (net/resolve.py): names cached, lookups in flight (SHOW LISTS)."""
        return resolve.RESOLVER.counts()

    def auth_query(self) -> list[tuple[str, dict[str, int]]]:
        """(database, counters) of each pool's auth_query (SHOW AUTH_QUERY, pg_doorman_auth_query_*): cache_entries,
        cache_hits/misses/refetches/rate_limited, auth_success/failure, executor_queries/errors and
        dynamic_pools_current/created/destroyed. Empty for a source without auth_query."""
        rows = getattr(self._src, "auth_query_rows", None)
        return list(rows()) if rows is not None else []

    def startup_parameters(self) -> list[tuple[str, str, str, str, str, str]]:
        """(user, database, parameter, value, source, state) of every pool's startup_parameters cascade: state
        `applied`, or `dropped_due_to_budget` for auth_query settings left out for the packet's size."""
        rows = []
        for p in copy_of(self._src.pool_list):
            sc = p.startup
            for k, v in sc.params.items():
                rows.append((p.username, p.database, k, v, sc.source.get(k, ""), "applied"))
            for k, v, src, reason in sc.dropped:
                if reason in startup_params.BUDGET_REASONS:
                    rows.append((p.username, p.database, k, v, src, "dropped_due_to_budget"))
        return rows

    def fallbacks(self) -> list[FallbackView]:
        """The Patroni-assisted fallback of each configured pool that has one (pg_doorman_fallback_*)."""
        seen: dict[str, FallbackView] = {}
        now = time.monotonic()
        for p in copy_of(self._src.pool_list):
            fb = p.fallback
            if fb is not None and p.database not in seen:
                seen[p.database] = fallback_view(p.database, fb, now)
        return list(seen.values())

    def listeners(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(user, database, counters) of each pool whose clients used LISTEN in transaction mode (SHOW
        LISTENERS, pg_doorman_listen_*): state, server_pid, channels, clients, connects, failures, received,
        delivered, overflows (core/listen.Channels.snapshot), and removed: 1 for a pool a RELOAD or auth_query
        removed whose LISTEN connection still serves its remaining clients (App.pool_removed), listed after
        the configured pools until that connection is closed."""
        rows = [(p.username, p.database, {**p.channels.snapshot(), "removed": 0})
                for p in copy_of(self._src.pool_list) if p.channels is not None]
        for ref in getattr(self._src, "removed_pools", ()):
            p = ref()
            ch = p.channels if p is not None else None
            if p is None or ch is None:
                continue
            d = ch.snapshot()
            if ch.conn is not None or d["clients"]:  # (down while clients listen: opened again)
                rows.append((p.username, p.database, {**d, "removed": 1}))
        return rows

    def pool_coordinator(self) -> list[tuple[str, int, int, int, int, int, int, int]]:
        """(database, max_db_conn, current, reserve_size, reserve_used, evictions, reserve_acq, exhaustions) of
        each database with max_db_connections (core/coordinator.py), by database."""
        coords = getattr(self._src, "coordinators", None)
        return coords.rows() if coords is not None else []

    def pool_scaling(self) -> list[tuple[Any, ...]]:
        """(user, database, inflight, creates, gate_waits, gate_budget_ex, antic_notify, antic_timeout,
        create_fallback, replenish_def) of every pool, by database and user."""
        pools = sorted(copy_of(self._src.pool_list), key=lambda p: (p.database, p.username))
        return [(p.username, p.database, *p.scaling_row()) for p in pools]

    def startup_dropped(self) -> dict[tuple[str, str], int]:
        """(pool, reason) -> startup parameters dropped since start (pool: the database name)."""
        return startup_params.dropped_counts()

    def server_login_failures(self) -> dict[tuple[str, str, str], int]:
        """(database, user, SQLSTATE class) -> server connections the pooler failed to open or log in since
        start (empty for a source that does not count them)."""
        counts = getattr(self._src, "server_login_failures", None)
        return dict_copy(counts) if counts is not None else {}

    def memory_budget(self) -> tuple[int, int, int]:
        """max_memory_usage: (bytes counted now, the limit, messages refused since start); zeros for a source
        without a budget."""
        budget = getattr(self._src, "budget", None)
        if budget is None:
            return 0, 0, 0
        parts = copy_of(budget.parts)
        return sum(p.used for p in parts), int(budget.limit), sum(p.refused for p in parts)

    def worker_loads(self) -> list[tuple[int, int, float, int, int]]:
        """Per worker thread (general.worker_placement): its number, the clients it serves now, its CPU time per
        second over the last second it measured (with two workers or more), and the idle clients moved away
        from it and to it since start."""
        out = []
        for i, w in enumerate(copy_of(self._src.workers)):
            load = getattr(w, "load", None)
            share, spilled, adopted = (load.share, load.spilled, load.adopted) if load is not None else (0.0, 0, 0)
            out.append((i, len(w.clients), share, spilled, adopted))
        return out

    def rejections(self) -> dict[str, int]:
        """Clients refused before they authenticated, by reason."""
        return dict_copy(self._src.listener_rejections)
