"""Plain snapshots of the running pooler: pools, clients and servers as frozen dataclasses with their states
as names, taken from the workers' sets (copied, retried if resized meanwhile). The connection classes name
their own states (`status`); this is the one place above the connections that reads their fields."""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgdoorman.observe.interfaces import PoolKey, Source, copy_of, dict_copy

if TYPE_CHECKING:
    from pgdoorman.core.fallback import PoolFallback
    from pgdoorman.core.pool import Pool
    from pgdoorman.session.client import ClientConn
    from pgdoorman.session.server import ServerConn

# Client states as SHOW CLIENTS names them, and 'login' for a client still logging in.
CLIENT_STATES = ("login", "waiting", "active", "idle")


def live_clients(src: Source) -> list[ClientConn]:
    # A client moving between workers (general.worker_placement) is in neither set for a moment, and is listed
    # as moving until the other worker has it in its own: it may be in both, counted once.
    out: list[ClientConn] = []
    for w in src.workers:
        out.extend(copy_of(w.clients))
    moving = src.transit.clients()
    if moving:
        seen = {id(c) for c in out}
        out.extend(c for c in moving if id(c) not in seen)
    return out


def live_servers(src: Source) -> list[ServerConn]:
    # A server moving between workers is in no worker's set until it arrives (the moving list has it), and
    # then in its new worker's set while still on that list for a moment: each counts once.
    seen: set[int] = set()
    out: list[ServerConn] = []
    for w in src.workers:
        for s in copy_of(w.servers):
            if id(s) not in seen:
                seen.add(id(s))
                out.append(s)
    out.extend(s for s in src.transit.servers() if id(s) not in seen)
    return out


# ------------------------------------------------------------------------------------------ state names
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
    fallback_active: bool = False  # new server connections go to a Patroni fallback host (core/fallback.py)

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
    ps_anon: tuple[int, ...] = ()  # identities of the unnamed statements it keeps (its LRU, the latest included)
    ps_anon_evicted: int = 0  # entries its LRU of unnamed statements dropped for its size
    ps_bytes: int = 0  # Parse bytes of those statements
    pinned: str = ""  # transaction mode: what keeps it on its server between transactions ('temp,cursor'...)


@dataclass(frozen=True, slots=True)
class ServerInfo:
    id: int
    pid: int
    pool: PoolKey
    state: str  # ServerConn.status
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
    pinned: str = ""  # its client's `pinned`: the server stays with that client between transactions


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
    named: bool = False  # some client prepared it under a name (the query interner's "named" kind)
    text_bytes: int = 0  # bytes of its query text
    idle_ms: int = -1  # unnamed-only statements: how long its use count has not moved, as the sweeps saw it


@dataclass
class PoolView:
    """Live state of one pool, computed from one snapshot of clients and servers."""

    info: PoolInfo
    cl_idle: int = 0
    cl_active: int = 0
    cl_waiting: int = 0
    cl_login: int = 0
    cl_pinned: int = 0  # clients pinned to their server (transaction mode), whatever their state
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


@dataclass(frozen=True, slots=True)
class FallbackView:
    """A configured pool's Patroni-assisted fallback (core/fallback.py): state and counters since start."""

    pool: str
    active: bool
    host: str  # the fallback host kept ("" when none)
    port: int
    api_requests: int
    api_errors: int
    api_seconds: float
    api_buckets: list[int]  # requests per bucket of core/fallback.py's API_BUCKETS (not cumulative)
    connections: int
    cache_hits: int
    failures: dict[str, int]


def fallback_view(database: str, fb: PoolFallback, now: float) -> FallbackView:
    with fb.lock:
        c, host = fb.counters, fb.host
        return FallbackView(database, fb.active(now), host.host if host else "", host.port if host else 0,
                            c.api_requests, c.api_errors, c.api_seconds, list(c.api_buckets), c.connections,
                            c.cache_hits,
                            dict(c.failures))


def pool_info(p: Pool) -> PoolInfo:
    pc = p.pool_cfg
    return PoolInfo(
        database=p.database, user=p.username, name=p.name, mode=p.mode, pool_size=p.pool_size,
        min_pool_size=p.min_pool_size or 0, reserve_pool_size=pc.reserve_pool_size or 0, paused=bool(p.paused),
        total=p.total, server_host=pc.server_host, server_port=pc.server_port, server_database=pc.server_database,
        fallback_active=p.fallback is not None and p.fallback.active(time.monotonic()),
    )


def client_info(c: ClientConn, state: str) -> ClientInfo:
    pool = c.pool
    named: tuple[int, ...] = ()
    unnamed: int | None = None
    anon: tuple[int, ...] = ()
    evicted = 0
    size = 0
    if state != "login":
        rw = getattr(c, "rw", None)
        stmts = getattr(rw, "named", None)
        if stmts:
            values = list(dict_copy(stmts).values())
            named = tuple(id(st) for st in values)
            size = sum(len(st.parse_msg) for st in values)
        un = getattr(rw, "unnamed", None)
        anon_map = getattr(rw, "anon", None)
        anon_vals = list(dict_copy(anon_map).values()) if anon_map else []
        if un is not None:
            unnamed = id(un)
            if all(v is not un for v in anon_vals):
                anon_vals.append(un)
        anon = tuple(id(st) for st in anon_vals)
        size += sum(len(st.parse_msg) for st in anon_vals)
        evicted = int(getattr(rw, "anon_evicted", 0))
    return ClientInfo(
        id="" if state == "login" else client_id(c),
        pool=(pool.database, pool.username) if pool is not None else None,
        state=state, database=c.database, user=c.user, application_name=c.application_name, addr=c.addr,
        tls=bool(getattr(c, "tls", False)), writing=bool(c.out), xact_count=c.xact_count,
        query_count=c.query_count, error_count=c.error_count, connect_time=c.connect_time,
        wait_start=c.wait_start if state == "waiting" else 0.0, ps_named=named, ps_unnamed=unnamed, ps_bytes=size,
        ps_anon=anon, ps_anon_evicted=evicted,
        pinned=str(getattr(c, "pinned", "")),
    )


