"""Transparent prepared statements, the state of one client and the server-to-client direction: the
client's names for the pool's statements, the queue of responses its requests expect, and the rewriting of
the server's answers (synthetic ParseCompletes spliced in, answers to injected Parses swallowed, a stale plan
re-parsed, PostgreSQL's skip after an extended-protocol error mirrored).

`RewriterBase` is the lower half of `Rewriter` (rewrite.py: the client-to-server direction). Neither holds a
socket: the client it serves is a `Relay` (the request counters it keeps true) and the server its client is
linked to is a `Held` (the statements that server holds); tests/unit/test_rewriter.py drives both directions
with plain objects.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, Protocol

from pgdoorman.core import prepared as ps
from pgdoorman.protocol import messages as m
from pgdoorman.session.dealloc import NO_NAMES, Deallocating
from pgdoorman.session.noqueue import NO_REQUESTS

if TYPE_CHECKING:
    from collections.abc import Callable

    from pgdoorman.core.prepared import PoolCache

log = logging.getLogger("pgdoorman.server")

# The response types the plain relay handler acts on (ReadyForQuery, CommandComplete, ParameterStatus, Error).
PLAIN_TYPES = frozenset(b"ZCSEG")
# The queue entries answered by a ReadyForQuery.
_ENDS = frozenset((ps.SYNC, ps.QUERY, ps.FUNC, ps.INJ_SYNC))
_SYNC = frozenset((ps.SYNC, ps.INJ_SYNC))
# The data of a SQL EXECUTE's QUERY entry once the Parse injected before it failed (the statement does not exist
# on the server): the Parse's error answered the client, the EXECUTE's own error (26000 or 25P02) is swallowed.
_VOID = "the injected Parse failed"
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


# Where a client's CopyDone/CopyFail falls among its requests (session/tracking.py: the Syncs before it after a
# COPY start are ignored by PostgreSQL). A synthetic entry with nothing to send: one left at the head of the
# queue (no COPY started before it) goes with the next synthetic answers. Compared by identity.
COPY_END: tuple[int, Any] = (ps.SYNTH, b"")
# A Sync sent after CopyData since the last Query/Execute: if a COPY swallows it and then fails, PostgreSQL may
# have read it before the failure (ignored) or after (answered).
SYNC_AFTER_DATA: tuple[int, Any] = (ps.SYNC, True)


class Held(Protocol):
    """The server a client is linked to, as its rewriter sees it: which pool statements (DOORMAN_n) it holds,
    its hit/miss counters, and its relay's switches. ServerConn is one."""

    prepared: OrderedDict[bytes, None]
    evicted: list[bytes]
    # Statements it may or may not hold: a Parse of one was skipped or failed, maybe after our Close of it, maybe
    # with another Parse of it in flight. Not in `prepared`; parsed there again only after a Close (no error
    # on PostgreSQL when the statement does not exist).
    unsure: set[bytes]
    ps_hits: int
    ps_misses: int
    txn_status: int
    dirty: int  # session/states.py's DIRTY_* bits
    skipping: bool  # PostgreSQL skips to the next Sync after an error in this batch
    release_pending: bool

    def remember(self, name: bytes) -> None: ...

    def set_ps_mode(self, on: bool) -> None: ...

    _plain_handler: Callable[[int, memoryview], bytes | None]  # the plain relay's handler


def revive(s: Held, st: ps.Statement) -> None:
    """If `st` was evicted from `s` since the server was checked out, it is still there (its DEALLOCATE comes
    at check-in): held again rather than parsed (PostgreSQL would refuse that Parse with 42P05). A Parse of it
    still in flight may yet be skipped: Rewriter._unsure decides, as for any statement held. A statement the
    pool forgot (`dead`) too: a client that named it before DDL invalidated the pool's cache still uses it (as
    PostgreSQL keeps a session's statements), and another client's name for a stale plan still points at it
    until its own error replaces it; parsing it again here failed with 42P05."""
    ev = s.evicted
    if ev and st.name in ev and st.name not in s.prepared:
        s.remember(st.name)


