"""The Debian package, installed on this machine with dpkg (`make test-deb`, which `make test` runs in CI):
the commands, the packaged config (-t, as the pg_doorman user), the man pages (`man -l`), the unit, and
pg_doorman started in the foreground from /usr/bin against the test PostgreSQL, queried with psql.

Installing packages on the machine is intrusive, so this only runs with PGDOORMAN_TEST_DEB=1 (set by
`make test-deb`, after `make deb`), as root."""

from __future__ import annotations

import glob
import gzip
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER, PgCluster
from tests.support.pooler import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    os.environ.get("PGDOORMAN_TEST_DEB") != "1" or os.geteuid() != 0,
    reason="installs the .deb with dpkg: run through `make test-deb` as root",
)


def run(*cmd: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=300, **kw)  # type: ignore[call-overload]
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    debs = sorted(glob.glob(str(ROOT / "build" / "pg-doorman_*_all.deb")))
    assert debs, "no build/pg-doorman_*_all.deb: run `make deb` first"
    deb = Path(debs[-1])
    # apt resolves the dependencies (python3-yaml, adduser) from the configured archive.
    run("apt-get", "install", "-y", "-qq", "--no-install-recommends", str(deb),
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    yield deb
    if os.environ.get("PGDOORMAN_KEEP_DEB") != "1":
        run("dpkg", "--purge", "pg-doorman", check=False)


def as_pg_doorman(*cmd: str) -> list[str]:
    return ["setpriv", "--reuid=pg_doorman", "--regid=pg_doorman", "--init-groups", *cmd]


def test_files_and_user(installed: Path) -> None:
    r = run("/usr/bin/pg_doorman", "--version")
    assert r.stdout.startswith("pg_doorman (pgdoorman) ")
    assert run("/usr/bin/patroni_proxy", "--version").stdout.startswith("patroni_proxy (pgdoorman) ")
    assert run("getent", "passwd", "pg_doorman").stdout.split(":")[6].strip() in ("/usr/sbin/nologin", "/bin/false")
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "pg-doorman").stdout
    assert "/etc/pg_doorman/pg_doorman.yaml" in conffiles and "/etc/logrotate.d/pg-doorman" in conffiles
    st = os.stat("/etc/pg_doorman/admin.yaml")
    assert oct(st.st_mode & 0o777) == "0o640"
    # The packaged config: valid, and readable by the service's user.
    r = run(*as_pg_doorman("/usr/bin/pg_doorman", "-t", "/etc/pg_doorman/pg_doorman.yaml"))
    assert "test is successful" in r.stdout
    unit = Path("/lib/systemd/system/pg_doorman.service").read_text()
    for line in ("Type=notify", "User=pg_doorman", "ExecStart=/usr/bin/pg_doorman /etc/pg_doorman/pg_doorman.yaml",
                 "ExecReload=/bin/kill -SIGUSR2 $MAINPID"):
        assert line in unit.splitlines()
    if shutil.which("systemd-analyze"):
        v = run("systemd-analyze", "verify", "/lib/systemd/system/pg_doorman.service", check=False)
        assert "pg_doorman.service:" not in v.stderr, v.stderr
    if shutil.which("logrotate"):
        run("logrotate", "--debug", "/etc/logrotate.d/pg-doorman")


@pytest.mark.parametrize("page", ["/usr/share/man/man1/pg_doorman.1.gz", "/usr/share/man/man5/pg_doorman.yaml.5.gz",
                                  "/usr/share/man/man1/patroni_proxy.1.gz"])
def test_man_pages(installed: Path, page: str) -> None:
    r = run("man", "--warnings", "-l", page, env={**os.environ, "MANWIDTH": "100", "MANPAGER": "cat",
                                                  "PAGER": "cat"})
    assert r.stderr.strip() == "", r.stderr
    text = r.stdout
    if "pg_doorman.yaml" in page:
        # The settings table: every section and, e.g., settings of each.
        for word in ("GENERAL", "POOLS.<NAME>", "query_wait_timeout", "pool_size", "server_tls_mode"):
            assert word in text
    elif "pg_doorman.1" in page:
        for word in ("import-pgbouncer", "--userlist", "generate", "--test-config", "SIGUSR2"):
            assert word in text
    assert gzip.open(page).read()


def test_runs_in_the_foreground_against_postgres(installed: Path, pg: PgCluster) -> None:
    """/usr/bin/pg_doorman as the pg_doorman user, with a config that includes the packaged admin.yaml."""
    port = free_port()
    d = Path(tempfile.mkdtemp(prefix="pgdoorman-deb-"))
    os.chmod(d, 0o755)
    cfg = d / "pg_doorman.yaml"
    cfg.write_text(
        'include:\n  files: ["/etc/pg_doorman/admin.yaml"]\n'
        f'general:\n  host: "127.0.0.1"\n  port: {port}\n  admin_username: "admin"\n'
        f'pools:\n  {DBNAME}:\n    server_host: "127.0.0.1"\n    server_port: {pg.port}\n'
        f'    users:\n      - username: "{SCRAM_USER}"\n        password: "{SCRAM_PASSWORD}"\n        pool_size: 2\n'
    )
    os.chmod(cfg, 0o644)
    log = open(d / "log", "wb")
    proc = subprocess.Popen(as_pg_doorman("/usr/bin/pg_doorman", str(cfg)), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PG_DOORMAN_CI_SHUTDOWN_ONLY": "1"})
    try:
        wait_for(lambda: b"listening on" in (d / "log").read_bytes() or proc.poll() is not None, 20, "listening")
        assert proc.poll() is None, (d / "log").read_text()
        r = run("psql", "-X", "-A", "-t", "-c", "SELECT current_user, 40 + 2",
                env={**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": SCRAM_USER,
                     "PGPASSWORD": SCRAM_PASSWORD, "PGDATABASE": DBNAME, "PGSSLMODE": "disable"})
        assert r.stdout.strip() == f"{SCRAM_USER}|42"
        # It runs the packaged code, not this checkout.
        import_path = run("/usr/bin/python3", "-c", "import pgdoorman; print(pgdoorman.__file__)", cwd="/").stdout
        assert import_path.startswith("/usr/lib/python3/dist-packages/pgdoorman/")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        shutil.rmtree(d, ignore_errors=True)
