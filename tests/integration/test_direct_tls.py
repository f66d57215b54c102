"""PostgreSQL 17's direct TLS (libpq's `sslnegotiation=direct`): the client starts with its TLS ClientHello, no
SSLRequest, and both sides must agree on the ALPN protocol "postgresql". The same steps directly against a
PostgreSQL with TLS on and through pgdoorman (session and transaction mode, pool_size 1, two clients with
different settings one after the other), and the refusals compared byte for byte: no ALPN, TLS off, a Unix
socket. PostgreSQL before 17 knows no direct TLS: there the pooler's side runs alone and the comparisons skip,
saying so (`make test-pg-newest` runs them on 18)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.support.certs import Certs, make_certs, tls_cluster
from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER, PgCluster
from tests.support.pooler import Pooler, started_in_mode
from tests.support.wire import WireClient, parse_fields, split_messages, startup_message

pytestmark = pytest.mark.timeout(120)

MODES = ("session", "transaction")
# md5: PostgreSQL picks per role, SCRAM for a role stored as SCRAM (over TLS with channel binding), md5 for one
# stored md5 (as the pooler picks by the password it has).
HBA = "local all all trust\nhost all all 127.0.0.1/32 md5\n"
SETTINGS = ({"TimeZone": "Asia/Tokyo", "work_mem": "7MB"}, {"TimeZone": "Europe/Paris", "work_mem": "9MB"})
SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("direct-certs"), SCRAM_USER)


@pytest.fixture(scope="module")
def tls_pg(certs: Certs) -> Iterator[PgCluster]:
    """A PostgreSQL with ssl = on that takes SCRAM over TCP with or without TLS."""
    with tls_cluster(certs, HBA) as cluster:
        yield cluster


def major(pg: PgCluster) -> int:
    with psycopg.connect(host=pg.host, port=pg.port, user=SCRAM_USER, password=SCRAM_PASSWORD, dbname=DBNAME) as c:
        return c.info.server_version // 10000


@pytest.fixture(scope="module")
def direct_pg(tls_pg: PgCluster) -> PgCluster:
    """tls_pg, where it knows direct TLS (17 and later); a printed skip before."""
    version = major(tls_pg)
    if version < 17:
        pytest.skip(f"PostgreSQL {version} has no direct TLS to compare with (17 brought it; make test-pg-newest "
                    "runs this on 18)")
    return tls_pg


@pytest.fixture(scope="module", params=MODES)
def pooler(request: pytest.FixtureRequest, tls_pg: PgCluster, certs: Certs, tmp_path_factory: Any) -> Iterator[Pooler]:
    general = {"tls_certificate": certs.server_cert, "tls_private_key": certs.server_key, "tls_mode": "allow"}
    with started_in_mode(tls_pg, tmp_path_factory, request.param, "direct-tls", pool_size=1, general=general) as p:
        yield p


def target(name: str, tls_pg: PgCluster, pooler: Pooler) -> tuple[str, int]:
    return ("127.0.0.1", tls_pg.port) if name == "postgresql" else (pooler.host, pooler.port)


def libpq(host: str, port: int, negotiation: str, settings: dict[str, str], certs: Certs,
          sslmode: str = "verify-full", **kw: Any) -> psycopg.Connection[Any]:
    options = " ".join(f"-c {k}={v}" for k, v in settings.items())
    return psycopg.connect(host=host, port=port, user=SCRAM_USER, password=SCRAM_PASSWORD, dbname=DBNAME,
                           sslmode=sslmode, sslrootcert=certs.ca, sslnegotiation=negotiation, options=options,
                           autocommit=True, connect_timeout=10, **kw)


def session_of(c: psycopg.Connection[Any]) -> tuple[Any, ...]:
    """What a client sees of its session: TLS on, its settings (one reported, one not), a query's answer."""
    row = c.execute("select current_setting('TimeZone'), current_setting('work_mem'), 6 * 7").fetchone()
    assert row is not None
    return (c.pgconn.ssl_in_use, c.pgconn.parameter_status(b"TimeZone"), *row)


