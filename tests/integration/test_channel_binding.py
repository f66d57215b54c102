"""SCRAM and the password message towards clients, compared with PostgreSQL. Channel binding (SCRAM-SHA-256-PLUS,
tls-server-end-point): over TLS PostgreSQL offers it first, libpq uses it by default (`channel_binding=prefer`)
and insists on it with `channel_binding=require`. The same logins and the same broken exchanges directly
against a PostgreSQL with TLS on and through pgdoorman (session and transaction mode, pool_size 1, two clients
with different settings one after the other), with the same certificate on both, so that the binding data is
the same: the mechanisms offered, the logins, and every refusal's SQLSTATE, message and detail; then broken
SCRAM and password messages, which PostgreSQL refuses in its own words."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import select
import shutil
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.integration.test_direct_tls import SETTINGS, certs, libpq, pooler, session_of, target, tls_pg
from tests.support.certs import Certs, make_certs
from tests.support.cluster import DBNAME, MD5_USER, SCRAM_PASSWORD, SCRAM_USER, PgCluster
from tests.support.pooler import ROOT, Pooler, started_in_mode
from tests.support.wire import parse_fields, startup_message

pytestmark = pytest.mark.timeout(120)
__all__ = ["certs", "pooler", "tls_pg"]  # the fixtures, shared with test_direct_tls

PLUS, PLAIN = "SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"
SSL_REQUEST = struct.pack("!II", 8, 80877103)


def test_libpq_channel_binding_as_on_postgresql(tls_pg: PgCluster, pooler: Pooler, certs: Certs) -> None:
    """channel_binding=require (bound, or no login), prefer (libpq's default: bound over TLS) and disable, with
    two clients of different settings one after the other on the one server."""
    seen: dict[str, list[tuple[Any, ...]]] = {}
    for name in ("postgresql", "pooler"):
        host, port = target(name, tls_pg, pooler)
        seen[name] = []
        for binding in ("require", "prefer", "disable"):
            for settings in SETTINGS:
                with libpq(host, port, "postgres", settings, certs, channel_binding=binding) as c:
                    seen[name].append((binding, *session_of(c)))
    assert seen["pooler"] == seen["postgresql"]
    assert [s[1] for s in seen["pooler"]] == [True] * 6  # all on TLS


def test_channel_binding_required_without_tls_fails_the_same(tls_pg: PgCluster, pooler: Pooler, certs: Certs) -> None:
    """Plain TCP: only SCRAM-SHA-256 is offered, so libpq refuses to go on with channel_binding=require."""
    errors = {}
    for name in ("postgresql", "pooler"):
        with pytest.raises(psycopg.OperationalError) as ei:
            libpq(*target(name, tls_pg, pooler), "postgres", {}, certs, sslmode="disable", channel_binding="require")
        errors[name] = str(ei.value).rsplit("failed: ", 1)[-1]
    assert errors["pooler"] == errors["postgresql"]
    assert "channel binding" in errors["pooler"]


# ------------------------------------------------------------------------------------------- the raw exchange
def recv_message(sock: socket.socket | ssl.SSLSocket) -> tuple[str, bytes]:
    head = recv_exact(sock, 5)
    (length,) = struct.unpack("!I", head[1:])
    return chr(head[0]), recv_exact(sock, length - 4)


def recv_exact(sock: socket.socket | ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return data


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


@pytest.fixture
def connect_tls() -> Iterator[Any]:
    socks: list[socket.socket] = []

    def connect(host: str, port: int, tls: bool = True) -> socket.socket | ssl.SSLSocket:
        sock = socket.create_connection((host, port), timeout=10)
        socks.append(sock)
        if not tls:
            return sock
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"S"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        wrapped = ctx.wrap_socket(sock)
        socks.append(wrapped)
        return wrapped

    yield connect
    for s in socks:
        s.close()


def end_point(sock: socket.socket | ssl.SSLSocket) -> bytes:
    """tls-server-end-point of the certificate shown (the test certificates are signed with SHA-256)."""
    assert isinstance(sock, ssl.SSLSocket)
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).digest()


def exchange(sock: socket.socket | ssl.SSLSocket, mechanism: str, gs2: str, cbind: bytes | None = None,
             first: bytes | None = None, final: Any = None) -> Any:
    """Startup, then one SCRAM exchange with this mechanism and gs2 header; `cbind`: the binding data echoed in
    the final message (gs2 header alone if None); `first`: this client-first-message instead; `final`: a change
    made to the client-final-message. What PostgreSQL said: the mechanisms it offered, then 'ok' or its
    error's severity, SQLSTATE, message and detail."""
    sock.sendall(startup_message({"user": SCRAM_USER, "database": DBNAME}))
    kind, body = recv_message(sock)
    assert kind == "R" and struct.unpack("!I", body[:4])[0] == 10, (kind, body)
    offered = tuple(x.decode() for x in body[4:].split(b"\0") if x)
    nonce = base64.b64encode(os.urandom(18)).decode()
    bare = f"n=,r={nonce}"
    first = (gs2 + bare).encode() if first is None else first
    sock.sendall(message(b"p", mechanism.encode() + b"\0" + struct.pack("!i", len(first)) + first))
    kind, body = recv_message(sock)
    if kind == "E":
        return offered, said(body)
    server_first = body[4:].decode()
    attrs = dict(a.split("=", 1) for a in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", SCRAM_PASSWORD.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    c = base64.b64encode(gs2.encode() + (cbind or b"")).decode()
    without_proof = f"c={c},r={attrs['r']}"
    signature = hmac.new(stored_key, f"{bare},{server_first},{without_proof}".encode(), hashlib.sha256).digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True))).decode()
    data = f"{without_proof},p={proof}".encode()
    sock.sendall(message(b"p", final(data) if final is not None else data))
    kind, body = recv_message(sock)
    if kind == "E":
        return offered, said(body)
    assert kind == "R" and struct.unpack("!I", body[:4])[0] == 12, (kind, body)  # SASLFinal
    kind, body = recv_message(sock)
    return offered, "ok" if (kind, body) == ("R", b"\0\0\0\0") else said(body)


