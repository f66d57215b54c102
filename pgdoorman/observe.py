"""The observation API and the control interface of a running pooler: what the admin console and the
metrics endpoint read and act through. They import this module, never app, worker or the connections.

`Observer` turns the live pooler (a `Source`, which `App` satisfies) into plain snapshots: pools, clients
and servers as frozen dataclasses with their states as names, per-pool counter totals summed over the
workers' lock-free shards, connection counts, and the 15-second sampler behind SHOW STATS averages.
`Control` is the `Protocol` of what the console may ask the pooler to do (reload, pause, kill, ...).

Nothing here mutates the pooler. Worker-owned containers are copied with `list(...)` and the copy is
retried if the owner resized it meanwhile; counters are plain ints read without locks, so a snapshot is a
consistent-enough picture, not an atomic one. This is the one module above the connections that reads
their fields; the state names are mapped here from the constants client.py and server.py export.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pgdoorman.client import READY as CLIENT_READY
from pgdoorman.server import ACTIVE as SERVER_ACTIVE
from pgdoorman.server import CLOSED as SERVER_CLOSED
from pgdoorman.server import IDLE as SERVER_IDLE
from pgdoorman.server import INTERNAL as SERVER_USED
from pgdoorman.server import STATE_NAMES as SERVER_STATES
from pgdoorman.stats import merged

if TYPE_CHECKING:
    from pgdoorman.client import ClientConn
    from pgdoorman.config import Config
    from pgdoorman.pool import Pool
    from pgdoorman.server import ServerConn

log = logging.getLogger("pgdoorman.observe")

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

PoolKey = tuple[str, str]  # (database, user)

# Client states as SHOW CLIENTS names them, and 'login' for a client still logging in.
CLIENT_STATES = ("login", "waiting", "active", "idle")


# ------------------------------------------------------------------------------------------ interfaces
class WorkerView(Protocol):
    @property
    def clients(self) -> Collection[ClientConn]: ...
    @property
    def servers(self) -> Collection[ServerConn]: ...


class CancelCounts(Protocol):
    @property
    def requests(self) -> int: ...


class Source(Protocol):
    """What the observer reads from the running pooler (`App` satisfies it)."""

    @property
    def config(self) -> Config: ...
    @property
    def started(self) -> float: ...  # wall clock
    @property
    def workers(self) -> Sequence[WorkerView]: ...
    @property
    def pool_list(self) -> Sequence[Pool]: ...
    @property
    def total_accepted(self) -> int: ...
    @property
    def tls_connections(self) -> int: ...
    @property
    def connection_errors(self) -> int: ...
    @property
    def listener_rejections(self) -> dict[str, int]: ...
    @property
    def cancels(self) -> CancelCounts: ...


class UnknownDatabase(LookupError):
    """A control command named a database no pool serves (the console answers 3D000)."""

    def __init__(self, database: str) -> None:
        super().__init__(database)
        self.database = database


class Control(Protocol):
    """What the admin console may ask the pooler to do (`App` satisfies it). `database=None` means every
    pool; an unknown database raises UnknownDatabase before anything is changed. `here` is the worker the
    caller runs on (work a resumed pool hands out starts there); the console passes it through unread."""

    def reload(self) -> tuple[bool, str]: ...
    def pause(self, database: str | None, here: Any) -> None: ...
    def resume(self, database: str | None, here: Any) -> None: ...
    def reconnect(self, database: str | None) -> None: ...
    def kill(self, database: str | None) -> None: ...
    def set_log_level(self, spec: str) -> str: ...
    def request_upgrade(self) -> bool: ...
    def request_shutdown(self) -> None: ...


# ------------------------------------------------------------------------------------------ copying
def copy_of(container: Iterable[T]) -> list[T]:
    """`list(container)` for a set/dict/deque another thread may resize: retried until it succeeds."""
    for _ in range(100):
        try:
            return list(container)
        except RuntimeError:  # "changed size during iteration"
            continue
    return []


def dict_copy(d: dict[K, V]) -> dict[K, V]:
    for _ in range(100):
        try:
            return dict(d)
        except RuntimeError:
            continue
    return {}


def live_clients(src: Source) -> list[ClientConn]:
    out: list[ClientConn] = []
    for w in src.workers:
        out.extend(copy_of(w.clients))
    return out


def live_servers(src: Source) -> list[ServerConn]:
    # A server moving between workers can sit in two workers' sets for a moment: count it once.
    seen: set[int] = set()
    out: list[ServerConn] = []
    for w in src.workers:
        for s in copy_of(w.servers):
            if id(s) not in seen:
                seen.add(id(s))
                out.append(s)
    return out


# ------------------------------------------------------------------------------------------ state names
def client_state(c: ClientConn) -> str | None:
    """'waiting' (queued for a server), 'active' (linked to a server), 'idle' (logged in, between
    transactions), 'login' (still logging in), or None for admin sessions and closed clients."""
    if c.admin is not None or c.closed:
        return None
    if c.waiting:
        return "waiting"
    if c.server is not None:
        return "active"
    if c.state == CLIENT_READY:
        return "idle"
    return "login"


def server_state(s: ServerConn) -> str:
    """'login', 'idle', 'active', 'used' (housekeeping), 'closed', or 'unknown'."""
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


_client_ids: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_next_login_id = [1 << 31]  # above any cancel key (< 2**31), so the two id spaces never collide
_ids_lock = threading.Lock()


def client_id(c: ClientConn) -> str:
    """`#c<N>`: N is the client's cancel key (its BackendKeyData pid) once it has one; a client without
    one gets a number from a separate range that stays the same while it lives."""
    if c.pid:
        return f"#c{c.pid}"
    with _ids_lock:
        n = _client_ids.get(c)
        if n is None:
            n = _next_login_id[0]
            _next_login_id[0] += 1
            _client_ids[c] = n
    return f"#c{n}"


# ------------------------------------------------------------------------------------------ snapshots
@dataclass(frozen=True, slots=True)
class PoolInfo:
    """A pool's identity and settings as they are now."""

    database: str
    user: str
    name: str  # 'user@database', as SHOW PREPARED_STATEMENTS names it
    mode: str
    pool_size: int
    min_pool_size: int
    reserve_pool_size: int
    paused: bool
    total: int  # server connections counted against pool_size
    server_host: str
    server_port: int
    server_database: str

    @property
    def key(self) -> PoolKey:
        return (self.database, self.user)


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """One client that is not an admin session and not closed."""

    id: str  # '#c<N>'; '' while logging in
    pool: PoolKey | None
    state: str  # one of CLIENT_STATES
    database: str
    user: str
    application_name: str
    addr: str
    tls: bool
    writing: bool  # output is queued for it
    xact_count: int
    query_count: int
    error_count: int
    connect_time: float  # wall clock
    wait_start: float  # monotonic; 0 when not queued
    ps_named: tuple[int, ...] = ()  # identities (StatementInfo.ident) of its named prepared statements
    ps_unnamed: int | None = None  # identity of its unnamed statement, if any
    ps_bytes: int = 0  # Parse bytes of those statements


