"""Per-worker maintenance, the one home of the periodic and bulk work on a worker's shard of every pool:
query_wait_timeout for waiters, query_timeout for requests running on servers, idle_timeout and server_lifetime,
min_pool_size, and closing idle servers.

One Janitor per worker, driven by timers on that worker's loop (App.start_workers starts them) and by the
App (RELOAD, RECONNECT: `close_idle`) and the binary upgrade (`trim`). It decides nothing a pool decides:
the pool picks which servers expire or which waiters waited too long, under its lock; the janitor retires
them on this worker's thread.
"""

from __future__ import annotations

import functools
import logging
import random
import time
import weakref
from typing import TYPE_CHECKING, cast

from pgdoorman import placement
from pgdoorman.protocol import messages as m
from pgdoorman.session.states import ACTIVE, ADMIN, CONNECTING, IDLE, LOGIN, READY

if TYPE_CHECKING:
    from pgdoorman.core.pool import Pool
    from pgdoorman.session.client import ClientConn
    from pgdoorman.session.server import ServerConn
    from pgdoorman.worker import Worker

log = logging.getLogger("pgdoorman.janitor")

# How often waiters are checked against query_wait_timeout (the error comes at most this late).
WAIT_TICK = 0.1
# Replacements opened ahead of server_lifetime at once, per pool: the pool may hold this many servers over
# pool_size while they overlap with the servers they replace (PgDoorman's limit).
PRE_REPLACE_MAX = 3