def two_clients(host: str, port: int, certs: Certs) -> list[tuple[Any, ...]]:
    """A over direct TLS, then B (other settings) over the SSLRequest, then A and B again: one after the
    other on the one server."""
    seen = []
    for negotiation, settings in (("direct", SETTINGS[0]), ("postgres", SETTINGS[1])) * 2:
        with libpq(host, port, negotiation, settings, certs) as c:
            seen.append(session_of(c))
    return seen


def test_direct_tls_through_the_pooler(pooler: Pooler, certs: Certs) -> None:
    """Whatever PostgreSQL is behind it: direct TLS clients and SSLRequest clients share the one server, each
    with its own settings; libpq 17's encrypted cancel gets through and is answered as PostgreSQL answers it."""
    seen = two_clients(pooler.host, pooler.port, certs)
    assert seen == [(True, b"Asia/Tokyo", "Asia/Tokyo", "7MB", 42), (True, b"Europe/Paris", "Europe/Paris", "9MB", 42),
                    (True, b"Asia/Tokyo", "Asia/Tokyo", "7MB", 42), (True, b"Europe/Paris", "Europe/Paris", "9MB", 42)]
    for negotiation in ("direct", "postgres"):
        with libpq(pooler.host, pooler.port, negotiation, {}, certs) as c:
            assert cancel_safe_a_sleep(c) == []


def cancel_safe_a_sleep(c: psycopg.Connection[Any]) -> list[Exception]:
    """A sleep cancelled half a second in by libpq 17's cancel API (an encrypted cancel request, the way the
    connection negotiated TLS); what cancel_safe() raised. It waits for the server's close: an end of file without
    TLS's close_notify is a failure to it ("SSL error: unexpected eof while reading"), though the cancel went
    through."""
    failed: list[Exception] = []

    def cancel() -> None:
        try:
            c.cancel_safe(timeout=10)
        except psycopg.Error as e:
            failed.append(e)

    t = threading.Timer(0.5, cancel)
    t.start()
    with pytest.raises(errors.QueryCanceled):
        c.execute("select pg_sleep(20)")
    t.join()
    assert c.execute("select 4").fetchone() == (4,)
    return failed


def test_direct_tls_as_on_postgresql(direct_pg: PgCluster, pooler: Pooler, certs: Certs) -> None:
    assert two_clients(*target("pooler", direct_pg, pooler), certs) == two_clients(
        *target("postgresql", direct_pg, pooler), certs)


def test_encrypted_cancel_as_on_postgresql(tls_pg: PgCluster, pooler: Pooler, certs: Certs) -> None:
    """libpq 17's cancel over TLS, after an SSLRequest (any PostgreSQL) and over direct TLS (17 and later): no
    failure reported, directly or through the pooler."""
    negotiations = ["postgres"] + (["direct"] if major(tls_pg) >= 17 else [])
    for name in ("postgresql", "pooler"):
        for negotiation in negotiations:
            with libpq(*target(name, tls_pg, pooler), negotiation, {}, certs) as c:
                assert (name, negotiation, cancel_safe_a_sleep(c)) == (name, negotiation, [])


