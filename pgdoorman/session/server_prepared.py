"""Transparent prepared statements, server side: which backend statements (DOORMAN_n) a server holds, and
the switch between the plain relay and the prepared-statement one, in which each response that completes a
frontend message goes through the client's rewriter (session/rewrite_replies.py: synthetic ParseCompletes
spliced in, answers to injected Parses swallowed, a stale plan re-parsed, PostgreSQL's skip after an error
mirrored).

`ServerPrepared` is the part of `ServerConn` (server.py) kept in its own file; the fields it uses are
declared here for the type checker and created by ServerConn.__init__.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

from pgdoorman.protocol.framing import Scanner, make_table
from pgdoorman.session.server_dial import ServerDial

if TYPE_CHECKING:
    from collections.abc import Callable as _Callable

    from pgdoorman.core.pool import Pool
    from pgdoorman.session.peer import ClientPeer

log = logging.getLogger("pgdoorman.server")

# Server -> client: look at ReadyForQuery, CommandComplete, ParameterStatus, ErrorResponse and the COPY
# responses; everything else (RowDescription, DataRow, CopyData, notices...) streams through unread.
SERVER_TABLE = make_table(full=b"ZCSEGHW")
# With transparent prepared statements every response that completes a frontend message is read, so that
# synthetic ParseCompletes can be spliced in and responses to injected Parses swallowed; so are notices and
# notifications (session mode's), so that the answers the pooler gave to requests before them go out first.
# DataRows stream.
SERVER_PS_TABLE = make_table(full=b"ZCSEGHW123tTnIsVNA")

class ServerPrepared(ServerDial):
    # The prepared-statement fields of a server connection (set by ServerConn.__init__).
    __slots__ = ("prepared", "evicted", "unsure", "ps_cap", "ps_hits", "ps_misses", "ps_on", "skipping", "release_pending",
                 "_plain_handler", "_ps_handler")
    prepared: OrderedDict[bytes, None]
    evicted: list[bytes]
    unsure: set[bytes]
    ps_cap: int
    ps_hits: int
    ps_misses: int
    ps_on: bool
    skipping: bool
    release_pending: bool
    _plain_handler: _Callable[[int, memoryview], bytes | None]
    _ps_handler: _Callable[[int, memoryview], bytes | None]

    # Fields of ServerConn this part uses (plain annotations, not under TYPE_CHECKING: a compiled build,
    # scripts/build_mypyc.sh, gives a class the attributes its own body declares).
    client: ClientPeer | None
    pool: Pool
    scanner: Scanner
    txn_status: int
    dirty: int

    def set_ps_mode(self, on: bool) -> None:
        if on != self.ps_on:
            self.ps_on = on
            sc = self.scanner
            sc.table = SERVER_PS_TABLE if on else SERVER_TABLE
            if sc.on_message is self._plain_handler or sc.on_message is self._ps_handler:  # else wrapped (send_ahead)
                sc.on_message = self._ps_handler if on else self._plain_handler

    def remember(self, name: bytes) -> None:
        """Record that this server holds `name` (a Parse of it is being sent, or it was evicted and is used
        again before its DEALLOCATE); evict the least recently used beyond the cap. An evicted statement stays
        on the server until the DEALLOCATE at the next check-in (cleanup_queries): meanwhile it is `evicted`,
        and what uses it again takes it back from there (Rewriter._ensure), since a Parse would fail (42P05)."""
        prepared = self.prepared
        prepared[name] = None
        prepared.move_to_end(name)
        evicted = self.evicted
        if evicted and name in evicted:
            evicted.remove(name)
        if len(prepared) > self.ps_cap:
            old, _ = prepared.popitem(last=False)
            evicted.append(old)

    def _on_message_ps(self, t: int, body: memoryview) -> bytes | None:
        """The scanner's handler in prepared-statement mode: the linked client's rewriter rewrites the reply."""
        c = self.client
        if c is None:
            return self._plain_handler(t, body)
        return c.rw.reply(t, body, self)
