"""Sans-IO PostgreSQL v3 wire messages: builders for everything the pooler sends and parsers for what it
must look inside (startup packets, ErrorResponse, ParameterStatus, CommandComplete, BackendKeyData).

Nothing here touches sockets or time. Builders return `bytes`; parsers take a buffer and offsets so the
hot path never slices a copy it does not need. On any input the parsers either return or raise
ProtocolViolation, nothing else (tests/unit/test_protocol_fuzz.py); parse_fields never raises.
Frontend message bodies after login are parsed by pgdoorman.protocol.frontend.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence

# Precompiled packers: every length in the protocol is a big-endian int32 that counts itself.
I32 = struct.Struct("!i")
U32 = struct.Struct("!I")
I16 = struct.Struct("!h")
HDR = struct.Struct("!cI")  # type byte + length
TWO_I32 = struct.Struct("!ii")

PROTOCOL_V3 = 196608  # 3.0
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

# A startup packet is small: PostgreSQL itself caps it at 10,000 bytes (MAX_STARTUP_PACKET_LENGTH).
MIN_STARTUP_LEN = 8
MAX_STARTUP_LEN = 10000
# PostgreSQL refuses messages over 1 GB (MaxAllocSize); so do we, to catch garbage lengths early.
MAX_MESSAGE_LEN = 0x3FFFFFFF

# Message type bytes as ints (what indexing a bytes/bytearray/memoryview returns).
FRONTEND_TYPES = frozenset(b"BCdcfDEHFPpQSX")


class ProtocolViolation(Exception):
    """The peer sent bytes that are not a valid protocol message (answered with 08P01)."""


class UnsupportedProtocol(ProtocolViolation):
    """A startup packet for another major version of the protocol than 3 (PostgreSQL answers 0A000, to a
    version-2 client in that version's own error format)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports 3.0 to 3.0")
        self.major = code >> 16

    def answer(self) -> bytes:
        if self.major < 3:
            return b"EFATAL:  " + str(self).encode() + b"\n\0"
        return error_response("0A000", str(self), "FATAL")


# ---------------------------------------------------------------------------------------------- builders


def msg(t: bytes, body: bytes | bytearray | memoryview = b"") -> bytes:
    return t + U32.pack(len(body) + 4) + body


def negotiate_protocol_version(options: list[str]) -> bytes:
    """NegotiateProtocolVersion: the newest protocol version spoken (3.0; the whole number, as PostgreSQL
    sends it, though the documentation says the minor one), and the `_pq_.` options not recognised."""
    return msg(b"v", TWO_I32.pack(3 << 16, len(options)) + b"".join(o.encode() + b"\0" for o in options))


def cstr(s: str | bytes) -> bytes:
    if isinstance(s, str):
        s = s.encode()
    return s + b"\x00"


def error_response(
    sqlstate: str,
    message: str,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    parts = [b"S", cstr(severity), b"V", cstr(severity), b"C", cstr(sqlstate), b"M", cstr(message)]
    if detail:
        parts += [b"D", cstr(detail)]
    if hint:
        parts += [b"H", cstr(hint)]
    parts.append(b"\x00")
    return msg(b"E", b"".join(parts))


def notice_response(message: str, sqlstate: str = "00000", severity: str = "NOTICE") -> bytes:
    body = b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(sqlstate) + b"M" + cstr(message) + b"\x00"
    return msg(b"N", body)


def ready_for_query(status: bytes = b"I") -> bytes:
    return msg(b"Z", status)


RFQ_IDLE = ready_for_query(b"I")
AUTH_OK = msg(b"R", I32.pack(0))
AUTH_CLEARTEXT = msg(b"R", I32.pack(3))
PARSE_COMPLETE = msg(b"1")
BIND_COMPLETE = msg(b"2")
CLOSE_COMPLETE = msg(b"3")
NO_DATA = msg(b"n")
SYNC = msg(b"S")
FLUSH = msg(b"H")
TERMINATE = msg(b"X")


def auth_md5(salt: bytes) -> bytes:
    return msg(b"R", I32.pack(5) + salt)


def auth_sasl(mechanisms: Sequence[str]) -> bytes:
    return msg(b"R", I32.pack(10) + b"".join(cstr(m) for m in mechanisms) + b"\x00")


def auth_sasl_continue(data: bytes) -> bytes:
    return msg(b"R", I32.pack(11) + data)


def auth_sasl_final(data: bytes) -> bytes:
    return msg(b"R", I32.pack(12) + data)


def parameter_status(name: str, value: str) -> bytes:
    return msg(b"S", cstr(name) + cstr(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return msg(b"K", TWO_I32.pack(pid, secret))


def query(sql: str) -> bytes:
    return msg(b"Q", cstr(sql))


def password_message(data: bytes) -> bytes:
    return msg(b"p", data)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return msg(b"p", cstr(mechanism) + I32.pack(len(data)) + data)


def startup_message(params: Mapping[str, str]) -> bytes:
    body = I32.pack(PROTOCOL_V3) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\x00"
    return I32.pack(len(body) + 4) + body


def cancel_request(pid: int, secret: int) -> bytes:
    return I32.pack(16) + I32.pack(CANCEL_REQUEST) + TWO_I32.pack(pid, secret)


def command_complete(tag: str) -> bytes:
    return msg(b"C", cstr(tag))


def row_description(columns: Iterable[tuple[str, int]]) -> bytes:
    """Columns as (name, type oid); text format, no table info (enough for admin result sets)."""
    cols = list(columns)
    body = [I16.pack(len(cols))]
    for name, oid in cols:
        body.append(cstr(name) + struct.pack("!ihihih", 0, 0, oid, -1, -1, 0))
    return msg(b"T", b"".join(body))


def data_row(values: Iterable[str | bytes | None]) -> bytes:
    vals = list(values)
    body = [I16.pack(len(vals))]
    for v in vals:
        if v is None:
            body.append(I32.pack(-1))
        else:
            b = v.encode() if isinstance(v, str) else v
            body.append(I32.pack(len(b)) + b)
    return msg(b"D", b"".join(body))


# ---------------------------------------------------------------------------------------------- parsers


def parse_startup(body: bytes) -> tuple[int, dict[str, str]]:
    """Parse a startup packet body (after the length word). Returns (code, params).

    For CancelRequest the params dict carries 'pid' and 'secret' as decimal strings.
    """
    if len(body) < 4:
        raise ProtocolViolation("invalid startup packet length")
    (code,) = I32.unpack_from(body, 0)
    if code == CANCEL_REQUEST:
        if len(body) != 12:
            raise ProtocolViolation("invalid cancel request length")
        pid, secret = TWO_I32.unpack_from(body, 4)
        return code, {"pid": str(pid), "secret": str(secret)}
    if code in (SSL_REQUEST, GSSENC_REQUEST):
        return code, {}
    if code >> 16 != 3:
        raise UnsupportedProtocol(code)
    parts = bytes(body[4:]).split(b"\x00")
    # A well-formed list ends with an empty name then the trailing empty string after the final NUL.
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"":
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    items = parts[:-2]
    if len(items) % 2:
        raise ProtocolViolation("invalid startup packet layout: name without value")
    params: dict[str, str] = {}
    try:
        for i in range(0, len(items), 2):
            params[items[i].decode()] = items[i + 1].decode()
    except UnicodeDecodeError as e:
        raise ProtocolViolation("invalid startup packet: parameter is not valid UTF-8") from e
    return code, params


def parse_fields(body: bytes | bytearray | memoryview) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse body: {'S': 'ERROR', 'C': '42P01', 'M': '...'}."""
    out: dict[str, str] = {}
    b = bytes(body)
    i = 0
    n = len(b)
    while i < n and b[i] != 0:
        j = b.find(b"\x00", i + 1)
        if j < 0:
            break
        out[chr(b[i])] = b[i + 1 : j].decode("utf-8", "replace")
        i = j + 1
    return out


def parse_parameter_status(body: bytes | bytearray | memoryview) -> tuple[str, str]:
    b = bytes(body)
    i = b.find(b"\x00")
    j = b.find(b"\x00", i + 1)
    if i < 0 or j < 0:
        raise ProtocolViolation("malformed ParameterStatus")
    return b[:i].decode("utf-8", "replace"), b[i + 1 : j].decode("utf-8", "replace")


def parse_data_row(body: bytes | bytearray | memoryview) -> list[str | None]:
    """A DataRow's values (text format; None for NULL)."""
    n = I16.unpack_from(body, 0)[0]
    pos = 2
    out: list[str | None] = []
    for _ in range(n):
        ln = I32.unpack_from(body, pos)[0]
        pos += 4
        if ln < 0:
            out.append(None)
        else:
            out.append(bytes(body[pos : pos + ln]).decode("utf-8", "replace"))
            pos += ln
    return out


def read_cstr(buf: bytes | bytearray | memoryview, pos: int) -> tuple[bytes, int]:
    """Return (string without NUL, position after NUL)."""
    if pos < 0:
        raise ProtocolViolation("missing string terminator")
    b = buf if isinstance(buf, (bytes, bytearray)) else bytes(buf)
    j = b.find(b"\x00", pos)
    if j < 0:
        raise ProtocolViolation("missing string terminator")
    return bytes(b[pos:j]), j + 1


def pop_message(buf: bytearray) -> tuple[int, bytes] | None:
    """Take the first complete message (type, body) off the front of `buf`, or None if it is not all there
    yet (the slow paths: login and housekeeping replies, which are small). A length word below 4 or above
    MAX_MESSAGE_LEN raises ProtocolViolation (the stream cannot be followed past it)."""
    if len(buf) < 5:
        return None
    (ln,) = U32.unpack_from(buf, 1)
    if ln < 4 or ln > MAX_MESSAGE_LEN:
        raise ProtocolViolation(f"invalid message length {ln}")
    if len(buf) < ln + 1:
        return None
    t = buf[0]
    body = bytes(buf[5 : ln + 1])
    del buf[: ln + 1]
    return t, body


def iter_messages(data: bytes) -> Iterable[tuple[int, bytes]]:
    """Split a complete byte string into (type, body) pairs (for tests and slow paths)."""
    pos = 0
    n = len(data)
    while pos < n:
        if n - pos < 5:
            raise ProtocolViolation("truncated message header")
        t = data[pos]
        (ln,) = U32.unpack_from(data, pos + 1)
        if ln < 4:
            raise ProtocolViolation("invalid message length")
        end = pos + 1 + ln
        if end > n:
            raise ProtocolViolation("truncated message body")
        yield t, data[pos + 5 : end]
        pos = end
