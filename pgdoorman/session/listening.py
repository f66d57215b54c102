"""LISTEN/NOTIFY in transaction mode, client side: what a client's LISTEN and UNLISTEN do, its channels, and
the notifications waiting for it (docs/transaction-mode.md, "LISTEN and NOTIFY").

- A lone LISTEN sent while the client is idle (a simple query of its own, no transaction open) runs on the
  pool's listener connection (session/listener.py) and the client gets that connection's answer, so the
  pooler LISTENs before the client sees its CommandComplete, as PostgreSQL does; a lone UNLISTEN (name or *)
  is answered here. Neither takes a server from the pool.
- Inside a transaction, with other statements in the same query, or as a prepared statement, the statement
  runs on the client's server so that PostgreSQL answers it (tag, errors, the transaction's status), but a
  LISTEN there names a channel nobody notifies (core/listen.MARKER): that server never receives the client's
  notifications. The client is registered at once and the listener LISTENs; until it does, the client's
  server is not read, so the client sees its LISTEN done only once the listener listens. The change to the
  client's channels waits for the end of its transaction and is dropped if it rolled back (an error,
  ROLLBACK or ABORT, a COMMIT of a failed transaction), as PostgreSQL applies it at COMMIT. DISCARD ALL counts
  as UNLISTEN *. Notifications on such a channel received before the COMMIT are held (`tentative`): the ones
  from the committing transaction itself (its server's PID) and those after them are delivered.
- Notifications reach the client on its own worker; they are written at once while it is between
  transactions and queued while it is in one or has a request in flight (PostgreSQL delivers them only
  between transactions), then written just before the ReadyForQuery that ends it (ServerConn._on_message),
  as PostgreSQL writes them. At most MAX_QUEUED wait, and a
  client that does not read its socket may have at most MAX_BACKLOG bytes unsent: past either it is closed
  with 54000 rather than losing notifications silently.

Functions take the ClientConn as `Any` (ClientBase calls them: a type import would be a cycle).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from pgdoorman.core import listen as ls
from pgdoorman.core.leaks import LISTENS
from pgdoorman.protocol import messages as m
from pgdoorman.session.listener import command
from pgdoorman.session.states import READY

log = logging.getLogger("pgdoorman.listen")

MAX_QUEUED = 10_000  # notifications waiting for one client in a transaction
MAX_BACKLOG = 16 << 20  # bytes not yet sent to a client when a notification comes
HOLD_READY = 1.0  # seconds a ReadyForQuery waits at most for the LISTEN connection's round trip (_hold_ready)
# What a LISTEN inside a transaction runs on the client's server: the same tag, errors and transaction status,
# on a channel nobody notifies, so that the server relays none of the client's notifications.
MARKER_SQL = ls.MARKER
ROLLBACK = 0  # in `ops`: a ROLLBACK or ABORT after a LISTEN/UNLISTEN (in_request, bound), applied at its answer
REFUSAL = m.msg(b"Q", ls.REFUSAL + b"\x00")
_U32 = m.U32.unpack_from


class ListenState:
    """One client's LISTEN state (ClientBase.lsn, made at its first LISTEN/UNLISTEN)."""

    __slots__ = ("reg", "channels", "queue", "ops", "marks", "errors", "failed", "tentative", "holds", "notified",
                 "ready_held")

    def __init__(self, reg: ls.Channels, errors: int) -> None:
        self.reg = reg
        self.channels: set[bytes] = set()  # committed: notifications on these reach the client
        self.queue: deque[tuple[bytes, bytes]] = deque()  # (channel, NotificationResponse) to write
        self.ops: list[tuple[int, bytes]] = []  # LISTEN/UNLISTEN of the open transaction, in order
        # For each of `ops`, the client's `answered` count before the request it is part of is answered (a request
        # pipelined behind others: its changes are not the earlier ones' to apply or drop).
        self.marks: list[int] = []
        self.errors = errors  # the client's error_count at its last ReadyForQuery: more means an error since
        self.failed = False  # the open transaction failed (status E)
        # Notifications on channels the open transaction LISTENs on, received before it ended.
        self.tentative: list[tuple[bytes, bytes]] = []
        self.holds = 0  # LISTENs the listener has not confirmed yet (the client's server is not read meanwhile)
        self.notified = False  # the open transaction's text named "notify" (in_request, bound)
        self.ready_held: bytes | None = None  # a ReadyForQuery waiting for the LISTEN connection (_hold_ready)

    def take(self) -> bytes:
        """The queued notifications on channels still listened to, as one write; the queue is emptied."""
        q, self.queue = self.queue, deque()
        chans = self.channels
        return b"".join(msg for ch, msg in q if ch in chans)

    def _others(self, c: Any) -> bytes:
        """take(), but for the notifications the client's own server sent, which stay queued: at a ReadyForQuery
        with more requests pipelined behind it, one of those requests may have sent them (a NOTIFY pipelined
        behind a LISTEN), and PostgreSQL sends them before that request's ReadyForQuery. (With one worker they
        cannot arrive before this ReadyForQuery is read; the LISTEN connection's thread can deliver them
        earlier.)"""
        s = c.server
        pid = s.pid if s is not None else 0
        if not pid:
            return self.take()
        chans = self.channels
        own: deque[tuple[bytes, bytes]] = deque()
        out = []
        for e in self.queue:
            if _U32(e[1], 5)[0] == pid:
                own.append(e)
            elif e[0] in chans:
                out.append(e[1])
        self.queue = own
        return b"".join(out)

    def ahead_of_ready(self, data: bytes) -> bytes:
        """`data`, an answer that ends with a ReadyForQuery (status I), with the queued notifications put just
        before it, as PostgreSQL sends them."""
        return data[:-6] + self.take() + data[-6:] if self.queue else data

    def before_ready(self, c: Any, z: bytes) -> bytes:
        """What the client gets in place of the ReadyForQuery `z` (status I) its server sent: the notifications
        queued for it, then `z`. After a transaction that may have notified a channel the client listens on,
        `z` waits for a round trip of the LISTEN connection (_hold_ready), so that the client's own
        notifications come before it, as PostgreSQL sends them."""
        if c.expect or c.rw.rq:
            return self._others(c) + z  # (requests pipelined after it: the client's own wait for the last one)
        out = self.take()
        if self.notified:
            self.notified = False
            if self.channels and not c.closed:
                _hold_ready(c, self, z)
                return out
        return out + z