def said(body: bytes) -> tuple[str | None, ...]:
    f = parse_fields(body)
    return f.get("S"), f.get("C"), f.get("M"), f.get("D")


CASES = {
    "bound": (PLUS, "p=tls-server-end-point,,", "right"),
    "bound to another certificate": (PLUS, "p=tls-server-end-point,,", "wrong"),
    "y: thinks the server cannot bind": (PLAIN, "y,,", None),
    "n: does not bind": (PLAIN, "n,,", None),
    "PLUS without binding data": (PLUS, "n,,", None),
    "PLUS with y": (PLUS, "y,,", None),
    "binding data without PLUS": (PLAIN, "p=tls-server-end-point,,", None),
    "another binding type": (PLUS, "p=tls-unique,,", "right"),
}


@pytest.mark.parametrize("case", CASES)
def test_scram_exchanges_over_tls_as_on_postgresql(tls_pg: PgCluster, pooler: Pooler, connect_tls: Any,
                                                   case: str) -> None:
    mechanism, gs2, cbind = CASES[case]
    seen = {}
    for name in ("postgresql", "pooler"):
        sock = connect_tls(*target(name, tls_pg, pooler))
        data = {"right": end_point(sock), "wrong": b"\1" * 32, None: None}[cbind]
        seen[name] = exchange(sock, mechanism, gs2, data if gs2.startswith("p") else None)
    assert seen["pooler"] == seen["postgresql"]
    assert seen["pooler"][0] == (PLUS, PLAIN)


@pytest.mark.parametrize("mechanism,gs2", [(PLAIN, "n,,"), (PLAIN, "y,,"), (PLUS, "p=tls-server-end-point,,")])
def test_scram_exchanges_without_tls_as_on_postgresql(tls_pg: PgCluster, pooler: Pooler, connect_tls: Any,
                                                      mechanism: str, gs2: str) -> None:
    """Plain TCP: SCRAM-SHA-256 alone is offered, "y" is fine, and choosing PLUS is refused."""
    cbind = b"\0" * 32 if gs2.startswith("p") else None
    seen = {name: exchange(connect_tls(*target(name, tls_pg, pooler), tls=False), mechanism, gs2, cbind)
            for name in ("postgresql", "pooler")}
    assert seen["pooler"] == seen["postgresql"]
    assert seen["pooler"][0] == (PLAIN,)



# Broken SCRAM messages, refused in PostgreSQL's words (not "password authentication failed").
BAD_FIRST = [b"n,,n=,", b"n,,r=abc", b"n,,n=,r=ab\x7fc", b"n,,n=,r=abc,=bad", b"n,,n=,r=abc,x", b"n,a=admin,n=,r=abc",
             b"n,,m=ext,n=,r=abc", b"x,,n=,r=abc", b"n;,n=,r=abc", b"n,x,n=,r=abc", b"n", b"n,,n=\0,r=abc",
             b"n,,n=,r=", b"n,,n=\xff,r=abc"]
