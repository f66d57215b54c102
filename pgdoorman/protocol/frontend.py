"""Bounds-checked parsers for the frontend (client -> server) message bodies the pooler reads.

Every function takes a message *body* (what follows the type byte and the length word) as any bytes-like
object, a `memoryview` of the receive buffer in the relay, and either returns a small tuple or raises
`InvalidMessage`. Nothing else escapes on any input: no IndexError, ValueError or struct.error (the
property tests in tests/unit/test_protocol_fuzz.py feed them arbitrary bytes). The checks are
PostgreSQL's own (src/backend/libpq/pqformat.c and the exec_*_message functions of tcop/postgres.c), so a
body is refused exactly when PostgreSQL would refuse it, with PostgreSQL's words in `str(exc)`.

    InvalidMessage(ProtocolViolation)     .sqlstate == "08P01"; str(): PostgreSQL's errmsg, e.g.
                                          "invalid message format", "invalid string in message",
                                          "insufficient data left in message", "no data left in message"

After login (the relay). Names are `bytes`; texts and values are memoryviews into `body` (no copy); type
bytes are ints (ord("S")):

    parse_query(body) -> memoryview                     Q: the SQL text, without its NUL
    check_parse(body) -> (j, k, n)                      P: validated; name = body[:j], query = body[j+1:k],
                                                           n param type OIDs in body[k+3:] (4 bytes each)
    parse_parse(body) -> (name, query, oids)            P: bytes, memoryview, tuple[int, ...] (unsigned)
    check_bind(body) -> (j, k, n)                       B: validated; portal = body[:j], statement =
                                                           body[j+1:k], n parameter values
    parse_bind(body) -> (portal, statement, param_formats, params, result_formats)
                                                        B: bytes, bytes, tuple[int, ...],
                                                           tuple[memoryview | None, ...] (None: NULL),
                                                           tuple[int, ...]
    parse_describe(body) -> (kind, name)                D: kind ord("S") or ord("P"), name bytes
    parse_close(body) -> (kind, name)                   C: the same
    parse_execute(body) -> (portal, max_rows)           E: bytes, int (0 or less: all rows)
    parse_function_call(body) -> (oid, arg_formats, args, result_format)
                                                        F: int, tuple[int, ...],
                                                           tuple[memoryview | None, ...], int
    parse_copy_data(body) -> memoryview                 d: any bytes are valid
    parse_copy_fail(body) -> memoryview                 f: the error text, without its NUL
    check_empty(body) -> None                           S (Sync), H (Flush): the body must be empty
    check(t, body) -> None                              any of the above by type byte, allocation-free
                                                           where possible; X and c (Terminate, CopyDone)
                                                           accept any body, as PostgreSQL does; another
                                                           type: "invalid frontend message type N"

Before login (the startup and authentication exchange):

    startup_length(buf) -> int | None                   the length word of a startup packet (which counts
                                                           itself) once 4 bytes are there, else None;
                                                           refused outside 8..10000 as PostgreSQL does
    parse_startup(body) -> (code, params)               = messages.parse_startup (raises ProtocolViolation)
    parse_password(body) -> bytes                       p, PasswordMessage: clear text or "md5...", no NUL
    parse_sasl_initial_response(body) -> (mechanism, data)
                                                        p, SASLInitialResponse: bytes, memoryview | None
    parse_sasl_response(body) -> memoryview             p, SASLResponse: any bytes

What PostgreSQL does with such a body: a malformed Query, Parse, Bind, Describe, Close, Execute, Sync or
Flush body is an ERROR with SQLSTATE 08P01 (the session survives, in the extended protocol everything up to
the next Sync is skipped); a malformed startup packet or password message is FATAL. Format codes other than
0 and 1, and parameter counts that do not match the statement, are not checked here: PostgreSQL reports
those itself as ordinary errors (22023, 08P01) without closing the connection.

Costs: the `check_*` functions allocate only their result tuple; the `parse_*` functions add the bytes of
names and one memoryview per text or value. NUL terminators are found with a compiled regular expression,
which scans any buffer in C without copying it.
"""

from __future__ import annotations

import re
import struct

from pgdoorman.protocol.messages import (
    MAX_STARTUP_LEN,
    MIN_STARTUP_LEN,
    ProtocolViolation,
    parse_startup,
)

