"""A (database, user) pool shared by every worker: the global cap, the FIFO of waiting clients and one
idle LIFO per worker (shard). All decisions are taken under `lock`; the methods return the resulting actions
(a server to attach, (server, waiter) pairs to hand, whether to open a new connection) and the worker
carries them out outside the lock (worker.py: Worker.checkout, hand, carry_out). The pool never calls
up: it knows a client and a server only through the small protocols `Waiter` and `Pooled`.

Invariant: a server is handed to a waiter exactly once, and no client waits while an idle server sits in
any shard: every state change that could break that (a server becoming idle, a client starting to wait)
ends with `_match_locked`, which pairs idle servers with waiters, oldest waiter first. A server freed while
clients wait goes to a waiter of its own worker when one queued about as early as the oldest (`release`).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from pgdoorman.config import Config, PoolConfig, UserConfig
from pgdoorman.core import fallback, startup_params
from pgdoorman.core.listen import Channels
from pgdoorman.core.prepared import PoolCache
from pgdoorman.core.stats import STREAM_KINDS, Histogram

if TYPE_CHECKING:
    import ssl


class ServerTlsLike(Protocol):
    """What a pool's server connections read of its server TLS (pgdoorman.net.tls.ServerTls)."""

    @property
    def mode(self) -> str: ...
    @property
    def context(self) -> ssl.SSLContext | None: ...
    @property
    def first(self) -> bool: ...
    @property
    def required(self) -> bool: ...


class PoolLive(Protocol):
    """The live objects of one (pool, user), built once from the checked config by pgdoorman.resources
    (PoolResources): server TLS, and the JWT keys for clients' tokens and for ours to PostgreSQL."""

    @property
    def server_tls(self) -> ServerTlsLike: ...
    @property
    def jwt_key(self) -> Any: ...
    @property
    def jwt_server_key(self) -> Any: ...


class PoolStats:
    """Per-worker counters of one pool: only the owning worker writes them, readers sum the shards.

    Query, transaction and wait counts and time sums live in the histograms only: one write per event,
    so a reader on another thread (free-threaded CPython) never sees a count and its histogram disagree.
    """

    __slots__ = ("bytes_in", "bytes_out", "max_wait_us", "errors", "xact_hist", "query_hist", "wait_hist",
                 "errors_by_class", "pins", "refused", "query_timeouts", "check_cache", "check_backend", "streams",
                 "handed_local", "handed_moved")

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0
        self.max_wait_us = 0
        self.errors = 0
        self.xact_hist = Histogram()
        self.query_hist = Histogram()
        self.wait_hist = Histogram()
        self.errors_by_class: dict[str, int] = {}  # SQLSTATE class (first two chars) -> count
        self.pins = 0  # transaction-mode clients pinned to their server (session/client_base.py session_check)
        self.refused = 0  # statements refused because they would pin (transaction_pinning: refuse)
        self.query_timeouts = 0  # requests cancelled by query_timeout
        self.check_cache = 0  # pooler_check_query answered from the kept answer
        self.check_backend = 0  # pooler_check_query sent to PostgreSQL (no answer kept yet)
        # Streamed messages (message_size_to_be_stream): by kind (STREAM_KINDS), ok count, error count, bytes.
        self.streams = [0] * 9
        self.handed_local = 0  # freed servers handed to a waiter of the same worker (worker.py Worker.hand)
        self.handed_moved = 0  # ... to a waiter of another worker: the server moved there

    def streamed(self, t: int, size: int, ok: bool) -> None:
        """A message of `size` bytes went through in pieces (ok), or its connection closed in its middle."""
        k = STREAM_KINDS.get(t)
        if k is not None:
            k *= 3
            self.streams[k + (0 if ok else 1)] += 1
            self.streams[k + 2] += size

    @property
    def xact_count(self) -> int:
        return self.xact_hist.n

    @property
    def xact_time_us(self) -> int:
        return self.xact_hist.total

    @property
    def query_count(self) -> int:
        return self.query_hist.n

    @property
    def query_time_us(self) -> int:
        return self.query_hist.total

    @property
    def wait_count(self) -> int:
        return self.wait_hist.n

    @property
    def wait_time_us(self) -> int:
        return self.wait_hist.total


