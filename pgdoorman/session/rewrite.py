"""Transparent prepared statements in transaction mode: one `Rewriter` per client, which maps the client's
statement names to the pool's shared DOORMAN_n statements in what it sends, and rewrites the server's answers
back (rewrite_replies.py, its lower half). It holds no socket: the connections hand it each message and send
what it returns (session/fastpath.py for the client, ServerConn._on_message_ps for the server).

Client to server: each extended-protocol message is read (a Scanner calls on_header/on_message), statement
names are renamed, a Parse the linked server already holds is answered here, and the responses each message
expects are queued (`rq`) for the reply direction. Two shortcuts produce exactly what that general path
would: `fast_batch` (a whole `[Parse] Bind [Describe portal] Execute Sync` batch of cached statements, relayed
in plain mode) and `parse_sync_locally` (`Parse... Sync` of cached statements, answered without a server).
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any

from pgdoorman.core import leaks, sqllex
from pgdoorman.core import prepared as ps
from pgdoorman.protocol import frontend
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.framing import HOLD
from pgdoorman.session.noqueue import NO_REQUESTS
from pgdoorman.session.rewrite_replies import COPY_END, SYNC_AFTER_DATA, Held, RewriterBase, revive
from pgdoorman.session.states import LISTEN_START

# SQL EXECUTE of a statement the client prepared through the protocol: the server knows it by the pool's name.
_EXECUTE = re.compile(rb"^(\s*execute\s+)(\"(?:[^\"]|\"\")+\"|[A-Za-z_][A-Za-z0-9_$]*)", re.I)
_unpack = m.U32.unpack_from
_pack = m.U32.pack
_NAMING = frozenset(b"PBDC")


def renamed_bind(b: bytes, j: int, k: int, name: bytes) -> bytes:
    """The Bind message with body `b`, whose statement name lies between the NULs at j and k, naming `name`."""
    return m.msg(b"B", b[: j + 1] + name + b[k:])


class Rewriter(RewriterBase):
    __slots__ = ()

    def _ensure(self, st: ps.Statement) -> bytes:
        """Make sure the linked server holds `st`: b'' if it does, else the Parse to inject before (after a Close,
        when unsure)."""
        s: Held = self.relay.server
        prepared = s.prepared
        revive(s, st)
        if st.name in prepared:
            if self.parsing is None or not self._unsure(st):
                prepared.move_to_end(st.name)
                return b""
        elif st.name not in s.unsure:
            s.remember(st.name)
            rq = self._track()  # (first: switching the queue on forgets the Parses in flight)
            self._parsing(st)
            rq.append((ps.INJECT, st))
            return st.parse_msg
        return self._reparse(s, st, (ps.INJECT, st))

    def _unsure(self, st: ps.Statement) -> bool:
        """`st`'s latest Parse is in flight in an earlier window than the message at hand: PostgreSQL may skip it
        (an error before it in its window) and still run this one. (A message naming a client's statement whose
        own Parse that is waits instead: RewriterBase._waits.)"""
        p = self.parsing
        assert p is not None
        e = p.get(st.name)
        return e is not None and self.done <= e < self.win

    def _parsing(self, st: ps.Statement) -> None:
        """A Parse of `st` goes to the server in the current window (see RewriterBase.parsing)."""
        p = self.parsing
        if p is None:
            p = self.parsing = {}
        p[st.name] = self.win

    def _reparse(self, s: Held, st: ps.Statement, entry: tuple[int, Any], tracked: bool = False) -> bytes:
        """Close and Parse `st` again on `s`, which may or may not hold it (`entry`: the Parse's queue entry).
        PostgreSQL answers Close of a statement that does not exist with CloseComplete: swallowed (UNPARSE).
        `tracked`: the queue is on (a client's Parse, whose name _ps_parse noted in `defs` already)."""
        s.unsure.discard(st.name)
        s.remember(st.name)
        rq = self.rq if tracked else self._track()  # (switching the queue on forgets the Parses in flight)
        self._parsing(st)
        rq.append((ps.UNPARSE, None))
        rq.append(entry)
        return m.msg(b"C", b"S" + st.name + b"\x00") + st.parse_msg

    def _malformed(self, rq: deque[tuple[int, Any]]) -> bytes | None:
        """A message body PostgreSQL will refuse (08P01, "invalid message format" and the like): sent on
        untouched, so PostgreSQL answers it in its own words and skips to Sync, as it would directly."""
        self.relay.unsynced = True
        rq.append((ps.MALFORMED, None))
        return None

    def on_message(self, t: int, body: memoryview) -> bytes | None:
        if t == 81:  # small simple query
            self.unnamed = None  # (also when answered here: see on_header)
            if len(body) < 2:  # empty, or no text before the NUL: PostgreSQL's answer, untouched
                self.on_header(t, 0)
                return None
            blank = body[0] in b" \t\r\n"
            if body[0] | 32 == 100 or blank:  # starts with d/D or blank: maybe DEALLOCATE
                mt = ps.DEALLOCATE_TEXT.match(bytes(body[:-1]))
                if mt is not None:
                    return self.deallocate(mt.group(1))
            if (body[0] | 32 == 101 or blank) and (ex := self._sql_execute(body)) is not None:  # maybe EXECUTE
                return ex
            self.on_header(t, 0)
            refused = self.relay.refuse_pinning(body)  # transaction_pinning: refuse
            return self.relay.listen_statement(body) if refused is None else m.query(refused)
        if t == 72:  # Flush
            return None
        if t == 88:  # Terminate
            self.relay.terminating = True
            return b""
        if t == 83 and self.relay.in_copy_in:
            if self.relay.copy_window >= 1000:
                self.relay.copy_risk = True  # after data: see session/tracking.py
            return None  # PostgreSQL ignores Sync during COPY IN: no ReadyForQuery will answer it
        if self.defs is not None and t in _NAMING and self._waits(t, body):
            return HOLD
        rq = self._track()
        if t == 66:  # Bind: portal, statement, ...
            return self._ps_bind(body, rq)
        if t == 69:  # Execute
            if self.dealloc_portal is not None and (out := self.dealloc_exec(body, rq)) is not None:
                return out
            self.relay.unsynced = True
            self.relay.copy_window = 69  # it may start a COPY FROM STDIN
            self.relay.copy_syncs = 0
            rq.append((ps.EXEC, None))
            return None
        if t == 83:  # Sync
            self.win += 1  # (a window ends: RewriterBase.parsing)
            self.relay.expect += 1
            self.relay.unsynced = False
            if self.relay.copy_window:
                self.relay.copy_syncs += 1
            pre = None if self.snap is None else self.snapshot_parse(self.snap) + m.SYNC
            self.snap = None
            rq.append(SYNC_AFTER_DATA if self.relay.copy_window >= 1000 else (ps.SYNC, None))
            return pre
        if t == 80:  # Parse: name, query, types
            return self._ps_parse(body, rq)
        if t == 68:  # Describe
            return self._ps_describe(body, rq)
        if t == 67:  # Close
            return self._ps_close(body, rq)
        return None

    def _leaves(self, st: ps.Statement, bind: bytes) -> bool:
        """A Bind (body `bind`) of a statement whose text may leave state (leaks.py), names custom settings
        (Statement.settings) or LISTENs (Statement.listen). False, nothing done: a prepared DEALLOCATE
        (RewriterBase.dealloc_bind)."""
        if st.dealloc is not None:
            return False
        self.relay.leaves |= st.leaves
        if st.settings:
            self._bound_settings(st, bind)
        if st.leaves & leaks.RESETS:
            self.relay.note_resets(st)  # (where it runs: not at its Parse, which may be all there is)
        if st.listen is not None or self.relay.lsn is not None:
            self.relay.listen_bound(st)
        return True

    def _bound_settings(self, st: ps.Statement, bind: bytes) -> None:
        settings = st.settings
        values: tuple[memoryview | None, ...] = ()
        if any(isinstance(x, int) for x in settings):  # set_config($n, ...): the name is a parameter
            try:
                values = frontend.parse_bind(bind)[3]
            except frontend.InvalidMessage:
                pass  # PostgreSQL refuses the Bind: nothing runs
        self.relay.note_names(sqllex.bound_names(settings, values))

    def _ps_bind(self, body: memoryview, rq: deque[tuple[int, Any]]) -> bytes | None:
        """Bind: portal, statement, parameters: the statement renamed to the pool's."""
        self.snap = None  # (it, or its Execute, takes the snapshot PostgreSQL takes)
        self.relay.unsynced = True
        self.relay._mark_query()
        b = bytes(body)
        try:
            j, k, _ = frontend.check_bind(body)
        except frontend.InvalidMessage:
            # PostgreSQL looks the statement up before it reads the parameters: name ours, so that it
            # refuses the rest of the body in its own words (or says the statement does not exist).
            j = b.find(b"\x00")
            k = b.find(b"\x00", j + 1) if j >= 0 else -1
            st = self.lookup(b[j + 1 : k]) if k >= 0 else None
            pre = self._ensure(st) if st is not None else b""  # an injected Parse is answered first
            self._malformed(rq)
            return None if st is None else pre + renamed_bind(b, j, k, st.name)
        st = self.lookup(b[j + 1 : k])
        if st is None:
            rq.append((ps.BIND, None))
            return None  # PostgreSQL answers 26000 itself: the client's name does not exist there
        if st.leaves:
            if not self._leaves(st, b) and (here := self.dealloc_bind(st, b[:j], rq)) is not None:
                return here
        elif self.relay.lsn is not None:
            self.relay.listen_bound(st)  # (a ROLLBACK voids the transaction's LISTEN/UNLISTEN)
        pre = self._ensure(st)
        rq.append((ps.BIND, (st, b[j + 1 : k])))
        return pre + renamed_bind(b, j, k, st.name)

    def _ps_parse(self, body: memoryview, rq: deque[tuple[int, Any]]) -> bytes | None:
        """Parse: name, query, types: answered here when this server holds the statement already."""
        self.relay.unsynced = True
        self.relay._mark_query()
        memo = self.last_parse
        if memo is not None and not memo[2].dead and body == memo[0]:
            name, st = memo[1], memo[2]  # the same Parse as last time (pgbench, ORMs): no lookup
            cache = self.cache
            assert cache is not None
            cache.count_hit(st)
        else:
            try:
                j, k, _ = frontend.check_parse(body)
            except frontend.InvalidMessage:
                return self._malformed(rq)
            b = bytes(body)
            name = b[:j]
            cache = self.cache
            assert cache is not None
            text = b[j + 1 : k]
            if (refused := self.relay.refuse_pinning(text, parse=True)) is not None:
                text = refused.encode()
            found = None if name else self.find_anon(text, b[k + 1 :])
            if found is None:
                st = cache.get(text, b[k + 1 :], self.sig)
            else:
                st = found
                cache.count_hit(st)
            self.last_parse = (b, name, st)
        if name and (held := self.named.get(name)) is not None:
            return self._dup_parse(held, name, body, rq)
        prev = self.lookup(name)
        self.define(name, st)
        defs = self.defs
        if defs is None:
            defs = self.defs = {}
        defs[name] = self.win
        s = self.relay.server
        assert s is not None
        revive(s, st)
        if st.name in s.prepared:
            # (Not answered here when the transaction may have failed: the last ReadyForQuery said so, or a
            # request is still in flight. PostgreSQL refuses a Parse there, 25P02, creating nothing.)
            if (self.parsing is None or not self._unsure(st)) and not (
                    (self.relay.expect or self.relay.last_status == 69) and sqllex.refused_when_aborted(st.query)):
                s.prepared.move_to_end(st.name)
                s.ps_hits += 1
                rq.append((ps.SYNTH, (m.PARSE_COMPLETE, (name, prev, st))))
                if self.relay.last_status != 73 or self.relay.expect:  # (a transaction block may be open)
                    self.snap = st
                return b""
        elif st.name not in s.unsure:
            s.ps_misses += 1
            s.remember(st.name)
            self._parsing(st)
            rq.append((ps.PARSE, (st, name, prev)))
            return st.parse_msg
        s.ps_misses += 1
        return self._reparse(s, st, (ps.PARSE, (st, name, prev)), True)

    def _dup_parse(self, held: ps.Statement, name: bytes, body: memoryview, rq: deque[tuple[int, Any]]) -> bytes:
        """PostgreSQL refuses a second Parse of a name (42P05; 42601 first for bad syntax, 25P02 in a failed
        transaction) and skips to Sync: have it do exactly that, with a Parse of the text under the statement's
        own server name (the error names the client's)."""
        pre = self._ensure(held)
        rq.append((ps.DUP, (held, name)))
        raw = bytes(body)
        return pre + m.msg(b"P", held.name + raw[raw.find(b"\x00") :])

    def _ps_describe(self, body: memoryview, rq: deque[tuple[int, Any]]) -> bytes | None:
        """Describe of a portal or a statement (renamed to the pool's)."""
        self.relay.unsynced = True
        try:
            frontend.parse_describe(body)
        except frontend.InvalidMessage:
            return self._malformed(rq)
        if body[0] == 80:  # portal
            if (dp := self.dealloc_portal) is not None and dp[0] == body[1:-1]:
                rq.append((ps.SYNTH, m.NO_DATA))  # (a prepared DEALLOCATE answered here: dealloc_bind)
                return b""
            rq.append((ps.DESC_P, None))
            return None
        b = bytes(body)
        st = self.lookup(b[1:-1])
        if st is None:
            rq.append((ps.DESC_S, None))
            return None
        pre = self._ensure(st)
        if not pre and rq:
            last = rq[-1]
            if last[0] == ps.SYNTH and isinstance(last[1], tuple) and last[1][1][0] == b[1:-1]:
                # Parse then Describe of the same statement (a driver preparing it): the Parse was answered
                # here, but PostgreSQL would have parsed it afresh, and DDL since (maybe through another
                # connection) may have changed its parameter or result types. Parse it again on this
                # server, so Describe says what the schema says now.
                pre = self._reparse(self.relay.server, st, (ps.INJECT, st))
        rq.append((ps.DESC_S, (st, b[1:-1])))
        nb = b"S" + st.name + b"\x00"
        return pre + b"D" + m.U32.pack(len(nb) + 4) + nb

    def _ps_close(self, body: memoryview, rq: deque[tuple[int, Any]]) -> bytes | None:
        """Close: the client's name is forgotten; the server's statement stays (others share it)."""
        self.relay.unsynced = True
        try:
            frontend.parse_close(body)
        except frontend.InvalidMessage:
            return self._malformed(rq)
        if body[0] == 80:
            rq.append((ps.CLOSE, None))
            return None
        name = bytes(body[1:-1])
        prev = self.lookup(name)
        if name:
            self.named.pop(name, None)
        else:
            self.unnamed = None
        defs = self.defs
        if defs is None:
            defs = self.defs = {}
        defs[name] = self.win
        # The server's copy stays (other clients share it); PostgreSQL answers CloseComplete even
        # for a name that does not exist, so do we.
        rq.append((ps.SYNTH, (m.CLOSE_COMPLETE, (name, prev, None))))
        return b""

    def _sql_execute(self, body: memoryview) -> bytes | None:
        """`EXECUTE name ...` of a statement this client prepared through the protocol: PostgreSQL finds it
        under its own name, which is the pool's on the server (parsed there first if it is not yet)."""
        text = bytes(body[:-1])
        mt = _EXECUTE.match(text)
        if mt is None:
            return None
        raw = mt.group(2)
        name = raw[1:-1].replace(b'""', b'"') if raw[:1] == b'"' else raw.lower()
        st = self.lookup(name)
        if st is None:
            return None  # a statement of SQL PREPARE, or none: PostgreSQL answers
        s = self.relay.server
        if s is not None and s.txn_status == 69 and not self.relay.expect and not self.rq:
            pre = b""  # a failed transaction: 25P02 whether the server holds it or not (a Parse would fail first,
            # and PostgreSQL would then skip this Query until a Sync that never comes)
        else:
            pre = self._ensure(st)
            if pre and not self.relay.unsynced:
                # Should that Parse fail (a table it reads dropped since), PostgreSQL skips to a Sync, this Query
                # too: our Sync ends the skip, and the Parse's error answers the Query (rewrite_replies: INJ_SYNC).
                pre += m.SYNC
                self.win += 1
                self.rq.append((ps.INJ_SYNC, None))
        self.on_header(81, 0)
        return pre + m.msg(b"Q", text[: mt.end(1)] + b'"' + st.name + b'"' + text[mt.end(2) :] + b"\x00")

    def on_header(self, t: int, ln: int) -> None:
        # Simple queries and function calls end at ReadyForQuery: while nothing else is in flight they
        # need no entry (the server relays with the plain handler); `_track` adds placeholders for them
        # when an extended-protocol entry joins.
        if t == 81:
            self.unnamed = None  # (PostgreSQL drops the unnamed statement when a simple query starts)
            self.relay._mark_query()
            self.relay.copy_window = 81
            self.relay.copy_syncs = 0
        if t == 81 or t == 70:
            self.relay.expect += 1
            if self.rq:
                self.rq.append((ps.QUERY if t == 81 else ps.FUNC, None))
        elif t == 100:  # CopyData
            relay = self.relay
            if 0 < relay.copy_window < 1000:
                relay.copy_window += 1000
                relay.copy_pre = relay.copy_syncs
        elif t == 99 or t == 102:  # CopyDone, CopyFail
            relay = self.relay
            if not relay.in_copy_in and (relay.expect > 0 or self.rq):
                # Behind an unanswered request (before PostgreSQL said whether it starts a COPY): its place
                # among the requests is queued (copy_started).
                (self.rq or self._track()).append(COPY_END)
            relay.copy_window = 0
            relay.in_copy_in = False

    def _track(self) -> deque[tuple[int, Any]]:
        """The response queue, switched on: the server relay walks it from now on."""
        rq = self.rq
        if not rq:
            if rq is NO_REQUESTS:
                rq = self._queue()  # the first time: a queue of its own
            if self.parsing is not None or self.defs is not None:  # nothing in flight: no Parse either
                self.parsing = self.defs = None
                self.win = self.done = 0
            left = self.relay.expect
            if self.fast_bind is not None:
                # A fast batch is the oldest request in flight: queue it as one entry through its
                # ReadyForQuery (errors still rewritten as for its Bind), its ParseComplete first if unsent,
                # then an error held for a redo (no redo once other requests follow).
                if self.synth_head is not None:
                    rq.append((ps.SYNTH, self.synth_head))
                    self.synth_head = None
                if self.held_error is not None:
                    rq.append((ps.SYNTH, self.held_error))
                    self.held_error = None
                rq.append((ps.QUERY, self.fast_bind))
                self.fast_bind = None
                self.fast_redo = None
                left -= 1
            for _ in range(max(0, left)):
                rq.append((ps.QUERY, None))
            s = self.relay.server
            if s is not None:
                s.set_ps_mode(True)
        return rq

    # ------------------------------------------------------------------ shortcuts
    def parse_sync_locally(self, view: memoryview) -> bytes | None:
        """The answer to `Parse... Sync` when every statement is already in the pool cache and no transaction
        is open (what PQprepare sends), or None. A client preparing while others hold every server in open
        transactions (pgbench -M prepared, JDBC) would otherwise wait for one, and may deadlock with its own
        application."""
        if self.relay.last_status != 73:
            return None
        n = len(view)
        if view[n - 5 : n] != m.SYNC:
            return None
        pos = 0
        unpack = _unpack
        while pos < n - 5:  # headers only, no copy: most batches (Parse, Bind, ..., Sync) fail here
            if view[pos] != 80:
                return None
            pos += 1 + unpack(view, pos + 1)[0]
        if pos != n - 5:
            return None
        cache = self.cache
        assert cache is not None
        data = bytes(view)
        pos = 0
        found: list[tuple[bytes, ps.Statement]] = []
        sig = self.sig
        while pos + 5 <= n and data[pos] == 80:
            (ln,) = unpack(data, pos + 1)
            end = pos + 1 + ln
            if ln < 4 or end > n:
                return None
            j = data.find(b"\x00", pos + 5, end)
            k = data.find(b"\x00", j + 1, end) if j >= 0 else -1
            if k < 0:
                return None
            name = data[pos + 5 : j]
            if name and (name in self.named or any(name == f[0] for f in found)):
                return None  # a second Parse of a name: PostgreSQL's 42P05 comes from the general path
            st = cache.peek(data[j + 1 : k], data[k + 1 : end], sig)
            if st is None:
                return None
            found.append((name, st))
            pos = end
        if not found or data[pos:] != m.SYNC:
            return None
        for name, st in found:
            cache.count_hit(st)
            self.define(name, st)
        return m.PARSE_COMPLETE * len(found) + m.RFQ_IDLE

    def _fast_parse(self, view: memoryview, n: int, s: Held) -> tuple[int, ps.Statement, bytes, bytes | None] | None:
        """The batch's leading Parse, if it is of a statement the pool has and `s` holds (the one this client
        sent last time needs no lookup): (end of the Parse, the statement, the client's name, the Parse body
        to remember or None when it is the remembered one). None: the general path must take the batch."""
        pos = 1 + _unpack(view, 1)[0]
        if pos + 5 > n or self.relay.last_status == 69:
            return None  # (a failed transaction: PostgreSQL refuses the Parse, _ps_parse)
        memo = self.last_parse
        memo_body: bytes | None = None
        if memo is not None and not memo[2].dead and view[5:pos] == memo[0]:
            parsed, pname = memo[2], memo[1]
        else:
            memo_body = bytes(view[5:pos])
            j = memo_body.find(b"\x00")
            k = memo_body.find(b"\x00", j + 1) if j >= 0 else -1
            if k < 0 or LISTEN_START.match(memo_body[j + 1 : k]):
                return None
            found = None if j else self.find_anon(memo_body[1:k], memo_body[k + 1 :])
            if found is None:
                cache = self.cache
                assert cache is not None
                found = cache.peek(memo_body[j + 1 : k], memo_body[k + 1 :], self.sig)
            if found is None or found.dead:
                return None
            parsed, pname = found, memo_body[:j]
        if parsed.name not in s.prepared or (pname and pname in self.named):
            return None  # to be parsed on this server, or a second Parse of a name (42P05): general path
        return pos, parsed, pname, memo_body

    def fast_batch(self, view: memoryview, n: int, s: Held) -> bytes | None:
        """The batch drivers send for one statement, `[Parse] Bind [Describe portal] Execute Sync`, whole in
        `view`, with nothing else in flight and the statement already on `s` (pgbench -M extended and -M
        prepared, psycopg, asyncpg, JDBC): the batch to send, its Bind renamed, its Parse answered here by a
        ParseComplete put in front of the server's reply (`synth_head`); the server relays in plain mode,
        without the per-message queue. None (nothing changed) for anything else: the general path takes it."""
        if n < 20 or view[n - 5 : n] != m.SYNC:
            return None
        pos = 0
        t = view[0]
        parsed: ps.Statement | None = None
        pname = b""
        memo_body: bytes | None = None
        if t == 80:
            found = self._fast_parse(view, n, s)
            if found is None:
                return None
            pos, parsed, pname, memo_body = found
            t = view[pos]
        if t != 66:
            return None
        bend = frontend.bind_batch_end(view, pos, n)  # (the Bind starts at pos)
        if not bend:
            return None
        b = bytes(view[pos + 5 : bend])
        j = b.find(b"\x00")
        k = b.find(b"\x00", j + 1) if j >= 0 else -1
        if k < 0 or bend - pos < 9:
            return None
        sname = b[j + 1 : k]
        prepared = s.prepared
        if parsed is not None and sname == pname:
            st: ps.Statement | None = parsed
        else:
            st = self.named.get(sname) if sname else self.unnamed  # (lookup(), inline)
            if st is None or st.name not in prepared:
                return None
        assert st is not None
        if st.leaves and not self._leaves(st, b):
            return None  # (a prepared DEALLOCATE: the general path, _ps_bind)
        # Committed: the same effects as the general path, message by message.
        if parsed is not None:
            cache = self.cache
            assert cache is not None
            cache.count_hit(parsed)
            if memo_body is not None:
                self.last_parse = (memo_body, pname, parsed)
            if pname or parsed is not self.unnamed:  # (else define() would change nothing: a call saved)
                self.define(pname, parsed)
            prepared.move_to_end(parsed.name)
            s.ps_hits += 1
            self.synth_head = m.PARSE_COMPLETE
        prepared.move_to_end(st.name)
        self.fast_bind = (st, sname)
        nb = b[: j + 1] + st.name + b[k:]  # renamed_bind(b, j, k, st.name) + the rest, inline
        out = b"B" + _pack(len(nb) + 4) + nb + view[bend:n]
        if st is parsed:
            # PostgreSQL would have planned this Parse afresh: a plan gone stale must not show (see fast_redo).
            self.fast_redo = (b, j, k, out)
        return out

    def redo_fast_batch(self, status: int, s: Held) -> tuple[bytes | None, bytes | None]:
        """ReadyForQuery `status` from `s` after a fast batch whose Bind failed with a stale cached plan (the
        error is held): outside a transaction block, (the batch again with a fresh Parse, None): the error and
        this ReadyForQuery are dropped, the client sees the answer to its Parse as PostgreSQL would give it.
        Otherwise (None, the held error), to be relayed in front of this ReadyForQuery."""
        held = self.held_error
        redo = self.fast_redo
        fb = self.fast_bind
        self.held_error = None
        self.fast_redo = None
        if status == 73 and redo is not None and fb is not None:
            sname = fb[1]
            fresh = self.lookup(sname)  # error_rewrite put a fresh one there
            if fresh is not None and not fresh.dead and fresh is not fb[0]:
                self.fast_bind = None
                b, j, k, sent = redo
                rest = sent[5 + len(b) - (k - j - 1) + len(fb[0].name) :]  # what followed the Bind we sent
                s.remember(fresh.name)
                rq = self._queue()
                rq.append((ps.INJECT, fresh))
                rq.append((ps.QUERY, (fresh, sname)))
                s.set_ps_mode(True)
                return fresh.parse_msg + renamed_bind(b, j, k, fresh.name) + rest, None
        return None, held

    def copy_started(self) -> None:
        """PostgreSQL answered CopyInResponse: until the client's CopyDone or CopyFail it ignores Sync and Flush
        (the Syncs the client sent after the message that started this COPY and before its CopyDone/CopyFail get
        no ReadyForQuery), and answers anything else with 08P01 and the end of the session. Which Syncs those
        are is exact (both relays): if the client sent nothing but CopyData, Sync and Flush behind that message,
        the counters say it; if it also sent its CopyDone/CopyFail (maybe more requests after it), that is
        queued (COPY_END). A Sync after CopyData is noted (copy_risk): should the COPY fail, PostgreSQL may
        have read it after the failure and answer it (ClientBase.on_server_error). A fast batch's Bind
        succeeded."""
        relay = self.relay
        self.fast_bind = None
        self.fast_redo = None
        k = relay.copy_syncs
        relay.copy_syncs = 0
        rq = self.rq
        if not rq:
            relay.expect -= k
            relay.in_copy_in = True
            if k > (relay.copy_pre if relay.copy_window >= 1000 else k):
                relay.copy_risk = True
            if relay.copy_window % 1000 == 69:
                # An Execute's COPY whose Sync was one of those: nothing is counted as due any more, yet the
                # server is busy until its CommandComplete (or error): queued, so it is not given back before.
                if rq is NO_REQUESTS:
                    rq = self.rq = deque()
                rq.append((ps.EXEC, None))
                s: Held | None = relay.server
                if s is not None:
                    s.set_ps_mode(True)
            return
        head = rq.popleft()  # the entry this COPY answers (its Query, or its Execute)
        removed = 0
        if head[0] == ps.QUERY and head[1] is not None:  # a fast batch queued whole: its Sync is one of them
            head = (ps.EXEC, None)
            removed = 1
        keep = [head]
        ended = False
        while rq:
            e = rq[0]
            if e is COPY_END:
                rq.popleft()
                ended = True
                break
            if e[0] != ps.SYNC:
                # Another message: PostgreSQL ends the session when it reads it during the COPY, or the COPY
                # failed on its data before and it is answered as usual, with what follows it.
                break
            rq.popleft()
            removed += 1
            if e[1] is not None:
                relay.copy_risk = True
        rq.extendleft(reversed(keep))
        relay.expect -= removed
        relay.in_copy_in = not ended
        if ended and removed and self.holding and (server := relay.server) is not None:
            # Messages wait (_waits) for the answers before them, which PostgreSQL flushes at a Sync: the ones it
            # ignored do not, so a Flush (after the CopyDone, already sent) gets them (rewrite_replies._resume).
            server.write(m.FLUSH)
