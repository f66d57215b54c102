"""A pool's listener connection (transaction mode LISTEN/NOTIFY): one server connection, outside the pool's
pool_size, that logs in like the pool's servers (ServerConn's connect, TLS and login) and then only runs
LISTEN/UNLISTEN for the pool's clients and receives their NotificationResponses.

It lives on one worker's loop, the host (the worker of the first client that listened); the other workers
reach it only through `command`, posted on the host's loop, and it hands each notification to the clients'
own workers on their loops (Loop.call_soon_threadsafe, the wake-up queue servers move between workers by).
When it dies it is opened again (0.1 s later, 1 s after a failed login) and LISTENs on the union of its
clients' channels before anything else; notifications sent while it was down are lost (docs/transaction-mode.md).

RECONNECT, and a RELOAD that changes where or as whom the pool's servers log in, replace it without a gap
(`replace`): a successor logs in and LISTENs on the union; the old one LISTENs on a private channel, on which the
successor then NOTIFYs a token. PostgreSQL delivers notifications to every listener in commit order, so the
old connection hands on what it receives before the token and the successor what it receives after it (held
until the old one has seen the token, to keep the order): nothing is lost or delivered twice. Commands wait
meanwhile and run on the successor, which then takes over; the old one closes once its answers are in.

A pool removed by a RELOAD (or auth_query) keeps its clients until they leave, and this connection while one
of them listens (`drop`); then it is closed, and not opened again after a loss while no client needs it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pgdoorman.core import listen as lsn
from pgdoorman.protocol import messages as m
from pgdoorman.session.server import ServerConn

if TYPE_CHECKING:
    from pgdoorman.core.pool import Pool
    from pgdoorman.session.host import Host

log = logging.getLogger("pgdoorman.listen")

# done(ok, response bytes through ReadyForQuery), on the host's loop.
Done = Callable[[bool, bytes], None]
# A command: the statement, the channel it is about, LISTEN or UNLISTEN, and who waits for its answer.
Command = tuple[bytes, bytes, int, Done | None]
RETRY_LOST = 0.1  # seconds before opening the connection again after it was lost
RETRY_FAILED = 1.0  # ... after a connection that never logged in
SWITCH_CHANNEL = b"pg_doorman.switch"  # the replacement's token travels on it (see the module's docstring)
SWITCH_TIMEOUT = 5.0  # seconds (at least; twice connect_timeout if longer) a replacement may take


class Switch:
    """One replacement in progress: the old connection, its successor, the token, what is settled."""

    __slots__ = ("old", "new", "token", "pending", "old_seen", "new_seen", "held")

    def __init__(self, old: ListenerConn, new: ListenerConn) -> None:
        self.old = old
        self.new = new
        self.token = str(new.id).encode()
        self.pending = 2  # LISTENs to be answered before the token is sent: the old one's, the successor's last
        self.old_seen = False
        self.new_seen = False
        self.held: list[tuple[bytes, bytes]] = []  # the successor's notifications after the token, in order

    def listened(self, ok: bool, data: bytes) -> None:
        if not ok:
            self.new.close("LISTEN on the replacement failed")
            return
        self.pending -= 1
        if self.pending == 0 and self.old.switch is self:
            # Both send the token: on one server each connection sees both, in the same (commit) order, and
            # switches at the first; after a RELOAD to another server each sees its own.
            stmt = b"NOTIFY " + lsn.quote(SWITCH_CHANNEL) + b", '" + self.token + b"'"
            self.new._send((stmt, SWITCH_CHANNEL, lsn.LISTEN, None))
            self.old._send((stmt, SWITCH_CHANNEL, lsn.LISTEN, None))

    def expire(self) -> None:
        """Not done in time (an old server that no longer answers, say): the successor takes over if it is
        up, else the old connection goes on."""
        if self.old.switch is not self:
            return
        if self.new.up:
            self.old.close("its replacement did not complete in time")
        else:
            self.new.close("did not complete the replacement in time")


class ListenerConn(ServerConn):
    __slots__ = ("channels", "sent", "up", "answer", "answer_ok", "switch", "retired")

    def __init__(self, sock: Any, worker: Host, pool: Pool, addr: str) -> None:
        super().__init__(sock, worker, pool, addr)
        self.channels: lsn.Channels | None = None
        self.sent: deque[Command] = deque()  # sent, waiting for their ReadyForQuery
        self.up = False
        self.answer = bytearray()  # the answer to the oldest sent command, so far
        self.answer_ok = True
        self.switch: Switch | None = None  # a replacement this connection is part of (old or successor)
        self.retired = False  # replaced: closes once its answers are in

    # ------------------------------------------------------------------ login
    def _login_complete(self) -> None:
        self.timer.cancel()
        self.inbuf = bytearray()
        login = self.login
        assert login is not None and self.channels is not None
        self.params, self.pid, self.secret = login.params, login.pid, login.secret
        self.login = None
        self.park()
        self.up = True
        ch = self.channels
        names = ch.union()
        sw = self.switch
        log.info("LISTEN connection for %s up (pid %d)%s, listening on %d channel(s)", ch.name, self.pid,
                 f" to replace pid {sw.old.pid}" if sw is not None else "", len(names))
        for name in names:
            self._send((b"LISTEN " + lsn.quote(name), name, lsn.LISTEN, None))
        if sw is not None:  # the token comes next; the commands wait for the take-over
            self._send((b"LISTEN " + lsn.quote(SWITCH_CHANNEL), SWITCH_CHANNEL, lsn.LISTEN, sw.listened))
            return
        self._take_over()

    def _take_over(self) -> None:
        """This connection is the pool's now: the commands waiting run on it."""
        ch = self.channels
        assert ch is not None
        ch.conn = self
        ch.server_pid = self.pid
        ch.connects += 1
        ch.retry = RETRY_LOST
        queued = ch.queue
        while queued:
            self._send(queued.popleft())
        if ch.dropped:  # the pool was removed meanwhile: closed at once if no client needs it
            self.loop.call_soon(close_unused, ch)
        elif self.epoch != self.pool.epoch:  # RECONNECT or RELOAD meanwhile: this one is outdated already
            self.loop.call_soon(replace, ch, self.pool, self.worker)

    def _send(self, cmd: Command) -> None:
        self.sent.append(cmd)
        self.write(m.msg(b"Q", cmd[0] + b"\x00"))

    def command(self, cmd: Command) -> None:
        """Run `cmd` now if logged in, else after the login (on the host's loop)."""
        ch = self.channels
        assert ch is not None
        if cmd[2] == lsn.UNLISTEN and ch.listened(cmd[1]):
            if cmd[3] is not None:
                cmd[3](True, b"")
            return  # a client listens on it again meanwhile
        if self.up and self.switch is None:
            self._send(cmd)
        else:
            ch.queue.append(cmd)

    # ------------------------------------------------------------------ reading
    def on_readable(self) -> None:
        if self.login is not None:
            super().on_readable()  # connecting and logging in, as any server
            return
        data = self.recv_or_close(65536, "server closed the LISTEN connection")
        if data is None:
            return
        buf = self.inbuf
        buf += data
        try:
            while (msg := m.pop_message(buf)) is not None:
                self._message(msg[0], msg[1])
        except m.ProtocolViolation as e:
            self.close(f"invalid message on the LISTEN connection: {e}")

    def _message(self, t: int, body: bytes) -> None:
        if t == 65:  # NotificationResponse: pid, channel, payload
            end = body.index(b"\x00", 4)
            if self.retired:
                return
            if self.switch is None:
                if body[4:end] == SWITCH_CHANNEL:
                    return  # the other token of a replacement (pg_doorman.switch is reserved)
                self._dispatch(body[4:end], m.msg(b"A", body))
            else:
                self._switching(body[4:end], body[end + 1:body.index(b"\x00", end + 1)], m.msg(b"A", body))
            return
        if not self.sent:
            if t == 69:
                f = m.parse_fields(body)
                log.warning("LISTEN connection for %s: %s %s", self.pool.name, f.get("S"), f.get("M"))
            return  # a ParameterStatus, a notice; a FATAL ends the connection next
        if t == 69:
            self.answer_ok = False
        self.answer += m.msg(bytes([t]), body)
        if t == 90:
            if self.retired and len(self.sent) == 1:
                self.loop.call_soon(self.close, "replaced by a new LISTEN connection")
            cmd = self.sent.popleft()
            data, ok = bytes(self.answer), self.answer_ok
            self.answer = bytearray()
            self.answer_ok = True
            if not ok:
                log.warning("LISTEN connection for %s: %s failed", self.pool.name, cmd[0].decode(errors="replace"))
            if cmd[3] is not None:
                cmd[3](ok, data)
            if not self.sent and self.channels is not None and self.channels.dropped:
                self.loop.call_soon(close_unused, self.channels)

    def _switching(self, channel: bytes, payload: bytes, msg: bytes) -> None:
        """A notification while this connection is being replaced, or replaces one."""
        sw = self.switch
        assert sw is not None
        if channel == SWITCH_CHANNEL:
            if payload != sw.token:
                return  # an earlier replacement's token (the channel is reserved)
            if self is sw.old:
                sw.old_seen = True
            else:
                sw.new_seen = True
        elif self is sw.old:
            if not sw.old_seen:
                self._dispatch(channel, msg)  # committed before the token
            return
        elif sw.new_seen:
            sw.held.append((channel, msg))  # committed after the token: once the old one has handed on its part
        if not (sw.old_seen and sw.new_seen):
            return
        old, new = sw.old, sw.new
        old.switch = new.switch = None
        log.info("LISTEN connection for %s: pid %d replaces pid %d", self.pool.name, new.pid, old.pid)
        old.step_down()
        new._take_over()
        for held in sw.held:
            new._dispatch(*held)

    def step_down(self) -> None:
        """Replaced: close now, or once the answers still due are in."""
        self.retired = True  # from now on its notifications are the successor's to hand on
        if not self.sent:
            self.loop.call_soon(self.close, "replaced by a new LISTEN connection")

    def _dispatch(self, channel: bytes, msg: bytes) -> None:
        """One notification to every client of the pool listening on `channel`, each on its own worker."""
        ch = self.channels
        assert ch is not None
        ch.received += 1
        clients = ch.targets(channel)
        if not clients:
            return
        ch.delivered += len(clients)
        by_worker: dict[Any, list[Any]] = {}
        for c in clients:
            by_worker.setdefault(c.worker, []).append(c)
        for w, cs in by_worker.items():
            if w is self.worker:
                ch.deliver(cs, channel, msg)
            else:
                w.loop.call_soon_threadsafe(ch.deliver, cs, channel, msg)

    # ------------------------------------------------------------------ end
    def on_close(self, reason: str) -> None:
        self.timer.cancel()
        ch = self.channels
        if ch is None or self.retired:
            return
        if self.switch is not None and self._switch_broken(reason):
            return
        was_up = self.up
        self.up = False
        if ch.conn is self:
            ch.conn = None
        ch.failures += 1
        waiting = [c for c in self.sent if c[3] is not None]
        self.sent.clear()
        if was_up:
            log.warning("LISTEN connection for %s (pid %d) lost: %s; opening it again (notifications sent "
                        "until it is back are not delivered)", ch.name, self.pid, reason)
            ch.queue.extendleft(reversed(waiting))  # sent again on the next connection
            ch.retry = RETRY_LOST
        else:
            log.warning("LISTEN connection for %s could not be opened: %s", ch.name, reason)
            err = m.error_response("08006", f"could not open the LISTEN connection for {ch.name}: {reason}")
            waiting += [c for c in ch.queue if c[3] is not None]
            ch.queue.clear()
            for cmd in waiting:
                assert cmd[3] is not None
                cmd[3](False, err + m.RFQ_IDLE)
            ch.retry = RETRY_FAILED
        if _wanted(ch):
            self.loop.call_later(ch.retry, _reopen, ch, self.pool, self.worker)

    def _switch_broken(self, reason: str) -> bool:
        """This connection closed while it was being replaced, or replacing one. True: nothing more to do."""
        sw = self.switch
        assert sw is not None and self.channels is not None
        ch = self.channels
        sw.old.switch = sw.new.switch = None
        if self is sw.new:  # the old one goes on; the replacement is tried again later
            ch.failures += 1
            log.warning("LISTEN connection for %s: its replacement failed (%s); pid %d goes on", ch.name, reason,
                        sw.old.pid)
            queued = ch.queue
            while queued and not sw.old.closed:
                sw.old._send(queued.popleft())
            self.loop.call_later(RETRY_FAILED, replace, ch, self.pool, self.worker)
            return True
        # The old one died first: its successor takes over now (as it would after a lost connection).
        new = sw.new
        ch.conn = None
        if new.up:
            new._take_over()
            for held in sw.held:
                new._dispatch(*held)
        else:
            ch.conn = new  # it takes over when it has logged in
        self.up = False
        ch.failures += 1
        waiting = [c for c in self.sent if c[3] is not None]
        self.sent.clear()
        log.warning("LISTEN connection for %s (pid %d) lost while being replaced: %s", ch.name, self.pid, reason)
        for cmd in waiting:
            new.command(cmd)
        return True