class Shard(Protocol):
    """The worker a waiter lives on, as the pool sees it: which idle list to serve it from."""

    @property
    def id(self) -> int: ...


class Waiter(Protocol):
    """A client as the pool sees it (ClientConn): queued while it waits; `waiting` turns False when it gets
    a server or gives up, and the pool then skips it."""

    waiting: bool
    wait_start: float

    @property
    def worker(self) -> Shard: ...


class Pooled(Protocol):
    """A server as the pool sees it (ServerConn): parked idle, expired by age or idleness."""

    idle_since: float
    fallback_until: float  # a fallback host's connection: closed after this (0: not one)

    @property
    def id(self) -> int: ...

    @property
    def created(self) -> float: ...


# Pool.release serves a waiter of the releasing worker before an older waiter of another worker (a server
# moving between workers costs an epoll unregister/register, a cross-thread call and often a wake-up, and
# makes both threads touch its objects: docs/performance.md), but only one that queued at most LOCAL_SLACK
# seconds after the oldest waiter of all, and found among the LOCAL_SCAN waiters after it: no waiter is ever
# overtaken by one that queued more than LOCAL_SLACK after it, so nobody starves.
LOCAL_SLACK = 0.01
LOCAL_SCAN = 32


# What the worker must do after a state change: (server, waiter) pairs to hand over, and whether to open a
# new server connection (its slot is already reserved).
Pairs = list[tuple[Pooled, Waiter]]
Actions = tuple[Pairs | None, bool]


