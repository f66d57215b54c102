"""A (database, user) pool shared by every worker: the global cap, one FIFO of waiting clients and one
idle LIFO per worker (shard). All decisions are taken under `lock`; the methods return the resulting actions
(a server to attach, (server, waiter) pairs to hand, whether to open a new connection) and the worker
carries them out outside the lock (worker.py: Worker.checkout, hand, carry_out). The pool never calls
up: it knows a client and a server only through the small protocols `Waiter` and `Pooled`.

Invariant: a server is handed to a waiter exactly once, and no client waits while an idle server sits in
any shard: every state change that could break that (a server becoming idle, a client starting to wait)
ends with `_match_locked`, which pairs idle servers with waiters, oldest waiter first. A server freed while
clients wait goes to a waiter of its own worker when one queued about as early as the oldest (`release`).

Each worker queues its own clients (`queues[wid]`, a FIFO, so ordered by `wait_start`): the oldest waiter
of all is the oldest of the N heads, and no decision walks other threads' clients. `n_queued` counts the
entries of all queues; a client that stopped waiting (`waiting` False) is dropped when it reaches a head.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from math import inf
from typing import TYPE_CHECKING, Any

from pgdoorman.config import Config, PoolConfig, UserConfig
from pgdoorman.core import fallback, startup_params
from pgdoorman.core.listen import Channels
from pgdoorman.core.pool_parts import Pooled as Pooled
from pgdoorman.core.pool_parts import PoolLive as PoolLive
from pgdoorman.core.pool_parts import PoolStats as PoolStats
from pgdoorman.core.pool_parts import ServerTlsLike as ServerTlsLike
from pgdoorman.core.pool_parts import Shard as Shard
from pgdoorman.core.pool_parts import Waiter as Waiter
from pgdoorman.core.pool_parts import expiry
from pgdoorman.core.prepared import PoolCache
from pgdoorman.core.scaling import Scaling, budget
from pgdoorman.core.stats import merged, percentile

if TYPE_CHECKING:
    from pgdoorman.core.coordinator import Coordinator


# Pool.release serves the releasing worker's oldest waiter before an older waiter of another worker (a server
# moving between workers costs an epoll unregister/register, a cross-thread call and often a wake-up, and
# makes both threads touch its objects: docs/performance.md), but only when it queued at most LOCAL_SLACK
# seconds after the oldest waiter of all: no waiter is ever overtaken by one that queued more than LOCAL_SLACK
# after it, so nobody starves.
LOCAL_SLACK = 0.01


# What the worker must do after a state change: (server, waiter) pairs to hand over, whether to open a
# new server connection (its slot is already reserved), and in how many seconds to call `anticipation_due`
# (0: no timer).
Pairs = list[tuple[Pooled, Waiter]]
Actions = tuple[Pairs | None, bool, float]


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
        self.queues: list[deque[Waiter]] = [deque() for _ in range(nworkers)]  # waiters, by their worker
        self.n_queued = 0  # entries in all queues (clients that stopped waiting and were not dropped yet included)
        self.queue0 = self.queues[0]  # with one worker its only queue (Pool.release reads it without indexing)
        self.others = [self.queues[:i] + self.queues[i + 1:] for i in range(nworkers)]  # by worker: the rest
        self.local_first = nworkers > 1  # Pool.release prefers the releasing worker's waiters
        self.paused = False
        self.unlocking: Any = None  # departed clients' advisory locks being released (session/unlocks.py)
        self.epoch = 0  # RECONNECT bumps it: servers of an older epoch are closed when they come back
        # Learned from the first server connection and sent to every client at login.
        self.server_params: dict[str, str] | None = None
        self.default_search_path = ""  # the role's or database's, read at server login before PostgreSQL 18
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
        # Connection scaling and the database's coordinator (core/coordinator.py; None: no max_db_connections).
        self.scaling = Scaling()
        self.coord: Coordinator | None = None
        self.coord_blocked_since = 0.0  # monotonic: since when the coordinator refuses a slot waiters need
        self.antic_wait = False  # the last spawn check waited for a returned server (anticipation)
        self.antic_due = 0.0  # when a timer will call anticipation_due (0: none armed)
        self.antic_cut = 0.0  # waiters queued before this had their anticipation timeout counted
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
        self._p99 = (-10.0, 0.0, 0.0)  # (when computed, transactions' p99 in us, anticipation budget in s)
        self.query_timeout = cfg.timeout_for(pool_cfg, user_cfg, "query_timeout") / 1000.0
        self.idle_check = cfg.general.server_idle_check_timeout / 1000.0  # 0: off (release sets check_at; ClientBase._link)
        self.round_robin = cfg.general.server_round_robin  # idle servers handed out oldest first
        self.set_check_query(cfg.general.pooler_check_query)
        g = cfg.general
        ratio = pool_cfg.scaling_warm_pool_ratio
        ratio = g.scaling_warm_pool_ratio if ratio is None else ratio
        self.warm = max(1, self.pool_size * ratio // 100)  # below it, servers are opened without waiting
        self.max_creates = max(1, min(g.scaling_max_parallel_creates, g.max_concurrent_creates))
        self.cleanup = pool_cfg.cleanup_server_connections
        # transaction_pinning: refuse (statements that would pin a client are refused, core/sqllex.py)
        self.pin_refuse = self.transaction_mode and pool_cfg.transaction_pinning == "refuse"
        # transaction_discard_sequences: another client's sequence values are discarded (ClientBase._link)
        self.discard_sequences = pool_cfg.transaction_discard_sequences
        self.ps_cache.size = max(1, cfg.prepared_cache_size_for(pool_cfg))
        self.ps_cache.anon_size = cfg.client_anonymous_cache_size_for(pool_cfg)
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
        """pooler_check_query: the Query message clients send as a health check (session/fastpath.py
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

    @property
    def idle_count(self) -> int:
        return self.n_idle

    @property
    def queued(self) -> bool:
        """Clients wait (read without the lock: a hint for the worker's and janitor's slow paths)."""
        return self.n_queued > 0

    # ------------------------------------------------------------------ checkout / release
    def acquire(self, client: Waiter, wid: int, now: float) -> Pooled | Actions | None:
        """A local idle server now (the common case: nothing allocated), or queue the client: then None, or
        the actions that the queueing calls for (idle servers elsewhere to hand, a server to open)."""
        with self.lock:
            if not self.n_queued and not self.paused:
                lst = self.idle[wid]
                if lst:
                    self.n_idle -= 1
                    return lst.pop(0) if self.round_robin else lst.pop()
            client.wait_start = now
            client.waiting = True
            self.queues[wid].append(client)
            self.n_queued += 1
            if self.total >= self.pool_size:  # a full pool (the usual case under load): no spawn, no timer
                self.antic_wait = False  # (_want_spawn_locked's first test, without the call)
                if not self.n_idle:
                    return None
                full = self._match_locked()
                return (full, False, 0.0) if full else None
            pairs = self._match_locked() if self.n_idle else None
            spawn = self._want_spawn_locked()
            delay = self._arm_antic_locked(now) if self.antic_wait and not self.antic_due else 0.0
        return (pairs, spawn, delay) if pairs or spawn or delay else None

    def _want_spawn_locked(self) -> bool:
        """Reserve a slot for a new server for the waiters, if they need one and may have it: pool_size,
        the anticipation above the warm threshold, the burst gate, then the database's coordinator."""
        self.antic_wait = False
        if self.paused or self.total >= self.pool_size or self.connecting >= self.n_queued:
            return False
        anticipated = self.total >= self.warm
        if anticipated and not self._anticipation_over_locked():
            self.antic_wait = True
            return False
        if self.connecting >= self.max_creates:
            self._gate_full_locked()
            return False
        coord = self.coord
        if coord is not None and not coord.take(self):
            if not self.coord_blocked_since:
                self.coord_blocked_since = time.monotonic()
            return False
        self.coord_blocked_since = 0.0
        if anticipated:
            self.scaling.create_fallback += 1
        self.total += 1
        self.connecting += 1
        self.scaling.creates += 1
        return True

    def _anticipation_over_locked(self) -> bool:
        """Above the warm threshold a server is opened only for a waiter that waited its anticipation budget
        without getting a returned one: more such waiters than servers being opened."""
        now = time.monotonic()
        when, _, antic = self._p99  # _anticbudget() inline while fresh: this runs at every queued checkout
        cut = now - (antic if now - when <= 1.0 else self._anticbudget())
        n = 0
        for q in self.queues:
            for c in q:
                if c.wait_start > cut:
                    break
                if c.waiting:
                    n += 1
                    if n > self.connecting:
                        return True
        return False

    def _anticbudget(self) -> float:
        now = time.monotonic()
        when, p99, antic = self._p99
        if now - when > 1.0:
            counts, n, _ = merged(st.xact_hist for st in self.stats)
            p99 = percentile(counts, n, 0.99)
            antic = min(budget(p99, 5.0), max(0.0, self.query_wait_timeout - 0.5))
            self._p99 = (now, p99, antic)
        return antic

    def _gate_full_locked(self) -> None:
        sc = self.scaling
        sc.gate_waits += 1
        i = self._oldest_locked()
        if i >= 0 and time.monotonic() - self.queues[i][0].wait_start > budget(self._p99[1], 20.0):
            sc.gate_budget_ex += 1

    def _arm_antic_locked(self, now: float) -> float:
        """Seconds until the oldest waiter still anticipating runs out of budget (its worker arms a timer
        for anticipation_due); 0 when none does."""
        if self.total >= self.pool_size:
            return 0.0
        cut = now - self._anticbudget()
        first = inf  # the oldest of each queue's first waiter still anticipating (a queue is ordered by wait start)
        for q in self.queues:
            for c in q:
                if c.waiting and c.wait_start > cut:
                    first = min(first, c.wait_start)
                    break
        if first == inf:
            return 0.0
        self.antic_due = first - cut + now
        return max(0.001, self.antic_due - now)

    def anticipation_due(self, now: float) -> tuple[int, float]:
        """The anticipation timer: how many servers to open for waiters whose budget ran out (their slots are
        reserved), and in how many seconds to come back (0: no timer)."""
        with self.lock:
            self.antic_due = 0.0
            cut = now - self._anticbudget()
            for q in self.queues:
                for c in q:
                    if c.wait_start > cut:
                        break
                    if c.waiting and c.wait_start > self.antic_cut:
                        self.scaling.antic_timeout += 1
            self.antic_cut = cut
            n = 0
            while n < self.max_creates and self._want_spawn_locked():
                n += 1
            return n, self._arm_antic_locked(now) if self.n_queued else 0.0

    def reserve_spawn(self, extra: int = 0) -> bool:
        """Reserve a slot for a new server outside of a checkout (min_pool_size, login parameters; `extra`
        slots over pool_size for a replacement opened before a server's server_lifetime ends): not past the
        burst gate (put off to the next round) nor past the database's cap (no reserve, no eviction for it)."""
        with self.lock:
            if self.total >= self.pool_size + extra or self.paused:
                return False
            if self.connecting >= self.max_creates:
                self.scaling.replenish_def += 1
                return False
            if self.coord is not None and not self.coord.take(self, main_only=True):
                return False
            self.total += 1
            self.connecting += 1
            self.scaling.creates += 1
            return True

    # ------------------------------------------------------------------ the database's coordinator
    def join(self, coord: Coordinator | None) -> None:
        """Count this pool's servers in `coord` (None: in none) from now on (Coordinators.refresh)."""
        if self.coord is coord:  # the common case on a refresh: nothing to lock for
            return
        with self.lock:
            old = self.coord
            if old is coord:
                return
            if old is not None:
                old.joined(-self.total)
                old.unblock(self)
            if coord is not None:
                coord.joined(self.total)
            self.coord = coord
            self.coord_blocked_since = 0.0

    def take_oldest_idle(self, created_before: float, keep: int) -> Pooled | None:
        """The coordinator evicts: the oldest idle server created before `created_before`, out of its shard,
        unless the pool would go below `keep` servers; the caller retires it."""
        with self.lock:
            if self.total <= keep:
                return None
            best: tuple[list[Pooled], Pooled] | None = None
            for lst in self.idle:
                for s in lst:
                    if s.created <= created_before and (best is None or s.created < best[1].created):
                        best = (lst, s)
            if best is None:
                return None
            best[0].remove(best[1])
            self.n_idle -= 1
            return best[1]

    def _match_locked(self) -> Pairs:
        pairs: Pairs = []
        if self.paused:
            return pairs
        while self.n_idle:
            i = self._oldest_locked()
            if i < 0:
                break
            c = self.queues[i].popleft()
            self.n_queued -= 1
            lst = self.idle[i]  # the waiter's own shard first
            if not lst:
                lst = next(x for x in self.idle if x)
            self.n_idle -= 1
            pairs.append((lst.pop(0) if self.round_robin else lst.pop(), c))
        return pairs

    def _oldest_locked(self) -> int:
        """The worker whose queue holds the oldest waiter of all (at its head), or -1 when nobody waits; heads
        that stopped waiting are dropped on the way. Ties go to the lower worker id."""
        best = -1
        first = 0.0
        for i, q in enumerate(self.queues):
            while q:
                c = q[0]
                if c.waiting:
                    if best < 0 or c.wait_start < first:
                        best, first = i, c.wait_start
                    break
                q.popleft()
                self.n_queued -= 1
        return best

    def release(self, server: Pooled, wid: int, now: float) -> Waiter | None:
        """A server became free in worker `wid` (its owner): the waiter to hand it to, or None when it was
        parked idle in that shard. The waiter is the oldest one of worker `wid` if it queued at most
        LOCAL_SLACK after the oldest waiter of all (so the server stays on its thread), else the oldest."""
        server.idle_since = now  # free since now, whether parked or handed on (idle_timeout reads it)
        with self.lock:
            if self.n_queued and not self.paused:
                c: Waiter | None
                if self.local_first:
                    c = self._pick_locked(wid)
                else:  # one worker: plain FIFO (its one queue holds every entry counted)
                    c = self.queue0.popleft()
                    self.n_queued -= 1
                    if c.waiting:
                        if self.total < self.pool_size and self.warm <= self.total:  # it was anticipating:
                            self.scaling.antic_notify += 1  # served by a return
                        return c
                    c = self._pick_any_locked(wid)  # it stopped waiting: the next one that waits, if any
                if c is not None:
                    if self.total < self.pool_size and self.warm <= self.total:
                        self.scaling.antic_notify += 1
                    return c
            self.idle[wid].append(server)
            self.n_idle += 1
            if self.idle_check:
                server.check_at = now + self.idle_check
            if self.coord_blocked_since:  # nobody waits any more
                self._unblock_locked()
            return None

    def _pick_locked(self, wid: int) -> Waiter | None:
        """The waiter (popped) a server freed by worker `wid` goes to, with more than one worker: `wid`'s own
        oldest waiter if it queued at most LOCAL_SLACK after the oldest waiter of all, else the oldest of all;
        None when nobody waits. Reads the heads of the other queues only."""
        own = self.queues[wid]
        c = own[0] if own else None
        if c is None or not c.waiting:
            return self._pick_any_locked(wid)
        best = own
        limit = c.wait_start - LOCAL_SLACK  # a head elsewhere older than this wins
        for q in self.others[wid]:
            if q:
                o = q[0]
                if o.wait_start < limit:
                    if not o.waiting:  # it stopped waiting: decide again without it
                        return self._pick_any_locked(wid)
                    best, limit = q, o.wait_start
        self.n_queued -= 1
        return best.popleft()

    def _pick_any_locked(self, wid: int) -> Waiter | None:
        """_pick_locked's decision after dropping the heads that stopped waiting, in every queue."""
        own = self.queues[wid]
        while own and not own[0].waiting:
            own.popleft()
            self.n_queued -= 1
        best = own if own else None
        limit = own[0].wait_start - LOCAL_SLACK if own else 0.0  # an older head elsewhere wins
        for q in self.others[wid]:
            while q:
                c = q[0]
                if c.waiting:
                    if best is None or c.wait_start < limit:
                        best, limit = q, c.wait_start
                    break
                q.popleft()
                self.n_queued -= 1
        if best is None:
            return None
        self.n_queued -= 1
        return best.popleft()

    def _unblock_locked(self) -> None:
        self.coord_blocked_since = 0.0
        if self.coord is not None:
            self.coord.unblock(self)

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
            if unless_waited_for and self.n_queued:
                return []
            lst = self.idle[wid]
            victims = list(lst)
            lst.clear()
            self.n_idle -= len(victims)
        return victims

    def take_expired(self, wid: int, now: float, budget: int) -> list[tuple[Pooled, str]]:
        """Take up to `budget` idle servers of shard `wid` past idle_timeout or server_lifetime out of the pool,
        never going below min_pool_size, with the reason for each (pool_parts.expiry); the caller retires them."""
        out: list[tuple[Pooled, str]] = []
        with self.lock:
            lst = self.idle[wid]
            for s in list(lst):
                if len(out) >= budget:
                    break
                why = expiry(s, now, self.idle_timeout, self.server_lifetime)
                if why is not None and self.total - len(out) > self.min_pool_size:
                    lst.remove(s)
                    self.n_idle -= 1
                    out.append((s, why))
        return out

    def server_gone(self, was_connecting: bool = False) -> bool:
        """A server closed (or failed to connect): free its slot. True: open a replacement for the waiters
        (its slot is reserved)."""
        with self.lock:
            self.total -= 1
            if self.coord is not None:
                self.coord.give_back()
            if was_connecting:
                self.connecting -= 1
                return False
            return self._want_spawn_locked()

    def connected(self, server: Pooled) -> None:
        with self.lock:
            self.connecting -= 1

    def fail_first_waiter(self) -> Waiter | None:
        """Pop the oldest waiter of all (its server could not be opened), or None."""
        with self.lock:
            i = self._oldest_locked()
            if i < 0:
                return None
            self.n_queued -= 1
            return self.queues[i].popleft()

    def retry_for_waiters(self) -> bool:
        """True: open a server for the waiters (its slot is reserved)."""
        with self.lock:
            return self._want_spawn_locked()

    def remove_waiter(self, client: Waiter) -> None:
        """Take `client` out of its queue (its worker's; it left or got its answer while it waited)."""
        with self.lock:
            wid = client.worker.id
            for q in (self.queues[wid], *self.others[wid]):  # its own first; the others just in case
                try:
                    q.remove(client)
                except ValueError:
                    continue
                self.n_queued -= 1
                return

    def expired_waiters(self, now: float) -> list[Waiter]:
        """Pop waiters older than query_wait_timeout, oldest first."""
        if not self.n_queued:  # read without the lock: a waiter queued meanwhile is checked next time
            return []
        with self.lock:
            return self._pop_older_locked(now - self.query_wait_timeout)

    def _pop_older_locked(self, limit: float) -> list[Waiter]:
        """Pop the waiters that queued at `limit` or before, oldest first (each FIFO is ordered by wait start);
        entries that stopped waiting are dropped on the way."""
        out: list[Waiter] = []
        for q in self.queues:
            while q and (not q[0].waiting or q[0].wait_start <= limit):
                c = q.popleft()
                self.n_queued -= 1
                if c.waiting:
                    out.append(c)
        if len(self.queues) > 1:
            out.sort(key=_wait_start)
        return out

    def exhausted_waiters(self, now: float) -> list[Waiter]:
        """Pop the waiters that waited reserve_pool_timeout while the coordinator refused this pool the slot
        they need (they get the coordinator's error)."""
        coord = self.coord
        since = self.coord_blocked_since
        if coord is None or not since or not self.n_queued or now - since < coord.reserve_timeout:
            return []
        with self.lock:
            if not self.coord_blocked_since:
                return []
            if not coord.is_blocked(self):  # it got a slot meanwhile, or needs none
                self.coord_blocked_since = 0.0
                return []
            out = self._pop_older_locked(now - coord.reserve_timeout)
            if self._oldest_locked() < 0:
                self._unblock_locked()
        return out

    def take_reserve_idle(self, wid: int, now: float) -> list[Pooled]:
        """Servers the database holds above max_db_connections (the reserve) are closed once idle longer than
        min_connection_lifetime, while nobody waits here: this shard's, at most the reserve in use."""
        coord = self.coord
        if coord is None or coord.current <= coord.max_db or self.n_queued:
            return []
        out: list[Pooled] = []
        with self.lock:
            lst = self.idle[wid]
            n = coord.current - coord.max_db
            for s in list(lst):
                if len(out) >= n:
                    break
                if now - s.idle_since >= coord.min_lifetime:
                    lst.remove(s)
                    self.n_idle -= 1
                    out.append(s)
        return out

    def set_paused(self, paused: bool) -> Actions | None:
        """PAUSE or RESUME; on resume, the actions for the clients that waited meanwhile."""
        with self.lock:
            self.paused = paused
            if paused:
                return None
            pairs = self._match_locked()
            spawn = self._want_spawn_locked()
        return (pairs, spawn, 0.0) if pairs or spawn else None

    # ------------------------------------------------------------------ reporting
    def counts(self) -> dict[str, int]:
        with self.lock:
            return {
                "sv_idle": self.n_idle,
                "sv_total": self.total,
                "sv_login": self.connecting,
                "cl_waiting": sum(1 for q in self.queues for c in q if c.waiting),
            }

    def scaling_row(self) -> tuple[int, ...]:
        """SHOW POOL_SCALING after user and database: inflight, creates, gate_waits, gate_budget_ex,
        antic_notify, antic_timeout, create_fallback, replenish_def."""
        sc = self.scaling
        with self.lock:
            return (self.connecting, sc.creates, sc.gate_waits, sc.gate_budget_ex, sc.antic_notify,
                    sc.antic_timeout, sc.create_fallback, sc.replenish_def)


def _wait_start(c: Waiter) -> float:
    return c.wait_start
