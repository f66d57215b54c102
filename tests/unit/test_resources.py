"""pgdoorman.resources: the live objects of a config (client TLS, pg_hba rules, server TLS per pool, JWT keys,
PAM) built once from real files; problems name the file (the included one where the key was given) and the
key path; the App and RELOAD use the Resources they are given."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pgdoorman import resources
from pgdoorman.app import App
from pgdoorman.config import ConfigError, load_config
from tests.support.certs import Certs, make_certs

HEAD = """\
general:
  admin_username: admin
  admin_password: secret
"""

POOL = """\
pools:
  app:
    server_host: 127.0.0.1
    server_port: 5432
    users:
      - username: bob
        password: "hunter2"
        pool_size: 2
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"), "someone")


@pytest.fixture(scope="module")
def jwt_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("jwt")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv, pub = d / "k.key", d / "k.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return str(priv), str(pub)


def write(d: Path, name: str, text: str) -> str:
    (d / name).write_text(textwrap.dedent(text))
    return str(d / name)


def errors_of(path: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        resources.load(path)
    return info.value.errors


# ------------------------------------------------------------------------------------------- problems


def test_bad_certificate_path_names_the_included_file_and_key(tmp_path: Path, certs: Certs) -> None:
    inc = write(tmp_path, "tls.yaml", f'general:\n  tls_certificate: "/nonexistent/server.crt"\n'
                                      f'  tls_private_key: "{certs.server_key}"\n')
    main = write(tmp_path, "main.yaml", f'include:\n  files: ["tls.yaml"]\n{HEAD}{POOL}')
    config = load_config(main)  # plain data: the loader reads no certificate
    assert config.origin("general", "tls_certificate") is not None
    expected = [f"{inc}: general.tls_certificate: cannot read /nonexistent/server.crt: No such file or directory"]
    assert resources.check(config) == expected
    assert errors_of(main) == expected
    with pytest.raises(ConfigError) as info:
        resources.build(config)
    assert info.value.errors == expected


def test_bad_pg_hba_file_and_rule(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", HEAD + '  pg_hba: {path: "/nonexistent/pg_hba.conf"}\n' + POOL)
    assert errors_of(path) == [
        f"{path}: general.pg_hba: cannot read /nonexistent/pg_hba.conf: No such file or directory"]
    rules = write(tmp_path, "pg_hba.conf", "host all all all md5\nhost all all all peer\n")
    path = write(tmp_path, "c.yaml", HEAD + f'  pg_hba: {{path: "{rules}"}}\n' + POOL)
    assert errors_of(path) == [f"{path}: general.pg_hba: {rules} line 2: method 'peer': supported are trust, "
                               "reject, md5, scram-sha-256"]
    path = write(tmp_path, "c.yaml", HEAD + '  hba: ["10.0.0.0/99"]\n' + POOL)
    assert errors_of(path) == [f"{path}: general.hba: '10.0.0.0/99' is not an IP address or CIDR block"]
    path = write(tmp_path, "c.yaml", HEAD + '  hba: ["10.0.0.0/8", "127.0.0.1"]\n' + POOL)
    assert [str(n) for n in resources.load(path).resources.hba_networks] == ["10.0.0.0/8", "127.0.0.1/32"]


def test_bad_jwt_keys_name_the_user_key(tmp_path: Path, jwt_keys: tuple[str, str]) -> None:
    priv, pub = jwt_keys
    users = POOL.replace('password: "hunter2"', f'password: "jwt-pkey-fpath:{priv}"\n'
                         f'        server_username: x\n        server_password: "jwt-priv-key-fpath:{pub}"')
    path = write(tmp_path, "c.yaml", HEAD + users)
    errors = errors_of(path)
    assert [e.split(" is not ")[0] for e in errors] == [
        f"{path}: pools.app.users[0].password: {priv}",
        f"{path}: pools.app.users[0].server_password: {pub}",
    ]
    assert "PEM public key" in errors[0] and "PEM private key" in errors[1]


def test_legacy_users_map_keeps_its_key_path_and_file(tmp_path: Path) -> None:
    inc = write(tmp_path, "users.toml", '[pools.app.users.7]\nusername = "bob"\npassword = "jwt-pkey-fpath:/k.pem"\n'
                                        'pool_size = 1\n')
    main = write(tmp_path, "main.toml", '[include]\nfiles = ["users.toml"]\n[general]\nadmin_username = "a"\n'
                                        'admin_password = "b"\n[pools.app]\nserver_host = "127.0.0.1"\n')
    assert errors_of(main) == [
        f"{inc}: pools.app.users.7.password: cannot read /k.pem: No such file or directory",
        f"{inc}: pools.app.users.7.server_password: is required for a JWT user (PostgreSQL cannot be logged in "
        "to with the client's token)",
    ]


def test_server_tls_blames_the_pool_that_set_it(tmp_path: Path) -> None:
    pools = POOL.replace("    server_port: 5432\n", '    server_port: 5432\n    server_tls_mode: "verify-ca"\n'
                                                      '    server_tls_ca_cert: "/nonexistent/ca.crt"\n')
    path = write(tmp_path, "c.yaml", HEAD + pools)
    assert errors_of(path) == [f"{path}: pools.app.server_tls_ca_cert: cannot read /nonexistent/ca.crt: "
                               "No such file or directory"]


def test_pam_user_needs_server_credentials(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", HEAD + POOL.replace('pool_size: 2', 'pool_size: 2\n        auth_pam_service: x'))
    assert f"{path}: pools.app.users[0].server_password: is required for a PAM user (PostgreSQL cannot check " \
           "the PAM password)" in errors_of(path)


def test_load_reports_the_loaders_problems_then_the_files(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", HEAD + '  port: 70000\n  tls_certificate: "/nonexistent/c.crt"\n'
                 '  tls_private_key: "/nonexistent/c.key"\n' + POOL)
    errors = errors_of(path)
    assert len(errors) == 2
    assert errors[0].startswith(f"{path}: general.port: ")
    assert errors[1] == f"{path}: general.tls_certificate: cannot read /nonexistent/c.crt: No such file or directory"


# ------------------------------------------------------------------------------------------- built objects


def good_config(tmp_path: Path, certs: Certs, jwt_keys: tuple[str, str], ca: str | None = None) -> str:
    priv, pub = jwt_keys
    rules = write(tmp_path, "pg_hba.conf", "host all all 127.0.0.1/32 md5\n")
    return write(tmp_path, "c.yaml", HEAD + textwrap.dedent(f"""\
          tls_certificate: "{certs.server_cert}"
          tls_private_key: "{certs.server_key}"
          pg_hba: {{path: "{rules}"}}
        pools:
          app:
            server_host: 127.0.0.1
            server_tls_mode: verify-ca
            server_tls_ca_cert: "{ca or certs.ca}"
            users:
              - username: bob
                password: "jwt-pkey-fpath:{pub}"
                server_username: x
                server_password: "jwt-priv-key-fpath:{priv}"
                pool_size: 2
          other:
            server_host: 127.0.0.1
            users:
              - {{username: carol, password: p, pool_size: 1}}
        """))


def test_build_returns_the_objects(tmp_path: Path, certs: Certs, jwt_keys: tuple[str, str]) -> None:
    loaded = resources.load(good_config(tmp_path, certs, jwt_keys))
    res = loaded.resources
    assert resources.check(loaded.config) == []
    assert res.client_tls.context is not None and res.client_tls.mode == "allow"
    assert res.hba_rules is not None and [r.method for r in res.hba_rules] == ["md5"]
    assert res.hba_networks == ()
    bob, carol = res.for_pool("app", "bob"), res.for_pool("other", "carol")
    assert bob.server_tls.mode == "verify-ca" and bob.server_tls.context is not None
    assert carol.server_tls.mode == "allow"  # general's default
    assert bob.jwt_key is not None and bob.jwt_server_key is not None
    assert carol.jwt_key is None and carol.jwt_server_key is None


def test_app_uses_the_resources_it_was_given(tmp_path: Path, certs: Certs, jwt_keys: tuple[str, str]) -> None:
    path = good_config(tmp_path, certs, jwt_keys)
    loaded = resources.load(path)
    app = App(loaded.config, loaded.resources)
    res = loaded.resources
    assert app.resources is res and app.client_tls is res.client_tls
    assert app.hba_rules is res.hba_rules and app.hba_networks is res.hba_networks
    pool = app.pools[("app", "bob")]
    live = res.for_pool("app", "bob")
    assert pool.server_tls is live.server_tls and pool.jwt_key is live.jwt_key
    assert pool.jwt_server_key is live.jwt_server_key and pool.cleartext_login

    # RELOAD builds the new config's objects once and hands them to the pools; client TLS stays.
    ok, _ = app.reload()
    assert ok and app.resources is not res and app.client_tls is res.client_tls
    assert pool.server_tls is app.resources.for_pool("app", "bob").server_tls is not live.server_tls
    assert app.hba_rules is app.resources.hba_rules

    # A RELOAD whose files are bad keeps everything running as it was, and says which file and key.
    kept = app.resources
    good_config(tmp_path, certs, jwt_keys, ca="/nonexistent/ca.crt")
    ok, message = app.reload()
    assert not ok and message == (f"{path}: pools.app.server_tls_ca_cert: cannot read /nonexistent/ca.crt: "
                                  "No such file or directory")
    assert app.resources is kept and pool.server_tls is kept.for_pool("app", "bob").server_tls


def test_app_without_resources_builds_them(tmp_path: Path, certs: Certs, jwt_keys: tuple[str, str]) -> None:
    config = load_config(good_config(tmp_path, certs, jwt_keys))
    app: Any = App(config)
    assert app.resources.client_tls.context is not None
    assert app.pools[("app", "bob")].server_tls is app.resources.for_pool("app", "bob").server_tls
