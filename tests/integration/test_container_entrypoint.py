"""What of the container image can run without a container engine: contrib/docker-entrypoint.sh (config
from the environment, or a mounted file) and the Dockerfile's HEALTHCHECK command, against the test
PostgreSQL, quickly and without root. The image itself is built and run by test_image_rootfs.py (debootstrap,
namespaces) and test_image_podman.py (podman); docs/install.md says what none of them exercises."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER, PgCluster
from tests.support.pooler import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "contrib" / "docker-entrypoint.sh"


def healthcheck_command() -> list[str]:
    """The Dockerfile's HEALTHCHECK CMD (exec form), as written there."""
    text = (ROOT / "Dockerfile").read_text()
    m = re.search(r'HEALTHCHECK [^\n]*\\\n\s*CMD \["python3", "-c", "(.*)"\]', text)
    assert m, "HEALTHCHECK CMD not found in the Dockerfile"
    return [sys.executable, "-c", m.group(1)]


@pytest.fixture
def bindir() -> Iterator[Path]:
    """A PATH directory with `pg_doorman` running this checkout (as the image's installed command does)."""
    d = Path(tempfile.mkdtemp(prefix="pgdoorman-entry-"))
    (d / "pg_doorman").write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m pgdoorman \"$@\"\n")
    os.chmod(d / "pg_doorman", 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def start(bindir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(ENTRYPOINT), "pg_doorman"], stdin=subprocess.DEVNULL,
                            stdout=open(bindir / "log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={"PATH": f"{bindir}:/usr/bin:/bin", "TMPDIR": str(bindir), **env})


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)  # the image's STOPSIGNAL
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def query(port: int) -> str:
    r = subprocess.run(["psql", "-X", "-A", "-t", "-c", "SELECT current_user, 40 + 2"],
                       env={**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": SCRAM_USER,
                            "PGPASSWORD": SCRAM_PASSWORD, "PGDATABASE": DBNAME, "PGSSLMODE": "disable"},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_config_from_environment_and_healthcheck(pg: PgCluster, bindir: Path) -> None:
    port = free_port()
    env = {"CONFIG_FILE": str(bindir / "absent.yaml"), "PG_DOORMAN_ADMIN_PASSWORD": 'se"cret',
           "PG_DOORMAN_PORT": str(port), "PG_DOORMAN_SERVER_HOST": "127.0.0.1",
           "PG_DOORMAN_SERVER_PORT": str(pg.port), "PG_DOORMAN_DATABASES": DBNAME,
           "PG_DOORMAN_USERS": f"{SCRAM_USER}={SCRAM_PASSWORD}", "PG_DOORMAN_POOL_SIZE": "3"}
    health = healthcheck_command()
    # Nothing listens yet: the health check fails.
    assert subprocess.run(health, capture_output=True, timeout=30).returncode != 0
    proc = start(bindir, env)
    try:
        wait_for(lambda: proc.poll() is not None or subprocess.run(health, capture_output=True).returncode == 0,
                 20, "the HEALTHCHECK to pass")
        assert proc.poll() is None, (bindir / "log").read_text()
        assert query(port) == f"{SCRAM_USER}|42"
        written = (bindir / "pg_doorman.yaml")
        assert oct(written.stat().st_mode & 0o777) == "0o600" and 'admin_password: "se\\"cret"' in written.read_text()
    finally:
        stop(proc)
    assert proc.returncode == 0, (bindir / "log").read_text()


def test_mounted_config_wins_and_missing_password_is_refused(pg: PgCluster, bindir: Path) -> None:
    port = free_port()
    cfg = bindir / "mounted.yaml"
    cfg.write_text(
        f'general:\n  host: "127.0.0.1"\n  port: {port}\n  admin_username: "admin"\n  admin_password: "x"\n'
        f'pools:\n  {DBNAME}:\n    server_host: "127.0.0.1"\n    server_port: {pg.port}\n'
        f'    users:\n      - username: "{SCRAM_USER}"\n        password: "{SCRAM_PASSWORD}"\n        pool_size: 2\n')
    proc = start(bindir, {"CONFIG_FILE": str(cfg)})
    try:
        wait_for(lambda: proc.poll() is not None or b"listening on" in (bindir / "log").read_bytes(), 20, "listening")
        assert proc.poll() is None, (bindir / "log").read_text()
        assert query(port) == f"{SCRAM_USER}|42"
    finally:
        stop(proc)
    r = subprocess.run([str(ENTRYPOINT), "pg_doorman"], capture_output=True, text=True, timeout=30,
                       env={"PATH": f"{bindir}:/usr/bin:/bin", "CONFIG_FILE": str(bindir / "absent.yaml")})
    assert r.returncode != 0 and "PG_DOORMAN_ADMIN_PASSWORD" in r.stderr
