"""The top part of a client connection (ClientConn): its socket events and the relay of frontend messages to
whichever server the pool lends it, and the binary upgrade's export and restore of a client.

The relay decides on headers only: it counts the messages that will be answered by ReadyForQuery
(Query, Sync, FunctionCall), notes unsynced extended-protocol traffic, drops Terminate, and rejects
anything that is not a frontend message type (08P01 and close). Bodies are forwarded untouched, except in
prepared-statement mode (fastpath.py hands them to the client's Rewriter, rewrite.py).

States: STARTUP -> AUTH (md5, SCRAM, or a clear-text password for JWT/PAM: client_auth.py; AUTH_WAIT while a
PAM thread checks it) -> LOGIN_WAIT (waiting for a server to learn parameters or, in session mode, to keep)
-> READY.
"""

from __future__ import annotations

import base64
import logging
import socket
from typing import TYPE_CHECKING, Any

from pgdoorman.core import prepared as ps
from pgdoorman.core.leaks import TAIL, lowered_may_leave_state
from pgdoorman.net.conn import AGAIN, HIGH_WATER, Conn
from pgdoorman.net.loop import RECV_BUFFER_SIZE
from pgdoorman.net.tls import TLS_READ_MIN
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.framing import SMALL_LIMIT, OverBudget, UnknownType
from pgdoorman.session import listening, shared, tracking, txresets, unlocks
from pgdoorman.session.login import ClientLogin
from pgdoorman.session.rewrite_replies import SYNC_AFTER_DATA
from pgdoorman.session.shared import EMPTY
from pgdoorman.session.states import ADMIN as ADMIN  # re-exported: the worker and tests import them from here
from pgdoorman.session.states import LOGIN_WAIT
from pgdoorman.session.states import READY as READY
from pgdoorman.session.txbegin import BEGIN_DONE, BEGIN_MAX, START_DONE, end_answer, lone_begin, lone_end

if TYPE_CHECKING:
    from pgdoorman.core.pool import Pool
    from pgdoorman.session.host import Host

log = logging.getLogger("pgdoorman.client")

_unpack = m.U32.unpack_from
# The first two letters of BEGIN and START, and of LISTEN and UNLISTEN: _SECOND[first byte] is the second one
# (lower case; 0 for any other first byte). A Query starting otherwise (SELECT, SET, SHOW, ...) is not looked
# at for a deferred BEGIN or a lone LISTEN/UNLISTEN.


def _second_letters() -> bytes:
    table = bytearray(256)
    for first, second in (b"be", b"st", b"li", b"un"):
        table[first] = table[first & ~32] = second
    return bytes(table)


_SECOND = _second_letters()
assert RECV_BUFFER_SIZE >= TLS_READ_MIN  # see ClientConn._start_tls


