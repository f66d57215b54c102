"""`pg_doorman import-pgbouncer` on PgBouncer configurations (tests/unit/pgbouncer_configs/, README there):
each translation must pass `pg_doorman -t`, account for every source line in a comment, and carry the
settings it claims to translate; malformed input exits 1 naming file:line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pgdoorman.config import Config, load_config
from pgdoorman.import_pgbouncer import main, read_ini, read_userlist

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "pgbouncer_configs"
DEBIAN_INI = Path("/etc/pgbouncer/pgbouncer.ini")


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the fixture directory as the current directory (relative auth_file / %include names)."""
    d = tmp_path / "cfg"
    shutil.copytree(CONFIGS, d)
    monkeypatch.chdir(d)
    return d


def translate(work: Path, ini: str, *extra: str, expect_rc: int = 0) -> tuple[str, Config, str]:
    out = work / (Path(ini).stem + ".yaml")
    rc, err = _run_main([ini, "-o", str(out), *extra])
    assert rc == expect_rc, err
    text = out.read_text()
    # The check the issue asks for: the real `pg_doorman -t` on the written file.
    t = subprocess.run([sys.executable, "-m", "pgdoorman", "-t", str(out)], capture_output=True, text=True,
                       timeout=60)
    assert t.returncode == 0, t.stderr + t.stdout
    assert "test is successful" in t.stdout
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    # Comments wrapped over several lines are joined, so phrases can be looked for.
    return re.sub(r"\n *#  +", " ", text), load_config(str(out)), err


