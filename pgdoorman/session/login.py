"""A client's login, before any query: TLS, the startup packet, pg_hba, authentication (md5, SCRAM, clear
text checked by PAM or as a JWT) and the settings sync that ends it with ReadyForQuery.

`ClientLogin` is a part of `ClientConn` kept in its own file ;
`ClientConn` owns the socket and the relay that follows.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import TYPE_CHECKING

from pgdoorman import hba, jwt_auth, pam_auth, talos
from pgdoorman.core import leaks
from pgdoorman.core import prepared as ps
from pgdoorman.core.params import (
    READ_ONLY,
    OptionsError,
    isolation_refusal,
    known_spelling,
    startup_isolation,
    startup_settings,
)
from pgdoorman.net.tls import ALPN, TLS_READ_MIN, ssl_reason
from pgdoorman.protocol import auth
from pgdoorman.protocol import messages as m
from pgdoorman.session import shared, tracking, unlocks
from pgdoorman.session.client_auth import CHECK, FAILED, PENDING, ClientAuth
from pgdoorman.session.fastpath import FastPaths
from pgdoorman.session.shared import EMPTY, NO_TIMER
from pgdoorman.session.states import (
    ADMIN,
    AUTH,
    AUTH_WAIT,
    CLIENT_SESSION_READ_TABLE,
    CLIENT_SESSION_TABLE,
    LOGIN_WAIT,
    READY,
    STARTUP,
)
from pgdoorman.session.txbegin import ABORT_QUERY

if TYPE_CHECKING:
    from pgdoorman.core.pool import Pool
    from pgdoorman.session.server import ServerConn

if TYPE_CHECKING:
    pass

log = logging.getLogger("pgdoorman.client")
# A cancel within this many seconds of a waiting request's hand-over to a server is sent again a fifth of it later
# if that request still runs (ClientConn._cancel_again).
CANCEL_RACE = 0.5
# ClientConn.handshaking: after an SSLRequest, or a direct TLS handshake (the client's first byte a TLS record's).
REQUESTED = 1
DIRECT = 2
TLS_HANDSHAKE = 0x16  # the content type of a TLS handshake record


class ClientLogin(FastPaths):
    __slots__ = ()

    def _login_done(self) -> None:
        """Logged in (or into the admin console): the login timer goes, with what it holds."""
        self.login_timer.cancel()
        self.login_timer = NO_TIMER

    def _login_timeout(self) -> None:
        if self.state < READY:
            self.fatal("08P01", "authentication timeout")

    # ------------------------------------------------------------------ TLS
    def _start_tls(self, direct: bool = False) -> None:
        """SSLRequest accepted: answer 'S' on the plain socket, then wrap it and wait for the ClientHello.
        `direct`: the client began with its ClientHello (PostgreSQL 17's `sslnegotiation=direct`), no 'S'.

        After the handshake the socket is read as any other: every read asks for at least a whole TLS
        record's plaintext (TLS_READ_MIN), so OpenSSL never keeps decrypted bytes that epoll
        cannot see, and records not yet read stay in the kernel, where level-triggered epoll reports them."""
        ctx = self.app.client_tls.context
        assert ctx is not None
        try:
            # Nothing was sent to this client yet, so the one byte goes out at once or the client is gone.
            if not direct and self.sock.send(b"S") != 1:
                raise OSError("could not send the SSLRequest answer")
            self.detach()
            self.sock = ctx.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as e:
            self.close(f"TLS setup failed: {e}")
            return
        self.handshaking = DIRECT if direct else REQUESTED
        wait = self.app.tls_limiter.delay()
        if wait > 0:  # tls_rate_limit_per_second: the client waits for our part of the handshake
            self.loop.call_later(wait, self._apply_mask)
            return
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
        sock = self.sock
        if self.handshaking == DIRECT and not (isinstance(sock, ssl.SSLSocket) and sock.selected_alpn_protocol() == ALPN):
            # As PostgreSQL 17: a direct handshake must have agreed on "postgresql" (a client of another
            # protocol that reached this port); closed without a word but TLS's close_notify, as there.
            self.app.count_rejection("tls_handshake_fail")
            self.close_orderly("direct TLS connection without ALPN protocol negotiation")
            return
        self.handshaking = 0
        self.tls = True
        self.app.count_tls()
        self._apply_mask()  # back to read interest only

    # ------------------------------------------------------------------ login
    def _login_read(self) -> None:
        if self.handshaking:
            self._tls_handshake()
            return
        if self.inbuf is EMPTY and not self.tls and self._direct_tls():  # (EMPTY: nothing read yet)
            return
        data = self.recv_or_close(TLS_READ_MIN, "client disconnected during login")
        if data is None:
            return
        buf = self.inbuf
        if isinstance(buf, bytearray):
            buf += data
        else:
            buf = self.inbuf = bytearray(data)
        try:
            while buf and not self.closed:
                if self.state == STARTUP:
                    if len(buf) < 4:
                        return
                    (ln,) = m.I32.unpack_from(buf, 0)
                    if buf[0] == TLS_HANDSHAKE and not self.tls:
                        self._refuse_direct_tls()  # (where TLS is on for it, _direct_tls took it before the read)
                        return
                    if ln < m.MIN_STARTUP_LEN or ln > m.MAX_STARTUP_LEN:
                        raise m.ProtocolViolation("invalid length of startup packet")
                    if len(buf) < ln:
                        return
                    body = bytes(buf[4:ln])
                    del buf[:ln]
                    self._startup(body)
                elif self.state == AUTH:
                    if len(buf) < 5:
                        return
                    (ln,) = m.U32.unpack_from(buf, 1)
                    if buf[0] != 112:  # 'p'
                        a = self.client_auth
                        what = "SASL" if a is not None and a.sasl else "password"
                        raise m.ProtocolViolation(f"expected {what} response, got message type {buf[0]}")
                    if ln < 4 or ln > 65536:
                        raise m.ProtocolViolation("expected a password message")
                    if len(buf) < ln + 1:
                        return
                    body = bytes(buf[5 : ln + 1])
                    del buf[: ln + 1]
                    self._password(body)
                else:
                    # Pipelined messages after login (sent before ReadyForQuery): keep for the relay.
                    self._keep_raw(buf)
                    buf.clear()
                    return
        except m.ProtocolViolation as e:
            self.app.count_rejection("invalid_startup" if self.state == STARTUP else "protocol_error")
            if isinstance(e, m.UnsupportedProtocol):
                self.write(e.answer())
                self.close_orderly(str(e))
            else:
                self.fatal("08P01", str(e))

    def _direct_tls(self) -> bool:
        """The first read of a TCP connection where TLS is on: True when it began with a TLS handshake record
        (PostgreSQL 17's direct TLS, no SSLRequest first) and its handshake was started. Peeked, so that the
        ClientHello stays in the socket for OpenSSL; a startup packet's first byte is always 0 (its length is
        below 2**24), so nothing a PostgreSQL client sends first is taken for one. Elsewhere (a Unix socket,
        TLS off) there is no peek: the startup packet's reading finds the record (_refuse_direct_tls)."""
        if self.is_unix or self.app.client_tls.context is None:
            return False
        try:
            first = self.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as e:
            self.close(f"read failed: {e}")
            return True
        if not first:
            self.close("client disconnected during login")
            return True
        if first[0] != TLS_HANDSHAKE:
            return False
        self._start_tls(direct=True)
        return True

    def _refuse_direct_tls(self) -> None:
        """A TLS handshake record where TLS is not on for this client (a Unix socket, TLS off): closed without a
        word, as PostgreSQL closes it."""
        self.app.count_rejection("invalid_startup")
        self.close_orderly("direct TLS on a Unix socket" if self.is_unix else "direct TLS connection with TLS off")

    def _startup(self, body: bytes) -> None:
        known = shared.startup(body)  # the same packet as another client's: its parse, shared
        code, params = (m.I32.unpack_from(body)[0], known[0]) if known is not None else m.parse_startup(body)
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
            self.close_orderly("cancel request")  # the sender waits for an end of file, not a reset (tcp_so_linger)
            return
        unknown = [k for k in params if k.startswith("_pq_.")]
        if code & 0xFFFF or unknown:  # a newer minor version or protocol options: 3.0 and none, as PostgreSQL 15 says
            self.write(m.negotiate_protocol_version(unknown))
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
        if known is not None:
            self.startup, self.settings = known
        else:
            try:
                settings = startup_settings(params)
            except OptionsError as e:
                self.fatal(e.sqlstate, str(e), hint=e.hint)
                return
            self.startup, self.settings = shared.keep_startup(body, params, settings)
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
                self.fatal("3D000", f'database "{self.database}" does not exist')  # (PostgreSQL's words)
                return
            self.pool = app.pools.get((self.database, user))
            self.stored = self.pool.user_cfg.password if self.pool is not None else ""
            if user == talos.USERNAME and app.config.talos.keys:
                self.pool, self.stored = None, ""  # a token as its password (_check_cleartext)
            elif pool_cfg.auth_query is not None and (self.pool is None or self.pool.dynamic):
                self._look_up()  # not a static user: auth_query finds its password (static users win)
                return
        self._choose_method()

    def _look_up(self) -> None:
        """auth_query: the stored password from the cache now, or from an executor thread later (meanwhile
        the client waits in AUTH_WAIT; its bytes are kept). Not found or failed: the unknown user's exchange."""
        loop = self.loop
        found = self.app.auth_query_lookup(self.database, self.user,
                                           lambda pool, stored: loop.call_soon_threadsafe(self._looked_up, pool, stored))
        if found is None:
            self.pool = None
            self.state = AUTH_WAIT
            return
        self._looked_up(*found)

    def _looked_up(self, pool: Pool | None, stored: str) -> None:
        if self.closed:
            return
        self.pool, self.stored = pool, stored
        self.state = STARTUP
        self._choose_method()

    def _choose_method(self) -> None:
        method = self._access_method()
        if method is None:
            return
        if method == "trust":
            log.info("client %s: %s@%s let in by a pg_hba trust rule", self.addr, self.user, self.database)
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
        password for a JWT or PAM user (see client_auth.py)."""
        pool = self.pool
        a = ClientAuth(self.user, self.stored, cleartext=pool.cleartext_login if pool is not None else self._talos(),
                       force_md5=force_md5, plain_verifier=self._plain_verifier,
                       end_point=self.app.client_tls.end_point if self.tls else None)
        self.client_auth = a
        self.state = AUTH
        self.write(a.request())

    def _plain_verifier(self) -> auth.ScramVerifier:
        """The SCRAM verifier of a plain-text configured password, derived once (4096 rounds of PBKDF2)."""
        pool = self.pool
        if pool is None:
            return self.app.admin_verifier()
        if pool.scram_verifier is None:
            pool.scram_verifier = auth.ScramVerifier.from_password(self.stored)
        verifier: auth.ScramVerifier = pool.scram_verifier
        return verifier

    def _auth_failed(self) -> None:
        pool = self.pool
        if not self.admin and (pool is None or pool.dynamic) and not self._talos():
            self.app.auth_query_verdict(self.database, self.user, False)
        log.info("password authentication failed for user %r from %s", self.user, self.addr)
        self.fatal("28P01", f'password authentication failed for user "{self.user}"')

    def _password(self, body: bytes) -> None:
        a = self.client_auth
        assert a is not None
        out, outcome = a.feed(body)
        if out:
            self.write(out)
        if outcome == PENDING:
            return
        if outcome == FAILED:
            log.debug("client %s: authentication of %r failed: %s", self.addr, self.user, a.why)
            if a.error is not None:  # a broken exchange PostgreSQL names (channel binding): not a wrong password
                log.info("client %s: SCRAM exchange of %r refused: %s", self.addr, self.user, a.why)
                self.fatal(a.error.sqlstate, a.error.message, a.error.detail)
                return
            self._auth_failed()
            return
        if outcome == CHECK:
            self._check_cleartext(a.password)
            return
        pool = self.pool
        if pool is not None and a.client_key is not None:
            pool.scram_client_key = a.client_key  # SCRAM passthrough: the key PostgreSQL will ask us for
        if pool is not None and pool.dynamic:
            self.app.auth_query_verdict(self.database, self.user, True)
        self._authenticated()

    def _talos(self) -> bool:
        return not self.admin and self.user == talos.USERNAME and bool(self.app.config.talos.keys)

    def _check_cleartext(self, secret: str) -> None:
        pool = self.pool
        if pool is None:  # Talos: the token says which pool user this client is
            try:
                self.pool, self.user, client_id = self.app.talos_login(self.database, secret)
            except talos.TalosRefused as e:
                self._cleartext_checked("Talos", str(e))
                return
            if client_id:
                self.settings = {**self.settings, "application_name": client_id}  # shared: copied
                self.application_name = client_id
            self._cleartext_checked("Talos", None)
            return
        service = pool.user_cfg.auth_pam_service
        if service:
            self.state = AUTH_WAIT  # the answer comes from a PAM thread; bytes sent meanwhile are kept
            loop = self.loop
            pam_auth.authenticate(service, self.user, secret,
                                  lambda why: loop.call_soon_threadsafe(self._cleartext_checked, "PAM", why))
            return
        assert pool.jwt_key is not None
        self._cleartext_checked("JWT", jwt_auth.verify(secret, pool.jwt_key, self.user))

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
        self.client_auth = None
        self.write(m.AUTH_OK)
        if self.admin:
            self._start_admin()
            return
        pool = self.pool
        assert pool is not None
        if not pool.startup_fits:
            self.fatal("53400", "startup parameters do not fit in a startup packet",
                       f"the startup_parameters of pool {pool.name} with its user, database and application_name "
                       "exceed PostgreSQL's 10000-byte startup packet")
            return
        self.transaction_mode = pool.transaction_mode
        self.state = LOGIN_WAIT
        known = self._want_settings()
        if not known or not self.transaction_mode:
            # Session mode keeps the server it gets now (once a departed client's advisory locks are released:
            # session/unlocks.py); in transaction mode a server checks settings whose spelling (or validity) is
            # not known yet, as PostgreSQL checks them at login.
            if self.transaction_mode or not (pool.unlocking and unlocks.hold_login(self, pool)):
                self.need_server()
        else:
            self._finish_login()
            if self.raw and not self.closed:
                raw = self.raw
                self.raw = EMPTY
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
        # Shared with every client of this worker that wants the same (session/shared.py): never changed in
        # place, and `want_base` is the same object until one of them changes.
        self.want, self.want_key = shared.params(want)
        self.want_base = self.want
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
        iso = startup_isolation(self.startup)
        if iso is not None:  # (refused after authentication, as PostgreSQL does, by the server's version)
            e = isolation_refusal(iso, (s.params if s is not None else pool.server_params or {}).get("server_version", ""))
            if e is not None:
                self.fatal(e.sqlstate, str(e), hint=e.hint)
                return
        if s is not None:
            # What the server reports now, our settings applied (ParameterStatus during the sync).
            reported = {k: v for k, v in s.params.items()}
            self._want_reported(reported, pool.server_params is None or len(self.want_base) < len(reported))
        else:
            reported = dict(pool.server_params or {})
            for k in reported:
                if k in self.want:
                    reported[k] = self.want[k]
        want = self.want
        self.want_base = want  # as PostgreSQL spells them now (the login's sync normalised them); shared, never
        # changed in place: a later change of `want` replaces it (session/shared.py)
        self.ps = self.transaction_mode and self.app.config.general.prepared_statements
        if self.transaction_mode and want.get("search_path", pool.default_search_path).lower().find("pg_temp") >= 0:
            self.leaves |= leaks.PINS  # its first transaction ends with the pin check (core/txstate.py: temp_path)
        if not self.transaction_mode:
            read = any(k != "application_name" for k in self.settings)  # (what it may RESET: txresets.py)
            self.scanner.table = CLIENT_SESSION_READ_TABLE if read else CLIENT_SESSION_TABLE
        if self.ps:
            self.use_ps_scanner(pool, tuple(want.get(k, "") for k in ps.PLANNER_PARAMS))
        sc = self.scanner  # the client's large CopyData count as streamed (message_size_to_be_stream)
        sc.stream_min, sc.on_stream = self.app.config.general.message_size_to_be_stream, pool.stats[self.worker.id].on_streamed
        out = [m.parameter_status(k, v) for k, v in reported.items()]
        if s is not None and not self.transaction_mode and self.app.config.general.session_real_backend_key \
                and s.pid and (secret := self.app.cancels.register_pid(self, s.pid)) is not None:
            # Session mode: the client is this server's only user until it leaves; it may know its real PID (its
            # secret is its own: the server's would let it cancel the next client's queries, core/cancel.py).
            self.pid, self.secret = s.pid, secret
        else:
            self.pid, self.secret = self.app.cancels.register(self)
        out.append(m.backend_key_data(self.pid, self.secret))
        out.append(m.RFQ_IDLE)
        self.write(b"".join(out))
        self._login_done()
        self.state = READY
        if self.app.config.general.log_client_connections:
            log.info("client %s logged in to %s (%s mode)", self.addr, pool.name, pool.mode)
        if self.inbuf:
            self._keep_raw(self.inbuf)
        self.inbuf = EMPTY  # what follows login is read by the relay (client.py)

    def _want_reported(self, reported: dict[str, str], defaults: bool) -> None:
        """`want` as this server, which has just applied the client's settings, reports them: its spelling of
        each (`client_encoding=utf8` is `UTF8`: what the client is told now and later compared with; left as
        the packet spelt them, a later read-back, core/txstate.py, found them "changed" and told the client
        again, in either spelling); and with `defaults` (the first login of a pool) the reported settings it
        lacks, so that another client's value of one of them never stays on a server this client gets."""
        want = self.want
        new = {k: v for k, v in reported.items()
               if (want[k] != v if k in want else defaults and k not in READ_ONLY)}
        if new:
            self.want, self.want_key = shared.params({**want, **new})  # (shared: never changed in place)
            self.want_base = self.want

    # ------------------------------------------------------------------ cancel requests (with the key registered here)
    def cancel_requested(self) -> None:
        """A CancelRequest with this client's key (on this client's loop): cancel what it is doing now, as
        PostgreSQL would. A request still waiting for a server is answered here with 57014 and never reaches
        one; a running one is cancelled on its server, and nothing more is sent to that server until PostgreSQL
        has the cancel (ServerWrapped.cancel_gated), so it cannot hit a later statement and the server is kept."""
        if self.closed or self.state != READY:
            return
        s = self.server
        if self.waiting or (s is not None and s.state == 4):  # waiting, or its server runs our sync first
            self._cancel_held()
            return
        if s is None or s.closed or not s.pid:
            log.debug("cancel request for %r: no query running", self)
            return
        s.cancel_gated()
        if self.expect == 1 and self.loop.now - self.handed_at < CANCEL_RACE:  # (idle: PostgreSQL ignores it)
            self.loop.call_later(CANCEL_RACE / 5, self._cancel_again, s, self.answered)

    def _cancel_again(self, s: ServerConn, answered: int) -> None:
        """A cancel came just after a waiting request was handed its server, and that request still runs: its
        backend may have had the cancel before reading the statement (PostgreSQL ignores a cancel while it reads
        a command). Sent once more, while the same request is unanswered (docs/transparency.md)."""
        if not self.closed and self.server is s and self.answered == answered and self.expect == 1 and not s.closed:
            log.debug("cancel request for %r: sent again, its request still runs", self)
            s.cancel_gated()

    def _cancel_held(self) -> None:
        """Answer the oldest request held for a server with PostgreSQL's cancel error and drop its bytes; stop
        waiting when nothing else is held. A request not wholly received yet cannot be cut out: then the
        cancel is ignored, as PostgreSQL ignores one that arrives before the query."""
        held = self.raw if self.ps else self.pending
        end = tracking.first_request_end(held)
        if end is None:
            log.debug("cancel request for %r: no whole request held", self)
            return
        held = held[end:]  # (raw may be bytes: ClientConn._consume keeps one read so)
        if self.ps:
            self.raw = held
        else:
            self.pending = held
            self.expect -= 1  # counted when it was scanned
            self.rw.drop_request()  # (its queue entries, if the plain relay queues them: tracking.py)
            if not held:
                self.unsynced = False
        self.query_start = 0.0
        held_begin = self.begin_held
        if held_begin is None:
            self.xact_start = 0.0
            rfq = m.RFQ_IDLE
        else:  # in a transaction (deferred BEGIN): it fails, as on PostgreSQL, and the server's must too
            if not held_begin[1]:
                self.begin_held = (held_begin[0] + ABORT_QUERY, 1)
            self.last_status = 69
            rfq = m.ready_for_query(b"E")
        self.write(m.error_response("57014", "canceling statement due to user request") + rfq)
        if held or self.raw or self.pending:
            return
        if self.waiting:
            self.waiting = False
            pool = self.pool
            if pool is not None:
                pool.remove_waiter(self)
        if self.read_paused and not self.closed:
            self.resume_reading()

    def _start_admin(self) -> None:
        self._login_done()
        self.admin = self.app.make_admin(self)
        self.state = ADMIN
