"""The Debian package's systemd unit under a real systemd: a fresh copy of a debootstrap'd Debian root
(packaging/deb/systemd-root.Dockerfile, built and cached by scripts/build_rootfs.py) gets
build/pg-doorman_*.deb with `apt-get install ./...deb` (apt resolves python3, python3-yaml and adduser from
the archive), is booted with `systemd-nspawn --boot` (its own PID, mount and network namespaces; this
machine's PID 1 is not systemd), and the packaged pg_doorman.service is driven with systemctl inside:
Type=notify start (READY=1), a query through it, SIGHUP reload (`systemctl kill -s HUP`: same MainPID, the
new pool_size in SHOW POOLS), binary upgrade on `systemctl reload` (SIGUSR2: systemd follows the new
MainPID and a connected client keeps working), `systemctl stop` with a clean result. The test PostgreSQL
is reached through its Unix socket, bind-mounted in.

Runs with `make test-deb` (PGDOORMAN_TEST_DEB=1, after `make deb`), as root."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER, PgCluster
from tests.support.pooler import wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.environ.get("PGDOORMAN_TEST_DEB") != "1" or os.geteuid() != 0,
                       reason="boots the .deb's unit in systemd-nspawn: run through `make test-deb` as root"),
]

CONFIG = """general:
  host: "0.0.0.0"
  port: 6432
  admin_username: "admin"
  admin_password: "sd-admin"
web:
  enabled: true
  host: "127.0.0.1"
  port: 9127
pools:
  {db}:
    server_host: "/mnt"
    server_port: {port}
    pool_mode: transaction
    users:
      - username: "{user}"
        password: "{password}"
        pool_size: {size}