def registry(pool: Any) -> ls.Channels:
    reg: ls.Channels | None = pool.channels
    if reg is None:
        with pool.lock:
            if pool.channels is None:
                reg = ls.Channels(pool.name)
                reg.deliver = deliver
                pool.channels = reg
            reg = pool.channels
    assert reg is not None
    return reg


def state(c: Any) -> ListenState:
    st: ListenState | None = c.lsn
    if st is None:
        st = c.lsn = ListenState(registry(c.pool), c.error_count)
    return st


def holds(c: Any) -> bool:
    """The client listens, or its transaction changed its channels, or notifications wait for it."""
    st: ListenState | None = c.lsn
    return st is not None and bool(st.channels or st.ops or st.queue)


# ---------------------------------------------------------------------- statements
def idle_statement(c: Any, view: memoryview, n: int) -> bool:
    """An idle client sent one simple query starting with l/L/u/U: True when it is a lone LISTEN or UNLISTEN,
    now answered (or on its way to the listener connection) without a server."""
    if _U32(view, 1)[0] + 1 != n or view[n - 1] != 0 or c.last_status != 73 or c.begin_held is not None \
            or not c.transaction_mode:
        return False
    text = bytes(view[5 : n - 1])
    r = ls.parse(text)
    if r is None or r[0] == ls.UNREADABLE:
        return False
    kind, name = r
    st = state(c)
    if kind == ls.LISTEN:
        c.expect += 1
        c.pause_reading()
        reg, loop = st.reg, c.loop

        def done(ok: bool, data: bytes) -> None:  # on the listener's loop, once it LISTENs (or failed)
            if ok:
                reg.subscribe(c, name)
            loop.call_soon_threadsafe(_listened, c, name, ok, data)

        command(reg, c.pool, c.worker, (text, name, ls.LISTEN, done))
        return True
    _apply(c, st, [r])
    c.write(m.command_complete("UNLISTEN") + m.RFQ_IDLE)
    flush(c)
    return True