def server_info(s: ServerConn) -> ServerInfo:
    return ServerInfo(
        id=s.id, pid=s.pid, pool=(s.pool.database, s.pool.username), state=s.status,
        application_name=s.params.get("application_name", ""), tls=bool(getattr(s, "tls", False)),
        writing=bool(s.out), xact_count=s.xact_count, query_count=s.query_count, bytes_out=s.bytes_out,
        bytes_in=s.bytes_in, created=s.created, active_since=s.active_since,
        ps_hits=getattr(s, "ps_hits", 0), ps_misses=getattr(s, "ps_misses", 0),
        ps_cached=len(getattr(s, "prepared", ())),
        pinned=str(getattr(s.client, "pinned", "")),
    )


def take_snapshot(src: Source) -> Snapshot:
    now = time.monotonic()
    pools = copy_of(src.pool_list)
    views = {id(p): PoolView(pool_info(p)) for p in pools}
    clients: list[ClientInfo] = []
    for c in live_clients(src):
        st = c.status
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
        if ci.pinned:
            v.cl_pinned += 1
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
        if v is None or si.state == "closed":
            continue
        v.servers.append(si)
        sst = si.state
        if sst == "idle":
            v.sv_idle += 1
        elif sst == "active":
            v.sv_active += 1
            if si.active_since is not None:
                v.oldest_active_age_ms = max(v.oldest_active_age_ms, int((now - si.active_since) * 1000))
        elif sst == "used":
            v.sv_used += 1
        else:
            v.sv_login += 1
    return Snapshot(now, time.time(), clients, servers, [views[id(p)] for p in pools])


# ------------------------------------------------------------------------------------------ prepared statements
@dataclass
class PreparedView:
    """Prepared statement caches of one pool: the pool's shared cache, the references its clients hold
    (named, and the unnamed ones each keeps in its LRU), and the live servers' hit/miss counters."""

    pool_entries: int = 0
    pool_bytes: int = 0
    client_entries: int = 0
    client_bytes: int = 0
    client_named: int = 0
    client_anonymous: int = 0
    client_anon_evicted: int = 0  # evictions from the LRUs of the clients connected now
    anon_evictions: int = 0  # evictions from all its clients' LRUs since the pool started
    server_hits: int = 0
    server_misses: int = 0
    server_cached: int = 0
    # The query interner's view of the pool's cache: texts (count, bytes) of statements some client named, of
    # those only ever unnamed, and how many of the latter the TTL sweep dropped since the pool started.
    interned_named: tuple[int, int] = (0, 0)
    interned_anonymous: tuple[int, int] = (0, 0)
    interner_ttl_evictions: int = 0


def pool_interner(pool: Pool, pv: PreparedView) -> None:
    """Fill `pv`'s query interner fields from the pool's statement cache."""
    cache = getattr(pool, "ps_cache", None)
    if cache is None:
        return
    named = [0, 0]
    anon = [0, 0]
    for st in cache.snapshot():
        row = named if st.named else anon
        row[0] += 1
        row[1] += len(st.query)
    pv.interned_named, pv.interned_anonymous = (named[0], named[1]), (anon[0], anon[1])
    pv.interner_ttl_evictions = int(getattr(cache, "ttl_evictions", 0))


def statement_hash(key: Any) -> int:
    return int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "big")


def pool_statements(pool: Pool) -> list[StatementInfo]:
    cache = getattr(pool, "ps_cache", None)
    if cache is None:
        return []
    now = time.monotonic()
    return [StatementInfo(ident=id(st), name=st.name.decode("utf-8", "replace"),
                          query=st.query.decode("utf-8", "replace"), uses=st.uses, size=len(st.parse_msg),
                          hash=statement_hash(st.key), kind=getattr(st, "kind", None), named=st.named,
                          text_bytes=len(st.query), idle_ms=_idle_ms(st, now))
            for st in cache.snapshot()]


def _idle_ms(st: Any, now: float) -> int:
    """-1 for a named statement; else since when its use count has not moved (0 if it moved since the last
    sweep of the query interner, PoolCache.sweep)."""
    if st.named:
        return -1
    if st.seen != st.uses or not st.idle_since:
        return 0
    return int((now - st.idle_since) * 1000)


def pool_statement_sizes(pool: Pool) -> tuple[int, int]:
    """(entries, bytes) of a pool's prepared statement cache, without building StatementInfo rows."""
    cache = getattr(pool, "ps_cache", None)
    if cache is None:
        return 0, 0
    stmts = list(cache.snapshot())
    return len(stmts), sum(len(st.parse_msg) for st in stmts)