__all__ = [
    "InvalidMessage",
    "check",
    "check_bind",
    "check_empty",
    "check_parse",
    "parse_bind",
    "parse_close",
    "parse_copy_data",
    "parse_copy_fail",
    "parse_describe",
    "parse_execute",
    "parse_function_call",
    "parse_parse",
    "parse_password",
    "parse_query",
    "parse_sasl_initial_response",
    "parse_sasl_response",
    "parse_startup",
    "startup_length",
]

# PostgreSQL's messages (pqformat.c).
INVALID_FORMAT = "invalid message format"
INVALID_STRING = "invalid string in message"
INSUFFICIENT = "insufficient data left in message"
NO_DATA = "no data left in message"


class InvalidMessage(ProtocolViolation):
    """A frontend message body PostgreSQL would refuse: SQLSTATE 08P01, its message in str()."""

    sqlstate = "08P01"

    def __init__(self, message: str = INVALID_FORMAT) -> None:
        super().__init__(message)


_search_nul = re.compile(b"\x00").search
_U16 = struct.Struct("!H").unpack_from
_I16 = struct.Struct("!h").unpack_from
_I32 = struct.Struct("!i").unpack_from
_U32 = struct.Struct("!I").unpack_from

Buffer = bytes | bytearray | memoryview


def _view(body: Buffer) -> memoryview:
    v = body if isinstance(body, memoryview) else memoryview(body)
    if v.ndim != 1 or v.itemsize != 1 or not v.c_contiguous:
        v = memoryview(v.tobytes())  # what the relay never passes; keeps the offsets below byte offsets
    return v


def _cstr_end(v: memoryview, pos: int, n: int) -> int:
    """Offset of the NUL ending the string that starts at `pos` (pq_getmsgstring)."""
    mt = _search_nul(v, pos, n)
    if mt is None:
        raise InvalidMessage(INVALID_STRING)
    return mt.start()


def _u16(v: memoryview, pos: int, n: int) -> int:
    if pos + 2 > n:
        raise InvalidMessage(INSUFFICIENT)
    return int(_U16(v, pos)[0])


def _i32(v: memoryview, pos: int, n: int) -> int:
    if pos + 4 > n:
        raise InvalidMessage(INSUFFICIENT)
    return int(_I32(v, pos)[0])


def _end(pos: int, n: int) -> None:
    if pos != n:
        raise InvalidMessage(INVALID_FORMAT)


def _skip_args(v: memoryview, pos: int, n: int, count: int) -> int:
    """Walk `count` FunctionCall arguments ((int32 length, bytes), -1 meaning NULL); the position after them."""
    for _ in range(count):
        if pos + 4 > n:
            raise InvalidMessage(INSUFFICIENT)
        ln = _I32(v, pos)[0]
        pos += 4
        if ln == -1:
            continue
        if ln < 0:
            raise InvalidMessage(f"invalid argument size {ln} in function call message")
        if ln > n - pos:
            raise InvalidMessage(INSUFFICIENT)
        pos += ln
    return pos


def _values(v: memoryview, pos: int, count: int) -> tuple[memoryview | None, ...]:
    """The values _bind_layout or _skip_args already checked."""
    out: list[memoryview | None] = []
    for _ in range(count):
        ln = _I32(v, pos)[0]
        pos += 4
        if ln == -1:
            out.append(None)
        else:
            out.append(v[pos : pos + ln])
            pos += ln
    return tuple(out)


def _int16s(v: memoryview, pos: int, count: int) -> tuple[int, ...]:
    return struct.unpack_from(f"!{count}h", v, pos) if count else ()


# ---------------------------------------------------------------------------------------------- after login


def parse_query(body: Buffer) -> memoryview:
    v = _view(body)
    n = len(v)
    j = _cstr_end(v, 0, n)
    _end(j + 1, n)
    return v[:j]


def check_parse(body: Buffer) -> tuple[int, int, int]:
    v = _view(body)
    n = len(v)
    j = _cstr_end(v, 0, n)
    k = _cstr_end(v, j + 1, n)
    count = _u16(v, k + 1, n)
    end = k + 3 + 4 * count
    if end > n:
        raise InvalidMessage(INSUFFICIENT)
    _end(end, n)
    return j, k, count


