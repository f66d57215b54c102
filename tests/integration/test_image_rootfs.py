"""The container image, built without a container engine: scripts/build_rootfs.py carries out the
Dockerfile on a debootstrap'd Debian root (cached under /var/cache/pgdoorman/rootfs), and these tests run
it as an engine would: the image's root read-only under an overlay with a writable layer, its own network,
mount and PID namespaces (pg_doorman is PID 1 there, listening on the image's 6432/9127), its USER, Env,
WorkingDir, Entrypoint and Cmd from the image config, a config from the environment or a mounted
directory; the test PostgreSQL is reached through its Unix socket, bind-mounted in. The HEALTHCHECK runs
as written in the image config, inside the same namespaces. What this does not exercise: an engine's own
build and run (docs/install.md, "Container image")."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER, PgCluster
from tests.support.pooler import wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="builds and enters a root filesystem: needs root"),
]


@dataclass
class Image:
    root: Path
    config: dict[str, Any]


@pytest.fixture(scope="module")
def image() -> Image:
    subprocess.run(["bash", str(ROOT / "scripts" / "ensure_deps.sh"), "rootfs"], check=False)
    missing = [t for t in ("debootstrap", "unshare", "nsenter", "ip") if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed and scripts/ensure_deps.sh rootfs could not install it")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_rootfs.py")], capture_output=True,
                       text=True, timeout=840)
    assert r.returncode == 0, f"build_rootfs.py exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    root = Path(r.stdout.strip().splitlines()[-1])
    return Image(root, json.loads((root.parent / "image.json").read_text()))


class Container:
    """One run of the image: overlay root, own net/mount/PID namespaces; `exec`/`client` enter them."""

    def __init__(self, image: Image, pg: PgCluster, env: dict[str, str], config_dir: Path | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pgdoorman-ctr-"))
        self.image = image
        for d in ("upper", "work", "merged"):
            (self.dir / d).mkdir()
        m = self.dir / "merged"
        setup = [
            f"mount -t overlay overlay -o lowerdir={image.root},upperdir={self.dir / 'upper'},"
            f"workdir={self.dir / 'work'} {m}",
            f"mount -t proc proc {m}/proc",
            f"mount --bind {pg.sockdir} {m}/mnt",  # the server's Unix socket: PG_DOORMAN_SERVER_HOST=/mnt
            "ip link set lo up",
        ]
        if config_dir is not None:  # docker run -v DIR:/etc/pg_doorman:ro
            setup.append(f"mount --bind -o ro {config_dir} {m}/etc/pg_doorman")
        argv = [*image.config["Entrypoint"], *image.config["Cmd"]]
        setup.append("exec " + shlex.join(self.enter_argv(env) + argv))
        self.log = open(self.dir / "log", "wb")
        self.proc = subprocess.Popen(["unshare", "--net", "--mount", "--pid", "--fork", "/bin/sh", "-c",
                                      " && ".join(setup)], stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def enter_argv(self, env: dict[str, str] | None = None) -> list[str]:
        """chroot into the container's root as the image's user with its Env (and env), in WorkingDir."""
        cfg = self.image.config
        user = cfg["User"] or "root"
        envs = [*cfg["Env"], "HOME=/", *(f"{k}={v}" for k, v in (env or {}).items())]
        return ["chroot", f"--userspec={user}:{user}", str(self.dir / "merged"), "/usr/bin/env", "-i", *envs,
                "/bin/sh", "-c", f'cd {shlex.quote(cfg["WorkingDir"] or "/")} && exec "$@"', "-"]

    def nsenter(self, *what: str) -> list[str]:
        return ["nsenter", "-t", str(self.proc.pid), *what]

    def exec(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        """A command inside (as `docker exec` runs the HEALTHCHECK)."""
        return subprocess.run(self.nsenter("--net", "--mount") + self.enter_argv() + list(cmd),
                              capture_output=True, text=True, timeout=60)

    def healthcheck(self) -> bool:
        test = self.image.config["Healthcheck"]["Test"]
        assert test[0] == "CMD"
        return self.exec(*test[1:]).returncode == 0

    def psql(self, sql: str, user: str = SCRAM_USER, password: str = SCRAM_PASSWORD, db: str = DBNAME,
             port: int = 6432) -> subprocess.CompletedProcess[str]:
        """The host's psql in the container's network namespace, to its 127.0.0.1:6432."""
        return subprocess.run(self.nsenter("--net") + ["psql", "-X", "-A", "-t", "-c", sql],
                              env={**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": user,
                                   "PGPASSWORD": password, "PGDATABASE": db, "PGSSLMODE": "disable"},
                              capture_output=True, text=True, timeout=30)

    def main_pid(self) -> int:
        """pg_doorman's pid as the host sees it: unshare's only child."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def output(self) -> str:
        return (self.dir / "log").read_text(errors="replace")

    def stop(self) -> int:
        """`docker stop`: the image's StopSignal to the main process, then its exit status."""
        sig = getattr(signal, self.image.config["StopSignal"])
        if self.proc.poll() is None:
            try:
                os.kill(self.main_pid(), sig)
            except (AssertionError, FileNotFoundError, ProcessLookupError):
                pass
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode

    def remove(self) -> None:
        if self.proc.poll() is None:
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    made: list[Container] = []
    yield made
    for c in made:
        c.remove()


