"""The server relay's temporary handlers: while answers the linked client must not see are due, the scanner's
message handler is wrapped, so that the relay of every other request pays nothing for them. Answers to queries
sent ahead of the client's request (a deferred BEGIN, see txbegin.py) are swallowed.

`ServerWrapped` is a part of `ServerConn` (server.py) kept in its own file; its fields are created by
ServerConn.__init__.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgdoorman.session.server_prepared import ServerPrepared

FATAL_SEVERITY = (b"SFATAL\x00", b"SPANIC\x00")


class ServerWrapped(ServerPrepared):
    __slots__ = ("ahead", "ahead_quiet", "txn_status", "fatal_forwarded")
    ahead: int  # answers (ReadyForQuery) still due for queries sent ahead of the client's (send_ahead)
    ahead_quiet: int  # errors among them that are expected (swallowed)
    txn_status: int  # the transaction status of the last ReadyForQuery (73 'I', 84 'T', 69 'E')
    fatal_forwarded: bool  # PostgreSQL ended the session with a FATAL the client got

    if TYPE_CHECKING:  # fields and methods of ServerConn this part uses

        def _on_parameter(self, body: memoryview) -> None: ...

    def send_ahead(self, data: bytes, n: int, quiet: int) -> None:
        """`n` simple queries of the linked client's that the pooler answered itself (a deferred BEGIN), sent in
        front of its next request; their answers are swallowed, with `quiet` expected errors (other errors are
        relayed: the client must learn why its transaction is not what it was told). The relay handler is
        wrapped until their last ReadyForQuery, so other clients' relay pays nothing for it."""
        self.write(data)
        self.ahead += n
        self.ahead_quiet += quiet
        self.txn_status = 84  # what the client was told; requests answered locally meanwhile say so too
        self.scanner.on_message = self._on_ahead

    def _on_ahead(self, t: int, body: memoryview) -> bytes | None:
        """The relay handler while answers to `send_ahead` queries are due (they come first)."""
        if t == 90:  # ReadyForQuery
            self.txn_status = body[0]
            self.ahead -= 1
            if self.ahead <= 0:
                self.ahead = self.ahead_quiet = 0
                self.scanner.on_message = self._ps_handler if self.ps_on else self._plain_handler
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
        if t == 83:  # ParameterStatus
            self._on_parameter(body)
            return None
        return b""  # CommandComplete (and nothing else comes for BEGIN)
