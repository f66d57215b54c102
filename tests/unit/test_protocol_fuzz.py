"""Property-based tests (hypothesis) of every parser in pgdoorman/protocol/: fed arbitrary bytes, and bytes
that are almost valid messages (truncated, extended, with a byte overwritten), each may return or raise its
documented exception, nothing else. The streaming Scanner is fed the same bytes in every split and must
behave the same whatever the split. Valid messages built by tests/support/wire.py (an encoder written
independently of the pooler's) parse back to what was built."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pgdoorman.protocol import auth, frontend
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.framing import FULL, INVALID, NOTIFY, PASS, SMALL, SMALL_LIMIT, Scanner
from pgdoorman.protocol.frontend import InvalidMessage
from tests.support import wire

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

I16 = struct.Struct("!h")
I32 = struct.Struct("!i")

names = st.binary(max_size=12).map(lambda b: b.replace(b"\x00", b"n"))
texts = st.text(max_size=20).map(lambda s: s.replace("\x00", " "))
values = st.one_of(st.none(), st.binary(max_size=16))
int16 = st.integers(-(2**15), 2**15 - 1)
oids = st.integers(0, 2**32 - 1)


def body(frame: bytes) -> bytes:
    return frame[5:]


# ---------------------------------------------------------------------------------------- valid bodies

parse_bodies = st.builds(
    lambda n, q, ts: body(wire.frame("P", n + b"\x00" + q.encode() + b"\x00" + struct.pack(f"!H{len(ts)}I", len(ts), *ts))),
    names, texts, st.lists(oids, max_size=4),
)
bind_bodies = st.builds(
    lambda portal, stmt, params, fmts, rfmts: body(wire.bind(portal, stmt, params, fmts, rfmts)),
    texts, texts, st.lists(values, max_size=4), st.lists(st.sampled_from([0, 1]), max_size=1), st.lists(int16, max_size=3),
)
function_call_bodies = st.builds(
    lambda fid, fmts, args, rf: I32.pack(fid) + I16.pack(len(fmts)) + b"".join(I16.pack(f) for f in fmts)
    + I16.pack(len(args))
    + b"".join(I32.pack(-1) if a is None else I32.pack(len(a)) + a for a in args) + I16.pack(rf),
    st.integers(-(2**31), 2**31 - 1), st.lists(st.sampled_from([0, 1]), max_size=1), st.lists(values, max_size=3), int16,
)
VALID: dict[int, st.SearchStrategy[bytes]] = {
    ord("Q"): texts.map(lambda s: body(wire.query(s))),
    ord("P"): parse_bodies,
    ord("B"): bind_bodies,
    ord("D"): st.builds(lambda k, n: body(wire.describe(k, n)), st.sampled_from("SP"), texts),
    ord("C"): st.builds(lambda k, n: body(wire.close(k, n)), st.sampled_from("SP"), texts),
    ord("E"): st.builds(lambda p, r: body(wire.execute(p, r)), texts, st.integers(-(2**31), 2**31 - 1)),
    ord("F"): function_call_bodies,
    ord("d"): st.binary(max_size=20),
    ord("c"): st.just(b""),
    ord("f"): texts.map(lambda s: s.encode() + b"\x00"),
    ord("S"): st.just(b""),
    ord("H"): st.just(b""),
    ord("X"): st.just(b""),
}


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid body, then truncated, extended, or with one byte overwritten (or left alone)."""
    b = draw(valid)
    how = draw(st.sampled_from(["same", "cut", "extend", "poke", "poke", "cut+poke"]))
    if how in ("cut", "cut+poke"):
        b = b[: draw(st.integers(0, len(b)))]
    if how == "extend":
        b += draw(st.binary(min_size=1, max_size=8))
    if how in ("poke", "cut+poke") and b:
        i = draw(st.integers(0, len(b) - 1))
        b = b[:i] + bytes([draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))]) + b[i + 1 :]
    return b


def any_body(t: int) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=64), mutated(VALID[t]))


def rejects_only(fn: Callable[..., Any], *args: Any, exc: type[BaseException] = InvalidMessage) -> Any:
    """fn(*args), or None if it raised `exc`; anything else fails the test."""
    try:
        return fn(*args)
    except exc:
        return None


def as_inputs(b: bytes) -> list[bytes | bytearray | memoryview]:
    # The relay passes memoryviews of a larger buffer: a sub-view must not read outside itself.
    framed = memoryview(b"\x00\x00" + b + b"\x00\x00")[2 : 2 + len(b)]
    return [b, bytearray(b), framed]