def _listened(c: Any, name: bytes, ok: bool, data: bytes) -> None:
    c.expect -= 1
    st: ListenState = c.lsn
    if c.closed:
        if ok:
            _unlisten(c, st.reg.unsubscribe(c, [name]))
        return
    if ok:
        st.channels.add(name)
    c.write(st.ahead_of_ready(data) if data[-6:-5] == b"Z" else data)
    c.resume_reading()


def in_request(c: Any, body: memoryview) -> bytes | None:
    """A small simple query (body with its NUL) relayed to the client's server: its replacement when it
    LISTENs (each LISTEN statement becomes MARKER_SQL) or holds a LISTEN/UNLISTEN this module cannot read
    (REFUSAL), else None; notes the client's LISTEN, UNLISTEN, DISCARD ALL and ROLLBACK for the end of its
    transaction."""
    st: ListenState | None = c.lsn
    if st is not None and not st.notified:
        st.notified = bytes(body).lower().find(b"notify") >= 0
    pending = st is not None and bool(st.ops)
    if not pending:
        if body[0] | 32 == 100:  # d: DISCARD ALL is UNLISTEN * too
            r = ls.parse(bytes(body[:-1])) if len(body) > 3 and body[1] | 32 == 105 else None
            if r is not None:
                _add(c, state(c), r, True)
            return None
        if not c.leaves & LISTENS:  # the text names no "listen" (ClientConn._scan_leaks looked)
            return None
    text = bytes(body[:-1])
    ops: list[tuple[int, bytes]] = []
    out = []
    changed = False
    for part in ls.split(text):
        r = ls.parse(part)
        if r is None:
            if ops or pending:  # (a savepoint set before any change of this transaction's is not needed: ready)
                if ls.is_rollback(part):
                    ops.append((ROLLBACK, b""))
                elif (sp := ls.savepoint(part)) is not None:
                    ops.append(sp)
            out.append(part)
            continue
        if r[0] == ls.UNREADABLE:
            return REFUSAL
        ops.append(r)
        if r[0] == ls.LISTEN:
            changed = True
            part = MARKER_SQL + (b";" if part.rstrip().endswith(b";") else b"")
        out.append(part)
    if not ops:
        return None
    if st is None:  # registered by this query: its text was not looked at for "notify" above
        st = _registered(c, text, c.expect - 1, any(r[0] == ls.LISTEN for r in ops))
    for r in ops:
        _add(c, st, r, True)
        if r[0] == ls.LISTEN:
            # The listener LISTENs now, so that it already does when the client's COMMIT returns.
            _pre_listen(c, st, r[1])
    return m.msg(b"Q", b" ".join(out) + b"\x00") if changed else None


def _registered(c: Any, text: bytes, ahead: int, listens: bool) -> ListenState:
    """The client's state, made at a LISTEN/UNLISTEN run on its server (`text`; `ahead`: its requests in flight
    before this one). When it LISTENs in a transaction block (not a failed one), or behind other requests, a
    NOTIFY sent before it (not looked at: the client did not listen) may be of the same transaction, whose end
    then waits for the LISTEN connection (before_ready), as PostgreSQL sends the session its own notification
    before the COMMIT's ReadyForQuery."""
    st = state(c)
    st.notified = listens and (c.last_status == 84 or ahead > 0) or text.lower().find(b"notify") >= 0
    return st


def _add(c: Any, st: ListenState, r: tuple[int, bytes], counted: bool) -> None:
    """A LISTEN/UNLISTEN/DISCARD ALL/ROLLBACK/savepoint of the request being read, marked with it
    (ClientBase.request_index; `counted`: a simple query)."""
    st.ops.append(r)
    st.marks.append(c.request_index(counted))


