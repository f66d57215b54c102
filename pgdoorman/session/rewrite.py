"""Transparent prepared statements in transaction mode, client side: each extended-protocol message is
read, statement names are mapped to the pool's shared DOORMAN_n statements, and the expected responses are
queued so the server's answers can be rewritten back (see core/prepared.py and ServerConn._on_message_ps).

`PreparedRelay` is a part of `ClientConn` kept in its own file .
"""

from __future__ import annotations

import logging
import re
from collections import deque
from typing import Any

from pgdoorman.core import prepared as ps
from pgdoorman.protocol import frontend
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.framing import Scanner
from pgdoorman.session.client_base import ClientBase
from pgdoorman.session.states import CLIENT_PS_TABLE, LISTEN_REFUSAL, LISTEN_START, refuse_listen

log = logging.getLogger("pgdoorman.client")

_DEALLOCATE = re.compile(rb"^\s*deallocate\s+(?:prepare\s+)?(\"(?:[^\"]|\"\")+\"|[A-Za-z_][A-Za-z0-9_$]*)\s*;?\s*$", re.I)
_unpack = m.U32.unpack_from


def renamed_bind(b: bytes, j: int, k: int, name: bytes) -> bytes:
    """The Bind message with body `b`, whose statement name lies between the NULs at j and k, naming `name`."""
    return m.msg(b"B", b[: j + 1] + name + b[k:])