# ---------------------------------------------------------------------------------------- frontend parsers

PARSERS: dict[int, list[Callable[[Any], Any]]] = {
    ord("Q"): [frontend.parse_query],
    ord("P"): [frontend.check_parse, frontend.parse_parse],
    ord("B"): [frontend.check_bind, frontend.parse_bind],
    ord("D"): [frontend.parse_describe],
    ord("C"): [frontend.parse_close],
    ord("E"): [frontend.parse_execute],
    ord("F"): [frontend.parse_function_call],
    ord("d"): [frontend.parse_copy_data],
    ord("c"): [],
    ord("f"): [frontend.parse_copy_fail],
    ord("S"): [frontend.check_empty],
    ord("H"): [frontend.check_empty],
    ord("X"): [],
}


@pytest.mark.parametrize("t", sorted(PARSERS), ids=chr)
@FUZZ
@given(data=st.data())
def test_frontend_parsers_reject_or_return(t: int, data: st.DataObject) -> None:
    b = data.draw(any_body(t))
    for buf in as_inputs(b):
        ok = rejects_only(frontend.check, t, buf) is not None or _check_ok(t, buf)
        for fn in PARSERS[t]:
            got = rejects_only(fn, buf)
            # check() and every parser of the type agree on what is valid.
            assert (got is not None or fn is frontend.check_empty and not len(buf)) == ok, (fn, b)


def _check_ok(t: int, buf: Any) -> bool:
    try:
        frontend.check(t, buf)
    except InvalidMessage:
        return False
    return True


@FUZZ
@given(t=st.integers(0, 255), b=st.binary(max_size=32))
def test_check_any_type(t: int, b: bytes) -> None:
    try:
        frontend.check(t, b)
    except InvalidMessage as e:
        assert e.sqlstate == "08P01" and str(e)
        if t not in PARSERS:
            assert str(e) == f"invalid frontend message type {t}"
    else:
        assert t in PARSERS


@FUZZ
@given(t=st.sampled_from(sorted(VALID)), data=st.data())
def test_valid_bodies_are_accepted(t: int, data: st.DataObject) -> None:
    b = data.draw(VALID[t])
    frontend.check(t, b)
    for fn in PARSERS[t]:
        fn(memoryview(b))


@FEW
@given(n=names, q=texts, ts=st.lists(oids, max_size=5))
def test_parse_round_trip(n: bytes, q: str, ts: list[int]) -> None:
    b = n + b"\x00" + q.encode() + b"\x00" + struct.pack(f"!H{len(ts)}I", len(ts), *ts)
    name, query, types = frontend.parse_parse(b)
    assert (name, bytes(query), types) == (n, q.encode(), tuple(ts))
    j, k, count = frontend.check_parse(b)
    assert (b[:j], b[j + 1 : k], count, b[k + 3 :]) == (n, q.encode(), len(ts), struct.pack(f"!{len(ts)}I", *ts))


@FEW
@given(portal=texts, stmt=texts, params=st.lists(values, max_size=5), fmts=st.sampled_from([0, 1, None]),
       rfmts=st.lists(int16, max_size=4))
def test_bind_round_trip(portal: str, stmt: str, params: list[bytes | None], fmts: int | None, rfmts: list[int]) -> None:
    pf = [] if fmts is None else [fmts]
    b = body(wire.bind(portal, stmt, params, pf, rfmts))
    got = frontend.parse_bind(b)
    assert got[:3] == (portal.encode(), stmt.encode(), tuple(pf))
    assert [None if v is None else bytes(v) for v in got[3]] == params
    assert got[4] == tuple(rfmts)
    j, k, n = frontend.check_bind(memoryview(b))
    assert (b[:j], b[j + 1 : k], n) == (portal.encode(), stmt.encode(), len(params))