def test_image_config_and_contents(image: Image) -> None:
    """What the Dockerfile promises: a non-root user, the entry point, the ports, SIGTERM, the HEALTHCHECK on
    /metrics; pgdoorman from the image's venv over Debian's python3 and PyYAML."""
    cfg = image.config
    assert cfg["User"] == "pg_doorman" and cfg["Entrypoint"] == ["/usr/local/bin/docker-entrypoint.sh"]
    assert cfg["Cmd"] == ["pg_doorman"] and set(cfg["ExposedPorts"]) == {"6432/tcp", "9127/tcp"}
    assert cfg["StopSignal"] == "SIGTERM" and "/metrics" in " ".join(cfg["Healthcheck"]["Test"])
    assert "CONFIG_FILE=/etc/pg_doorman/pg_doorman.yaml" in cfg["Env"]
    passwd = (image.root / "etc/passwd").read_text()
    assert any(line.startswith("pg_doorman:") and line.endswith(":/usr/sbin/nologin") for line in passwd.splitlines())
    r = subprocess.run(["chroot", "--userspec=pg_doorman:pg_doorman", str(image.root), "/opt/pgdoorman/bin/python3",
                        "-c", "import os, pgdoorman, yaml; print(pgdoorman.__file__, yaml.__file__, os.getuid())"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    mod, yml, uid = r.stdout.split()
    assert mod == "/opt/pgdoorman/lib/python3.11/site-packages/pgdoorman/__init__.py"
    assert yml.startswith("/usr/lib/python3/dist-packages/yaml/") and uid != "0"
    # The image holds this checkout's code (the build's cache keys on it).
    built = (image.root / "opt/pgdoorman/lib/python3.11/site-packages/pgdoorman/cli.py").read_text()
    assert built == (ROOT / "pgdoorman" / "cli.py").read_text()
    assert not (image.root / "opt/pgdoorman/bin/pip").exists() and not (image.root / "src").exists()


def test_config_from_environment_healthcheck_and_stop(image: Image, pg: PgCluster,
                                                      containers: list[Container]) -> None:
    env = {"PG_DOORMAN_ADMIN_PASSWORD": "ctr-admin", "PG_DOORMAN_SERVER_HOST": "/mnt",
           "PG_DOORMAN_SERVER_PORT": str(pg.port), "PG_DOORMAN_DATABASES": DBNAME,
           "PG_DOORMAN_USERS": f"{SCRAM_USER}={SCRAM_PASSWORD}", "PG_DOORMAN_POOL_SIZE": "2"}
    c = Container(image, pg, env)
    containers.append(c)
    wait_for(lambda: c.proc.poll() is not None or c.healthcheck(), 30, "the HEALTHCHECK to pass")
    assert c.proc.poll() is None, c.output()
    r = c.psql("SELECT current_user, 40 + 2")
    assert r.returncode == 0 and r.stdout.strip() == f"{SCRAM_USER}|42", r.stderr + c.output()
    assert c.psql("SELECT 1", password="wrong").returncode != 0
    # The admin console with the password from the environment.
    r = c.psql("SHOW POOLS", user="admin", password="ctr-admin", db="pgdoorman")
    assert r.returncode == 0 and DBNAME in r.stdout, r.stderr
    # pg_doorman runs as the image's user, as PID 1 of its namespace.
    pid = c.main_pid()
    status = Path(f"/proc/{pid}/status").read_text()
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    assert uid != "0" and uid == c.exec("id", "-u").stdout.strip()
    nspid = next(line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:"))
    assert nspid[-1] == "1", nspid
    assert Path(f"/proc/{pid}/comm").read_text().startswith(("pg_doorman", "python3"))
    # The config it wrote from the environment lives in the container's writable layer, mode 0600.
    written = c.dir / "upper" / "tmp" / "pg_doorman.yaml"
    assert oct(written.stat().st_mode & 0o777) == "0o600" and 'admin_password: "ctr-admin"' in written.read_text()
    assert c.stop() == 0, c.output()


def test_mounted_config_and_failing_healthcheck(image: Image, pg: PgCluster, containers: list[Container]) -> None:
    """A read-only mounted /etc/pg_doorman wins over the environment; without the web listener the
    HEALTHCHECK fails while the pooler serves (as the Dockerfile warns)."""
    cfgdir = Path(tempfile.mkdtemp(prefix="pgdoorman-ctr-cfg-"))
    os.chmod(cfgdir, 0o755)
    (cfgdir / "pg_doorman.yaml").write_text(
        'general:\n  host: "0.0.0.0"\n  port: 6432\n  admin_username: "admin"\n  admin_password: "m"\n'
        f'pools:\n  {DBNAME}:\n    server_host: "/mnt"\n    server_port: {pg.port}\n'
        f'    users:\n      - username: "{SCRAM_USER}"\n        password: "{SCRAM_PASSWORD}"\n        pool_size: 1\n')
    os.chmod(cfgdir / "pg_doorman.yaml", 0o644)
    try:
        c = Container(image, pg, {"PG_DOORMAN_ADMIN_PASSWORD": "ignored"}, config_dir=cfgdir)
        containers.append(c)
        wait_for(lambda: c.proc.poll() is not None or c.psql("SELECT 1").returncode == 0, 30, "serving")
        assert c.proc.poll() is None, c.output()
        assert c.psql("SELECT current_user").stdout.strip() == SCRAM_USER
        assert not c.healthcheck()  # no web listener in this config
        assert c.exec("test", "-w", "/etc/pg_doorman/pg_doorman.yaml").returncode != 0  # read-only mount
        assert not (c.dir / "upper" / "tmp" / "pg_doorman.yaml").exists()
        assert c.stop() == 0, c.output()
    finally:
        shutil.rmtree(cfgdir, ignore_errors=True)


def test_no_config_is_refused(image: Image, pg: PgCluster, containers: list[Container]) -> None:
    c = Container(image, pg, {})
    containers.append(c)
    c.proc.wait(30)
    assert c.proc.returncode != 0 and "PG_DOORMAN_ADMIN_PASSWORD" in c.output()