def _pre_listen(c: Any, st: ListenState, name: bytes) -> None:
    """A LISTEN run on the client's server: the client is registered at once (notifications are held until
    its transaction ends: `tentative`) and the listener LISTENs now; until it does, the client's server is
    not read, so that the client sees its LISTEN done (and can COMMIT) only once the listener listens. The
    request (and what the client pipelined behind it) is not even sent until then: it waits behind a Flush in
    the server's output queue, with no write interest (`_cork`). Else `LISTEN ch; NOTIFY ch` in one query
    string, or a NOTIFY pipelined behind the LISTEN, could commit before the LISTEN connection listens, and
    the client would never get its own notification (PostgreSQL sends it before the ReadyForQuery). The client
    waits for that round trip anyway (the server is not read meanwhile)."""
    st.reg.subscribe(c, name)
    s, loop = c.server, c.loop
    if s is not None:
        st.holds += 1
        s.pause_reading()
        if not s.out:
            _cork(s)

    def done(ok: bool, data: bytes) -> None:  # on the listener's loop
        if s is not None:
            loop.call_soon_threadsafe(_listener_listens, c, s)

    command(st.reg, c.pool, c.worker, (b"LISTEN " + ls.quote(name), name, ls.LISTEN, done))


def _cork(s: Any) -> None:
    """Writes to `s` queue up unsent from now on (Conn.write appends to a non-empty `out`), until its mask is
    next applied (resume_reading: _listener_listens). A Flush heads the queue: PostgreSQL answers nothing to it."""
    s.out = bytearray(m.FLUSH)
    mem = s.loop.mem
    if mem is not None:
        mem.used += len(m.FLUSH)


def _listener_listens(c: Any, s: Any) -> None:
    st: ListenState = c.lsn
    st.holds -= 1
    if st.holds <= 0 and not s.closed and s.client is c:
        s.resume_reading()


def _hold_ready(c: Any, st: ListenState, z: bytes) -> None:
    """The client's transaction may have notified a channel it listens on: PostgreSQL sends that notification
    before the ReadyForQuery `z`, the LISTEN connection receives it only once the COMMIT is done. An empty
    query on the LISTEN connection is answered after PostgreSQL has sent it the notifications committed
    before (it sends them ahead of every ReadyForQuery), and they are delivered to the client (written at
    once: it is between transactions) before `z` is. The client is not read meanwhile. `z` waits
    HOLD_READY seconds at most (a LISTEN connection being opened again, say)."""
    c.pause_reading()
    st.ready_held = z
    loop = c.loop
    loop.call_later(HOLD_READY, _release_ready, c, z)

    def done(ok: bool, data: bytes) -> None:  # on the listener's loop (or at once, when it cannot be opened)
        loop.call_soon_threadsafe(_release_ready, c, z)

    command(st.reg, c.pool, c.worker, (b"", b"", ls.BARRIER, done))


def _release_ready(c: Any, z: bytes) -> None:
    st: ListenState = c.lsn
    if c.closed or st.ready_held is not z:
        return  # (released already)
    st.ready_held = None
    c.write(st.take() + z)
    c.resume_reading()


def bound(c: Any, stmt: Any) -> None:
    """A Bind of a prepared statement (core/prepared.Statement) that is a LISTEN, UNLISTEN or DISCARD ALL
    (`stmt.listen`), or, for a client with such changes pending, any statement (a ROLLBACK)."""
    r = stmt.listen
    st: ListenState | None = c.lsn
    if st is not None and not st.notified:
        st.notified = stmt.query.lower().find(b"notify") >= 0
    if r is None:
        if st is not None and st.ops:
            _note_end(c, st, stmt.query)
        return
    if r[0] == ls.UNREADABLE:
        return
    if st is None:  # registered by this statement: its text was not looked at for "notify" above
        st = _registered(c, stmt.query, c.expect, r[0] == ls.LISTEN)
    _add(c, st, r, False)
    if r[0] == ls.LISTEN:
        _pre_listen(c, st, r[1])


def _note_end(c: Any, st: ListenState, text: bytes) -> None:
    """A prepared statement (`text`) of a client whose LISTEN/UNLISTEN waits for its transaction's end: noted
    when it is a ROLLBACK or a savepoint's statement."""
    if ls.is_rollback(text):
        _add(c, st, (ROLLBACK, b""), False)
    elif (sp := ls.savepoint(text)) is not None:
        _add(c, st, sp, False)