@dataclass(frozen=True, slots=True)
class ServerInfo:
    id: int
    pid: int
    pool: PoolKey
    state: str  # see server_state()
    application_name: str
    tls: bool
    writing: bool
    xact_count: int
    query_count: int
    bytes_out: int
    bytes_in: int
    created: float  # monotonic
    active_since: float | None
    ps_hits: int
    ps_misses: int
    ps_cached: int


@dataclass(frozen=True, slots=True)
class StatementInfo:
    """One entry of a pool's prepared statement cache."""

    ident: int
    name: str
    query: str
    uses: int
    size: int  # bytes of its Parse message
    hash: int  # stable 64-bit hash of what identifies it (text, parameter types, settings)
    kind: str | None  # the core's own label, if it keeps one


@dataclass
class PoolView:
    """Live state of one pool, computed from one snapshot of clients and servers."""

    info: PoolInfo
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
    clients: list[ClientInfo] = field(default_factory=list)  # logged in (idle, active, waiting)
    servers: list[ServerInfo] = field(default_factory=list)  # not closed

    @property
    def key(self) -> PoolKey:
        return self.info.key


@dataclass
class Snapshot:
    taken: float  # monotonic
    wall: float
    clients: list[ClientInfo]  # every client but admin sessions and closed ones
    servers: list[ServerInfo]  # every server, closed ones included (state 'closed')
    pools: list[PoolView]

    def view(self, key: PoolKey) -> PoolView | None:
        for v in self.pools:
            if v.key == key:
                return v
        return None


def pool_info(p: Pool) -> PoolInfo:
    pc = p.pool_cfg
    return PoolInfo(
        database=p.database, user=p.username, name=p.name, mode=p.mode, pool_size=p.pool_size,
        min_pool_size=p.min_pool_size or 0, reserve_pool_size=pc.reserve_pool_size or 0, paused=bool(p.paused),
        total=p.total, server_host=pc.server_host, server_port=pc.server_port, server_database=pc.server_database,
    )


def client_info(c: ClientConn, state: str) -> ClientInfo:
    pool = c.pool
    named: tuple[int, ...] = ()
    unnamed: int | None = None
    size = 0
    if state != "login":
        stmts = getattr(c, "named", None)
        if stmts:
            values = list(dict_copy(stmts).values())
            named = tuple(id(st) for st in values)
            size = sum(len(st.parse_msg) for st in values)
        un = getattr(c, "unnamed", None)
        if un is not None:
            unnamed = id(un)
            size += len(un.parse_msg)
    return ClientInfo(
        id="" if state == "login" else client_id(c),
        pool=(pool.database, pool.username) if pool is not None else None,
        state=state, database=c.database, user=c.user, application_name=c.application_name, addr=c.addr,
        tls=bool(getattr(c, "tls", False)), writing=bool(c.out), xact_count=c.xact_count,
        query_count=c.query_count, error_count=c.error_count, connect_time=c.connect_time,
        wait_start=c.wait_start if state == "waiting" else 0.0, ps_named=named, ps_unnamed=unnamed, ps_bytes=size,
    )


