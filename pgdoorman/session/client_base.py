"""The bottom part of a client connection: its state, its link to a server (checkout, parameter sync, the
end of a request, cancel, wait timeouts) and its close. The other parts of ClientConn subclass it, one
file each: fastpath.py, login.py, and client.py on top. Its prepared-statement state is its Rewriter
(rewrite.py), an object of its own."""

from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from pgdoorman.core import leaks, sqllex, txstate
from pgdoorman.core import prepared as ps
from pgdoorman.core.params import READ_ONLY, TRACKED_PARAMS
from pgdoorman.net.conn import Conn
from pgdoorman.net.loop import RECV_BUFFER_SIZE
from pgdoorman.net.tls import TLS_READ_MIN
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.framing import Scanner
from pgdoorman.session import listening, reports, txresets
from pgdoorman.session.rewrite import Rewriter
from pgdoorman.session.shared import EMPTY
from pgdoorman.session.slow_checkout import SLOW_CHECKOUT_US, log_slow_checkout
from pgdoorman.session.states import (
    CLIENT_TABLE,
    DIRTY_CURSOR,
    DIRTY_PREPARE,
    DIRTY_RESTORE,
    DIRTY_SESSION,
    DIRTY_SET,
    DIRTY_TEMP,
    READY,
    STARTUP,
)

if TYPE_CHECKING:
    from pgdoorman.core.pool import Pool
    from pgdoorman.session.client_auth import ClientAuth
    from pgdoorman.session.host import Host
    from pgdoorman.session.server import ServerConn

log = logging.getLogger("pgdoorman.client")

# Server dirt that a transaction-mode client's check at the end of its transaction looks at (see session_check).
_CHECKED = DIRTY_SET | DIRTY_TEMP | DIRTY_CURSOR | DIRTY_PREPARE
_PINNING = DIRTY_TEMP | DIRTY_CURSOR | DIRTY_PREPARE
DISCARD_SEQUENCES_QUERY = m.query(leaks.DISCARD_SEQUENCES)

_unpack = m.U32.unpack_from
assert RECV_BUFFER_SIZE >= TLS_READ_MIN  # see ClientConn._start_tls


