"""The plain relay (prepared_statements off, or session mode): requests PostgreSQL will never answer.

After an error in an extended-protocol message PostgreSQL skips everything up to the next Sync, a simple Query
or FunctionCall among it included. The plain relay counts the ReadyForQuery messages due (ClientBase.expect)
from message headers only, which stays exact unless a Query or FunctionCall is sent inside an
extended-protocol window (after a Parse, Bind, Describe, Execute or Close and before the next Sync): only such
a one can be skipped. So a window is queued message by message, by kind, in the client's expected-response
queue (Rewriter.rq: the same queue and reply walk as prepared-statement mode, nothing renamed) when a Query or
FunctionCall comes inside it, or when it goes on past the read that opened it (a later read may bring one);
the linked server then reads the responses that complete each message (ServerConn.set_ps_mode) until the
queue is empty again, and PostgreSQL's skip is mirrored: a skipped Query is not waited for.

Until then the window's messages are only noted by type byte (ClientBase.window, one bytearray per client,
made at its first extended-protocol message). The queue is exact from its first entry because it starts in
the read that opened the window (or, at a Query or FunctionCall, in the read that brings it), before that
read's bytes go to the server: PostgreSQL has answered none of the window's messages yet, and requests sent
before the window are one placeholder each, as in Rewriter._track. A window sent whole in one read with no
Query or FunctionCall inside (what drivers send) is never queued: a simple Query costs nothing more than one
test of `unsynced`.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from pgdoorman.core import prepared as ps
from pgdoorman.protocol import messages as m
from pgdoorman.session.noqueue import NO_REQUESTS
from pgdoorman.session.rewrite import Rewriter
from pgdoorman.session.rewrite_replies import COPY_END, SYNC_AFTER_DATA

_unpack = m.U32.unpack_from


class Tracked(Protocol):
    """The client, as this module sees it (ClientBase is one; client_base.py imports this module)."""

    rw: Rewriter
    expect: int
    window: bytearray | None
    copy_window: int
    copy_syncs: int
    copy_pre: int

    @property
    def server(self) -> Any: ...  # ServerConn | None

# The queue entry of each frontend message type (constant tuples: queueing allocates nothing per message).
_kinds = {b"P": ps.PARSE_ANY, b"B": ps.BIND, b"D": ps.DESC_P, b"E": ps.EXEC, b"C": ps.CLOSE, b"S": ps.SYNC,
          b"Q": ps.QUERY, b"F": ps.FUNC}
_entries: list[tuple[int, Any] | None] = [None] * 256
for _t, _k in _kinds.items():
    _entries[_t[0]] = (_k, None)
ENTRY: tuple[tuple[int, Any], ...] = tuple(e if e is not None else (ps.MALFORMED, None) for e in _entries)
PLACEHOLDER = ENTRY[81]  # a request sent before the queue started: everything through its ReadyForQuery
del _t, _k, _entries


def request(c: Tracked, t: int) -> None:
    """A Query or FunctionCall (`t`) inside an extended-protocol window, or while the queue runs: queued (the
    queue starts now if it does not run yet). Called before the request is counted in `expect`."""
    rq = c.rw.rq
    if rq:
        rq.append(ENTRY[t])
    else:
        start(c, t)


def start(c: Tracked, t: int) -> None:
    """Queue from now on: the requests in flight (_prefix), the open window's messages, then `t` (a Query or
    FunctionCall; 0 for none); the linked server reads each response from now on."""
    window = c.window
    if not window and not t:
        return  # the window's messages were all answered (PostgreSQL skips the rest after an error)
    rq = _prefix(c)
    if t:
        rq.append(ENTRY[t])
    s = c.server
    if s is not None:
        s.set_ps_mode(True)


def copy_end(c: Tracked) -> None:
    """A CopyDone or CopyFail, not in COPY IN: if it comes behind unanswered requests (one of them may start a
    COPY it ends), its place among them is queued (COPY_END; Rewriter.copy_started reads it)."""
    rq = c.rw.rq
    if rq:
        rq.append(COPY_END)
        return
    if c.expect <= 0 and not c.window:
        return  # nothing unanswered: PostgreSQL ignores a CopyDone/CopyFail outside COPY
    _prefix(c).append(COPY_END)
    s = c.server
    if s is not None:
        s.set_ps_mode(True)


def _prefix(c: Tracked) -> deque[tuple[int, Any]]:
    """The queue started: one placeholder per request in flight, then the open window's messages. The last
    Query/Execute, if unanswered, and the Syncs counted since (copy_window, copy_syncs) are entries of their
    own, not placeholders: if that message starts a COPY, PostgreSQL ignores those Syncs (Rewriter.copy_started
    drops them, and tells a Sync after CopyData from one before)."""
    rw = c.rw
    rq = rw.rq
    if rq is NO_REQUESTS:
        rq = rw.rq = deque()
    w = c.copy_window
    kind = w % 1000
    k = c.copy_syncs
    if kind and k:
        pre = c.copy_pre if w >= 1000 else k
        for _ in range(max(0, c.expect - k - (kind == 81))):
            rq.append(PLACEHOLDER)
        rq.append(ENTRY[kind])  # the Query, or the Execute standing for its window up to it
        for i in range(k):
            rq.append(ENTRY[83] if i < pre else SYNC_AFTER_DATA)
    else:
        for _ in range(max(0, c.expect)):
            rq.append(PLACEHOLDER)
    window = c.window
    if window:
        rq.extend(map(ENTRY.__getitem__, window))  # not `for k in window`: mypyc cannot loop over a bytearray
        window.clear()
    return rq


def first_request_end(buf: bytes | bytearray) -> int | None:
    """The length of the first request in `buf` (whole messages through the first Query, Sync or
    FunctionCall: what one ReadyForQuery answers), or None if it is not all there."""
    pos = 0
    n = len(buf)
    while pos + 5 <= n:
        t = buf[pos]
        end = pos + 1 + _unpack(buf, pos + 1)[0]
        if end > n:
            return None
        if t == 81 or t == 83 or t == 70:
            return int(end)
        pos = end
    return None