def server_info(s: ServerConn) -> ServerInfo:
    return ServerInfo(
        id=s.id, pid=s.pid, pool=(s.pool.database, s.pool.username), state=server_state(s),
        application_name=s.params.get("application_name", ""), tls=bool(getattr(s, "tls", False)),
        writing=bool(s.out), xact_count=s.xact_count, query_count=s.query_count, bytes_out=s.bytes_out,
        bytes_in=s.bytes_in, created=s.created, active_since=server_active_since(s),
        ps_hits=getattr(s, "ps_hits", 0), ps_misses=getattr(s, "ps_misses", 0),
        ps_cached=len(getattr(s, "prepared", ())),
    )


def take_snapshot(src: Source) -> Snapshot:
    now = time.monotonic()
    pools = copy_of(src.pool_list)
    views = {id(p): PoolView(pool_info(p)) for p in pools}
    clients: list[ClientInfo] = []
    for c in live_clients(src):
        st = client_state(c)
        if st is None:
            continue
        ci = client_info(c, st)
        clients.append(ci)
        p = c.pool
        v = views.get(id(p)) if p is not None else None
        if v is None:
            continue
        if st == "login":
            v.cl_login += 1
            continue
        v.clients.append(ci)
        if st == "waiting":
            v.cl_waiting += 1
            if ci.wait_start:
                v.maxwait_us = max(v.maxwait_us, int((now - ci.wait_start) * 1e6))
        elif st == "active":
            v.cl_active += 1
        else:
            v.cl_idle += 1
    servers: list[ServerInfo] = []
    for s in live_servers(src):
        si = server_info(s)
        servers.append(si)
        v = views.get(id(s.pool))
        if v is None or s.state == SERVER_CLOSED:
            continue
        v.servers.append(si)
        sst = s.state
        if sst == SERVER_IDLE:
            v.sv_idle += 1
        elif sst == SERVER_ACTIVE:
            v.sv_active += 1
            if si.active_since is not None:
                v.oldest_active_age_ms = max(v.oldest_active_age_ms, int((now - si.active_since) * 1000))
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


def statement_hash(key: Any) -> int:
    return int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "big")


def pool_statements(pool: Pool) -> list[StatementInfo]:
    cache = getattr(pool, "ps_cache", None)
    if cache is None:
        return []
    return [StatementInfo(ident=id(st), name=st.name.decode("utf-8", "replace"),
                          query=st.query.decode("utf-8", "replace"), uses=st.uses, size=len(st.parse_msg),
                          hash=statement_hash(st.key), kind=getattr(st, "kind", None))
            for st in cache.snapshot()]


def pool_statement_sizes(pool: Pool) -> tuple[int, int]:
    """(entries, bytes) of a pool's prepared statement cache, without building StatementInfo rows."""
    cache = getattr(pool, "ps_cache", None)
    if cache is None:
        return 0, 0
    stmts = list(cache.snapshot())
    return len(stmts), sum(len(st.parse_msg) for st in stmts)


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
    period has passed, the window starts at process start (when every counter was zero). `extra` runs
    every 15 ticks on the sampler's thread (the composition root passes the socket-count refresh)."""

    def __init__(self, src: Source, period: float = 15.0, tick: float = 1.0,
                 extra: Callable[[], None] | None = None) -> None:
        self.src = src
        self.period = period
        self.tick = tick
        self.extra = extra
        self.lock = threading.Lock()
        self.samples: deque[tuple[float, dict[PoolKey, Totals]]] = deque()
        # Process start on the monotonic clock: the implicit all-zero first sample.
        self.origin = time.monotonic() - max(0.0, time.time() - src.started)
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
                logging.getLogger("pgdoorman.admin").exception("stats sampler failed")
            n += 1
            self._stop.wait(self.tick)

    def track_prepared(self, servers: Iterable[ServerInfo]) -> None:
        with self.lock:
            last = self.ps_last
            seen: dict[int, tuple[int, int]] = {}
            for s in servers:
                hits, misses = s.ps_hits, s.ps_misses
                ph, pm = last.get(s.id, (0, 0))
                tot = self.ps_totals.setdefault(s.pool, [0, 0])
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
        totals = {(p.database, p.username): pool_totals(p) for p in copy_of(self.src.pool_list)}
        self.track_prepared(server_info(s) for s in live_servers(self.src))
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
        for c in v.clients:
            pv.client_named += len(c.ps_named)
            pv.client_bytes += c.ps_bytes
            if c.ps_unnamed is not None:
                pv.client_anonymous += 1
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

    def rejections(self) -> dict[str, int]:
        """Clients refused before they authenticated, by reason."""
        return dict_copy(self._src.listener_rejections)