class Janitor:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        # query_timeout: the requests in flight at the last tick, by server: (client, its answered count, since).
        self.watch: dict[ServerConn, tuple[object, int, float]] = {}
        # Servers of this worker that already have a replacement opened ahead of their server_lifetime.
        self.replaced: weakref.WeakSet[ServerConn] = weakref.WeakSet()

    def start(self) -> None:
        """On the worker's loop (or before it runs): arm the two periodic checks."""
        loop = self.worker.loop
        loop.call_later(WAIT_TICK, self._wait_tick)
        loop.call_later(self._retain_interval(), self._retain_tick)
        if self.worker.id == 0:
            # The query interner's sweep (PoolCache.sweep) ticks at a quarter of its interval, read once: a
            # restart-only setting, as in PgDoorman.
            tick = self.worker.app.config.general.query_interner_gc_interval_seconds / 4
            loop.call_later(tick, self._interner_tick, tick)

    def _interner_tick(self, tick: float) -> None:
        self.sweep_interner(time.monotonic())
        self.worker.loop.call_later(tick, self._interner_tick, tick)

    def sweep_interner(self, now: float) -> int:
        """query_interner_anon_idle_ttl_seconds (0: off): each pool's statements prepared only unnamed and idle
        that long leave its cache. Worker 0 only, for every pool. How many went."""
        ttl = self.worker.app.config.general.query_interner_anon_idle_ttl_seconds
        if not ttl:
            return 0
        return sum(pool.ps_cache.sweep(now, ttl) for pool in list(self.worker.app.pool_list))

    def _wait_tick(self) -> None:
        now = time.monotonic()
        self.expire_waiters(now)
        if any(p.query_timeout > 0 for p in self.worker.app.pool_list):
            self.check_queries(now)
        elif self.watch:
            self.watch = {}
        for pool in self.worker.app.pool_list:
            if pool.check_wanted:
                self.fetch_check_reply(pool)
        self.pressure(now)
        self.place(now)
        self.worker.loop.call_later(WAIT_TICK, self._wait_tick)

    def place(self, now: float) -> int:
        """With two workers or more, about once a second: measure this worker's CPU share; with
        general.worker_placement `pack`, move a batch of its idle clients to another worker when it is busy
        and that one has room (spill), or when a lower-numbered one has room for this one's load as well
        (gather, so that clients come back once the load has gone). How many moved."""
        w = self.worker
        g = w.app.config.general
        workers = w.app.workers
        if len(workers) < 2 or not placement.sample(w.load, now, g.worker_busy_percent, g.worker_spare_cpu_percent):
            return 0
        if g.worker_placement != "pack" or not w.clients or not w.accepting:  # (not while upgrading or stopping)
            return 0
        pct = g.worker_busy_percent
        to = placement.spill_target(workers, w, pct) if w.load.busy else placement.gather_target(workers, w, pct)
        if to is None:
            return 0
        n = placement.batch(len(w.clients))
        moving = []
        for c in w.clients:
            if placement.movable(c):
                moving.append(c)
                if len(moving) == n:
                    break
        for c in moving:
            self.move(c, to)
        w.load.spilled += len(moving)
        return len(moving)

    def move(self, c: ClientConn, to: Worker) -> None:
        """Give an idle client (placement.movable) to worker `to`, which adopts it on its own thread."""
        w = self.worker
        w.clients.discard(c)
        c.detach()  # not read again here: bytes it sends meanwhile wait in the socket for `to`'s epoll
        # Its worker from now on, before `to` adopts it: a cancel request posted for it meanwhile goes on to
        # `to`'s loop, behind the adoption (cancel.deliver), and never runs here beside its next query there.
        c.worker = to
        # Listed as moving until `to` adopts it (SHOW CLIENTS, KILL, a binary upgrade: placement.Transit).
        w.app.transit.leave(c, w.id, functools.partial(to.loop.call_soon_threadsafe, adopt_client, to, c))

    def check_queries(self, now: float) -> int:
        """query_timeout: cancel the requests of this worker's servers that have been unanswered longer than their
        pool's; how many. A request is told apart from the next by its client and the count of ReadyForQuery
        messages relayed to it (ClientBase.answered), and timed from the first tick that saw it, so a cancel
        is never early and at most one tick late."""
        watch: dict[ServerConn, tuple[object, int, float]] = {}
        seen = self.watch
        n = 0
        for s in self.worker.servers:
            limit = s.pool.query_timeout
            if limit <= 0 or s.state != ACTIVE or s.cancel_pending:
                continue
            c = cast("ClientConn | None", s.client)
            if c is None or c.expect <= 0:
                continue
            since = now
            prev = seen.get(s)
            if prev is not None and prev[0] is c and prev[1] == c.answered:
                since = prev[2]
            if now - since >= limit:
                s.cancel_for_timeout(now - since)
                n += 1
            else:
                watch[s] = (c, c.answered, since)
        self.watch = watch
        return n

    def fetch_check_reply(self, pool: Pool) -> bool:
        """Clients sent pooler_check_query and no answer is kept: run it on an idle server of this shard (if
        there is one) and keep PostgreSQL's answer, unless it is an error or leaves a transaction open (then
        the next one goes to PostgreSQL again). True when a server runs it."""
        s = cast("ServerConn | None", pool.take_one_idle(self.worker.id))
        if s is None:
            return False
        pool.check_wanted = False
        msg = pool.check_msg
        s.reply = bytearray()
        s.run_internal([msg[5:-1].decode()], lambda ok: self._check_fetched(pool, s, msg, ok))
        return True

    def _check_fetched(self, pool: Pool, s: ServerConn, msg: bytes, ok: bool) -> None:
        reply, s.reply = bytes(s.reply or b""), None
        if ok and reply.endswith(b"Z\0\0\0\x05I") and pool.check_msg == msg:
            pool.check_reply = reply
            log.debug("pooler_check_query of %s: PostgreSQL's answer (%d bytes) kept", pool.name, len(reply))
        self.worker.release_server(s)

    def expire_waiters(self, now: float) -> int:
        """Fail the clients (of any worker) that waited longer than query_wait_timeout; how many."""
        w = self.worker
        n = 0
        for pool in w.app.pool_list:
            for waiter in pool.expired_waiters(now):
                c = cast("ClientConn", waiter)
                if c.worker is w:
                    c.wait_timed_out()
                else:
                    c.worker.loop.call_soon_threadsafe(c.wait_timed_out)
                n += 1
        return n

    def pressure(self, now: float) -> None:
        """The slow paths of pools with waiters: a missed anticipation timer, and for a pool its database's
        coordinator refuses (core/coordinator.py) another eviction try, then PgDoorman's error for the clients
        that waited reserve_pool_timeout."""
        w = self.worker
        for pool in w.app.pool_list:
            if not pool.queued:
                continue
            if pool.antic_wait and (not pool.antic_due or pool.antic_due < now - WAIT_TICK):
                w.anticipation_due(pool)
            coord = pool.coord
            if coord is None or not pool.coord_blocked_since:
                continue
            if w.id == 0:
                w.evict_for(pool)
            for waiter in pool.exhausted_waiters(now):
                coord.exhausted()
                err = m.error_response("53300", coord.exhausted_error(pool.username), "FATAL")
                log.warning("pool coordinator: %s waited reserve_pool_timeout for a server of database %s "
                            "(max_db_connections %d, reserve %d/%d in use)", pool.name, pool.database,
                            coord.max_db, coord.reserve_used, coord.reserve_size)
                c = cast("ClientConn", waiter)
                if c.worker is w:
                    c.server_failed(err)
                else:
                    c.worker.loop.call_soon_threadsafe(c.server_failed, err)

    def _retain_interval(self) -> float:
        base = self.worker.app.config.general.retain_connections_time / 1000.0
        return max(0.05, base)

    def _retain_tick(self) -> None:
        self.retain(time.monotonic())
        self.worker.loop.call_later(self._retain_interval(), self._retain_tick)

    def retain(self, now: float) -> int:
        """Close idle servers past idle_timeout or server_lifetime (at most retain_connections_max per
        round, pools in random order, then the pools removed while clients still use them); worker 0 also
        keeps the configured pools' min_pool_size warm. How many were closed."""
        w = self.worker
        limit = w.app.config.general.retain_connections_max or 1 << 30
        closed = 0
        pools = list(w.app.pool_list)
        random.shuffle(pools)
        self.pre_replace(now)
        gone = [p for r in w.app.removed_pools if (p := r()) is not None]  # (App.pool_removed)
        for pool in pools + gone:
            for s, why in pool.take_expired(w.id, now, limit - closed):
                cast("ServerConn", s).retire(why)
                closed += 1
            for s in pool.take_reserve_idle(w.id, now):
                cast("ServerConn", s).retire("reserve connection idle longer than min_connection_lifetime")
        if w.id == 0:
            for pool in pools:  # (not for removed pools)
                self.ensure_min(pool)
        return closed

    def pre_replace(self, now: float) -> int:
        """Open a replacement for each server of this worker in use lately whose server_lifetime ends before
        the next round is over (or within its last 5%), so that no client waits for a new connection when it
        is closed: the replacement is idle in the pool by then. At most PRE_REPLACE_MAX per pool over pool_size
        at once. A replaced server that is idle and past its lifetime is closed now. How many were opened."""
        horizon = 1.5 * self._retain_interval()
        opened = 0
        for s in list(self.worker.servers):
            pool = s.pool
            life = pool.server_lifetime
            if life <= 0 or s.closed or s.state in (CONNECTING, LOGIN) or s.epoch != pool.epoch:
                continue
            age = now - s.created
            if s in self.replaced:
                if age > life and s.state == IDLE and pool.take_idle(s, self.worker.id):
                    s.retire("server_lifetime reached (replaced)")
                continue
            if age + max(horizon, 0.05 * life) < life or self.worker.app.shutting_down:
                continue
            if s.state == IDLE and now - s.idle_since > horizon:
                continue  # not used lately: it may expire without a successor (the pool shrinks, as PgDoorman's)
            if pool.reserve_spawn(extra=PRE_REPLACE_MAX):
                self.replaced.add(s)
                log.info("server %s (pid %d) of %s reaches server_lifetime in %.1f s: opening its replacement",
                         s.addr, s.pid, pool.name, max(0.0, life - age))
                self.worker.spawn_server(pool)
                opened += 1
        return opened

    def ensure_min(self, pool: Pool) -> None:
        if pool.min_pool_size <= 0:
            return
        if pool.passthrough and pool.scram_client_key is None and pool.server_secret and \
                pool.server_secret.startswith("SCRAM-SHA-256$"):
            return  # passthrough SCRAM cannot log in before a client has (no ClientKey yet)
        while pool.total < pool.min_pool_size and pool.reserve_spawn():
            self.worker.spawn_server(pool)

    def close_idle(self, pool: Pool, reason: str = "pool reconfigured", unless_waited_for: bool = False) -> int:
        """Close this shard's idle servers of `pool` (RELOAD changed its target, RECONNECT, a removed pool;
        with `unless_waited_for`, none while clients wait for it); how many."""
        victims = pool.drain_idle(self.worker.id, unless_waited_for)
        for s in victims:
            cast("ServerConn", s).retire(reason)
        return len(victims)

    def close_all(self, reason: str) -> None:
        """Shutdown: close every client (58006 to those logged in) and server of this worker."""
        w = self.worker
        for c in list(w.clients):
            if c.state == READY or c.state == ADMIN:
                tell_shutdown(c, reason)
            else:
                c.close(reason)
        for s in list(w.servers):
            s.close(reason)

    def close_idle_clients(self) -> None:
        """During shutdown: close the clients that hold no server (between transactions)."""
        for c in list(self.worker.clients):
            if c.server is None and not c.waiting and c.state == READY and c.last_status == 73:
                tell_shutdown(c, "shutdown")

    def trim(self) -> None:
        """Binary upgrade: close this shard's idle servers of pools nobody here waits for; the new process
        has its own."""
        for pool in self.worker.app.pool_list:
            self.close_idle(pool, "binary upgrade: not needed by the old process", unless_waited_for=True)


