"""Tests for pgdoorman.protocol.auth: md5 and SCRAM-SHA-256 against RFC and PostgreSQL 15 vectors,
malformed-message handling, SASLprep, and a live login to a throwaway PostgreSQL 15 cluster."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import shutil
import socket
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgdoorman.protocol.auth import (
    AuthError,
    ScramClient,
    ScramServer,
    ScramVerifier,
    is_md5_hash,
    is_scram_verifier,
    md5_response,
    md5_stored,
    md5_verify,
    saslprep,
    scram_verifier_for,
)

# --------------------------------------------------------------------------- vectors

# RFC 7677 section 3.
RFC_CLIENT_NONCE = b"rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

# Produced by PostgreSQL 15 itself (SET password_encryption=...; CREATE ROLE r PASSWORD ...;
# SELECT rolpassword FROM pg_authid). The non-ASCII ones pin down PostgreSQL's SASLprep:
# x_c8 and x_bidi and x_ctl are rejected by SASLprep, so PostgreSQL hashed the raw UTF-8 bytes
# (x_c8 also shows that PostgreSQL checks prohibited characters *before* NFKC: NFKC would
# have turned U+0340 into an allowed U+0300).
PG15_SCRAM_VECTORS = [
    (
        "secret",
        "SCRAM-SHA-256$4096:W7Hzg1bPBOLQ+TGcP+bewg==$uOTlVMbDPSo2WRrcq/dyXGHNdhazvURhfgoDdE0HgZc=:pDho9j5fUgmq24ytPgWZ97TJkldpy5Spjmh2diKYIus=",
    ),
    (
        "I\u00adX",
        "SCRAM-SHA-256$4096:TcTLrbWVAynj8ptqt5pvYQ==$ypgSfjR25jugwAj5MJ7wdw16Nlv9WBULzVJdlHbsQCk=:GioCfFQgY79ewcHryf9fcu5BGjwq48vRo1kS8hao9Xs=",
    ),
    (
        "\u2168",
        "SCRAM-SHA-256$4096:gJaZo35Ys2+Gk/zwmoZDtQ==$LL2IHzrwiX2Nz6Yc3wgfQysUwNBJJHUXHOYuAKQCSgg=:Tg3TjS4dWvlwg9oA9PG41I90RUGWLoPLsViJ6Rji5eM=",
    ),
    (
        "a\u0340",
        "SCRAM-SHA-256$4096:maO7wF6cD29L+MRE+2c2Ug==$5e+BRPJKIcDnfwfQfJANYRFJO0EHyTzPMZzuBc+Pb7o=:UFqMqHyC33hDPQvwLTAn753ReDLfafs30WTt0dOjBl0=",
    ),
    (
        "\u06271",
        "SCRAM-SHA-256$4096:+GeEohO0SrpeNoOMrpKyCA==$gWAm4JAX+WuzjjwwAuQtHj4M7Gm0rKB0CoQI0r7Fv5I=:geg91HEXnE3DFAM+HTNf50S/2ixdun6nU76rrNrZTGk=",
    ),
    (
        "\u00a0p\u00e4ssw\u00f6rd",
        "SCRAM-SHA-256$4096:FAhBPtdZ2zMMbE31bWX3mw==$07t8ITbUEKJOL+8lB3YVnLq59DeoKcbffbL9d5hoFNg=:Hj8OwsqsSYtWH4XMRimXqyqHFs0w5srU5qxaWWAy0Wo=",
    ),
    (
        "\u00e4\u0007",
        "SCRAM-SHA-256$4096:l0bkNw8nIfzFyqBnFQW9Qw==$6MMC6ypO9aWekFAgA5QX+r2AlV1npvAQYeGUbt14jr0=:dd9Ue1JXjRm/uUkIqAlhF0icC/qbTvT/qYB4Ak/NtVQ=",
    ),
]

# PostgreSQL 15 with password_encryption='md5': (role, password, rolpassword).
PG15_MD5_VECTORS = [
    ("md5user", "secret", "md52aea419619857e8a27f0f7aa641db0c6"),
    ("md5uni", "p\u00e4ss", "md56480ad3dd108c5fe4fb21722faabf520"),
]

FAST = 2  # iteration count for tests that only exercise message handling


def _server(password: str = "pencil", iterations: int = FAST, nonce: bytes | None = None) -> ScramServer:
    return ScramServer(ScramVerifier.from_password(password, b"0123456789abcdef", iterations), nonce=nonce)


def _first_exchange(password: str = "pencil") -> tuple[ScramServer, ScramClient, bytes]:
    """Run client-first/server-first; return server, client and the client-final message."""
    server = _server()
    client = ScramClient(password=password)
    server_first = server.client_first("SCRAM-SHA-256", client.client_first())
    return server, client, client.server_first(server_first)


# --------------------------------------------------------------------------- RFC 7677


def test_rfc7677_client_side() -> None:
    client = ScramClient(username="user", password="pencil", nonce=RFC_CLIENT_NONCE)
    assert client.client_first() == RFC_CLIENT_FIRST
    assert client.server_first(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    assert client.salt == RFC_SALT and client.iterations == 4096
    client.server_final(RFC_SERVER_FINAL)
    assert client.server_verified


def test_rfc7677_server_side() -> None:
    verifier = ScramVerifier.from_password("pencil", RFC_SALT, 4096)
    server = ScramServer(verifier, nonce=RFC_SERVER_NONCE)
    assert server.client_first("SCRAM-SHA-256", RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    # The recovered ClientKey is HMAC(SaltedPassword, "Client Key").
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    assert server.client_key == hmac.new(salted, b"Client Key", hashlib.sha256).digest()


def test_rfc7677_replayed_client_key_produces_same_proof() -> None:
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    client = ScramClient(
        username="user", client_key=client_key, server_key=server_key, nonce=RFC_CLIENT_NONCE
    )
    assert client.client_first() == RFC_CLIENT_FIRST
    assert client.server_first(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.server_final(RFC_SERVER_FINAL)
    assert client.server_verified


# --------------------------------------------------------------------------- verifiers


@pytest.mark.parametrize(("password", "stored"), PG15_SCRAM_VECTORS)
def test_pg15_scram_verifiers(password: str, stored: str) -> None:
    parsed = ScramVerifier.parse(stored)
    assert str(parsed) == stored
    assert is_scram_verifier(stored)
    assert str(ScramVerifier.from_password(password, parsed.salt, parsed.iterations)) == stored
    # And the full exchange against PostgreSQL's verifier works with that password.
    server = ScramServer(parsed)
    client = ScramClient(password=password)
    client_final = client.server_first(server.client_first("SCRAM-SHA-256", client.client_first()))
    client.server_final(server.client_final(client_final))
    assert client.server_verified


def test_from_password_defaults_and_fresh_salt() -> None:
    a = ScramVerifier.from_password("pw")
    b = ScramVerifier.from_password("pw")
    assert a.iterations == 4096 and len(a.salt) == 16 and a.salt != b.salt
    s = scram_verifier_for("pw")
    assert s.startswith("SCRAM-SHA-256$4096:") and is_scram_verifier(s)
    assert "stored_key" not in repr(a) and base64.b64encode(a.stored_key).decode() not in repr(a)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "secret",
        "md52aea419619857e8a27f0f7aa641db0c6",
        "SCRAM-SHA-1$4096:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=",  # no ServerKey
        "SCRAM-SHA-256$4096c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",  # no ':' after iterations
        "SCRAM-SHA-256$0:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",  # iterations 0
        "SCRAM-SHA-256$-1:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$x:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$99999999999:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:c2F!dA==$" + "A" * 43 + "=:" + "A" * 43 + "=",  # bad b64 salt
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 42 + "=:" + "A" * 43 + "=",  # bad padding
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 40 + "==:" + "A" * 43 + "=",  # 31-byte key
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=$extra",
    ],
)
def test_verifier_parse_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        ScramVerifier.parse(bad)
    assert not is_scram_verifier(bad)


def test_verifier_constructor_validates() -> None:
    with pytest.raises(ValueError):
        ScramVerifier(0, b"s", b"k" * 32, b"k" * 32)
    with pytest.raises(ValueError):
        ScramVerifier(1, b"s", b"k" * 31, b"k" * 32)
    with pytest.raises(ValueError):
        ScramVerifier.from_password("pw", iterations=0)


# --------------------------------------------------------------------------- md5


@pytest.mark.parametrize(("user", "password", "stored"), PG15_MD5_VECTORS)
def test_md5_stored_matches_pg15(user: str, password: str, stored: str) -> None:
    assert md5_stored(user, password) == stored
    assert is_md5_hash(stored) and not is_scram_verifier(stored)


def test_md5_response_formula_and_pass_the_hash() -> None:
    salt = b"\x01\x02\x03\x04"
    inner = hashlib.md5(b"secretmd5user").hexdigest().encode()
    expected = b"md5" + hashlib.md5(inner + salt).hexdigest().encode()
    assert md5_response("md5user", "secret", salt) == expected
    assert md5_response("md5user", "md52aea419619857e8a27f0f7aa641db0c6", salt) == expected
    assert len(expected) == 35 and not expected.endswith(b"\x00")


def test_md5_verify() -> None:
    salt = os.urandom(4)
    good = md5_response("alice", "pw", salt)
    stored = md5_stored("alice", "pw")
    assert md5_verify("alice", stored, salt, good)
    assert md5_verify("alice", stored, salt, good + b"\x00")
    assert md5_verify("alice", "pw", salt, good + b"\x00")  # plain-text stored password
    assert not md5_verify("alice", stored, salt, md5_response("alice", "wrong", salt))
    assert not md5_verify("bob", "pw", salt, good)  # the username is part of the hash
    assert not md5_verify("alice", stored, b"\x00\x00\x00\x00", good)  # other salt
    assert not md5_verify("alice", stored, salt, good + b"\x00\x00")
    assert not md5_verify("alice", stored, salt, b"")
    assert not md5_verify("alice", "", salt, md5_response("alice", "", salt))  # empty never matches
    assert not md5_verify("alice", scram_verifier_for("pw"), salt, good)  # SCRAM cannot do md5


def test_is_md5_hash() -> None:
    assert is_md5_hash("md5" + "0123456789abcdef" * 2)
    assert not is_md5_hash("md5" + "0123456789ABCDEF" * 2)  # PostgreSQL wants lowercase
    assert not is_md5_hash("md5" + "0" * 31)
    assert not is_md5_hash("md5" + "0" * 33)
    assert not is_md5_hash("MD5" + "0" * 32)
    assert not is_md5_hash("md5" + "g" * 32)
    # A plain-text password that merely starts with "md5" is hashed, not passed through.
    assert md5_response("u", "md5secret", b"salt") != md5_response("u", "secret", b"salt")


# --------------------------------------------------------------------------- round trips


def test_round_trip_password() -> None:
    server, client, client_final = _first_exchange()
    client.server_final(server.client_final(client_final))
    assert client.server_verified
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", b"0123456789abcdef", FAST)
    assert server.client_key == hmac.new(salted, b"Client Key", hashlib.sha256).digest()


@pytest.mark.parametrize("with_server_key", [True, False])
def test_round_trip_client_key_replay(with_server_key: bool) -> None:
    verifier = ScramVerifier.from_password("pencil", b"salty", FAST)
    # A client authenticates to the pooler ...
    front = ScramServer(verifier)
    user = ScramClient(password="pencil")
    front_final = front.client_final(
        user.server_first(front.client_first("SCRAM-SHA-256", user.client_first()))
    )
    user.server_final(front_final)
    assert front.client_key is not None
    # ... and the pooler replays the recovered ClientKey to a backend with the same verifier.
    back = ScramServer(verifier)
    replay = ScramClient(
        client_key=front.client_key, server_key=verifier.server_key if with_server_key else None
    )
    back_final = back.client_final(
        replay.server_first(back.client_first("SCRAM-SHA-256", replay.client_first()))
    )
    assert back.client_key == front.client_key
    replay.server_final(back_final)
    assert replay.server_verified is with_server_key
    assert replay.salt == verifier.salt and replay.iterations == verifier.iterations


def test_replay_with_server_key_detects_forged_server_final() -> None:
    verifier = ScramVerifier.from_password("pencil", b"salty", FAST)
    client = ScramClient(client_key=b"\x00" * 32, server_key=verifier.server_key, nonce=b"cn")
    client.client_first()
    client.server_first(b"r=cnFORGED,s=c2FsdHk=,i=2")
    with pytest.raises(AuthError, match="signature"):
        client.server_final(b"v=" + base64.b64encode(b"\x00" * 32))
    assert not client.server_verified


def test_replay_with_mismatched_salt_fails() -> None:
    front_verifier = ScramVerifier.from_password("pencil", b"salt-one", FAST)
    front = ScramServer(front_verifier)
    user = ScramClient(password="pencil")
    front.client_final(user.server_first(front.client_first("SCRAM-SHA-256", user.client_first())))
    assert front.client_key is not None
    back = ScramServer(ScramVerifier.from_password("pencil", b"salt-two", FAST))
    replay = ScramClient(client_key=front.client_key)
    client_final = replay.server_first(back.client_first("SCRAM-SHA-256", replay.client_first()))
    assert replay.salt == b"salt-two" != front_verifier.salt
    with pytest.raises(AuthError):
        back.client_final(client_final)


def test_wrong_password() -> None:
    server, client, client_final = _first_exchange(password="pencil-wrong")
    with pytest.raises(AuthError) as exc:
        server.client_final(client_final)
    assert "pencil" not in str(exc.value)
    assert server.client_key is None
    # A failed exchange cannot be resumed.
    with pytest.raises(AuthError):
        server.client_final(client_final)


def test_tampered_proof() -> None:
    server, _client, client_final = _first_exchange()
    head, proof_b64 = client_final.rsplit(b",p=", 1)
    proof = bytearray(base64.b64decode(proof_b64))
    proof[0] ^= 0x01
    with pytest.raises(AuthError, match="proof"):
        server.client_final(head + b",p=" + base64.b64encode(bytes(proof)))
    assert server.client_key is None


def test_client_final_nonce_mismatch() -> None:
    server, _client, client_final = _first_exchange()
    tampered = client_final.replace(b",r=", b",r=X", 1)
    with pytest.raises(AuthError) as ei:
        server.client_final(tampered)
    assert (ei.value.sqlstate, ei.value.message, ei.value.detail) == ("08P01", "invalid SCRAM response",
                                                                        "Nonce does not match.")


@pytest.mark.parametrize(
    "server_nonce",
    [
        "SAME",  # replaced by exactly the client nonce: the server added nothing
        "other-nonce-entirely",
        "",
    ],
)
def test_server_first_nonce_mismatch(server_nonce: str) -> None:
    client = ScramClient(password="pencil", nonce=b"clientnonce")
    client.client_first()
    nonce = "clientnonce" if server_nonce == "SAME" else server_nonce
    with pytest.raises(AuthError):
        client.server_first(f"r={nonce},s=c2FsdA==,i=4096".encode())


def test_server_first_nonce_with_comma_free_extension_is_fine() -> None:
    client = ScramClient(password="pencil", nonce=b"cn")
    client.client_first()
    assert client.server_first(b"r=cnSN,s=c2FsdA==,i=2,x=ext").startswith(b"c=biws,r=cnSN,p=")


# --------------------------------------------------------------------------- malformed: server side


M = "malformed SCRAM message"


@pytest.mark.parametrize(
    ("mechanism", "message", "refusal"),
    [  # PostgreSQL's read_client_first_message: SQLSTATE, message, detail
        ("SCRAM-SHA-256", b"n,,n=,", ("08P01", M, 'Expected attribute "r" but found "0x00".')),
        ("SCRAM-SHA-256", b"n,,n=", ("08P01", M, 'Expected attribute "r" but found "0x00".')),
        ("SCRAM-SHA-256", b"n,,r=abc", ("08P01", M, '''Expected attribute "n" but found "'r'".''')),
        ("SCRAM-SHA-256", b"n,,n=,r=ab\x7fc", ("08P01", "non-printable characters in SCRAM nonce", None)),
        ("SCRAM-SHA-256", b"n,,n=,x=abc", ("08P01", M, '''Expected attribute "r" but found "'x'".''')),
        ("SCRAM-SHA-256", b"n,,n=,r=abc,=bad", ("08P01", M, '''Attribute expected, but found invalid character "'='".''')),
        ("SCRAM-SHA-256", b"n,,n=,r=abc,x", ("08P01", M, 'Expected character "=" for attribute "x".')),
        ("SCRAM-SHA-256", b"p=tls-server-end-point,,n=,r=abc", ("08P01", M, "The client selected SCRAM-SHA-256 "
                          "without channel binding, but the SCRAM message includes channel binding data.")),
        ("SCRAM-SHA-256", b"n,a=admin,n=,r=abc",
         ("0A000", "client uses authorization identity, but it is not supported", None)),
        ("SCRAM-SHA-256", b"n,,m=ext,n=,r=abc", ("0A000", "client requires an unsupported SCRAM extension", None)),
        ("SCRAM-SHA-256", b"x,,n=,r=abc", ("08P01", M, '''Unexpected channel-binding flag "'x'".''')),
        ("SCRAM-SHA-256", b"n;,n=,r=abc", ("08P01", M, '''Comma expected, but found character "';'".''')),
        ("SCRAM-SHA-256", b"n,x,n=,r=abc", ("08P01", M, '''Unexpected attribute "'x'" in client-first-message.''')),
        ("SCRAM-SHA-256", b"n", ("08P01", M, 'Comma expected, but found character "0x00".')),
        ("SCRAM-SHA-256", b"", ("08P01", M, "The message is empty.")),
        ("SCRAM-SHA-256", b"n,,n=\0,r=abc", ("08P01", M, "Message length does not match input length.")),
        ("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc",
         ("08P01", "client selected an invalid SASL authentication mechanism", None)),
        ("SCRAM-SHA-1", b"n,,n=,r=abc", ("08P01", "client selected an invalid SASL authentication mechanism", None)),
        ("", b"n,,n=,r=abc", ("08P01", "client selected an invalid SASL authentication mechanism", None)),
    ],
)
def test_server_rejects_malformed_client_first(mechanism: str, message: bytes,
                                               refusal: tuple[str, str, str | None]) -> None:
    server = _server()
    with pytest.raises(AuthError) as ei:
        server.client_first(mechanism, message)
    assert (ei.value.sqlstate, ei.value.message, ei.value.detail) == refusal
    with pytest.raises(AuthError):  # and the exchange is dead
        server.client_first("SCRAM-SHA-256", b"n,,n=,r=abc")


@pytest.mark.parametrize("message", [b"n,,n=,r=", b"n,,n=\xff\xfe,r=abc", b"y,,n=x,r=abc,e=1,F=2"])
def test_server_takes_what_postgresql_takes_in_client_first(message: bytes) -> None:
    """An empty nonce (printable: no character is not), a user name in any bytes (ignored), extensions."""
    server = _server(nonce=b"SRV")
    assert server.client_first("SCRAM-SHA-256", message).startswith(b"r=" + message.split(b"r=")[1].split(b",")[0])


def test_server_accepts_extensions_in_client_first() -> None:
    server = _server(nonce=b"SRV")
    assert server.client_first("SCRAM-SHA-256", b"n,,n=user,r=abc,x=ext") == (
        b"r=abcSRV,s=" + base64.b64encode(b"0123456789abcdef") + b",i=2"
    )


def _manual_client_final(password: bytes, gs2: str, bare: str, server_first: bytes, extra: str = "",
                         cbind: bytes = b"") -> bytes:
    """An independent client-final computation, to drive the server with unusual headers (`cbind`: the
    channel binding data after the gs2 header)."""
    attrs = dict(a.split("=", 1) for a in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password, base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = f"c={base64.b64encode(gs2.encode() + cbind).decode()},r={attrs['r']}{extra}"
    auth = f"{bare},{server_first.decode()},{without_proof}".encode()
    sig = hmac.new(stored_key, auth, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, sig, strict=True))
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


def test_server_accepts_y_flag() -> None:
    server = _server()
    bare = "n=,r=clientnonce"
    server_first = server.client_first("SCRAM-SHA-256", ("y,," + bare).encode())
    final = server.client_final(_manual_client_final(b"pencil", "y,,", bare, server_first))
    assert final.startswith(b"v=") and server.client_key is not None


def test_server_rejects_cbind_not_matching_header() -> None:
    # Client said "y,," in client-first but echoes "n,," in c=: PostgreSQL refuses that.
    server = _server()
    bare = "n=,r=clientnonce"
    server_first = server.client_first("SCRAM-SHA-256", ("y,," + bare).encode())
    with pytest.raises(AuthError, match="channel-binding attribute"):
        server.client_final(_manual_client_final(b"pencil", "n,,", bare, server_first))


def test_server_accepts_extension_before_proof() -> None:
    server = _server()
    bare = "n=,r=clientnonce"
    server_first = server.client_first("SCRAM-SHA-256", ("n,," + bare).encode())
    final = server.client_final(_manual_client_final(b"pencil", "n,,", bare, server_first, extra=",x=ext"))
    assert final.startswith(b"v=")


@pytest.mark.parametrize(
    ("mutate", "refusal"),
    [  # PostgreSQL's read_client_final_message and the nonce check after it
        (lambda m: m.replace(b"c=biws,", b""), ("08P01", M, '''Expected attribute "c" but found "'r'".''')),
        (lambda m: m.replace(b"c=biws", b"c=bi!s"),
         ("08P01", "unexpected SCRAM channel-binding attribute in client-final-message", None)),
        (lambda m: m.replace(b"c=biws", b"c=eSws"),  # "y,," where it said "n,,"
         ("08P01", "unexpected SCRAM channel-binding attribute in client-final-message", None)),
        (lambda m: m.replace(b"c=biws", b"c=" + base64.b64encode(b"p=tls-server-end-point,,")),
         ("08P01", "unexpected SCRAM channel-binding attribute in client-final-message", None)),
        (lambda m: m.split(b",p=")[0], ("08P01", M, "Attribute expected, but found end of string.")),
        (lambda m: m.replace(b",r=", b",x="), ("08P01", M, '''Expected attribute "r" but found "'x'".''')),
        (lambda m: m.split(b",r=")[0], ("08P01", M, 'Expected attribute "r" but found "0x00".')),
        (lambda m: m + b",x=after", ("08P01", M, "Garbage found at the end of client-final-message.")),
        (lambda m: m.replace(b",p=", b",p=!"), ("08P01", M, "Malformed proof in client-final-message.")),
        (lambda m: m.split(b",p=")[0] + b",p=" + base64.b64encode(b"\x00" * 31),
         ("08P01", M, "Malformed proof in client-final-message.")),
        (lambda m: m.split(b",p=")[0] + b",p=", ("08P01", M, "Malformed proof in client-final-message.")),
        (lambda m: m.split(b",p=")[0] + b",=x,p=AAAA",
         ("08P01", M, '''Attribute expected, but found invalid character "'='".''')),
        (lambda m: b"\xff" + m, ("08P01", M, 'Expected attribute "c" but found "0xff".')),
        (lambda m: b"", ("08P01", M, "The message is empty.")),
    ],
)
def test_server_rejects_malformed_client_final(mutate: Callable[[bytes], bytes],
                                               refusal: tuple[str, str, str | None]) -> None:
    server, _client, client_final = _first_exchange()
    with pytest.raises(AuthError) as ei:
        server.client_final(mutate(client_final))
    assert (ei.value.sqlstate, ei.value.message, ei.value.detail) == refusal
    assert server.client_key is None


def test_server_state_machine() -> None:
    server = _server()
    with pytest.raises(AuthError, match="unexpected"):
        server.client_final(b"c=biws,r=x,p=AAAA")
    server2, client, client_final = _first_exchange()
    server2.client_final(client_final)
    with pytest.raises(AuthError, match="unexpected"):
        server2.client_final(client_final)  # no second final on a finished exchange
    with pytest.raises(ValueError):
        ScramServer(ScramVerifier.from_password("x", b"s", FAST), nonce=b"bad,nonce")


# --------------------------------------------------------------------------- malformed: client side


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (b"s=c2FsdA==,i=4096", "'r'"),
        (b"r=cnSN,i=4096", "'s'"),
        (b"r=cnSN,s=c2FsdA==", "'i'"),
        (b"r=cnSN,s=c2F!dA==,i=4096", "base64"),
        (b"r=cnSN,s=c2FsdA=,i=4096", "base64"),
        (b"r=cnSN,s=c2FsdA==,i=0", "out of range"),
        (b"r=cnSN,s=c2FsdA==,i=10000001", "out of range"),
        (b"r=cnSN,s=c2FsdA==,i=-1", "iteration"),
        (b"r=cnSN,s=c2FsdA==,i=abc", "iteration"),
        (b"r=cnSN,s=c2FsdA==,i=", "iteration"),
        (b"r=cnSN,s=c2FsdA==,i=4096,bad", "attribute"),
        (b"m=ext,r=cnSN,s=c2FsdA==,i=4096", "extension"),
        (b"e=other-error", "'r'"),
        (b"r=cnS\x01,s=c2FsdA==,i=4096", "nonce"),
        (b"r=cnSN\xff,s=c2FsdA==,i=4096", "UTF-8"),
        (b"", "attribute"),
    ],
)
def test_client_rejects_malformed_server_first(message: bytes, match: str) -> None:
    client = ScramClient(password="pencil", nonce=b"cn")
    client.client_first()
    with pytest.raises(AuthError, match=match):
        client.server_first(message)
    with pytest.raises(AuthError):  # dead after a failure
        client.server_first(b"r=cnSN,s=c2FsdA==,i=2")


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (b"e=invalid-proof", "invalid-proof"),
        (b"e=bad\x01stuff" + b"A" * 100, "server reported SCRAM error: bad\\?stuff"),
        (b"v=!!!!", "base64"),
        (b"v=" + base64.b64encode(b"\x00" * 32), "signature"),
        (b"x=whatever", "'v'"),
        (b"", "attribute"),
    ],
)
def test_client_rejects_bad_server_final(message: bytes, match: str) -> None:
    _server_, client, _final = _first_exchange()
    with pytest.raises(AuthError, match=match) as exc:
        client.server_final(message)
    assert len(str(exc.value)) < 120
    assert not client.server_verified


def test_client_state_machine_and_arguments() -> None:
    client = ScramClient(password="pencil")
    with pytest.raises(AuthError):
        client.server_first(b"r=x,s=c2FsdA==,i=2")
    client2 = ScramClient(password="pencil")
    client2.client_first()
    with pytest.raises(AuthError):
        client2.client_first()
    with pytest.raises(AuthError):
        client2.server_final(b"v=AAAA")
    for kwargs in (
        {},
        {"password": "a", "client_key": b"k" * 32},
        {"client_key": b"short"},
        {"password": "a", "server_key": b"k" * 32},
        {"client_key": b"k" * 32, "server_key": b"short"},
        {"password": "a", "nonce": b"has,comma"},
        {"password": "a", "nonce": b""},
        {"password": "a", "nonce": "\u00e9".encode()},
    ):
        with pytest.raises(ValueError):
            ScramClient(**kwargs)


def test_client_first_format() -> None:
    first = ScramClient(password="x").client_first()
    assert first.startswith(b"n,,n=,r=")
    nonce = first[len(b"n,,n=,r=") :]
    assert len(base64.b64decode(nonce, validate=True)) == 18  # like libpq
    assert ScramClient(username="a=b,c", password="x", nonce=b"N").client_first() == b"n,,n=a=3Db=2Cc,r=N"


# --------------------------------------------------------------------------- SASLprep


@pytest.mark.parametrize(
    ("password", "prepared"),
    [
        # RFC 4013 section 3 examples (those that succeed).
        ("I\u00adX", b"IX"),
        ("user", b"user"),
        ("USER", b"USER"),
        ("\u00aa", b"a"),
        ("\u2168", b"IX"),
        # Non-ASCII space maps to SPACE; NFKC composes.
        ("\u00a0a", b" a"),
        ("a\u0308", "\u00e4".encode()),
        # Pure ASCII is untouched, even control characters (PostgreSQL's fast path).
        ("\u0007", b"\x07"),
        # Prohibited (RFC example "\u0007" with a non-ASCII char): the raw bytes are used.
        ("\u00e4\u0007", "\u00e4\u0007".encode()),
        # Bidi violation (RFC example "\u0627\u0031"): raw bytes.
        ("\u06271", "\u06271".encode()),
        ("\u0627\u0628", "\u0627\u0628".encode()),  # a valid RTL string is kept
        # Only "mapped to nothing" characters: PostgreSQL keeps the raw bytes.
        ("\u00ad", "\u00ad".encode()),
        # Unassigned in Unicode 3.2 -> prohibited -> raw.
        ("a\u0221", "a\u0221".encode()),
        # Private use -> raw.
        ("a\ue000", "a\ue000".encode()),
    ],
)
def test_saslprep(password: str, prepared: bytes) -> None:
    assert saslprep(password) == prepared


def test_saslprep_non_utf8_is_raw() -> None:
    raw = b"p\xe4ss"  # latin-1 bytes, as a legacy client might send
    assert saslprep(raw) == raw
    # A str that carries those bytes via surrogateescape reaches PBKDF2 as the same bytes.
    assert saslprep(raw.decode("utf-8", "surrogateescape")) == raw
    salted = hashlib.pbkdf2_hmac("sha256", raw, b"s", FAST)
    v = ScramVerifier.from_password(raw.decode("utf-8", "surrogateescape"), b"s", FAST)
    assert v.stored_key == hashlib.sha256(hmac.new(salted, b"Client Key", hashlib.sha256).digest()).digest()


def test_saslprep_equivalent_passwords_authenticate() -> None:
    server = ScramServer(ScramVerifier.from_password("IX", b"s", FAST))
    client = ScramClient(password="I\u00adX")
    client.server_final(
        server.client_final(client.server_first(server.client_first("SCRAM-SHA-256", client.client_first())))
    )
    assert client.server_verified


@settings(max_examples=40, deadline=None)
@given(password=st.text(min_size=1, max_size=20), wrong=st.text(min_size=1, max_size=20))
def test_round_trip_property(password: str, wrong: str) -> None:
    verifier = ScramVerifier.from_password(password, b"salt", FAST)
    server = ScramServer(verifier)
    client = ScramClient(password=password)
    client.server_final(
        server.client_final(client.server_first(server.client_first("SCRAM-SHA-256", client.client_first())))
    )
    assert server.client_key is not None
    if saslprep(wrong) != saslprep(password):
        bad_server = ScramServer(verifier)
        bad_client = ScramClient(password=wrong)
        msg = bad_client.server_first(bad_server.client_first("SCRAM-SHA-256", bad_client.client_first()))
        with pytest.raises(AuthError):
            bad_server.client_final(msg)


# --------------------------------------------------------------------------- live PostgreSQL 15

PG_BIN = "/usr/lib/postgresql/15/bin"
PORTS = range(25990, 26000)


@dataclass
class LivePG:
    port: int
    run_sql: Callable[[str], str]


def _as_postgres(args: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def live_pg() -> Iterator[LivePG]:
    if not os.path.exists(f"{PG_BIN}/initdb"):
        reason = f"PostgreSQL 15 binaries not found in {PG_BIN}"
        print(f"SKIP live auth tests: {reason}")
        pytest.skip(reason)
    if os.geteuid() == 0:
        try:
            pg_user = pwd.getpwnam("postgres")
        except KeyError:
            reason = "running as root and there is no 'postgres' OS user to run PostgreSQL as"
            print(f"SKIP live auth tests: {reason}")
            pytest.skip(reason)
    base = tempfile.mkdtemp(prefix="pgdoorman-auth-", dir="/tmp")
    if os.geteuid() == 0:
        os.chown(base, pg_user.pw_uid, pg_user.pw_gid)
    data = os.path.join(base, "data")
    run = subprocess.run
    run(
        _as_postgres(
            [f"{PG_BIN}/initdb", "-D", data, "-E", "UTF8", "--locale=C", "-A", "trust", "-U", "postgres"]
        ),
        check=True,
        capture_output=True,
    )
    with open(os.path.join(data, "pg_hba.conf"), "w") as f:
        f.write(
            "local all all trust\n"
            "host all md5user 127.0.0.1/32 md5\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
    started_port = None
    try:
        for port in PORTS:
            if not _port_free(port):
                continue
            opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1"
            res = run(
                _as_postgres(
                    [
                        f"{PG_BIN}/pg_ctl",
                        "-D",
                        data,
                        "-l",
                        f"{base}/log",
                        "-w",
                        "-t",
                        "30",
                        "-o",
                        opts,
                        "start",
                    ]
                ),
                capture_output=True,
            )
            if res.returncode == 0:
                started_port = port
                break
        if started_port is None:
            pytest.fail(f"could not start PostgreSQL on any port in {PORTS.start}-{PORTS.stop - 1}")
        final_port = started_port

        def run_sql(sql: str) -> str:
            res = run(
                _as_postgres(
                    [
                        f"{PG_BIN}/psql",
                        "-X",
                        "-At",
                        "-v",
                        "ON_ERROR_STOP=1",
                        "-h",
                        base,
                        "-p",
                        str(final_port),
                        "-d",
                        "postgres",
                        "-c",
                        sql,
                    ]
                ),
                capture_output=True,
                text=True,
                check=True,
            )
            return res.stdout.strip()

        yield LivePG(final_port, run_sql)
    finally:
        if started_port is not None:
            run(
                _as_postgres([f"{PG_BIN}/pg_ctl", "-D", data, "-w", "-m", "fast", "stop"]),
                capture_output=True,
            )
        shutil.rmtree(base, ignore_errors=True)


class PGError(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return buf


def _send(sock: socket.socket, tag: bytes, body: bytes) -> None:
    sock.sendall(tag + struct.pack("!i", len(body) + 4) + body)


def _login(
    port: int, user: str, *, md5_secret: str | None = None, scram: ScramClient | None = None
) -> list[int]:
    """Blocking startup + authentication; returns the authentication request codes seen."""
    codes: list[int] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        params = b"user\0" + user.encode() + b"\0database\0postgres\0\0"
        sock.sendall(struct.pack("!ii", len(params) + 8, 196608) + params)
        while True:
            tag = _recv_exact(sock, 1)
            (length,) = struct.unpack("!i", _recv_exact(sock, 4))
            body = _recv_exact(sock, length - 4)
            if tag == b"E":
                fields = dict((f[:1], f[1:].decode()) for f in body.split(b"\0") if f)
                raise PGError(f"{fields.get(b'C')}: {fields.get(b'M')}")
            if tag == b"Z":
                _send(sock, b"X", b"")
                return codes
            if tag != b"R":
                continue  # ParameterStatus, BackendKeyData, ...
            (code,) = struct.unpack("!i", body[:4])
            codes.append(code)
            if code == 5:
                assert md5_secret is not None, "server asked for md5"
                _send(sock, b"p", md5_response(user, md5_secret, body[4:8]) + b"\0")
            elif code == 10:
                assert scram is not None, "server asked for SASL"
                mechanisms = [m.decode() for m in body[4:].split(b"\0") if m]
                assert "SCRAM-SHA-256" in mechanisms
                first = scram.client_first()
                _send(sock, b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)
            elif code == 11:
                assert scram is not None
                _send(sock, b"p", scram.server_first(body[4:]))
            elif code == 12:
                assert scram is not None
                scram.server_final(body[4:])
            elif code != 0:
                raise AssertionError(f"unexpected authentication request {code}")


LIVE_SCRAM_PASSWORD = "p\u00e4ss\u00adw\u00f6rd"  # exercises SASLprep on both sides


def _setup_roles(pg: LivePG, replay_verifier: ScramVerifier, other_salt_verifier: ScramVerifier) -> None:
    pg.run_sql(
        "SET password_encryption='md5'; CREATE ROLE md5user LOGIN PASSWORD 'md5 secret';"
        "SET password_encryption='scram-sha-256';"
        "CREATE ROLE scramuser LOGIN PASSWORD U&'p\\00E4ss\\00ADw\\00F6rd';"
        f"CREATE ROLE ouruser LOGIN PASSWORD '{replay_verifier}';"
        f"CREATE ROLE resalted LOGIN PASSWORD '{other_salt_verifier}';"
    )


def test_live_pg15_logins(live_pg: LivePG) -> None:
    ours = ScramVerifier.from_password("our pw", b"pgdoorman-salt!!", 4096)
    resalted = ScramVerifier.from_password(LIVE_SCRAM_PASSWORD, b"another-salt....", 4096)
    _setup_roles(live_pg, ours, resalted)
    port = live_pg.port

    # md5, plain text and pass-the-hash; the stored value equals ours.
    assert live_pg.run_sql("SELECT rolpassword FROM pg_authid WHERE rolname='md5user'") == md5_stored(
        "md5user", "md5 secret"
    )
    assert _login(port, "md5user", md5_secret="md5 secret") == [5, 0]
    assert _login(port, "md5user", md5_secret=md5_stored("md5user", "md5 secret")) == [5, 0]
    with pytest.raises(PGError, match="28P01"):
        _login(port, "md5user", md5_secret="wrong")

    # SCRAM with a password, including non-ASCII SASLprep; the server signature is checked.
    client = ScramClient(password=LIVE_SCRAM_PASSWORD)
    assert _login(port, "scramuser", scram=client) == [10, 11, 12, 0]
    assert client.server_verified
    with pytest.raises(PGError, match="28P01"):
        _login(port, "scramuser", scram=ScramClient(password="p\u00e4ssw\u00f6rd!"))

    # PostgreSQL accepts our verifier string verbatim.
    assert live_pg.run_sql("SELECT rolpassword FROM pg_authid WHERE rolname='ouruser'") == str(ours)
    assert _login(port, "ouruser", scram=ScramClient(password="our pw")) == [10, 11, 12, 0]

    # Passthrough: a client authenticates to us against PostgreSQL's own verifier; we replay the
    # recovered ClientKey to PostgreSQL, with and without the ServerKey.
    pg_verifier = ScramVerifier.parse(
        live_pg.run_sql("SELECT rolpassword FROM pg_authid WHERE rolname='scramuser'")
    )
    front = ScramServer(pg_verifier)
    user = ScramClient(password=LIVE_SCRAM_PASSWORD)
    user.server_final(
        front.client_final(user.server_first(front.client_first("SCRAM-SHA-256", user.client_first())))
    )
    assert front.client_key is not None
    replay = ScramClient(client_key=front.client_key, server_key=pg_verifier.server_key)
    assert _login(port, "scramuser", scram=replay) == [10, 11, 12, 0]
    assert replay.server_verified
    blind = ScramClient(client_key=front.client_key)
    assert _login(port, "scramuser", scram=blind) == [10, 11, 12, 0]
    assert not blind.server_verified

    # Same password, different salt on the backend: the replayed key cannot work.
    mismatched = ScramClient(client_key=front.client_key)
    with pytest.raises(PGError, match="28P01"):
        _login(port, "resalted", scram=mismatched)
    assert mismatched.salt == resalted.salt != pg_verifier.salt


# --------------------------------------------------------------------------- channel binding (SCRAM-SHA-256-PLUS)
END_POINT = bytes(range(32))


def _bound_server() -> ScramServer:
    return ScramServer(ScramVerifier.from_password("pencil", b"0123456789abcdef", FAST), end_point=END_POINT)


def test_mechanisms_offered_with_and_without_binding() -> None:
    assert _server().mechanisms == ("SCRAM-SHA-256",)
    assert _bound_server().mechanisms == ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")


@pytest.mark.parametrize("cbind,ok", [(END_POINT, True), (b"\0" * 32, False), (b"", False)])
def test_a_bound_exchange_checks_the_binding_data(cbind: bytes, ok: bool) -> None:
    server = _bound_server()
    gs2, bare = "p=tls-server-end-point,,", "n=,r=clientnonce"
    server_first = server.client_first("SCRAM-SHA-256-PLUS", (gs2 + bare).encode())
    final = _manual_client_final(b"pencil", gs2, bare, server_first, cbind=cbind)
    if ok:
        assert server.client_final(final).startswith(b"v=") and server.client_key is not None
        return
    with pytest.raises(AuthError) as ei:
        server.client_final(final)
    assert (ei.value.sqlstate, ei.value.message) == ("28000", "SCRAM channel binding check failed")
    assert server.client_key is None


def test_an_unbound_exchange_next_to_binding() -> None:
    """Over TLS a client may still choose SCRAM-SHA-256 with "n" (libpq's channel_binding=disable)."""
    server = _bound_server()
    bare = "n=,r=clientnonce"
    server_first = server.client_first("SCRAM-SHA-256", ("n,," + bare).encode())
    assert server.client_final(_manual_client_final(b"pencil", "n,,", bare, server_first)).startswith(b"v=")


@pytest.mark.parametrize("mechanism,first,sqlstate,message", [
    ("SCRAM-SHA-256", "y,,n=,r=abc", "28000", "SCRAM channel binding negotiation error"),
    ("SCRAM-SHA-256-PLUS", "n,,n=,r=abc", "08P01", "malformed SCRAM message"),
    ("SCRAM-SHA-256-PLUS", "y,,n=,r=abc", "08P01", "malformed SCRAM message"),
    ("SCRAM-SHA-256", "p=tls-server-end-point,,n=,r=abc", "08P01", "malformed SCRAM message"),
    ("SCRAM-SHA-256-PLUS", "p=tls-unique,,n=,r=abc", "08P01", 'unsupported SCRAM channel-binding type "tls-unique"'),
    ("SCRAM-SHA-256-PLUS", "p,,n=,r=abc", "08P01", "malformed SCRAM message"),
    ("SCRAM-SHA-1", "n,,n=,r=abc", "08P01", "client selected an invalid SASL authentication mechanism"),
])
def test_binding_refusals_in_postgresqls_words(mechanism: str, first: str, sqlstate: str, message: str) -> None:
    with pytest.raises(AuthError) as ei:
        _bound_server().client_first(mechanism, first.encode())
    assert (ei.value.sqlstate, ei.value.message) == (sqlstate, message)
