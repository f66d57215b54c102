"""A client connection: startup packet, authentication (md5, SCRAM-SHA-256), routing to a pool, then the
relay of frontend messages to whichever server the pool lends it.

The relay decides on headers only: it counts the messages that will be answered by ReadyForQuery
(Query, Sync, FunctionCall), notes unsynced extended-protocol traffic, drops Terminate, and rejects
anything that is not a frontend message type (08P01 and close). Bodies are forwarded untouched.

States: STARTUP -> AUTH_* (md5, SCRAM, or a clear-text password for JWT/PAM; AUTH_WAIT while a PAM thread
checks it) -> LOGIN_WAIT (waiting for a server to learn parameters or, in session mode, to keep) -> READY.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import socket
import ssl
import struct
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from pgdoorman import hba, jwt_auth, pam_auth
from pgdoorman.core import prepared as ps
from pgdoorman.core.cancel import send_cancel
from pgdoorman.core.leaks import TAIL, lowered_may_leave_state, may_leave_state
from pgdoorman.core.params import READ_ONLY, TRACKED_PARAMS, OptionsError, known_spelling, startup_settings
from pgdoorman.net.conn import AGAIN, HIGH_WATER, Conn
from pgdoorman.net.loop import RECV_BUFFER_SIZE
from pgdoorman.net.tls import TLS_READ_MIN, ssl_reason
from pgdoorman.protocol import auth, frontend
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.framing import FULL, INVALID, NOTIFY, PASS, SMALL, SMALL_LIMIT, Scanner

if TYPE_CHECKING:
    from pgdoorman.core.pool import Pool
    from pgdoorman.session.server import ServerConn
    from pgdoorman.worker import Worker

log = logging.getLogger("pgdoorman.client")

STARTUP, AUTH_MD5, AUTH_SASL, AUTH_SASL_FINAL, AUTH_CLEARTEXT, AUTH_WAIT, LOGIN_WAIT, READY, ADMIN = range(9)

# Frontend message types after login. Password messages ('p') are only valid during authentication.
_t = bytearray([INVALID]) * 256
for _c in b"Hd":
    _t[_c] = PASS
for _c in b"QSFcfBCDEP":
    _t[_c] = NOTIFY
_t[ord("X")] = FULL
CLIENT_SESSION_TABLE = bytes(_t)
# Transaction mode reads small simple queries to refuse LISTEN (see _refuse_listen), and small Parse
# messages to see whether they name a statement (which must then be deallocated at checkin).
_t[ord("Q")] = SMALL
_t[ord("P")] = SMALL
CLIENT_TABLE = bytes(_t)
# With transparent prepared statements every extended-protocol message is read (and maybe rewritten);
# a simple query is read when small enough to be a DEALLOCATE.
for _c in b"PBDCESHX":
    _t[_c] = FULL
_t[ord("Q")] = SMALL
CLIENT_PS_TABLE = bytes(_t)
del _t, _c
_LISTEN = re.compile(rb"^\s*listen\b", re.I)
# LISTEN cannot work in transaction mode (notifications arrive on whichever server the client had): the
# statement is replaced by one that makes PostgreSQL itself raise 0A000, so the error, the aborted
# transaction and ReadyForQuery's status are exactly what the client would get from a refusal there.
LISTEN_REFUSAL = (
    b"DO $pgdoorman$ BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', "
    b"MESSAGE = 'LISTEN is not supported in transaction pooling mode', "
    b"HINT = 'Use a pool with pool_mode = session for LISTEN/NOTIFY.'; END $pgdoorman$"
)
_DEALLOCATE = re.compile(rb"^\s*deallocate\s+(?:prepare\s+)?(\"(?:[^\"]|\"\")+\"|[A-Za-z_][A-Za-z0-9_$]*)\s*;?\s*$", re.I)

_SALT = struct.Struct("!I")
_unpack = m.U32.unpack_from
assert RECV_BUFFER_SIZE >= TLS_READ_MIN  # see ClientConn._start_tls
# First bytes of a simple query that the fast path leaves to the general one: DEALLOCATE and LISTEN are
# answered or refused by the pooler, and either may follow leading blanks.
_MAYBE_SPECIAL = frozenset(b"dDlL \t\r\n\x0b\x0c")


class _NoRequests(deque[tuple[int, Any]]):
    """The queue of a client not in prepared-statement mode: always empty, and loud if anything is queued."""

    def append(self, _: tuple[int, Any]) -> None:
        raise RuntimeError("response queued outside prepared-statement mode")

    appendleft = append

    def extend(self, _: Any) -> None:
        raise RuntimeError("response queued outside prepared-statement mode")

    extendleft = extend


NO_REQUESTS = _NoRequests()


def _first_request_end(buf: bytearray) -> int | None:
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


def _renamed_bind(b: bytes, j: int, k: int, name: bytes) -> bytes:
    """The Bind message with body `b`, whose statement name lies between the NULs at j and k, naming `name`."""
    return m.msg(b"B", b[: j + 1] + name + b[k:])


# Fake SCRAM salt for unknown users: derived from a per-process key so repeated attempts look stable.
_FAKE_KEY = os.urandom(32)


class ClientConn(Conn):
    __slots__ = (
        "worker", "app", "state", "inbuf", "pool", "server", "user", "database", "startup", "settings", "want",
        "want_key", "expect", "unsynced", "transaction_mode", "waiting", "wait_start", "pending",
        "scanner", "terminating", "pid", "secret", "md5_salt", "scram", "stored", "addr", "connect_time",
        "query_count", "xact_count", "error_count", "login_timer", "admin", "application_name", "is_unix",
        "last_status", "xact_start", "query_start", "ps", "named", "unnamed", "rq", "raw",
        "planner_sig", "last_parse", "named_parse", "copy_window", "copy_syncs", "in_copy_in",
        "synth_head", "fast_bind", "fast_redo", "held_error", "tls", "handshaking", "leaves", "scan_tail", "copy_confused",
    )

    def __init__(self, sock: socket.socket, worker: Worker, addr: str, is_unix: bool = False) -> None:
        super().__init__(sock, worker.loop)
        self.worker = worker
        self.app = worker.app
        self.addr = addr
        self.is_unix = is_unix
        self.state = STARTUP
        self.inbuf = bytearray()
        self.pool: Pool | None = None
        self.server: ServerConn | None = None
        self.user = ""
        self.database = ""
        self.startup: dict[str, str] = {}
        self.settings: dict[str, str] = {}  # the settings the startup packet asks for (params.startup_settings)
        self.want: dict[str, str] = {}
        self.want_key: tuple[tuple[str, str], ...] = ()
        self.expect = 0
        self.unsynced = False
        self.transaction_mode = True
        self.waiting = False
        self.wait_start = 0.0
        self.pending = bytearray()
        self.scanner = Scanner(CLIENT_TABLE, on_header=self._on_header, on_message=self._on_message)
        self.terminating = False
        self.pid = 0
        self.secret = 0
        self.md5_salt = b""
        self.scram: auth.ScramServer | None = None
        self.stored = ""
        self.connect_time = time.time()
        self.query_count = 0
        self.xact_count = 0
        self.error_count = 0
        self.admin: Any = None
        self.application_name = ""
        self.last_status = 73
        self.xact_start = 0.0
        self.query_start = 0.0
        self.ps = False  # transparent prepared statements active (transaction mode)
        self.named: dict[bytes, ps.Statement] = {}
        self.unnamed: ps.Statement | None = None
        # The expected-response queue of prepared-statement mode, made at login (760 bytes each: most refused
        # connections never get that far, and session-mode clients never use it).
        self.rq: deque[tuple[int, Any]] = NO_REQUESTS
        self.raw = bytearray()  # received but not yet scanned (waiting for a server, prepared mode)
        self.planner_sig: tuple[str, ...] = ()
        self.last_parse: tuple[bytes, bytes, ps.Statement] | None = None
        self.named_parse = False  # a named Parse was forwarded untouched (prepared_statements off)
        # COPY FROM STDIN bookkeeping (see copy_in_started)
        self.copy_window = False  # since the last Execute/Query, no CopyDone/CopyFail yet
        self.copy_syncs = 0  # Syncs counted in that window
        self.in_copy_in = False  # PostgreSQL is in COPY IN for us: it ignores Sync
        # Batch fast path (see _fast_batch): a synthetic ParseComplete to put in front of the server's next
        # bytes, and the Bind's (statement, client name) for error rewriting until its ReadyForQuery.
        self.synth_head: bytes | None = None
        self.fast_bind: tuple[ps.Statement, bytes] | None = None
        # When that batch's Parse was skipped: the client's Bind body, the two NULs around the statement name
        # in it and the batch as sent, to send it again under a fresh statement if the cached plan went stale
        # (0A000 "cached plan must not change result type", held in held_error until ReadyForQuery).
        self.fast_redo: tuple[bytes, int, int, bytes] | None = None
        self.held_error: bytes | None = None
        self.tls = False  # the client's socket is an ssl.SSLSocket (handshake done)
        self.handshaking = False  # wrapped after SSLRequest, handshake not finished yet
        # Transaction mode: what this client sent may leave temp objects or advisory locks on its server (see
        # leaks.py; the worker turns it into a cleanup when the server comes back), and the last bytes read,
        # lower-cased, for a keyword split between two reads.
        self.leaves = False
        self.scan_tail = b""
        self.copy_confused = False  # see copy_in_started
        self.login_timer = worker.loop.call_later(60.0, self._login_timeout)

    def __repr__(self) -> str:
        return f"<client {self.user}@{self.database} {self.addr}>"

    # ------------------------------------------------------------------ errors
    def fatal(self, sqlstate: str, message: str, detail: str | None = None, hint: str | None = None) -> None:
        """Send a FATAL ErrorResponse and close."""
        if not self.closed:
            self.write(m.error_response(sqlstate, message, "FATAL", detail, hint))
            self.close(f"{sqlstate}: {message}")

    def _login_timeout(self) -> None:
        if self.state < READY:
            self.fatal("08P01", "authentication timeout")

    # ------------------------------------------------------------------ reading
    def on_event(self, mask: int) -> None:
        if mask == 1:  # readable only: the common case, without Conn.on_event's write check
            self.on_readable()
        elif self.handshaking:
            self._tls_handshake()
        else:
            Conn.on_event(self, mask)

    # ------------------------------------------------------------------ TLS
    def _start_tls(self) -> None:
        """SSLRequest accepted: answer 'S' on the plain socket, then wrap it and wait for the ClientHello.

        After the handshake the socket is read as any other: every read asks for at least a whole TLS
        record's plaintext (TLS_READ_MIN), so OpenSSL never keeps decrypted bytes that epoll
        cannot see, and records not yet read stay in the kernel, where level-triggered epoll reports them."""
        ctx = self.app.client_tls.context
        assert ctx is not None
        try:
            # Nothing was sent to this client yet, so the one byte goes out at once or the client is gone.
            if self.sock.send(b"S") != 1:
                raise OSError("could not send the SSLRequest answer")
            self.detach()
            self.sock = ctx.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as e:
            self.close(f"TLS setup failed: {e}")
            return
        self.handshaking = True
        self._apply_mask()

    def _tls_handshake(self) -> None:
        try:
            if not self.tls_handshake_step():
                return
        except (ssl.SSLError, OSError) as e:
            self.app.count_rejection("tls_handshake_fail")
            reason = ssl_reason(e)
            log.info("client %s: TLS handshake failed: %s", self.addr, reason)
            self.close(f"TLS handshake failed: {reason}")
            return
        self.handshaking = False
        self.tls = True
        self.app.count_tls()
        self._apply_mask()  # back to read interest only

    def on_readable(self) -> None:
        if self.state == READY:
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
            return
        if self.state == ADMIN:
            self.admin.on_readable()
            return
        self._login_read()

    def _consume(self, view: memoryview, n: int) -> None:
        """Frontend bytes after login: scan, then forward to the linked server or keep until one is."""
        s = self.server
        if s is None and not self.waiting and not self.raw and not self.pending:
            # Start of a transaction: take a server first so the bytes go straight through, unscanned
            # twice and uncopied, when one is free (the common case).
            if n == 5 and view[0] == 88:  # a lone Terminate
                self.close("client terminated")
                return
            if self.ps and view[0] == 80 and n > 10:
                second = 1 + _unpack(view, 1)[0]  # only Parse... Sync can be answered here: peek first
                if second < n and (view[second] == 80 or view[second] == 83) and self._parse_sync_locally(view):
                    return
            pool = self.pool
            assert pool is not None
            s = pool.checkout(self, self.worker)
            if s is not None and not self._link(s):
                s = None  # linked, but a parameter sync runs first: hold the bytes until it is done
        hold = s is None or s.state != 3 or (self.ps and bool(self.raw))
        if hold:
            if self.server is None and not self.waiting and not self.closed:
                self.need_server()  # held bytes and no request yet (defensive: should not happen)
            if self.ps:
                # Rewriting needs to know the server: scan once one is linked (see _server_ready).
                self.raw += view
                if len(self.raw) > HIGH_WATER:
                    self.pause_reading()
                return
        if self.ps:
            assert s is not None
            if view[0] == 81:
                if self._fast_query(view, n, s):
                    return
            elif not self.rq and self.expect <= 0 and not self.unsynced and not self.in_copy_in \
                    and self.synth_head is None and self._fast_batch(view, n, s):
                return
        if self.transaction_mode and not self.in_copy_in:  # (COPY data is not SQL)
            # The general path sees every byte (large messages stream through unread), so it looks for temp/
            # advisory here; the fast paths look at their own text or statement (see leaks.py).
            low = view.tobytes().lower()
            if lowered_may_leave_state(low) or (self.scan_tail and lowered_may_leave_state(self.scan_tail + low[:TAIL])):
                self.leaves = True
            self.scan_tail = low[-TAIL:]
        try:
            out = self.scanner.feed(view)
        except m.ProtocolViolation as e:
            self.fatal("08P01", f"protocol violation: {e}")
            return
        if self.ps:
            self._after_ps_scan(out, n)
            return
        if out is not None:
            if hold:
                self.pending += out  # scanned, sent when the server is ready
                if len(self.pending) > HIGH_WATER:
                    self.pause_reading()
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

    def _on_header(self, t: int, ln: int) -> None:
        if t == 81:  # Query
            self.expect += 1
            self.copy_window = True
            self.copy_syncs = 0
            self._mark_query()
        elif t == 83:  # Sync
            if self.in_copy_in:
                return  # PostgreSQL ignores Sync during COPY IN
            self.expect += 1
            self.unsynced = False
            if self.copy_window:
                self.copy_syncs += 1
        elif t == 70:  # FunctionCall
            self.expect += 1
        elif t == 99 or t == 102:  # CopyDone, CopyFail
            self.copy_window = False
            self.in_copy_in = False
        elif t in b"PBDEC":
            self.unsynced = True
            if t == 69:
                self.copy_window = True  # an Execute may start a COPY FROM STDIN
                self.copy_syncs = 0
            if t == 80 and ln > SMALL_LIMIT:
                self.named_parse = True  # too big to read: assume it named a statement
            self._mark_query()

    def _on_message(self, t: int, body: memoryview) -> bytes | None:
        if t == 81:  # a small simple query (transaction mode)
            self._on_header(t, 0)
            return self._refuse_listen(body) if body else None
        if t == 80:  # a small Parse (transaction mode, prepared_statements off)
            self._on_header(t, 0)
            if not body or body[0] != 0:
                self.named_parse = True
            return None
        # Terminate: never forwarded (the server stays with the pool).
        self.terminating = True
        return b""

    @staticmethod
    def _refuse_listen(body: memoryview) -> bytes | None:
        b0 = body[0] | 32
        if (b0 == 108 or body[0] in b" \t\r\n") and _LISTEN.match(body):
            return m.query(LISTEN_REFUSAL.decode())
        return None

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
        if may_leave_state(view[5:n]):
            self.leaves = True
        self._mark_query()
        self.copy_window = True
        self.copy_syncs = 0
        self.expect += 1
        s.bytes_out += n
        s.pstats.bytes_in += n
        s.write(view)
        return True

    def _fast_batch(self, view: memoryview, n: int, s: ServerConn) -> bool:
        """The batch drivers send for one statement, `[Parse] Bind [Describe portal] Execute Sync`, in one
        chunk with nothing else in flight and the statement already on the server (pgbench -M extended and
        -M prepared, psycopg, asyncpg, JDBC): rewrite the Bind, answer the Parse with a ParseComplete put in
        front of the server's reply, and let the server relay in plain mode, without the per-message
        expected-response queue. Anything else returns False (nothing changed) for the general path."""
        sc = self.scanner
        if n < 20 or sc.skip or sc.carry is not None or view[n - 5 : n] != m.SYNC:
            return False
        unpack = _unpack
        pos = 0
        t = view[0]
        parsed: ps.Statement | None = None
        pname = b""
        memo_body: bytes | None = None
        if t == 80:  # Parse: of a statement the pool has (the one this client sent last time: no lookup)
            pos = 1 + unpack(view, 1)[0]
            if pos + 5 > n:
                return False
            memo = self.last_parse
            if memo is not None and not memo[2].dead and view[5:pos] == memo[0]:
                parsed = memo[2]
                pname = memo[1]
            else:
                memo_body = bytes(view[5:pos])
                j = memo_body.find(b"\x00")
                k = memo_body.find(b"\x00", j + 1) if j >= 0 else -1
                if k < 0 or _LISTEN.match(memo_body[j + 1 : k]):
                    return False
                pool = self.pool
                assert pool is not None
                found = pool.ps_cache.peek(memo_body[j + 1 : k], memo_body[k + 1 :], self.planner_sig)
                if found is None or found.dead:
                    return False
                parsed = found
                pname = memo_body[:j]
            if parsed.name not in s.prepared or (pname and pname in self.named):
                return False  # to be parsed on this server, or a second Parse of a name (42P05): general path
            t = view[pos]
        if t != 66:
            return False
        bstart = pos
        bend = pos + 1 + unpack(view, pos + 1)[0]
        if bend + 5 > n:
            return False
        pos = bend
        if view[pos] == 68:  # Describe: the portal only (a statement Describe needs the queue)
            if view[pos + 5] != 80:
                return False
            pos += 1 + unpack(view, pos + 1)[0]
            if pos + 5 > n:
                return False
        if view[pos] != 69 or pos + 1 + unpack(view, pos + 1)[0] != n - 5:
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
            self.leaves = True
        # Committed: the same effects as the general path, message by message.
        prepared = s.prepared
        if parsed is not None:
            pool = self.pool
            assert pool is not None
            pool.ps_cache.count_hit(parsed)
            if memo_body is not None:
                self.last_parse = (memo_body, pname, parsed)
            self._define(pname, parsed)
            prepared.move_to_end(parsed.name)
            s.ps_hits += 1
            self.synth_head = m.PARSE_COMPLETE
        prepared.move_to_end(st.name)
        self.fast_bind = (st, sname)
        out = _renamed_bind(b, j, k, st.name) + view[bend:n]
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
                s.write(fresh.parse_msg + _renamed_bind(b, j, k, fresh.name) + rest)
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
            return self._refuse_listen(body)
        if t == 72:  # Flush
            return None
        if t == 88:  # Terminate
            self.terminating = True
            return b""
        if t == 83 and self.in_copy_in:
            return None  # PostgreSQL ignores Sync during COPY IN: no ReadyForQuery will answer it
        rq = self._track()
        if t == 66:  # Bind: portal, statement, ...
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
                return None if st is None else pre + _renamed_bind(b, j, k, st.name)
            st = self._lookup(b[j + 1 : k])
            if st is None:
                rq.append((ps.BIND, None))
                return None  # PostgreSQL answers 26000 itself: the client's name does not exist there
            if st.leaves:
                self.leaves = True
            pre = self._ensure(st)
            rq.append((ps.BIND, (st, b[j + 1 : k])))
            return pre + _renamed_bind(b, j, k, st.name)
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
                if _LISTEN.match(text):
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
        if t == 68:  # Describe
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
        if t == 67:  # Close
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
        return None

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

    def _mark_query(self) -> None:
        if self.query_start == 0.0:
            self.query_start = self.xact_start or self.loop.now
            if self.xact_start == 0.0:
                self.xact_start = self.query_start

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

    def copy_in_started(self) -> None:
        """PostgreSQL answered CopyInResponse. Until the client's CopyDone/CopyFail it ignores Sync and Flush,
        so Syncs the client sent after the Execute (tokio-postgres sends Bind, Execute, Sync, then the data)
        will get no ReadyForQuery: stop expecting one for them."""
        n = self.copy_syncs
        rq = self.rq
        pipelined = any(e[0] != ps.SYNC for e in list(rq)[1:]) if rq else self.expect > 1 + n
        if pipelined or not self.copy_window:
            # The client sent more than data behind the message that started this COPY before PostgreSQL
            # answered it (other requests, or the CopyDone already): which of its Syncs PostgreSQL ignores
            # cannot be told from the counters. This client keeps the server until it leaves, and the server
            # is closed then, so that no answer of its can reach another client.
            self.copy_confused = True
        self.copy_syncs = 0
        self.in_copy_in = self.copy_window
        self.fast_bind = None  # its Bind succeeded, and its Sync will get no ReadyForQuery (counted below)
        self.fast_redo = None
        if not n:
            return
        self.expect -= n
        if rq:
            keep = [rq.popleft()]  # the Execute being answered
            while rq and n:
                e = rq.popleft()
                if e[0] == ps.SYNC:
                    n -= 1
                else:
                    keep.append(e)
            rq.extendleft(reversed(keep))

    def forget_statements(self) -> None:
        """The server ran DISCARD ALL / DEALLOCATE ALL for us: PostgreSQL would have dropped them all."""
        self.named.clear()
        self.unnamed = None

    # ------------------------------------------------------------------ server side events
    def on_ready(self, status: int) -> None:
        """ReadyForQuery relayed from the linked server: account the query and maybe the transaction."""
        self.last_status = status
        pool = self.pool
        if pool is None:
            return
        st = pool.stats[self.worker.id]
        now = self.loop.now
        qs = self.query_start
        if qs:
            st.query_hist.record(int((now - qs) * 1e6))
            self.query_start = now if self.expect > 0 else 0.0
        if status == 73 and self.expect <= 0:
            self.xact_count += 1
            start = self.xact_start
            if start:
                st.xact_hist.record(int((now - start) * 1e6))
                self.xact_start = 0.0

    def on_server_error(self, body: memoryview) -> None:
        self.error_count += 1
        pool = self.pool
        if pool is not None:
            st = pool.stats[self.worker.id]
            st.errors += 1
            code = m.parse_fields(body).get("C", "XX000")[:2]
            st.errors_by_class[code] = st.errors_by_class.get(code, 0) + 1

    def param_changed(self, k: str, v: str) -> None:
        """The client changed a reported setting (SET): remember it for the next server it gets."""
        if k in self.want or k in TRACKED_PARAMS:
            self.want[k] = v
            self.want_key = tuple(self.want.items())
            if self.server is not None:
                self.server.synced_key = self.want_key

    def param_synced(self, k: str, v: str) -> None:
        """PostgreSQL's normalised form of a value we set for this client (e.g. 'ISO' -> 'ISO, MDY')."""
        if k in self.want and self.want[k] != v:
            self.want[k] = v
            self.want_key = tuple(self.want.items())

    # ------------------------------------------------------------------ pool interaction
    def need_server(self) -> None:
        pool = self.pool
        assert pool is not None
        s = pool.checkout(self, self.worker)
        if s is not None:
            self.attach_server(s)
        else:
            self.waiting = True

    def attach_server(self, s: ServerConn) -> None:
        """Link a server (already registered on this worker's loop) to this client."""
        if self.waiting:
            self.waiting = False
            pool = self.pool
            if pool is not None:
                waited = int((self.loop.now - self.wait_start) * 1e6)
                st = pool.stats[self.worker.id]
                st.wait_hist.record(waited)
                if waited > st.max_wait_us:
                    st.max_wait_us = waited
        if self.closed:
            self.worker.release_server(s, client_gone=True)
            return
        if self._link(s):
            self._server_ready()

    def _link(self, s: ServerConn) -> bool:
        """Make `s` this client's server; False while a parameter sync runs first (then _synced follows)."""
        self.server = s
        s.link(self)
        if s.ps_on:
            s.set_ps_mode(False)  # switched on by _track() when extended-protocol entries are in flight
        if s.synced_key != self.want_key:
            queries = s.sync_queries(self.want)
            if queries:
                s.run_internal(queries, self._synced)
                return False
            s.synced_key = self.want_key
        return True

    def _synced(self, ok: bool) -> None:
        s = self.server
        if s is None:
            return
        if not ok:
            err = s.internal_error or {}
            s.sync_failed()
            self.server = None
            s.client = None
            self.worker.release_server(s, client_gone=True)
            # As PostgreSQL refuses a startup packet with a bad setting: its own error, as FATAL.
            self.fatal(err.get("C", "22023"), err.get("M") or "could not apply connection parameters",
                       err.get("D"), err.get("H"))
            return
        s.synced_key = self.want_key
        self._server_ready()

    def _server_ready(self) -> None:
        s = self.server
        assert s is not None
        if self.state == LOGIN_WAIT:
            self._learn_spellings(s)
            self._finish_login()
        if self.pending:
            data = self.pending
            self.pending = bytearray()
            s.bytes_out += len(data)
            s.pstats.bytes_in += len(data)
            s.write(data)
        if self.raw:
            raw = self.raw
            self.raw = bytearray()
            self._consume(memoryview(raw), len(raw))
            if self.closed:
                return
        if self.read_paused and not s.out and not self.closed:
            self.resume_reading()
        if self._server_done(s):
            # Nothing to send (login parameters only, or everything answered locally).
            self.worker.release_server(s)

    def _server_done(self, s: ServerConn) -> bool:
        """Transaction mode, `s` is this client's and idle, everything sent to it was answered (no response is
        due, none queued) and on a message boundary: it may go back to the pool now. (A ReadyForQuery that
        ends the work is handled by the server's relay, which sets release_pending.)"""
        return (self.transaction_mode and self.server is s and s.state == 3 and s.txn_status == 73
                and self.expect <= 0 and not self.unsynced and not self.rq and not s.release_pending
                and not self.scanner.mid_message)

    # ------------------------------------------------------------------ cancel requests
    def cancel_requested(self) -> None:
        """A CancelRequest with this client's key (on this client's loop): cancel what it is doing now, as
        PostgreSQL would. A request still waiting for a server is answered here with 57014 and never reaches
        one; a running one is cancelled on its server, which is then closed instead of reused."""
        if self.closed or self.state != READY:
            return
        s = self.server
        if self.waiting or (s is not None and s.state == 4):  # waiting, or its server runs our sync first
            self._cancel_held()
            return
        if s is None or s.closed or not s.pid:
            log.debug("cancel request for %r: no query running", self)
            return
        s.cancelled = True
        send_cancel(s.addr, s.pid, s.secret)

    def _cancel_held(self) -> None:
        """Answer the oldest request held for a server with PostgreSQL's cancel error and drop its bytes; stop
        waiting when nothing else is held. A request not wholly received yet cannot be cut out: then the
        cancel is ignored, as PostgreSQL ignores one that arrives before the query."""
        held = self.raw if self.ps else self.pending
        end = _first_request_end(held)
        if end is None:
            log.debug("cancel request for %r: no whole request held", self)
            return
        del held[:end]
        if not self.ps:
            self.expect -= 1  # counted when it was scanned
            if not held:
                self.unsynced = False
        self.query_start = 0.0
        self.xact_start = 0.0
        self.write(m.error_response("57014", "canceling statement due to user request") + m.RFQ_IDLE)
        if held or self.raw or self.pending:
            return
        s = self.server
        if self.waiting:
            self.waiting = False
            pool = self.pool
            if pool is not None:
                pool.remove_waiter(self)
        elif s is not None:
            s.cancelled = False  # nothing of ours ran there
        if self.read_paused and not self.closed:
            self.resume_reading()

    def wait_timed_out(self) -> None:
        if not self.waiting or self.closed:
            return
        self.waiting = False
        pool = self.pool
        name = pool.name if pool else "?"
        paused = " (pool is paused)" if pool is not None and pool.paused else ""
        self.fatal(
            "53300",
            f"could not get a database connection from the pool {name} within query_wait_timeout{paused}",
        )

    def server_failed(self, error: bytes | None) -> None:
        """A server this client waited for (or was linked to) is gone: tell the client, then close."""
        if self.closed:
            return
        self.waiting = False
        if error:
            self.write(error)
            self.close("server connection failed")
        else:
            self.fatal("08006", "server closed the connection unexpectedly")

    # ------------------------------------------------------------------ login
    def _login_read(self) -> None:
        if self.handshaking:
            self._tls_handshake()
            return
        data = self.recv_or_close(TLS_READ_MIN, "client disconnected during login")
        if data is None:
            return
        buf = self.inbuf
        buf += data
        try:
            while buf and not self.closed:
                if self.state == STARTUP:
                    if len(buf) < 4:
                        return
                    (ln,) = m.I32.unpack_from(buf, 0)
                    if ln < m.MIN_STARTUP_LEN or ln > m.MAX_STARTUP_LEN:
                        raise m.ProtocolViolation("invalid length of startup packet")
                    if len(buf) < ln:
                        return
                    body = bytes(buf[4:ln])
                    del buf[:ln]
                    self._startup(body)
                elif self.state in (AUTH_MD5, AUTH_SASL, AUTH_SASL_FINAL, AUTH_CLEARTEXT):
                    if len(buf) < 5:
                        return
                    (ln,) = m.U32.unpack_from(buf, 1)
                    if buf[0] != 112 or ln < 4 or ln > 65536:  # 'p'
                        raise m.ProtocolViolation("expected a password message")
                    if len(buf) < ln + 1:
                        return
                    body = bytes(buf[5 : ln + 1])
                    del buf[: ln + 1]
                    self._password(body)
                else:
                    # Pipelined messages after login (sent before ReadyForQuery): keep for the relay.
                    self.raw += buf
                    buf.clear()
                    return
        except m.ProtocolViolation as e:
            self.app.count_rejection("invalid_startup" if self.state == STARTUP else "protocol_error")
            self.fatal("08P01", str(e))

    def _startup(self, body: bytes) -> None:
        code, params = m.parse_startup(body)
        if code == m.SSL_REQUEST or code == m.GSSENC_REQUEST:
            if self.inbuf:
                raise m.ProtocolViolation("unexpected data after encryption request")
            if code == m.SSL_REQUEST and not self.tls and not self.is_unix and self.app.client_tls.context is not None:
                self._start_tls()
                return
            self.write(b"N")  # as PostgreSQL on a Unix socket, or with TLS off (or asked twice)
            return
        if code == m.CANCEL_REQUEST:
            self.app.cancels.cancel(int(params["pid"]), int(params["secret"]))
            self.close("cancel request")
            return
        if not self.tls and not self.is_unix and self.app.client_tls.required:
            self.app.count_rejection("tls_required")
            self.fatal("28000", "SSL required", f"tls_mode is {self.app.client_tls.mode!r}: TCP clients must use TLS")
            return
        user = params.get("user", "")
        if not user:
            self.fatal("28000", "no PostgreSQL user name specified in startup packet")
            return
        self.user = user
        self.database = params.get("database") or user
        self.startup = params
        try:
            self.settings = startup_settings(params)
        except OptionsError as e:
            self.fatal("42601", str(e))
            return
        self.application_name = self.settings.get("application_name", "")
        if "replication" in params and params["replication"].lower() not in ("false", "0", "off", "no"):
            self.fatal("08P01", "replication connections are not supported by pgdoorman")
            return
        app = self.app
        if self.database in ("pgdoorman", "pgbouncer"):
            self.stored = app.config.general.admin_password if user == app.config.general.admin_username else ""
            self.admin = True
        else:
            pool_cfg = app.config.pools.get(self.database)
            if pool_cfg is None:
                self.fatal("3D000", f'no such database: "{self.database}"')
                return
            self.pool = app.pools.get((self.database, user))
            self.stored = self.pool.user_cfg.password if self.pool is not None else ""
        method = self._access_method()
        if method is None:
            return
        if method == "trust":
            log.info("client %s: %s@%s let in by a pg_hba trust rule", self.addr, user, self.database)
            self._authenticated()
            return
        self._begin_auth(force_md5=method == "md5")

    def _access_method(self) -> str | None:
        """general.hba / general.pg_hba for this connection: None if refused (the client was told), else
        "trust", "md5" or "scram" ("scram" also when no rules are configured: the stored password decides)."""
        app = self.app
        ip = None if self.is_unix else self.addr.rsplit(":", 1)[0]
        if app.hba_networks and not self.is_unix and not hba.allowed_by_networks(app.hba_networks, ip):
            self._hba_refuse(f'no hba entry for host "{ip}"')
            return None
        rules = app.hba_rules
        if rules is None:
            return "scram"
        stored = self.stored
        pool = self.pool
        known = self.user == app.config.general.admin_username if self.admin else pool is not None
        if not known:
            kind = "scram"  # an unknown user is read as a SCRAM user: that is the exchange it will get
        elif pool is not None and pool.cleartext_login:
            kind = "plain"  # JWT and PAM users answer with a clear-text password
        else:
            kind = "scram" if auth.is_scram_verifier(stored) else "md5" if auth.is_md5_hash(stored) else "plain"
        verdict = hba.choose(rules, kind, self.is_unix, self.tls, ip, self.database, self.user)
        if verdict == "trust" and not known:
            verdict = "scram"  # an unknown user: the usual exchange that can only fail says nothing more
        if verdict in ("scram", "md5", "trust"):
            return verdict
        where = "local connection" if self.is_unix else f'host "{ip}"'
        enc = "" if self.is_unix else (", SSL encryption" if self.tls else ", no encryption")
        if verdict == "reject":
            self._hba_refuse(f'pg_hba.conf rejects connection for {where}, user "{self.user}", '
                             f'database "{self.database}"{enc}')
        else:
            self._hba_refuse(f'no pg_hba.conf entry for {where}, user "{self.user}", database "{self.database}"{enc}')
        return None

    def _hba_refuse(self, message: str) -> None:
        self.app.count_rejection("hba")
        log.info("client %s refused: %s", self.addr, message)
        self.fatal("28000", message)

    def _begin_auth(self, force_md5: bool = False) -> None:
        """SCRAM, or md5 for an md5-hash password (or a plain-text one when pg_hba chose md5), or a clear-text
        password for a JWT user (the token)."""
        stored = self.stored
        pool = self.pool
        if pool is not None and pool.cleartext_login:
            self.state = AUTH_CLEARTEXT
            self.write(m.AUTH_CLEARTEXT)
            return
        if force_md5 and stored and not auth.is_md5_hash(stored):
            self.stored = stored = auth.md5_stored(self.user, stored)  # the plain-text password as md5 hashes it
        if stored and not auth.is_scram_verifier(stored) and auth.is_md5_hash(stored):
            self.md5_salt = os.urandom(4)
            self.state = AUTH_MD5
            self.write(m.auth_md5(self.md5_salt))
            return
        verifier: auth.ScramVerifier
        if stored and auth.is_scram_verifier(stored):
            verifier = auth.ScramVerifier.parse(stored)
        elif stored:
            pool = self.pool
            if pool is not None:
                if pool.scram_verifier is None:
                    pool.scram_verifier = auth.ScramVerifier.from_password(stored)
                verifier = pool.scram_verifier
            else:
                verifier = self.app.admin_verifier()
        else:
            # Unknown user (or no password): run a believable exchange that can only fail.
            seed = hmac.new(_FAKE_KEY, self.user.encode(), hashlib.sha256).digest()
            verifier = auth.ScramVerifier(4096, seed[:16], os.urandom(32), os.urandom(32))
        self.scram = auth.ScramServer(verifier)
        self.state = AUTH_SASL
        self.write(m.auth_sasl(auth.ScramServer.MECHANISMS))

    def _auth_failed(self) -> None:
        log.info("password authentication failed for user %r from %s", self.user, self.addr)
        self.fatal("28P01", f'password authentication failed for user "{self.user}"')

    def _password(self, body: bytes) -> None:
        st = self.state
        if st == AUTH_CLEARTEXT:
            pool = self.pool
            assert pool is not None
            secret = body.rstrip(b"\x00").decode("utf-8", "replace")
            service = pool.user_cfg.auth_pam_service
            if service:
                self.state = AUTH_WAIT  # the answer comes from a PAM thread; bytes sent meanwhile are kept
                loop = self.loop
                pam_auth.authenticate(service, self.user, secret,
                                      lambda why: loop.call_soon_threadsafe(self._cleartext_checked, "PAM", why))
                return
            assert pool.jwt_key is not None
            self._cleartext_checked("JWT", jwt_auth.verify(secret, pool.jwt_key, self.user))
            return
        if st == AUTH_MD5:
            ok = bool(self.stored) and auth.md5_verify(self.user, self.stored, self.md5_salt, body.rstrip(b"\x00"))
            if not ok:
                self._auth_failed()
                return
            self._authenticated()
            return
        scram = self.scram
        assert scram is not None
        try:
            if st == AUTH_SASL:
                mech, pos = m.read_cstr(body, 0)
                if len(body) < pos + 4:
                    raise m.ProtocolViolation("malformed SASLInitialResponse")
                (dl,) = m.I32.unpack_from(body, pos)
                data = body[pos + 4 : pos + 4 + dl] if dl >= 0 else b""
                reply = scram.client_first(mech.decode(errors="replace"), data)
                self.state = AUTH_SASL_FINAL
                self.write(m.auth_sasl_continue(reply))
            else:
                final = scram.client_final(body)
                if not self.stored:
                    raise auth.AuthError("no such user")
                self.write(m.auth_sasl_final(final))
                pool = self.pool
                if pool is not None and scram.client_key is not None and auth.is_scram_verifier(self.stored):
                    pool.scram_client_key = scram.client_key
                self._authenticated()
        except auth.AuthError:
            self._auth_failed()

    def _cleartext_checked(self, method: str, why: str | None) -> None:
        """The verdict on a clear-text password (`why` None: accepted), from JWT at once or from a PAM thread
        later (the client may have left meanwhile)."""
        if self.closed:
            return
        if why is not None:
            log.info("%s login of %r from %s refused: %s", method, self.user, self.addr, why)
            self._auth_failed()
            return
        self._authenticated()

    def _authenticated(self) -> None:
        self.scram = None
        self.write(m.AUTH_OK)
        if self.admin:
            self._start_admin()
            return
        pool = self.pool
        assert pool is not None
        self.transaction_mode = pool.transaction_mode
        self.state = LOGIN_WAIT
        known = self._want_settings()
        if not known or not self.transaction_mode:
            # Session mode keeps the server it gets now; in transaction mode a server checks settings whose
            # spelling (or validity) is not known yet, as PostgreSQL checks them at login.
            self.need_server()
        else:
            self._finish_login()
            if self.raw:
                raw = self.raw
                self.raw = bytearray()
                self._consume(memoryview(raw), len(raw))

    def _want_settings(self) -> bool:
        """Set `want`: the pool's reported defaults with the client's startup settings over them, spelled as
        PostgreSQL reports them where known. True when every value's spelling is known (no server needed)."""
        pool = self.pool
        assert pool is not None
        sp = pool.server_params
        known = sp is not None
        want = {k: v for k, v in sp.items() if k not in READ_ONLY} if sp is not None else {}
        if "application_name" not in self.settings and pool.pool_cfg.application_name is None:
            # What a direct connection without one shows; the server's own "pg_doorman" is for idle connections.
            want["application_name"] = ""
        spellings = pool.spellings
        for k, v in self.settings.items():
            c = spellings.get((k, v))
            if c is None:
                c = known_spelling(k, v)
                if c is None:
                    known = False
                    c = v
            want[k] = c
        self.want = want
        self.want_key = tuple(want.items())
        return known

    def _learn_spellings(self, s: ServerConn) -> None:
        """A server accepted this client's startup settings: remember how PostgreSQL reports each."""
        pool = self.pool
        assert pool is not None
        spellings = pool.spellings
        if len(spellings) > 4096:
            spellings.clear()  # many distinct values (unique application names): start over
        for k, v in self.settings.items():
            spellings[(k, v)] = s.params.get(k, v)

    def _finish_login(self) -> None:
        pool = self.pool
        assert pool is not None
        s = self.server
        if s is not None:
            # What the server reports now, our settings applied (ParameterStatus during the sync).
            reported = {k: v for k, v in s.params.items()}
        else:
            reported = dict(pool.server_params or {})
            for k in reported:
                if k in self.want:
                    reported[k] = self.want[k]
        want = self.want
        self.ps = self.transaction_mode and self.app.config.general.prepared_statements
        if not self.transaction_mode:
            self.scanner.table = CLIENT_SESSION_TABLE
        if self.ps:
            self.use_ps_scanner()
            self.planner_sig = tuple(want.get(k, "") for k in ps.PLANNER_PARAMS)
        out = [m.parameter_status(k, v) for k, v in reported.items()]
        if s is not None and not self.transaction_mode and self.app.config.general.session_real_backend_key \
                and s.pid and self.app.cancels.register_key(self, s.pid, s.secret):
            # Session mode: the client is this server's only user until it leaves; it may know its real key.
            self.pid, self.secret = s.pid, s.secret
        else:
            self.pid, self.secret = self.app.cancels.register(self)
        out.append(m.backend_key_data(self.pid, self.secret))
        out.append(m.RFQ_IDLE)
        self.write(b"".join(out))
        self.login_timer.cancel()
        self.state = READY
        if self.app.config.general.log_client_connections:
            log.info("client %s logged in to %s (%s mode)", self.addr, pool.name, pool.mode)
        if self.inbuf:
            self.raw += self.inbuf
            self.inbuf = bytearray()

    def use_ps_scanner(self) -> None:
        """Prepared-statement mode from now on: every extended-protocol message is read, responses queued."""
        self.scanner = Scanner(CLIENT_PS_TABLE, on_header=self._on_header_ps, on_message=self._on_message_ps)
        self.rq = deque()

    def _start_admin(self) -> None:
        self.login_timer.cancel()
        self.admin = self.app.make_admin(self)
        self.state = ADMIN

    # ------------------------------------------------------------------ teardown
    def on_backlog(self) -> None:
        s = self.server
        if s is not None:
            s.pause_reading()

    def on_drained(self) -> None:
        s = self.server
        if s is not None and s.read_paused and not s.closed:
            s.resume_reading()

    def on_close(self, reason: str) -> None:
        self.login_timer.cancel()
        self.worker.client_closed(self, reason)
