"""Tests of the test harness itself: the throwaway PostgreSQL, its roles and auth methods, the raw wire
client, the Pooler subprocess wrapper (driven by a fake interpreter so it is checked without the
pooler), and one smoke run of the real pooler through ``pooler_factory``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.support import wire
from tests.support.cluster import (
    DBNAME,
    MD5_PASSWORD,
    MD5_USER,
    SCRAM_PASSWORD,
    SCRAM_USER,
    SUPERUSER,
    PgCluster,
    deep_merge,
    pooler_config,
)
from tests.support.pooler import SRC, Pooler, free_port

CREDENTIALS = [(SCRAM_USER, SCRAM_PASSWORD), (MD5_USER, MD5_PASSWORD)]


def direct_dsn(pg: PgCluster, user: str, password: str) -> str:
    return f"host={pg.host} port={pg.port} user={user} password={password} dbname={DBNAME} sslmode=disable"


# ------------------------------------------------------------------------------------- the cluster


def test_cluster_is_running_as_configured(pg: PgCluster) -> None:
    assert pg.running()
    assert os.path.isdir(pg.sockdir)
    assert pg.psql("SHOW max_connections") == "300"
    assert pg.psql("SHOW fsync") == "off"
    assert pg.psql("SHOW listen_addresses") == "127.0.0.1"
    assert pg.psql("SHOW port") == str(pg.port)
    assert pg.psql(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{DBNAME}'") == SCRAM_USER


def test_psql_reports_sql_errors(pg: PgCluster) -> None:
    with pytest.raises(RuntimeError, match="no_such_table"):
        pg.psql("SELECT * FROM no_such_table")


def test_stored_passwords_use_the_requested_methods(pg: PgCluster) -> None:
    assert pg.stored_password(SCRAM_USER).startswith("SCRAM-SHA-256$4096:")
    md5 = "md5" + hashlib.md5((MD5_PASSWORD + MD5_USER).encode()).hexdigest()
    assert pg.stored_password(MD5_USER) == md5
    with pytest.raises(KeyError):
        pg.stored_password("no_such_role")


@pytest.mark.parametrize(("user", "password"), CREDENTIALS)
def test_psycopg_logs_in_directly(pg: PgCluster, user: str, password: str) -> None:
    with psycopg.connect(direct_dsn(pg, user, password)) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (user, DBNAME)
        # Both roles may create objects in the database (PostgreSQL 15 needs an explicit grant).
        conn.execute("CREATE TEMP TABLE t (x int)")
        conn.execute(f"CREATE TABLE harness_{user} (x int)")
        conn.rollback()


@pytest.mark.parametrize("user", [SCRAM_USER, MD5_USER])
def test_wrong_password_is_rejected(pg: PgCluster, user: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(direct_dsn(pg, user, "wrong"))


def test_restart_keeps_roles() -> None:
    basedir = tempfile.mkdtemp(prefix="pgdoorman-harness-")
    cluster = PgCluster(basedir, free_port())
    try:
        cluster.init()
        cluster.start()
        cluster.create_role("r1", "pw1", method="md5", superuser=True)
        cluster.restart()
        assert cluster.running()
        assert cluster.psql("SELECT rolsuper FROM pg_roles WHERE rolname = 'r1'") == "t"
        cluster.stop()
        assert not cluster.running()
        with pytest.raises(RuntimeError, match="already holds a cluster"):
            cluster.init()
    finally:
        cluster.stop("immediate")
        shutil.rmtree(basedir, ignore_errors=True)


# ----------------------------------------------------------------------------------- the wire client


@pytest.mark.parametrize(
    ("user", "password", "first_code"),
    [(SUPERUSER, None, 0), (SCRAM_USER, SCRAM_PASSWORD, 10), (MD5_USER, MD5_PASSWORD, 5)],
)
def test_wire_client_logs_in(pg: PgCluster, user: str, password: str | None, first_code: int) -> None:
    with wire.WireClient.connect(pg.host, pg.port, user, DBNAME, password) as c:
        assert c.auth_codes[0] == first_code
        assert c.auth_codes[-1] == 0
        assert c.transaction_status == "I"
        assert c.parameters["server_encoding"] == "UTF8"
        assert c.backend_key is not None
        assert c.query_rows("SELECT current_user, 1 + 1") == [[user, "2"]]
        c.terminate()


def test_wire_client_bad_password_raises_with_sqlstate(pg: PgCluster) -> None:
    with pytest.raises(wire.WireError) as info:
        wire.WireClient.connect(pg.host, pg.port, SCRAM_USER, DBNAME, "wrong")
    assert info.value.sqlstate == "28P01"


def test_wire_simple_query_messages(pg: PgCluster) -> None:
    with wire.WireClient.connect(pg.host, pg.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD) as c:
        msgs = c.query("SELECT 1 AS a, NULL AS b; SELECT 'x'")
        assert [t for t, _ in msgs] == ["T", "D", "C", "T", "D", "C", "Z"]
        assert wire.parse_row_description(msgs[0][1]) == ["a", "b"]
        assert wire.rows(msgs) == [["1", None], ["x"]]
        assert wire.command_tag(msgs[2][1]) == "SELECT 1"
        errs = c.query("SELECT * FROM no_such_table")
        assert [t for t, _ in errs] == ["E", "Z"]
        assert wire.parse_fields(errs[0][1])["C"] == "42P01"
        c.query("BEGIN")
        assert c.transaction_status == "T"
        c.query("SELECT 1/0")
        assert c.transaction_status == "E"
        c.query("ROLLBACK")
        assert c.transaction_status == "I"


def test_wire_extended_protocol(pg: PgCluster) -> None:
    with wire.WireClient.connect(pg.host, pg.port, MD5_USER, DBNAME, MD5_PASSWORD) as c:
        c.send(
            wire.parse("s1", "SELECT $1::int + 1 AS n, $2::text AS t", [23, 0]),
            wire.bind("", "s1", ["41", None]),
            wire.describe("P"),
            wire.execute(),
            wire.sync(),
        )
        msgs = c.read_until("Z")
        assert [t for t, _ in msgs] == ["1", "2", "T", "D", "C", "Z"]
        assert wire.parse_row_description(msgs[2][1]) == ["n", "t"]
        assert wire.rows(msgs) == [["42", None]]
        assert wire.command_tag(msgs[4][1]) == "SELECT 1"

        # Describe of the named statement, a Flush without Sync, then Close + Sync.
        c.send(wire.describe("S", "s1"), wire.flush())
        assert [c.read_message()[0] for _ in range(2)] == ["t", "T"]
        c.send(wire.close("S", "s1"), wire.sync())
        assert [t for t, _ in c.read_until("Z")] == ["3", "Z"]

        # After an error the server skips to Sync: the pipeline resynchronises on ReadyForQuery.
        c.send(wire.parse("", "SELEC 1"), wire.bind(), wire.execute(), wire.sync())
        msgs = c.read_until("Z")
        assert [t for t, _ in msgs] == ["E", "Z"]
        assert wire.parse_fields(msgs[0][1])["C"] == "42601"

        # Binary parameters and results, and a row limit on Execute leaving the portal suspended.
        c.send(
            wire.parse("", "SELECT generate_series(1, $1::int)"),
            wire.bind("", "", [(3).to_bytes(4, "big")], param_formats=[1], result_formats=[1]),
            wire.execute("", 2),
            wire.sync(),
        )
        msgs = c.read_until("Z")
        assert [t for t, _ in msgs] == ["1", "2", "D", "D", "s", "Z"]
        assert [wire.parse_data_row(b) for t, b in msgs if t == "D"] == [
            [(1).to_bytes(4, "big")],
            [(2).to_bytes(4, "big")],
        ]


def test_wire_builders_exact_bytes() -> None:
    assert wire.sync() == b"S\x00\x00\x00\x04"
    assert wire.query("SELECT 1") == b"Q\x00\x00\x00\x0dSELECT 1\x00"
    assert wire.ssl_request() == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
    assert wire.bind("", "", [None, b"ab"]) == (
        b"B\x00\x00\x00\x16" + b"\x00\x00" + b"\x00\x00" + b"\x00\x02" + b"\xff\xff\xff\xff"
        + b"\x00\x00\x00\x02ab" + b"\x00\x00"
    )
    assert wire.startup_message({"user": "u"}) == b"\x00\x00\x00\x10\x00\x03\x00\x00user\x00u\x00\x00"


def test_wire_ssl_request_is_answered(pg: PgCluster) -> None:
    # The test cluster has no TLS, so PostgreSQL answers 'N' and the startup continues in clear.
    c = wire.WireClient(pg.host, pg.port)
    with c:
        c.send(wire.ssl_request())
        assert c.read_bytes(1) == b"N"
        c.startup(SUPERUSER, DBNAME)
        assert c.query_rows("SELECT 1") == [["1"]]


# --------------------------------------------------------------------- Pooler, with a fake interpreter

# Stands in for `python` so the wrapper's mechanics are tested without the pooler: it answers
# `-m pgdoorman CONFIG -l debug` by listening on general.port from CONFIG, or fails on request.
FAKE_INTERPRETER = """\
#!{python}
import signal, socket, sys, time, yaml
assert sys.argv[1:3] == ["-m", "pgdoorman"] and sys.argv[4:] == ["-l", "debug"], sys.argv
cfg = yaml.safe_load(open(sys.argv[3]))
mode = cfg["general"].get("fake_mode", "listen")
print("fake pooler", mode, flush=True)
if mode == "exit":
    print("fatal: bad config", flush=True)
    sys.exit(3)