def parse_refusal(c: Any, body: memoryview) -> bytes | None:
    """Without transparent prepared statements: a Parse (body) of a LISTEN/UNLISTEN is refused, since the
    statement would run on whichever server the client has at its Execute (REFUSAL with no parameters). A
    DISCARD ALL goes on, and is noted as the UNLISTEN * it also is, for its request (that of its Parse: the
    pooler does not keep these statements); so is a ROLLBACK or a savepoint's statement while the client's
    LISTEN or UNLISTEN waits for its transaction's end (as `bound` notes them)."""
    b = bytes(body)
    j = b.find(b"\x00")
    k = b.find(b"\x00", j + 1) if j >= 0 else -1
    r = ls.statement(b[j + 1 : k]) if k >= 0 else None
    if r is None:
        st: ListenState | None = c.lsn
        if st is not None and st.ops and k >= 0:
            _note_end(c, st, b[j + 1 : k])
        return None
    if r[0] == ls.DISCARD_ALL:
        if c.lsn is not None:
            _add(c, c.lsn, r, False)
        return None
    return m.msg(b"P", b[: j + 1] + ls.REFUSAL + b"\x00\x00\x00")


# ---------------------------------------------------------------------- transaction ends
def ready(c: Any, status: int) -> None:
    """ReadyForQuery relayed to a client that has a ListenState (ClientBase.ready)."""
    st: ListenState = c.lsn
    error = c.error_count != st.errors
    st.errors = c.error_count
    marks = st.marks
    done = c.answered  # (counted already: the ops of requests before it are this transaction's)
    k = 0
    while k < len(marks) and marks[k] < done:
        k += 1
    if status == 73:  # the transaction ended (its `failed` goes, also when none of `ops` is this request's)
        if k:
            ops, gone, cut = _undone(st.ops[:k])
            del st.ops[:k], marks[:k]
            if gone:
                _drop(c, st, gone)
            if ops and (error or st.failed and not cut):
                _drop(c, st, ops)
            elif ops:
                _apply(c, st, ops)
                _own_and_after(c, st)
        if not st.ops:
            st.tentative = []  # (else some are a pipelined request's channels)
        st.failed = False
    elif k:
        st.failed = status == 69  # T after E: ROLLBACK TO SAVEPOINT
    # (The server's relay then writes what is queued just before this ReadyForQuery when its status is I.)


def _undone(ops: list[tuple[int, bytes]]) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]], bool]:
    """A transaction's changes and savepoints, in order: (the changes that stand, those a ROLLBACK or ROLLBACK TO
    voided, whether a ROLLBACK came). ROLLBACK TO a savepoint not among them (set before the first change) voids
    every change before it; RELEASE keeps the changes and forgets that savepoint and the later ones."""
    kept: list[tuple[int, bytes]] = []
    gone: list[tuple[int, bytes]] = []
    cut = False
    for e in ops:
        kind = e[0]
        if kind != ROLLBACK and kind != ls.ROLLBACK_TO and kind != ls.RELEASE:
            kept.append(e)
            continue
        # the savepoint's place (the latest of that name); -1: before every change (ROLLBACK: all of them)
        mark = (ls.SAVEPOINT, e[1])
        i = -1 if kind == ROLLBACK else max((j for j, x in enumerate(kept) if x == mark), default=-1)
        if kind == ls.RELEASE:
            if i >= 0:
                kept = kept[:i] + [x for x in kept[i:] if x[0] != ls.SAVEPOINT]
            continue
        cut = cut or kind == ROLLBACK
        gone += [x for x in kept[i + 1 :] if x[0] != ls.SAVEPOINT]
        del kept[i + 1 :]
    return [e for e in kept if e[0] != ls.SAVEPOINT], gone, cut


def _apply(c: Any, st: ListenState, ops: list[tuple[int, bytes]]) -> None:
    """A committed transaction's LISTEN/UNLISTEN, in order."""
    chans = st.channels
    before = set(chans)
    for kind, name in ops:
        if kind == ls.LISTEN:
            chans.add(name)
        elif kind == ls.UNLISTEN:
            chans.discard(name)
        else:
            chans.clear()
    reg = st.reg
    for name in chans - before:
        reg.subscribe(c, name)
        command(reg, c.pool, c.worker, (b"LISTEN " + ls.quote(name), name, ls.LISTEN, None))
    removed = before - chans
    if removed:
        if st.queue:
            st.queue = deque(e for e in st.queue if e[0] in chans)
        if st.ops:
            removed -= _later_listens(st)
        if removed:
            _unlisten(c, reg.unsubscribe(c, removed))
    _drop(c, st, ops)