class Pool:
    def __init__(self, cfg: Config, pool_cfg: PoolConfig, user_cfg: UserConfig, nworkers: int,
                 live: PoolLive) -> None:
        self.lock = threading.Lock()
        self.database = pool_cfg.name
        self.username = user_cfg.username
        self.idle: list[list[Pooled]] = [[] for _ in range(nworkers)]
        self.stats = [PoolStats() for _ in range(nworkers)]
        self.n_idle = 0
        self.total = 0  # connected + connecting servers, counted against pool_size
        self.connecting = 0
        self.waiters: deque[Waiter] = deque()
        self.local_first = nworkers > 1  # Pool.release prefers the releasing worker's waiters
        self.paused = False
        self.epoch = 0  # RECONNECT bumps it: servers of an older epoch are closed when they come back
        # Learned from the first server connection and sent to every client at login.
        self.server_params: dict[str, str] | None = None
        # (setting, value as a client gave it) -> the value as PostgreSQL reports it, for startup settings a
        # server accepted: a client whose settings are all known logs in (transaction mode) without a server.
        self.spellings: dict[tuple[str, str], str] = {}
        # SCRAM passthrough: the ClientKey recovered from a client's proof lets us log in to PostgreSQL.
        self.scram_client_key: bytes | None = None
        self.scram_verifier: Any = None  # cached verifier for plain-text passwords (client side)
        self.ps_cache = PoolCache(cfg.prepared_cache_size_for(pool_cfg))
        # An auth_query user's pool (pgdoorman/auth_query/pools.py), made at first login and collected when
        # unused; `touched` is when a login last took it (monotonic).
        self.dynamic = False
        self.touched = 0.0
        # The startup_parameters cascade (core/startup_params.py): an auth_query row's JSON, and dedicated mode.
        self.startup_row: str | None = None
        self.startup_dedicated = False
        # Transaction mode LISTEN/NOTIFY (core/listen.py): made at the first client's LISTEN/UNLISTEN.
        self.channels: Channels | None = None
        self.apply(cfg, pool_cfg, user_cfg, live)

    def apply(self, cfg: Config, pool_cfg: PoolConfig, user_cfg: UserConfig, live: PoolLive) -> None:
        """(Re)load settings; called at start and on RELOAD with the objects built from that config."""
        self.cfg = cfg
        self.pool_cfg = pool_cfg
        self.user_cfg = user_cfg
        self.pool_size = user_cfg.pool_size
        self.min_pool_size = user_cfg.min_pool_size
        self.mode = cfg.pool_mode_for(pool_cfg, user_cfg)
        self.transaction_mode = self.mode == "transaction"
        self.connect_timeout = cfg.timeout_for(pool_cfg, user_cfg, "connect_timeout") / 1000.0
        self.idle_timeout = cfg.timeout_for(pool_cfg, user_cfg, "idle_timeout") / 1000.0
        self.server_lifetime = cfg.timeout_for(pool_cfg, user_cfg, "server_lifetime") / 1000.0
        self.query_wait_timeout = cfg.general.query_wait_timeout / 1000.0
        self.query_timeout = cfg.timeout_for(pool_cfg, user_cfg, "query_timeout") / 1000.0
        self.idle_check = cfg.general.server_idle_check_timeout / 1000.0  # 0: off (session/client_base.py _link)
        self.round_robin = cfg.general.server_round_robin  # idle servers handed out oldest first
        self.set_check_query(cfg.general.pooler_check_query)
        self.cleanup = pool_cfg.cleanup_server_connections
        # transaction_pinning: refuse (statements that would pin a client are refused, core/sqllex.py)
        self.pin_refuse = self.transaction_mode and pool_cfg.transaction_pinning == "refuse"
        self.ps_cache.size = max(1, cfg.prepared_cache_size_for(pool_cfg))
        self.server_ps_cache_size = max(1, cfg.server_prepared_cache_size_for(pool_cfg))
        self.server_user = user_cfg.server_username or user_cfg.username
        self.server_tls = live.server_tls
        if user_cfg.server_username and user_cfg.server_password is not None:
            self.server_secret: str | None = user_cfg.server_password
        elif user_cfg.server_username:
            self.server_secret = None
        else:
            self.server_secret = user_cfg.password  # passthrough: md5 hash, SCRAM verifier or plain text
        self.passthrough = user_cfg.server_username is None
        self.jwt_key = live.jwt_key
        self.jwt_server_key = live.jwt_server_key
        # Clients of this user answer with a clear-text password: a JWT token, or a password PAM checks.
        self.cleartext_login = self.jwt_key is not None or bool(user_cfg.auth_pam_service)
        self.set_startup(self.startup_row, self.startup_dedicated)
        self.fallback = fallback.for_pool(pool_cfg.name, cfg.fallback_for(pool_cfg), pool_cfg.server_host,
                                          pool_cfg.server_port)

    def set_check_query(self, sql: str) -> None:
        """pooler_check_query: the Query message clients send as a health check (session/client_base.py
        _check_query answers it from `check_reply`, PostgreSQL's answer, kept from the first time)."""
        msg = b"Q" + (len(sql.encode()) + 5).to_bytes(4, "big") + sql.encode() + b"\0"
        if getattr(self, "check_msg", None) != msg:
            self.check_msg = msg
            self.check_n = len(msg)
            self.check_reply: bytes | None = None
            self.check_wanted = False  # a client asked it and no answer is kept: the janitor fetches one

    def set_startup(self, row: str | None, dedicated: bool = False) -> None:
        """The settings this pool's server connections send in their StartupMessage: general's, the pool's,
        then an auth_query row's (`row`, its raw JSON; dropped in `dedicated` mode), and whether the packet
        fits PostgreSQL's limit (else clients get 53400 at login)."""
        self.startup_row, self.startup_dedicated = row, dedicated
        sc = startup_params.cascade(self.cfg.general.startup_parameters, self.pool_cfg.startup_parameters, row,
                                    dedicated)
        base = {"user": self.server_user, "database": self.pool_cfg.server_database,
                "application_name": self.pool_cfg.application_name or "pg_doorman"}
        self.startup = sc
        self.startup_parameters = sc.params
        self.startup_fits = startup_params.fits(base, sc.params)
        startup_params.count_dropped(self.database, sc)

    @property
    def name(self) -> str:
        return f"{self.username}@{self.database}"

    # ------------------------------------------------------------------ checkout / release
    def acquire(self, client: Waiter, wid: int, now: float) -> Pooled | Actions | None:
        """A local idle server now (the common case: nothing allocated), or queue the client: then None, or
        the actions that the queueing calls for (idle servers elsewhere to hand, a server to open)."""
        with self.lock:
            if not self.waiters and not self.paused:
                lst = self.idle[wid]
                if lst:
                    self.n_idle -= 1
                    return lst.pop(0) if self.round_robin else lst.pop()
            client.wait_start = now
            client.waiting = True
            self.waiters.append(client)
            pairs = self._match_locked() if self.n_idle else None
            spawn = self._want_spawn_locked()
        return (pairs, spawn) if pairs or spawn else None

    def _want_spawn_locked(self) -> bool:
        if self.paused:
            return False
        if self.total < self.pool_size and self.connecting < len(self.waiters):
            self.total += 1
            self.connecting += 1
            return True
        return False

    def reserve_spawn(self, extra: int = 0) -> bool:
        """Reserve a slot for a new server outside of a checkout (min_pool_size, login parameters; `extra`
        slots over pool_size for a replacement opened before a server's server_lifetime ends)."""
        with self.lock:
            if self.total < self.pool_size + extra and not self.paused:
                self.total += 1
                self.connecting += 1
                return True
            return False

    def _match_locked(self) -> Pairs:
        pairs: Pairs = []
        if self.paused:
            return pairs
        waiters = self.waiters
        while waiters and self.n_idle:
            c = waiters.popleft()
            if not c.waiting:
                continue
            lst = self.idle[c.worker.id]
            if not lst:
                lst = next(x for x in self.idle if x)
            self.n_idle -= 1
            pairs.append((lst.pop(0) if self.round_robin else lst.pop(), c))
        return pairs

    def release(self, server: Pooled, wid: int, now: float) -> Waiter | None:
        """A server became free in worker `wid` (its owner): the waiter to hand it to, or None when it was
        parked idle in that shard. The waiter is the oldest one of worker `wid` if it queued at most
        LOCAL_SLACK after the oldest waiter of all (so the server stays on its thread), else the oldest."""
        server.idle_since = now  # free since now, whether parked or handed on (the idle check reads it)
        with self.lock:
            waiters = self.waiters
            if waiters and not self.paused:
                c = waiters.popleft()
                while not c.waiting and waiters:
                    c = waiters.popleft()
                if c.waiting:
                    if c.worker.id != wid and waiters and self.local_first:
                        return self._local_waiter_locked(c, wid)
                    return c
            self.idle[wid].append(server)
            self.n_idle += 1
            return None

    def _local_waiter_locked(self, oldest: Waiter, wid: int) -> Waiter:
        """Worker `wid`'s oldest waiter queued within LOCAL_SLACK of `oldest` (popped already; it goes back
        to the head of the queue), looking at most LOCAL_SCAN waiters ahead; else `oldest`."""
        waiters = self.waiters
        limit = oldest.wait_start + LOCAL_SLACK
        i = 0
        for c in waiters:
            if c.wait_start > limit or i >= LOCAL_SCAN:
                break
            if c.waiting and c.worker.id == wid:
                del waiters[i]
                waiters.appendleft(oldest)
                return c
            i += 1
        return oldest

    def take_idle(self, server: Pooled, wid: int) -> bool:
        """Remove a specific idle server from shard `wid` (it died or is being retired)."""
        with self.lock:
            lst = self.idle[wid]
            try:
                lst.remove(server)
            except ValueError:
                return False
            self.n_idle -= 1
            return True

    def take_one_idle(self, wid: int) -> Pooled | None:
        """Take the most recently parked idle server of shard `wid` out of the pool (for the pooler's own use),
        or None."""
        with self.lock:
            lst = self.idle[wid]
            if not lst:
                return None
            self.n_idle -= 1
            return lst.pop()

    def drain_idle(self, wid: int, unless_waited_for: bool = False) -> list[Pooled]:
        """Take every idle server out of shard `wid` (the pool is reconfigured, or a binary upgrade hands over;
        with `unless_waited_for`, none while clients wait): the caller retires them."""
        with self.lock:
            if unless_waited_for and self.waiters:
                return []
            lst = self.idle[wid]
            victims = list(lst)
            lst.clear()
            self.n_idle -= len(victims)
        return victims

    def take_expired(self, wid: int, now: float, budget: int) -> list[tuple[Pooled, str]]:
        """Take up to `budget` idle servers of shard `wid` past idle_timeout or server_lifetime out of the pool,
        never going below min_pool_size, with the reason for each; the caller retires them. +-20% jitter so
        servers opened together do not all expire together."""
        out: list[tuple[Pooled, str]] = []
        with self.lock:
            lst = self.idle[wid]
            for s in list(lst):
                if len(out) >= budget:
                    break
                jit = 0.8 + 0.4 * ((s.id * 2654435761) % 1000) / 1000.0
                too_idle = self.idle_timeout > 0 and now - s.idle_since > self.idle_timeout * jit
                too_old = self.server_lifetime > 0 and now - s.created > self.server_lifetime * jit \
                    or 0 < s.fallback_until < now
                if (too_idle or too_old) and self.total - len(out) > self.min_pool_size:
                    lst.remove(s)
                    self.n_idle -= 1
                    why = "idle_timeout" if now - s.idle_since > self.idle_timeout else "server_lifetime"
                    out.append((s, why))
        return out

    def server_gone(self, was_connecting: bool = False) -> bool:
        """A server closed (or failed to connect): free its slot. True: open a replacement for the waiters
        (its slot is reserved)."""
        with self.lock:
            self.total -= 1
            if was_connecting:
                self.connecting -= 1
                return False
            return self._want_spawn_locked()

    def connected(self, server: Pooled) -> None:
        with self.lock:
            self.connecting -= 1

    def fail_first_waiter(self) -> Waiter | None:
        with self.lock:
            while self.waiters:
                c = self.waiters.popleft()
                if c.waiting:
                    return c
        return None

    def retry_for_waiters(self) -> bool:
        """True: open a server for the waiters (its slot is reserved)."""
        with self.lock:
            return self._want_spawn_locked()

    def remove_waiter(self, client: Waiter) -> None:
        with self.lock:
            try:
                self.waiters.remove(client)
            except ValueError:
                pass

    def expired_waiters(self, now: float) -> list[Waiter]:
        """Pop waiters older than query_wait_timeout (the FIFO is ordered by wait start)."""
        out: list[Waiter] = []
        if not self.waiters:  # read without the lock: a waiter queued meanwhile is checked next time
            return out
        limit = now - self.query_wait_timeout
        with self.lock:
            w = self.waiters
            while w and (not w[0].waiting or w[0].wait_start <= limit):
                c = w.popleft()
                if c.waiting:
                    out.append(c)
        return out

    def set_paused(self, paused: bool) -> Actions | None:
        """PAUSE or RESUME; on resume, the actions for the clients that waited meanwhile."""
        with self.lock:
            self.paused = paused
            if paused:
                return None
            pairs = self._match_locked()
            spawn = self._want_spawn_locked()
        return (pairs, spawn) if pairs or spawn else None

    # ------------------------------------------------------------------ reporting
    def counts(self) -> dict[str, int]:
        with self.lock:
            return {
                "sv_idle": self.n_idle,
                "sv_total": self.total,
                "sv_login": self.connecting,
                "cl_waiting": sum(1 for c in self.waiters if c.waiting),
            }
