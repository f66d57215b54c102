"""The server relay's temporary handlers: while answers the linked client must not see are due, the scanner's
message handler is wrapped, so that the relay of every other request pays nothing for them. Answers to queries
sent ahead of the client's request (a deferred BEGIN, see txbegin.py) are swallowed; and while a CancelRequest
sent for query_timeout or for the client is on its way, the ReadyForQuery that ends the request gates what may
follow.

Cancels (query_timeout's, which the janitor decides, and the client's own): the cancel goes to PostgreSQL on a
thread, and until PostgreSQL has
closed that cancel connection (it does so after signalling the backend) nothing new is sent to the server: a
server done with its client waits outside the pool (the worker's release_server parks it), and a client that
keeps it (in a transaction, or session mode) is not read. A backend ignores a cancel signal that reaches it
while it waits for a command, so once the close is seen the cancel can no longer hit a later statement, of this
client or another, and the server stays in the pool. If the close is not seen (an error after the request was
sent), the server is closed instead.

`ServerWrapped` is a part of `ServerConn` (server.py) kept in its own file; its fields are created by
ServerConn.__init__.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from pgdoorman.core.cancel import CANCEL_DELIVERED, CANCEL_NOT_SENT, send_cancel
from pgdoorman.protocol import messages as m
from pgdoorman.session.server_prepared import ServerPrepared

if TYPE_CHECKING:
    from pgdoorman.core.fallback import Target
    from pgdoorman.core.pool import PoolStats
    from pgdoorman.net.loop import Timer
    from pgdoorman.session.host import Host
    from pgdoorman.session.peer import ClientPeer

log = logging.getLogger("pgdoorman.server")

FATAL_SEVERITY = (b"SFATAL\x00", b"SPANIC\x00")


class ServerWrapped(ServerPrepared):
    __slots__ = ("ahead", "ahead_quiet", "txn_status", "fatal_forwarded", "cancel_pending", "cancel_parked",
                 "cancel_paused", "reply", "stall_timer", "stall_mark", "fallback", "fallback_until")
    ahead: int  # answers (ReadyForQuery) still due for queries sent ahead of the client's (send_ahead)
    ahead_quiet: int  # errors among them that are expected (swallowed)
    txn_status: int  # the transaction status of the last ReadyForQuery (73 'I', 84 'T', 69 'E')
    fatal_forwarded: bool  # PostgreSQL ended the session with a FATAL the client got
    cancel_pending: int  # CancelRequests on their way (see the module's docstring)
    cancel_parked: bool  # given back meanwhile: waits outside the pool
    cancel_paused: ClientPeer | None  # the linked client, not read meanwhile
    reply: bytearray | None  # while not None, a housekeeping query's answer is kept whole here (run_internal)
    stall_timer: Timer | None  # proxy_copy_data_timeout: armed while the output queue holds the client back
    stall_mark: int  # the queue's length when it was armed
    fallback: Target | None  # a fallback host found through Patroni (core/fallback.py), set by the worker
    fallback_until: float  # then its fallback_lifetime ends (0: not a fallback host's connection)

    # Fields of ServerConn this part uses (plain annotations: see server_prepared.py).
    worker: Host
    pstats: PoolStats
    addr: str
    pid: int
    secret: int
    state: int

    def _init_wrapped(self) -> None:
        """This part's fields (part of ServerConn.__init__)."""
        self.ahead = 0
        self.ahead_quiet = 0
        self.cancel_pending = 0
        self.cancel_parked = False
        self.cancel_paused = None
        self.stall_timer = None
        self.stall_mark = 0
        self.fallback = None
        self.fallback_until = 0.0

    def _relay_handler(self) -> Callable[[int, memoryview], bytes | None]:
        if self.cancel_pending:
            return self._on_cancelling
        return self._ps_handler if self.ps_on else self._plain_handler

    def send_ahead(self, data: bytes, n: int, quiet: int, in_txn: bool = True) -> None:
        """`n` simple queries sent in front of the linked client's next request: of the client's, that the
        pooler answered itself (a deferred BEGIN), or the pooler's own (DISCARD SEQUENCES, `in_txn` False);
        their answers are swallowed, with `quiet` expected errors (other errors are relayed: the client must
        learn why its transaction is not what it was told). The relay handler is wrapped until their last
        ReadyForQuery, so other clients' relay pays nothing for it."""
        self.write(data)
        self.ahead += n
        self.ahead_quiet += quiet
        if in_txn:
            self.txn_status = 84  # what the client was told; requests answered locally meanwhile say so too
        self.scanner.on_message = self._on_ahead

    def _on_ahead(self, t: int, body: memoryview) -> bytes | None:
        """The relay handler while answers to `send_ahead` queries are due (they come first)."""
        if t == 90:  # ReadyForQuery
            self.txn_status = body[0]
            self.ahead -= 1
            if self.ahead <= 0:
                self.ahead = self.ahead_quiet = 0
                self.scanner.on_message = self._relay_handler()
            return b""
        if t == 69:  # ErrorResponse
            if body[:7] in FATAL_SEVERITY:
                self.fatal_forwarded = True
            elif self.ahead_quiet:
                self.ahead_quiet -= 1
                return b""
            c = self.client
            if c is not None:
                c.on_server_error(body)
            return None
        if t == 83:  # ParameterStatus: the plain relay's handler takes it
            return self._plain_handler(t, body)
        return b""  # CommandComplete (and nothing else comes for BEGIN)

    # ------------------------------------------------------------------ cancels
    def cancel_for_timeout(self, waited: float) -> None:
        """The linked client's request has run `waited` seconds, past its pool's query_timeout: cancel it."""
        c = self.client
        log.info("server %s (pid %d): cancelling a request that has run %.1f s (query_timeout)%s", self.addr,
                 self.pid, waited, f" for client {c!r}" if c is not None else "")
        self.pstats.query_timeouts += 1
        self.cancel_gated()

    def cancel_gated(self) -> None:
        """Send PostgreSQL a CancelRequest for this server's backend; gate what follows until it has it."""
        self.cancel_pending += 1
        if not self.ahead:
            self.scanner.on_message = self._on_cancelling
        c = self.client
        if c is not None and not c.in_flight and self.cancel_paused is None:  # (a client's cancel, when idle)
            self.cancel_paused = c
            c.pause_reading()
        loop = self.loop
        send_cancel(self.addr, self.pid, self.secret,
                    lambda outcome: loop.call_soon_threadsafe(self._cancel_sent, outcome))

    def wait_for_cancel(self, c: ClientPeer) -> None:
        """(Worker.release_server) A cancel is on its way, and `c`, done with this server, keeps it (pinned, or
        session mode) or has its session read back on it first: neither that query nor `c`'s next request may
        reach PostgreSQL before the cancel does (it would hit them). `c` is not read meanwhile; _cancel_sent
        releases the server again."""
        if self.cancel_paused is None:
            self.cancel_paused = c
            c.pause_reading()
        self.cancel_parked = True

    def _on_cancelling(self, t: int, body: memoryview) -> bytes | None:
        """The relay handler while the cancel is on its way: as usual, but a ReadyForQuery that leaves the client
        nothing in flight stops reading the client until the cancel has reached PostgreSQL."""
        rep = (self._ps_handler if self.ps_on else self._plain_handler)(t, body)
        if t == 90 and not self.release_pending:
            c = self.client
            if c is not None and not c.in_flight and self.cancel_paused is None:
                self.cancel_paused = c
                c.pause_reading()
        return rep

    def _cancel_sent(self, outcome: int) -> None:
        """(On this server's loop.) The cancel's outcome: let the server and its client go on."""
        self.cancel_pending -= 1
        if self.closed:
            return
        if outcome != CANCEL_DELIVERED and outcome != CANCEL_NOT_SENT:
            # Sent, but PostgreSQL's close was not seen: the signal may still be on its way. Not reused.
            self.close("the outcome of a cancel request sent to it is unknown")
            return
        if self.cancel_pending:
            return  # another one is still on its way
        c = self.cancel_paused
        self.cancel_paused = None
        if self.scanner.on_message == self._on_cancelling:
            self.scanner.on_message = self._relay_handler()
        if c is not None and c is self.client and not c.closed and c.read_paused:
            c.resume_reading()
        if self.cancel_parked:
            self.cancel_parked = False
            self.worker.release_server(self)

    # ------------------------------------------------------------------ back-pressure and proxy_copy_data_timeout
    def on_backlog(self) -> None:
        """What the client sends is queued faster than PostgreSQL takes it: stop reading the client, and give
        PostgreSQL proxy_copy_data_timeout to take some of it."""
        c = self.client
        if c is not None:
            c.pause_reading()
        if self.stall_timer is None:
            self._arm_stall()

    def on_drained(self) -> None:
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None
        c = self.client
        if c is not None and not c.closed and c.read_paused and not c.waiting:
            c.resume_reading()

    def _arm_stall(self) -> None:
        self.stall_mark = self.backlog
        timeout = self.worker.app.config.general.proxy_copy_data_timeout
        self.stall_timer = self.loop.call_later(timeout / 1000, self._stall_check) if timeout > 0 else None

    def _stall_check(self) -> None:
        """proxy_copy_data_timeout passed with output queued: closed when PostgreSQL took none of it meanwhile
        (a stuck backend), the client told with 58006; else watched again."""
        self.stall_timer = None
        if self.closed or not self.backlog:
            return
        if self.backlog < self.stall_mark:
            self._arm_stall()
            return
        timeout = self.worker.app.config.general.proxy_copy_data_timeout
        log.warning("server %s (pid %d): took none of %d queued bytes in %d ms (proxy_copy_data_timeout): closed",
                    self.addr, self.pid, self.backlog, timeout)
        c = self.client
        if c is not None and not c.closed:
            self.fatal_forwarded = True  # the client has its error: it is closed with the server, nothing more
            c.write(m.error_response(
                "58006", f"pooler is shut down now (flush timeout: the server took no data for {timeout} ms, "
                "proxy_copy_data_timeout)", "FATAL"))
        self.close("flush timeout (proxy_copy_data_timeout)")

    # ------------------------------------------------------------------ reads outside the relay
    def _idle_read(self) -> None:
        data = self.recv_or_close(65536, "server closed an idle connection")
        if data is None:
            return
        # Anything an idle backend says (a FATAL before it exits, a stray notification) makes it unsafe.
        reason = "unexpected data from an idle server"
        if data[:1] == b"E":
            try:
                f = m.parse_fields(data[5:])
                reason = f"idle server sent {f.get('S')} {f.get('C')}: {f.get('M')}"
            except Exception:
                pass
        self.close(reason)

    def _session_client(self) -> ClientPeer | None:
        """The session-mode client this server is linked to, if any: during our own queries its backend may
        send a NotificationResponse for the client's LISTEN (another session's NOTIFY), which is the client's.
        (In transaction mode servers LISTEN on no channel of a client's: session/listening.py.)"""
        c = self.client
        return c if c is not None and not c.transaction_mode and not c.closed else None

    def _notified_after(self, buf: bytearray) -> bool:
        """A session's notification came in the same read behind our last query's ReadyForQuery (PostgreSQL
        sends it as soon as the backend is idle): relayed as the server's next bytes (the scanner is at a
        message boundary; the rest of a split one follows through it). False: not a session's server."""
        c = self._session_client()
        if c is None:
            return False
        out = self.scanner.feed(memoryview(bytes(buf)))
        buf.clear()
        if out:
            c.write(out)
        return True
