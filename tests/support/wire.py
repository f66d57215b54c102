"""A minimal blocking PostgreSQL v3 client for tests that need exact bytes on the wire.

Builders here are written independently of ``pgdoorman.protocol.messages`` on purpose, so that a test
checking the pooler's framing does not reuse the pooler's own encoder. Authentication maths comes from
``pgdoorman.protocol.auth`` (md5 and SCRAM-SHA-256). Messages are read as ``(type, body)`` tuples with
``type`` a one-character str (``"Z"``, ``"E"``, ...) and ``body`` the bytes after the length.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

_I32 = struct.Struct("!i")
_I16 = struct.Struct("!h")
_HDR = struct.Struct("!cI")

PROTOCOL_V3 = 196608
SSL_REQUEST_CODE = 80877103
CANCEL_REQUEST_CODE = 80877102

Message = tuple[str, bytes]
Param = bytes | str | None


# -------------------------------------------------------------------------------------------- builders


def _cstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return b + b"\x00"


def frame(t: str, body: bytes = b"") -> bytes:
    """A typed message: type byte, int32 length (counting itself), body."""
    return t.encode("ascii") + _I32.pack(len(body) + 4) + body


def startup_message(params: Mapping[str, str], protocol: int = PROTOCOL_V3) -> bytes:
    body = _I32.pack(protocol) + b"".join(_cstr(k) + _cstr(v) for k, v in params.items()) + b"\x00"
    return _I32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    return _I32.pack(8) + _I32.pack(SSL_REQUEST_CODE)


def cancel_request(pid: int, secret: int) -> bytes:
    return _I32.pack(16) + _I32.pack(CANCEL_REQUEST_CODE) + _I32.pack(pid) + _I32.pack(secret)


def password_message(data: bytes | str) -> bytes:
    return frame("p", _cstr(data))


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return frame("p", _cstr(mechanism) + _I32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return frame("p", data)


def query(sql: str) -> bytes:
    return frame("Q", _cstr(sql))


def parse(name: str, sql: str, param_types: Sequence[int] = ()) -> bytes:
    body = _cstr(name) + _cstr(sql) + _I16.pack(len(param_types))
    body += b"".join(_I32.pack(oid) for oid in param_types)
    return frame("P", body)


def bind(
    portal: str = "",
    statement: str = "",
    params: Sequence[Param] = (),
    param_formats: Sequence[int] = (),
    result_formats: Sequence[int] = (),
) -> bytes:
    body = _cstr(portal) + _cstr(statement)
    body += _I16.pack(len(param_formats)) + b"".join(_I16.pack(f) for f in param_formats)
    body += _I16.pack(len(params))
    for p in params:
        if p is None:
            body += _I32.pack(-1)
        else:
            b = p.encode() if isinstance(p, str) else p
            body += _I32.pack(len(b)) + b
    body += _I16.pack(len(result_formats)) + b"".join(_I16.pack(f) for f in result_formats)
    return frame("B", body)


def describe(kind: str, name: str = "") -> bytes:
    """kind "S" (statement) or "P" (portal)."""
    return frame("D", kind.encode("ascii") + _cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return frame("E", _cstr(portal) + _I32.pack(max_rows))


def close(kind: str, name: str = "") -> bytes:
    """kind "S" (statement) or "P" (portal)."""
    return frame("C", kind.encode("ascii") + _cstr(name))


def sync() -> bytes:
    return frame("S")


def flush() -> bytes:
    return frame("H")


def terminate() -> bytes:
    return frame("X")


# --------------------------------------------------------------------------------------------- parsers


def split_messages(data: bytes) -> list[Message]:
    """Bytes holding whole backend (or frontend, after the startup packet) messages -> [(type, body)]."""
    out = []
    pos = 0
    while pos < len(data):
        (ln,) = struct.unpack_from("!I", data, pos + 1)
        out.append((chr(data[pos]), data[pos + 5 : pos + 1 + ln]))
        pos += 1 + ln
    assert pos == len(data), "a message is cut off"
    return out


def comparable(msgs: list[Message]) -> list[Any]:
    """Messages as a comparison with PostgreSQL's answer sees them: errors and notices by severity, SQLSTATE
    and text (their other fields vary between runs), everything else byte for byte."""
    out: list[Any] = []
    for t, b in msgs:
        if t in ("E", "N"):
            f = parse_fields(b)
            out.append((t, f.get("S"), f.get("C"), f.get("M")))
        else:
            out.append((t, b))
    return out


def parse_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse/NoticeResponse body -> {field code: value}, e.g. {"C": "42P01", "M": ...}."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        end = body.index(b"\x00", pos + 1)
        fields[chr(body[pos])] = body[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    return fields


def parse_data_row(body: bytes) -> list[bytes | None]:
    (count,) = _I16.unpack_from(body, 0)
    pos = 2
    values: list[bytes | None] = []
    for _ in range(count):
        (n,) = _I32.unpack_from(body, pos)
        pos += 4
        if n < 0:
            values.append(None)
        else:
            values.append(body[pos : pos + n])
            pos += n
    return values


def parse_row_description(body: bytes) -> list[str]:
    """Column names of a RowDescription."""
    (count,) = _I16.unpack_from(body, 0)
    pos = 2
    names = []
    for _ in range(count):
        end = body.index(b"\x00", pos)
        names.append(body[pos:end].decode())
        pos = end + 1 + 18  # table oid, attnum, type oid, typlen, typmod, format
    return names


def command_tag(body: bytes) -> str:
    return body.rstrip(b"\x00").decode()


def rows(messages: Iterable[Message]) -> list[list[str | None]]:
    """Text values of every DataRow in ``messages``."""
    return [
        [None if v is None else v.decode() for v in parse_data_row(body)] for t, body in messages if t == "D"
    ]


# ---------------------------------------------------------------------------------------------- client


class WireError(Exception):
    """The server answered with ErrorResponse where the client needed success."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(f"{fields.get('S', 'ERROR')} {fields.get('C', '?????')}: {fields.get('M', '')}")
        self.fields = fields
        self.sqlstate = fields.get("C", "")