def test_examples_postgresql_refuses() -> None:
    cases: list[tuple[str, bytes, str]] = [
        ("Q", b"", "invalid string in message"),
        ("Q", b"SELECT 1", "invalid string in message"),
        ("Q", b"SELECT 1\x00x", "invalid message format"),
        ("Q", b"SELECT\x001\x00", "invalid message format"),
        ("P", b"s1\x00SELECT 1", "invalid string in message"),
        ("P", b"s1\x00SELECT $1\x00\x00\x02" + I32.pack(23), "insufficient data left in message"),
        ("P", b"\x00SELECT 1\x00\x00\x00junk", "invalid message format"),
        ("B", b"\x00", "invalid string in message"),
        ("B", b"\x00\x00\x00\x02\x00\x00", "insufficient data left in message"),
        ("B", b"\x00\x00\x00\x02\x00\x00\x00\x01\x00\x01", "bind message has 2 parameter formats but 1 parameters"),
        ("B", b"\x00\x00\x00\x00\x00\x01" + I32.pack(1000) + b"abc\x00\x00", "insufficient data left in message"),
        ("B", b"\x00\x00\x00\x00\x00\x01" + I32.pack(-2) + b"\x00\x00", "insufficient data left in message"),
        ("D", b"", "no data left in message"),
        ("D", b"X\x00", "invalid DESCRIBE message subtype 88"),
        ("C", b"Sname", "invalid string in message"),
        ("E", b"\x00\x00\x00", "insufficient data left in message"),
        ("S", b"\x00", "invalid message format"),
        ("F", I32.pack(1) + b"\x00\x00\x00\x01" + I32.pack(-5) + b"\x00\x00", "invalid argument size -5 in function call message"),
        ("f", b"oops", "invalid string in message"),
        ("Z", b"", "invalid frontend message type 90"),
    ]
    for t, b, text in cases:
        with pytest.raises(InvalidMessage) as ei:
            frontend.check(ord(t), b)
        assert str(ei.value) == text, (t, b)
    # Format codes PostgreSQL reports itself (22023, not a protocol violation) pass.
    frontend.check(ord("B"), body(wire.bind("", "", ["1"], [7], [9])))
    assert frontend.parse_describe(b"Sst\x00") == (ord("S"), b"st")
    assert frontend.parse_execute(b"p\x00" + I32.pack(5)) == (b"p", 5)
    fid, fmts, args, rf = frontend.parse_function_call(I32.pack(42) + b"\x00\x00\x00\x02" + I32.pack(-1) + I32.pack(1) + b"x\x00\x01")
    assert (fid, fmts, [None if a is None else bytes(a) for a in args], rf) == (42, (), [None, b"x"], 1)


# ---------------------------------------------------------------------------------------- login parsers


startup_bodies = st.builds(
    lambda params: wire.startup_message(params)[4:],
    st.dictionaries(st.text(min_size=1, max_size=8).map(lambda s: s.replace("\x00", "a")),
                    st.text(max_size=8).map(lambda s: s.replace("\x00", "b")), max_size=3),
)
special_startups = st.sampled_from([
    I32.pack(m.SSL_REQUEST), I32.pack(m.GSSENC_REQUEST), I32.pack(m.CANCEL_REQUEST) + I32.pack(7) + I32.pack(9),
    I32.pack(m.CANCEL_REQUEST) + b"\x00\x00", I32.pack(0x00020000) + b"user\x00u\x00\x00",
])


@FUZZ
@given(b=st.one_of(st.binary(max_size=64), mutated(startup_bodies), mutated(special_startups)))
@example(b=I32.pack(m.PROTOCOL_V3) + b"user\x00\xff\x00\x00")
@example(b=I32.pack(m.PROTOCOL_V3) + b"user\x00")
def test_parse_startup_rejects_or_returns(b: bytes) -> None:
    for buf in (b, bytearray(b), memoryview(b)):
        got = rejects_only(m.parse_startup, buf, exc=m.ProtocolViolation)
        assert got == rejects_only(frontend.parse_startup, buf, exc=m.ProtocolViolation)
        if got is not None:
            code, params = got
            assert isinstance(code, int) and all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())


@FEW
@given(params=st.dictionaries(st.text(min_size=1, max_size=8).map(lambda s: s.replace("\x00", "a")),
                              st.text(max_size=8).map(lambda s: s.replace("\x00", "b")), max_size=4))
def test_parse_startup_round_trip(params: dict[str, str]) -> None:
    pkt = wire.startup_message(params)
    assert frontend.startup_length(pkt) == len(pkt)
    assert m.parse_startup(pkt[4:]) == (m.PROTOCOL_V3, params)


@FUZZ
@given(b=st.binary(max_size=12))
def test_startup_length(b: bytes) -> None:
    got = rejects_only(frontend.startup_length, b)
    if len(b) < 4:
        assert got is None
    elif got is not None:
        assert m.MIN_STARTUP_LEN <= got <= m.MAX_STARTUP_LEN


