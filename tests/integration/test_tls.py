"""TLS towards clients (general.tls_*): libpq (psycopg), asyncpg and a raw wire client over TLS through the
pooler as a subprocess, each tls_mode, client certificates, cancel requests, big results and pipelines
over TLS, binary upgrade with a TLS client, the admin console's accounting, and the config errors for bad
TLS settings."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors

from tests.integration.test_admin import rows
from tests.integration.test_ops import alive, current_pid, owner_of, stop_pid, upgrade, wait_exit
from tests.support.certs import Certs, make_certs, tls_cluster
from tests.support.cluster import (
    DBNAME,
    MD5_PASSWORD,
    MD5_USER,
    SCRAM_PASSWORD,
    SCRAM_USER,
    PgCluster,
)
from tests.support.pooler import ROOT, wait_for
from tests.support.wire import WireClient, parse_fields, startup_message

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Certs]:
    yield make_certs(tmp_path_factory.mktemp("certs"), SCRAM_USER)


def tls_general(certs: Certs, mode: str | None = None, **extra: Any) -> dict[str, Any]:
    g: dict[str, Any] = {"tls_certificate": certs.server_cert, "tls_private_key": certs.server_key, **extra}
    if mode is not None:
        g["tls_mode"] = mode
    return g


def connect(p: Any, sslmode: str, user: str = SCRAM_USER, password: str = SCRAM_PASSWORD, db: str = DBNAME,
            **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(host=p.host, port=p.port, user=user, password=password, dbname=db, sslmode=sslmode,
                           autocommit=True, connect_timeout=10, **kw)


def admin(p: Any, sslmode: str = "disable") -> psycopg.Connection[Any]:
    return connect(p, sslmode, user="admin", password="admin", db="pgdoorman")


def cancel_a_sleep(c: psycopg.Connection[Any]) -> None:
    """A long query cancelled from another thread (libpq's cancel request) half a second in; the connection
    is usable afterwards."""
    t = threading.Timer(0.5, c.cancel)
    t.start()
    with pytest.raises(errors.QueryCanceled):
        c.execute("select pg_sleep(20)")
    t.join()
    assert c.execute("select 4").fetchone() == (4,)


def test_allow_mode_serves_tls_and_plain_clients(pooler_factory: Any, certs: Certs) -> None:
    p = pooler_factory(general=tls_general(certs))  # tls_mode unset: behaves as allow
    with connect(p, "require") as tls_c, connect(p, "disable") as plain_c:
        assert tls_c.pgconn.ssl_in_use and not plain_c.pgconn.ssl_in_use
        assert tls_c.execute("select 1 + 1").fetchone() == (2,)
        assert plain_c.execute("select 2 + 2").fetchone() == (4,)
        # The server certificate is the configured one: libpq verifies it against our CA and the host.
        with connect(p, "verify-full", sslrootcert=certs.ca) as verified:
            assert verified.pgconn.ssl_in_use
        with admin(p) as a:
            mine = {r["client_id"]: r["tls"] for r in rows(a, "CLIENTS") if r["user"] == SCRAM_USER}
            assert mine == {f"#c{tls_c.info.backend_pid}": "true", f"#c{plain_c.info.backend_pid}": "false"}
            conns = {k: int(v) for k, v in rows(a, "CONNECTIONS")[0].items()}
            # TLS: tls_c and the verify-full one; plain: plain_c and this admin session.
            assert conns["tls"] == 2 and conns["errors"] == 0 and conns["plain"] >= 2


def test_disable_mode_answers_n(pooler_factory: Any, certs: Certs) -> None:
    p = pooler_factory(general=tls_general(certs, "disable"))
    with connect(p, "prefer") as c:
        assert not c.pgconn.ssl_in_use
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(p, "require")
    assert "does not support SSL" in str(ei.value)


def test_require_mode_refuses_plain_tcp_but_not_unix_or_cancel(pooler_factory: Any, certs: Certs,
                                                                tmp_path: Path) -> None:
    p = pooler_factory(general=tls_general(certs, "require", unix_socket_dir=str(tmp_path)), pool_size=2)
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(p, "disable")
    assert "SSL required" in str(ei.value)
    with WireClient(p.host, p.port) as w:
        w.send(startup_message({"user": SCRAM_USER, "database": DBNAME}))
        data = w.expect_closed()
        assert data[:1] == b"E" and parse_fields(data[5:])["C"] == "28000"
    # Unix-socket clients are exempt; PostgreSQL never offers TLS there and neither do we.
    with psycopg.connect(host=str(tmp_path), port=p.port, user=SCRAM_USER, password=SCRAM_PASSWORD,
                         dbname=DBNAME, sslmode="prefer") as u:
        assert not u.pgconn.ssl_in_use and u.execute("select 3").fetchone() == (3,)
    # libpq sends cancel requests in plain text before version 17 (over TLS after): both must get through.
    with connect(p, "require") as c:
        cancel_a_sleep(c)
    with admin(p, "require") as a:
        counts = {k: int(v) for k, v in rows(a, "CONNECTIONS")[0].items()}
        assert counts["errors"] >= 2 and counts["cancel"] >= 1 and counts["tls"] >= 2


def test_verify_full_needs_a_client_certificate_from_the_ca(pooler_factory: Any, certs: Certs) -> None:
    p = pooler_factory(general=tls_general(certs, "verify-full", tls_ca_cert=certs.ca))
    with connect(p, "verify-full", sslrootcert=certs.ca, sslcert=certs.client_cert, sslkey=certs.client_key) as c:
        assert c.execute("select current_user").fetchone() == (SCRAM_USER,)
    with pytest.raises(psycopg.OperationalError):
        connect(p, "require")  # no certificate: the handshake fails
    p2 = pooler_factory(general=tls_general(certs, "verify-full", tls_ca_cert=certs.other_ca))
    with pytest.raises(psycopg.OperationalError):
        connect(p2, "require", sslcert=certs.client_cert, sslkey=certs.client_key)  # signed by another CA
    assert p.wait_for_log("TLS handshake failed")


def asyncpg_over_tls(p: Any, certs: Certs, user: str, password: str, clients: int, rounds: int, rows: int) -> None:
    """asyncpg clients over TLS (verifying the pooler's certificate): rounds of concurrent prepared queries,
    then one prepared statement fetching `rows` rows of 100+ bytes."""

    async def main() -> None:
        ctx = ssl.create_default_context(cafile=certs.ca)
        conns = [await asyncpg.connect(host=p.host, port=p.port, user=user, password=password, database=DBNAME,
                                       ssl=ctx) for _ in range(clients)]
        try:
            for _ in range(rounds):
                got = await asyncio.gather(*(cn.fetchval("select $1::int * 3", i) for i, cn in enumerate(conns)))
                assert got == [i * 3 for i in range(clients)]
            stmt = await conns[0].prepare("select repeat('q', 100) || g as x from generate_series(1, $1::int) g")
            fetched = await stmt.fetch(rows)
            assert len(fetched) == rows and fetched[-1]["x"].endswith(str(rows))
        finally:
            for cn in conns:
                await cn.close()

    asyncio.run(main())


def test_big_results_pipelines_and_asyncpg_over_tls(pooler_factory: Any, certs: Certs) -> None:
    """Many TLS records per query in both directions, back-pressure towards a TLS client, and pipelines of
    small batches sharing records."""
    p = pooler_factory(general=tls_general(certs), pool_size=2)
    with connect(p, "require") as c:
        # 8 MB out (back-pressure towards a TLS client), then 2 MB in as one query text.
        n, total = c.execute("select count(*), sum(length(x)) from (select repeat('x', 1000) || g as x "
                             "from generate_series(1, 8000) g) s").fetchone() or (0, 0)
        assert n == 8000
        rows = c.execute("select repeat('y', 1000) || g from generate_series(1, 8000) g").fetchall()
        assert len(rows) == 8000 and rows[-1][0].endswith("8000")
        big = "z" * 2_000_000
        assert c.execute("select length(%s::text)", (big,)).fetchone() == (2_000_000,)
        # A pipeline of many small extended-protocol batches in a few TLS records.
        with c.pipeline():
            curs = [c.execute("select %s::int * 2", (i,)) for i in range(200)]
        assert [cur.fetchone() for cur in curs] == [(i * 2,) for i in range(200)]

    asyncpg_over_tls(p, certs, MD5_USER, MD5_PASSWORD, clients=5, rounds=3, rows=50_000)


def test_tls_client_stays_on_the_old_process_in_a_binary_upgrade(pooler_factory: Any, certs: Certs) -> None:
    """A TLS session cannot be handed to another process: the old one keeps serving it (plain clients move)."""
    p = pooler_factory(general=tls_general(certs, shutdown_timeout=30000))
    tls_c = connect(p, "require")
    plain_c = connect(p, "disable")
    old = current_pid(p)
    new = upgrade(p)
    wait_for(lambda: owner_of(plain_c, p.port, [old, new]) == [new], what="the plain client to move")
    assert plain_c.execute("select 6").fetchone() == (6,)
    # The TLS client stays with the old process, which keeps serving it.
    assert tls_c.execute("select 5").fetchone() == (5,)
    assert owner_of(tls_c, p.port, [old, new]) == [old] and alive(old)
    tls_c.close()
    wait_exit(old, p, timeout=30)  # its last client left: the old process is done
    with connect(p, "require") as again:
        assert again.execute("select 7").fetchone() == (7,) and owner_of(again, p.port, [new]) == [new]
    plain_c.close()
    stop_pid(new)


@pytest.mark.parametrize("general,key,why", [
    ({"tls_certificate": "{cert}"}, "tls_private_key", "must be set together with tls_certificate"),
    ({"tls_mode": "require"}, "tls_mode", "needs tls_certificate and tls_private_key"),
    ({"tls_certificate": "{cert}", "tls_private_key": "{key}", "tls_mode": "verify-full"}, "tls_ca_cert",
     "is required by tls_mode 'verify-full'"),
    ({"tls_certificate": "/nonexistent/server.crt", "tls_private_key": "{key}"}, "tls_certificate",
     "cannot read /nonexistent/server.crt"),
    ({"tls_certificate": "{cert}", "tls_private_key": "{cert}"}, "tls_certificate", "cannot load certificate"),
    ({"tls_certificate": "{cert}", "tls_private_key": "{key}", "tls_ca_cert": "{key}"}, "tls_ca_cert",
     "cannot load CA bundle"),
])
def test_bad_tls_settings_name_the_file_and_key(tmp_path: Path, certs: Certs, general: dict[str, str], key: str,
                                                why: str) -> None:
    lines = ["general:", "  host: 127.0.0.1", "  port: 6432", "  admin_username: admin", "  admin_password: x"]
    for k, v in general.items():
        lines.append(f"  {k}: \"{v.format(cert=certs.server_cert, key=certs.server_key)}\"")
    lines += ["pools:", "  app:", "    server_host: 127.0.0.1", "    server_port: 5432", "    users:",
              "      - username: u", "        password: p", "        pool_size: 1"]
    cfg = tmp_path / "pg_doorman.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    r = subprocess.run([sys.executable, "-m", "pgdoorman", "-t", str(cfg)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert f"{cfg}: general.{key}: " in out and why in out, out


def test_wire_sslrequest_inside_tls_is_answered_n(pooler_factory: Any, certs: Certs) -> None:
    """The raw protocol: 'S', a handshake, then a second SSLRequest inside TLS is answered 'N'."""
    p = pooler_factory(general=tls_general(certs))
    raw = socket.create_connection((p.host, p.port), timeout=10)
    raw.sendall((8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"))
    assert raw.recv(1) == b"S"
    ctx = ssl.create_default_context(cafile=certs.ca)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    s.sendall((8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"))
    assert s.recv(1) == b"N"
    s.close()


# ------------------------------------------------------------------------------------------ towards servers
TLS_HBA = """\
local all all trust
hostssl all postgres 127.0.0.1/32 trust
hostssl app app_md5 127.0.0.1/32 md5 clientcert=verify-ca
hostssl all all 127.0.0.1/32 md5
"""


@pytest.fixture(scope="module")
def tls_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PgCluster, Certs]]:
    """A second PostgreSQL that accepts TLS connections only over TCP (hostssl), app_md5 only with a client
    certificate signed by the test CA."""
    certs = make_certs(tmp_path_factory.mktemp("server-certs"), MD5_USER)
    with tls_cluster(certs, TLS_HBA) as cluster:
        yield cluster, certs


def tls_pool(pg: PgCluster, **extra: Any) -> dict[str, Any]:
    return {"server_host": "127.0.0.1", "server_port": pg.port, **extra}


# Plain-text server credentials: the users' stored verifiers belong to the other cluster (other salts).
TLS_USERS = [
    {"username": SCRAM_USER, "password": SCRAM_PASSWORD, "server_username": SCRAM_USER,
     "server_password": SCRAM_PASSWORD, "pool_size": 3},
    {"username": MD5_USER, "password": MD5_PASSWORD, "server_username": MD5_USER, "server_password": MD5_PASSWORD,
     "pool_size": 3},
]


def server_ssl(c: psycopg.Connection[Any]) -> bool:
    row = c.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
    return bool(row and row[0])


def test_server_tls_allow_retries_a_refused_plain_connection_with_tls(pooler_factory: Any,
                                                                      tls_pg: tuple[PgCluster, Certs]) -> None:
    pg, _ = tls_pg
    p = pooler_factory(pool=tls_pool(pg), users=TLS_USERS)  # server_tls_mode unset: allow
    with connect(p, "disable") as c:
        assert server_ssl(c) and c.execute("select 1").fetchone() == (1,)
    assert p.wait_for_log("retrying with TLS")
    with admin(p) as a:
        servers = rows(a, "SERVERS")
        assert servers and all(r["tls"] == "true" for r in servers)


def test_server_tls_prefer_require_disable(pooler_factory: Any, pg: PgCluster, tls_pg: tuple[PgCluster, Certs]) -> None:
    tpg, _ = tls_pg
    p = pooler_factory(pool=tls_pool(tpg, server_tls_mode="prefer"), users=TLS_USERS)
    with connect(p, "disable") as c:
        assert server_ssl(c)
    assert not p.wait_for_log("retrying with TLS", timeout=0.5)  # TLS from the first packet
    # disable: PostgreSQL's own refusal reaches the client.
    p2 = pooler_factory(pool=tls_pool(tpg, server_tls_mode="disable"), users=TLS_USERS)
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(p2, "disable")
    assert "no pg_hba.conf entry" in str(ei.value)
    # require against a server without TLS (the suite's main cluster runs with ssl off).
    p3 = pooler_factory(general={"server_tls_mode": "require"})
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(p3, "disable")
    assert "server does not support SSL, but SSL was required" in str(ei.value)
    # prefer against the same server: plain text, as libpq does.
    p4 = pooler_factory(general={"server_tls_mode": "prefer"})
    with connect(p4, "disable") as c:
        assert c.execute("select 2").fetchone() == (2,)


def test_server_tls_verification_and_client_certificate(pooler_factory: Any, tls_pg: tuple[PgCluster, Certs]) -> None:
    pg, certs = tls_pg
    p = pooler_factory(pool=tls_pool(pg, server_tls_mode="verify-full", server_tls_ca_cert=certs.ca), users=TLS_USERS)
    with connect(p, "disable") as c:
        assert server_ssl(c)
    p2 = pooler_factory(pool=tls_pool(pg, server_tls_mode="verify-ca", server_tls_ca_cert=certs.other_ca),
                        users=TLS_USERS)
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(p2, "disable")
    assert "TLS handshake failed" in str(ei.value) and "certificate" in str(ei.value)
    # app_md5 needs a client certificate from our CA (hba clientcert=verify-ca).
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(p, "disable", user=MD5_USER, password=MD5_PASSWORD)
    p3 = pooler_factory(pool=tls_pool(pg, server_tls_mode="require", server_tls_certificate=certs.client_cert,
                                      server_tls_private_key=certs.client_key), users=TLS_USERS)
    with connect(p3, "disable", user=MD5_USER, password=MD5_PASSWORD) as c:
        assert server_ssl(c) and c.execute("select current_user").fetchone() == (MD5_USER,)


def test_transaction_pooling_over_tls_both_ways(pooler_factory: Any, tls_pg: tuple[PgCluster, Certs],
                                                certs: Certs) -> None:
    """Clients switch servers every transaction; big results, pipelines and prepared statements cross two
    TLS connections."""
    pg, _ = tls_pg
    p = pooler_factory(general=tls_general(certs), pool=tls_pool(pg, server_tls_mode="require"), users=TLS_USERS)

    asyncpg_over_tls(p, certs, SCRAM_USER, SCRAM_PASSWORD, clients=8, rounds=5, rows=5000)
    with connect(p, "require") as c:
        with c.pipeline():
            curs = [c.execute("select %s::int + 1", (i,)) for i in range(100)]
        assert [cur.fetchone() for cur in curs] == [(i + 1,) for i in range(100)]
        assert server_ssl(c)
        # The cancel request goes to the backend in plain text: PostgreSQL handles it before pg_hba, so a
        # hostssl-only server accepts it.
        cancel_a_sleep(c)


@pytest.mark.parametrize("general,pool,where", [
    ({"server_tls_mode": "verify-ca"}, {}, "general.server_tls_ca_cert: is required by server_tls_mode 'verify-ca'"),
    ({}, {"server_tls_mode": "verify-full"}, "pools.app.server_tls_ca_cert: is required by server_tls_mode"),
    ({}, {"server_tls_certificate": "/x.crt"}, "pools.app.server_tls_private_key: must be set together"),
    ({"server_tls_mode": "require", "server_tls_ca_cert": "/nonexistent/ca.crt"}, {},
     "general.server_tls_ca_cert: cannot read /nonexistent/ca.crt"),
])
def test_bad_server_tls_settings(tmp_path: Path, general: dict[str, str], pool: dict[str, str], where: str) -> None:
    lines = ["general:", "  host: 127.0.0.1", "  port: 6432", "  admin_username: admin", "  admin_password: x"]
    lines += [f"  {k}: \"{v}\"" for k, v in general.items()]
    lines += ["pools:", "  app:", "    server_host: 127.0.0.1", "    server_port: 5432"]
    lines += [f"    {k}: \"{v}\"" for k, v in pool.items()]
    lines += ["    users:", "      - username: u", "        password: p", "        pool_size: 1"]
    cfg = tmp_path / "pg_doorman.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    r = subprocess.run([sys.executable, "-m", "pgdoorman", "-t", str(cfg)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and f"{cfg}: {where}" in r.stdout + r.stderr, r.stdout + r.stderr