def _run_main(argv: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        rc = main(argv)
    return rc, buf.getvalue()


def assert_every_line_accounted(text: str, ini: str, userlist: str | None = None) -> None:
    """No setting is dropped silently: each source line's `file:line` is in the output."""
    parsed = read_ini(ini)
    missing = [f"{s.where} {s.key}" for settings in parsed.sections.values() for s in settings
               if not re.search(rf"(^|\s){re.escape(s.where)}\b", text)]
    if userlist:
        missing += [u.where for u in read_userlist(userlist) if u.where not in text]
    assert not missing, f"source lines not mentioned in the output: {missing}"


def pool_user(cfg: Config, pool: str, user: str) -> Any:
    return next(u for u in cfg.pools[pool].users if u.username == user)


# ------------------------------------------------------------------------------------------- configs
def test_debian_shipped_config(work: Path) -> None:
    """The example Debian's pgbouncer package installs (the copy, and the installed file when present)."""
    sources = [work / "upstream_etc_pgbouncer.ini"]
    if DEBIAN_INI.is_file():
        shutil.copy(DEBIAN_INI, work / "debian_installed.ini")
        sources.append(work / "debian_installed.ini")
    for src in sources:
        text, cfg, _ = translate(work, src.name, "--userlist", "userlist.txt")
        assert_every_line_accounted(text, src.name, "userlist.txt")
        g = cfg.general
        assert (g.host, g.port, g.unix_socket_dir) == ("127.0.0.1", 6432, "/var/run/postgresql")
        assert g.max_connections == 100 and g.server_lifetime == 3_600_000 and g.query_wait_timeout == 120_000
        assert g.server_tls_mode == "prefer" and g.tls_mode == "disable"
        assert not cfg.pools  # every [databases] entry is commented out in the example
        assert "logfile = /var/log/postgresql/pgbouncer.log: not translated" in text


def test_upstream_test_ini(work: Path) -> None:
    text, cfg, _ = translate(work, "upstream_test.ini")
    assert_every_line_accounted(text, "upstream_test.ini", "userlist.txt")
    assert set(cfg.pools) == {"p0", "p1", "p2"}
    p0 = cfg.pools["p0"]
    assert (p0.server_port, p0.server_database, p0.pool_mode) == (6666, "p0", "transaction")  # statement
    assert "statement mode does not exist in pgdoorman" in text
    app = pool_user(cfg, "p0", "app")
    assert app.pool_size == 2 and app.server_username == "bouncer" and app.server_password == "bouncer-pw"
    assert pool_user(cfg, "p1", "app").pool_size == 5
    assert cfg.general.tcp_keepalives_idle == 0
    assert cfg.general.server_lifetime == 120_000 and cfg.general.idle_timeout == 60_000
    assert cfg.general.pg_hba is not None  # auth_type = trust
    assert "query_timeout = 20: approximated: a query past it is cancelled" in text
    assert cfg.general.query_timeout == 20_000


def test_upstream_small_ini(work: Path) -> None:
    # Its auth_file (etc/userlist.txt) is not there: --userlist stands in.
    text, cfg, _ = translate(work, "upstream_small.ini", "--userlist", "userlist.txt")
    assert_every_line_accounted(text, "upstream_small.ini", "userlist.txt")
    assert len(cfg.pools) == 8
    forced = pool_user(cfg, "forcedb", "reporting")
    assert (forced.server_username, forced.server_password) == ("baz", "foo")
    assert cfg.pools["forcedb"].server_port == 300
    assert 'startup_parameters: {client_encoding: "UNICODE", DateStyle: "ISO"}' in text
    assert pool_user(cfg, "marko", "app").pool_size == 5
    assert "password=foo" not in text  # secrets from connection strings are not echoed in comments


def test_production_transaction(work: Path) -> None:
    text, cfg, err = translate(work, "production_transaction.ini")
    assert_every_line_accounted(text, "production_transaction.ini", "userlist.txt")
    g = cfg.general
    assert (g.host, g.port, g.unix_socket_dir) == ("0.0.0.0", 6432, None)
    assert (g.admin_username, g.admin_password) == ("pgb_admin", "admin-pw")
    assert g.max_connections == 5000 and g.backlog == 4096
    assert (g.server_lifetime, g.idle_timeout, g.connect_timeout, g.query_wait_timeout) == (
        1_800_000, 300_000, 5000, 30_000)
    assert (g.tcp_keepalives_idle, g.tcp_keepalives_interval, g.tcp_keepalives_count, g.tcp_user_timeout) == (
        30, 10, 3, 3)
    assert g.prepared_statements and g.server_prepared_statements_cache_size == 100
    assert not g.log_client_connections and not g.log_client_disconnections
    assert g.daemon_pid_file == "/run/pgbouncer/pgbouncer.pid"
    app = cfg.pools["app"]
    assert (app.server_host, app.server_port, app.server_database, app.pool_mode) == (
        "10.0.0.5", 5433, "app_prod", "transaction")
    assert app.application_name == "app-via-bouncer" and app.cleanup_server_connections
    u = pool_user(cfg, "app", "app")
    assert (u.pool_size, u.min_pool_size, u.password) == (40, 5, "app-secret")
    assert pool_user(cfg, "app", "reporting").password.startswith("md5")
    ro = cfg.pools["app_ro"]
    assert ro.server_host == "10.0.0.6" and ro.pool_mode == "session"
    assert 'startup_parameters: {client_encoding: "UTF8", DateStyle: "ISO, MDY", TimeZone: "UTC"}' in text
    batch = text.split("  batch:\n", 1)[1]
    assert "max_db_connections: 10\n" in batch and "reserve_pool_size: 2\n" in batch
    assert (cfg.pools["batch"].max_db_connections, cfg.pools["batch"].reserve_pool_size) == (10, 2)
    assert pool_user(cfg, "batch", "app").pool_size == 1 and pool_user(cfg, "batch", "app").min_pool_size == 1
    assert "ops get no console access" in text
    # stats_users: /metrics on loopback, which needs no login (no read-only console users in pgdoorman).
    assert "stats_users = monitoring: approximated" in text and "monitoring cannot log in to it" in text
    assert (cfg.web.enabled, cfg.web.host, cfg.web.port) == (True, "127.0.0.1", 9127)
    assert "ignore_startup_parameters = extra_float_digits, search_path: not needed" in text
    assert "max_db_connections" not in err  # the coordinator is implemented: -t does not warn about it


def test_scram_only(work: Path) -> None:
    text, cfg, _ = translate(work, "scram_only.ini")
    assert_every_line_accounted(text, "scram_only.ini", "userlist_scram.txt")
    g = cfg.general
    assert g.host == "127.0.0.1" and "::1 not bound" in text
    assert g.pg_hba is not None and "scram-sha-256" in text
    assert g.admin_password.startswith("SCRAM-SHA-256$")
    assert not g.prepared_statements and g.server_tls_mode == "disable"
    app = cfg.pools["app"]
    assert app.server_host == "/var/run/postgresql"
    assert pool_user(cfg, "app", "app").password.startswith("SCRAM-SHA-256$4096:")


def test_hba_file(work: Path) -> None:
    text, cfg, _ = translate(work, "hba.ini")
    assert_every_line_accounted(text, "hba.ini", "userlist.txt")
    rules = [ln for ln in text.split("pg_hba: |\n", 1)[1].split("\n\n", 1)[0].splitlines()]
    assert [r.split() for r in rules] == [
        ["host", "all", "pgb_admin", "127.0.0.1/32", "scram-sha-256"],
        ["host", "all", "pgb_admin", "127.0.0.1/32", "md5"],
        ["host", "app", "all", "10.0.0.0/8", "scram-sha-256"],
        ["hostnossl", "all", "reporting", "192.168.0.0/16", "scram-sha-256"],
        ["hostnossl", "all", "reporting", "192.168.0.0/16", "md5"],
        ["host", "all", "all", "0.0.0.0/0", "reject"],
    ]
    for n in (2, 5, 7):
        assert f"hba.conf:{n} " in text  # peer, cert and @file lines are named as not translated
    assert cfg.general.pg_hba is not None


def test_auth_query(work: Path) -> None:
    text, cfg, err = translate(work, "auth_query.ini")
    assert_every_line_accounted(text, "auth_query.ini", "userlist.txt")
    app, other = cfg.pools["app"].auth_query, cfg.pools["other"].auth_query
    # The source's query already names its passwd column: kept as written.
    assert app.query == "SELECT usename, passwd FROM pgbouncer.get_auth($1)"
    assert (app.user, app.password, app.database, app.pool_size) == ("auth_lookup", "lookup-pw", "app", 20)
    assert (other.user, other.password, other.database) == ("bouncer", "bouncer-pw", "postgres")
    assert app.server_user is None and other.server_user is None  # passthrough, as PgBouncer
    assert cfg.pools["app"].users
    assert "not implemented" not in text and "warning" not in err
    assert "users not listed below are looked up with auth_query" in text


def test_auth_query_default_query_wrapped_and_forced_user(work: Path) -> None:
    """PgBouncer's default query returns (name, secret) by position: wrapped so pgdoorman finds passwd; a
    forced user= with password= makes looked-up users share its pool (dedicated mode)."""
    (work / "aq2.ini").write_text(
        "[databases]\nshop = host=127.0.0.1 dbname=shop user=shop_owner password=owner-pw min_pool_size=2\n"
        "[pgbouncer]\nauth_type = md5\nauth_file = userlist.txt\nauth_user = auth_lookup\n"
        "auth_query = SELECT rolname, rolpassword FROM pg_authid WHERE rolname = $1;\n"
        "default_pool_size = 5\n")
    text, cfg, err = translate(work, "aq2.ini")
    assert_every_line_accounted(text, "aq2.ini", "userlist.txt")
    aq = cfg.pools["shop"].auth_query
    assert aq.query == ("SELECT usename, passwd FROM (SELECT rolname, rolpassword FROM pg_authid WHERE "
                        "rolname = $1) AS pgbouncer_auth_query(usename, passwd)")
    assert "wrapped so its two columns are named usename, passwd" in text
    assert (aq.pool_size, aq.min_pool_size, aq.server_user, aq.server_password) == (5, 2, "shop_owner", "owner-pw")
    assert aq.database is None and "auth_dbname not set" in text
    # Without auth_query in the source: PgBouncer's default, wrapped the same way.
    (work / "aq3.ini").write_text(
        "[databases]\nshop = host=127.0.0.1\n[pgbouncer]\nauth_file = userlist.txt\nauth_user = bouncer\n")
    text, cfg, _ = translate(work, "aq3.ini")
    assert "PgBouncer's default auth_query" in text
    assert "FROM pg_authid WHERE rolname=$1 AND rolcanlogin) AS pgbouncer_auth_query" in \
        cfg.pools["shop"].auth_query.query


def test_fallback_database_pools(work: Path) -> None:
    """`*` with --fallback-databases: one pool per name from the entry's connection string; a listed
    database keeps its own entry."""
    text, cfg, _ = translate(work, "fallback_users.ini", "--fallback-databases", "sales, hr,app")
    assert_every_line_accounted(text, "fallback_users.ini", "userlist.txt")
    assert set(cfg.pools) == {"app", "sales", "hr"}
    for name in ("sales", "hr"):
        p = cfg.pools[name]
        assert (p.server_host, p.server_port, p.server_database or name, p.pool_mode) == (
            "127.0.0.1", 5432, name, "transaction")
        assert {u.username for u in p.users} == {u.username for u in cfg.pools["app"].users}
        assert pool_user(cfg, name, "app").pool_size == 7  # [users] applies to them too
        assert f"fallback_users.ini:4 [databases] * (for {name}): port=5432: translated" in text
    assert "--fallback-databases app: already a [databases] entry" in text
    assert "translated for the databases given with --fallback-databases (sales, hr)" in text
    # A dbname= in the `*` entry sends every one of them to that database, as in PgBouncer.
    (work / "star.ini").write_text("[databases]\n* = host=db1 dbname=common\n[pgbouncer]\n"
                                   "auth_file = userlist.txt\n")
    _, cfg, _ = translate(work, "star.ini", "--fallback-databases", "x")
    assert cfg.pools["x"].server_database == "common" and cfg.pools["x"].server_host == "db1"
    # Names but no `*` entry: said, nothing made.
    (work / "nostar.ini").write_text("[databases]\na = host=db1\n[pgbouncer]\nauth_file = userlist.txt\n")
    text, cfg, _ = translate(work, "nostar.ini", "--fallback-databases", "x")
    assert set(cfg.pools) == {"a"} and "not used: the source has no `*` database entry" in text


def test_tls(work: Path) -> None:
    from tests.support.certs import make_certs

    certs = make_certs(work / "pki", "app")
    ini = (work / "tls.ini").read_text()
    mapping = {"server.crt": certs.server_cert, "server.key": certs.server_key, "ca.crt": certs.ca,
               "client.crt": certs.client_cert, "client.key": certs.client_key}
    for name, path in mapping.items():
        ini = ini.replace(f"@DIR@/{name}", str(path))
    (work / "tls.ini").write_text(ini)
    text, cfg, _ = translate(work, "tls.ini")
    assert_every_line_accounted(text, "tls.ini", "userlist_scram.txt")
    g = cfg.general
    assert g.tls_mode == "verify-full" and "verify-ca" in text
    assert (g.tls_certificate, g.tls_private_key, g.tls_ca_cert) == (
        certs.server_cert, certs.server_key, certs.ca)
    assert g.server_tls_mode == "verify-full" and g.server_tls_ca_cert == certs.ca
    assert (g.server_tls_certificate, g.server_tls_private_key) == (certs.client_cert, certs.client_key)
    assert "client_tls_ciphers = fast: not translated" in text


def test_tls_files_missing_is_written_but_fails(work: Path) -> None:
    rc, err = _run_main(["tls.ini", "-o", "tls.yaml"])
    assert rc == 1 and "does not pass `pg_doorman -t`" in err and "@DIR@/server.crt" in err
    assert (work / "tls.yaml").is_file()


def test_include(work: Path) -> None:
    text, cfg, _ = translate(work, "include_main.ini")
    for f in ("include_main.ini", "include_databases.ini", "include_tuning.ini"):
        assert_every_line_accounted(text, f) if f == "include_main.ini" else None
    assert "include_databases.ini:2" in text and "include_tuning.ini:4" in text
    assert set(cfg.pools) == {"app", "archive"}
    assert pool_user(cfg, "archive", "app").pool_size == 3 and pool_user(cfg, "app", "app").pool_size == 12
    assert cfg.pools["app"].pool_mode == "transaction"
    assert cfg.general.query_wait_timeout == 7 * 86_400_000 and cfg.general.connect_timeout == 2500


def test_fallback_users_syslog(work: Path) -> None:
    text, cfg, _ = translate(work, "fallback_users.ini")
    assert_every_line_accounted(text, "fallback_users.ini", "userlist.txt")
    assert set(cfg.pools) == {"app"}
    assert "* = host=127.0.0.1 port=5432: not translated: pgdoorman has no fallback" in text
    assert "Run the import again with --fallback-databases" in text
    assert pool_user(cfg, "app", "reporting").pool_mode == "session"
    app = pool_user(cfg, "app", "app")
    assert (app.pool_size, app.pool_mode) == (7, "transaction")
    assert cfg.pools["app"].pool_mode == "transaction"
    assert not cfg.pools["app"].cleanup_server_connections
    assert cfg.general.syslog_prog_name == "bouncer-eu" and cfg.general.unix_socket_mode == 0o770
    assert "ghost: not translated: the user is not in the userlist" in text
    assert "some_future_setting = 42: not translated" in text and "[peers]" not in text or "peering" in text


def test_trust_any(work: Path) -> None:
    text, cfg, _ = translate(work, "trust_any.ini")
    assert_every_line_accounted(text, "trust_any.ini", "userlist.txt")
    assert cfg.general.pg_hba is not None and "trust" in text and "approximated: like trust" in text
    assert pool_user(cfg, "app", "app").server_username == "bouncer"
    assert pool_user(cfg, "legacy", "app").server_username is None
    assert "password without user: not translated" in text and "forgotten-user" not in text


def test_stdout_and_quoted_userlist_names(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["production_transaction.ini"]) == 0
    out = capsys.readouterr().out
    assert 'username: "quote\\"d"' in out and 'password: "pw with \\"quotes\\""' in out


# ------------------------------------------------------------------------------------------- malformed input
@pytest.mark.parametrize(
    "name, content, where, why",
    [
        ("bad.ini", "[pgbouncer]\nlisten_port 6432\n", "bad.ini:2", "expected `key = value`"),
        ("bad.ini", "listen_port = 6432\n", "bad.ini:1", "outside any [section]"),
        ("bad.ini", "[databases]\napp = host='unterminated\n", "bad.ini:2", "unterminated quoted value"),
        ("bad.ini", "[databases]\napp = host\n", "bad.ini:2", "expected key=value"),
        ("bad.ini", "[pgbouncer\n", "bad.ini:1", "malformed section header"),
        ("bad.ini", "[pgbouncer]\n%include nowhere.ini\n", "bad.ini:2", "no such file"),
        ("bad.ini", "[pgbouncer]\nlisten_port = many\n", "bad.ini:2", "expected an integer"),
        ("bad.ini", "[pgbouncer]\nserver_lifetime = 1 fortnight\n", "bad.ini:2", "expected a time"),
        ("bad.ini", "[pgbouncer]\nauth_type = kerberos\n", "bad.ini:2", "unknown method"),
        ("bad.ini", "[databases]\napp = pool_mode=sometimes\n", "bad.ini:2", "unknown mode"),
    ],
)
def test_malformed_ini(work: Path, name: str, content: str, where: str, why: str) -> None:
    (work / name).write_text(content)
    rc, err = _run_main([name, "--userlist", "userlist.txt", "-o", "x.yaml"])
    assert rc == 1
    assert f"{where}: " in err and why in err, err
    assert not (work / "x.yaml").exists()


@pytest.mark.parametrize("content, line", [('"app" "pw"\napp pw\n', 2), ('"app" "unterminated\n', 1),
                                           ('"app"\n', 1)])
def test_malformed_userlist(work: Path, content: str, line: int) -> None:
    (work / "bad_users.txt").write_text(content)
    rc, err = _run_main(["upstream_small.ini", "--userlist", "bad_users.txt"])
    assert rc == 1 and f"bad_users.txt:{line}: " in err, err


def test_cli_entry_point(work: Path) -> None:
    """Through the `pg_doorman` command line (as installed), with a nonzero exit on a bad file."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
    ok = subprocess.run([sys.executable, "-m", "pgdoorman", "import-pgbouncer", "hba.ini", "-o", "h.yaml"],
                        capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    (work / "bad.ini").write_text("[pgbouncer]\nnonsense\n")
    bad = subprocess.run([sys.executable, "-m", "pgdoorman", "import-pgbouncer", "bad.ini"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1 and "bad.ini:2:" in bad.stderr