def parse_parse(body: Buffer) -> tuple[bytes, memoryview, tuple[int, ...]]:
    v = _view(body)
    j, k, count = check_parse(v)
    oids: tuple[int, ...] = struct.unpack_from(f"!{count}I", v, k + 3) if count else ()
    return v[:j].tobytes(), v[j + 1 : k], oids


def _bind_layout(v: memoryview) -> tuple[int, int, int, int, int, int]:
    """(j, k, formats count, values count, values start, result formats count) of a checked Bind.
    Written out (no helper calls) because the relay checks every Bind it forwards."""
    n = len(v)
    mt = _search_nul(v, 0, n)
    if mt is None:
        raise InvalidMessage(INVALID_STRING)
    j = mt.start()
    mt = _search_nul(v, j + 1, n)
    if mt is None:
        raise InvalidMessage(INVALID_STRING)
    k = mt.start()
    pos = k + 3
    if pos > n:
        raise InvalidMessage(INSUFFICIENT)
    nformats = _U16(v, k + 1)[0]
    pos += 2 * nformats
    if pos + 2 > n:
        raise InvalidMessage(INSUFFICIENT)
    nparams = _U16(v, pos)[0]
    pos += 2
    if nformats > 1 and nformats != nparams:
        raise InvalidMessage(f"bind message has {nformats} parameter formats but {nparams} parameters")
    values = pos
    for _ in range(nparams):
        if pos + 4 > n:
            raise InvalidMessage(INSUFFICIENT)
        ln = _I32(v, pos)[0]
        pos += 4
        if ln == -1:
            continue
        if ln < 0 or ln > n - pos:
            raise InvalidMessage(INSUFFICIENT)
        pos += ln
    if pos + 2 > n:
        raise InvalidMessage(INSUFFICIENT)
    nresults = _U16(v, pos)[0]
    pos += 2 + 2 * nresults
    if pos > n:
        raise InvalidMessage(INSUFFICIENT)
    if pos != n:
        raise InvalidMessage(INVALID_FORMAT)
    return j, k, nformats, nparams, values, nresults


def check_bind(body: Buffer) -> tuple[int, int, int]:
    j, k, _, nparams, _, _ = _bind_layout(_view(body))
    return j, k, nparams


def parse_bind(
    body: Buffer,
) -> tuple[bytes, bytes, tuple[int, ...], tuple[memoryview | None, ...], tuple[int, ...]]:
    v = _view(body)
    j, k, nformats, nparams, values, nresults = _bind_layout(v)
    n = len(v)
    return (
        v[:j].tobytes(),
        v[j + 1 : k].tobytes(),
        _int16s(v, k + 3, nformats),
        _values(v, values, nparams),
        _int16s(v, n - 2 * nresults, nresults),
    )


def _kind_and_name(body: Buffer, what: str) -> tuple[int, bytes]:
    v = _view(body)
    n = len(v)
    if n == 0:
        raise InvalidMessage(NO_DATA)
    j = _cstr_end(v, 1, n)
    _end(j + 1, n)
    kind = v[0]
    if kind != 83 and kind != 80:  # 'S', 'P'
        raise InvalidMessage(f"invalid {what} message subtype {kind}")
    return kind, v[1:j].tobytes()


def parse_describe(body: Buffer) -> tuple[int, bytes]:
    return _kind_and_name(body, "DESCRIBE")


def parse_close(body: Buffer) -> tuple[int, bytes]:
    return _kind_and_name(body, "CLOSE")


def parse_execute(body: Buffer) -> tuple[bytes, int]:
    v = _view(body)
    n = len(v)
    j = _cstr_end(v, 0, n)
    rows = _i32(v, j + 1, n)
    _end(j + 5, n)
    return v[:j].tobytes(), rows


def _function_call_layout(v: memoryview) -> tuple[int, int, int, int]:
    """(formats count, args count, args start, result format) of a checked FunctionCall."""
    n = len(v)
    if n < 4:
        raise InvalidMessage(INSUFFICIENT)
    nformats = _u16(v, 4, n)
    pos = 6 + 2 * nformats
    if pos > n:
        raise InvalidMessage(INSUFFICIENT)
    nargs = _u16(v, pos, n)
    pos += 2
    if nformats > 1 and nformats != nargs:
        raise InvalidMessage(f"function call message contains {nformats} argument formats but {nargs} arguments")
    start = pos
    pos = _skip_args(v, pos, n, nargs)
    if pos + 2 > n:
        raise InvalidMessage(INSUFFICIENT)
    rformat = int(_I16(v, pos)[0])
    _end(pos + 2, n)
    return nformats, nargs, start, rformat


