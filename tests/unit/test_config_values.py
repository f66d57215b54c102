"""Value parsers of the config package: durations, byte sizes, octal modes, worker_threads and the
password formats (MD5 hash, SCRAM verifier, plain text)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from pgdoorman.config import Invalid, parse_byte_size, parse_duration, parse_scram_verifier, password_kind
from pgdoorman.config.values import (
    OctalMode,
    StartupParameters,
    WorkerThreads,
    check_password_format,
    format_byte_size,
    format_duration,
)


@pytest.mark.parametrize(
    ("raw", "ms"),
    [
        (0, 0),
        (1500, 1500),
        ("250ms", 250),
        ("5s", 5000),
        ("10m", 600_000),
        ("2h", 7_200_000),
        ("1d", 86_400_000),
        ("42", 42),
        (" 7 s ", 7000),
        ("3S", 3000),
    ],
)
def test_duration_forms(raw: object, ms: int) -> None:
    assert parse_duration(raw) == ms


@pytest.mark.parametrize("raw", ["1.5s", "5 sec", "s", "", "-5s", -1, 1.5, True, None, [1], "5us"])
def test_duration_rejects(raw: object) -> None:
    with pytest.raises(Invalid, match="must be a duration"):
        parse_duration(raw)


@pytest.mark.parametrize(("ms", "text"), [(0, 0), (3000, "3s"), (600_000, "10m"), (86_400_000, "1d"), (1500, "1500ms")])
def test_format_duration_round_trips(ms: int, text: object) -> None:
    assert format_duration(ms) == text
    assert parse_duration(text) == ms


@pytest.mark.parametrize(
    ("raw", "n"),
    [
        (0, 0),
        (4096, 4096),
        ("10B", 10),
        ("1K", 1024),
        ("2kb", 2048),
        ("1M", 1 << 20),
        ("256MB", 256 << 20),
        ("1g", 1 << 30),
        ("3GB", 3 << 30),
        ("512", 512),
    ],
)
def test_byte_size_forms(raw: object, n: int) -> None:
    assert parse_byte_size(raw) == n


@pytest.mark.parametrize("raw", ["1.5MB", "1KiB", "1T", "MB", -1, 2.0, False, "ten"])
def test_byte_size_rejects(raw: object) -> None:
    with pytest.raises(Invalid, match="must be a byte size"):
        parse_byte_size(raw)


@pytest.mark.parametrize("n", [0, 1, 1024, 1 << 20, 256 << 20, 3 << 30, 1536])
def test_format_byte_size_round_trips(n: int) -> None:
    assert parse_byte_size(format_byte_size(n)) == n


def test_octal_mode() -> None:
    mode = OctalMode()
    assert mode.parse("0600") == 0o600
    assert mode.parse("660") == 0o660
    assert mode.parse("0o644") == 0o644
    assert mode.to_config(0o600) == "0600"
    for bad in ("0800", "4755", "", "rw", 600):
        with pytest.raises(Invalid):
            mode.parse(bad)


def test_worker_threads() -> None:
    wt = WorkerThreads()
    assert wt.parse("auto") is None
    assert wt.parse(3) == 3
    assert wt.to_config(None) == "auto"
    for bad in (0, -1, "4", True, 2.0):
        with pytest.raises(Invalid, match='must be "auto" or an integer >= 1'):
            wt.parse(bad)


def test_startup_parameters() -> None:
    sp = StartupParameters()
    assert dict(sp.parse({"work_mem": "64MB", "statement_timeout": 5000, "jit": False})) == {
        "work_mem": "64MB",
        "statement_timeout": "5000",
        "jit": "off",
    }
    for bad in ({"user": "x"}, {"_pq_.x": "1"}, {"bad key": "1"}, {"a": "x\0y"}, {"a": [1]}, "x"):
        with pytest.raises(Invalid):
            sp.parse(bad)


def _scram(iterations: int = 4096, salt: bytes = b"0123456789abcdef", key_len: int = 32) -> str:
    b64 = base64.b64encode
    stored = b64(bytes(range(key_len))).decode()
    server = b64(bytes(reversed(range(key_len)))).decode()
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${stored}:{server}"


def test_password_kinds() -> None:
    md5 = "md5" + hashlib.md5(b"secretbob").hexdigest()
    assert password_kind(md5) == "md5"
    assert password_kind(_scram()) == "scram"
    assert password_kind("jwt-pkey-fpath:/etc/key.pem") == "jwt"
    assert password_kind("hunter2") == "plain"
    assert password_kind("md5isfun") == "plain"
    assert password_kind("") == "plain"


def test_scram_verifier_parses() -> None:
    v = parse_scram_verifier(_scram(iterations=10000))
    assert v.iterations == 10000
    assert v.salt == b"0123456789abcdef"
    assert len(v.stored_key) == 32 and len(v.server_key) == 32


@pytest.mark.parametrize(
    "text",
    [
        "SCRAM-SHA-256$4096:abc$def:ghi",  # not base64
        "SCRAM-SHA-256$x:c2FsdA==$AAAA:AAAA",  # iterations not a number
        "SCRAM-SHA-256$0:" + _scram()[len("SCRAM-SHA-256$4096:") :],  # zero iterations
        _scram(key_len=16),  # keys too short for SHA-256
        "SCRAM-SHA-256$4096:c2FsdA==",  # keys missing
    ],
)
def test_bad_scram_verifiers(text: str) -> None:
    with pytest.raises(Invalid, match="is not a valid SCRAM-SHA-256 verifier"):
        check_password_format(text)


@pytest.mark.parametrize("text", ["md5" + "a" * 31, "md5" + "g" * 32, "md5" + "0123456789abcdef0123"])
def test_mangled_md5_hashes_are_rejected(text: str) -> None:
    with pytest.raises(Invalid, match='"md5" followed by 32 hex digits'):
        check_password_format(text)


@pytest.mark.parametrize("text", ["md5" + "ab" * 16, "md5isfun", "plain password", "", "MD5notahash"])
def test_acceptable_passwords(text: str) -> None:
    check_password_format(text)