def kill_client(c: ClientConn) -> None:
    """The admin console's KILL of a client: PostgreSQL's own message for an administrator's kill, then close."""
    c.write(m.error_response("57P01", "terminating connection due to administrator command", "FATAL"))
    c.close_orderly("killed from the admin console")


def tell_shutdown(c: ClientConn, reason: str) -> None:
    """58006, PgBouncer's and PgDoorman's word for a pooler going away, then close."""
    c.write(m.error_response("58006", "pooler is shut down now", "FATAL"))
    c.close_orderly(reason)


def adopt_client(w: Worker, c: ClientConn) -> None:
    """On `w`'s thread: take over an idle client a busy worker moved here (Janitor.place)."""
    c.worker = w
    c.loop = w.loop
    pool = c.pool
    sc = c.scanner  # at a message boundary, holding nothing (placement.movable): only its owners change
    sc.budget = w.loop.mem
    if sc.on_stream is not None and pool is not None:
        sc.on_stream = pool.stats[w.id].on_streamed
    w.clients.add(c)  # (before it leaves the moving list: never out of both)
    w.load.adopted += 1
    if w.app.transit.arrive(c, w.id, pool):  # an admin KILL of its pool ran here before it came
        kill_client(c)
        return
    if w.app.shutting_down:
        tell_shutdown(c, "shutdown")
        return
    c.attach(w.loop)