def _drop(c: Any, st: ListenState, ops: list[tuple[int, bytes]]) -> None:
    """LISTENs that did not commit: the client was registered early for them (_pre_listen)."""
    names = {name for kind, name in ops if kind == ls.LISTEN and name not in st.channels}
    if names and st.ops:
        names -= _later_listens(st)
    if names:
        _unlisten(c, st.reg.unsubscribe(c, names))


def _later_listens(st: ListenState) -> set[bytes]:
    """The channels a LISTEN of a later request (pipelined, still in `ops`) registered the client for early
    (_pre_listen): an UNLISTEN, or a failed LISTEN, of an earlier request leaves those registrations alone (else
    the notifications of that later request's own NOTIFY were lost: `UNLISTEN *` pipelined before `LISTEN ch;
    NOTIFY ch`)."""
    return {name for kind, name in st.ops if kind == ls.LISTEN}


def _own_and_after(c: Any, st: ListenState) -> None:
    """The transaction that LISTENed committed: of the notifications held meanwhile, PostgreSQL delivers the
    ones committed with or after it. The listener receives them in commit order, so the first one sent by
    this transaction (its server's PID) marks the point; without one, none of them is known to be later."""
    held = st.tentative
    s = c.server
    pid = s.pid if s is not None else 0
    for i, (_, msg) in enumerate(held):
        if _U32(msg, 5)[0] == pid:
            for ch, m_ in held[i:]:
                if ch in st.channels:
                    st.queue.append((ch, m_))
            return


def _unlisten(c: Any, names: list[bytes]) -> None:
    reg = c.lsn.reg
    for name in names:
        command(reg, c.pool, c.worker, (b"UNLISTEN " + ls.quote(name), name, ls.UNLISTEN, None))


def client_gone(c: Any) -> None:
    st: ListenState = c.lsn
    names = st.channels | {name for kind, name in st.ops if kind == ls.LISTEN}
    st.channels = set()
    st.ops = []
    st.marks = []
    st.queue.clear()
    _unlisten(c, st.reg.unsubscribe(c, names))


# ---------------------------------------------------------------------- delivery
def _idle(c: Any) -> bool:
    """Between transactions with nothing in flight (a server may still be linked: a client pinned to it, or
    one whose session is being read back): a notification written now comes at a ReadyForQuery boundary."""
    return (not c.in_flight and c.last_status == 73 and c.begin_held is None and not c.waiting
            and c.state == READY and not c.pending and not c.raw and not c.closed)


def deliver(clients: list[Any], channel: bytes, msg: bytes) -> None:
    """One notification for `clients` (on their worker's loop)."""
    for c in clients:
        st: ListenState | None = c.lsn
        if st is None or c.closed:
            continue
        if channel not in st.channels:
            if any(k == ls.LISTEN and name == channel for k, name in st.ops):
                st.tentative.append((channel, msg))  # its LISTEN is not committed yet
                if len(st.tentative) > MAX_QUEUED:
                    _overflow(c, st, f"{len(st.tentative)} notifications wait for the end of its transaction")
            continue  # (or UNLISTENed since the listener looked)
        if not st.queue and _idle(c):
            if c.backlog > MAX_BACKLOG:
                _overflow(c, st, f"its socket has {c.backlog} bytes unsent")
            else:
                c.write(msg)
            continue
        st.queue.append((channel, msg))
        if len(st.queue) > MAX_QUEUED:
            _overflow(c, st, f"{len(st.queue)} notifications wait for the end of its transaction")


def flush(c: Any) -> None:
    """Write the notifications queued for `c` if it is between transactions now."""
    st: ListenState | None = c.lsn
    if st is None or not st.queue or not _idle(c):
        return
    c.write(st.take())


def _overflow(c: Any, st: ListenState, why: str) -> None:
    with st.reg.lock:
        st.reg.overflows += 1
    log.warning("client %s (%s@%s) closed: %s", c.addr, c.user, c.database, why)
    st.queue.clear()
    c.fatal("54000", "too many notifications are waiting for this client",
            f"pgdoorman closes a listening client that does not read its notifications: {why}.")
