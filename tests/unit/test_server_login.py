"""BackendLogin (session/server_login.py) without sockets: backend messages in, exact bytes out, as h11's
tests drive its state machine. The SCRAM exchanges run against the pooler's own SCRAM server side, which
the client-login tests check against PostgreSQL's verifiers."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

import pytest

from pgdoorman.protocol import auth
from pgdoorman.session.server_login import PENDING, READY, REFUSED, BackendLogin


@dataclass
class Creds:
    server_user: str = "app"
    server_secret: str | None = "s3cret"
    jwt_server_key: Any = None
    scram_client_key: bytes | None = None


def r(code: int, rest: bytes = b"") -> bytes:
    return struct.pack("!I", code) + rest


def frame(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def test_startup_packet_bytes() -> None:
    got = BackendLogin(Creds()).startup_packet("db1", "pg_doorman")
    body = struct.pack("!I", 196608) + b"user\x00app\x00database\x00db1\x00application_name\x00pg_doorman\x00\x00"
    assert got == struct.pack("!I", len(body) + 4) + body


def test_md5_answer_is_postgresqls_formula() -> None:
    salt = b"\x01\x02\x03\x04"
    inner = hashlib.md5(b"s3cret" + b"app").hexdigest().encode()
    want = b"md5" + hashlib.md5(inner + salt).hexdigest().encode() + b"\x00"
    assert BackendLogin(Creds()).feed(82, r(5, salt)) == (frame(b"p", want), PENDING)
    # A stored md5 hash is used as is (the inner digest), as PostgreSQL stores it.
    stored = "md5" + inner.decode()
    assert BackendLogin(Creds(server_secret=stored)).feed(82, r(5, salt)) == (frame(b"p", want), PENDING)


def test_cleartext_answer() -> None:
    assert BackendLogin(Creds()).feed(82, r(3)) == (frame(b"p", b"s3cret\x00"), PENDING)


@pytest.mark.parametrize("secret,code,why", [
    (None, 5, "md5 password and none is configured"), ("", 3, "no plain-text password"),
    ("md5" + "0" * 32, 3, "no plain-text password"), ("md5" + "0" * 32, 10, "is an md5 hash"),
    (auth.scram_verifier_for("x"), 5, "is a SCRAM verifier"), (auth.scram_verifier_for("x"), 10, "passthrough"),
    ("s3cret", 7, "unsupported authentication request 7"),
])
def test_secrets_that_cannot_answer(secret: str | None, code: int, why: str) -> None:
    body = r(code, b"SCRAM-SHA-256\x00\x00" if code == 10 else b"\x00" * 4)
    with pytest.raises(auth.AuthError, match=why):
        BackendLogin(Creds(server_secret=secret)).feed(82, body)


def test_jwt_key_refuses_md5_and_scram() -> None:
    for code in (5, 10):
        with pytest.raises(auth.AuthError, match="JWT key"):
            BackendLogin(Creds(jwt_server_key=object())).feed(82, r(code, b"SCRAM-SHA-256\x00\x00"))


def test_sasl_messages_out_of_order() -> None:
    with pytest.raises(auth.AuthError, match="unexpected SASL continue"):
        BackendLogin(Creds()).feed(82, r(11, b"r=x"))
    with pytest.raises(auth.AuthError, match="unsupported SASL mechanisms"):
        BackendLogin(Creds()).feed(82, r(10, b"SCRAM-SHA-1\x00\x00"))


def scram_exchange(login: BackendLogin, server: auth.ScramServer) -> None:
    out, st = login.feed(82, r(10, b"SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00"))
    assert st == PENDING and out[:1] == b"p" and struct.unpack_from("!I", out, 1)[0] == len(out) - 1
    mech, rest = out[5:].split(b"\x00", 1)
    assert mech == b"SCRAM-SHA-256"
    (n,) = struct.unpack_from("!i", rest, 0)
    server_first = server.client_first(mech.decode(), rest[4:4 + n])
    out, st = login.feed(82, r(11, server_first))
    assert st == PENDING and out[:1] == b"p"
    server_final = server.client_final(out[5:])
    assert login.feed(82, r(12, server_final)) == (b"", PENDING)
    assert login.feed(82, r(0)) == (b"", PENDING)


def test_scram_with_password_then_passthrough_with_the_learned_key() -> None:
    stored = auth.scram_verifier_for("s3cret")
    verifier = auth.ScramVerifier.parse(stored)
    first = auth.ScramServer(verifier)
    scram_exchange(BackendLogin(Creds()), first)
    assert first.client_key is not None
    # The pool stores the verifier and replays the ClientKey a client proved (SCRAM passthrough).
    creds = Creds(server_secret=stored)
    login = BackendLogin(creds)
    creds.scram_client_key = first.client_key  # learned after the login started: read when asked
    scram_exchange(login, auth.ScramServer(verifier))


def test_wrong_server_signature_fails() -> None:
    login = BackendLogin(Creds())
    server = auth.ScramServer(auth.ScramVerifier.parse(auth.scram_verifier_for("other")))
    out, _ = login.feed(82, r(10, b"SCRAM-SHA-256\x00\x00"))
    mech, rest = out[5:].split(b"\x00", 1)
    login.feed(82, r(11, server.client_first(mech.decode(), rest[4:])))
    with pytest.raises(auth.AuthError):
        login.feed(82, r(12, b"v=" + b"A" * 44))


def test_parameters_key_and_ready() -> None:
    login = BackendLogin(Creds())
    assert login.feed(83, b"server_version\x0016.1\x00") == (b"", PENDING)
    assert login.feed(78, b"SNOTICE\x00Mhello\x00\x00") == (b"", PENDING)
    assert login.feed(75, struct.pack("!Ii", 4242, -7)) == (b"", PENDING)
    assert login.feed(90, b"I") == (b"", READY)
    assert (login.params, login.pid, login.secret) == ({"server_version": "16.1"}, 4242, -7)


def test_refusal_keeps_postgresqls_fields() -> None:
    login = BackendLogin(Creds())
    out, st = login.feed(69, b"SFATAL\x00C28P01\x00Mpassword authentication failed\x00\x00")
    assert (out, st) == (b"", REFUSED)
    assert login.error["C"] == "28P01" and login.error["M"] == "password authentication failed"


def test_unexpected_message_during_login() -> None:
    with pytest.raises(auth.AuthError, match="unexpected message 'D'"):
        BackendLogin(Creds()).feed(68, b"\x00\x00")


END_POINT = bytes(range(32))


def _sasl(*mechanisms: bytes) -> bytes:
    return r(10, b"".join(x + b"\x00" for x in mechanisms) + b"\x00")


@pytest.mark.parametrize("end_point,offered,mechanism,gs2", [
    (END_POINT, (b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256"), b"SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,"),
    (END_POINT, (b"SCRAM-SHA-256",), b"SCRAM-SHA-256", b"n,,"),  # not offered: no binding, and "n", never "y"
    (None, (b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256"), b"SCRAM-SHA-256", b"n,,"),  # no TLS, or no hash to bind
])
def test_scram_binds_to_tls_when_offered(end_point: bytes | None, offered: tuple[bytes, ...], mechanism: bytes,
                                         gs2: bytes) -> None:
    """As libpq's default channel_binding=prefer: SCRAM-SHA-256-PLUS over TLS when PostgreSQL offers it."""
    login = BackendLogin(Creds())
    login.end_point = end_point
    out, st = login.feed(82, _sasl(*offered))
    assert st == PENDING and out[5:].startswith(mechanism + b"\x00") and out[5 + len(mechanism) + 5:].startswith(gs2)


@pytest.mark.parametrize("server_end_point,ok", [(END_POINT, True), (bytes(32), False)])
def test_a_bound_exchange_with_the_pooler_s_own_server_side(server_end_point: bytes, ok: bool) -> None:
    """The client side's binding data against the server side's check (a server showing another certificate
    than the one the pooler saw: a man in the middle)."""
    verifier = auth.ScramVerifier.from_password("s3cret", b"0123456789abcdef", 4096)
    server = auth.ScramServer(verifier, end_point=server_end_point)
    client = auth.ScramClient("app", password="s3cret", end_point=END_POINT)
    first = server.client_first(client.mechanism, client.client_first())
    final = client.server_first(first)
    if ok:
        client.server_final(server.client_final(final))
        assert client.server_verified
        return
    with pytest.raises(auth.AuthError, match="SCRAM channel binding check failed"):
        server.client_final(final)