def client_context(alpn: list[str] | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


def raw_direct(host: str, port: int, alpn: list[str] | None, first: bytes) -> tuple[str, str | None, bytes]:
    """A direct TLS handshake offering `alpn`, then `first` sent inside it: the handshake's outcome, the agreed
    ALPN protocol, and the first message types of what comes back until the server waits or closes."""
    sock = socket.create_connection((host, port), timeout=5)
    try:
        try:
            tls = client_context(alpn).wrap_socket(sock)
        except ssl.SSLError as e:
            return f"handshake failed: {type(e).__name__}", None, b""
        with tls:
            agreed = tls.selected_alpn_protocol()
            got = b""
            try:
                tls.sendall(first)
                while data := tls.recv(65536):
                    got += data
                    if got.startswith(b"N") or (got[:1] == b"R" and len(got) >= 9):
                        break
            except (ssl.SSLError, OSError) as e:
                return f"read failed: {type(e).__name__}", agreed, got
            return "handshake done", agreed, got[:1]
    finally:
        sock.close()


def startup() -> bytes:
    return startup_message({"user": SCRAM_USER, "database": DBNAME})


@pytest.mark.parametrize("alpn,first", [
    (["postgresql"], "startup"),   # what libpq 17 sends: the server asks for a password
    (["postgresql"], "sslrequest"),  # an SSLRequest inside TLS: 'N'
    (None, "startup"),  # no ALPN: the handshake completes and the server closes without a word
])
def test_direct_handshakes_as_on_postgresql(direct_pg: PgCluster, pooler: Pooler, alpn: list[str] | None,
                                            first: str) -> None:
    packet = startup() if first == "startup" else SSL_REQUEST
    seen = {name: raw_direct(*target(name, direct_pg, pooler), alpn, packet) for name in ("postgresql", "pooler")}
    assert seen["pooler"] == seen["postgresql"]
    expected = {"startup": b"R", "sslrequest": b"N"}[first] if alpn else b""
    assert seen["pooler"] == ("handshake done", alpn[0] if alpn else None, expected)


def test_direct_tls_refused_without_alpn_or_with_another(pooler: Pooler) -> None:
    """The pooler's side of the refusals, on any PostgreSQL: no ALPN, or only another protocol's. (PostgreSQL
    refuses the second with a TLS alert in the handshake; Python's ssl module cannot send that alert, so the
    pooler completes the handshake without a protocol and closes: docs/tls.md.)"""
    for alpn in (None, ["http/1.1"]):
        assert raw_direct(pooler.host, pooler.port, alpn, startup()) == ("handshake done", None, b"")
    # ... and an SSLRequest client that offers "postgresql" has it agreed, as on PostgreSQL 17.
    sock = socket.create_connection((pooler.host, pooler.port), timeout=5)
    with sock:
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"S"
        with client_context(["postgresql"]).wrap_socket(sock) as tls:
            assert tls.selected_alpn_protocol() == "postgresql"


def raw_bytes_answer(host: str, port: int | str) -> bytes:
    """A TLS ClientHello sent where TLS is off: what comes back before the close."""
    fam = socket.AF_UNIX if isinstance(port, str) else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    sock.settimeout(5)
    with sock:
        sock.connect(port if isinstance(port, str) else (host, port))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = client_context(["postgresql"]).wrap_bio(incoming, outgoing)
        with pytest.raises(ssl.SSLWantReadError):
            obj.do_handshake()
        sock.sendall(outgoing.read())  # the ClientHello
        got = b""
        while data := sock.recv(65536):
            got += data
        return got


def test_direct_tls_where_tls_is_off_is_closed_without_a_word(pg: PgCluster, pooler_factory: Any,
                                                                tmp_path: Path) -> None:
    """PostgreSQL with ssl = off (the suite's plain cluster) closes a direct TLS connection without a byte; so
    does the pooler with TLS off, and on its Unix socket with TLS on (none before this change: an
    ErrorResponse 08P01 for the startup packet's 'length')."""
    if major(pg) >= 17:
        assert raw_bytes_answer("127.0.0.1", pg.port) == b""
    plain = pooler_factory()
    assert raw_bytes_answer(plain.host, plain.port) == b""
    certs = make_certs(tmp_path / "certs", SCRAM_USER)
    with_tls = pooler_factory(general={"tls_certificate": certs.server_cert, "tls_private_key": certs.server_key,
                                       "unix_socket_dir": str(tmp_path)})
    assert raw_bytes_answer("", str(tmp_path / f".s.PGSQL.{with_tls.port}")) == b""
    # The refused connections did no harm: a plain client of the same pooler logs in and queries.
    with WireClient.connect(plain.host, plain.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD) as w:
        assert w.query_rows("select 1") == [["1"]]


def test_error_before_startup_is_plain(pooler: Pooler) -> None:
    """A client that sends garbage (not a TLS record) still gets PostgreSQL's plain-text 08P01."""
    with WireClient(pooler.host, pooler.port) as w:
        w.send(b"\x7f\x00\x00\x08\x00\x03\x00\x00")
        data = w.expect_closed()
        msgs = split_messages(data)
        assert msgs and msgs[0][0] == "E" and parse_fields(msgs[0][1])["C"] == "08P01"
