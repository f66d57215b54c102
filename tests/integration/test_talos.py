"""Talos logins (the `jwt` extra): user `talos` with a JWT minted here as its password, keys made by the test
(the file name is the `kid`), the role in `resource_access` picking the pool user; every refusal is 28P01."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest

from tests.integration.test_jwt import keypair
from tests.support.cluster import ADMIN_PASSWORD, ADMIN_USER, DBNAME, SCRAM_PASSWORD, SCRAM_USER, PgCluster

pytestmark = pytest.mark.timeout(120)


def talos_token(key: Any, kid: str, roles: dict[str, list[str]], exp_in: float = 60, **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {"exp": now + exp_in, "clientId": "billing-api",
                            "resource_access": {k: {"roles": v} for k, v in roles.items()}, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm="RS256",
                      headers={"kid": kid})


def test_talos_logins(pg: PgCluster, pooler_factory: Any, tmp_path: Path) -> None:
    _, pub, key = keypair(tmp_path, "talos-kid-1")
    _, _, stranger = keypair(tmp_path, "stranger")
    users = [{"username": role, "password": "unused", "server_username": SCRAM_USER,
              "server_password": SCRAM_PASSWORD, "pool_size": 2}
             for role in ("read_only", "read_write", "owner")]
    p = pooler_factory(users=users, pool_mode="session")
    p.stop()
    p.config["talos"] = {"keys": [str(pub)], "databases": [DBNAME]}
    p.start()
    kid = "talos-kid-1"

    def login(token: str) -> psycopg.Connection[Any]:
        return psycopg.connect(p.dsn("talos", token, DBNAME), autocommit=True, connect_timeout=10)

    with login(talos_token(key, kid, {f"postgres.stg:{DBNAME}": ["read_only", "owner"]})) as c:
        assert c.execute("select current_user, current_setting('application_name')").fetchone() == \
            (SCRAM_USER, "billing-api")
        with psycopg.connect(p.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgdoorman"), autocommit=True,
                             prepare_threshold=None) as a:
            users_seen = {r[2] for r in a.execute("SHOW CLIENTS").fetchall()}
        assert "owner" in users_seen  # the highest role of the token is the pool user
    with login(talos_token(key, kid, {f"x:{DBNAME}": ["read_only"]}, clientId=None)) as c:
        assert c.execute("select 1").fetchone() == (1,)
    now = int(time.time())
    refusals = {
        "expired": talos_token(key, kid, {f"x:{DBNAME}": ["owner"]}, exp_in=-5),
        "not yet valid": talos_token(key, kid, {f"x:{DBNAME}": ["owner"]}, nbf=now + 3600),
        "no exp": talos_token(key, kid, {f"x:{DBNAME}": ["owner"]}, exp=None),
        "unknown key": talos_token(key, "other-kid", {f"x:{DBNAME}": ["owner"]}),
        "wrong signature": talos_token(stranger, kid, {f"x:{DBNAME}": ["owner"]}),
        "foreign database": talos_token(key, kid, {"x:otherdb": ["owner"]}),
        "no resource prefix": talos_token(key, kid, {DBNAME: ["owner"]}),
        "unsupported role": talos_token(key, kid, {f"x:{DBNAME}": ["superuser"]}),
        "not a token": "not a token",
    }
    for why, token in refusals.items():
        with pytest.raises(psycopg.OperationalError) as ei:
            login(token).close()
        assert 'password authentication failed for user "talos"' in str(ei.value), why
    log = p.log()
    assert "Talos login of 'talos'" in log and "no talos key 'other-kid'" in log


def test_talos_config_errors(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support.pooler import ROOT

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"general:\n  admin_username: a\n  admin_password: b\ntalos:\n  keys: [{tmp_path}/missing.pem]\n"
                   "  databases: [app]\npools:\n  app:\n    users: [{username: u, password: p, pool_size: 1}]\n")
    out = subprocess.run([sys.executable, "-m", "pgdoorman", "-t", str(cfg)], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 1 and "talos.keys" in out.stderr, out.stderr