def replace(ch: lsn.Channels, pool: Pool, worker: Host) -> None:
    """RECONNECT or a RELOAD that changed the pool's server: a new LISTEN connection in place of the old one
    (on the host's loop; see the module's docstring). Nothing to do if it is down (it opens with the new
    settings), logging in (it checks when it is up) or being replaced already (the successor checks)."""
    old: ListenerConn | None = ch.conn
    if old is None or ch.dropped or not old.up or old.switch is not None or old.retired or old.epoch == pool.epoch:
        return
    try:
        opened = ListenerConn.open(worker, pool)
    except OSError as e:
        log.warning("LISTEN connection for %s: cannot open its replacement: %s", ch.name, e)
        return
    assert isinstance(opened, ListenerConn)
    new = opened
    new.channels = ch
    sw = Switch(old, new)
    old.switch = new.switch = sw
    log.info("LISTEN connection for %s (pid %d): replacing it", ch.name, old.pid)
    worker.loop.call_later(max(SWITCH_TIMEOUT, 2 * pool.connect_timeout), sw.expire)
    old._send((b"LISTEN " + lsn.quote(SWITCH_CHANNEL), SWITCH_CHANNEL, lsn.LISTEN, sw.listened))


def follow(pool: Pool) -> None:
    """From any thread, after pool.epoch changed: the pool's LISTEN connection is replaced on its host."""
    ch = pool.channels
    if ch is None:
        return
    with ch.lock:
        host = ch.host
    if host is not None:
        host.loop.call_soon_threadsafe(replace, ch, pool, host)


