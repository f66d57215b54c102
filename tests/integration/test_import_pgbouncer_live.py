"""import-pgbouncer end to end: PgBouncer (Debian's package) runs with a source config, then pgdoorman with
its translation on the same port and the same PostgreSQL; the same clients (psql and psycopg) log in with
the same credentials and get the same answers through both."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.support.cluster import (
    DBNAME,
    MD5_PASSWORD,
    MD5_USER,
    SCRAM_PASSWORD,
    SCRAM_USER,
    PgCluster,
)
from tests.support.pooler import Pooler, free_port

ROOT = Path(__file__).resolve().parents[2]


def _pgbouncer() -> str:
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(exe):
        subprocess.run(["bash", str(ROOT / "scripts" / "ensure_deps.sh"), "pgbouncer"], check=False)
    if not os.path.exists(exe):
        pytest.skip("pgbouncer is not installed (scripts/ensure_deps.sh pgbouncer)")
    return exe


@pytest.fixture
def workdir() -> Iterator[Path]:
    # PgBouncer runs as the postgres OS user when we are root: not pytest's 0700 tmp_path.
    d = Path(tempfile.mkdtemp(prefix="pgdoorman-import-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen on {port}:\n{log.read_text(errors='replace')[-3000:]}")


def run_pgbouncer(ini: Path, port: int, check: Callable[[], Any]) -> Any:
    d = ini.parent
    log = d / "pgbouncer.out"
    cmd = [_pgbouncer(), str(ini)]
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        for p in [d, *d.iterdir()]:
            os.chown(p, pw.pw_uid, pw.pw_gid)
        cmd = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *cmd]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=d,
                                start_new_session=True)
    try:
        _wait_port(port, proc, log)
        return check()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run_pgdoorman(ini: Path, port: int, check: Callable[[], Any], extra: list[str] | None = None,
                  adjust: Callable[[dict[str, Any]], None] | None = None) -> Any:
    out = ini.with_suffix(".yaml")
    r = subprocess.run([sys.executable, "-m", "pgdoorman", "import-pgbouncer", str(ini), "-o", str(out),
                        *(extra or [])], capture_output=True, text=True, cwd=ini.parent, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})  # this checkout, whatever the cwd
    assert r.returncode == 0, r.stderr
    t = subprocess.run([sys.executable, "-m", "pgdoorman", "-t", str(out)], capture_output=True, text=True,
                       timeout=60)
    assert t.returncode == 0, t.stderr
    config = yaml.safe_load(out.read_text())
    assert config["general"]["port"] == port
    if adjust is not None:
        adjust(config)
    work = ini.parent / "pgdoorman"
    work.mkdir(exist_ok=True)
    with Pooler(config, str(work)) as pooler:
        try:
            return check()
        except BaseException:
            print(pooler.log_tail())
            raise


QUERIES = [
    "SELECT current_user, current_database(), 41 + 1",
    "SELECT count(*) FROM generate_series(1, 1000)",
]


def psql(port: int, user: str, password: str, dbname: str, host: str = "127.0.0.1") -> list[str]:
    out = []
    for q in QUERIES:
        r = subprocess.run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", q],
                           env={**os.environ, "PGHOST": host, "PGPORT": str(port), "PGUSER": user,
                                "PGPASSWORD": password, "PGDATABASE": dbname, "PGSSLMODE": "disable"},
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"psql as {user} to {dbname} on {host}:{port}: {r.stderr}"
        out.append(r.stdout.strip())
    return out


def with_psycopg(port: int, user: str, password: str, dbname: str, prepare: bool = False) -> list[Any]:
    rows: list[Any] = []
    with psycopg.connect(host="127.0.0.1", port=port, user=user, password=password, dbname=dbname,
                         sslmode="disable", prepare_threshold=0 if prepare else None, autocommit=False) as conn:
        with conn.cursor() as cur:
            for q in QUERIES:
                cur.execute(q)
                rows.append(cur.fetchall())
            cur.execute("SELECT %s::int * 2", (21,))
            rows.append(cur.fetchall())
        conn.commit()
    return rows


def wrong_password_refused(port: int, user: str, dbname: str) -> bool:
    try:
        psycopg.connect(host="127.0.0.1", port=port, user=user, password="wrong", dbname=dbname,
                        sslmode="disable", connect_timeout=10).close()
    except psycopg.OperationalError:
        return True
    return False


def both(ini: Path, port: int, check: Callable[[], Any], extra: list[str] | None = None) -> Any:
    via_pgbouncer = run_pgbouncer(ini, port, check)
    via_pgdoorman = run_pgdoorman(ini, port, check, extra)
    assert via_pgbouncer == via_pgdoorman
    return via_pgdoorman


def test_md5_transaction_passthrough(pg: PgCluster, workdir: Path) -> None:
    """auth_type md5, transaction pooling, userlist holding what pg_authid holds (md5 hash and SCRAM
    verifier): clients use their own PostgreSQL passwords through both poolers."""
    port = free_port()
    (workdir / "userlist.txt").write_text(
        f'"{MD5_USER}" "{pg.stored_password(MD5_USER)}"\n"{SCRAM_USER}" "{pg.stored_password(SCRAM_USER)}"\n'
        '"pgb_admin" "admin-pw"\n')
    ini = workdir / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"{DBNAME} = host=127.0.0.1 port={pg.port} dbname={DBNAME}\n"
        f"appalias = host=127.0.0.1 port={pg.port} dbname={DBNAME} pool_size=2\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = md5\nauth_file = userlist.txt\nadmin_users = pgb_admin\n"
        "pool_mode = transaction\ndefault_pool_size = 4\nmax_client_conn = 50\n"
        "server_reset_query = DISCARD ALL\nignore_startup_parameters = extra_float_digits\n"
        f"logfile = {workdir / 'pgbouncer.log'}\n"
    )

    def check() -> Any:
        return (
            psql(port, MD5_USER, MD5_PASSWORD, DBNAME),
            psql(port, SCRAM_USER, SCRAM_PASSWORD, "appalias"),
            with_psycopg(port, MD5_USER, MD5_PASSWORD, "appalias"),
            with_psycopg(port, SCRAM_USER, SCRAM_PASSWORD, DBNAME),
            wrong_password_refused(port, MD5_USER, DBNAME),
            # The admin console, as admin_users' user with its userlist password.
            psql_admin(port, "pgb_admin", "admin-pw"),
        )

    result = both(ini, port, check)
    assert result[0][0] == f"{MD5_USER}|{DBNAME}|42" and result[-2:] == (True, True)


def psql_admin(port: int, user: str, password: str, show: str = "POOLS") -> bool:
    r = subprocess.run(["psql", "-X", "-A", "-t", "-c", f"SHOW {show}"],
                       env={**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": user,
                            "PGPASSWORD": password, "PGDATABASE": "pgbouncer", "PGSSLMODE": "disable"},
                       capture_output=True, text=True, timeout=30)
    return r.returncode == 0 and DBNAME in r.stdout


def test_scram_session_with_unix_socket(pg: PgCluster, workdir: Path) -> None:
    """auth_type scram-sha-256, session pooling, a Unix socket listener next to TCP; psycopg with
    server-side prepared statements."""
    port = free_port()
    sock = workdir / "sock"
    sock.mkdir()
    os.chmod(sock, 0o777)
    (workdir / "users.txt").write_text(f'"{SCRAM_USER}" "{pg.stored_password(SCRAM_USER)}"\n')
    ini = workdir / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"{DBNAME} = host=127.0.0.1 port={pg.port}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir = {sock}\n"
        "auth_type = scram-sha-256\nauth_file = users.txt\n"
        "pool_mode = session\ndefault_pool_size = 3\nmin_pool_size = 1\n"
        "server_lifetime = 600\nserver_idle_timeout = 60\nquery_wait_timeout = 20\n"
        f"logfile = {workdir / 'pgbouncer.log'}\n"
    )

    def check() -> Any:
        return (
            psql(port, SCRAM_USER, SCRAM_PASSWORD, DBNAME),
            psql(port, SCRAM_USER, SCRAM_PASSWORD, DBNAME, host=str(sock)),
            with_psycopg(port, SCRAM_USER, SCRAM_PASSWORD, DBNAME, prepare=True),
            wrong_password_refused(port, SCRAM_USER, DBNAME),
        )

    result = both(ini, port, check)
    assert result[1][0] == f"{SCRAM_USER}|{DBNAME}|42" and result[-1] is True


def test_forced_user_and_hba_file(pg: PgCluster, workdir: Path) -> None:
    """A database entry with a forced server user and password; clients are application users of the
    userlist only (plain-text passwords), let in by an auth_hba_file rule; md5 for one network, reject
    for the rest."""
    port = free_port()
    (workdir / "userlist.txt").write_text('"client_a" "a-pw"\n"client_b" "b-pw"\n')
    (workdir / "hba.conf").write_text("host all all 127.0.0.1/32 md5\nhost all all 0.0.0.0/0 reject\n")
    ini = workdir / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"shared = host=127.0.0.1 port={pg.port} dbname={DBNAME} user={SCRAM_USER} password={SCRAM_PASSWORD}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = hba\nauth_hba_file = {workdir / 'hba.conf'}\nauth_file = {workdir / 'userlist.txt'}\n"
        "pool_mode = transaction\ndefault_pool_size = 2\n"
        f"logfile = {workdir / 'pgbouncer.log'}\n"
    )

    def check() -> Any:
        return (
            psql(port, "client_a", "a-pw", "shared"),  # current_user is the forced app_scram
            with_psycopg(port, "client_b", "b-pw", "shared"),
            wrong_password_refused(port, "client_a", "shared"),
        )

    result = run_pgbouncer(ini, port, check)
    assert result[0][0] == f"{SCRAM_USER}|{DBNAME}|42"
    assert result == run_pgdoorman(ini, port, check)
    assert result[-1] is True


LOOKUP = """
CREATE OR REPLACE FUNCTION public.pgb_lookup(uname text, OUT u name, OUT p text) RETURNS SETOF record
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$ SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = uname $$;
REVOKE ALL ON FUNCTION public.pgb_lookup(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.pgb_lookup(text) TO pgb_lookup;
"""


def test_auth_query_fallback_database_and_stats_users(pg: PgCluster, workdir: Path) -> None:
    """auth_user/auth_query: clients not in the userlist are looked up in PostgreSQL (a SECURITY DEFINER
    function whose columns are not named passwd: pgdoorman's translation wraps the query); the `*` entry
    serves `postgres`, which is not listed (a pool through --fallback-databases postgres); stats_users
    read SHOW POOLS on PgBouncer's console and /metrics on pgdoorman's."""
    port = free_port()
    pg.create_role("pgb_lookup", "lookup-pw", "scram-sha-256")
    try:
        for db in (DBNAME, "postgres"):  # PgBouncer 1.18 runs the query in the client's database
            pg.psql(LOOKUP, dbname=db)
        (workdir / "userlist.txt").write_text('"pgb_lookup" "lookup-pw"\n"pgb_stats" "stats-pw"\n'
                                              '"pgb_admin" "admin-pw"\n')
        ini = workdir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"{DBNAME} = host=127.0.0.1 port={pg.port}\n"
            f"* = host=127.0.0.1 port={pg.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            "auth_type = md5\nauth_file = userlist.txt\nauth_user = pgb_lookup\n"
            "auth_query = SELECT * FROM public.pgb_lookup($1)\n"
            "admin_users = pgb_admin\nstats_users = pgb_stats\n"
            "pool_mode = transaction\ndefault_pool_size = 2\n"
            f"logfile = {workdir / 'pgbouncer.log'}\n"
        )

        def check() -> Any:
            return (
                psql(port, MD5_USER, MD5_PASSWORD, DBNAME),
                psql(port, SCRAM_USER, SCRAM_PASSWORD, "postgres"),
                with_psycopg(port, SCRAM_USER, SCRAM_PASSWORD, DBNAME),
                with_psycopg(port, MD5_USER, MD5_PASSWORD, "postgres"),
                wrong_password_refused(port, SCRAM_USER, DBNAME),
                wrong_password_refused(port, "nobody_here", DBNAME),
            )

        web_port = free_port()

        def metrics() -> str:
            import urllib.request

            check()
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=10) as r:
                return str(r.read().decode())

        def on_port(config: dict[str, Any]) -> None:
            assert config["web"] == {"enabled": True, "host": "127.0.0.1", "port": 9127}
            config["web"]["port"] = web_port  # 9127 may be taken on a shared machine

        result = both(ini, port, check, ["--fallback-databases", "postgres"])
        assert result[0][0] == f"{MD5_USER}|{DBNAME}|42" and result[1][0] == f"{SCRAM_USER}|postgres|42"
        assert result[-2:] == (True, True)
        # stats_users: PgBouncer's console as the stats user; pgdoorman's /metrics (no login).
        assert run_pgbouncer(ini, port, lambda: psql_admin(port, "pgb_stats", "stats-pw", "DATABASES"))
        body = run_pgdoorman(ini, port, metrics, ["--fallback-databases", "postgres"], adjust=on_port)
        assert f'database="{DBNAME}"' in body and 'database="postgres"' in body
    finally:
        for db in (DBNAME, "postgres"):
            pg.psql("DROP FUNCTION IF EXISTS public.pgb_lookup(text);", dbname=db)
        pg.psql("DROP ROLE IF EXISTS pgb_lookup;")