class WireClient:
    """A blocking socket plus a receive buffer; every read has a deadline so a hung peer fails a test."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()
        self.parameters: dict[str, str] = {}
        self.backend_key: tuple[int, int] | None = None
        self.transaction_status = ""
        # Authentication request codes the server sent (0 ok, 3 cleartext, 5 md5, 10/11/12 SASL).
        self.auth_codes: list[int] = []

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        user: str,
        database: str,
        password: str | None = None,
        params: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> WireClient:
        """Open a session: StartupMessage, authentication, then everything up to ReadyForQuery."""
        client = cls(host, port, timeout)
        try:
            client.startup(user, database, password, params)
        except BaseException:
            client.close()
            raise
        return client

    def __enter__(self) -> WireClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- raw I/O ---------------------------------------------------------------------------

    def send(self, *chunks: bytes) -> None:
        self.sock.sendall(b"".join(chunks))

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete message from the server in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("no complete message from the server in time") from None
        if not data:
            raise ConnectionError("server closed the connection")
        self._buf += data

    def read_bytes(self, n: int, timeout: float | None = None) -> bytes:
        """Exactly n raw bytes (e.g. the one-byte answer to SSLRequest)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self._buf) < n:
            self._fill(deadline)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def read_message(self, timeout: float | None = None) -> Message:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self._buf) < 5:
            self._fill(deadline)
        t, length = _HDR.unpack_from(self._buf, 0)
        if length < 4:
            raise ValueError(f"nonsense message length {length} for type {t!r}")
        while len(self._buf) < 1 + length:
            self._fill(deadline)
        body = bytes(self._buf[5 : 1 + length])
        del self._buf[: 1 + length]
        return t.decode("latin-1"), body

    def read_until(self, stop: str = "Z", timeout: float | None = None) -> list[Message]:
        """Messages up to and including the first of type ``stop``."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        out: list[Message] = []
        while True:
            msg = self.read_message(timeout=max(deadline - time.monotonic(), 0.001))
            out.append(msg)
            if msg[0] == "Z":
                self.transaction_status = msg[1].decode()
            if msg[0] == stop:
                return out

    def expect_closed(self, timeout: float | None = None) -> bytes:
        """Read until EOF; return whatever arrived first. Fails on timeout if the peer keeps it open."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                self._fill(deadline)
            except ConnectionError:
                out = bytes(self._buf)
                self._buf.clear()
                return out

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- session ---------------------------------------------------------------------------

    def startup(
        self,
        user: str,
        database: str,
        password: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> list[Message]:
        startup_params = {"user": user, "database": database, **(params or {})}
        self.send(startup_message(startup_params))
        self.authenticate(user, password)
        msgs: list[Message] = []
        while not msgs or msgs[-1][0] not in ("Z", "E"):  # a FATAL ends the login: no ReadyForQuery follows
            msgs.append(self.read_message())
        for t, body in msgs:
            if t == "S":
                name, value, _ = body.split(b"\x00", 2)
                self.parameters[name.decode()] = value.decode()
            elif t == "K":
                self.backend_key = (_I32.unpack_from(body, 0)[0], _I32.unpack_from(body, 4)[0])
            elif t == "E":
                raise WireError(parse_fields(body))
            elif t == "Z":
                self.transaction_status = body.decode()
        return msgs

    def authenticate(self, user: str, password: str | None) -> None:
        """Answer authentication requests until AuthenticationOk; ErrorResponse raises WireError."""
        from pgdoorman.protocol import auth  # the pooler's own maths; imported late so builders work alone

        scram: auth.ScramClient | None = None
        while True:
            t, body = self.read_message()
            if t == "E":
                raise WireError(parse_fields(body))
            if t != "R":
                raise ValueError(f"expected an authentication message, got {t!r}")
            (code,) = _I32.unpack_from(body, 0)
            self.auth_codes.append(code)
            if code == 0:  # AuthenticationOk
                return
            if password is None:
                raise ValueError(f"server asked for a password (auth code {code}) and none was given")
            if code == 3:  # cleartext
                self.send(password_message(password))
            elif code == 5:  # md5 with a 4-byte salt
                self.send(password_message(auth.md5_response(user, password, body[4:8])))
            elif code == 10:  # SASL: list of mechanisms
                mechanisms = [m.decode() for m in body[4:].split(b"\x00") if m]
                if "SCRAM-SHA-256" not in mechanisms:
                    raise ValueError(f"no supported SASL mechanism in {mechanisms}")
                scram = auth.ScramClient(user, password)
                self.send(sasl_initial_response("SCRAM-SHA-256", scram.client_first()))
            elif code == 11 and scram is not None:  # SASLContinue
                self.send(sasl_response(scram.server_first(body[4:])))
            elif code == 12 and scram is not None:  # SASLFinal
                scram.server_final(body[4:])
            else:
                raise ValueError(f"unsupported authentication request {code}")

    def query(self, sql: str) -> list[Message]:
        """Simple query; returns every message through ReadyForQuery (errors are returned, not raised)."""
        self.send(query(sql))
        return self.read_until("Z")

    def query_rows(self, sql: str) -> list[list[str | None]]:
        """Simple query that must succeed; returns its rows as text."""
        msgs = self.query(sql)
        for t, body in msgs:
            if t == "E":
                raise WireError(parse_fields(body))
        return rows(msgs)

    def terminate(self) -> None:
        try:
            self.send(terminate())
        except OSError:
            pass
        self.close()

