"""The Dockerfile built and run by a real engine: Debian's podman, with the debootstrap'd root of
scripts/build_rootfs.py imported as its base image (`FROM debian:bookworm-slim` resolves to it: no
registry is reachable here). `podman build` uses buildah's chroot isolation and `podman run` runc with
cgroupfs (crun refuses this machine's hybrid cgroups). The container has its own network namespace
(--network none, as the image's fixed 6432/9127 may be taken on the host); the test PostgreSQL's Unix
socket is mounted in and psql enters the container's network namespace. HEALTHCHECK is run with
`podman healthcheck run`, stop with `podman stop` (the image's STOPSIGNAL)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER, PgCluster
from tests.support.pooler import wait_for

ROOT = Path(__file__).resolve().parents[2]
BASE = "docker.io/library/debian:bookworm-slim"
TAG = "localhost/pgdoorman:test"
pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="podman as root, debootstrap: needs root"),
]
# runc with cgroupfs; crun's default limits exceed what this machine lets a container set.
RUN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]


def sh(*cmd: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def image() -> str:
    subprocess.run(["bash", str(ROOT / "scripts" / "ensure_deps.sh"), "rootfs", "podman"], check=False)
    missing = [t for t in ("podman", "runc", "debootstrap") if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed and scripts/ensure_deps.sh could not install it")
    base = Path(sh(sys.executable, str(ROOT / "scripts" / "build_rootfs.py"), "--print-base").stdout.split()[-1])
    stamp = str(int((base / ".complete").stat().st_mtime))
    have = subprocess.run(["podman", "image", "inspect", "--format", '{{index .Labels "pgdoorman.base"}}', BASE],
                          capture_output=True, text=True)
    if have.returncode != 0 or have.stdout.strip() != stamp:  # imported once per debootstrap'd base
        tar = subprocess.Popen(["tar", "-C", str(base), "--exclude=./.complete", "--exclude=./.debootstrapped",
                                "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        r = subprocess.run(["podman", "import", "--change", f"LABEL pgdoorman.base={stamp}", "-", BASE],
                           stdin=tar.stdout, capture_output=True, text=True, timeout=300)
        assert tar.wait() == 0 and r.returncode == 0, r.stderr
    sh("podman", "build", "--pull=never", "--isolation=chroot", "--format", "docker", "--network=host",
       "-t", TAG, str(ROOT), timeout=840)
    return TAG


@pytest.fixture
def container(image: str, pg: PgCluster) -> Iterator[str]:
    name = f"pgdoorman-test-{uuid.uuid4().hex[:8]}"
    sh(*RUN, "run", "-d", "--name", name, "--network", "none", "--ulimit", "nofile=4096:4096",
       "--ulimit", "nproc=4096:4096", "-v", f"{pg.sockdir}:/mnt",
       "-e", "PG_DOORMAN_ADMIN_PASSWORD=podman-admin", "-e", "PG_DOORMAN_SERVER_HOST=/mnt",
       "-e", f"PG_DOORMAN_SERVER_PORT={pg.port}", "-e", f"PG_DOORMAN_DATABASES={DBNAME}",
       "-e", f"PG_DOORMAN_USERS={SCRAM_USER}={SCRAM_PASSWORD}", "-e", "PG_DOORMAN_POOL_SIZE=2", image)
    try:
        yield name
    finally:
        subprocess.run([*RUN, "rm", "-f", "-t", "5", name], capture_output=True, timeout=60)


def psql(name: str, sql: str, user: str = SCRAM_USER, password: str = SCRAM_PASSWORD,
         db: str = DBNAME) -> subprocess.CompletedProcess[str]:
    pid = sh("podman", "inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
    return subprocess.run(["nsenter", "-t", pid, "--net", "psql", "-X", "-A", "-t", "-c", sql],
                          env={**os.environ, "PGHOST": "127.0.0.1", "PGPORT": "6432", "PGUSER": user,
                               "PGPASSWORD": password, "PGDATABASE": db, "PGSSLMODE": "disable"},
                          capture_output=True, text=True, timeout=30)


def test_podman_build_run_healthcheck_stop(container: str) -> None:
    cfg = sh("podman", "image", "inspect", "--format",
             "{{.Config.User}} {{.Config.StopSignal}} {{json .Config.Entrypoint}}", TAG).stdout.split()
    assert cfg == ["pg_doorman", "SIGTERM", '["/usr/local/bin/docker-entrypoint.sh"]']

    def healthy() -> bool:
        return subprocess.run(["podman", "healthcheck", "run", container], capture_output=True,
                              timeout=60).returncode == 0

    wait_for(healthy, 60, "podman healthcheck run to pass")
    r = psql(container, "SELECT current_user, 40 + 2")
    assert r.returncode == 0 and r.stdout.strip() == f"{SCRAM_USER}|42", r.stderr
    assert psql(container, "SELECT 1", password="wrong").returncode != 0
    r = psql(container, "SHOW POOLS", user="admin", password="podman-admin", db="pgdoorman")
    assert r.returncode == 0 and DBNAME in r.stdout, r.stderr
    assert sh("podman", "exec", container, "id", "-un").stdout.strip() == "pg_doorman"
    sh(*RUN, "stop", "-t", "20", container)
    state = sh("podman", "inspect", "--format", "{{.State.ExitCode}} {{.State.Status}}", container).stdout.split()
    assert state == ["0", "exited"], sh("podman", "logs", container).stdout