BAD_FINAL = {
    "no c": lambda m: m.replace(b"c=biws,", b""),
    "c not base64": lambda m: m.replace(b"c=biws", b"c=bi!s"),
    "c of y": lambda m: m.replace(b"c=biws", b"c=eSws"),
    "no proof": lambda m: m.split(b",p=")[0],
    "no r": lambda m: m.split(b",r=")[0],
    "other nonce": lambda m: m.replace(b",r=", b",r=X"),
    "after the proof": lambda m: m + b",x=after",
    "proof not base64": lambda m: m.replace(b",p=", b",p=!"),
    "short proof": lambda m: m.split(b",p=")[0] + b",p=" + base64.b64encode(b"\0" * 31),
    "bad extension": lambda m: m.split(b",p=")[0] + b",=x,p=AAAA",
    "extension": lambda m: m.split(b",p=")[0] + b",x=ext," + b"p=" + m.split(b",p=")[1],
    "wrong proof": lambda m: m.split(b",p=")[0] + b",p=" + base64.b64encode(b"\1" * 32),
    "empty": lambda m: b"",
}


@pytest.mark.parametrize("first", BAD_FIRST)
def test_broken_client_first_messages_as_on_postgresql(tls_pg: PgCluster, pooler: Pooler, connect_tls: Any,
                                                       first: bytes) -> None:
    seen = {name: exchange(connect_tls(*target(name, tls_pg, pooler), tls=False), PLAIN, "n,,", first=first)
            for name in ("postgresql", "pooler")}
    assert seen["pooler"] == seen["postgresql"]


@pytest.mark.parametrize("case", BAD_FINAL)
def test_broken_client_final_messages_as_on_postgresql(tls_pg: PgCluster, pooler: Pooler, connect_tls: Any,
                                                       case: str) -> None:
    seen = {name: exchange(connect_tls(*target(name, tls_pg, pooler), tls=False), PLAIN, "n,,", final=BAD_FINAL[case])
            for name in ("postgresql", "pooler")}
    assert seen["pooler"] == seen["postgresql"]


def said_after_startup(sock: socket.socket | ssl.SSLSocket, user: str, payload: bytes) -> list[tuple[Any, ...]]:
    """Startup as `user`, the authentication request read, then `payload`: what comes back until the close
    or a second of silence."""
    sock.sendall(startup_message({"user": user, "database": DBNAME}))
    recv_message(sock)
    sock.sendall(payload)
    sock.settimeout(1)
    seen: list[tuple[Any, ...]] = []
    try:
        while True:
            kind, body = recv_message(sock)
            seen.append(("E", *said(body)) if kind == "E" else (kind, body))
    except (ConnectionError, TimeoutError, OSError):
        pass
    return seen


