"""Client access rules through the pooler as a subprocess: general.pg_hba (inline and from a file, reloaded,
with TLS and Unix-socket rules, the admin console) and the legacy general.hba CIDR list."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.test_admin import rows
from tests.support.certs import make_certs
from tests.support.cluster import DBNAME, MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER
from tests.support.pooler import ROOT, wait_for

pytestmark = pytest.mark.timeout(120)


def connect(p: Any, user: str, password: str, db: str = DBNAME, host: str | None = None,
            sslmode: str = "disable", **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(host=host or p.host, port=p.port, user=user, password=password, dbname=db,
                           sslmode=sslmode, autocommit=True, connect_timeout=10, **kw)


def refused(p: Any, user: str, password: str, **kw: Any) -> str:
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(p, user, password, **kw)
    return str(ei.value)


def test_method_rules_follow_the_stored_password(pooler_factory: Any) -> None:
    # md5 rule only: the md5 user logs in; the SCRAM user (a SCRAM verifier cannot answer md5) is refused.
    p = pooler_factory(general={"pg_hba": "host all all 127.0.0.1/32 md5"})
    with connect(p, MD5_USER, MD5_PASSWORD) as c:
        assert c.execute("select current_user").fetchone() == (MD5_USER,)
    msg = refused(p, SCRAM_USER, SCRAM_PASSWORD)
    assert f'no pg_hba.conf entry for host "127.0.0.1", user "{SCRAM_USER}", database "{DBNAME}", no encryption' in msg
    # An unknown user is answered as a SCRAM user would be: the rules do not tell whether a name exists.
    assert 'no pg_hba.conf entry for host "127.0.0.1", user "ghost"' in refused(p, "ghost", "x")
    # scram rule only: the other way round.
    p2 = pooler_factory(general={"pg_hba": "host all all 127.0.0.1/32 scram-sha-256"})
    with connect(p2, SCRAM_USER, SCRAM_PASSWORD) as c:
        assert c.execute("select 1").fetchone() == (1,)
    assert "no pg_hba.conf entry" in refused(p2, MD5_USER, MD5_PASSWORD)
    # A wrong password is still a wrong password (28P01), not an hba refusal.
    assert "password authentication failed" in refused(p2, SCRAM_USER, "wrong")


def test_trust_reject_and_plain_text_passwords(pooler_factory: Any) -> None:
    users = [
        {"username": SCRAM_USER, "password": SCRAM_PASSWORD, "server_username": SCRAM_USER,
         "server_password": SCRAM_PASSWORD, "pool_size": 2},
        {"username": MD5_USER, "password": MD5_PASSWORD, "server_username": MD5_USER,
         "server_password": MD5_PASSWORD, "pool_size": 2},
    ]
    rules = f"""
    host all {MD5_USER} 127.0.0.1/32 trust
    host all nobody 127.0.0.1/32 reject
    host all all 127.0.0.1/32 md5
    """
    p = pooler_factory(users=users, general={"pg_hba": rules})
    with connect(p, MD5_USER, "anything at all") as c:  # trust: no password asked
        assert c.execute("select current_user").fetchone() == (MD5_USER,)
    # A plain-text password can answer an md5 challenge.
    with connect(p, SCRAM_USER, SCRAM_PASSWORD) as c:
        assert c.execute("select 2").fetchone() == (2,)
    assert "password authentication failed" in refused(p, SCRAM_USER, "wrong")
    assert 'pg_hba.conf rejects connection for host "127.0.0.1", user "nobody"' in refused(p, "nobody", "x")
    # trust does not let an unknown user in: it gets the usual failed password exchange.
    p2 = pooler_factory(users=users, general={"pg_hba": "host all all all trust"})
    assert "password authentication failed" in refused(p2, "ghost", "x")
    with connect(p2, SCRAM_USER, "") as c:
        assert c.execute("select 3").fetchone() == (3,)
    assert p2.wait_for_log("let in by a pg_hba trust rule")


def test_hostssl_local_and_the_admin_console(pooler_factory: Any, tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs", SCRAM_USER)
    sockdir = tmp_path / "sock"
    sockdir.mkdir()
    rules = """
    local     all       all                  scram-sha-256
    hostssl   all       all   127.0.0.1/32   scram-sha-256
    host      pgdoorman admin 127.0.0.1/32   trust
    hostnossl all       all   all            reject
    """
    p = pooler_factory(general={"pg_hba": rules, "tls_certificate": certs.server_cert,
                                "tls_private_key": certs.server_key, "unix_socket_dir": str(sockdir)})
    with connect(p, SCRAM_USER, SCRAM_PASSWORD, sslmode="require") as c:
        assert c.pgconn.ssl_in_use
    assert "pg_hba.conf rejects connection" in refused(p, SCRAM_USER, SCRAM_PASSWORD)  # plain TCP
    with connect(p, SCRAM_USER, SCRAM_PASSWORD, host=str(sockdir)) as c:  # Unix socket: the local rule
        assert c.execute("select 4").fetchone() == (4,)
    # The admin console: trust for admin over TCP; anybody else is not let in by that rule.
    with connect(p, "admin", "", db="pgdoorman") as a:
        assert int(rows(a, "CONNECTIONS")[0]["errors"]) >= 1  # the plain TCP client refused above
    assert "pg_hba.conf rejects connection" in refused(p, "someone", "x", db="pgdoorman")


def test_rules_from_a_file_are_reloaded(pooler_factory: Any, tmp_path: Path) -> None:
    rules = tmp_path / "pg_hba.conf"
    rules.write_text("host all all 127.0.0.1/32 reject\n")
    p = pooler_factory(general={"pg_hba": {"path": str(rules)}})
    assert "rejects connection" in refused(p, SCRAM_USER, SCRAM_PASSWORD)
    rules.write_text("host all all 127.0.0.1/32 scram-sha-256\n")
    p.signal(signal.SIGHUP)
    assert p.wait_for_log("configuration reloaded")

    def logs_in() -> bool:
        try:
            with connect(p, SCRAM_USER, SCRAM_PASSWORD) as c:
                return c.execute("select 1").fetchone() == (1,)
        except psycopg.OperationalError:
            return False

    wait_for(logs_in, what="the reloaded rules to let the client in")


def test_legacy_hba_list(pooler_factory: Any) -> None:
    p = pooler_factory(general={"hba": ["10.0.0.0/8"]})
    assert 'no hba entry for host "127.0.0.1"' in refused(p, SCRAM_USER, SCRAM_PASSWORD)
    p2 = pooler_factory(general={"hba": ["10.0.0.0/8", "127.0.0.0/8"]})
    with connect(p2, SCRAM_USER, SCRAM_PASSWORD) as c:
        assert c.execute("select 5").fetchone() == (5,)


@pytest.mark.parametrize("general,text", [
    ({"pg_hba": "host all all all md5\nhost all all all peer"}, "general.pg_hba: line 2: method 'peer'"),
    ({"pg_hba": {"path": "/nonexistent/pg_hba.conf"}}, "general.pg_hba: cannot read /nonexistent/pg_hba.conf"),
    ({"pg_hba": "host all all all md5", "hba": ["10.0.0.0/8"]}, "general.hba: cannot be combined with pg_hba"),
    ({"hba": ["10.0.0.0/99"]}, "general.hba: '10.0.0.0/99' is not an IP address or CIDR block"),
])
def test_bad_rules_name_the_key_and_line(pooler_factory: Any, general: dict[str, Any], text: str) -> None:
    p = pooler_factory(start=False, general=general)
    p.write_config()
    r = subprocess.run([sys.executable, "-m", "pgdoorman", "-t", p.config_path], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and text in r.stdout + r.stderr, r.stdout + r.stderr
