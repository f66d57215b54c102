"""The client's side of transparent prepared statements (transaction mode): its messages handed to its
`Rewriter` (rewrite.py), what that returns sent to the server, and the fast paths, which take a whole small
simple Query, or a whole Parse/Bind/Describe/Execute/Sync batch of cached statements, straight to the server
without the general path's queue. It also keeps what a client holds for a server (`raw`, `pending`).

`FastPaths` is a part of `ClientConn` kept in its own file; each path must produce exactly what the general
path would (tests/unit/test_fast_batch.py, test_rewriter.py and the differential suite check it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgdoorman.core import prepared as ps
from pgdoorman.core import sqllex
from pgdoorman.core.leaks import LISTENS, lowered_may_leave_state
from pgdoorman.net.conn import HIGH_WATER
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.framing import SMALL_LIMIT, Scanner
from pgdoorman.session import shared
from pgdoorman.session.client_base import ClientBase
from pgdoorman.session.states import CLIENT_PS_TABLE

if TYPE_CHECKING:
    from pgdoorman.core.pool import Pool
    from pgdoorman.session.server import ServerConn


_unpack = m.U32.unpack_from
_SMALL_QUERY = SMALL_LIMIT + 1  # the longest Query message the fast path takes (type byte included)
# First bytes of a simple query that the fast path leaves to the general one: DEALLOCATE and LISTEN are
# answered or refused by the pooler, EXECUTE may name a protocol-level statement, and any may follow blanks.
_MAYBE_SPECIAL = frozenset(b"dDlLeE \t\r\n\x0b\x0c")


class FastPaths(ClientBase):
    __slots__ = ()

    # ------------------------------------------------------------------ bytes held for a server
    # `raw` and `pending` are EMPTY (shared, immutable) while nothing is held: a client gets a bytearray of its
    # own when it holds something, so that idle clients hold no buffer.
    def _keep_raw(self, data: bytes | bytearray | memoryview) -> None:
        """Append to `raw` (received, not scanned yet)."""
        raw = self.raw
        if type(raw) is not bytearray:  # EMPTY, or the bytes ClientConn._consume keeps for one read
            self.raw = raw = bytearray(raw)
        raw += data

    def _keep_pending(self, out: memoryview | bytearray) -> None:
        """Append to `pending` (scanned, sent when the server is ready); stop reading past HIGH_WATER."""
        held = self.pending
        if isinstance(held, bytearray):
            held += out
        else:
            self.pending = held = bytearray(out)
        if len(held) > HIGH_WATER:
            self.pause_reading()

    # ------------------------------------------------------------------ pooler_check_query
    def _check_query(self, view: memoryview) -> bool:
        """A simple query byte for byte equal to pooler_check_query, outside a transaction: answered with
        PostgreSQL's answer to it, kept from the first time, without a server. True when answered here; the
        first ones (no answer kept yet) go to PostgreSQL as any query, and the janitor fetches the answer to
        keep on an idle server."""
        pool = self.pool
        assert pool is not None
        if view != pool.check_msg:
            return False
        st = pool.stats[self.worker.id]
        reply = pool.check_reply
        if reply is None:
            st.check_backend += 1
            pool.check_wanted = True
            return False
        st.check_cache += 1
        self.query_count += 1
        self.xact_count += 1
        self.write(reply)
        return True

    # ------------------------------------------------------------------ prepared-statement mode
    def use_ps_scanner(self, pool: Pool, sig: tuple[str, ...]) -> None:
        """Prepared-statement mode from now on: every extended-protocol message is read by the rewriter."""
        rw = self.rw
        rw.start(pool.ps_cache, shared.same(sig))  # one tuple per distinct signature (shared.py)
        self.scanner = Scanner(CLIENT_PS_TABLE, on_header=rw.on_header, on_message=rw.on_message,
                               budget=self.loop.mem)

    def _after_ps_scan(self, out: Any, n: int) -> None:
        s = self.server
        assert s is not None
        rest = self.scanner.rest
        if rest is not None:  # the rewriter held the rest (RewriterBase._waits): fed again by resume_held
            self.scanner.rest = None
            self._keep_raw(rest)
            n = max(0, n - len(rest))  # (counted when fed again)
        if out:
            s.bytes_out += n
            s.pstats.bytes_in += n
            s.write(out)
        rq = self.rw.rq
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

    def flush_synth(self) -> None:
        out = self.rw.take_synth()
        if out:  # (b"" for COPY_END markers only)
            self.write(out)

    def _fast_query(self, view: memoryview | bytes | bytearray, n: int, s: ServerConn) -> bool:
        """One whole small simple Query with nothing queued: what the scanner and the rewriter would do, in
        one step. Anything else (a partial or pipelined message, a possible DEALLOCATE or LISTEN, a client
        already queueing extended-protocol responses) takes the general path."""
        if not 6 <= n <= _SMALL_QUERY or _unpack(view, 1)[0] + 1 != n or self.rw.rq or self.in_copy_in:
            return False  # not one whole small message (the scanner keeps a partial one until the rest comes)
        sc = self.scanner
        if sc.carry is not None or sc.skip:
            return False
        b0 = view[5]
        if b0 in _MAYBE_SPECIAL or self.lsn is not None:
            return False  # (a listening client's statements are all read: listening.in_request)
        # leaks.may_leave_state, inline (its keywords; a call less per statement on the simplest path). "set"
        # stands for set_config and setval too, and for the custom settings a SET, RESET or set_config may name.
        low = bytes(view).lower()  # (no copy for bytes; its 5-byte header too: a slice less, at worst a false "maybe")
        if low.find(b"set") >= 0:
            bits = lowered_may_leave_state(low)
            self.note_settings(view[5:n], low[5:])  # custom settings, and what it resets (txresets.py)
        elif (low.find(b"temp") < 0 and low.find(b"advisory") < 0 and low.find(b"listen") < 0
              and low.find(b"val") < 0):  # ("val": nextval, currval, lastval; and VALUES, interval: a "maybe")
            bits = 0
        else:
            bits = lowered_may_leave_state(low)
        if bits or b0 | 32 == 112:  # temp/advisory, or a PREPARE: transaction_pinning refuse refuses it there
            if bits & LISTENS:
                return False  # LISTEN/UNLISTEN after another statement: listening.in_request
            pool = self.pool
            if pool is not None and pool.pin_refuse and sqllex.pinning_text(view[5:n]) is not None:
                return False
            self.leaves |= bits
        if not self.query_start:  # ClientBase._mark_query, inline
            self.query_start = now = self.loop.now
            if not self.xact_start:
                self.xact_start = now
        self.copy_window = 81
        self.copy_syncs = 0
        self.expect += 1
        self.rw.unnamed = None  # (PostgreSQL drops the unnamed statement when a simple query starts)
        s.bytes_out += n
        s.pstats.bytes_in += n
        s.write(view)
        return True

    def _fast_batch(self, view: memoryview, n: int, s: ServerConn) -> bool:
        """A whole one-statement batch of cached statements (Rewriter.fast_batch), sent on in plain relay
        mode, when nothing else is in flight (the caller checked the counters). False (nothing changed) for
        the general path."""
        sc = self.scanner
        rw = self.rw
        if sc.skip or sc.carry is not None or rw.rq or rw.synth_head is not None or self.lsn is not None:
            return False  # (a listening client's Binds are all looked at: listening.bound)
        out = rw.fast_batch(view, n, s)
        if out is None:
            return False
        if not self.query_start:  # ClientBase._mark_query, inline
            self.query_start = now = self.loop.now
            if not self.xact_start:
                self.xact_start = now
        self.expect += 1
        self.copy_window = 69
        self.copy_syncs = 1
        s.bytes_out += n
        s.pstats.bytes_in += n
        s.write(out)
        return True