class ClientConn(ClientLogin):
    """One client connection. Its parts, one file each, from the bottom: ClientBase (client_base.py: state
    and the link to a server), FastPaths (fastpath.py: prepared-statement mode, through the client's Rewriter
    of rewrite.py), ClientLogin (login.py); this class adds the socket events and the relay's entry points."""

    __slots__ = ()  # every field is declared in ClientBase

    # ------------------------------------------------------------------ reading
    def on_event(self, mask: int) -> None:
        if mask == 1:  # readable only: the common case, without Conn.on_event's write check
            if self.state == READY:  # the relay's read, here rather than in on_readable: a call less per read
                try:
                    n = self.sock.recv_into(self.loop.rbuf)
                except AGAIN:
                    return
                except OSError as e:
                    self.close(f"read failed: {e}")
                    return
                if not n:
                    self.close("client disconnected")
                    return
                self._consume(self.loop.rview[:n], n)
            else:
                self.on_readable()
        elif self.handshaking:
            self._tls_handshake()
        else:
            Conn.on_event(self, mask)

    def on_readable(self) -> None:
        if self.state == READY:
            self.on_event(1)  # (the relay's read lives in on_event)
            return
        if self.state == ADMIN:
            self.admin.on_readable()
            return
        self._login_read()

    def _consume(self, view: memoryview, n: int) -> None:
        """Frontend bytes after login: scan, then forward to the linked server or keep until one is."""
        # Exempt from the size rule (tests/unit/test_sizes.py): it runs for every read of a logged-in client, and
        # the checkout and the holding of bytes are inline, a function call less per transaction each.
        s = self.server
        if s is None and not self.waiting and not self.raw and not self.pending:
            # Start of a transaction: take a server first, so the bytes go straight through when one is free.
            pool = self.pool
            assert pool is not None
            t0 = view[0]
            if t0 == 81:  # maybe a lone BEGIN, LISTEN or UNLISTEN, an end of a deferred BEGIN, pooler_check_query
                if ((6 < n < BEGIN_MAX and view[6] | 32 == _SECOND[view[5]] or self.begin_held is not None)
                        and self._deferred_begin(view, n)
                        or n == pool.check_n and self.begin_held is None and self._check_query(view)):
                    self.rw.unnamed = None  # (answered here: PostgreSQL drops it when any simple query starts)
                    return
            elif n == 5 and t0 == 88:  # a lone Terminate
                self.close("client terminated")
                return
            elif self.ps and t0 == 80 and n > 10:
                second = 1 + _unpack(view, 1)[0]  # only Parse... Sync can be answered here: peek first
                if second < n and view[second] in b"PS" and (answer := self.rw.parse_sync_locally(view)):
                    self.write(answer)
                    return
            r: Any = (None if pool.unlocking and unlocks.hold(self, pool, view)  # (a departed client's locks)
                      else pool.acquire(self, self.worker.id, self.loop.now))  # (Worker.checkout, inline)
            if r is None:
                s = None  # queued: a server comes through Worker.hand
                if pool.coord_blocked_since:
                    self.worker.evict_for(pool)
            elif type(r) is tuple:
                s = None  # queued, and the pool asks for more (Worker.carry_out evicts for a blocked pool too)
                self.worker.carry_out(pool, r[0], r[1], r[2])
            else:
                s = r  # (a ServerConn: the pool holds only the ones workers gave it)
                if not self._link(s, view):
                    s = None  # linked, but a parameter sync runs first: hold the bytes until it is done
        hold = s is None or s.state != 3 or self.ps and self.raw  # 3: ServerState.ACTIVE (a truth value, no bool())
        if hold:  # no server ready for these bytes yet
            if self.server is None and not self.waiting and not self.closed:
                self.need_server()  # held bytes and no request yet (defensive: should not happen)
            if self.ps:  # kept unscanned: rewriting needs the server (scanned once one is linked: _server_ready)
                raw = self.raw  # (FastPaths._keep_raw, inline: once per request that waits for a server)
                if raw:  # more of a request already held: a bytearray of its own from here on
                    if type(raw) is not bytearray:
                        self.raw = raw = bytearray(raw)
                    raw += view
                    n = len(raw)
                else:  # bytes: _server_ready's fast path reads them without another copy
                    self.raw = bytes(view)
                if n > HIGH_WATER:
                    self.pause_reading()
                return
        if self.ps:
            assert s is not None
            if view[0] == 81:
                if self._fast_query(view, n, s):
                    return
            elif self.expect <= 0 and not self.unsynced and not self.in_copy_in and self._fast_batch(view, n, s):
                return
        if self.transaction_mode and not self.in_copy_in:  # (COPY data is not SQL)
            self._scan_leaks(view)
        try:
            out = self.scanner.feed(view)
        except m.ProtocolViolation as e:
            self._violation(e)
            return
        if self.ps:
            self._after_ps_scan(out, n)
            return
        if self.unsynced and not self.rw.rq:
            tracking.start(self, 0)  # an extended-protocol window goes on past this read: queued from now on
        if out is not None:
            if hold:
                self._keep_pending(out)  # scanned, sent when the server is ready
            else:
                assert s is not None
                s.bytes_out += n
                s.pstats.bytes_in += n
                s.write(out)
                if not self.terminating and self._server_done(s):
                    # A message no answer waits for (a CopyData outside COPY, which PostgreSQL ignores) ended
                    # after the last ReadyForQuery: the server is free again now that the message is whole.
                    self.worker.release_server(s)
        if self.terminating:
            self.close("client terminated")

    def _violation(self, e: m.ProtocolViolation) -> None:
        """The scanner refused what the client sent: FATAL 08P01, or 53200 for a message that would take the
        process's buffered bytes past max_memory_usage (OverBudget)."""
        if isinstance(e, UnknownType):
            self.fatal("08P01", f"invalid frontend message type {e.t}")  # (PostgreSQL's words)
            return
        if not isinstance(e, OverBudget):
            self.fatal("08P01", f"protocol violation: {e}")
            return
        limit = self.loop.mem.budget.limit if self.loop.mem is not None else 0
        log.warning("client %s (%s@%s): %s (%d bytes)", self.addr, self.user, self.database, e, limit)
        self.fatal("53200", f"out of memory: {e} ({limit} bytes)",
                   hint="Send large values in smaller messages, or raise general.max_memory_usage.")

    def _deferred_begin(self, view: memoryview, n: int) -> bool:
        """Deferred BEGIN (txbegin.py), or a lone LISTEN/UNLISTEN (listening.py): True when these bytes were
        answered here."""
        if self.begin_held is not None:
            return self._end_deferred(view, n)
        if view[5] | 32 in b"lu":
            return listening.idle_statement(self, view, n)
        return self._defer_begin(view, n)

    def _defer_begin(self, view: memoryview, n: int) -> bool:
        """A lone BEGIN (transaction mode, no server held): answered here, sent with the next request."""
        if _unpack(view, 1)[0] + 1 != n or not self.transaction_mode or self.last_status != 73:
            return False
        answer = lone_begin(bytes(view[5:n]))
        if answer is None:
            return False
        self.begin_held = (bytes(view[:n]), 0)
        self.last_status = 84
        self.query_count += 1
        self.xact_start = self.loop.now
        self.write(answer)
        self._answered_here(n, 0, False)  # its answer is counted when PostgreSQL's is (swallowed) or at the end
        return True

    def _end_deferred(self, view: memoryview, n: int) -> bool:
        """A lone COMMIT or ROLLBACK right after a deferred BEGIN: the empty transaction ends here."""
        if view[0] != 81 or n >= BEGIN_MAX or _unpack(view, 1)[0] + 1 != n:
            return False
        commit = lone_end(bytes(view[5:n]))
        if commit is None:
            return False
        answer = end_answer(commit, self.last_status == 69)
        self.write(answer if self.lsn is None else self.lsn.ahead_of_ready(answer))  # (notifications meanwhile)
        held = self.begin_held
        begun = START_DONE if held is not None and held[0][5:6] in (b"s", b"S") else BEGIN_DONE
        self.begin_held = None
        self.last_status = 73
        self.query_count += 1
        self.xact_count += 1
        self._answered_here(n, len(answer) + len(begun), True)  # the BEGIN's answer never came from a server
        self.xact_start = 0.0
        return True

    def _answered_here(self, n_in: int, n_out: int, xact_end: bool) -> None:
        """SHOW STATS for a statement of `n_in` bytes the pooler answered itself (a deferred BEGIN, the COMMIT or
        ROLLBACK of its empty transaction): a query (and a transaction when it ends one), as PostgreSQL's answer
        would have been counted, and the bytes no server relay counts."""
        pool = self.pool
        if pool is None:
            return
        st = pool.stats[self.worker.id]
        st.bytes_in += n_in
        st.bytes_out += n_out
        st.query_hist.record(0)
        if xact_end and self.xact_start:
            st.xact_hist.record(int((self.loop.now - self.xact_start) * 1e6))

    def _scan_leaks(self, view: memoryview) -> None:
        """The general path sees every byte (large messages stream through unread), so it looks for temp/advisory
        here, across reads (temp/advisory/set_config); the fast paths look at their own text or statement (see leaks.py)."""
        low = view.tobytes().lower()
        bits = lowered_may_leave_state(low)
        if self.scan_tail:
            bits |= lowered_may_leave_state(self.scan_tail + low[:TAIL])
        if bits:
            self.leaves |= bits
        self.scan_tail = low[-TAIL:]

    def _on_header(self, t: int, ln: int) -> None:
        if t == 81:  # Query
            if self.unsynced or self.rw.rq or self.copy_window >= 1000:
                # Inside an extended-protocol window (PostgreSQL may skip it), or after CopyData (a COPY that
                # failed on it is over, and PostgreSQL answers this as usual): queued.
                tracking.request(self, t)
            self.expect += 1
            self.copy_window = 81
            self.copy_syncs = 0
            self._mark_query()
        elif t == 83:  # Sync
            if self.in_copy_in:
                if self.copy_window >= 1000:
                    self.copy_risk = True  # after CopyData (Rewriter.copy_started)
                return  # PostgreSQL ignores Sync during COPY IN
            self.expect += 1
            self.unsynced = False
            rq = self.rw.rq
            if rq:
                rq.append(SYNC_AFTER_DATA if self.copy_window >= 1000 else tracking.ENTRY[t])
            elif self.window:
                self.window.clear()
            if self.copy_window:
                self.copy_syncs += 1
        elif t == 70:  # FunctionCall
            if self.unsynced or self.rw.rq or self.copy_window >= 1000:
                tracking.request(self, t)
            self.expect += 1
        elif t == 100:  # CopyData
            if 0 < self.copy_window < 1000:
                self.copy_window += 1000
                self.copy_pre = self.copy_syncs
        elif t == 99 or t == 102:  # CopyDone, CopyFail
            if not self.in_copy_in:
                tracking.copy_end(self)  # behind unanswered requests: its place among them is queued
            self.copy_window = 0
            self.in_copy_in = False
        elif t in b"PBDEC":
            self.unsynced = True
            rq = self.rw.rq
            if rq:
                rq.append(tracking.ENTRY[t])
            else:
                if self.window is None:
                    self.window = bytearray((t,))  # this window's messages, by type (tracking.py)
                else:
                    self.window.append(t)
                if self.copy_window >= 1000:
                    tracking.start(self, 0)  # after CopyData: see the Query's case
            if t == 69:
                self.copy_window = 69  # an Execute may start a COPY FROM STDIN
                self.copy_syncs = 0
            if t == 80 and ln > SMALL_LIMIT:
                self.named_parse = True  # too big to read: assume it named a statement
            self._mark_query()

    def _on_message(self, t: int, body: memoryview) -> bytes | None:
        if t == 81:  # a small simple query (transaction mode; session mode: CLIENT_SESSION_READ_TABLE)
            self._on_header(t, 0)
            if not body:
                return None
            if self.reset_names:
                txresets.forgotten(self, body)
            if not self.transaction_mode:
                txresets.note(self, body, counted=True)
                return None
            refused = self.refuse_pinning(body)
            return listening.in_request(self, body) if refused is None else m.query(refused)
        if t == 80:  # a small Parse (transaction mode, prepared_statements off; session mode, as Query above)
            self._on_header(t, 0)
            text = bytes(body)
            j = text.find(b"\x00") + 1
            sql = text[j : text.find(b"\x00", j)]  # (after the statement's name)
            if not self.transaction_mode:
                return txresets.parsed(self, text[: j - 1], sql)
            if not body or body[0] != 0:
                self.named_parse = True
            if not body:
                return None
            self.note_settings(sql, resets=False)
            return listening.parse_refusal(self, body) or txresets.parsed(self, text[: j - 1], sql)
        if t == 66 or t == 67:  # a small Bind or Close, read once a statement that resets was parsed (txresets)
            self._on_header(t, 0)
            txresets.bound(self, t, body)
            return None
        # Terminate: never forwarded (the server stays with the pool).
        self.terminating = True
        return b""

    def _resume_held(self) -> None:
        self.expect -= 1  # (RewriterBase._waits kept the server with one more)
        s = self.server
        if self.closed or s is None:
            return
        raw = self.raw
        self.raw = EMPTY
        if raw:
            self._consume(memoryview(raw), len(raw))
        if self.closed:
            return
        if self.read_paused and not self.raw and not s.out:
            self.resume_reading()
        if self.server is s and self._server_done(s):
            self.worker.release_server(s)

    def _server_ready(self) -> None:
        s = self.server
        assert s is not None
        if self.state == LOGIN_WAIT:
            self._learn_spellings(s)
            self._finish_login()
            if self.closed:  # (refused: params.isolation_refusal)
                return
        if self.pending:
            data = self.pending
            self.pending = EMPTY
            s.bytes_out += len(data)
            s.pstats.bytes_in += len(data)
            s.write(data)
        if self.raw:
            raw = self.raw
            self.raw = EMPTY
            n = len(raw)
            # _consume's fast paths for held bytes on an ACTIVE server, without its preamble (a client that queued
            # for a server comes here once per transaction). _fast_query reads `raw` itself (bytes: no copy).
            if not (self.ps and s.state == 3 and (
                    self._fast_query(raw, n, s) if raw[0] == 81 else
                    self.expect <= 0 and not self.unsynced and not self.in_copy_in
                    and self._fast_batch(memoryview(raw), n, s))):
                self._consume(memoryview(raw), n)
            if self.closed:
                return
        if self.read_paused and not s.out and not self.closed:
            self.resume_reading()
        if self.expect <= 0 and self._server_done(s):
            # Nothing to send (login parameters only, or everything answered locally).
            self.worker.release_server(s)

    # ------------------------------------------------------------------ binary upgrade
    @property
    def between_transactions(self) -> bool:
        """Logged in, between two transactions, no server held or awaited, and nothing of it buffered here: not
        a byte withheld or half-scanned, no response owed, nothing unsent. (Bytes it already sent that sit in
        the kernel's socket buffer move with the socket.) What moving it to another process (`movable`) or to
        another worker (placement.movable) asks first."""
        return (
            self.state == READY and not self.closed and self.server is None and not self.waiting
            and not self.terminating and not self.in_flight and self.last_status == 73
            and not self.pending and not self.inbuf and not self.out and not self.read_paused and not self.raw
        )

    @property
    def movable(self) -> bool:
        """May this client move to the new process now? Between transactions with nothing buffered, and not
        over TLS: a TLS session cannot be handed to another process, such a client stays here until it leaves."""
        return self.between_transactions and not self.tls and not listening.holds(self)

    def export_state(self) -> dict[str, Any]:
        """Everything the new process needs to keep serving this client as if nothing happened: who it is, the
        settings it asked for (replayed on whichever server it gets next), its cancel key, its counters and its
        prepared statements (the pool-owned names are re-resolved in the new process's cache). The record's
        format is a contract between two versions of pgdoorman: add keys, never change one."""
        rw = self.rw
        return {
            "kind": "client", "addr": self.addr, "is_unix": self.is_unix, "user": self.user,
            "database": self.database, "startup": self.startup, "application_name": self.application_name,
            "want": [[k, v] for k, v in self.want.items()],
            "want_base": [[k, v] for k, v in self.want_base.items()], "pid": self.pid, "secret": self.secret,
            "connect_time": self.connect_time, "query_count": self.query_count, "xact_count": self.xact_count,
            "error_count": self.error_count, "ps": bool(self.ps), "planner_sig": list(rw.sig),
            "named": [[_b64(name), _b64(s.query), _b64(s.key[1])] for name, s in rw.named.items()],
            "unnamed": None if rw.unnamed is None else [_b64(rw.unnamed.query), _b64(rw.unnamed.key[1])],
        }

    @classmethod
    def restore(cls, worker: Host, sock: socket.socket, st: dict[str, Any], pool: Pool | None = None) -> ClientConn:
        """A client handed over with export_state()'s record, on `worker`'s thread, ready for its next query
        (or told with a FATAL that its pool is gone). `pool`: the one the caller found for it (an auth_query
        user's, upgrade/receive.py); else its user's static pool. The caller owns admission counting and
        registration."""
        c = cls(sock, worker, str(st["addr"]), bool(st["is_unix"]))
        c._login_done()
        c.inbuf = EMPTY
        c.user, c.database = str(st["user"]), str(st["database"])
        c.startup = shared.params({str(k): str(v) for k, v in st["startup"].items()})[0]
        c.application_name = str(st["application_name"])
        c.connect_time = float(st["connect_time"])
        c.query_count, c.xact_count = int(st["query_count"]), int(st["xact_count"])
        c.error_count = int(st["error_count"])
        c.state = READY
        app = worker.app
        pool = pool or app.pools.get((c.database, c.user))
        if pool is None:  # told on the next turn of the loop, once the caller has registered it
            c.loop.call_soon(c.fatal, "3D000", f'pool for user "{c.user}" and database "{c.database}" no longer '
                                               "exists after the binary upgrade")
            return c
        c.pool = pool
        c.transaction_mode = pool.transaction_mode
        # Shared with the clients that want the same (session/shared.py), as after a login.
        c.want, c.want_key = shared.params({str(k): str(v) for k, v in st["want"]})
        c.want_base = shared.params({str(k): str(v) for k, v in st.get("want_base", st["want"])})[0]
        c.last_status = 73
        c.ps = c.transaction_mode and app.config.general.prepared_statements
        if c.ps:
            c._restore_statements(pool, st)
        elif st.get("named"):
            log.warning("client %s (%s@%s) had %d prepared statement(s); prepared_statements is off now: they "
                        "are gone", c.addr, c.user, c.database, len(st["named"]))
        pid = int(st["pid"])
        c.pid, c.secret = app.cancels.adopt(pid, int(st["secret"]), c)
        if c.pid != pid:
            log.warning("client %s: cancel key %d already in use after the handover; its cancel requests will "
                        "be ignored", c.addr, pid)
        c._apply_mask()
        return c

    def _restore_statements(self, pool: Pool, st: dict[str, Any]) -> None:
        if st.get("ps"):
            sig = tuple(str(x) for x in st["planner_sig"])
        else:
            sig = tuple(self.want.get(k, "") for k in ps.PLANNER_PARAMS)
        self.use_ps_scanner(pool, sig)
        rw = self.rw
        cache = pool.ps_cache
        for name, q, types in st.get("named") or []:
            rw.define(_unb64(name), cache.get(_unb64(q), _unb64(types), sig))
        un = st.get("unnamed")
        if un:
            rw.unnamed = cache.get(_unb64(un[0]), _unb64(un[1]), sig)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode("ascii"))
