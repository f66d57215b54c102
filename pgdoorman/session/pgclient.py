"""A small blocking PostgreSQL client: connect (TCP or Unix socket), server TLS with libpq's sslmode
semantics (net/tls.py's ServerTls, as the pool's server connections use it), log in through the same sans-IO
`BackendLogin` the pool's server connections use (server_login.py), then simple queries or one extended-
protocol statement with text parameters.

It blocks, so it runs where blocking is allowed: `pg_doorman generate` and the auth_query executor threads,
never a worker loop. Every socket operation has a timeout. Failures raise PgError with a short, stable
`cause` (one log line per cause) and PostgreSQL's error fields when it answered with an ErrorResponse.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pgdoorman.net.tls import ssl_reason
from pgdoorman.protocol import auth
from pgdoorman.protocol import messages as m
from pgdoorman.session.server_login import READY, REFUSED, BackendLogin

if TYPE_CHECKING:
    from pgdoorman.core.pool import ServerTlsLike

Rows = list[tuple[str | None, ...]]


class PgError(Exception):
    """`cause`: what failed, short and stable ("could not connect", "login refused", "query error", ...);
    `detail`: the rest; `fields`: the ErrorResponse's fields ('C' = SQLSTATE, 'M' = message, ...), if any."""

    def __init__(self, cause: str, detail: str = "", fields: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{cause}: {detail}" if detail else cause)
        self.cause = cause
        self.detail = detail
        self.fields = dict(fields or {})

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")


def error_text(f: Mapping[str, str]) -> str:
    """An ErrorResponse's fields as one line: message (detail) [SQLSTATE code]."""
    text = f.get("M", "unknown error")
    if f.get("D"):
        text += f" ({f['D']})"
    return f"{text} [SQLSTATE {f.get('C', '?')}]"


class _Creds:
    """BackendLogin's view of the role we log in as (server_login.Credentials): a password in plain text or
    an md5 hash (pass-the-hash); no JWT key, no SCRAM ClientKey."""

    __slots__ = ("server_user", "server_secret", "jwt_server_key", "scram_client_key")

    def __init__(self, user: str, password: str | None) -> None:
        self.server_user = user
        self.server_secret = password
        self.jwt_server_key = None
        self.scram_client_key: bytes | None = None


_METHODS = {0: "trust", 3: "password", 5: "md5", 10: "scram-sha-256"}


class PgClient:
    """One blocking connection. `tls`: the pool's server TLS (None or mode disable: plain); Unix sockets never
    use TLS (as libpq and the pool's servers). `timeout` bounds connecting and logging in; `query_timeout`
    each statement (default: `timeout`)."""

    def __init__(self, host: str, port: int, user: str, password: str | None, database: str, *,
                 tls: ServerTlsLike | None = None, timeout: float = 10.0, query_timeout: float | None = None,
                 application_name: str = "pg_doorman", settings: Mapping[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
        self.tls = tls
        self.timeout = timeout
        self.query_timeout = timeout if query_timeout is None else query_timeout
        self.application_name = application_name
        self.settings = dict(settings or {})
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.ssl_in_use = False
        # How PostgreSQL authenticated us ("trust", "password", "md5" or "scram-sha-256") and, for SCRAM, the
        # salt and iteration count of the role's stored verifier (from the server-first-message).
        self.auth_method = ""
        self.scram_salt: bytes | None = None
        self.scram_iterations: int | None = None
        self.params: dict[str, str] = {}
        self.backend_pid = 0

    def where(self) -> str:
        return os.path.join(self.host, f".s.PGSQL.{self.port}") if self.is_unix else f"{self.host}:{self.port}"

    @property
    def is_unix(self) -> bool:
        return self.host.startswith("/")

    # ------------------------------------------------------------------ connection
    def connect(self) -> PgClient:
        """Connect and log in; server_tls_mode allow: plain first, and once more with TLS if PostgreSQL
        refuses the plain connection (28000: a hostssl rule), as libpq's sslmode=allow and the pool do."""
        tls = self.tls
        first = tls is not None and tls.first and not self.is_unix
        try:
            self._open(first)
        except PgError as e:
            self.close()
            retry = (e.cause == "login refused" and e.sqlstate == "28000" and not first and not self.is_unix
                     and tls is not None and tls.mode == "allow")
            if not retry:
                raise
            try:
                self._open(True)
            except PgError:
                self.close()
                raise
        return self

    def _open(self, use_tls: bool) -> None:
        try:
            if self.is_unix:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock = sock
                sock.settimeout(self.timeout)
                sock.connect(self.where())
            else:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
                self.sock = sock
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            raise PgError("could not connect", f"{self.where()}: {e.strerror or e}") from None
        self.buf.clear()
        if use_tls:
            self._start_tls()
        self._login()

    def _start_tls(self) -> None:
        tls = self.tls
        assert self.sock is not None and tls is not None
        self._send(m.I32.pack(8) + m.I32.pack(m.SSL_REQUEST))
        answer = self._recv_some(1)
        if answer == b"N":
            if tls.required:
                raise PgError("TLS failed", f"{self.where()} does not accept SSL connections, but SSL was required")
            return  # prefer (or allow's second try): plain text
        if answer != b"S" or tls.context is None:
            raise PgError("TLS failed", f"unexpected answer {answer!r} to SSLRequest from {self.where()}")
        try:
            self.sock = tls.context.wrap_socket(
                self.sock, server_hostname=self.host if tls.context.check_hostname else None)
        except (ssl.SSLError, OSError) as e:
            raise PgError("TLS failed", f"TLS handshake with {self.where()} failed: {ssl_reason(e)}") from None
        self.ssl_in_use = True

    def _login(self) -> None:
        login = BackendLogin(_Creds(self.user, self.password))
        settings = {"client_encoding": "UTF8", **self.settings}
        self._send(login.startup_packet(self.database, self.application_name, settings))
        while True:
            t, body = self._read()
            if t == 82:  # 'R': note how we are asked (generate rebuilds the stored secret from it)
                (code,) = m.I32.unpack_from(body, 0)
                if code in _METHODS and (code or not self.auth_method):  # AuthenticationOk alone: trust
                    self.auth_method = _METHODS[code]
            try:
                out, state = login.feed(t, body)
            except auth.AuthError as e:
                if self.password is None:
                    raise PgError("no password", f"the server asks a password for user {self.user!r}") from None
                raise PgError("login failed", str(e)) from None
            if login.scram is not None and login.scram.salt is not None:
                self.scram_salt, self.scram_iterations = login.scram.salt, login.scram.iterations
            if out:
                self._send(out)
            if state == READY:
                self.params, self.backend_pid = login.params, login.pid
                return
            if state == REFUSED:
                raise PgError("login refused", error_text(login.error), login.error)

    def close(self) -> None:
        sock, self.sock = self.sock, None
        self.buf.clear()
        self.ssl_in_use = False
        if sock is not None:
            try:
                sock.settimeout(1.0)
                sock.sendall(m.TERMINATE)
            except OSError:
                pass
            sock.close()

    # ------------------------------------------------------------------ statements
    def query(self, sql: str) -> Rows:
        """One statement with the simple query protocol; rows as text (None = NULL)."""
        return self._results(m.query(sql))[1]

    def execute(self, sql: str, params: Sequence[str | None] = ()) -> tuple[list[str], Rows]:
        """One statement with the extended protocol (unnamed statement, text parameters and results):
        (column names, rows)."""
        p = bytearray(b"\x00\x00" + m.I16.pack(0) + m.I16.pack(len(params)))
        for v in params:
            if v is None:
                p += m.I32.pack(-1)
            else:
                b = v.encode()
                p += m.I32.pack(len(b)) + b
        p += m.I16.pack(0)
        parse = m.msg(b"P", b"\x00" + m.cstr(sql) + m.I16.pack(0))
        batch = parse + m.msg(b"B", bytes(p)) + m.msg(b"D", b"P\x00") + m.msg(b"E", b"\x00" + m.I32.pack(0))
        return self._results(batch + m.SYNC)

    def _results(self, request: bytes) -> tuple[list[str], Rows]:
        """Send `request` and read until ReadyForQuery: the columns and rows; an ErrorResponse raises
        PgError("query error") with its fields."""
        if self.sock is None:
            raise PgError("connection closed", "not connected")
        self.sock.settimeout(self.query_timeout)
        self._send(request)
        columns: list[str] = []
        rows: Rows = []
        error: dict[str, str] | None = None
        while True:
            t, body = self._read()
            if t == 84:  # RowDescription
                columns = _column_names(body)
            elif t == 68:  # DataRow
                rows.append(_values(body))
            elif t == 69:  # ErrorResponse
                error = m.parse_fields(body)
            elif t == 90:  # ReadyForQuery
                break
        if error is not None:
            raise PgError("query error", error_text(error), error)
        return columns, rows

    # ------------------------------------------------------------------ I/O
    def _send(self, data: bytes) -> None:
        assert self.sock is not None
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise PgError("timed out", f"{self.where()} does not take what we send") from None
        except OSError as e:
            raise PgError("connection lost", f"{self.where()}: {e.strerror or e}") from None

    def _recv_some(self, n: int) -> bytes:
        assert self.sock is not None
        try:
            data = self.sock.recv(n)
        except TimeoutError:
            raise PgError("timed out", f"no answer from {self.where()}") from None
        except OSError as e:
            raise PgError("connection lost", f"{self.where()}: {e.strerror or e}") from None
        if not data:
            raise PgError("connection closed", f"{self.where()} closed the connection")
        return data

    def _read(self) -> tuple[int, bytes]:
        while True:
            try:
                got = m.pop_message(self.buf)
            except m.ProtocolViolation as e:
                raise PgError("protocol error", str(e)) from None
            if got is not None:
                return got
            self.buf += self._recv_some(65536)


def _column_names(body: bytes) -> list[str]:
    (n,) = m.I16.unpack_from(body, 0)
    pos = 2
    out = []
    for _ in range(n):
        name, pos = m.read_cstr(body, pos)
        pos += 18  # table oid, column number, type oid, type length, type modifier, format
        out.append(name.decode("utf-8", "replace"))
    return out


def _values(body: bytes) -> tuple[str | None, ...]:
    (n,) = m.I16.unpack_from(body, 0)
    pos = 2
    out: list[str | None] = []
    for _ in range(n):
        (ln,) = m.I32.unpack_from(body, pos)
        pos += 4
        if ln < 0:
            out.append(None)
            continue
        out.append(body[pos : pos + ln].decode("utf-8", "replace"))
        pos += ln
    return tuple(out)
