"""auth_query with the pool's server TLS and across a binary upgrade.

Upgrade: clients of auth_query users (passthrough SCRAM and md5, dedicated mode) are handed over as the other
upgrade tests of test_ops.py do it, and keep answering as PostgreSQL does; the new process looks each user
up again; a user it no longer finds gets 28000.

TLS: a second PostgreSQL that takes TCP connections over TLS only (hostssl, as in test_tls.py); the auth_query
executor connects with the pool's server_tls_mode (allow retries a refused plain login with TLS; require and
verify-full connect with TLS; verify-ca with the wrong CA and disable fail, and the client gets 28P01). What
the executor used is read from PostgreSQL's pg_stat_ssl.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.integration.test_auth_query import (
    EXEC_USER,
    aq_section,
    calls,
    drop_test_roles,
    new_user,
    refused,
    setup_cluster,
)
from tests.integration.test_ops import current_pid, owner_of, stop_pid, upgrade, wait_exit
from tests.integration.test_tls import TLS_HBA
from tests.support.certs import Certs, make_certs, tls_cluster
from tests.support.cluster import DBNAME, MD5_USER, SCRAM_PASSWORD, SCRAM_USER, PgCluster

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def tls_aq_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PgCluster, Certs]]:
    """PostgreSQL with TLS only over TCP, the lookup function and the executor role."""
    certs = make_certs(tmp_path_factory.mktemp("aq-certs"), MD5_USER)
    with tls_cluster(certs, TLS_HBA) as cluster:
        setup_cluster(cluster)
        yield cluster, certs


@pytest.fixture(scope="module")
def aq_pg(pg: PgCluster) -> Iterator[PgCluster]:
    """The suite's PostgreSQL with the lookup function; the roles made here are dropped at the end."""
    setup_cluster(pg)
    yield pg
    drop_test_roles(pg)