password_bodies = st.one_of(
    st.binary(max_size=20).map(lambda b: b.replace(b"\x00", b"p") + b"\x00"),
    st.builds(lambda mech, data: body(wire.sasl_initial_response(mech, data)), st.sampled_from(["SCRAM-SHA-256", "x"]),
              st.binary(max_size=20)),
    st.builds(lambda mech: mech + b"\x00" + I32.pack(-1), st.sampled_from([b"SCRAM-SHA-256", b""])),
)


@FUZZ
@given(b=st.one_of(st.binary(max_size=40), mutated(password_bodies)))
def test_password_parsers(b: bytes) -> None:
    for buf in as_inputs(b):
        pw = rejects_only(frontend.parse_password, buf)
        if pw is not None:
            assert pw + b"\x00" == b and b"\x00" not in pw
        got = rejects_only(frontend.parse_sasl_initial_response, buf)
        if got is not None:
            mech, data = got
            assert b"\x00" not in mech and (data is None or len(data) <= len(b))
        assert bytes(frontend.parse_sasl_response(buf)) == b


def test_sasl_initial_response_round_trip() -> None:
    assert frontend.parse_sasl_initial_response(b"SCRAM-SHA-256\x00" + I32.pack(-1)) == (b"SCRAM-SHA-256", None)
    mech, data = frontend.parse_sasl_initial_response(body(wire.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=x")))
    assert mech == b"SCRAM-SHA-256" and data is not None and bytes(data) == b"n,,n=,r=x"


VERIFIER = auth.ScramVerifier.from_password("pw", iterations=1)
CLIENT_NONCE = b"cnonce"


@FUZZ
@given(first=st.one_of(st.binary(max_size=48), st.builds(lambda x: b"n,,n=,r=" + x, st.binary(max_size=24))),
       final=st.one_of(st.binary(max_size=64), st.builds(lambda x: b"c=biws,r=" + x, st.binary(max_size=48))),
       mech=st.sampled_from(["SCRAM-SHA-256", "PLAIN", ""]))
def test_scram_server_raises_only_auth_error(first: bytes, final: bytes, mech: str) -> None:
    server = auth.ScramServer(VERIFIER)
    if rejects_only(server.client_first, mech, first, exc=auth.AuthError) is not None:
        rejects_only(server.client_final, final, exc=auth.AuthError)
    rejects_only(server.client_final, final, exc=auth.AuthError)  # out of order


@FUZZ
@given(first=st.one_of(st.binary(max_size=48), st.builds(lambda x: b"r=" + CLIENT_NONCE + x, st.binary(max_size=40))),
       final=st.one_of(st.binary(max_size=48), st.builds(lambda x: b"v=" + x, st.binary(max_size=48))))
def test_scram_client_raises_only_auth_error(first: bytes, final: bytes) -> None:
    client = auth.ScramClient(client_key=b"k" * 32, server_key=b"s" * 32, nonce=CLIENT_NONCE)
    client.client_first()
    if rejects_only(client.server_first, first, exc=auth.AuthError) is not None:
        rejects_only(client.server_final, final, exc=auth.AuthError)


# ---------------------------------------------------------------------------------------- backend parsers


backend_bodies = st.one_of(
    st.binary(max_size=48),
    mutated(st.builds(lambda k, v: body(m.parameter_status(k, v)), texts, texts)),
    mutated(st.builds(lambda c, t: body(m.error_response(c, t)), st.text(max_size=5), texts)),
)


@FUZZ
@given(b=backend_bodies)
def test_backend_body_parsers(b: bytes) -> None:
    for buf in as_inputs(b):
        fields = m.parse_fields(buf)  # never raises
        assert all(len(k) == 1 for k in fields)
        rejects_only(m.parse_parameter_status, buf, exc=m.ProtocolViolation)


@FUZZ
@given(b=st.binary(max_size=32), pos=st.integers(-40, 40))
def test_read_cstr(b: bytes, pos: int) -> None:
    for buf in as_inputs(b):
        got = rejects_only(m.read_cstr, buf, pos, exc=m.ProtocolViolation)
        if got is not None:
            s, nxt = got
            assert 0 < nxt <= len(b) and b[nxt - 1] == 0 and b"\x00" not in s


# Streams of framed messages: right lengths mostly, some wrong, a big one now and then.
@st.composite
def streams(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=80))
    out = b""
    for _ in range(draw(st.integers(0, 6))):
        t = draw(st.sampled_from(b"QPBDECSHXdcfFZTDC123tnIsVKRNAG") | st.integers(0, 255))
        how = draw(st.sampled_from(["ok"] * 6 + ["short", "long", "tiny", "huge", "big"]))
        b = draw(st.binary(max_size=20))
        ln = len(b) + 4
        if how == "short":
            ln -= draw(st.integers(1, 4))
        elif how == "long":
            ln += draw(st.integers(1, 8))
        elif how == "tiny":
            ln = draw(st.integers(0, 3))
        elif how == "huge":
            ln = draw(st.sampled_from([m.MAX_MESSAGE_LEN + 1, 2**32 - 1, 2**31]))
        elif how == "big":
            b = b"x" * (SMALL_LIMIT + draw(st.integers(-8, 8)))
            ln = len(b) + 4
        out += bytes([t]) + struct.pack("!I", ln) + b
    return out + draw(st.binary(max_size=6))


@FUZZ
@given(b=streams())
def test_pop_message_and_iter_messages(b: bytes) -> None:
    buf = bytearray(b)
    taken = 0
    try:
        while (msg := m.pop_message(buf)) is not None:
            taken += 5 + len(msg[1])
            assert 0 <= msg[0] <= 255
    except m.ProtocolViolation:
        pass
    assert bytes(buf) == b[taken:]
    rejects_only(lambda d: list(m.iter_messages(d)), b, exc=m.ProtocolViolation)


tables = st.one_of(
    st.lists(st.sampled_from([PASS, NOTIFY, FULL, INVALID, SMALL]), min_size=256, max_size=256).map(bytes),
    st.sampled_from([
        bytes([PASS]) * 256,
        bytes(FULL if c in b"ZCSEGHW" else PASS for c in range(256)),
        bytes(SMALL if c in b"QP" else FULL if c in b"X" else NOTIFY if c in b"SBDEHCF" else
              PASS if c in b"dcf" else INVALID for c in range(256)),
    ]),
)


def scan(table: bytes, chunks: list[bytes], replace: bool, max_len: int) -> tuple[bytes, list[tuple[Any, ...]], bool]:
    """Feed the chunks; (forwarded bytes, handler calls, whether ProtocolViolation ended the stream)."""
    calls: list[tuple[Any, ...]] = []

    def on_header(t: int, ln: int) -> None:
        calls.append(("h", t, ln))

    def on_message(t: int, b: memoryview) -> bytes | None:
        calls.append(("m", t, bytes(b)))
        if replace and t % 3 == 0:
            return b"" if t % 2 else b"<" + bytes(b) + b">"
        return None

    sc = Scanner(table, on_header=on_header, on_message=on_message, max_len=max_len)
    out = bytearray()
    try:
        for ch in chunks:
            r = sc.feed(memoryview(ch))
            if r is not None:
                out += r
    except m.ProtocolViolation:
        return bytes(out), calls, True
    return bytes(out), calls, False


def cut(data: bytes, points: list[int]) -> list[bytes]:
    pts = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(pts)]