class Relay(Protocol):
    """The client a rewriter serves, as the rewriter sees it: the request counters its relay keeps, which the
    rewriter keeps true for the messages it reads. ClientConn is one."""

    expect: int  # ReadyForQuerys due
    unsynced: bool  # an extended-protocol message was sent and its Sync not yet
    copy_window: int  # 0, or the type of the last Query (81) / Execute (69), + 1000 once CopyData followed
    copy_syncs: int
    copy_pre: int  # Syncs in that window before its first CopyData
    copy_risk: bool
    in_copy_in: bool
    leaves: int  # what it may leave on its server: core/leaks.py's PINS | SETTINGS bits
    terminating: bool
    last_status: int

    @property
    def server(self) -> Any: ...  # Held | None (Any: ClientConn's attribute is the richer ServerConn)

    def _mark_query(self) -> None: ...

    def refuse_pinning(self, text: bytes | memoryview, parse: bool = False) -> str | None: ...  # and notes it
    def note_resets(self, st: ps.Statement) -> None: ...  # a bound statement's resets (session/txresets.py)

    def note_names(self, names: tuple[str, ...]) -> None: ...  # custom settings a bound statement names

    # Transaction mode LISTEN (session/listening.py): the client's state (None unless it used LISTEN), a small
    # simple query's replacement, and a Bind of a statement that is a LISTEN/UNLISTEN (or any, while pending).
    @property
    def lsn(self) -> Any: ...

    def listen_statement(self, body: memoryview) -> bytes | None: ...

    def listen_bound(self, st: ps.Statement) -> None: ...

    def resume_held(self) -> None: ...  # messages the rewriter held (RewriterBase._waits) may be fed again


