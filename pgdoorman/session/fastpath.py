"""The fast paths of transaction-mode prepared statements: a simple query, or a whole Parse/Bind/Describe/
Execute/Sync batch of cached statements, sent straight to the server without the general path's queue.

`FastPaths` is a part of `ClientConn` kept in its own file ; each path must produce exactly what the
general path in rewrite.py would (tests/unit/test_fast_batch.py and the differential suite check it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgdoorman.core import prepared as ps
from pgdoorman.core.leaks import may_leave_state
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.framing import SMALL_LIMIT
from pgdoorman.session.rewrite import PreparedRelay, renamed_bind
from pgdoorman.session.states import LISTEN_START

if TYPE_CHECKING:
    from pgdoorman.session.server import ServerConn


_unpack = m.U32.unpack_from
# First bytes of a simple query that the fast path leaves to the general one: DEALLOCATE and LISTEN are
# answered or refused by the pooler, and either may follow leading blanks.
_MAYBE_SPECIAL = frozenset(b"dDlL \t\r\n\x0b\x0c")


class FastPaths(PreparedRelay):
    __slots__ = ()

    def _fast_query(self, view: memoryview, n: int, s: ServerConn) -> bool:
        """One whole small simple Query with nothing queued: what the scanner and `_on_message_ps` would do,
        in one step. Anything else (a partial or pipelined message, a possible DEALLOCATE or LISTEN, a
        client already queueing extended-protocol responses) takes the general path."""
        if n < 6:
            return False  # not even a whole header and one byte: the scanner keeps it until the rest comes
        ln = _unpack(view, 1)[0]
        if ln + 1 != n or ln > SMALL_LIMIT or ln < 5 or self.rq or self.in_copy_in:
            return False
        sc = self.scanner
        if sc.carry is not None or sc.skip:
            return False
        b0 = view[5]
        if b0 in _MAYBE_SPECIAL:
            return False
        bits = may_leave_state(view[5:n])
        if bits:
            self.leaves |= bits
        self._mark_query()
        self.copy_window = True
        self.copy_syncs = 0
        self.expect += 1
        s.bytes_out += n
        s.pstats.bytes_in += n
        s.write(view)
        return True

    def _fast_parse(self, view: memoryview, n: int, s: ServerConn) -> tuple[int, ps.Statement, bytes, bytes | None] | None:
        """The batch's leading Parse, if it is of a statement the pool has and `s` holds (the one this client
        sent last time needs no lookup): (end of the Parse, the statement, the client's name, the Parse body
        to remember or None when it is the remembered one). None: the general path must take the batch."""
        pos = 1 + _unpack(view, 1)[0]
        if pos + 5 > n:
            return None
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
            pool = self.pool
            assert pool is not None
            found = pool.ps_cache.peek(memo_body[j + 1 : k], memo_body[k + 1 :], self.planner_sig)
            if found is None or found.dead:
                return None
            parsed, pname = found, memo_body[:j]
        if parsed.name not in s.prepared or (pname and pname in self.named):
            return None  # to be parsed on this server, or a second Parse of a name (42P05): general path
        return pos, parsed, pname, memo_body

    def _fast_parsed(self, s: ServerConn, parsed: ps.Statement, pname: bytes, memo_body: bytes | None) -> None:
        """The batch's Parse, answered here: what the general path does for a Parse the server holds."""
        pool = self.pool
        assert pool is not None
        pool.ps_cache.count_hit(parsed)
        if memo_body is not None:
            self.last_parse = (memo_body, pname, parsed)
        self._define(pname, parsed)
        s.prepared.move_to_end(parsed.name)
        s.ps_hits += 1
        self.synth_head = m.PARSE_COMPLETE

    def _fast_batch(self, view: memoryview, n: int, s: ServerConn) -> bool:
        """The batch drivers send for one statement, `[Parse] Bind [Describe portal] Execute Sync`, in one
        chunk with nothing else in flight and the statement already on the server (pgbench -M extended and
        -M prepared, psycopg, asyncpg, JDBC): rewrite the Bind, answer the Parse with a ParseComplete put in
        front of the server's reply, and let the server relay in plain mode, without the per-message
        expected-response queue. Anything else returns False (nothing changed) for the general path."""
        sc = self.scanner
        if n < 20 or sc.skip or sc.carry is not None or view[n - 5 : n] != m.SYNC:
            return False
        pos = 0
        t = view[0]
        parsed: ps.Statement | None = None
        pname = b""
        memo_body: bytes | None = None
        if t == 80:
            found = self._fast_parse(view, n, s)
            if found is None:
                return False
            pos, parsed, pname, memo_body = found
            t = view[pos]
        if t != 66:
            return False
        bstart = pos
        bend = _bind_end(view, pos, n)
        if not bend:
            return False
        b = bytes(view[bstart + 5 : bend])
        j = b.find(b"\x00")
        k = b.find(b"\x00", j + 1) if j >= 0 else -1
        if k < 0 or bend - bstart < 9:
            return False
        sname = b[j + 1 : k]
        if parsed is not None and sname == pname:
            st: ps.Statement | None = parsed
        else:
            st = self._lookup(sname)
            if st is None or st.name not in s.prepared:
                return False
        assert st is not None
        if st.leaves:
            self.leaves |= st.leaves
        # Committed: the same effects as the general path, message by message.
        prepared = s.prepared
        if parsed is not None:
            self._fast_parsed(s, parsed, pname, memo_body)
        prepared.move_to_end(st.name)
        self.fast_bind = (st, sname)
        out = renamed_bind(b, j, k, st.name) + view[bend:n]
        if st is parsed:
            # PostgreSQL would have planned this Parse afresh: a plan gone stale must not show (see fast_redo).
            self.fast_redo = (b, j, k, out)
        self._mark_query()
        self.expect += 1
        self.copy_window = True
        self.copy_syncs = 1
        s.bytes_out += n
        s.pstats.bytes_in += n
        s.write(out)
        return True


def _bind_end(view: memoryview, pos: int, n: int) -> int:
    """Where the Bind at `pos` ends, if the batch goes on as `Bind [Describe portal] Execute Sync` to its end
    `n`; 0 otherwise (a statement Describe needs the general path's queue)."""
    bend: int = pos + 1 + _unpack(view, pos + 1)[0]
    if bend + 5 > n:
        return 0
    pos = bend
    if view[pos] == 68:  # Describe
        if view[pos + 5] != 80:
            return 0
        pos += 1 + _unpack(view, pos + 1)[0]
        if pos + 5 > n:
            return 0
    if view[pos] != 69 or pos + 1 + _unpack(view, pos + 1)[0] != n - 5:
        return 0
    return bend