def drop(pool: Pool) -> None:
    """From any thread, when a RELOAD or auth_query removed `pool`: its clients stay until they leave, and
    its LISTEN connection until none of them listens (closed at once if none does; see `close_unused`)."""
    ch = pool.channels
    if ch is None:
        return
    with ch.lock:
        ch.dropped = True
        host = ch.host
    if host is not None:
        host.loop.call_soon_threadsafe(close_unused, ch)


def close_unused(ch: lsn.Channels) -> None:
    """A removed pool's LISTEN connection (and its successor, if one is logging in) closed if no client
    listens, no command waits and no client's LISTEN is on its way (on the host's loop)."""
    conn: ListenerConn | None = ch.conn
    if conn is None or not ch.dropped or _wanted(ch):
        return
    sw = conn.switch
    conns = [conn] if sw is None else [sw.old, sw.new]
    if any(c[3] is not None and c[1] != SWITCH_CHANNEL for x in conns for c in x.sent):
        return  # a client waits for this answer (its LISTEN): checked again once it is in
    ch.conn = None
    for x in conns:
        log.info("LISTEN connection for %s%s closed: the pool was removed and no client listens", ch.name,
                 f" (pid {x.pid})" if x.up else "")
        x.switch = None
        x.retired = True  # (no reconnection)
        x.close("pool removed, no client listens")


