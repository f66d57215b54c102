"""JWT logins (the `jwt` extra): clients presenting RS256 tokens as their password to a user whose password is
`jwt-pkey-fpath:`, through the pooler as a subprocess; the tokens the pooler mints for
`server_password: jwt-priv-key-fpath:`; and the config errors for JWT users."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pgdoorman import jwt_auth
from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER
from tests.support.pooler import ROOT

pytestmark = pytest.mark.timeout(120)


def keypair(d: Path, name: str) -> tuple[Path, Path, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv, pub = d / f"{name}.key", d / f"{name}.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub, key


def token(key: Any, user: str, exp_in: float = 60, **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {"preferred_username": user, "exp": now + exp_in, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm="RS256")


def test_client_jwt_login(pooler_factory: Any, tmp_path: Path) -> None:
    _, pub, key = keypair(tmp_path, "issuer")
    _, _, other = keypair(tmp_path, "other")
    users = [{"username": "svc", "password": f"jwt-pkey-fpath:{pub}", "server_username": SCRAM_USER,
              "server_password": SCRAM_PASSWORD, "pool_size": 2}]
    p = pooler_factory(users=users)

    def login(password: str) -> psycopg.Connection[Any]:
        return psycopg.connect(p.dsn("svc", password, DBNAME), autocommit=True, connect_timeout=10)

    with login(token(key, "svc")) as c:  # PostgreSQL sees the server user
        assert c.execute("select current_user").fetchone() == (SCRAM_USER,)
    for bad in (token(key, "svc", exp_in=-5),  # expired
                token(key, "someone-else"),  # issued for another user
                token(other, "svc"),  # signed by a key we do not trust
                token(key, "svc", exp_in=60, exp=None),  # no exp at all
                token(key, "svc", nbf=int(time.time()) + 3600),  # not valid yet
                "not a token"):
        with pytest.raises(psycopg.OperationalError) as ei:
            login(bad)
        assert 'password authentication failed for user "svc"' in str(ei.value)
    assert p.wait_for_log("JWT login of 'svc'")


def test_minted_server_tokens_verify(tmp_path: Path) -> None:
    priv, pub, _ = keypair(tmp_path, "server")
    signer = jwt_auth.load_private_key(str(priv))
    checker = jwt_auth.load_public_key(str(pub))
    t = jwt_auth.mint(signer, "app_owner")
    assert jwt_auth.verify(t, checker, "app_owner") is None
    claims = jwt.decode(t, options={"verify_signature": False})
    assert claims["preferred_username"] == "app_owner" and claims["exp"] - claims["iat"] == jwt_auth.TOKEN_LIFETIME
    old = jwt_auth.mint(signer, "app_owner", now=time.time() - 3600)
    assert "expired" in (jwt_auth.verify(old, checker, "app_owner") or "")


def test_jwt_config_errors(tmp_path: Path) -> None:
    priv, pub, _ = keypair(tmp_path, "k")
    cases = [
        (f"password: jwt-pkey-fpath:{tmp_path}/missing.pub\n        server_username: a\n        server_password: b",
         f"pools.app.users[0].password: cannot read {tmp_path}/missing.pub"),
        (f"password: jwt-pkey-fpath:{priv}\n        server_username: a\n        server_password: b",
         "pools.app.users[0].password: " + str(priv) + " is not a PEM public key"),
        (f"password: jwt-pkey-fpath:{pub}", "pools.app.users[0].server_password: is required for a JWT user"),
        (f"password: x\n        server_username: a\n        server_password: jwt-priv-key-fpath:{pub}",
         "pools.app.users[0].server_password: " + str(pub) + " is not an unencrypted PEM private key"),
    ]
    for user_lines, expected in cases:
        cfg = tmp_path / "pg_doorman.yaml"
        cfg.write_text("general:\n  admin_username: admin\n  admin_password: x\npools:\n  app:\n"
                       "    server_host: 127.0.0.1\n    server_port: 5432\n    users:\n"
                       f"      - username: u\n        pool_size: 1\n        {user_lines}\n")
        r = subprocess.run([sys.executable, "-m", "pgdoorman", "-t", str(cfg)], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
        out = r.stdout + r.stderr
        assert r.returncode != 0 and f"{cfg}: {expected}" in out, out
