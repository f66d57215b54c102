"""Byte-level tests of the streaming Scanner: the same stream fed in every split (and byte by byte) gives
the same forwarded bytes and the same handler calls; lengths and types are validated."""

from __future__ import annotations

import itertools

import pytest

from pgdoorman.protocol import messages as m
from pgdoorman.protocol.framing import RETABLE, Scanner, make_table

STREAM = b"".join([
    m.msg(b"T", b"\x00\x01col\x00" + b"\x00" * 18),
    m.msg(b"D", b"\x00\x01\x00\x00\x00\x03abc"),
    m.msg(b"D", b"x" * 300),
    m.command_complete("SELECT 2"),
    m.parameter_status("TimeZone", "UTC"),
    m.msg(b"N", b"SNOTICE\x00Mhello\x00\x00"),
    m.ready_for_query(b"I"),
])


def run(scanner_factory, chunks):
    calls: list[tuple[str, int, bytes]] = []
    sc = scanner_factory(calls)
    out = bytearray()
    for ch in chunks:
        r = sc.feed(memoryview(ch))
        if r is not None:
            out += r
    return bytes(out), calls, sc


def server_scanner(calls):
    def on_message(t, body):
        calls.append(("msg", t, bytes(body)))
        return None

    def on_header(t, ln):
        calls.append(("hdr", t, ln.to_bytes(4, "big")))

    return Scanner(make_table(notify=b"D", full=b"ZCS"), on_header=on_header, on_message=on_message)


def splits(data: bytes, cuts: tuple[int, ...]) -> list[bytes]:
    pts = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(pts)]


def test_whole_stream_passes_through_unchanged() -> None:
    out, calls, sc = run(server_scanner, [STREAM])
    assert out == STREAM
    assert [c[1] for c in calls] == [ord("D"), ord("D"), ord("C"), ord("S"), ord("Z")]
    assert calls[2][2] == b"SELECT 2\x00"
    assert calls[-1][2] == b"I"
    assert not sc.mid_message


def test_every_single_split_and_byte_by_byte() -> None:
    expected_out, expected_calls, _ = run(server_scanner, [STREAM])
    for cut in range(1, len(STREAM)):
        out, calls, sc = run(server_scanner, splits(STREAM, (cut,)))
        assert out == expected_out, cut
        assert calls == expected_calls, cut
        assert not sc.mid_message
    out, calls, _ = run(server_scanner, [STREAM[i : i + 1] for i in range(len(STREAM))])
    assert out == expected_out
    assert calls == expected_calls


def test_every_pair_of_splits_in_the_small_messages() -> None:
    expected_out, expected_calls, _ = run(server_scanner, [STREAM])
    tail_start = STREAM.index(m.command_complete("SELECT 2"))
    for a in range(tail_start, len(STREAM)):
        for b in range(a + 1, len(STREAM)):
            out, calls, _ = run(server_scanner, splits(STREAM, (a, b)))
            assert out == expected_out and calls == expected_calls, (a, b)


def test_replacement_and_drop_in_every_split() -> None:
    stream = m.query("select 1") + m.TERMINATE + m.SYNC + m.query("x")

    def factory(calls):
        def on_message(t, body):
            calls.append(("msg", t, bytes(body)))
            if t == ord("X"):
                return b""
            if t == ord("S"):
                return b"<sync>"
            return None

        return Scanner(make_table(full=b"XS"), on_message=on_message)

    expected = m.query("select 1") + b"<sync>" + m.query("x")
    for cut in range(0, len(stream) + 1):
        out, calls, _ = run(factory, splits(stream, (cut,)) if 0 < cut < len(stream) else [stream])
        assert out == expected, cut
        assert [c[1] for c in calls] == [ord("X"), ord("S")]