if mode == "hang":
    time.sleep(60)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
signal.signal(signal.SIGHUP, lambda *_: print("got SIGHUP", flush=True))
srv = socket.create_server((cfg["general"]["host"], cfg["general"]["port"]))
while True:
    srv.accept()[0].close()
"""


@pytest.fixture
def fake_python(tmp_path: Path) -> str:
    path = tmp_path / "fake-python"
    path.write_text(FAKE_INTERPRETER.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_pooler_wrapper_start_signal_stop(tmp_path: Path, fake_python: str) -> None:
    pooler = Pooler({"general": {}}, str(tmp_path), python=fake_python).start(timeout=10)
    try:
        assert pooler.running()
        assert pooler.port > 0 and pooler.host == "127.0.0.1"
        assert "fake pooler listen" in pooler.log()
        pooler.signal(signal.SIGHUP)
        assert pooler.wait_for_log("got SIGHUP", timeout=5)
        dsn = pooler.dsn("u", "it's", "db")
        assert dsn == f"host='127.0.0.1' port='{pooler.port}' user='u' password='it\\'s' dbname='db' sslmode='disable'"
    finally:
        code = pooler.stop()
    assert code == 7
    assert not pooler.running()


@pytest.mark.parametrize(("mode", "message"), [("exit", "exited with 3"), ("hang", "did not accept")])
def test_pooler_wrapper_reports_failures_with_log(tmp_path: Path, fake_python: str, mode: str, message: str) -> None:
    pooler = Pooler({"general": {"fake_mode": mode}}, str(tmp_path), python=fake_python)
    with pytest.raises(RuntimeError, match=message) as info:
        pooler.start(timeout=3)
    assert f"fake pooler {mode}" in str(info.value)
    assert not pooler.running()


def test_pooler_config_points_at_cluster(pg: PgCluster) -> None:
    cfg = pooler_config(pg, general={"port": 1234}, pool={"pool_mode": "session"}, pool_size=3)
    assert cfg["general"]["port"] == 1234 and cfg["general"]["admin_username"] == "admin"
    app = cfg["pools"][DBNAME]
    assert (app["server_host"], app["server_port"], app["pool_mode"]) == (pg.host, pg.port, "session")
    assert {u["username"]: u["password"] for u in app["users"]} == {
        SCRAM_USER: pg.stored_password(SCRAM_USER),
        MD5_USER: pg.stored_password(MD5_USER),
    }
    assert all(u["pool_size"] == 3 for u in app["users"])
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}, "d": [1]}) == {"a": {"b": 1, "c": 3}, "d": [1]}


# ----------------------------------------------------------------------------- the real pooler, once


@pytest.mark.parametrize(("user", "password"), CREDENTIALS)
def test_pooler_factory_runs_the_pooler(
    pooler_factory: Callable[..., Pooler], user: str, password: str
) -> None:
    pooler = pooler_factory()
    with psycopg.connect(pooler.dsn(user, password, DBNAME)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (user,)


# ------------------------------------------------------------------- concurrency (also run under 3.13t)


# Imports every pgdoorman module (except __main__, which would run the pooler) in a fresh interpreter
# and prints whether the GIL is on: what the pooler subprocess itself runs with.
POOLER_GIL_PROBE = """
import importlib, pkgutil, sys
import pgdoorman
for mod in pkgutil.walk_packages(pgdoorman.__path__, "pgdoorman."):
    if not mod.name.endswith("__main__"):
        try:
            importlib.import_module(mod.name)
        except ModuleNotFoundError as e:  # optional runtime extras (PyJWT, python-pam) may be absent
            if e.name and e.name.startswith("pgdoorman"):
                raise