def parse_function_call(body: Buffer) -> tuple[int, tuple[int, ...], tuple[memoryview | None, ...], int]:
    v = _view(body)
    nformats, nargs, start, rformat = _function_call_layout(v)
    return int(_U32(v, 0)[0]), _int16s(v, 6, nformats), _values(v, start, nargs), rformat


def parse_copy_data(body: Buffer) -> memoryview:
    return _view(body)


def parse_copy_fail(body: Buffer) -> memoryview:
    v = _view(body)
    return v[: _cstr_end(v, 0, len(v))]


def check_empty(body: Buffer) -> None:
    if len(body):
        raise InvalidMessage(INVALID_FORMAT)


def check(t: int, body: Buffer) -> None:
    """Validate the body of a message of type `t` (an int, as indexing a buffer gives)."""
    if t == 66:  # B
        _bind_layout(_view(body))
    elif t == 80:  # P
        check_parse(body)
    elif t == 81:  # Q
        v = _view(body)
        _end(_cstr_end(v, 0, len(v)) + 1, len(v))
    elif t == 69:  # E
        parse_execute(body)
    elif t == 68:  # D
        _kind_and_name(body, "DESCRIBE")
    elif t == 67:  # C
        _kind_and_name(body, "CLOSE")
    elif t == 83 or t == 72:  # S, H
        check_empty(body)
    elif t == 100 or t == 99 or t == 88:  # d, c, X
        return
    elif t == 102:  # f
        parse_copy_fail(body)
    elif t == 70:  # F
        _function_call_layout(_view(body))
    else:
        raise InvalidMessage(f"invalid frontend message type {t}")


# ---------------------------------------------------------------------------------------------- login


def startup_length(buf: Buffer) -> int | None:
    if len(buf) < 4:
        return None
    ln = int(_I32(_view(buf), 0)[0])
    if ln < MIN_STARTUP_LEN or ln > MAX_STARTUP_LEN:
        raise InvalidMessage("invalid length of startup packet")
    return ln


def parse_password(body: Buffer) -> bytes:
    v = _view(body)
    n = len(v)
    mt = _search_nul(v, 0, n)
    if mt is None or mt.start() != n - 1:
        raise InvalidMessage("invalid password packet size")
    return v[: n - 1].tobytes()


def parse_sasl_initial_response(body: Buffer) -> tuple[bytes, memoryview | None]:
    v = _view(body)
    n = len(v)
    j = _cstr_end(v, 0, n)
    ln = _i32(v, j + 1, n)
    pos = j + 5
    if ln == -1:
        _end(pos, n)
        return v[:j].tobytes(), None
    if ln < 0 or ln > n - pos:
        raise InvalidMessage(INSUFFICIENT)
    _end(pos + ln, n)
    return v[:j].tobytes(), v[pos : pos + ln]


def parse_sasl_response(body: Buffer) -> memoryview:
    return _view(body)


# What nearly every driver sends after a Bind: Execute of the unnamed portal for all rows, then Sync (with a
# Describe of the unnamed portal before them, or not). bind_batch_end compares them whole before it walks.
_EXECUTE_SYNC = b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00S\x00\x00\x00\x04"
_DESCRIBE_PORTAL = b"D\x00\x00\x00\x06P\x00"


def bind_batch_end(view: memoryview, pos: int, n: int) -> int:
    """Where the Bind at `pos` ends, if the batch goes on as `Bind [Describe portal] Execute Sync` to its end
    `n`; 0 otherwise (a statement Describe needs the general path's queue)."""
    bend: int = pos + 1 + _U32(view, pos + 1)[0]
    tail = n - 15
    if view[tail:n] == _EXECUTE_SYNC and (bend == tail or bend + 7 == tail and view[bend:tail] == _DESCRIBE_PORTAL):
        return bend
    if bend + 5 > n:
        return 0
    pos = bend
    if view[pos] == 68:  # Describe
        if view[pos + 5] != 80:
            return 0
        pos += 1 + _U32(view, pos + 1)[0]
        if pos + 5 > n:
            return 0
    if view[pos] != 69 or pos + 1 + _U32(view, pos + 1)[0] != n - 5:
        return 0
    return bend