def test_a_table_changed_by_on_message_applies_to_the_rest_of_the_data() -> None:
    """on_message switches the table and returns RETABLE (txresets.parsed: a Parse of a RESET makes the client's
    Binds read): the message passes unchanged, and the next one, in the same data or not, is scanned with the
    new table. Without RETABLE the scan went on with the old one to the end of the data."""
    stream = m.msg(b"P", b"\x00reset all\x00\x00\x00") + m.msg(b"B", b"\x00\x00" + b"\x00" * 6) + m.SYNC

    def factory(calls):
        def on_message(t, body):
            calls.append(("msg", t, bytes(body)))
            if t == ord("P"):
                sc.table = make_table(full=b"PB")
                return RETABLE
            return None

        sc = Scanner(make_table(full=b"P", notify=b"BS"), on_message=on_message)
        return sc

    for cut in range(0, len(stream) + 1):
        out, calls, _ = run(factory, splits(stream, (cut,)) if 0 < cut < len(stream) else [stream])
        assert out == stream, cut
        assert [c[1] for c in calls] == [ord("P"), ord("B")], cut


def test_large_message_streams_without_buffering() -> None:
    body = b"z" * 1_000_000
    stream = m.msg(b"D", body) + m.ready_for_query(b"T")
    calls: list = []
    sc = server_scanner(calls)
    out = bytearray()
    step = 65536
    for i in range(0, len(stream), step):
        chunk = memoryview(stream[i : i + step])
        r = sc.feed(chunk)
        # A PASS/NOTIFY body is never withheld: what comes in goes out (except <5 trailing header bytes).
        assert r is not None
        assert len(r) >= len(chunk) - 5
        out += r
        assert sc.carry is None or len(sc.carry) < 5 + 1
    assert bytes(out) == stream
    assert [c[0] for c in calls] == ["hdr", "msg"]


def test_withheld_incomplete_full_message() -> None:
    calls: list = []
    sc = server_scanner(calls)
    z = m.ready_for_query(b"I")
    assert sc.feed(memoryview(z[:3])) is None
    assert sc.mid_message
    r = sc.feed(memoryview(z[3:]))
    assert r is not None and bytes(r) == z
    assert not sc.mid_message


@pytest.mark.parametrize("bad", [
    b"Y\x00\x00\x00\x04",            # not a frontend type
    b"Q\x00\x00\x00\x03",            # length below 4
    b"Q\x7f\xff\xff\xff",            # length over 1 GB
])
def test_violations_raise(bad: bytes) -> None:
    table = bytearray([3]) * 256
    for c in b"QSX":
        table[c] = 1
    sc = Scanner(bytes(table))
    with pytest.raises(m.ProtocolViolation):
        sc.feed(memoryview(bad))
    # the same bytes split just before the length also fail
    sc = Scanner(bytes(table))
    with pytest.raises(m.ProtocolViolation):
        sc.feed(memoryview(bad[:2]))
        sc.feed(memoryview(bad[2:]))


def test_startup_parsing() -> None:
    pkt = m.startup_message({"user": "u", "database": "d", "application_name": "x"})
    code, params = m.parse_startup(pkt[4:])
    assert code == m.PROTOCOL_V3
    assert params == {"user": "u", "database": "d", "application_name": "x"}
    code, params = m.parse_startup(m.cancel_request(42, -7)[4:])
    assert code == m.CANCEL_REQUEST and params == {"pid": "42", "secret": "-7"}
    with pytest.raises(m.ProtocolViolation):
        m.parse_startup(m.I32.pack(m.PROTOCOL_V3) + b"user\x00u")
    with pytest.raises(m.ProtocolViolation):
        m.parse_startup(m.I32.pack(2 << 16) + b"\x00")


def test_error_response_round_trip() -> None:
    e = m.error_response("28P01", 'password authentication failed for user "x"', "FATAL")
    (t, body), = list(m.iter_messages(e))
    f = m.parse_fields(body)
    assert t == ord("E") and f["C"] == "28P01" and f["S"] == "FATAL" and f["V"] == "FATAL"


def test_pop_message_in_every_split() -> None:
    stream = m.auth_md5(b"salt") + m.parameter_status("a", "b") + m.ready_for_query(b"I")
    want = [(t, bytes(body)) for t, body in m.iter_messages(stream)]
    for cut in range(len(stream) + 1):
        buf = bytearray()
        got = []
        for part in (stream[:cut], stream[cut:]):
            buf += part
            while (msg := m.pop_message(buf)) is not None:
                got.append(msg)
        assert got == want and not buf, cut
