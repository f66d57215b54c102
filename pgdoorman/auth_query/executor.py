"""One auth_query executor connection: a small blocking PostgreSQL client that logs in as
`auth_query.user` (md5, SCRAM or clear text, through the server login of session/server_login.py) and runs
the query with the user name as `$1` (extended protocol, text format).

It runs on an executor thread only (never on a worker loop). Every socket operation has a timeout, so a
dead or frozen PostgreSQL costs an executor thread at most that long, never a worker.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pgdoorman.protocol import auth
from pgdoorman.protocol import messages as m
from pgdoorman.session.server_login import READY, REFUSED, BackendLogin


class ExecutorError(Exception):
    """The executor could not connect, log in or run the query. `cause` is short and stable (one log line
    per cause); `sqlstate` is PostgreSQL's when it answered with an error."""

    def __init__(self, cause: str, detail: str = "", sqlstate: str = "") -> None:
        super().__init__(f"{cause}: {detail}" if detail else cause)
        self.cause = cause
        self.detail = detail
        self.sqlstate = sqlstate


@dataclass(frozen=True)
class Row:
    """What the query returned for one user: the password (None: NULL or no row) and the raw text of an
    optional `startup_parameters` column."""

    password: str | None
    startup_parameters: str | None = None


class _Creds:
    """BackendLogin's view of the executor role (session/server_login.py Credentials)."""

    __slots__ = ("server_user", "server_secret", "jwt_server_key", "scram_client_key")

    def __init__(self, user: str, password: str) -> None:
        self.server_user = user
        self.server_secret: str | None = password
        self.jwt_server_key = None
        self.scram_client_key: bytes | None = None


class Executor:
    """A connection opened on first use and again after any failure."""

    def __init__(self, host: str, port: int, database: str, user: str, password: str, query: str,
                 connect_timeout: float, query_timeout: float) -> None:
        self.host = host
        self.port = port
        self.database = database
        self.user = user
        self.password = password
        self.query = query
        self.connect_timeout = connect_timeout
        self.query_timeout = query_timeout
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.backend_pid = 0

    # ------------------------------------------------------------------ connection
    def close(self) -> None:
        sock, self.sock = self.sock, None
        self.buf.clear()
        if sock is not None:
            try:
                sock.sendall(m.TERMINATE)
            except OSError:
                pass
            sock.close()

    def _connect(self) -> socket.socket:
        try:
            if self.host.startswith("/"):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.connect_timeout)
                sock.connect(f"{self.host}/.s.PGSQL.{self.port}")
            else:
                sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            raise ExecutorError("cannot connect", f"{self.host}:{self.port}: {e.strerror or e}") from None
        return sock

    def _login(self) -> None:
        sock = self._connect()
        self.sock = sock
        self.buf.clear()
        login = BackendLogin(_Creds(self.user, self.password))
        try:
            sock.sendall(login.startup_packet(self.database, "pg_doorman_auth_query"))
            while True:
                t, body = self._read()
                try:
                    out, state = login.feed(t, body)
                except auth.AuthError as e:
                    raise ExecutorError("login failed", str(e)) from None
                if out:
                    sock.sendall(out)
                if state == READY:
                    self.backend_pid = login.pid
                    return
                if state == REFUSED:
                    err = login.error
                    raise ExecutorError("login refused", err.get("M", "?"), err.get("C", ""))
        except ExecutorError:
            self.close()
            raise
        except OSError as e:
            self.close()
            raise ExecutorError("connection lost during login", str(e.strerror or e)) from None

    def _read(self) -> tuple[int, bytes]:
        sock = self.sock
        assert sock is not None
        buf = self.buf
        while True:
            try:
                got = m.pop_message(buf)
            except m.ProtocolViolation as e:
                raise ExecutorError("protocol error", str(e)) from None
            if got is not None:
                return got
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise ExecutorError("timed out", "no answer from PostgreSQL") from None
            if not data:
                raise ExecutorError("connection closed", "PostgreSQL closed the executor connection")
            buf += data

    # ------------------------------------------------------------------ the query
    def fetch(self, username: str) -> Row:
        """Run the query for `username` (one retry on a fresh connection if an open one turns out dead)."""
        fresh = self.sock is None
        if fresh:
            self._login()
        try:
            return self._run(username)
        except ExecutorError as e:
            self.close()
            if fresh or e.sqlstate or e.cause in ("timed out", "query error", "bad result"):
                raise
        self._login()  # the kept connection was dead (killed backend, restart): once more on a new one
        try:
            return self._run(username)
        except ExecutorError:
            self.close()
            raise

    def _run(self, username: str) -> Row:
        sock = self.sock
        assert sock is not None
        sock.settimeout(self.query_timeout)
        user = username.encode()
        parse = m.msg(b"P", b"\x00" + m.cstr(self.query) + m.I16.pack(0))
        bind = m.msg(b"B", b"\x00\x00" + m.I16.pack(0) + m.I16.pack(1) + m.I32.pack(len(user)) + user + m.I16.pack(0))
        describe = m.msg(b"D", b"P\x00")
        execute = m.msg(b"E", b"\x00" + m.I32.pack(0))
        try:
            sock.sendall(parse + bind + describe + execute + m.SYNC)
        except OSError as e:
            raise ExecutorError("connection lost", str(e.strerror or e)) from None
        columns: list[str] = []
        rows: list[list[str | None]] = []
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
            sqlstate = error.get("C", "")
            if sqlstate.startswith(("57P", "08")):  # terminated backend, shutdown: the connection is gone
                raise ExecutorError("connection lost", error.get("M", "?"), "")
            raise ExecutorError("query error", f"{error.get('M', '?')} (SQLSTATE {sqlstate})", sqlstate)
        return pick(columns, rows)


def pick(columns: list[str], rows: list[list[str | None]]) -> Row:
    """The password and startup_parameters of a result: the `passwd` column, else `password`, else the
    only column. No row: unknown user (password None); several rows: ExecutorError."""
    if len(rows) > 1:
        raise ExecutorError("bad result", f"the query returned {len(rows)} rows for one user (expected at most 1)")
    lowered = [c.lower() for c in columns]
    if "passwd" in lowered:
        i = lowered.index("passwd")
    elif "password" in lowered:
        i = lowered.index("password")
    elif len(columns) == 1:
        i = 0
    else:
        raise ExecutorError("bad result", f"no passwd or password column among {', '.join(columns) or 'none'}")
    if not rows:
        return Row(None)
    row = rows[0]
    sp = lowered.index("startup_parameters") if "startup_parameters" in lowered else -1
    password = row[i] if i < len(row) else None
    return Row(password or None, row[sp] if 0 <= sp < len(row) else None)


def _column_names(body: bytes) -> list[str]:
    (n,) = m.I16.unpack_from(body, 0)
    pos = 2
    out = []
    for _ in range(n):
        name, pos = m.read_cstr(body, pos)
        pos += 18  # table oid, column number, type oid, type length, type modifier, format
        out.append(name.decode("utf-8", "replace"))
    return out


def _values(body: bytes) -> list[str | None]:
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
    return out
