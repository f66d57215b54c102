"""A pool's listener connection (transaction mode LISTEN/NOTIFY): one server connection, outside the pool's
pool_size, that logs in like the pool's servers (ServerConn's connect, TLS and login) and then only runs
LISTEN/UNLISTEN for the pool's clients and receives their NotificationResponses.

It lives on one worker's loop, the host (the worker of the first client that listened); the other workers
reach it only through `command`, posted on the host's loop, and it hands each notification to the clients'
own workers on their loops (Loop.call_soon_threadsafe, the wake-up queue servers move between workers by).
When it dies it is opened again (0.1 s later, 1 s after a failed login) and LISTENs on the union of its
clients' channels before anything else; notifications sent while it was down are lost (docs/transaction-mode.md).
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


class ListenerConn(ServerConn):
    __slots__ = ("channels", "sent", "up", "answer", "answer_ok")

    def __init__(self, sock: Any, worker: Host, pool: Pool, addr: str) -> None:
        super().__init__(sock, worker, pool, addr)
        self.channels: lsn.Channels | None = None
        self.sent: deque[Command] = deque()  # sent, waiting for their ReadyForQuery
        self.up = False
        self.answer = bytearray()  # the answer to the oldest sent command, so far
        self.answer_ok = True

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
        ch.server_pid = self.pid
        ch.connects += 1
        ch.retry = RETRY_LOST
        names = ch.union()
        log.info("LISTEN connection for %s up (pid %d), listening on %d channel(s)", ch.name, self.pid, len(names))
        for name in names:
            self._send((b"LISTEN " + lsn.quote(name), name, lsn.LISTEN, None))
        queued = ch.queue
        while queued:
            self._send(queued.popleft())

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
        if self.up:
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
            self._dispatch(body[4:end], m.msg(b"A", body))
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
            cmd = self.sent.popleft()
            data, ok = bytes(self.answer), self.answer_ok
            self.answer = bytearray()
            self.answer_ok = True
            if not ok:
                log.warning("LISTEN connection for %s: %s failed", self.pool.name, cmd[0].decode(errors="replace"))
            if cmd[3] is not None:
                cmd[3](ok, data)

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
        if ch is None:
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
        if ch.union():
            self.loop.call_later(ch.retry, ensure, ch, self.pool, self.worker)


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
        if ch.union():
            worker.loop.call_later(RETRY_FAILED, ensure, ch, pool, worker)
        return None
    assert isinstance(opened, ListenerConn)
    conn = opened
    conn.channels = ch
    ch.conn = conn
    return conn


def _run(ch: lsn.Channels, pool: Pool, worker: Host, cmd: Command) -> None:
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