def executor_ssl(pg: PgCluster) -> list[str]:
    """pg_stat_ssl.ssl of every auth_query executor connection now open."""
    out = pg.psql("SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                  f"WHERE a.usename = '{EXEC_USER}' AND a.application_name = 'pg_doorman_auth_query'", dbname=DBNAME)
    return [x for x in out.split() if x]


def direct(pg: PgCluster, user: str, password: str) -> tuple[Any, ...] | None:
    with psycopg.connect(host="127.0.0.1", port=pg.port, user=user, password=password, dbname=DBNAME,
                         sslmode="require", autocommit=True, connect_timeout=10) as c:
        return c.execute("select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()


@pytest.mark.parametrize("mode", ["allow", "require", "verify-full"])
def test_executor_uses_server_tls(pooler_factory: Any, tls_aq_pg: tuple[PgCluster, Certs], mode: str) -> None:
    pg, certs = tls_aq_pg
    user, pw = new_user(pg, "scram-sha-256")
    pool: dict[str, Any] = {"server_host": "127.0.0.1", "server_port": pg.port, "auth_query": aq_section(workers=1)}
    if mode != "allow":  # allow: server_tls_mode unset (its default)
        pool["server_tls_mode"] = mode
    if mode == "verify-full":
        pool["server_tls_ca_cert"] = certs.ca
    p = pooler_factory(users=[], pool=pool)
    expected = direct(pg, user, pw)  # what PostgreSQL itself says to this user over TLS
    assert expected == (user, True)
    with psycopg.connect(p.dsn(user, pw, DBNAME), autocommit=True, connect_timeout=10) as c:
        assert c.execute("select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone() \
            == expected
    assert executor_ssl(pg) == ["t"]  # the executor's own connection is encrypted too
    if mode == "allow":
        assert "retrying with TLS" in p.log()  # the pool's servers: the same allow semantics


@pytest.mark.parametrize("tls", [{"server_tls_mode": "disable"}, {"server_tls_mode": "verify-ca"}])
def test_executor_tls_refusals_give_28p01(pooler_factory: Any, tls_aq_pg: tuple[PgCluster, Certs],
                                          tls: dict[str, str]) -> None:
    pg, certs = tls_aq_pg
    user, pw = new_user(pg, "md5")
    if tls["server_tls_mode"] == "verify-ca":
        tls = {**tls, "server_tls_ca_cert": certs.other_ca}  # not the CA that signed the server's certificate
    p = pooler_factory(users=[], pool={"server_host": "127.0.0.1", "server_port": pg.port,
                                       "auth_query": aq_section(workers=1), **tls})
    assert 'password authentication failed for user "' in refused(p, user, pw)
    why = "no pg_hba.conf entry" if tls["server_tls_mode"] == "disable" else "certificate verify failed"
    assert p.wait_for_log(why), p.log_tail()
    assert "auth_query of pool 'app': " + ("login refused" if why.startswith("no") else "TLS failed") in p.log()


# ------------------------------------------------------------------------------------------ binary upgrade
CHECK = "select current_user, current_setting('DateStyle'), '2024-03-01'::date::text"


def settle(c: psycopg.Connection[Any], datestyle: str) -> tuple[Any, ...] | None:
    c.execute(f"SET DateStyle = '{datestyle}'")
    return c.execute(CHECK).fetchone()


def test_dynamic_users_survive_a_binary_upgrade(aq_pg: PgCluster, pooler_factory: Any) -> None:
    """Passthrough SCRAM and md5 users (two clients of one user with different settings on a pool of 1) and a
    dedicated-mode user keep their sessions across the upgrade: the new process looks each user up once
    (its own auth_query) and serves them as PostgreSQL would. A user the new lookup no longer finds is closed
    with 28000, not let in."""
    scram_u, scram_pw = new_user(aq_pg, "scram-sha-256")
    md5_u, md5_pw = new_user(aq_pg, "md5")
    gone_u, gone_pw = new_user(aq_pg, "md5")
    p = pooler_factory(start=False, pool_size=1, pool={"auth_query": aq_section(pool_size=1)})
    p.config["pools"]["app_dedicated"] = {
        **p.config["pools"][DBNAME], "server_database": DBNAME, "users": [],
        "auth_query": aq_section(database=DBNAME, server_user=SCRAM_USER, server_password=SCRAM_PASSWORD,
                                 pool_size=1)}
    p.start()
    old = current_pid(p)
    cases = [(scram_u, scram_pw, DBNAME, "German, DMY"), (scram_u, scram_pw, DBNAME, "ISO, MDY"),
             (md5_u, md5_pw, DBNAME, "SQL, DMY"), (md5_u, md5_pw, "app_dedicated", "Postgres, MDY")]
    clients, expected = [], []
    for user, pw, db, style in cases:
        c = psycopg.connect(p.dsn(user, pw, db), autocommit=True, connect_timeout=10)
        clients.append(c)
        got = settle(c, style)
        login = SCRAM_USER if db == "app_dedicated" else user  # dedicated: PostgreSQL sees server_user
        with psycopg.connect(host=aq_pg.host, port=aq_pg.port, user=login, dbname=DBNAME, autocommit=True,
                             password=SCRAM_PASSWORD if db == "app_dedicated" else pw) as d:
            expected.append(settle(d, style))  # the same steps straight to PostgreSQL
        assert got == expected[-1]
    gone = psycopg.connect(p.dsn(gone_u, gone_pw, DBNAME), autocommit=True, connect_timeout=10)
    assert gone.execute("select current_user").fetchone() == (gone_u,)
    aq_pg.psql(f"ALTER ROLE {gone_u} PASSWORD NULL")  # the lookup finds no password any more
    before = {u: calls(aq_pg, u) for u in (scram_u, md5_u, gone_u)}
    new = upgrade(p)
    wait_exit(old, p)
    try:
        for c, want in zip(clients, expected, strict=True):
            assert c.execute(CHECK).fetchone() == want
            assert owner_of(c, p.port, [old, new]) == [new]
        # One lookup per user and auth_query in the new process (md5_u in both pools).
        assert {u: calls(aq_pg, u) - n for u, n in before.items()} == {scram_u: 1, md5_u: 2, gone_u: 1}
        with pytest.raises(psycopg.OperationalError) as ei:
            gone.execute("select 1")
        assert ei.value.sqlstate == "28000" and "not found by auth_query" in str(ei.value), ei.value
        with psycopg.connect(p.dsn(scram_u, scram_pw, DBNAME), autocommit=True, connect_timeout=10) as c:
            assert c.execute("select current_user").fetchone() == (scram_u,)
    finally:
        for c in clients:
            c.close()
        gone.close()
        stop_pid(new)