class RewriterBase(Deallocating):
    """The prepared-statement state of one client: its names (`named`, `unnamed`) for statements of the pool's
    cache, the responses its requests expect (`rq`), the fast batch in flight, and the reply direction."""

    __slots__ = ("relay", "cache", "sig", "unnamed", "anon", "anon_evicted", "rq", "last_parse", "synth_head",
                 "fast_bind", "fast_redo", "held_error", "parsing", "done", "defs", "snap")  # (and Deallocating's)

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.cache: PoolCache | None = None  # the pool's statements (set by start())
        self.sig: tuple[str, ...] = ()  # the client's planner settings: part of each statement's key
        self.named: dict[bytes, ps.Statement] = NO_NAMES  # a dict of its own from its first named Parse
        self.unnamed: ps.Statement | None = None
        # The unnamed statements it parsed lately, by statement key, most recent last (at most the pool's
        # `anon_size`; 0: no limit): made when it parses a second distinct one, so that a client alternating
        # between a few unnamed queries finds each again without the pool's lock, also after the pool's cache
        # evicted it (the server still holds it under its name: no Parse again). Only a memo of Parses:
        # a Bind of "" always means `unnamed`, the latest, as on PostgreSQL.
        self.anon: OrderedDict[tuple[bytes, bytes, tuple[str, ...]], ps.Statement] | None = None
        self.anon_evicted = 0  # entries `anon` dropped for its size (SHOW POOLS_MEMORY)
        # The expected-response queue: a deque of its own (760 bytes) from the first extended-protocol message
        # that needs one (Rewriter._track, in prepared-statement mode), so that clients that never send one
        # (idle ones, simple queries, session mode) do not pay for it.
        self.rq: deque[tuple[int, Any]] = NO_REQUESTS
        self.last_parse: tuple[bytes, bytes, ps.Statement] | None = None  # the last Parse body, its name and statement
        # A fast batch in flight (rewrite.py fast_batch): its ParseComplete answered here, to go in front of the
        # server's first bytes; its Bind's (statement, client name); what to send again if that statement's plan
        # went stale (0A000 "cached plan must not change result type", held in held_error until ReadyForQuery).
        self.synth_head: bytes | None = None
        self.fast_bind: tuple[ps.Statement, bytes] | None = None
        self.fast_redo: tuple[bytes, int, int, bytes] | None = None
        self.held_error: bytes | None = None
        # The Parses of pool statements in flight (general path): server name -> the window the latest was sent
        # in.
        # Windows are numbered by the Syncs queued (`win`) and answered (`done`); all reset when the queue is
        # empty. A message after a later Sync must not rely on such a Parse: PostgreSQL may skip it after an
        # error in its window (Rewriter._unsure).
        self.parsing: dict[bytes, int] | None = None
        self.win = 0
        self.done = 0
        # The client's statement names a Parse or Close in flight changed: name -> the window of the latest.
        # A message naming one in a later window waits until the earlier windows are answered (`holding`: see
        # _waits), since PostgreSQL may skip that Parse or Close and the name's meaning is known only then.
        self.defs: dict[bytes, int] | None = None
        self.holding = False
        # A portal bound to a prepared DEALLOCATE answered here (dealloc_bind): (its name, the DEALLOCATE's).
        self.dealloc_portal: tuple[bytes, bytes] | None = None
        # A Parse answered here, no Bind after it yet, maybe in a transaction block: parsed at the Sync (snapshot_parse).
        self.snap: ps.Statement | None = None

    def start(self, cache: PoolCache, sig: tuple[str, ...]) -> None:
        """Prepared-statement mode from now on, with this pool cache and these planner settings."""
        self.cache = cache
        self.sig = sig

    def _queue(self) -> deque[tuple[int, Any]]:
        """The response queue, made on first use (prepared-statement mode only: NO_REQUESTS says so loudly)."""
        rq = self.rq
        if rq is NO_REQUESTS:
            if self.cache is None:
                raise RuntimeError("response queued outside prepared-statement mode")
            rq = self.rq = deque()
        return rq

    # ------------------------------------------------------------------ the client's names
    def lookup(self, name: bytes) -> ps.Statement | None:
        return self.named.get(name) if name else self.unnamed

    def define(self, name: bytes, st: ps.Statement | None) -> None:
        """The client's Parse of `name` (b"" = the unnamed statement) now means `st` (None: nothing)."""
        if name:
            if st is None:
                self.named.pop(name, None)
                return
            if not st.named:
                st.named = True  # (the query interner's kind: never dropped for idling, see PoolCache.sweep)
            if self.named is NO_NAMES:
                self.named = {name: st}
            else:
                self.named[name] = st
        else:
            if st is not None and st is not self.unnamed:
                self._remember_anon(st)
            self.unnamed = st

    def _remember_anon(self, st: ps.Statement) -> None:
        """`st` is the client's unnamed statement from now on: keep it in `anon`, evicting the least recent."""
        anon = self.anon
        if anon is None:
            prev = self.unnamed
            if prev is None or prev.dead:
                return  # one unnamed statement so far: `unnamed` and `last_parse` find it
            anon = self.anon = OrderedDict(((prev.key, prev),))
        key = st.key
        if key in anon:
            anon.move_to_end(key)
        anon[key] = st
        cache = self.cache
        size = cache.anon_size if cache is not None else 0
        while size and len(anon) > size:  # (more than one only after RELOAD made it smaller)
            anon.popitem(last=False)  # only our reference goes: the pool's and the servers' copies stay
            self.anon_evicted += 1
            if cache is not None:
                cache.anon_evictions += 1

    def find_anon(self, query: bytes, types: bytes) -> ps.Statement | None:
        """The unnamed statement of this text and parameter types the client parsed lately, if still good."""
        anon = self.anon
        if anon is None:
            return None
        st = anon.get((query, types, self.sig))
        if st is None or not st.dead:
            return st
        del anon[st.key]  # forgotten by the pool (failed Parse, DDL): the next Parse makes a new one
        return None

    def forget_statements(self) -> None:
        """The server ran DISCARD ALL / DEALLOCATE ALL for us: PostgreSQL would have dropped them all (the named
        ones: the unnamed statement stays, unless it came as a simple query, which drops it: on_header)."""
        self.named.clear()
        self.anon = None

    def _statement_failed(self, name: bytes, st: ps.Statement) -> None:
        """PostgreSQL refused the Parse of `st` under the client's `name`: the name means nothing now, as on
        PostgreSQL, where a failed Parse creates nothing."""
        if name:
            if self.named.get(name) is st:
                del self.named[name]
        else:
            if self.unnamed is st:
                self.unnamed = None
            if self.anon is not None and self.anon.get(st.key) is st:
                del self.anon[st.key]

    def _statement_replaced(self, st: ps.Statement, fresh: ps.Statement) -> None:
        """`st` went stale on the server (DDL changed its result type): the client's names for it now mean
        `fresh`, the same text prepared again under a new server name."""
        for k, v in list(self.named.items()):
            if v is st:
                self.named[k] = fresh
                fresh.named = True
        if self.unnamed is st:
            self.unnamed = fresh

    def take_synth(self) -> bytearray | None:
        """The synthetic responses at the head of the queue (answered here), to be written to the client."""
        return ps.take_synth(self.rq)

    def after_synth(self, out: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        """The server's first bytes after a fast batch whose Parse was answered here: the synthetic
        ParseComplete goes in front of them."""
        head = self.synth_head
        self.synth_head = None
        return head + out if head is not None else out

    def hold_error(self, body: memoryview) -> None:
        """A fast batch's statement went stale: its ErrorResponse waits for ReadyForQuery, when the batch is
        sent again with fresh statements (rewrite.py redo_fast_batch) or the error is relayed after all."""
        self.held_error = m.msg(b"E", body)

    def drop_request(self) -> None:
        """The plain relay's queue (session/tracking.py), if it runs: the entries of the oldest request, held
        for a server and cancelled before it got one, are dropped with it."""
        rq = self.rq
        while rq:
            if rq.popleft()[0] in (ps.SYNC, ps.QUERY, ps.FUNC):
                break
        while rq and rq[0] is COPY_END:
            rq.popleft()

    def _skipped(self, kind: int, data: Any) -> None:
        """PostgreSQL skipped the message of this queue entry (an earlier error in the same batch): undo what
        sending it did to the client's names and counters."""
        # (Only when the name still means what the message made it mean: a later window's Parse of the
        # unnamed statement, sent before this skip was known, stands.)
        if kind == ps.PARSE:
            if self.lookup(data[1]) is data[0]:
                self.define(data[1], data[2])
        elif kind == ps.SYNTH and isinstance(data, tuple):
            name, prev, cur = data[1]
            if name is None:
                self.named = prev  # a prepared DEALLOCATE ALL (dealloc_exec): the names as they were
            elif self.lookup(name) is cur:
                self.define(name, prev)
        elif kind == ps.QUERY or kind == ps.FUNC:
            self.relay.expect -= 1  # no ReadyForQuery will answer it

    # ------------------------------------------------------------------ server -> client
    def reply(self, t: int, body: memoryview, s: Held) -> bytes | None:
        """A message from server `s` in prepared-statement mode (its scanner's handler): what to relay instead
        of it (None: as it is, b"": nothing), with synthetic answers due before or after it."""
        rq = self.rq
        # (While PostgreSQL skips to a Sync it sends nothing: no synthetic answer is due before its ReadyForQuery.
        # A response other than that ReadyForQuery means it is not skipping any more.)
        if s.skipping and t not in _WHILE_SKIPPING:
            s.skipping = False
        prefix = None if s.skipping else ps.take_synth(rq)
        swallow = rewritten = False
        if rq and t not in (83, 78, 65):  # ParameterStatus, notices and notifications belong to no entry
            kind, data = rq[0]
            if t == 90:  # ReadyForQuery ends the batch
                if s.skipping:
                    # It answers the Sync that ended PostgreSQL's skip: whatever the client sent before that
                    # Sync (also after the error reached us) was skipped.
                    s.skipping = False
                    if rq and rq[0][0] not in _SYNC:
                        self._skip_until(s, _SYNC)
                elif rq and rq[0][0] not in _ENDS:
                    self._skip_until(s, _ENDS)  # never answered: skipped
                if rq:
                    end = rq.popleft()
                    if end[0] == ps.SYNC:
                        self.done += 1
                    elif end[0] == ps.INJ_SYNC:
                        swallow = self._injected_sync(s, end[1], body[0])
            elif t == 69:  # ErrorResponse
                if data is _VOID:
                    swallow = True  # (the entry stays until its ReadyForQuery)
                elif (rep := self._error_response(s, kind, data, body)) is not None:
                    body = memoryview(rep)
                    rewritten = True
            elif t in ps.TERMINAL[kind]:
                rq.popleft()
                swallow = kind in ps.SWALLOWED
                if s.unsure and (kind == ps.PARSE or kind == ps.INJECT):  # it holds the statement now (Held.unsure)
                    self._parsed(s, data[0] if kind == ps.PARSE else data)
        plain = s._plain_handler(t, body) if t in PLAIN_TYPES and not swallow else None  # (its replacement)
        # Synthetic responses due right after this one (e.g. a CloseComplete between a BindComplete and the
        # DataRows that follow): emit them now, since DataRows stream by without reaching this handler.
        suffix = ps.take_synth(rq)
        if self.holding and (t == 90 or t == 67):  # (67: a COPY's end, whose Syncs PostgreSQL ignored: no Z comes)
            self._resume()
        if t == 90:
            if rq:
                s.release_pending = False  # more was pipelined after this Sync
            else:
                s.skipping = False  # (a Sync the plain relay did not queue ended the skip: session/tracking.py)
                s.set_ps_mode(False)
        if prefix is None and suffix is None and not rewritten:
            return b"" if swallow else plain
        out = prefix if prefix is not None else bytearray()
        if plain is not None:
            out += plain
        elif not swallow:
            out += bytes([t]) + m.U32.pack(len(body) + 4) + body
        if suffix is not None:
            out += suffix
        return bytes(out)

    def _error_response(self, s: Held, kind: int, data: Any, body: memoryview) -> bytes | None:
        """An ErrorResponse answering the entry (kind, data) at the head of the queue: the rewritten error, or
        None to relay PostgreSQL's own."""
        rq = self.rq
        if kind in (ps.QUERY, ps.FUNC):
            # A simple query's error ends at its ReadyForQuery; in a fast batch errors are its Bind's.
            return None if data is None else self.error_rewrite(s, ps.BIND, data, body)
        rep = self.error_rewrite(s, kind, data, body)
        # PostgreSQL skips everything up to the next Sync: so do the expectations, and what the skipped
        # messages did to our view of the client's and this server's statements is undone (also for messages
        # the client sends after this, until its Sync: see Held.skipping).
        rq.popleft()
        if rq and rq[0][0] == ps.INJ_SYNC:
            rq[0] = (ps.INJ_SYNC, True)  # our Parse before a SQL EXECUTE: its error answers the EXECUTE
        elif rq and rq[0][0] != ps.SYNC:
            self._skip_until(s, _SYNC)
        if not rq:
            s.skipping = True
        return rep

    def _injected_sync(self, s: Held, failed: bool, status: int) -> bool:
        """ReadyForQuery (`status`) answering our Sync after a Parse injected before a SQL EXECUTE
        (Rewriter._sql_execute): swallowed (True). If that Parse failed, the EXECUTE that follows fails too (its
        statement does not exist there, or the transaction is aborted): its error is swallowed, its
        ReadyForQuery ends the client's query as PostgreSQL's own would have, after the Parse's error."""
        self.done += 1
        s.txn_status = status
        rq = self.rq
        if failed and rq and rq[0] == (ps.QUERY, None):
            rq[0] = (ps.QUERY, _VOID)
        return True

    def _skip_until(self, s: Held, ends: frozenset[int]) -> None:
        """PostgreSQL skipped the queued messages before the next entry of a kind in `ends`: each is undone, the
        latest first (a name closed, then parsed again, among them means what it meant before the first)."""
        rq = self.rq
        skipped = []
        while rq and rq[0][0] not in ends:
            skipped.append(rq.popleft())
        skipped.reverse()  # (not `in reversed(skipped)`: mypyc fails on that loop, scripts/build_mypyc.sh)
        for kind, data in skipped:
            self._skip_entry(s, kind, data)

    def _skip_entry(self, s: Held, kind: int, data: Any) -> None:
        """PostgreSQL skipped the message of this expected-response entry: undo what sending it did."""
        self._skipped(kind, data)
        if kind == ps.PARSE or kind == ps.INJECT:
            self._not_parsed(s, data[0] if kind == ps.PARSE else data)

    @staticmethod
    def _parsed(s: Held, st: ps.Statement) -> None:
        if st.name in s.unsure:
            s.unsure.discard(st.name)
            s.remember(st.name)

    def _waits(self, t: int, body: memoryview) -> bool:
        """Must this message (a Parse, Bind, Describe or Close) and what follows it wait? It names a statement of
        the client changed by a Parse or Close still unanswered in an earlier window. Then it is held (the relay
        feeds it again after `relay.resume_held`); the server stays with the client meanwhile."""
        defs = self.defs
        assert defs is not None
        raw = bytes(body)
        j = raw.find(b"\x00")
        if t == 80:
            if j <= 0:
                return False  # unnamed: a Parse replaces it anyway (for the server's copy see Rewriter._unsure)
            name = raw[:j]
        elif t == 66:
            k = raw.find(b"\x00", j + 1) if j >= 0 else -1
            if k < 0:
                return False
            name = raw[j + 1 : k]
        elif raw[:1] == b"S" and j == len(raw) - 1:  # Describe, Close
            name = raw[1:j]
        else:
            return False
        w = defs.get(name)
        if w is None or w >= self.win or w < self.done:
            return False
        if not any(e[0] in _ENDS for e in self.rq):
            return False  # nothing before it is unanswered after all (the counters lag after a COPY)
        self.hold()
        return True

    def _resume(self) -> None:
        """ReadyForQuery while messages are held: once everything before them is answered, feed them again."""
        if not any(e[0] in _ENDS for e in self.rq):
            self.holding = False
            self.relay.resume_held()

    @staticmethod
    def _not_parsed(s: Held, st: ps.Statement) -> None:
        """A Parse of `st` was skipped or failed: whether `s` holds it depends on what came before (our Close of
        it skipped too, an earlier Parse of it in flight): from now on it is parsed there only after a Close."""
        s.prepared.pop(st.name, None)
        s.unsure.add(st.name)
        if s.evicted and st.name in s.evicted:
            s.evicted.remove(st.name)  # no DEALLOCATE at check-in: it may not exist (it fails, the server is lost)

    def error_rewrite(self, s: Held, kind: int, data: object, body: memoryview) -> bytes | None:
        """Keep caches true after an error; return the error body with our statement name replaced by the
        client's when PostgreSQL quoted it."""
        cache = self.cache
        if cache is None:
            return None  # the plain relay's queue (session/tracking.py): nothing was renamed
        if kind == ps.PARSE or kind == ps.INJECT:
            st = data[0] if kind == ps.PARSE else data  # type: ignore[index]
            assert isinstance(st, ps.Statement)
            self._not_parsed(s, st)
            if kind == ps.PARSE:
                # A failed Parse creates nothing, on PostgreSQL as here: forget it everywhere.
                cache.forget(st)
                self._statement_failed(data[1], st)  # type: ignore[index]
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
            s.prepared.pop(st.name, None)
            if st.name not in s.evicted:
                s.evicted.append(st.name)
            cache.forget(st)
            self._statement_replaced(st, cache.get(st.query, st.key[1], st.key[2]))
        return rep if rep != raw else None

    def fast_error(self, s: Held, body: memoryview) -> bytes | None:
        """An ErrorResponse in plain relay mode while a fast batch is in flight (its Bind's error): the error
        to relay (None: PostgreSQL's own, b"": held until ReadyForQuery for a redo)."""
        fb = self.fast_bind
        assert fb is not None
        if self.fast_redo is not None and is_stale_plan(m.parse_fields(body)):
            self.error_rewrite(s, ps.BIND, fb, body)  # forgets the stale statement, makes a fresh one
            self.hold_error(body)
            return b""  # held until ReadyForQuery (see Rewriter.redo_fast_batch)
        rep = self.error_rewrite(s, ps.BIND, fb, body)
        return None if rep is None else m.msg(b"E", rep)
