"""ClientAuth (session/client_auth.py) without sockets: password messages in, exact bytes and outcomes out.
The SCRAM exchanges are driven by the pooler's SCRAM client side (which test_server_login.py runs against
this same server side, and the integration tests against PostgreSQL)."""

from __future__ import annotations

import hashlib
import struct

import pytest

from pgdoorman.protocol import auth
from pgdoorman.protocol import messages as m
from pgdoorman.session.client_auth import CHECK, FAILED, OK, PENDING, ClientAuth


def md5_answer(user: str, password: str, salt: bytes) -> bytes:
    inner = hashlib.md5(password.encode() + user.encode()).hexdigest().encode()
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode() + b"\x00"


def initial_response(mech: bytes, data: bytes) -> bytes:
    return mech + b"\x00" + struct.pack("!i", len(data)) + data


def sasl_exchange(a: ClientAuth, password: str, user: str = "") -> tuple[tuple[bytes, int], auth.ScramClient]:
    assert a.request() == m.auth_sasl(("SCRAM-SHA-256",))
    client = auth.ScramClient(user, password=password)
    out, st = a.feed(initial_response(b"SCRAM-SHA-256", client.client_first()))
    assert st == PENDING and out[:1] == b"R" and struct.unpack_from("!I", out, 5)[0] == 11  # SASLContinue
    return a.feed(client.server_first(out[9:])), client


def test_md5_request_and_answers() -> None:
    stored = "md5" + hashlib.md5(b"s3cretapp").hexdigest()
    a = ClientAuth("app", stored)
    req = a.request()
    assert req[:9] == b"R\x00\x00\x00\x0c\x00\x00\x00\x05" and len(req) == 13
    assert a.feed(md5_answer("app", "s3cret", req[9:])) == (b"", OK)
    wrong = ClientAuth("app", stored)
    assert wrong.feed(md5_answer("app", "nope", wrong.request()[9:])) == (b"", FAILED)
    assert wrong.why == "wrong md5 password"


def test_pg_hba_md5_uses_a_plain_password_as_its_md5_hash() -> None:
    a = ClientAuth("app", "s3cret", force_md5=True)
    assert a.feed(md5_answer("app", "s3cret", a.request()[9:])) == (b"", OK)


def test_scram_against_a_stored_verifier_keeps_the_client_key() -> None:
    stored = auth.scram_verifier_for("s3cret")
    (out, st), client = sasl_exchange(ClientAuth("app", stored), "s3cret")
    assert st == OK and out[:1] == b"R" and struct.unpack_from("!I", out, 5)[0] == 12  # SASLFinal
    client.server_final(out[9:])  # the client checks our server signature
    a = ClientAuth("app", stored)
    sasl_exchange(a, "s3cret")
    assert a.client_key is not None and len(a.client_key) == 32


def test_scram_with_a_plain_password_uses_the_cached_verifier() -> None:
    calls: list[int] = []
    verifier = auth.ScramVerifier.from_password("s3cret")

    def cached() -> auth.ScramVerifier:
        calls.append(1)
        return verifier

    a = ClientAuth("app", "s3cret", plain_verifier=cached)
    (_, st), _ = sasl_exchange(a, "s3cret")
    assert st == OK and calls == [1] and a.client_key is None  # no passthrough key from a plain password


def test_wrong_scram_password_fails() -> None:
    a = ClientAuth("app", auth.scram_verifier_for("s3cret"))
    (out, st), _ = sasl_exchange(a, "nope")
    assert (out, st) == (b"", FAILED) and a.why
    assert a.feed(b"more") == (b"", FAILED)  # nothing after the end


def test_unknown_user_gets_a_stable_salt_and_always_fails() -> None:
    salts = []
    for _ in range(2):
        a = ClientAuth("ghost", "")
        client = auth.ScramClient("ghost", password="whatever")
        out, _ = a.feed(initial_response(b"SCRAM-SHA-256", client.client_first()))
        salts.append([x for x in out[9:].split(b",") if x.startswith(b"s=")][0])
        assert a.feed(client.server_first(out[9:]))[1] == FAILED
    assert salts[0] == salts[1]
    md5 = ClientAuth("ghost", "", force_md5=True)  # no md5 request for a user without a password either
    assert md5.request() == m.auth_sasl(("SCRAM-SHA-256",))


def test_cleartext_hands_the_password_over() -> None:
    a = ClientAuth("app", "", cleartext=True)
    assert a.request() == m.AUTH_CLEARTEXT
    assert a.feed(b"tok.en.value\x00") == (b"", CHECK) and a.password == "tok.en.value"


def test_malformed_initial_response_is_a_protocol_violation() -> None:
    a = ClientAuth("app", auth.scram_verifier_for("x"))
    with pytest.raises(m.ProtocolViolation):
        a.feed(b"SCRAM-SHA-256\x00\x00\x00")
    b = ClientAuth("app", auth.scram_verifier_for("x"))
    assert b.feed(initial_response(b"SCRAM-SHA-1", b"n,,n=,r=abc"))[1] == FAILED  # unsupported mechanism


def test_scram_without_an_initial_response_gets_an_empty_challenge() -> None:
    """SASLInitialResponse with data length -1: SASL's empty challenge, then the client-first-message comes as a
    SASLResponse (as PostgreSQL takes it)."""
    stored = auth.scram_verifier_for("s3cret")
    a = ClientAuth("app", stored)
    a.request()
    out, st = a.feed(b"SCRAM-SHA-256\x00" + struct.pack("!i", -1))
    assert (out, st) == (m.auth_sasl_continue(b""), PENDING)
    client = auth.ScramClient("app", password="s3cret")
    out, st = a.feed(client.client_first())
    assert st == PENDING and struct.unpack_from("!I", out, 5)[0] == 11
    out, st = a.feed(client.server_first(out[9:]))
    assert st == OK and a.client_key is not None


@pytest.mark.parametrize("body,words", [
    (b"SCRAM-SHA-256", "invalid string in message"),
    (b"SCRAM-SHA-256\x00\x00\x00", "insufficient data left in message"),
    (b"SCRAM-SHA-256\x00" + struct.pack("!i", 9) + b"n,,", "insufficient data left in message"),
    (b"SCRAM-SHA-256\x00" + struct.pack("!i", -2), "insufficient data left in message"),
    (b"SCRAM-SHA-256\x00" + struct.pack("!i", 1) + b"nn", "invalid message format"),
])
def test_a_broken_sasl_initial_response_in_postgresqls_words(body: bytes, words: str) -> None:
    a = ClientAuth("app", auth.scram_verifier_for("s3cret"))
    a.request()
    with pytest.raises(m.ProtocolViolation, match=words):
        a.feed(body)


@pytest.mark.parametrize("body", [b"md5abc", b"md5abc\x00xx", b"", b"a\x00b\x00"])
def test_a_password_message_is_one_string(body: bytes) -> None:
    for a in (ClientAuth("app", "md5" + "0" * 32), ClientAuth("app", "x", cleartext=True)):
        a.request()
        assert not a.sasl
        with pytest.raises(m.ProtocolViolation, match="invalid password packet size"):
            a.feed(body)