class PreparedRelay(ClientBase):
    __slots__ = ()

    def use_ps_scanner(self) -> None:
        """Prepared-statement mode from now on: every extended-protocol message is read, responses queued."""
        self.scanner = Scanner(CLIENT_PS_TABLE, on_header=self._on_header_ps, on_message=self._on_message_ps)
        self.rq = deque()

    # ------------------------------------------------------------------ prepared-statement mode
    def _after_ps_scan(self, out: Any, n: int) -> None:
        s = self.server
        assert s is not None
        if out:
            s.bytes_out += n
            s.pstats.bytes_in += n
            s.write(out)
        rq = self.rq
        if rq and rq[0][0] == ps.SYNTH:
            for e in rq:
                if e[0] != ps.SYNTH:
                    break  # a server response follows: the synthetic ones ride with it (one send, not two)
            else:
                self.flush_synth()
        if self.terminating:
            self.close("client terminated")
        elif self._server_done(s):
            # Everything was answered locally (e.g. a DEALLOCATE), or a message that no answer was waiting
            # for was completed: the server is free again.
            self.worker.release_server(s)

    def redo_fast_batch(self, status: int) -> bytes | None:
        """ReadyForQuery after a fast batch whose Bind failed with a stale cached plan (the error is held):
        outside a transaction block, send the batch again with a fresh Parse and return None (the error and
        this ReadyForQuery are dropped: the client sees the answer to its Parse as PostgreSQL would give
        it). Otherwise return the held error, to be relayed in front of this ReadyForQuery."""
        held = self.held_error
        redo = self.fast_redo
        fb = self.fast_bind
        self.held_error = None
        self.fast_redo = None
        s = self.server
        if status == 73 and redo is not None and fb is not None and s is not None:
            sname = fb[1]
            fresh = self._lookup(sname)  # _ps_error put a fresh one there
            if fresh is not None and not fresh.dead and fresh is not fb[0]:
                self.fast_bind = None
                b, j, k, sent = redo
                rest = sent[5 + len(b) - (k - j - 1) + len(fb[0].name) :]  # what followed the Bind we sent
                s.remember(fresh.name)
                self.rq.append((ps.INJECT, fresh))
                self.rq.append((ps.QUERY, (fresh, sname)))
                s.set_ps_mode(True)
                s.write(fresh.parse_msg + renamed_bind(b, j, k, fresh.name) + rest)
                return None
        return held

    def _parse_sync_locally(self, view: memoryview) -> bool:
        """Answer `Parse... Sync` without a server when every statement is already in the pool cache and
        no transaction is open: what PQprepare sends. A client preparing while others hold every server in
        open transactions (pgbench -M prepared, JDBC) would otherwise wait for one, and may deadlock with
        its own application."""
        if self.last_status != 73:
            return False
        n = len(view)
        if view[n - 5 : n] != m.SYNC:
            return False
        pos = 0
        unpack = m.U32.unpack_from
        while pos < n - 5:  # headers only, no copy: most batches (Parse, Bind, ..., Sync) fail here
            if view[pos] != 80:
                return False
            pos += 1 + unpack(view, pos + 1)[0]
        if pos != n - 5:
            return False
        pool = self.pool
        assert pool is not None
        data = bytes(view)
        pos = 0
        found: list[tuple[bytes, ps.Statement]] = []
        cache = pool.ps_cache
        sig = self.planner_sig
        while pos + 5 <= n and data[pos] == 80:
            (ln,) = m.U32.unpack_from(data, pos + 1)
            end = pos + 1 + ln
            if ln < 4 or end > n:
                return False
            j = data.find(b"\x00", pos + 5, end)
            k = data.find(b"\x00", j + 1, end) if j >= 0 else -1
            if k < 0:
                return False
            name = data[pos + 5 : j]
            if name and (name in self.named or any(name == f[0] for f in found)):
                return False  # a second Parse of a name: PostgreSQL's 42P05 comes from the general path
            st = cache.peek(data[j + 1 : k], data[k + 1 : end], sig)
            if st is None:
                return False
            found.append((name, st))
            pos = end
        if not found or data[pos:] != m.SYNC:
            return False
        for name, st in found:
            cache.count_hit(st)
            self._define(name, st)
        self.write(m.PARSE_COMPLETE * len(found) + m.RFQ_IDLE)
        return True

    def flush_synth(self) -> None:
        out = ps.take_synth(self.rq)
        if out is not None:
            self.write(out)

    def _lookup(self, name: bytes) -> ps.Statement | None:
        return self.named.get(name) if name else self.unnamed

    def _define(self, name: bytes, st: ps.Statement | None) -> None:
        """The client's Parse of `name` (b"" = the unnamed statement) now means `st` (None: nothing)."""
        if name:
            if st is None:
                self.named.pop(name, None)
            else:
                self.named[name] = st
        else:
            self.unnamed = st

    def skipped(self, kind: int, data: Any) -> None:
        """PostgreSQL skipped the message of this queue entry (an earlier error in the same batch): undo what
        sending it did here. Returns nothing; the server connection undoes its own part."""
        if kind == ps.PARSE:
            self._define(data[1], data[2])
        elif kind == ps.SYNTH and isinstance(data, tuple):
            name, prev = data[1]
            self._define(name, prev)
        elif kind == ps.QUERY or kind == ps.FUNC:
            self.expect -= 1  # no ReadyForQuery will answer it

    def _ensure(self, st: ps.Statement) -> bytes:
        """Make sure the linked server holds `st`: b'' if it does, else the Parse to inject before."""
        s = self.server
        assert s is not None
        prepared = s.prepared
        if st.name in prepared:
            prepared.move_to_end(st.name)
            return b""
        s.remember(st.name)
        self._track().append((ps.INJECT, st))
        return st.parse_msg

    def _malformed(self, rq: deque[tuple[int, Any]]) -> bytes | None:
        """A message body PostgreSQL will refuse (08P01, "invalid message format" and the like): sent on
        untouched, so PostgreSQL answers it in its own words and skips to Sync, as it would directly."""
        self.unsynced = True
        rq.append((ps.MALFORMED, None))
        return None

    def _on_message_ps(self, t: int, body: memoryview) -> bytes | None:
        if t == 81:  # small simple query
            if len(body) < 2:  # empty, or no text before the NUL: PostgreSQL's answer, untouched
                self._on_header_ps(t, 0)
                return None
            if body[0] | 32 == 100 or body[0] in b" \t\r\n":  # starts with d/D or blank: maybe DEALLOCATE
                mt = _DEALLOCATE.match(bytes(body[:-1]))
                if mt is not None:
                    return self._deallocate(mt.group(1))
            self._on_header_ps(t, 0)
            return refuse_listen(body)
        if t == 72:  # Flush
            return None
        if t == 88:  # Terminate
            self.terminating = True
            return b""
        if t == 83 and self.in_copy_in:
            return None  # PostgreSQL ignores Sync during COPY IN: no ReadyForQuery will answer it
        rq = self._track()
        if t == 66:  # Bind: portal, statement, ...
            return self._ps_bind(body, rq)
        if t == 69:  # Execute
            self.unsynced = True
            self.copy_window = True  # it may start a COPY FROM STDIN
            self.copy_syncs = 0
            rq.append((ps.EXEC, None))
            return None
        if t == 83:  # Sync
            self.expect += 1
            self.unsynced = False
            if self.copy_window:
                self.copy_syncs += 1
            rq.append((ps.SYNC, None))
            return None
        if t == 80:  # Parse: name, query, types
            return self._ps_parse(body, rq)
        if t == 68:  # Describe
            return self._ps_describe(body, rq)
        if t == 67:  # Close
            return self._ps_close(body, rq)
        return None

    def _ps_bind(self, body: memoryview, rq: deque[tuple[int, Any]]) -> bytes | None:
        """Bind: portal, statement, parameters: the statement renamed to the pool's."""
        self.unsynced = True
        self._mark_query()
        b = bytes(body)
        try:
            j, k, _ = frontend.check_bind(body)
        except frontend.InvalidMessage:
            # PostgreSQL looks the statement up before it reads the parameters: name ours, so that it
            # refuses the rest of the body in its own words (or says the statement does not exist).
            j = b.find(b"\x00")
            k = b.find(b"\x00", j + 1) if j >= 0 else -1
            st = self._lookup(b[j + 1 : k]) if k >= 0 else None
            pre = self._ensure(st) if st is not None else b""  # an injected Parse is answered first
            self._malformed(rq)
            return None if st is None else pre + renamed_bind(b, j, k, st.name)
        st = self._lookup(b[j + 1 : k])
        if st is None:
            rq.append((ps.BIND, None))
            return None  # PostgreSQL answers 26000 itself: the client's name does not exist there
        if st.leaves:
            self.leaves |= st.leaves
        pre = self._ensure(st)
        rq.append((ps.BIND, (st, b[j + 1 : k])))
        return pre + renamed_bind(b, j, k, st.name)

    def _ps_parse(self, body: memoryview, rq: deque[tuple[int, Any]]) -> bytes | None:
        """Parse: name, query, types: answered here when this server holds the statement already."""
        self.unsynced = True
        self._mark_query()
        memo = self.last_parse
        if memo is not None and not memo[2].dead and body == memo[0]:
            name, st = memo[1], memo[2]  # the same Parse as last time (pgbench, ORMs): no lookup
            pool = self.pool
            assert pool is not None
            pool.ps_cache.count_hit(st)
        else:
            try:
                j, k, _ = frontend.check_parse(body)
            except frontend.InvalidMessage:
                return self._malformed(rq)
            b = bytes(body)
            name = b[:j]
            pool = self.pool
            assert pool is not None
            text = b[j + 1 : k]
            if LISTEN_START.match(text):
                text = LISTEN_REFUSAL
            st = pool.ps_cache.get(text, b[k + 1 :], self.planner_sig)
            self.last_parse = (b, name, st)
        if name:
            held = self.named.get(name)
            if held is not None:
                # PostgreSQL refuses a second Parse of a name (42P05) and skips to Sync: have it do exactly
                # that, with a Parse of the statement's own server name (the error names the client's).
                pre = self._ensure(held)
                rq.append((ps.DUP, (held, name)))
                return pre + m.msg(b"P", held.name + b"\x00\x00\x00\x00")
        prev = self._lookup(name)
        self._define(name, st)
        s = self.server
        assert s is not None
        if st.name in s.prepared:
            s.prepared.move_to_end(st.name)
            s.ps_hits += 1
            rq.append((ps.SYNTH, (m.PARSE_COMPLETE, (name, prev))))
            return b""
        s.ps_misses += 1
        s.remember(st.name)
        rq.append((ps.PARSE, (st, name, prev)))
        return st.parse_msg

    def _ps_describe(self, body: memoryview, rq: deque[tuple[int, Any]]) -> bytes | None:
        """Describe of a portal or a statement (renamed to the pool's)."""
        self.unsynced = True
        try:
            frontend.parse_describe(body)
        except frontend.InvalidMessage:
            return self._malformed(rq)
        if body[0] == 80:  # portal
            rq.append((ps.DESC_P, None))
            return None
        b = bytes(body)
        st = self._lookup(b[1:-1])
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
                rq.append((ps.UNPARSE, None))
                rq.append((ps.INJECT, st))
                pre = m.msg(b"C", b"S" + st.name + b"\x00") + st.parse_msg
        rq.append((ps.DESC_S, (st, b[1:-1])))
        nb = b"S" + st.name + b"\x00"
        return pre + b"D" + m.U32.pack(len(nb) + 4) + nb

    def _ps_close(self, body: memoryview, rq: deque[tuple[int, Any]]) -> bytes | None:
        """Close: the client's name is forgotten; the server's statement stays (others share it)."""
        self.unsynced = True
        try:
            frontend.parse_close(body)
        except frontend.InvalidMessage:
            return self._malformed(rq)
        if body[0] == 80:
            rq.append((ps.CLOSE, None))
            return None
        name = bytes(body[1:-1])
        prev = self._lookup(name)
        if name:
            self.named.pop(name, None)
        else:
            self.unnamed = None
        # The server's copy stays (other clients share it); PostgreSQL answers CloseComplete even
        # for a name that does not exist, so do we.
        rq.append((ps.SYNTH, (m.CLOSE_COMPLETE, (name, prev))))
        return b""

    def _on_header_ps(self, t: int, ln: int) -> None:
        # Simple queries and function calls end at ReadyForQuery: while nothing else is in flight they
        # need no entry (the server relays with the plain handler); `_track` adds placeholders for them
        # when an extended-protocol entry joins.
        if t == 81:
            self._mark_query()
            self.copy_window = True
            self.copy_syncs = 0
        if t == 81 or t == 70:
            self.expect += 1
            if self.rq:
                self.rq.append((ps.QUERY if t == 81 else ps.FUNC, None))
        elif t == 99 or t == 102:  # CopyDone, CopyFail
            self.copy_window = False
            self.in_copy_in = False

    def _track(self) -> deque[tuple[int, Any]]:
        """The response queue, switched on: the server relay walks it from now on."""
        rq = self.rq
        if not rq:
            left = self.expect
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
            s = self.server
            if s is not None:
                s.set_ps_mode(True)
        return rq

    def _deallocate(self, ident: bytes) -> bytes | None:
        """DEALLOCATE of a protocol-level statement is answered here: the server copy is shared."""
        if ident.lower() == b"all":
            self.named.clear()
            self.unnamed = None
            tag = "DEALLOCATE ALL"
        else:
            name = ident[1:-1].replace(b'""', b'"') if ident[:1] == b'"' else ident.lower()
            if name not in self.named:
                if ident[:1] != b'"' and ident in self.named:
                    name = ident
                else:
                    self._on_header_ps(81, 0)
                    return None  # let PostgreSQL say 26000 in its own words
            del self.named[name]
            tag = "DEALLOCATE"
        s = self.server
        status = s.txn_status if s is not None else 73
        self._track().append((ps.SYNTH, m.command_complete(tag) + m.ready_for_query(bytes([status]))))
        return b""

    def statement_failed(self, name: bytes, st: ps.Statement) -> None:
        """PostgreSQL refused the Parse of `st` under the client's `name`: the name means nothing now, as on
        PostgreSQL, where a failed Parse creates nothing."""
        if name:
            if self.named.get(name) is st:
                del self.named[name]
        elif self.unnamed is st:
            self.unnamed = None

    def statement_replaced(self, st: ps.Statement, fresh: ps.Statement) -> None:
        """`st` went stale on the server (DDL changed its result type): the client's names for it now mean
        `fresh`, the same text prepared again under a new server name."""
        for k, v in list(self.named.items()):
            if v is st:
                self.named[k] = fresh
        if self.unnamed is st:
            self.unnamed = fresh

    def write_after_synth(self, out: bytes | bytearray | memoryview) -> None:
        """The server's first bytes after a fast batch whose Parse was answered here: the synthetic
        ParseComplete goes in front of them."""
        head = self.synth_head
        self.synth_head = None
        self.write(head + out if head is not None else out)

    def forget_statements(self) -> None:
        """The server ran DISCARD ALL / DEALLOCATE ALL for us: PostgreSQL would have dropped them all."""
        self.named.clear()
        self.unnamed = None
