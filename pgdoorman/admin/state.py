"""Read-only views of the running pooler for the admin console and the metrics endpoint: snapshots of the
workers' client and server sets, per-pool state counts, per-pool counter totals summed over the workers'
lock-free shards, and the 15-second sampler behind SHOW STATS averages.

Nothing here mutates the pooler. Worker-owned containers are copied with `list(...)` and the copy is
retried if the owner resized it meanwhile; counters are plain ints read without locks, so a view is a
consistent-enough picture, not an atomic one.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pgdoorman.stats import merged

if TYPE_CHECKING:
    from pgdoorman.app import App
    from pgdoorman.client import ClientConn
    from pgdoorman.pool import Pool
    from pgdoorman.server import ServerConn

T = TypeVar("T")

CLIENT_READY = 7  # pgdoorman.client.READY (kept literal: importing client.py here would be circular for tests)
SERVER_STATES = ("login", "login", "idle", "active", "used", "closed")  # pgdoorman.server.STATE_NAMES
SERVER_IDLE, SERVER_ACTIVE, SERVER_USED, SERVER_CLOSED = 2, 3, 4, 5

PoolKey = tuple[str, str]


def copy_of(container: Iterable[T]) -> list[T]:
    """`list(container)` for a set/dict/deque another thread may resize: retried until it succeeds."""
    for _ in range(100):
        try:
            return list(container)
        except RuntimeError:  # "changed size during iteration"
            continue
    return []


K = TypeVar("K")
V = TypeVar("V")


def dict_copy(d: dict[K, V]) -> dict[K, V]:
    for _ in range(100):
        try:
            return dict(d)
        except RuntimeError:
            continue
    return {}


def live_clients(app: App) -> list[ClientConn]:
    out: list[ClientConn] = []
    for w in app.workers:
        out.extend(copy_of(w.clients))
    return out


def live_servers(app: App) -> list[ServerConn]:
    # A server moving between workers can sit in two workers' sets for a moment: count it once.
    seen: set[int] = set()
    out: list[ServerConn] = []
    for w in app.workers:
        for s in copy_of(w.servers):
            if id(s) not in seen:
                seen.add(id(s))
                out.append(s)
    return out


def client_state(c: ClientConn) -> str | None:
    """'waiting' (queued for a server), 'active' (linked to a server), 'idle' (logged in, between
    transactions), or None for admin sessions, closed clients and clients still logging in."""
    if c.admin is not None or c.closed:
        return None
    if c.waiting:
        return "waiting"
    if c.server is not None:
        return "active"
    if c.state == CLIENT_READY:
        return "idle"
    return None


def server_state(s: ServerConn) -> str:
    st = s.state
    return SERVER_STATES[st] if 0 <= st < len(SERVER_STATES) else "unknown"


def server_active_since(s: ServerConn) -> float | None:
    """Monotonic time the server's current piece of work started: the core's `active_since` if it keeps
    one, else the start of the linked client's transaction."""
    t = getattr(s, "active_since", None)
    if isinstance(t, float) and t > 0:
        return t
    c = s.client
    if c is not None and c.xact_start:
        return float(c.xact_start)
    return None


@dataclass
class PoolView:
    """Live state of one pool, computed from one snapshot of clients and servers."""

    pool: Pool
    cl_idle: int = 0
    cl_active: int = 0
    cl_waiting: int = 0
    cl_login: int = 0
    sv_active: int = 0
    sv_idle: int = 0
    sv_used: int = 0
    sv_login: int = 0
    maxwait_us: int = 0  # longest wait of a client queued right now
    oldest_active_age_ms: int = 0
    clients: list[ClientConn] = field(default_factory=list)
    servers: list[ServerConn] = field(default_factory=list)

    @property
    def key(self) -> PoolKey:
        return (self.pool.database, self.pool.username)


@dataclass
class Snapshot:
    taken: float  # monotonic
    wall: float
    clients: list[ClientConn]
    servers: list[ServerConn]
    pools: list[PoolView]

    def view(self, key: PoolKey) -> PoolView | None:
        for v in self.pools:
            if v.key == key:
                return v
        return None


def take_snapshot(app: App) -> Snapshot:
    now = time.monotonic()
    pools = copy_of(app.pool_list)
    views = {id(p): PoolView(p) for p in pools}
    clients = live_clients(app)
    servers = live_servers(app)
    for c in clients:
        p = c.pool
        v = views.get(id(p)) if p is not None else None
        if v is None:
            continue
        st = client_state(c)
        if st is None:
            if c.admin is None and not c.closed:
                v.cl_login += 1
            continue
        v.clients.append(c)
        if st == "waiting":
            v.cl_waiting += 1
            ws = c.wait_start
            if ws:
                v.maxwait_us = max(v.maxwait_us, int((now - ws) * 1e6))
        elif st == "active":
            v.cl_active += 1
        else:
            v.cl_idle += 1
    for s in servers:
        v = views.get(id(s.pool))
        if v is None:
            continue
        sst = s.state
        if sst == SERVER_CLOSED:
            continue
        v.servers.append(s)
        if sst == SERVER_IDLE:
            v.sv_idle += 1
        elif sst == SERVER_ACTIVE:
            v.sv_active += 1
            since = server_active_since(s)
            if since is not None:
                v.oldest_active_age_ms = max(v.oldest_active_age_ms, int((now - since) * 1000))
        elif sst == SERVER_USED:
            v.sv_used += 1
        else:
            v.sv_login += 1
    return Snapshot(now, time.time(), clients, servers, [views[id(p)] for p in pools])