def _wanted(ch: lsn.Channels) -> bool:
    """A client listens, or a command waits for a connection."""
    return bool(ch.queue) or bool(ch.union())


def _reopen(ch: lsn.Channels, pool: Pool, worker: Host) -> None:
    """The retry after a lost or failed connection: opened again if a client still needs it."""
    if _wanted(ch):
        ensure(ch, pool, worker)


def ensure(ch: lsn.Channels, pool: Pool, worker: Host) -> ListenerConn | None:
    """The pool's listener connection, opened if it is down (on the host's loop)."""
    conn: ListenerConn | None = ch.conn
    if conn is not None:
        return conn
    try:
        opened = ListenerConn.open(worker, pool)
    except OSError as e:
        log.warning("LISTEN connection for %s: cannot connect: %s", ch.name, e)
        ch.failures += 1
        err = m.error_response("08006", f"could not open the LISTEN connection for {ch.name}: {e}")
        waiting = [c for c in ch.queue if c[3] is not None]
        ch.queue.clear()
        for cmd in waiting:
            assert cmd[3] is not None
            cmd[3](False, err + m.RFQ_IDLE)
        if _wanted(ch):
            worker.loop.call_later(RETRY_FAILED, _reopen, ch, pool, worker)
        return None
    assert isinstance(opened, ListenerConn)
    conn = opened
    conn.channels = ch
    ch.conn = conn
    return conn


def _run(ch: lsn.Channels, pool: Pool, worker: Host, cmd: Command) -> None:
    if cmd[2] == lsn.UNLISTEN and ch.conn is None and not ch.queue:
        if cmd[3] is not None:  # down: the next connection LISTENs on the union only, without this channel
            cmd[3](True, b"")
        return
    conn = ensure(ch, pool, worker)
    if conn is not None:
        conn.command(cmd)
    elif cmd[3] is not None:
        cmd[3](False, m.error_response("08006", f"could not open the LISTEN connection for {ch.name}") + m.RFQ_IDLE)


def command(ch: lsn.Channels, pool: Pool, worker: Host, cmd: Command) -> None:
    """Run `cmd` on the pool's listener connection, from any worker: the first one to ask hosts it."""
    with ch.lock:
        host = ch.host
        if host is None:
            ch.host = host = worker
    if host is worker:
        _run(ch, pool, host, cmd)
    else:
        host.loop.call_soon_threadsafe(_run, ch, pool, host, cmd)
