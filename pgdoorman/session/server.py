"""A server (PostgreSQL backend) connection: non-blocking connect, startup and authentication as a client
of PostgreSQL, then the relay of responses to the linked client, watching only ReadyForQuery,
CommandComplete, ParameterStatus and ErrorResponse. It also runs the pooler's own housekeeping queries
(parameter sync at checkout, cleanup at checkin) with their responses swallowed.

States: CONNECTING -> LOGIN -> IDLE <-> ACTIVE, with INTERNAL while a housekeeping query runs.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from pgdoorman.core import leaks, params
from pgdoorman.core import prepared as ps
from pgdoorman.net.conn import AGAIN, Conn
from pgdoorman.protocol import auth
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.framing import Scanner
from pgdoorman.session import reports, txresets
from pgdoorman.session.server_dial import dial_socket
from pgdoorman.session.server_login import READY, REFUSED, BackendLogin
from pgdoorman.session.server_prepared import SERVER_TABLE
from pgdoorman.session.server_wrap import FATAL_SEVERITY, ServerWrapped
from pgdoorman.session.states import (
    ACTIVE,
    CLOSED,
    CONNECTING,
    DIRTY_CURSOR,
    DIRTY_LISTEN,
    DIRTY_PREPARE,
    DIRTY_RESTORE,
    DIRTY_SESSION,
    DIRTY_SET,
    DIRTY_TEMP,
    IDLE,
    INTERNAL,
    LOGIN,
    STATE_NAMES,
)

if TYPE_CHECKING:
    from pgdoorman.core.pool import Pool
    from pgdoorman.session.host import Host
    from pgdoorman.session.peer import ClientPeer

log = logging.getLogger("pgdoorman.server")
# run_internal(extended=True): our statement (closed first too: one an error left behind would refuse the Parse,
# 42P05) and portal, bound, run and closed, then Sync.
_OURS = b"pgdoorman_internal\x00"
_OURS_CLOSE = m.msg(b"C", b"S" + _OURS)
_OURS_RUN = (m.msg(b"B", _OURS + _OURS + b"\x00" * 6) + m.msg(b"E", _OURS + b"\x00" * 4) + m.msg(b"C", b"P" + _OURS)
             + _OURS_CLOSE + m.SYNC)


_ids = iter(range(1, 1 << 62))
# A value no setting can have (a NUL cannot be sent): `extra` entries whose value on the server is unknown.
UNKNOWN = "\x00"
# Lengths (with NUL) of the CommandComplete tags _note_tag acts on: SET, RESET, LISTEN, PREPARE, DISCARD ALL,
# DECLARE CURSOR, DEALLOCATE ALL. Most tags ("SELECT 1") are ruled out by length before any copy.
_TAG_LENS = frozenset({4, 6, 7, 8, 12, 15})
# CommandComplete tags of DDL, by their first five bytes (no other tag starts like these).
_DDL_TAGS = frozenset((b"CREAT", b"ALTER", b"DROP "))
# ... and of what inserts rows, which may draw sequence values (a column's DEFAULT nextval()).
_SEQ_TAGS = frozenset((b"INSER", b"COPY ", b"MERGE"))


class ServerConn(ServerWrapped):
    __slots__ = (
        "id", "worker", "pool", "client", "extra", "extra_undo", "synced_key", "pid", "secret",
        "created", "idle_since", "check_at", "epoch", "dirty", "scanner",
        "internal_left", "internal_error", "internal_done", "internal_rows", "deferred",
        "timer", "addr", "xact_start", "query_count", "counted", "xact_count",
        "bytes_in", "bytes_out", "pstats", "reset_at", "untold", "seq_client", "held_ps",
    )

    def __init__(self, sock: socket.socket, worker: Host, pool: Pool, addr: str) -> None:
        super().__init__(sock, worker.loop)
        self.id = next(_ids)
        self.worker = worker
        self.pool = pool
        self.addr = addr
        self.state = CONNECTING
        self.client: ClientPeer | None = None
        self.params: dict[str, str] = {}
        self.extra: dict[str, str] = {}  # settings we set that PostgreSQL does not report (params.sync_calls)
        self.extra_undo: dict[str, str] | None = None
        self.synced_key: tuple[tuple[str, str], ...] | None = None
        self.pid = 0
        self.secret = 0
        self.created = time.monotonic()
        self.idle_since = self.created
        self.check_at = 0.0  # (Pooled.check_at: server_idle_check_timeout's probe)
        self.epoch = pool.epoch
        self.dirty = 0
        # Whose nextval() may have left values for currval() here (ClientBase._link; a departed one's kept till then)
        self.seq_client: ClientPeer | None = None
        self.scanner = Scanner(SERVER_TABLE, on_message=self._on_message)
        self.scanner.stream_min = worker.app.config.general.message_size_to_be_stream
        self.inbuf = bytearray()
        self.release_pending = False
        self.internal_left = 0
        self.internal_error: dict[str, str] | None = None
        self.internal_done: Callable[[bool], None] | None = None
        self.internal_rows: list[list[str | None]] | None = None  # DataRows of a housekeeping query, if kept
        self.deferred: bytearray | None = None
        self.txn_status = 73  # 'I'
        self.login: BackendLogin | None = BackendLogin(pool)  # None once logged in
        self.timer = worker.loop.call_later(pool.connect_timeout, self._connect_timed_out)
        self.fatal_forwarded = False
        self.reply = None
        self.xact_start = 0.0
        self.query_count = 0
        self.reset_at = -1  # query_count at the last RESET or DISCARD ALL (_on_parameter)
        self.untold: tuple[ClientPeer, dict[str, str]] | None = None  # session mode: (client, what it last heard)
        self.held_ps: reports.Held | None = None  # this request's ParameterStatus, held (session/reports.py)
        self.counted = 0  # query_count when the linked client was last told (ClientBase.ready)
        self.xact_count = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.pstats = pool.stats[worker.id]
        self.scanner.on_stream = self.pstats.streamed
        self.prepared: OrderedDict[bytes, None] = OrderedDict()  # DOORMAN_n names this backend holds
        self.evicted: list[bytes] = []  # to DEALLOCATE at the next checkin
        self.unsure: set[bytes] = set()  # DOORMAN_n names it may hold (rewrite_replies.Held)
        self.ps_cap = pool.server_ps_cache_size
        self.ps_hits = 0
        self.ps_misses = 0
        self.ps_on = False
        # PostgreSQL skips the client's messages until its next Sync (an extended-protocol error came before
        # that Sync reached our queue): what the client sends meanwhile is skipped too.
        self.skipping = False
        self._plain_handler = self.scanner.on_message  # the same object: set_ps_mode compares them
        self._ps_handler = self._on_message_ps
        self._init_dial()
        self._init_wrapped()

    # ------------------------------------------------------------------ connecting and login (server_dial.py)
    @classmethod
    def open(cls, worker: Host, pool: Pool, fallback: tuple[str, int] | None = None) -> ServerConn:
        """A new server connection for `pool` on `worker`'s loop, connecting (to `fallback`, an address, if
        given); a name is resolved off the loop. OSError: no socket could be made."""
        host, port = fallback or (pool.pool_cfg.server_host, pool.pool_cfg.server_port)
        unix = host.startswith("/")
        s = cls(dial_socket(host), worker, pool, os.path.join(host, f".s.PGSQL.{port}") if unix else f"{host}:{port}")
        s.dial(host, port)
        return s

    def on_event(self, mask: int) -> None:
        if mask == 1 and self.state == ACTIVE:  # the relay's read, here rather than in on_readable: a call less
            try:
                n = self.sock.recv_into(self.loop.rbuf)
            except AGAIN:
                return
            except OSError as e:
                self.close(f"read failed: {e}")
                return
            if not n:
                self.close("server closed the connection")
                return
            self.bytes_in += n
            self.pstats.bytes_out += n
            out = self.scanner.feed(self.loop.rview[:n])
            c = self.client
            if out is not None and c is not None:
                rw = c.rw
                if rw.synth_head is None:
                    c.write(out)
                else:  # a fast batch's ParseComplete goes in front of its first response
                    c.write(rw.after_synth(out))
            if self.release_pending:
                self.release_pending = False
                self.worker.release_done(self)
            return
        if self.tls_phase == 2:
            self._tls_handshake()
            return
        if self.state == CONNECTING and mask & 2:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.connect_failed(err, later=False)  # the next address, or the connection fails
                return
            self.state = LOGIN
        Conn.on_event(self, mask)

    def _login_read(self) -> None:
        if self.tls_phase == 2:
            self._tls_handshake()
            return
        try:
            # One byte while the SSLRequest is answered: whatever follows 'S' is the TLS handshake.
            data = self.sock.recv(1 if self.tls_phase == 1 else 65536)
        except AGAIN:
            return
        except OSError as e:
            self.connect_error = m.error_response("08006", f"server connection failed: {e}", "FATAL")
            self.close(str(e))
            return
        if not data:
            if self.connect_error is None:
                self.connect_error = m.error_response(
                    "08006", "server closed the connection unexpectedly during login", "FATAL")
            self.close("server closed during login")
            return
        if self.tls_phase == 1:
            self._tls_answer(data[0])
            return
        buf = self.inbuf
        buf += data
        try:
            while (msg := m.pop_message(buf)) is not None:
                t, body = msg
                try:
                    done = self._login_message(t, body)
                except auth.AuthError as e:
                    self.connect_error = m.error_response("28000", f"server authentication failed: {e}", "FATAL")
                    self.close(f"server authentication failed: {e}")
                    return
                if self.closed or self.state == CONNECTING:  # closed, or starting again with TLS
                    return
                if done:
                    self._login_complete()
                    return
        except m.ProtocolViolation as e:  # a length word no PostgreSQL sends
            # Not PostgreSQL speaking (or a broken one): its clients get an error, not a traceback.
            self.connect_error = m.error_response("08P01", f"invalid message from server {self.addr}: {e}", "FATAL")
            self.close(f"invalid message during login: {e}")

    def _login_message(self, t: int, body: bytes) -> bool:
        login = self.login
        assert login is not None
        out, outcome = login.feed(t, body)
        if out:
            self.write(out)
        if outcome == READY:
            return True
        if outcome == REFUSED:  # forward PostgreSQL's own refusal to whoever waits
            pool = self.pool
            f = login.error
            if f.get("C") == "28000" and not self.tls and not self.tls_retried and pool.server_tls.mode == "allow" \
                    and isinstance(self.target, tuple):
                log.info("server %s refused a plain connection for %s (%s): retrying with TLS", self.addr,
                         pool.name, f.get("M"))
                self._retry_with_tls()
                return False
            self.connect_error = m.msg(b"E", body)
            log.warning("server %s refused login for %s: %s %s", self.addr, pool.name, f.get("C"), f.get("M"))
            self.close(f"login refused: {f.get('M')}")
        return False

    def _login_complete(self) -> None:
        self.state = IDLE
        self.inbuf = bytearray()
        login = self.login
        assert login is not None
        self.params, self.pid, self.secret = login.params, login.pid, login.secret
        self.login = None
        pool = self.pool
        pool.connected(self)  # (a connected server's slot from here: one that closes while search_path is read too)
        if pool.transaction_mode and params.server_major(self.params.get("server_version", "")) < 18:
            # Before 18 PostgreSQL does not report search_path: a role's or database's default that puts pg_temp
            # first would make a client's CREATE TABLE temporary unseen (login.py checks its first transaction).
            self.run_internal(["SHOW search_path"], self._search_path_read, rows=True)
            return
        self._logged_in()

    def _search_path_read(self, ok: bool) -> None:
        rows, self.internal_rows = self.internal_rows or [], None
        if ok and rows and rows[0]:
            self.pool.default_search_path = rows[0][0] or ""
        self._logged_in()

    def _logged_in(self) -> None:
        self.timer.cancel()
        pool = self.pool
        if pool.server_params is None:
            pool.server_params = dict(self.params)
        log.debug("server %s connected for %s (pid %d)", self.addr, pool.name, self.pid)
        self.worker.server_ready(self)

    # ------------------------------------------------------------------ relay
    def on_readable(self) -> None:
        st = self.state
        if st == ACTIVE:
            self.on_event(1)  # (the relay's read lives in on_event)
        elif st == INTERNAL:
            self._internal_read()
        elif st in (CONNECTING, LOGIN):
            self._login_read()
        elif st == IDLE:
            self._idle_read()

    def _on_message(self, t: int, body: memoryview) -> bytes | None:
        if t == 90:  # ReadyForQuery
            st = body[0]
            c = self.client
            held = None
            if c is not None and c.rw.held_error is not None:
                resend, held = c.rw.redo_fast_batch(st, self)
                if resend is not None:
                    self.txn_status = st
                    self.write(resend)
                    return b""  # the batch was sent again: its own ReadyForQuery will follow
            self.txn_status = st
            if st == 73:
                self.xact_count += 1
            if c is not None and c.ready(st, self.query_count - self.counted):
                self.release_pending = True
            self.counted = self.query_count
            if self.held_ps is not None:  # (after a SET or RESET, or a listening client's: session/reports.py)
                return self._ready_reported(c, st, body, held)
            if st == 73 and c is not None and (lsn := c.lsn) is not None and (lsn.queue or lsn.notified):
                # Notifications that came during the request: PostgreSQL sends them before this ReadyForQuery.
                return (held or b"") + lsn.before_ready(c, m.msg(b"Z", body))
            if held is not None:
                return held + m.msg(b"Z", body)
        elif t == 67:  # CommandComplete
            self.query_count += 1
            b0 = body[0]
            if len(body) in _TAG_LENS and b0 in b"SPDLUR":
                self._note_tag(bytes(body[:-1]))
            elif b0 in b"ICM" and bytes(body[:5]) in _SEQ_TAGS:  # (a DEFAULT nextval() is not in the text)
                c = self.client
                if c is not None and c.transaction_mode:
                    self.seq_client = c
            if b0 in b"CDA" and bytes(body[:5]) in _DDL_TAGS:
                # DDL may change what a statement parsed before means (types, columns, result rows), and the
                # pool's statements are parsed once per server: from now on each text is parsed afresh, as a
                # client's own Parse would be on PostgreSQL.
                self.pool.ps_cache.invalidate()
        elif t == 83:  # ParameterStatus
            return self._on_parameter(body)
        elif t == 69:
            return self._on_error(body)
        elif t == 71:  # CopyInResponse
            c = self.client
            if c is not None:
                c.copy_in_started()
        return None

    def _ready_reported(self, c: ClientPeer | None, st: int, body: memoryview, held: bytes | None) -> bytes:
        """The ReadyForQuery (status `st`) of a request whose reports were held (`held`: what goes before them):
        the reports, then the ReadyForQuery, or nothing yet (it waits for the settings to be read back); a
        listening client's notifications go before the reports, as PostgreSQL sends them."""
        pre = reports.at_ready(self, c, st, body)
        if pre is None:
            return held or b""
        if st == 73 and c is not None and (lsn := c.lsn) is not None and (lsn.queue or lsn.notified):
            return (held or b"") + lsn.before_ready(c, pre + m.msg(b"Z", body))
        return (held or b"") + pre + m.msg(b"Z", body)

    def _on_parameter(self, body: memoryview) -> bytes | None:
        """A ParameterStatus on the relay: passed on (None), or, when it is a RESET's report of the pool's value
        of a setting the client's session started with, replaced: on PostgreSQL that RESET returns to the
        client's startup value and reports it (if the client was last told another; else nothing). The pooler
        puts the value back on the server before the client's next statement (session/resets.py, or
        transaction mode's read-back). PostgreSQL reports what changed just before the ReadyForQuery: a report
        of the request in which a RESET ran (reset_at, later than `counted`), with no SET after it, is the
        RESET's. (A set_config() after the RESET to the pool's own value is mistaken for it: the read-back
        then tells the client the value its session holds, after the ReadyForQuery.) A report of the pool's
        value after a SET may be `SET name TO DEFAULT`: doubtful. While a request's reports are held
        (session/reports.py) this one is too (b"")."""
        k, v = m.parse_parameter_status(body)
        told = self.params.get(k)
        self.params[k] = v
        self.synced_key = None
        c = self.client
        if c is None:
            return None
        held = self.held_ps
        heard = c.want.get(k, told)
        rep: bytes | None = None
        base: str | None = None
        if (k in c.settings or k == "application_name") and c.want.get(k, v) != v \
                and v == (self.pool.server_params or {}).get(k):  # a startup setting back at the pool's value
            if self.reset_at > self.counted:
                # PostgreSQL reports the startup value here when the client was last told another: so does the
                # pooler (the read-back after the transaction then finds nothing new to tell).
                rep = b""
                base = c.want_base.get(k)
                if base is not None and base != c.want.get(k):
                    rep = m.parameter_status(k, base)
                else:
                    base = None
                if not c.transaction_mode and told is not None:
                    if self.untold is None or self.untold[0] is not c:  # (not another client's, left behind)
                        self.untold = (c, {})
                    self.untold[1][k] = base or c.want.get(k, told)  # the value the client last heard
                txresets.reported(c, k)  # (put back at once if a transaction block goes on)
                if held is None:
                    self.held_ps = held = reports.Held()  # (its ReadyForQuery may wait: txresets.py)
            else:
                if not c.transaction_mode:
                    # After a SET: `SET name TO DEFAULT` (PostgreSQL: the startup value), or a SET to that value. The
                    # settings are read back after the transaction (resets.py): one the session does not hold is set
                    # to its startup value again.
                    self.dirty |= DIRTY_RESTORE
                if held is not None:
                    held.doubt = True
        if held is None and c.lsn is not None:
            self.held_ps = held = reports.Held()  # (notifications may come: PostgreSQL sends them first)
        if held is not None:
            return reports.hold(held, k, v if rep is None else base, rep is not None, heard)
        if rep is not None:
            if base is not None:
                c.param_synced(k, base)  # what the client's session holds now (not yet set on this server)
            return rep
        c.param_changed(k, v)
        return None

    def _on_error(self, body: memoryview) -> bytes | None:
        """An ErrorResponse relayed to the linked client (None: as it is; b"": held; else the replacement)."""
        if body[:7] in FATAL_SEVERITY:
            self.fatal_forwarded = True  # PostgreSQL ends the session: the client needs nothing more from us
        c = self.client
        if c is None:
            return None
        if c.rw.fast_bind is None:
            c.on_server_error(body)
            return None
        # In a fast batch: as the general path does for its Bind.
        out = c.rw.fast_error(self, body)
        if out != b"":  # not held for a redo (Rewriter.redo_fast_batch)
            c.on_server_error(body)
        return out

    def _note_tag(self, tag: bytes) -> None:
        if tag == b"SET" or tag == b"RESET":
            self.dirty |= DIRTY_SET  # transaction mode reads the settings back at its end (txstate.py)
            self._settings_unknown()
            if self.client is not None:
                reports.start(self, self.client)
            if tag == b"RESET":
                self._reset_seen()
                self.reset_at = self.query_count
            else:
                self.reset_at = -1  # a report after this may be the SET's own value
        elif tag == b"PREPARE":
            self.dirty |= DIRTY_PREPARE
        elif tag == b"DECLARE CURSOR":
            self.dirty |= DIRTY_CURSOR
        elif tag == b"LISTEN":
            self.dirty |= DIRTY_LISTEN
        elif tag == b"DISCARD ALL":
            self.dirty = DIRTY_SET  # settings back to the session's start: read back at the transaction's end
            self.extra.clear()
            self.synced_key = None
            self._statements_gone()
            self._reset_seen()
            self.reset_at = self.query_count
            if self.client is not None:
                reports.start(self, self.client)
        elif tag == b"DEALLOCATE ALL":
            self.dirty &= ~DIRTY_PREPARE
            self._statements_gone()

    def _reset_seen(self) -> None:
        c = self.client
        if c is not None and not c.transaction_mode:
            self.dirty |= DIRTY_RESTORE  # session mode: the startup settings are set again (resets.py)

    def _settings_unknown(self) -> None:
        """The client changed settings with SQL: what we set there (`extra`) may no longer hold, so the next
        sync sets or resets each of them again."""
        self.synced_key = None
        for k in self.extra:
            self.extra[k] = UNKNOWN

    def _statements_gone(self) -> None:
        self.prepared.clear()
        self.unsure.clear()
        self.evicted.clear()
        c = self.client
        if c is not None:
            c.rw.forget_statements()

    # ------------------------------------------------------------------ housekeeping queries
    def run_internal(self, queries: list[str], done: Callable[[bool], None], rows: bool = False,
                     extended: bool = False) -> None:
        """Send our own simple queries; swallow their responses (their DataRows kept in `internal_rows` if
        `rows`; a session client's notifications passed on); call done(ok) after the last Z. `extended`: each
        one a statement of its own, sent as a named statement and portal, closed after it: a simple query would
        drop the client's unnamed statement and portal (session mode, where the server is the client's:
        session/resets.py)."""
        log.debug("server %s (pid %d): housekeeping %r", self.addr, self.pid, queries)
        self.state = INTERNAL
        self.internal_left = len(queries)
        self.internal_error = None
        self.internal_rows = [] if rows else None
        self.internal_done = done
        self.inbuf = bytearray()
        if extended:
            self.write(b"".join(_OURS_CLOSE + m.msg(b"P", _OURS + m.cstr(q) + b"\x00\x00") + _OURS_RUN for q in queries))
        else:
            self.write(b"".join(m.query(q) for q in queries))

    def _internal_read(self) -> None:
        data = self.recv_or_close(65536, "server closed the connection")
        if data is None:
            return
        buf = self.inbuf
        buf += data
        if self.reply is not None:
            self.reply += data
        try:
            self._internal_messages(buf)
        except m.ProtocolViolation as e:  # a length word no PostgreSQL sends
            self.close(f"invalid message from server during housekeeping: {e}")

    def _internal_messages(self, buf: bytearray) -> None:
        while (msg := m.pop_message(buf)) is not None:
            t, body = msg
            if t == 90:
                self.txn_status = body[0]
                self.internal_left -= 1
            elif t == 69:
                self.internal_error = m.parse_fields(body)
            elif t == 68:
                if self.internal_rows is not None:
                    self.internal_rows.append(m.parse_data_row(body))
            elif t == 83:
                k, v = m.parse_parameter_status(body)
                self.params[k] = v
                c = self.client
                if c is not None:
                    c.param_synced(k, v)
            elif t == 65 and (c := self._session_client()) is not None:
                c.write(m.msg(b"A", body))  # (another session's NOTIFY for this session's LISTEN)
            if self.internal_left == 0:
                if buf and not (buf[0] == 65 and self._notified_after(buf)):
                    self.close("unexpected data after housekeeping query")
                    return
                done = self.internal_done
                self.internal_done = None
                self.state = ACTIVE if self.client is not None else IDLE
                ok = self.internal_error is None
                if not ok:
                    err = self.internal_error or {}
                    log.warning("housekeeping query on %s failed: %s %s", self.addr, err.get("C"), err.get("M"))
                if done is not None:
                    done(ok)
                return

    def sync_queries(self, want: dict[str, str], base: dict[str, str] | None = None) -> list[str]:
        """set_config() calls that make this server match a client's settings (see params.sync_calls)."""
        before = dict(self.extra)
        calls = params.sync_calls(want, self.params, self.extra, base)
        if not calls:
            return []
        self.extra_undo = before
        return ["SELECT " + ", ".join(calls)]

    def sync_failed(self) -> None:
        """The sync query failed: PostgreSQL rolled all of its set_config() calls back."""
        if self.extra_undo is not None:
            self.extra = self.extra_undo
            self.extra_undo = None
        self.synced_key = None

    def cleanup_queries(self, in_txn: bool) -> list[str]:
        """What to run before this server may serve another client: ROLLBACK if a transaction is open,
        resets for the session state the client changed, DEALLOCATE of evicted prepared statements."""
        q = []
        if in_txn:
            q.append("ROLLBACK")
        parts = []
        if self.pool.cleanup and self.dirty & DIRTY_SESSION:
            # Protocol-level prepared statements, temp tables, advisory locks, settings: a session client
            # may have left anything behind, and DISCARD ALL takes it all away.
            parts.append("DISCARD ALL")
            self.evicted.clear()
        elif self.pool.cleanup:
            d = self.dirty
            if d & DIRTY_SET:
                parts.append("RESET ROLE; RESET SESSION AUTHORIZATION; RESET ALL")
            if d & DIRTY_PREPARE:
                parts.append("DEALLOCATE ALL")
                self.evicted.clear()
            if d & DIRTY_CURSOR:
                parts.append("CLOSE ALL")
            if d & DIRTY_LISTEN:
                parts.append("UNLISTEN *")
            if d & DIRTY_TEMP:
                parts.append(leaks.CLEANUP)
        if parts:
            q.append("; ".join(parts))
        if self.evicted:
            q.extend(ps.deallocate_queries(self.evicted))
        return q

    def after_cleanup(self) -> None:
        self.evicted.clear()
        if self.pool.cleanup and self.dirty & (DIRTY_PREPARE | DIRTY_SESSION):
            self.prepared.clear()
            self.unsure.clear()
            if self.dirty & DIRTY_SESSION:
                self.extra.clear()
                self.synced_key = None
        if self.pool.cleanup:
            if self.dirty & DIRTY_SET:
                self.extra.clear()
                self.synced_key = None
            self.dirty = 0

    # ------------------------------------------------------------------ state moves made by other modules
    @property
    def status(self) -> str:
        """The state as SHOW SERVERS names it: 'login', 'idle', 'active', 'used' (housekeeping), 'closed' (or
        'unknown' for a state this version does not name)."""
        st = self.state
        return STATE_NAMES[st] if 0 <= st < len(STATE_NAMES) else "unknown"

    @property
    def active_since(self) -> float | None:
        """Monotonic time the current piece of work started (the linked client's transaction), if any."""
        c = self.client
        return c.xact_start if c is not None and c.xact_start else None

    def link(self, client: ClientPeer) -> None:
        """Lent to `client` (its relay runs now)."""
        self.client = client
        self.counted = self.query_count
        self.state = ACTIVE
        self.skipping = False

    def park(self) -> None:
        """Back from a client, clean: idle (the pool's list is the pool's business)."""
        self.state = IDLE
        self.release_pending = False
        self.skipping = False

    def retire(self, reason: str) -> None:
        """Close a server already taken out of its pool's idle list."""
        self.state = CLOSED
        self.close(reason)

    def on_close(self, reason: str) -> None:
        prev = self.state
        self.state = CLOSED
        self.timer.cancel()
        if self.stall_timer is not None:
            self.stall_timer.cancel()
        if self.scanner.streaming:
            self.scanner.reset()  # a streamed message failed
        self.worker.server_closed(self, prev, reason)