PASSWORD_FRAMES = {
    "query instead of SASL": (SCRAM_USER, message(b"Q", b"select 1\0")),
    "terminate instead of SASL": (SCRAM_USER, message(b"X", b"")),
    "no initial response": (SCRAM_USER, message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", -1))),
    "no initial response, another mechanism": (SCRAM_USER, message(b"p", b"SCRAM-SHA-1\0" + struct.pack("!i", -1))),
    "bytes after the response": (SCRAM_USER, message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", 3) + b"n,,XX")),
    "response shorter than said": (SCRAM_USER, message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", 30) + b"n,,")),
    "mechanism without its NUL": (SCRAM_USER, message(b"p", b"SCRAM-SHA-256")),
    "query instead of md5": (MD5_USER, message(b"Q", b"select 1\0")),
    "md5 with bytes after its NUL": (MD5_USER, message(b"p", b"md5abc\0xx")),
    "md5 without its NUL": (MD5_USER, message(b"p", b"md5abc")),
    "md5 empty": (MD5_USER, message(b"p", b"")),
}


@pytest.mark.parametrize("case", PASSWORD_FRAMES)
def test_broken_password_messages_as_on_postgresql(tls_pg: PgCluster, pooler: Pooler, connect_tls: Any,
                                                   case: str) -> None:
    """The password message's own framing, refused as PostgreSQL refuses it (`no initial response`: SASL's
    empty challenge, then the client's first message in the next one)."""
    user, payload = PASSWORD_FRAMES[case]
    seen = {name: said_after_startup(connect_tls(*target(name, tls_pg, pooler), tls=False), user, payload)
            for name in ("postgresql", "pooler")}
    assert seen["pooler"] == seen["postgresql"]


NODE = ROOT / "tests" / "drivers" / "node"
NODE_SCRIPT = r"""
const { Client } = require('pg');
const [host, port, user, password, database] = process.argv.slice(1);
(async () => {
  const c = new Client({ host, port: Number(port), user, password, database, enableChannelBinding: true,
                         ssl: { rejectUnauthorized: false } });
  await c.connect();
  const r = await c.query('select 6 * 7 as x, current_setting($1) as tz', ['TimeZone']);
  console.log(JSON.stringify(r.rows));
  await c.end();
})().catch((e) => console.log('ERR ' + e.message));
"""


def test_node_postgres_binds_as_on_postgresql(tls_pg: PgCluster, pooler: Pooler) -> None:
    """node-postgres computes tls-server-end-point itself (from the certificate's signature algorithm): with
    `enableChannelBinding` it chooses SCRAM-SHA-256-PLUS, and its binding data must be what the pooler expects."""
    if shutil.which("node") is None or not (NODE / "node_modules" / "pg").is_dir():
        pytest.skip("node-postgres is not installed here (make drivers, scripts/install_drivers.sh, installs it)")
    seen = {}
    for name in ("postgresql", "pooler"):
        host, port = target(name, tls_pg, pooler)
        out = subprocess.run(["node", "-e", NODE_SCRIPT, host, str(port), SCRAM_USER, SCRAM_PASSWORD, DBNAME],
                             cwd=NODE, capture_output=True, text=True, timeout=60)
        seen[name] = out.stdout.strip() or out.stderr.strip()
    assert seen["pooler"] == seen["postgresql"]
    assert seen["pooler"].startswith('[{"x":42')


# ------------------------------------------------------------------------ the pooler's own logins to PostgreSQL
class TlsMiddle:
    """A man in the middle between a client and PostgreSQL: it answers the SSLRequest itself, shows its own
    certificate, opens a TLS connection of its own to PostgreSQL and relays the bytes. SCRAM without channel
    binding goes through it; with binding PostgreSQL sees the other certificate's data and refuses."""

    def __init__(self, upstream: int, cert: str, key: str) -> None:
        self.upstream = upstream
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_ctx.load_cert_chain(cert, key)
        self.client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client_ctx.check_hostname = False
        self.client_ctx.verify_mode = ssl.CERT_NONE
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                assert recv_exact(conn, 8) == SSL_REQUEST
                conn.sendall(b"S")
                with self.server_ctx.wrap_socket(conn, server_side=True) as near, \
                        socket.create_connection(("127.0.0.1", self.upstream)) as up:
                    up.sendall(SSL_REQUEST)
                    assert up.recv(1) == b"S"
                    with self.client_ctx.wrap_socket(up) as far:
                        self._relay(near, far)
        except (OSError, AssertionError):
            pass

    @staticmethod
    def _relay(a: ssl.SSLSocket, b: ssl.SSLSocket) -> None:
        peers = {a: b, b: a}
        while True:
            ready, _, _ = select.select([a, b], [], [], 30)
            if not ready:
                return
            for src in ready:
                data = src.recv(65536)
                if not data:
                    return
                peers[src].sendall(data)
                while src.pending():  # decrypted bytes select cannot see
                    peers[src].sendall(src.recv(65536))

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def middle(tls_pg: PgCluster, tmp_path: Any) -> Iterator[TlsMiddle]:
    other = make_certs(tmp_path / "middle", SCRAM_USER)  # another certificate than PostgreSQL's
    m = TlsMiddle(tls_pg.port, other.server_cert, other.server_key)
    yield m
    m.close()


def test_a_man_in_the_middle_is_caught_as_libpq_catches_it(tls_pg: PgCluster, middle: TlsMiddle,
                                                            tmp_path_factory: Any) -> None:
    """libpq's default (channel_binding=prefer) binds SCRAM to the TLS connection it sees, so PostgreSQL behind
    a man in the middle that holds another certificate refuses the login; the pooler's own logins to
    PostgreSQL (server_tls_mode require, which checks no certificate) bind the same way and are refused
    the same way. Without binding both go through (checked: the middle relays faithfully)."""
    direct = {"host": "127.0.0.1", "port": middle.port, "user": SCRAM_USER, "password": SCRAM_PASSWORD,
              "dbname": DBNAME, "sslmode": "require", "connect_timeout": 10}
    with psycopg.connect(**direct, channel_binding="disable") as c:
        assert c.execute("select 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="SCRAM channel binding check failed"):
        psycopg.connect(**direct)
    pool = {"server_host": "127.0.0.1", "server_port": middle.port, "server_tls_mode": "require"}
    with started_in_mode(tls_pg, tmp_path_factory, "transaction", "middle", pool_size=1, pool=pool) as p:
        with pytest.raises(psycopg.OperationalError, match="SCRAM channel binding check failed"):
            psycopg.connect(host=p.host, port=p.port, user=SCRAM_USER, password=SCRAM_PASSWORD, dbname=DBNAME,
                            sslmode="disable", connect_timeout=10).execute("select 1")
    pool["server_port"] = tls_pg.port  # no middle: the pooler's binding is what PostgreSQL expects
    with started_in_mode(tls_pg, tmp_path_factory, "transaction", "no-middle", pool_size=1, pool=pool) as p:
        with psycopg.connect(host=p.host, port=p.port, user=SCRAM_USER, password=SCRAM_PASSWORD, dbname=DBNAME,
                             sslmode="disable", connect_timeout=10) as c:
            row = c.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
            assert row == (True,)
