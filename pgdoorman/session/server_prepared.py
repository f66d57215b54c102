"""Transparent prepared statements, server side: which backend statements (DOORMAN_n) a server holds, and
the responses rewritten for its client (synthetic ParseCompletes spliced in, answers to injected Parses
swallowed, a stale plan re-parsed, the skipping after an extended-protocol error mirrored).

`ServerPrepared` is the part of `ServerConn` (server.py) kept in its own file; the fields it uses are
declared here for the type checker and created by ServerConn.__init__.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from pgdoorman.core import prepared as ps
from pgdoorman.net.conn import Conn
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.framing import Scanner, make_table

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Callable as _Callable

    from pgdoorman.core.pool import Pool
    from pgdoorman.session.peer import ClientPeer

log = logging.getLogger("pgdoorman.server")

# Server -> client: look at ReadyForQuery, CommandComplete, ParameterStatus, ErrorResponse and the COPY
# responses; everything else (RowDescription, DataRow, CopyData, notices...) streams through unread.
SERVER_TABLE = make_table(full=b"ZCSEGHW")
# The response types the plain relay handler acts on (ReadyForQuery, CommandComplete, ParameterStatus, Error).
PLAIN_TYPES = frozenset(b"ZCSEG")
# With transparent prepared statements every response that completes a frontend message is read, so that
# synthetic ParseCompletes can be spliced in and responses to injected Parses swallowed. DataRows stream.
SERVER_PS_TABLE = make_table(full=b"ZCSEGHW123tTnIsV")

# What PostgreSQL may send while it skips to a Sync: that Sync's ReadyForQuery, and asynchronous messages.
_WHILE_SKIPPING = frozenset(b"ZSNA")
# PostgreSQL's message when DDL changed the result of a statement prepared before (SQLSTATE 0A000).
_STALE_PLAN = "cached plan must not change result type"
_DROPPED_TYPE = "cache lookup failed for type"


def is_stale_plan(fields: dict[str, str]) -> bool:
    """The error says a statement parsed before no longer fits the schema: its result type changed (0A000), or
    a type it was parsed against was dropped (XX000 "cache lookup failed for type", e.g. a type re-created
    under the same name). A fresh Parse of the same text would not fail so."""
    code = fields.get("C")
    msg = fields.get("M", "")
    return (code == "0A000" and _STALE_PLAN in msg) or (code == "XX000" and msg.startswith(_DROPPED_TYPE))


class ServerPrepared(Conn):
    # The prepared-statement fields of a server connection (set by ServerConn.__init__).
    __slots__ = ("prepared", "evicted", "ps_cap", "ps_hits", "ps_misses", "ps_on", "skipping", "release_pending",
                 "_plain_handler", "_ps_handler")
    prepared: OrderedDict[bytes, None]
    evicted: list[bytes]
    ps_cap: int
    ps_hits: int
    ps_misses: int
    ps_on: bool
    skipping: bool
    release_pending: bool
    _plain_handler: _Callable[[int, memoryview], bytes | None]
    _ps_handler: _Callable[[int, memoryview], bytes | None]

    if TYPE_CHECKING:  # fields and methods of ServerConn this part uses
        client: ClientPeer | None
        pool: Pool
        scanner: Scanner

        def _on_message(self, t: int, body: memoryview) -> bytes | None: ...

    def set_ps_mode(self, on: bool) -> None:
        if on != self.ps_on:
            self.ps_on = on
            sc = self.scanner
            sc.table = SERVER_PS_TABLE if on else SERVER_TABLE
            if sc.on_message is self._plain_handler or sc.on_message is self._ps_handler:  # else wrapped (send_ahead)
                sc.on_message = self._ps_handler if on else self._plain_handler

    def remember(self, name: bytes) -> None:
        """Record that a Parse of `name` is being sent; evict the least recently used beyond the cap."""
        prepared = self.prepared
        prepared[name] = None
        if len(prepared) > self.ps_cap:
            old, _ = prepared.popitem(last=False)
            self.evicted.append(old)

    def _on_message_ps(self, t: int, body: memoryview) -> bytes | None:
        c = self.client
        if c is None:
            return self._on_message(t, body)
        rq = c.rq
        # (While PostgreSQL skips to a Sync it sends nothing: no synthetic answer is due before its ReadyForQuery.
        # A response other than that ReadyForQuery means it is not skipping any more.)
        if self.skipping and t not in _WHILE_SKIPPING:
            self.skipping = False
        prefix = None if self.skipping else ps.take_synth(rq)
        swallow = False
        rewritten = False
        if rq and t not in (83, 78, 65):  # ParameterStatus, notices and notifications belong to no entry
            kind, data = rq[0]
            if t == 90:  # ReadyForQuery ends the batch
                if self.skipping:
                    # It answers the Sync that ended PostgreSQL's skip: whatever the client sent before that
                    # Sync (also after the error reached us) was skipped.
                    self.skipping = False
                    while rq and rq[0][0] != ps.SYNC:
                        self._skip_entry(c, *rq.popleft())
                else:
                    while rq and rq[0][0] not in (ps.SYNC, ps.QUERY, ps.FUNC):
                        self._skip_entry(c, *rq.popleft())  # never answered: skipped
                if rq:
                    rq.popleft()
            elif t == 69:  # ErrorResponse
                rep = self._ps_error_response(c, rq, kind, data, body)
                if rep is not None:
                    body = memoryview(rep)
                    rewritten = True
            elif t in ps.TERMINAL[kind]:
                rq.popleft()
                swallow = kind in ps.SWALLOWED
        if t in PLAIN_TYPES:
            self._on_message(t, body)
        # Synthetic responses due right after this one (e.g. a CloseComplete between a BindComplete and the
        # DataRows that follow): emit them now, since DataRows stream by without reaching this handler.
        suffix = ps.take_synth(rq)
        if t == 90:
            if rq:
                self.release_pending = False  # more was pipelined after this Sync
            else:
                self.set_ps_mode(False)
        if prefix is None and suffix is None and not rewritten:
            return b"" if swallow else None
        out = prefix if prefix is not None else bytearray()
        if not swallow:
            out += bytes([t]) + m.U32.pack(len(body) + 4) + body
        if suffix is not None:
            out += suffix
        return bytes(out)

    def _ps_error_response(self, c: ClientPeer, rq: deque[tuple[int, Any]], kind: int, data: Any,
                           body: memoryview) -> bytes | None:
        """An ErrorResponse answering the entry (kind, data) at the head of `rq`: the rewritten error, or None
        to relay PostgreSQL's own."""
        if kind in (ps.QUERY, ps.FUNC):
            # A simple query's error ends at its ReadyForQuery; in a fast batch (see FastPaths._fast_batch)
            # errors are its Bind's.
            return None if data is None else self._ps_error(ps.BIND, data, body)
        rep = self._ps_error(kind, data, body)
        # PostgreSQL skips everything up to the next Sync: so do the expectations, and what the skipped
        # messages did to our view of the client's and this server's statements is undone (also for messages
        # the client sends after this, until its Sync: see `skipping`).
        rq.popleft()
        while rq and rq[0][0] != ps.SYNC:
            self._skip_entry(c, *rq.popleft())
        if not rq:
            self.skipping = True
        return rep

    def _skip_entry(self, c: ClientPeer, kind: int, data: Any) -> None:
        """PostgreSQL skipped the message of this expected-response entry: undo what sending it did."""
        c.skipped(kind, data)
        if kind == ps.PARSE:
            self.prepared.pop(data[0].name, None)
        elif kind == ps.INJECT:
            self.prepared.pop(data.name, None)

    def _ps_error(self, kind: int, data: object, body: memoryview) -> bytes | None:
        """Keep caches true after an error; return the error body with our statement name replaced by the
        client's when PostgreSQL quoted it."""
        c = self.client
        pool = self.pool
        if kind == ps.PARSE or kind == ps.INJECT:
            st = data[0] if kind == ps.PARSE else data  # type: ignore[index]
            assert isinstance(st, ps.Statement)
            self.prepared.pop(st.name, None)
            if kind == ps.PARSE:
                # A failed Parse creates nothing, on PostgreSQL as here: forget it everywhere.
                pool.ps_cache.forget(st)
                if c is not None:
                    c.statement_failed(data[1], st)  # type: ignore[index]
            return None
        if not isinstance(data, tuple) or not isinstance(data[0], ps.Statement):
            return None  # an entry with nothing to rewrite (an unknown name, a malformed message, ...)
        st, cname = data
        raw = bytes(body)
        rep = raw.replace(b'"' + st.name + b'"', b'"' + cname + b'"')
        f = m.parse_fields(raw)
        if is_stale_plan(f):
            # DDL changed the statement's result type. PostgreSQL keeps failing a statement like that until
            # it is prepared again: do that for the client, under a new name, and drop the stale copy here.
            self.prepared.pop(st.name, None)
            self.evicted.append(st.name)
            pool.ps_cache.forget(st)
            if c is not None:
                c.statement_replaced(st, pool.ps_cache.get(st.query, st.key[1], st.key[2]))
        return rep if rep != raw else None
