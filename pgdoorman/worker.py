"""One worker = one thread = one selector loop with its own SO_REUSEPORT listener, the clients it accepted
and its shard of every pool. Everything that happens to a connection happens on its worker's thread;
servers move between workers only through `hand_over`/`adopt`, posted on the loops' wake-up queues.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

from pgdoorman import placement
from pgdoorman.core import fallback
from pgdoorman.net.conn import Conn
from pgdoorman.net.loop import Loop
from pgdoorman.net.sockopts import apply_socket, linger_off
from pgdoorman.protocol import messages as m
from pgdoorman.session import listening, resets, unlocks
from pgdoorman.session.client import READY, ClientConn
from pgdoorman.session.host import Registry
from pgdoorman.session.server import ServerConn
from pgdoorman.session.states import ACTIVE, CONNECTING, DIRTY_RESTORE, IDLE, INTERNAL, LOGIN

if TYPE_CHECKING:
    import weakref

    from pgdoorman.core.pool import Pairs, Pool
    from pgdoorman.net.loop import Timer
    from pgdoorman.net.sockopts import TcpOptions
    from pgdoorman.placement import Transit

log = logging.getLogger("pgdoorman.worker")


class Process(Registry, Protocol):
    """The process as a worker sees it (implemented by App): the registry its connections read, plus CPU
    pinning, TCP options, admission counting and the shutdown flag. Declared here so that the worker does not
    import the app."""

    @property
    def tcp_options(self) -> TcpOptions: ...

    @property
    def shutting_down(self) -> bool: ...

    @property
    def pool_list(self) -> list[Pool]: ...

    @property
    def removed_pools(self) -> tuple[weakref.ref[Pool], ...]: ...

    @property
    def workers(self) -> list[Worker]: ...

    @property
    def transit(self) -> Transit: ...

    def cpu_for_worker(self, wid: int) -> set[int] | None: ...

    def client_admitted(self) -> bool: ...

    def client_left(self) -> None: ...

    def server_login_failed(self, pool: Pool, error: bytes | None) -> None: ...


# accept() failing for want of resources: the process's descriptor table is full (EMFILE), the system's is
# (ENFILE), or the kernel is short of socket memory. Accepting again at once fails again, and the listener
# stays readable (level-triggered) while connections queue: without a pause the loop would spin.
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_BACKOFF_MIN = 0.01  # PgDoorman sleeps 10 ms after such an error
ACCEPT_BACKOFF_MAX = 0.5  # doubling up to this while the shortage lasts
ACCEPT_REMINDER = 60.0  # a burst that lasts is logged again this often


class Listener:
    """Accepts connections on one listening socket and turns them into ClientConns.

    When accept() fails for want of descriptors (EMFILE, ENFILE) the listener leaves the loop's poll set for
    a back-off (10 ms doubling up to 0.5 s) and tries again; connections wait in the kernel's listen queue
    meanwhile. A burst lasts from the first such failure until the listen queue is drained; it is logged
    once when it starts, with a reminder each minute while it lasts, and once when it ends, with the number
    of failed attempts."""

    __slots__ = ("sock", "worker", "is_unix", "backoff", "timer", "burst_failures", "burst_started",
                 "burst_logged", "bursts")

    def __init__(self, sock: socket.socket, worker: Worker, is_unix: bool) -> None:
        self.sock = sock
        self.worker = worker
        self.is_unix = is_unix
        self.backoff = 0.0  # current back-off; 0 outside a burst
        self.timer: Timer | None = None  # set while backing off (unregistered from the loop)
        self.burst_failures = 0
        self.burst_started = 0.0
        self.burst_logged = 0.0
        self.bursts = 0  # bursts since start

    def on_event(self, mask: int) -> None:
        w = self.worker
        for _ in range(64):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                if self.backoff:
                    self._burst_over()  # the listen queue is drained
                return
            except OSError as e:
                if e.errno in _EXHAUSTED:
                    self._back_off(e)
                    return
                # ECONNABORTED and the like: that one connection is gone, the next may be fine.
                log.warning("accept failed: %s", e)
                return
            if self.backoff:
                self.backoff = ACCEPT_BACKOFF_MIN  # descriptors came back: retry soon if they run out again
            w.accepted(conn, addr, self.is_unix)
        if self.backoff and not self._queued():
            self._burst_over()

    # ------------------------------------------------------------------ descriptor shortage
    def _back_off(self, e: OSError) -> None:
        now = time.monotonic()
        self.burst_failures += 1
        if not self.backoff:
            self.bursts += 1
            self.burst_started = self.burst_logged = now
            self.backoff = ACCEPT_BACKOFF_MIN
            log.error("accept failed: %s (%s): not accepting new connections on this listener, retrying with "
                      "back-off; they wait in the listen queue", e.strerror or e, _why(e))
        else:
            self.backoff = min(self.backoff * 2, ACCEPT_BACKOFF_MAX)
            if now - self.burst_logged >= ACCEPT_REMINDER:
                self.burst_logged = now
                log.error("accept still failing: %s (%s): %d failed attempts in %.0f s", e.strerror or e,
                          _why(e), self.burst_failures, now - self.burst_started)
        self.pause()
        self.timer = self.worker.loop.call_later(self.backoff, self._retry)

    def _retry(self) -> None:
        self.timer = None
        if self.worker.accepting and self.sock.fileno() != -1:
            self.arm()
            # accept() fails with EMFILE even on an empty queue (the descriptor is reserved first): when
            # nothing is queued any more, the listener will not be readable, and the burst is over now.
            if not self._queued():
                self._burst_over()

    def _queued(self) -> bool:
        """Connections wait in the listen queue (a zero-timeout poll(2), which needs no descriptor)."""
        p = select.poll()
        p.register(self.sock, select.POLLIN)
        try:
            return bool(p.poll(0))
        except OSError:
            return False

    def _burst_over(self) -> None:
        log.warning("accepting connections again: the listen queue is drained after %d failed accept attempts "
                    "over %.1f s", self.burst_failures, time.monotonic() - self.burst_started)
        self.backoff = 0.0
        self.burst_failures = 0

    # ------------------------------------------------------------------ poll set
    def arm(self) -> None:
        """Watch the listening socket (not while a back-off runs: its timer does it)."""
        if self.timer is not None:
            return
        try:
            self.worker.loop.sel.register(self.sock, 1, self)
        except (KeyError, ValueError, OSError):
            pass  # registered already, or closed

    def pause(self) -> None:
        try:
            self.worker.loop.sel.unregister(self.sock)
        except (KeyError, ValueError, OSError):
            pass

    def close(self, reason: str = "") -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pause()
        self.sock.close()


def _why(e: OSError) -> str:
    if e.errno == errno.EMFILE:
        return "the process's open file limit is reached; raise `ulimit -n` (LimitNOFILE) or lower max_connections"
    if e.errno == errno.ENFILE:
        return "the system-wide open file limit is reached (fs.file-max)"
    return "the kernel is short of memory for sockets"


class Worker:
    def __init__(self, app: Process, wid: int) -> None:
        self.app = app
        self.id = wid
        self.loop = Loop(f"worker-{wid}")
        self.listeners: list[Listener] = []
        self.clients: set[ClientConn] = set()
        self.servers: set[ServerConn] = set()
        self.accepting = True
        self.load = placement.Load()  # general.worker_placement: this thread's CPU share, written by it only

    # ------------------------------------------------------------------ setup
    def add_listener(self, sock: socket.socket, is_unix: bool = False) -> None:
        lst = Listener(sock, self, is_unix)
        self.listeners.append(lst)
        self.loop.call_soon_threadsafe(self._register_listener, lst)

    def _register_listener(self, lst: Listener) -> None:
        lst.arm()

    def stop_accepting(self) -> None:
        self.accepting = False
        for lst in self.listeners:
            lst.close()
        self.listeners.clear()

    def pause_accepting(self) -> None:
        """Stop accepting but keep the listening sockets open (a binary upgrade shares them with the new
        process, and comes back to them if it dies)."""
        self.accepting = False
        for lst in self.listeners:
            lst.pause()

    def resume_accepting(self) -> None:
        self.accepting = True
        for lst in self.listeners:
            lst.arm()

    def run(self) -> None:
        cpus = self.app.cpu_for_worker(self.id)
        if cpus is not None:
            try:
                os.sched_setaffinity(0, cpus)
            except OSError as e:
                log.warning("worker %d: could not pin to CPUs %s: %s", self.id, cpus, e)
        self.loop.run()

    def apply_tcp(self, sock: socket.socket) -> None:
        """The socket options of a client or server connection (TCP or Unix: see net/sockopts.py)."""
        apply_socket(sock, self.app.tcp_options)

    # ------------------------------------------------------------------ clients
    def accepted(self, sock: socket.socket, addr: object, is_unix: bool) -> None:
        sock.setblocking(False)
        self.apply_tcp(sock)
        peer = "unix" if is_unix else f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        if not self.accepting:
            sock.close()
            return
        if not self.app.client_admitted():
            try:
                sock.send(m.error_response("53300", "sorry, too many clients already", "FATAL"))
            except OSError:
                pass
            # Sent before the client's startup packet: a reset (tcp_so_linger 0) could reach the client while
            # it still connects, before it reads the error. An orderly close delivers it.
            linger_off(sock)
            sock.close()
            return
        w = placement.target(self.app.workers, self, self.app.config.general)
        if w is not self:  # placed before any byte is read: the client lives on `w` from the start
            w.loop.call_soon_threadsafe(w.take_client, sock, peer, is_unix)
            return
        self.take_client(sock, peer, is_unix)

    def take_client(self, sock: socket.socket, peer: str, is_unix: bool) -> None:
        """A client accepted (and admitted) by this worker or placed here by the one that accepted it."""
        if self.app.shutting_down:
            self.app.client_left()
            sock.close()
            return
        c = ClientConn(sock, self, peer, is_unix)
        self.clients.add(c)
        c._apply_mask()

    def client_closed(self, c: ClientConn, reason: str) -> None:
        self.clients.discard(c)
        self.app.client_left()
        if c.lsn is not None:
            listening.client_gone(c)  # transaction mode LISTEN: its channels, UNLISTENed where nobody else listens
        if c.pid:
            self.app.cancels.unregister(c.pid, c)
        if c.admin is not None and c.admin is not True:
            try:
                c.admin.on_close()
            except Exception:
                log.exception("admin session close failed")
        if c.state == READY and self.app.config.general.log_client_disconnections:
            log.info("client %s (%s@%s) disconnected: %s", c.addr, c.user, c.database, reason)
        pool = c.pool
        if c.waiting:
            c.waiting = False
            if pool is not None:
                pool.remove_waiter(c)
        s = c.server
        if s is not None:
            c.server = None
            s.client = None
            self.release_server(s, client_gone=True, client=c)

    # ------------------------------------------------------------------ servers
    def spawn_server(self, pool: Pool) -> None:
        fb = pool.fallback
        to = fb.target(self.loop.now, self.id, self._fallback_waker(pool)) if fb is not None else None
        if to is fallback.WAIT:  # Patroni is being read: _fallback_woken opens it then
            pool.server_gone(was_connecting=True)
            return
        try:
            s = ServerConn.open(self, pool, (to.ip, to.port) if isinstance(to, fallback.Target) else None)
        except OSError as e:
            log.warning("cannot connect to %s:%s for %s: %s", pool.pool_cfg.server_host,
                        pool.pool_cfg.server_port, pool.name, e)
            pool.server_gone(was_connecting=True)
            err = m.error_response("08006", f"could not connect to server: {e}", "FATAL")
            if fb is not None and fb.connect_failed(to if isinstance(to, fallback.Target) else None, err,
                                                    self.loop.now):
                self._fallback_retry(pool)
                return
            self.app.server_login_failed(pool, err)
            c = pool.fail_first_waiter()
            if c is not None:
                self._fail_client(cast(ClientConn, c), err)
            return
        if isinstance(to, fallback.Target) and fb is not None:
            s.fallback, s.fallback_until = to, s.created + fb.settings.lifetime
            s.timer.cancel()
            s.timer = self.loop.call_later(fb.settings.connect_timeout, s._connect_timed_out)
        self.servers.add(s)

    def server_ready(self, s: ServerConn) -> None:
        """A new server finished login: give it to the oldest waiter or park it; its place in the burst gate
        may open one more for the waiters."""
        if s.pool.fallback is not None:
            s.pool.fallback.connected(s.fallback, self.loop.now)
        self._give_back(s)
        pool = s.pool
        if pool.queued and pool.retry_for_waiters():
            self.spawn_server(pool)
        while pool.total < pool.min_pool_size and pool.reserve_spawn():  # min_pool_size, past the burst gate
            self.spawn_server(pool)

    # -- Patroni-assisted fallback (core/fallback.py)
    def _fallback_waker(self, pool: Pool) -> Callable[[bool, str], None]:
        return lambda ok, why: self.loop.call_soon_threadsafe(self._fallback_woken, pool, ok, why)

    def _fallback_woken(self, pool: Pool, ok: bool, why: str) -> None:
        """Patroni was read for `pool`: open servers for its waiters, or fail them if no member is usable."""
        if ok:
            self._fallback_retry(pool)
            return
        err = m.error_response("08006", f"could not connect to server, and no fallback: {why}", "FATAL")
        while (c := pool.fail_first_waiter()) is not None:
            self._fail_client(cast(ClientConn, c), err)

    def _fallback_retry(self, pool: Pool) -> None:
        for _ in range(pool.counts()["cl_waiting"]):
            if not pool.retry_for_waiters():
                break
            self.spawn_server(pool)

    def _give_back(self, s: ServerConn) -> None:
        c = s.pool.release(s, self.id, self.loop.now)
        if c is not None:
            self.hand(s, c)  # type: ignore[arg-type]  # the pool's waiters are the ClientConns workers queued

    # -- carrying out the pool's decisions
    def checkout(self, pool: Pool, c: ClientConn) -> ServerConn | None:
        """A server for `c` now (an idle one of this shard), or None: `c` waits in the pool's queue and gets one
        later through `hand`. ClientConn._consume repeats this inline (a call less): change them together."""
        r = pool.acquire(c, self.id, self.loop.now)
        if type(r) is tuple:
            self.carry_out(pool, r[0], r[1], r[2])
            return None
        if r is None and pool.coord_blocked_since:
            self.evict_for(pool)
        return r  # type: ignore[return-value]  # None, or a server: the pool holds only the ServerConns workers gave it

    def carry_out(self, pool: Pool, pairs: Pairs | None, spawn: bool, antic: float = 0.0) -> None:
        """What a pool's decision asks of this worker: hand servers to waiters, open a server, come back when
        a waiter's anticipation ends."""
        if pairs:
            for s, c in pairs:
                self.hand(cast(ServerConn, s), cast(ClientConn, c))
        if spawn:
            self.spawn_server(pool)
        if antic:
            self.loop.call_later(antic, self.anticipation_due, pool)
        if pool.coord_blocked_since:
            self.evict_for(pool)

    def anticipation_due(self, pool: Pool) -> None:
        """Waiters above the warm threshold waited their budget for a returned server: open servers now."""
        n, again = pool.anticipation_due(self.loop.now)
        for _ in range(n):
            self.spawn_server(pool)
        if again:
            self.loop.call_later(again, self.anticipation_due, pool)

    # -- the database's coordinator (core/coordinator.py)
    def evict_for(self, pool: Pool) -> None:
        """`pool` was refused a slot at max_db_connections: close an idle server of another user for it."""
        coord = pool.coord
        victim = coord.evict_for(pool, self.loop.now) if coord is not None else None
        if victim is None:
            return
        v = cast(ServerConn, victim)
        why = f"evicted by the pool coordinator for {pool.name}"
        log.info("pool coordinator: closing idle server %s of %s for %s", v.addr, v.pool.name, pool.name)
        owner = cast(Worker, v.worker)  # an idle server's worker is the one of its shard
        if owner is self:
            v.retire(why)
        else:
            owner.loop.call_soon_threadsafe(owner.retire_idle, v, why)

    def retire_idle(self, s: ServerConn, why: str) -> None:
        if not s.closed:
            s.retire(why)

    def _slot_freed(self, pool: Pool) -> None:
        """A server of `pool` is gone: pools of its database the coordinator refused may open one now."""
        coord = pool.coord
        if coord is None or not coord.blocked:
            return
        for p in coord.take_blocked():
            if p.retry_for_waiters():
                self.spawn_server(cast("Pool", p))  # the coordinator's members are the App's pools

    def hand(self, s: ServerConn, c: ClientConn) -> None:
        """Give server `s` to waiter `c`, from this worker: directly when both live here (the common case),
        else through the loop of the worker that must act."""
        owner = s.worker
        if owner is self:
            if c.worker is self:
                s.pstats.handed_local += 1
                c.attach_server(s)
            else:
                self._move_server(s, c)
        else:
            owner.loop.call_soon_threadsafe(owner.hand_over, s, c)

    def pause_pool(self, pool: Pool, paused: bool) -> None:
        """PAUSE / RESUME of `pool`; clients that waited meanwhile are served starting from this worker."""
        r = pool.set_paused(paused)
        if r is not None:
            self.carry_out(pool, r[0], r[1], r[2])

    def release_server(self, s: ServerConn, client_gone: bool = False, client: ClientConn | None = None) -> None:
        """The linked client is done with `s` (ReadyForQuery idle in transaction mode, or it left)."""
        if s.closed:
            return
        # ServerConn.client is typed with session/'s ClientPeer protocol (the server's modules do not import
        # the client's); every client a server is linked to is a ClientConn.
        linked: ClientConn | None = s.client  # type: ignore[assignment]
        if not client_gone and linked is not None:
            if linked.copy_confused:
                return  # it keeps this server until it leaves (ClientConn.on_server_error)
            if (s.dirty or linked.leaves or linked.pinned) and s.txn_status == 73:
                if s.cancel_pending:
                    s.wait_for_cancel(linked)  # (kept, or read back first: not before PostgreSQL has the cancel)
                    return
                if (linked.session_check(s) if linked.transaction_mode
                        else s.dirty & DIRTY_RESTORE and resets.restore(linked, s)):
                    return  # its session state is read back first, or it stays pinned to `s` (session mode: its own)
        c = client if client is not None else linked
        if linked is not None and linked is not c:
            s.dirty |= linked.gave_back(s, False)
        s.client = None
        if s.read_paused:
            # Paused for a slow client whose queue has not drained yet: the next client must be heard.
            s.resume_reading()
        if c is not None:
            s.dirty |= c.gave_back(s, client_gone)
        if client_gone:
            s.held_ps = None  # (what was held for it, session/reports.py: nobody else's to hear)
            if s.state == INTERNAL:
                # Our own query is running: let it finish, then clean up as usual.
                s.internal_done = lambda ok: self._after_client_left(s, ok)
                unlocks.begin(s)  # (the cleanup after it may release advisory locks)
                return
            busy = client is not None and client.in_flight
            if busy or s.scanner.mid_message or s.out or s.skipping or s.ahead:
                # The server is still working for a client that is gone: it cannot be handed over.
                s.close("client left with a request in flight")
                return
        if s.cancel_pending:
            # query_timeout's cancel is on its way: nothing more goes to this server, cleanup included, until
            # PostgreSQL has it; then it comes back here (ServerWrapped._cancel_sent).
            s.park()
            s.cancel_parked = True
            return
        if not client_gone and s.txn_status == 73 and not s.dirty and not s.evicted:
            self._return_to_pool(s)  # the common case: nothing to clean
            return
        queries = s.cleanup_queries(s.txn_status != 73)
        if queries:
            unlocks.begin(s, queries)  # (a request for advisory locks waits for it)
            s.run_internal(queries, lambda ok: self._cleaned(s, ok))
            return
        self._return_to_pool(s)

    def release_done(self, s: ServerConn) -> None:
        """release_server(s) after the ReadyForQuery that ended its client's work (ServerConn.on_event, once
        per transaction): its common case, a clean server back to the pool, in one call; anything else (dirt
        to clean or read back, a pin, a cancel on its way, a paused read) takes release_server."""
        c: ClientConn | None = s.client  # type: ignore[assignment]  # (as in release_server)
        if (c is None or s.dirty or s.read_paused or s.cancel_pending or s.evicted or s.closed or c.leaves
                or c.pinned or c.named_parse or c.copy_confused or s.txn_status != 73):
            self.release_server(s)
            return
        if c.server is s:  # (ClientBase.gave_back, with nothing to say)
            c.server = None
        s.client = None
        self._return_to_pool(s)

    def _after_client_left(self, s: ServerConn, ok: bool) -> None:
        if not ok:
            s.close("housekeeping failed")
            return
        self.release_server(s)
        if s.state != INTERNAL:
            unlocks.end(s, self)  # no cleanup after all (else _cleaned ends the wait)

    def _cleaned(self, s: ServerConn, ok: bool) -> None:
        unlocks.end(s, self)
        if not ok or s.txn_status != 73:
            s.close("cleanup failed")
            return
        s.after_cleanup()
        self._return_to_pool(s)

    def _return_to_pool(self, s: ServerConn) -> None:
        pool = s.pool
        s.park()
        now = self.loop.now
        if s.epoch != pool.epoch:
            s.close("pool reconnected")
            return
        if now - s.created > pool.server_lifetime > 0 or 0 < s.fallback_until < now:  # (0: no lifetime)
            s.close("fallback_lifetime reached" if 0 < s.fallback_until < now else "server_lifetime reached")
            return
        if self.app.shutting_down:
            s.close("shutting down")
            return
        c: ClientConn | None = pool.release(s, self.id, now)  # type: ignore[assignment]  # (as in _give_back)
        if c is not None:
            if c.worker is self and s.worker is self:  # hand()'s common case, inline: once per transaction
                s.pstats.handed_local += 1
                c.attach_server(s)
            else:
                self.hand(s, c)

    def server_closed(self, s: ServerConn, prev_state: int, reason: str) -> None:
        self.servers.discard(s)
        unlocks.end(s, self)
        pool = s.pool
        if prev_state in (CONNECTING, LOGIN):
            log.warning("server connection to %s for %s failed: %s", s.addr, pool.name, reason)
            self.app.server_login_failed(pool, s.connect_error)
            pool.server_gone(was_connecting=True)
            self._slot_freed(pool)
            if pool.fallback is not None and pool.fallback.connect_failed(s.fallback, s.connect_error,
                                                                          self.loop.now):
                self._fallback_retry(pool)
                return
            c = pool.fail_first_waiter()
            if c is not None:
                self._fail_client(cast(ClientConn, c), s.connect_error)
            if pool.retry_for_waiters():
                self.spawn_server(pool)
            return
        if prev_state == IDLE:
            pool.take_idle(s, self.id)
            log.info("idle server %s (%s) closed: %s", s.addr, pool.name, reason)
        else:
            log.debug("server %s (%s) closed: %s", s.addr, pool.name, reason)
        linked: ClientConn | None = s.client  # type: ignore[assignment]  # (see release_server)
        s.client = None
        if linked is not None and not linked.closed:
            linked.server = None
            if s.fatal_forwarded:
                linked.close_orderly(f"server ended the session: {reason}")  # the client has PostgreSQL's FATAL already
            elif prev_state in (ACTIVE, INTERNAL):
                linked.server_failed(None)
        if pool.server_gone():
            self.spawn_server(pool)
        self._slot_freed(pool)

    def _fail_client(self, c: ClientConn, error: bytes | None) -> None:
        if c.worker is self:
            c.server_failed(error)
        else:
            c.worker.loop.call_soon_threadsafe(c.server_failed, error)

    # -- cross-shard handover
    def hand_over(self, s: ServerConn, c: ClientConn) -> None:
        """In the server's owner: detach it and send it to the client's worker."""
        if s.closed:
            # It died in transit: the client is no longer in the queue; let it ask again.
            c.worker.loop.call_soon_threadsafe(c.worker.retry_checkout, c)
            return
        if c.worker is self:
            c.attach_server(s) if c.waiting else self._give_back(s)
            return
        self._move_server(s, c)

    def _move_server(self, s: ServerConn, c: ClientConn) -> None:
        """Send `s`, owned here, to `c`'s worker; on the moving list until adopted (SHOW SERVERS, KILL)."""
        s.pstats.handed_moved += 1
        s.detach()
        self.servers.discard(s)
        to = c.worker
        self.app.transit.server_leaves(s, self.id)
        to.loop.call_soon_threadsafe(to.adopt, s, c)

    def adopt(self, s: ServerConn, c: ClientConn) -> None:
        """In the client's worker: take ownership of a server moved from another worker."""
        s.worker = self
        s.loop = self.loop
        s.pstats = s.pool.stats[self.id]
        self.servers.add(s)  # (before it leaves the moving list: never out of both)
        if self.app.transit.server_arrives(s, self.id):  # an admin KILL of its pool ran here before it came
            s.close("killed from the admin console")
            self.retry_checkout(c)
            return
        s.attach(self.loop)
        if c.waiting and not c.closed:
            c.attach_server(s)
        else:
            self._give_back(s)

    def retry_checkout(self, c: ClientConn) -> None:
        if c.waiting and not c.closed:
            c.waiting = False
            c.need_server()

    def conn_count(self) -> tuple[int, int]:
        return len(self.clients), len(self.servers)


__all__ = ["Worker", "Listener", "Conn"]