"""


def sh(*cmd: str, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


class Machine:
    """A booted systemd-nspawn container of `root`."""

    def __init__(self, root: Path, pg: PgCluster) -> None:
        self.root = root
        self.log = open(root.parent / "nspawn.log", "wb")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "--boot", "--directory", str(root), "--private-network",
             "--register=no", "--keep-unit", "--console=passive", f"--machine=pgd{os.getpid()}",
             f"--bind={pg.sockdir}:/mnt"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = 0
        try:
            wait_for(self._find_init, 60, "the container's systemd")
            wait_for(lambda: self.systemctl("is-system-running", check=False).stdout.strip() in
                     ("running", "degraded"), 90, "the container to finish booting")
        except BaseException:
            self.shutdown()  # no container is left running when it does not boot
            raise

    def _find_init(self) -> bool:
        """The container's PID 1 (systemd): a descendant of systemd-nspawn whose innermost pid is 1."""
        assert self.proc.poll() is None, (self.root.parent / "nspawn.log").read_text(errors="replace")
        parents: dict[int, int] = {}
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    parents[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        for pid in parents:
            up = pid
            while up in parents and up not in (0, 1, self.proc.pid):
                up = parents[up]
            if up != self.proc.pid or pid == self.proc.pid:
                continue
            try:
                ns = next(ln.split()[1:] for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
                          if ln.startswith("NSpid:"))
            except (OSError, StopIteration):
                continue
            if ns[-1] == "1":
                self.pid = pid
                return True
        return False

    def run(self, *cmd: str, check: bool = True, timeout: int = 120) -> subprocess.CompletedProcess[str]:
        return sh("nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-n", "-p", "--", *cmd, check=check,
                  timeout=timeout)

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", *args, check=check)

    def show(self, prop: str) -> str:
        return self.systemctl("show", "-p", prop, "--value", "pg_doorman").stdout.strip()

    def journal(self) -> str:
        return self.run("journalctl", "-u", "pg_doorman", "--no-pager", "-n", "120", check=False).stdout

    def psql(self, sql: str, user: str = SCRAM_USER, password: str = SCRAM_PASSWORD,
             db: str = DBNAME) -> subprocess.CompletedProcess[str]:
        """The host's psql in the container's network namespace."""
        return subprocess.run(["nsenter", "-t", str(self.pid), "--net", "psql", "-X", "-A", "-c", sql],
                              env={**os.environ, "PGHOST": "127.0.0.1", "PGPORT": "6432", "PGUSER": user,
                                   "PGPASSWORD": password, "PGDATABASE": db, "PGSSLMODE": "disable"},
                              capture_output=True, text=True, timeout=30)

    def shutdown(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def machine(pg: PgCluster) -> Iterator[Machine]:
    subprocess.run(["bash", str(ROOT / "scripts" / "ensure_deps.sh"), "rootfs"], check=False)
    missing = [t for t in ("debootstrap", "systemd-nspawn", "nsenter") if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed and scripts/ensure_deps.sh rootfs could not install it")
    debs = sorted(glob.glob(str(ROOT / "build" / "pg-doorman_*_all.deb")))
    assert debs, "no build/pg-doorman_*_all.deb: run `make deb` first"
    r = sh(sys.executable, str(ROOT / "scripts" / "build_rootfs.py"), "--dockerfile",
           str(ROOT / "packaging" / "deb" / "systemd-root.Dockerfile"), timeout=840)
    base = Path(r.stdout.strip().splitlines()[-1])
    work = Path(tempfile.mkdtemp(prefix="pgdoorman-sd-"))
    root = work / "root"
    sh("cp", "-a", f"{base}/.", f"{root}/")  # a fresh root for this run
    shutil.copy(debs[-1], root / "tmp" / "pg-doorman.deb")
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    (root / "etc" / "machine-id").write_text(os.urandom(16).hex() + "\n")
    chroot = ("unshare --mount --pid --fork --kill-child sh -c 'mount -t proc proc {r}/proc && exec chroot {r} "
              "/usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive sh -c "
              "\"apt-get update -qq && apt-get install -y -qq --no-install-recommends /tmp/pg-doorman.deb\"'")
    sh("sh", "-c", chroot.format(r=root), timeout=600)
    (root / "etc" / "resolv.conf").unlink()
    m = None
    try:
        m = Machine(root, pg)
        yield m
    finally:
        if m is not None:
            m.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def write_config(m: Machine, pg: PgCluster, size: int) -> None:
    cfg = m.root / "etc" / "pg_doorman" / "pg_doorman.yaml"
    cfg.write_text(CONFIG.format(db=DBNAME, port=pg.port, user=SCRAM_USER, password=SCRAM_PASSWORD, size=size))
    os.chmod(cfg, 0o640)
    gid = int(next(ln.split(":")[2] for ln in (m.root / "etc/group").read_text().splitlines()
                   if ln.startswith("pg_doorman:")))
    os.chown(cfg, 0, gid)


def pool_size(m: Machine) -> str:
    r = m.psql("SHOW POOLS", user="admin", password="sd-admin", db="pgdoorman")
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    cols = header.split("|")
    row = next(dict(zip(cols, x.split("|"), strict=False)) for x in rows if x.startswith(f"{DBNAME}|"))
    return row["pool_size"]


HOLD = """
import sys, psycopg
conn = psycopg.connect(host="127.0.0.1", port=6432, user=sys.argv[1], password=sys.argv[2], dbname=sys.argv[3],
                       sslmode="disable", autocommit=True)
for line in sys.stdin:
    print(conn.execute(line).fetchone()[0], flush=True)
"""


def test_unit_start_reload_upgrade_stop(machine: Machine, pg: PgCluster) -> None:
    m = machine
    unit = m.systemctl("cat", "pg_doorman").stdout
    assert "Type=notify" in unit and "ExecReload=/bin/kill -SIGUSR2 $MAINPID" in unit
    write_config(m, pg, size=2)
    m.systemctl("start", "pg_doorman")  # returns once READY=1 has come (Type=notify)
    try:
        assert (m.show("ActiveState"), m.show("SubState"), m.show("Type")) == ("active", "running", "notify")
        main = m.show("MainPID")
        r = m.psql("SELECT current_user, 40 + 2")
        assert r.returncode == 0 and r.stdout.splitlines()[1] == f"{SCRAM_USER}|42", r.stderr + m.journal()
        assert pool_size(m) == "2"
        # The service runs as the package's user.
        status = m.run("cat", f"/proc/{main}/status").stdout
        uid = next(ln.split()[1] for ln in status.splitlines() if ln.startswith("Uid:"))
        assert m.run("id", "-u", "pg_doorman").stdout.strip() == uid

        # SIGHUP: the config reloaded in place.
        write_config(m, pg, size=3)
        m.systemctl("kill", "-s", "HUP", "pg_doorman")
        wait_for(lambda: pool_size(m) == "3", 20, "the reload's pool_size")
        assert m.show("MainPID") == main and m.show("ActiveState") == "active"

        # systemctl reload = SIGUSR2, the binary upgrade: a client connected before keeps working after, and
        # systemd follows the new process (MAINPID=).
        hold = subprocess.Popen(["nsenter", "-t", str(m.pid), "--net", sys.executable, "-c", HOLD, SCRAM_USER,
                                 SCRAM_PASSWORD, DBNAME], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert hold.stdin is not None and hold.stdout is not None
            hold.stdin.write("SELECT 'before'\n")
            hold.stdin.flush()
            assert hold.stdout.readline().strip() == "before"
            r = m.systemctl("reload", "pg_doorman", check=False)
            assert r.returncode == 0, r.stderr + m.systemctl("status", "pg_doorman", check=False).stdout + m.journal()
            wait_for(lambda: m.show("MainPID") not in ("0", main), 30, "systemd to follow the new MainPID")
            wait_for(lambda: not m.run("test", "-d", f"/proc/{main}", check=False).returncode == 0, 40,
                     "the old process to exit")
            assert m.show("ActiveState") == "active", m.journal()
            hold.stdin.write("SELECT 'after'\n")
            hold.stdin.flush()
            assert hold.stdout.readline().strip() == "after", m.journal()
        finally:
            hold.kill()
            hold.wait(10)
        assert m.psql("SELECT 1").returncode == 0
    finally:
        m.systemctl("stop", "pg_doorman", check=False)
    assert (m.show("ActiveState"), m.show("Result")) == ("inactive", "success"), m.journal()