class ClientBase(Conn):
    """The state of one client connection and its link to a server: what every part of ClientConn reads."""

    __slots__ = (
        "worker", "app", "state", "inbuf", "pool", "server", "user", "database", "startup", "settings", "want",
        "want_key", "expect", "unsynced", "transaction_mode", "waiting", "wait_start", "handed_at", "pending",
        "scanner", "terminating", "pid", "secret", "client_auth", "stored", "addr", "connect_time",
        "query_count", "xact_count", "error_count", "login_timer", "admin", "application_name", "is_unix",
        "last_status", "xact_start", "query_start", "ps", "rw", "raw",
        "named_parse", "copy_window", "copy_syncs", "in_copy_in",
        "tls", "handshaking", "leaves", "scan_tail", "copy_confused",
        "begin_held", "answered", "window", "copy_pre", "copy_risk",
        "want_base", "pinned", "checked_xact", "probing", "lsn", "customs", "seq_reader", "resets", "reset_names",
    )

    def __init__(self, sock: socket.socket, worker: Host, addr: str, is_unix: bool = False) -> None:
        super().__init__(sock, worker.loop)
        self.worker = worker
        self.app = worker.app
        self.addr = addr
        self.is_unix = is_unix
        self.state = STARTUP
        self.inbuf: bytes | bytearray = EMPTY  # what the login reads (a bytearray while it does)
        self.pool: Pool | None = None
        self.server: ServerConn | None = None
        self.user = ""
        self.database = ""
        self.startup: dict[str, str] = {}
        self.settings: dict[str, str] = {}  # the settings the startup packet asks for (params.startup_settings)
        self.want: dict[str, str] = {}
        self.want_base: dict[str, str] = {}  # `want` at login: what RESET returns to (core/txstate.py)
        self.pinned = ""  # what keeps this client on its server between transactions ('' for nothing)
        self.checked_xact = -1  # the server's xact_count at the last check (session_check)
        self.probing: ServerConn | None = None  # linked, answering the idle check first (_probe)
        self.want_key: tuple[tuple[str, str], ...] = ()
        self.expect = 0
        self.unsynced = False
        self.transaction_mode = True
        self.waiting = False
        self.wait_start = 0.0
        self.handed_at = 0.0  # when a server last came to it after a wait (login.py: cancel_requested)
        self.pending: bytes | bytearray = EMPTY  # scanned, held until a server is ready (a bytearray then)
        self.scanner = Scanner(CLIENT_TABLE, on_header=self._on_header, on_message=self._on_message,
                               budget=self.loop.mem)
        self.terminating = False
        self.pid = 0
        self.secret = 0
        self.client_auth: ClientAuth | None = None  # while authenticating (client_auth.py)
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
        self._init_relay_state()
        self.login_timer = worker.loop.call_later(60.0, self._login_timeout)

    def _init_relay_state(self) -> None:
        """The relay's bookkeeping: prepared statements, COPY, the fast paths, TLS, leaks (part of __init__)."""
        self.ps = False  # transparent prepared statements active (transaction mode)
        # Its prepared-statement state and rewriting, both directions (rewrite.py; started at login).
        self.rw = Rewriter(self)
        self.raw: bytes | bytearray = EMPTY  # received but not yet scanned (waiting for a server, prepared mode)
        self.named_parse = False  # a named Parse was forwarded untouched (prepared_statements off)
        # Statements not kept by the pooler (session mode, prepared_statements off) whose text resets a setting:
        # name -> their steps, noted where they are bound (txresets.parsed); None until the first one.
        self.reset_names: dict[bytes, list[tuple[str, int]]] | None = None
        self.copy_window = 0  # COPY FROM STDIN (copy_in_started): 0, or 81/69 since the last Query/Execute, no
        # CopyDone/CopyFail yet (+ 1000 once CopyData followed)
        self.copy_syncs = 0  # Syncs counted in that window
        self.copy_pre = 0  # of which before its first CopyData
        self.copy_risk = False  # a Sync after CopyData was taken as ignored by a COPY (Rewriter.copy_started)
        self.window: bytearray | None = None  # plain relay: the open extended-protocol window's types (tracking.py)
        self.in_copy_in = False  # PostgreSQL is in COPY IN for us: it ignores Sync
        self.tls = False  # the client's socket is an ssl.SSLSocket (handshake done)
        self.handshaking = 0  # wrapped, handshake not finished yet: login.REQUESTED (SSLRequest) or DIRECT
        # Transaction mode: what this client sent may leave temp objects, advisory locks or settings on its
        # server (leaks.PINS | leaks.SETTINGS, see leaks.py; checked at the end of the transaction), and the
        # last bytes read, lower-cased, for a keyword split between two reads.
        self.leaves = 0
        self.scan_tail = b""
        self.seq_reader = False  # its SQL has named currval or lastval (leaks.READS_SEQUENCES; ClientBase._link)
        self.copy_confused = False  # see on_server_error
        # A deferred BEGIN (txbegin.py): the Query messages to send ahead of this client's next request, and how
        # many of them make the server's transaction fail (a request cancelled while it waited for a server).
        self.begin_held: tuple[bytes, int] | None = None
        self.answered = 0  # ReadyForQuery messages relayed so far (the janitor's query_timeout tells requests apart)
        self.lsn: listening.ListenState | None = None  # transaction mode LISTEN (listening.py), once used
        self.customs: tuple[str, ...] = ()  # custom settings its SQL named, not yet read back defined (txstate.py)
        self.resets: txresets.STEPS | None = None  # what a request's text resets (txresets.py)

    @property
    def status(self) -> str | None:
        """The state as SHOW CLIENTS names it: 'waiting' (queued for a server), 'active' (linked to a server, or
        in a transaction whose BEGIN is deferred), 'idle' (logged in, between transactions), 'login' (still
        logging in), or None for admin sessions and closed clients."""
        if self.admin is not None or self.closed:
            return None
        if self.waiting:
            return "waiting"
        if self.server is not None or self.begin_held is not None:
            return "active"  # holding a server, or told it is in a transaction (a deferred BEGIN)
        return "idle" if self.state == READY else "login"

    # Implemented by the parts above this one (client.py, login.py); declared here for the parts below.
    def _on_header(self, t: int, ln: int) -> None:
        raise NotImplementedError

    def _on_message(self, t: int, body: memoryview) -> bytes | None:
        raise NotImplementedError

    def _consume(self, view: memoryview, n: int) -> None:
        raise NotImplementedError

    def _server_ready(self) -> None:
        raise NotImplementedError

    def _login_timeout(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<client {self.user}@{self.database} {self.addr}>"

    def fatal(self, sqlstate: str, message: str, detail: str | None = None, hint: str | None = None) -> None:
        """Send a FATAL ErrorResponse and close."""
        if not self.closed:
            self.write(m.error_response(sqlstate, message, "FATAL", detail, hint))
            self.close_orderly(f"{sqlstate}: {message}")

    def _mark_query(self) -> None:
        if self.query_start == 0.0:
            self.query_start = self.loop.now
            if self.xact_start == 0.0:
                self.xact_start = self.query_start

    def copy_in_started(self) -> None:
        """PostgreSQL answered CopyInResponse: the Syncs it will ignore are not waited for (Rewriter.copy_started,
        both relays)."""
        self.rw.copy_started()

    # ------------------------------------------------------------------ server side events
    def ready(self, status: int, completed: int) -> bool:
        """ReadyForQuery relayed from the linked server, after `completed` CommandCompletes: one request fewer in
        flight; account the queries and maybe the transaction. True when the server may go back to the pool:
        transaction mode, idle, nothing in flight and no message half-read (PostgreSQL still reads the rest of a
        message the client is sending: the server stays with it until then). Runs once per request."""
        self.expect = expect = self.expect - 1
        self.answered += 1
        self.query_count += completed
        rw = self.rw
        if rw.fast_bind is not None:  # (fast_redo is set only with fast_bind)
            rw.fast_bind = None
            rw.fast_redo = None
        self.last_status = status
        if self.lsn is not None:
            listening.ready(self, status)
        pool = self.pool
        if pool is None:
            return False  # (not linked to a pool: no server to give back)
        qs = self.query_start
        if expect > 0:  # more requests in flight: the next one's time starts now
            if qs:
                now = self.loop.now
                pool.stats[self.worker.id].query_hist.record(int((now - qs) * 1e6))
                self.query_start = now
            return False
        unsynced = self.unsynced
        if not unsynced:
            self.copy_window = 0  # everything is answered: no COPY can start from what it noted
        xact_end = status == 73 and self.xact_start
        if qs or xact_end:
            st = pool.stats[self.worker.id]
            now = self.loop.now
            if qs:
                self.query_start = 0.0
                if qs == xact_end:  # a one-statement transaction: the same time for both, in one call
                    self.xact_start = xact_end = 0.0
                    st.query_hist.record_with(st.xact_hist, int((now - qs) * 1e6))
                else:
                    st.query_hist.record(int((now - qs) * 1e6))
            if xact_end:
                st.xact_hist.record(int((now - self.xact_start) * 1e6))
                self.xact_start = 0.0
        if status != 73:
            return False
        self.copy_risk = False
        self.xact_count += 1
        if unsynced or not (self.transaction_mode or (s := self.server) is not None and s.dirty & DIRTY_RESTORE):
            return False  # (session mode: only to set the startup settings a RESET took again, resets.py)
        sc = self.scanner
        return not sc.skip and not sc.carry  # (Scanner.mid_message, without a call)

    def gave_back(self, s: ServerConn, gone: bool) -> int:
        """The worker takes `s` back from this client (it is done, or it left if `gone`): unlink it, and say
        what this client may have left on it (DIRTY_* bits for the cleanup), forgotten here."""
        if self.server is s:
            self.server = None
        if not self.transaction_mode:
            return DIRTY_SESSION if gone else 0
        dirty = 0
        if self.named_parse:
            dirty = DIRTY_PREPARE  # prepared_statements off: a named Parse stays on the server
            self.named_parse = False
        if self.leaves:
            dirty |= self._leaves_dirt(s)
        if gone and self.pinned:
            self.pinned = ""
        return dirty

    def _leaves_dirt(self, s: ServerConn) -> int:
        """What `leaves` means for the server (DIRTY_* bits, and `seq_client`), forgotten here."""
        bits = self.leaves
        self.leaves = 0
        if bits & leaks.SEQUENCES:
            s.seq_client = self
        if bits & leaks.READS_SEQUENCES:
            self.seq_reader = True
        return (DIRTY_TEMP if bits & leaks.PINS else 0) | (DIRTY_SET if bits & leaks.SETTINGS else 0)

    # ------------------------------------------------------------------ session state (transaction mode)
    def session_check(self, s: ServerConn) -> bool:
        """Transaction mode, `s` is this client's, idle, and about to go back to the pool. When this transaction
        may have changed settings or left what cannot move, read it back first (one housekeeping query,
        core/txstate.py): the settings then follow this client, and what cannot move pins it to `s`. True:
        the worker must not take `s` back now (the check runs, or the client stays pinned)."""
        if self.leaves:
            s.dirty |= self._leaves_dirt(s)
        d = s.dirty & _CHECKED
        if self.pinned:
            if s.xact_count == self.checked_xact:
                return True  # nothing ran since the last check
        elif not d:
            return False
        pins = bool(self.pinned) or bool(d & _PINNING)
        reset = bool(d & DIRTY_SET) and not pins
        q = txstate.check_query(bool(d & DIRTY_SET), pins, reset, txstate.customs_to_read(self.want, self.customs))
        seen = dict(self.want)  # the reported values as the client knows them (the RESET will not tell it)
        s.run_internal([q], lambda ok: self._checked(s, ok, reset, seen), rows=True)
        return True

    def _checked(self, s: ServerConn, ok: bool, reset: bool, seen: dict[str, str]) -> None:
        rows, s.internal_rows = s.internal_rows or [], None
        if s.client is not self or self.closed:
            s.held_ps = None
            return
        pins = ""
        session: list[tuple[str, str]] = []
        if ok:
            pool = self.pool
            login_user = pool.server_params.get("session_authorization") if pool and pool.server_params else None
            session, pins, customs = txstate.read_rows(rows, login_user)
            if s.dirty & DIRTY_SET:
                want = txstate.followed(self.want_base, session, customs)
                if reports.waiting(s):
                    reports.tell(s, self, want)  # the request's reports as PostgreSQL sends them, its ReadyForQuery
                    seen = want  # (told there: _follow only takes them as the client's settings)
                self._follow(want, s.params, seen)
                self.customs = tuple(n for n in self.customs if customs.get(n) is None)
            if reset:
                s.dirty &= ~DIRTY_SET
                s.extra.clear()
                s.synced_key = None
            if not pins:
                s.dirty &= ~_PINNING  # nothing is left of what these bits were about
        else:
            # What the session holds is unknown (a statement_timeout shorter than the check, say): keep it
            # all on this server, as a dedicated session would, and check again after the next transaction.
            log.warning("client %s (%s@%s): session state check failed: %s; it keeps its server", self.addr,
                        self.user, self.database, (s.internal_error or {}).get("M"))
            pins = "unchecked"
        if reports.waiting(s):
            reports.tell(s, self, None)  # (nothing read back: as the server reported them)
        self.checked_xact = s.xact_count
        if pins and self.pool is not None and self.pool.pin_refuse and "temp_path" not in pins:
            # Not recognised up front (a function did it, a query too large to read): cleaned, not kept. (But not
            # a search_path creating in pg_temp: cleaning leaves it, and the next CREATE would leak: txstate.py.)
            log.warning("client %s (%s@%s) left %s on its server, which transaction_pinning: refuse does not "
                        "keep: cleaned", self.addr, self.user, self.database, pins)
            pins = ""
        if pins:
            if not self.pinned and self.pool is not None:
                self.pool.stats[self.worker.id].pins += 1
            self.pinned = pins
            if ok and s.dirty & DIRTY_SET:
                # RESET on PostgreSQL returns to the client's startup values, on `s` to the pool's: sync.
                s.extra = {k: v for k, v in session if k not in s.params}
                s.extra.update((k, c) for k, c in customs.items() if c is not None)
                s.synced_key = None
                if not self._link(s):
                    return  # _synced sends what the client sent meanwhile
            self._server_ready()  # what the client sent meanwhile
            return
        self.pinned = ""
        self.server = None
        s.client = None
        held, self.leaves = self.leaves, 0  # what text sent meanwhile may leave: not on `s`, on the next server
        self.worker.release_server(s, client=self)
        self.leaves |= held
        if (self.pending or self.raw) and not self.closed and not self.waiting:
            self.need_server()  # sent meanwhile: held for the next server

    def refuse_pinning(self, text: bytes | memoryview, parse: bool = False) -> str | None:
        """Every small simple query and Parse text: the custom settings it names are noted (read back at the end
        of the transaction, core/txstate.py), and a query's resets (a prepared statement's are noted where it is
        bound: Rewriter._leaves); and with transaction_pinning: refuse, the statement to run instead of one that
        would pin this client (it raises 0A000 on PostgreSQL), or None to run the text as it is."""
        self.note_settings(text, resets=not parse, counted=True)
        pool = self.pool
        if pool is None or not pool.pin_refuse:
            return None
        why = sqllex.pinning_text(text)
        if why is None:
            return None
        pool.stats[self.worker.id].refused += 1
        return txstate.refusal(why, pool.name)

    def note_settings(self, text: bytes | bytearray | memoryview, low: bytes | None = None,
                      resets: bool = True, counted: bool = False) -> None:
        """The custom settings (`myapp.x`) `text` names: read back when its transaction ends (txstate.py); and
        the startup settings it may reset, put back if it runs in a transaction block (txresets.py)."""
        names = sqllex.setting_names_text(text, low)
        if names:
            self.customs = txstate.noted(self.customs, names, self.want)
        if resets:
            txresets.note(self, text, low, counted)  # (counted: a simple query, among those in flight already)

    def note_resets(self, st: ps.Statement) -> None:
        assert st.resets is not None
        txresets.keep(self, st.resets)

    def request_index(self, counted: bool) -> int:
        """The `answered` count before the answer of the request being read: after those in flight (`counted`:
        a simple query, already among them; a Bind's or Parse's request is counted at its Sync)."""
        return self.answered + self.expect - counted

    def note_names(self, names: tuple[str, ...]) -> None:
        self.customs = txstate.noted(self.customs, list(names), self.want)

    def _follow(self, want: dict[str, str], reported: dict[str, str], seen: dict[str, str]) -> None:
        """The settings this client's session holds now: replayed on the next server it gets. A reported one
        whose value differs from the last the client was told (a RESET of a startup setting: the server went
        back to the pool's value) is reported now, as PostgreSQL would have at the RESET."""
        news = [m.parameter_status(k, v) for k, v in want.items()
                if k in reported and k not in READ_ONLY and seen.get(k, v) != v]
        if news:
            self.write(b"".join(news))
        if want != self.want:
            self.want = want
            self.want_key = tuple(want.items())
            if self.ps:
                self.rw.sig = tuple(want.get(k, "") for k in ps.PLANNER_PARAMS)

    @property
    def in_flight(self) -> bool:
        """Something sent to the server is not answered yet, or a message of ours is half-sent: a server
        still working for this client cannot go to another (the counters, the prepared-statement queue,
        a COPY whose Syncs cannot be told apart)."""
        return self.expect > 0 or self.unsynced or self.scanner.mid_message or bool(self.rw.rq) or self.copy_confused

    def listen_statement(self, body: memoryview) -> bytes | None:  # (Relay, for the rewriter: listening.py)
        return listening.in_request(self, body)

    def listen_bound(self, st: ps.Statement) -> None:  # (Relay, for the rewriter: listening.py)
        listening.bound(self, st)

    def on_server_error(self, body: memoryview) -> None:
        if self.in_copy_in:
            self.in_copy_in = False  # the COPY failed: PostgreSQL answers the client's Syncs from now on
        if self.copy_risk:
            # A COPY that swallowed a Sync sent after CopyData failed (or something failed after it): PostgreSQL
            # may have read that Sync after the failure and will answer it, or not. This client keeps its server
            # until it leaves, and the server is closed then, so that no answer of its can reach another client.
            self.copy_confused = True
        self.error_count += 1
        pool = self.pool
        if pool is not None:
            st = pool.stats[self.worker.id]
            st.errors += 1
            code = m.parse_fields(body).get("C", "XX000")[:2]
            st.errors_by_class[code] = st.errors_by_class.get(code, 0) + 1

    def param_changed(self, k: str, v: str) -> None:
        """The client changed a reported setting (SET): remember it for the next server it gets."""
        if self.pool is not None and self.pool.pool_cfg.log_client_parameter_status_changes:
            log.info("client %s (%s@%s): %s changed to %r", self.addr, self.user, self.database, k, v)
        if (k in self.want or k in TRACKED_PARAMS) and self.want.get(k) != v:
            self.want = want = {**self.want, k: v}  # `want` is shared with other clients (shared.py): a copy
            self.want_key = tuple(want.items())
        if k in self.want and self.server is not None:
            self.server.synced_key = self.want_key

    def param_synced(self, k: str, v: str) -> None:
        """PostgreSQL's normalised form of a value we set for this client (e.g. 'ISO' -> 'ISO, MDY')."""
        if k in self.want and self.want[k] != v:
            self.want = want = {**self.want, k: v}  # shared: a copy (see param_changed)
            self.want_key = tuple(want.items())

    # ------------------------------------------------------------------ pool interaction
    def need_server(self) -> None:
        pool = self.pool
        assert pool is not None
        s: ServerConn | None = self.worker.checkout(pool, self)
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
                self.handed_at = now = self.loop.now
                waited = int((now - self.wait_start) * 1e6)
                st = pool.stats[self.worker.id]
                st.wait_hist.record(waited)
                if waited > st.max_wait_us:
                    st.max_wait_us = waited
                if waited >= SLOW_CHECKOUT_US:
                    log_slow_checkout(self.addr, pool, s.pid, waited, now)
        if self.closed:
            self.worker.release_server(s, client_gone=True)
            return
        if self._link(s):
            self._server_ready()

    def _link(self, s: ServerConn, request: bytes | bytearray | memoryview = b"") -> bool:
        """Make `s` this client's server; False while an idle check or a parameter sync runs first (then
        _probed or _synced follows). `request`: the start of what the client sends first."""
        self.server = s
        check_at = s.check_at  # set when it was parked idle (Pool.release) and server_idle_check_timeout is on
        if check_at:
            s.check_at = 0.0
            if self.loop.now > check_at:  # idle longer than the timeout, straight from the pool: probe it
                self._probe(s)
                return False
        s.link(self)
        if s.ps_on or self.rw.rq:  # on while expected responses are queued (Rewriter._track, tracking.start)
            s.set_ps_mode(bool(self.rw.rq))
        # Another client's sequence values are not for one that reads them (leaks.py).
        if discard := (sc := s.seq_client) is not None and sc is not self and s.pool.discard_sequences and (
                self.seq_reader or leaks.reads_sequences(request or self.pending or self.raw)):
            s.seq_client = None
        if s.synced_key != self.want_key:
            queries = s.sync_queries(self.want, self.want_base if self.transaction_mode else None)
            if queries:
                s.run_internal([leaks.DISCARD_SEQUENCES, *queries] if discard else queries, self._synced)
                return False
            s.synced_key = self.want_key
        if self.begin_held is not None:
            self._send_begin(s, DISCARD_SEQUENCES_QUERY if discard else b"")  # (one write for both)
        elif discard:
            s.send_ahead(DISCARD_SEQUENCES_QUERY, 1, 0, in_txn=False)
        return True

    def _probe(self, s: ServerConn) -> None:
        """`s` sat idle longer than server_idle_check_timeout: before this client's bytes go to it, an empty
        query checks that it is alive, answered within connect_timeout. A server that fails it is closed and
        this client asks for another (server_failed); what it sent meanwhile is held, as during a sync."""
        s.link(self)
        self.probing = s
        s.timer = self.loop.call_later(s.pool.connect_timeout, lambda: self._probe_timed_out(s))
        s.run_internal([";"], lambda ok: self._probed(s, ok))

    def _probe_timed_out(self, s: ServerConn) -> None:
        if self.probing is s and not s.closed:
            s.close("idle check: no answer within connect_timeout")

    def _probed(self, s: ServerConn, ok: bool) -> None:
        if self.probing is not s:
            return
        if not ok:  # nothing healthy fails `;`
            s.close("idle check failed")  # -> server_failed: this client asks for another server
            return
        self.probing = None
        s.timer.cancel()
        if self.closed or s.client is not self:
            self.worker.release_server(s)  # the client left meanwhile (on_close unlinked it)
        elif self._link(s):
            self._server_ready()

    def _send_begin(self, s: ServerConn, discard: bytes = b"") -> None:
        """The deferred BEGIN goes ahead of this client's bytes (after `discard`, DISCARD SEQUENCES, if given);
        its answer is swallowed (ServerConn.send_ahead)."""
        held = self.begin_held
        assert held is not None
        self.begin_held = None
        s.bytes_out += len(held[0])  # (the pool's bytes received were counted when the client sent it)
        s.send_ahead(discard + held[0], 1 + held[1] + (1 if discard else 0), held[1])

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
        if self.begin_held is not None:
            self._send_begin(s)
        self._server_ready()

    def resume_held(self) -> None:
        """The rewriter held messages of this client (`raw`) until what it sent before them was answered: now it
        is (from the server's reply handler: fed again from the loop, after it)."""
        self.loop.call_soon(self._resume_held)

    def _resume_held(self) -> None:  # ClientConn's (client.py)
        raise NotImplementedError

    def _server_done(self, s: ServerConn) -> bool:
        """Transaction mode, `s` is this client's and idle, everything sent to it was answered (no response is
        due, none queued) and on a message boundary: it may go back to the pool now. (A ReadyForQuery that
        ends the work is handled by the server's relay, which sets release_pending.)"""
        return (self.transaction_mode and self.server is s and s.state == 3 and s.txn_status == 73
                and self.expect <= 0 and not self.unsynced and not self.rw.rq and not s.release_pending
                and not (sc := self.scanner).skip and not sc.carry)  # (Scanner.mid_message, without a call)

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
        s = self.probing
        if s is not None and error is None:  # the server failed its idle check: never mind, another one
            self.probing = None
            log.info("server %s (pid %d) of %s failed its idle check: replaced for client %s", s.addr, s.pid,
                     s.pool.name, self.addr)
            self.need_server()
            return
        if error:
            self.write(error)
            self.close_orderly("server connection failed")
        else:
            self.fatal("08006", "server closed the connection unexpectedly")

    # ------------------------------------------------------------------ back-pressure and teardown
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
        s = self.probing
        if s is not None and self.server is s:
            # Its idle check goes on: _probed gives the server back to the pool when it is answered.
            self.server = None
            s.client = None
        if self.scanner.held or self.scanner.streaming:
            self.scanner.reset()  # no longer counted against max_memory_usage; a streamed message failed
        self.worker.client_closed(self, reason)