print(sys._is_gil_enabled())
"""


@pytest.mark.concurrency
def test_free_threaded_interpreter_when_expected() -> None:
    if not os.environ.get("PGDOORMAN_EXPECT_FREE_THREADING"):
        pytest.skip("checked only in the free-threaded run (make test sets PGDOORMAN_EXPECT_FREE_THREADING=1)")
    assert sysconfig.get_config_var("Py_GIL_DISABLED") == 1
    # An extension module that does not declare free-threading support re-enables the GIL when
    # imported (with a RuntimeWarning naming it): first in this pytest process...
    assert not sys._is_gil_enabled(), "an imported extension re-enabled the GIL in the test process"  # type: ignore[attr-defined, unused-ignore]
    # ...then in the pooler's own process, which must stay free-threaded.
    out = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", POOLER_GIL_PROBE],
        capture_output=True, text=True, timeout=60, cwd=str(SRC),  # the package under test (PGDOORMAN_SRC)
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.concurrency
def test_concurrent_logins_from_threads(pg: PgCluster) -> None:
    errors: list[BaseException] = []
    results: list[list[list[str | None]]] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        user, password = CREDENTIALS[n % 2]
        try:
            for i in range(5):
                with wire.WireClient.connect(pg.host, pg.port, user, DBNAME, password) as c:
                    got = c.query_rows(f"SELECT {n * 100 + i}")
                    c.terminate()
                with psycopg.connect(direct_dsn(pg, user, password)) as conn:
                    assert conn.execute("SELECT %s::int", [n]).fetchone() == (n,)
                with lock:
                    results.append(got)
        except BaseException as e:  # collected and re-raised in the main thread
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(int(r[0][0] or "") for r in results) == sorted(n * 100 + i for n in range(8) for i in range(5))