# ------------------------------------------------------------------------------------------ prepared statements
@dataclass
class PreparedView:
    """Prepared statement caches of one pool: the pool's shared cache, the references its clients hold
    (named, and the one unnamed statement each), and the live servers' hit/miss counters."""

    pool_entries: int = 0
    pool_bytes: int = 0
    client_entries: int = 0
    client_bytes: int = 0
    client_named: int = 0
    client_anonymous: int = 0
    server_hits: int = 0
    server_misses: int = 0
    server_cached: int = 0


def pool_statements(pool: Pool) -> list[Any]:
    cache = getattr(pool, "ps_cache", None)
    return list(cache.snapshot()) if cache is not None else []


def client_statements(c: ClientConn) -> tuple[list[Any], Any]:
    """(named statements, unnamed statement or None) a client holds."""
    named = getattr(c, "named", None)
    return (list(dict_copy(named).values()) if named else []), getattr(c, "unnamed", None)


def prepared_view(v: PoolView) -> PreparedView:
    pv = PreparedView()
    for st in pool_statements(v.pool):
        pv.pool_entries += 1
        pv.pool_bytes += len(st.parse_msg)
    for c in v.clients:
        named, unnamed = client_statements(c)
        pv.client_named += len(named)
        pv.client_bytes += sum(len(st.parse_msg) for st in named)
        if unnamed is not None:
            pv.client_anonymous += 1
            pv.client_bytes += len(unnamed.parse_msg)
    pv.client_entries = pv.client_named + pv.client_anonymous
    for s in v.servers:
        pv.server_hits += getattr(s, "ps_hits", 0)
        pv.server_misses += getattr(s, "ps_misses", 0)
        pv.server_cached += len(getattr(s, "prepared", ()))
    return pv


# ------------------------------------------------------------------------------------------ counters
Merged = tuple[list[int], int, int]  # (bucket counts, n, sum of microseconds)


@dataclass
class Totals:
    """Counters of one pool since it was created, summed over the per-worker shards."""

    xact_count: int = 0
    query_count: int = 0
    bytes_in: int = 0  # received from clients
    bytes_out: int = 0  # sent to clients
    xact_time_us: int = 0
    query_time_us: int = 0
    wait_time_us: int = 0
    wait_count: int = 0
    errors: int = 0
    max_wait_us: int = 0
    errors_by_class: dict[str, int] = field(default_factory=dict)
    # (query, transaction, wait) histograms read in the same pass as the counts above, which come from them:
    # a scrape's totals and histogram counts agree even while workers keep counting.
    hists: tuple[Merged, Merged, Merged] = ((([], 0, 0)), (([], 0, 0)), (([], 0, 0)))


def pool_totals(pool: Pool) -> Totals:
    t = Totals()
    shards = copy_of(pool.stats)
    q, x, w = t.hists = (
        merged(s.query_hist for s in shards),
        merged(s.xact_hist for s in shards),
        merged(s.wait_hist for s in shards),
    )
    t.query_count, t.query_time_us = q[1], q[2]
    t.xact_count, t.xact_time_us = x[1], x[2]
    t.wait_count, t.wait_time_us = w[1], w[2]
    for st in shards:
        t.bytes_in += st.bytes_in
        t.bytes_out += st.bytes_out
        t.errors += st.errors
        t.max_wait_us = max(t.max_wait_us, st.max_wait_us)
        for k, n in dict_copy(st.errors_by_class).items():
            t.errors_by_class[k] = t.errors_by_class.get(k, 0) + n
    return t


def pool_histograms(pool: Pool) -> tuple[Merged, Merged, Merged]:
    """(query, transaction, wait) histograms of a pool merged over the workers."""
    shards = copy_of(pool.stats)
    return (
        merged(s.query_hist for s in shards),
        merged(s.xact_hist for s in shards),
        merged(s.wait_hist for s in shards),
    )


@dataclass
class Averages:
    """SHOW STATS averages over the sampler's window: rates per second, times in microseconds."""

    xact_count: int = 0
    query_count: int = 0
    recv: int = 0
    sent: int = 0
    errors: int = 0
    xact_time: int = 0
    query_time: int = 0
    wait_time: int = 0
    window: float = 0.0