@FUZZ
@given(table=tables, data=streams(), replace=st.booleans(), max_len=st.sampled_from([m.MAX_MESSAGE_LEN, 64]),
       extra=st.lists(st.integers(0, 10**6), max_size=6))
def test_scanner_any_bytes_in_every_split(table: bytes, data: bytes, replace: bool, max_len: int,
                                          extra: list[int]) -> None:
    whole_out, whole_calls, whole_failed = scan(table, [data], replace, max_len)
    splits = [[i] for i in range(1, len(data))] if len(data) <= 200 else [[i] for i in range(1, len(data), 97)]
    splits.append(list(range(1, len(data))))  # byte by byte
    splits.append([p % (len(data) + 1) for p in extra])
    for points in splits:
        out, calls, failed = scan(table, cut(data, points), replace, max_len)
        assert failed == whole_failed, points
        assert calls == whole_calls, points
        if not failed:
            assert out == whole_out, points


@FUZZ
@given(data=streams())
def test_scanner_pass_table_forwards_what_it_accepts(data: bytes) -> None:
    """With nothing looked at, what comes out is the input up to the last complete header (4 bytes of a
    header may be withheld), whatever the split."""
    out, _, failed = scan(bytes([PASS]) * 256, [data], False, m.MAX_MESSAGE_LEN)
    if not failed:
        assert data.startswith(out) and len(data) - len(out) <= 4