def averages(now: Totals, base: Totals, seconds: float) -> Averages:
    secs = max(seconds, 1e-3)
    dx = now.xact_count - base.xact_count
    dq = now.query_count - base.query_count
    return Averages(
        xact_count=round(dx / secs),
        query_count=round(dq / secs),
        recv=round((now.bytes_in - base.bytes_in) / secs),
        sent=round((now.bytes_out - base.bytes_out) / secs),
        errors=round((now.errors - base.errors) / secs),
        xact_time=(now.xact_time_us - base.xact_time_us) // dx if dx > 0 else 0,
        query_time=(now.query_time_us - base.query_time_us) // dq if dq > 0 else 0,
        # As PgDoorman: the wait accumulated in the window spread over the window's transactions.
        wait_time=(now.wait_time_us - base.wait_time_us) // dx if dx > 0 else 0,
        window=seconds,
    )


class StatsSampler:
    """Samples every pool's totals once per `tick` seconds and keeps `period` seconds of history, so SHOW
    STATS can report averages over the last period without touching the workers' hot path. Until a full
    period has passed, the window starts at process start (when every counter was zero)."""

    def __init__(self, app: App, period: float = 15.0, tick: float = 1.0,
                 extra: Callable[[], None] | None = None) -> None:
        self.app = app
        self.period = period
        self.tick = tick
        self.extra = extra
        self.lock = threading.Lock()
        self.samples: deque[tuple[float, dict[PoolKey, Totals]]] = deque()
        # Process start on the monotonic clock: the implicit all-zero first sample.
        self.origin = time.monotonic() - max(0.0, time.time() - app.started)
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None
        # Servers' prepared statement hits/misses die with the server: accumulate their increases per
        # pool so the *_total counters stay monotonic (a server closing between two samples loses at
        # most one tick of increases).
        self.ps_last: dict[int, tuple[int, int]] = {}
        self.ps_totals: dict[PoolKey, list[int]] = {}

    def start(self) -> StatsSampler:
        self.thread = threading.Thread(target=self._run, name="stats-sampler", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.thread is not None:
            self.thread.join(5)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                self.sample()
                if self.extra is not None and n % 15 == 0:
                    self.extra()
            except Exception:  # a sampler must never die: the next tick tries again
                import logging

                logging.getLogger("pgdoorman.admin").exception("stats sampler failed")
            n += 1
            self._stop.wait(self.tick)

    def track_prepared(self, servers: list[ServerConn]) -> None:
        with self.lock:
            last = self.ps_last
            seen: dict[int, tuple[int, int]] = {}
            for s in servers:
                hits, misses = getattr(s, "ps_hits", 0), getattr(s, "ps_misses", 0)
                ph, pm = last.get(s.id, (0, 0))
                tot = self.ps_totals.setdefault((s.pool.database, s.pool.username), [0, 0])
                tot[0] += max(0, hits - ph)
                tot[1] += max(0, misses - pm)
                seen[s.id] = (hits, misses)
            self.ps_last = seen

    def prepared_totals(self, key: PoolKey) -> tuple[int, int]:
        with self.lock:
            h, m = self.ps_totals.get(key, (0, 0))
            return h, m

    def sample(self) -> None:
        now = time.monotonic()
        totals = {(p.database, p.username): pool_totals(p) for p in copy_of(self.app.pool_list)}
        self.track_prepared(live_servers(self.app))
        with self.lock:
            self.samples.append((now, totals))
            # Keep the newest sample that is at least `period` old: it is the base of the window.
            while len(self.samples) >= 2 and self.samples[1][0] <= now - self.period:
                self.samples.popleft()

    def base(self, now: float) -> tuple[float, dict[PoolKey, Totals]]:
        """The sample the averaging window starts at: the newest one at least `period` old; if there is
        none yet, process start when the process is younger than `period`, else the oldest sample (a
        shorter but recent window), else process start."""
        with self.lock:
            best: tuple[float, dict[PoolKey, Totals]] | None = None
            for t, tot in self.samples:
                if t <= now - self.period:
                    best = (t, tot)
                else:
                    break
            if best is not None:
                return best
            if self.origin > now - self.period:
                return (self.origin, {})
            if self.samples and now - self.samples[0][0] >= 1.0:
                return self.samples[0]
            return (self.origin, {})

    def averages_for(self, key: PoolKey, current: Totals, now: float | None = None) -> Averages:
        now = time.monotonic() if now is None else now
        t0, base = self.base(now)
        return averages(current, base.get(key, Totals()), now - t0)


_samplers: weakref.WeakKeyDictionary[Any, StatsSampler] = weakref.WeakKeyDictionary()
_samplers_lock = threading.Lock()


def get_sampler(app: App) -> StatsSampler:
    """The app's sampler, started on first use (by the first admin session or the metrics server)."""
    with _samplers_lock:
        s = _samplers.get(app)
        if s is None:
            from pgdoorman.metrics.process import refresh_socket_counts

            s = StatsSampler(app, extra=refresh_socket_counts).start()
            _samplers[app] = s
        return s
