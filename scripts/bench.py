#!/usr/bin/env python3
"""Side-by-side benchmark of pgdoorman, PgBouncer and direct PostgreSQL (`make bench`).

Two PgBouncers: the one Debian installs (`pgbouncer`: 1.18 on Debian 12, no prepared statements in transaction
mode) and a current one (`pgbouncer-new`: 1.24+, with max_prepared_statements) that scripts/build_pgbouncer.sh
builds from Debian trixie's source package into /var/cache/pgdoorman; when it cannot be built the run says why
and goes on without that column.

Owns the whole run: a throwaway cluster on ports 26000-26003 (--port-base), the poolers as plain child processes,
pgbench select-only cells with per-process CPU accounting, the idle-client memory test
(scripts/idle_clients.py), the generated report docs/benchmarks.md and its charts (PNG, matplotlib, next to
the report in img/). Every process it starts is stopped again in `finally`, also on Ctrl-C / SIGTERM.

Method (facts carried over from the project's performance baseline):
* every process of ours (postmaster and backends, the pooler, pgbench) runs at nice -10, so that
  other work on the shared box mostly gets leftover cycles;
* before each cell we wait (bounded) for the machine to be idle;
* CPU is exact on-CPU time from /proc/PID/task/*/schedstat summed over threads, taken over a steady
  window chosen from pgbench's -P 1 progress lines; transactions in the window are rebuilt from them;
* "foreign" CPU = machine busy (from /proc/stat idle) minus our processes; a cell above the limit is
  re-run, and a cell where every attempt was contaminated is marked with a dagger.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import glob
import json
import math
import os
import platform
import queue
import re
import resource
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

SCRIPT_DIR = Path(__file__).resolve().parent
REPO = SCRIPT_DIR.parent
sys.path.insert(0, str(SCRIPT_DIR))

HOST = "127.0.0.1"
PORT_PG = 26000
PORT_PGBOUNCER = 26001
PORT_PGDOORMAN = 26002
PORT_PGBOUNCER_NEW = 26003
DB = "bench"
ROLE = "bench"
# The login storm's role: stored as SCRAM-SHA-256 (ROLE is md5), the same password.
SCRAM_ROLE = "bench_scram"
# 200 like the baseline: direct -c 100 fits next to a 20-connection pool, -c 1000 does not.
PG_MAX_CONNECTIONS = 200
PG_RESERVED = 3  # superuser_reserved_connections default
MAX_CLIENTS_POOLER = 12000
TARGETS = ("direct", "pgbouncer", "pgbouncer-new", "pgdoorman")
PORTS = {"direct": PORT_PG, "pgbouncer": PORT_PGBOUNCER, "pgbouncer-new": PORT_PGBOUNCER_NEW,
         "pgdoorman": PORT_PGDOORMAN}
POOLERS = ("pgbouncer", "pgbouncer-new", "pgdoorman")
# max_prepared_statements of the current PgBouncer (0 would switch its prepared-statement support off).
PGBOUNCER_MAX_PREPARED = 200
MODES = ("simple", "extended", "prepared")
NICE = -10
HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
PGBOUNCER_PREPARED_NOTE = "not supported (PgBouncer before 1.21 has no prepared statements in transaction mode)"
DIRECT_TOO_MANY_NOTE = "n/a (max_connections)"
IDLE_LOGIN_CONCURRENCY = 200
# PgBouncer's default query_wait_timeout, given to pgdoorman too (its default, 5 s, would end clients of the
# 10,000-client cell that queue longer than that, where PgBouncer lets them wait).
QUERY_WAIT_TIMEOUT_S = 120
# The headline cells (issue 15): -c 10,000 in this protocol, and the TLS + SCRAM login storm's pgbench clients.
HEADLINE_MODE = "extended"
STORM_CLIENTS = 10


class StartError(RuntimeError):
    """A pooler (or the cluster) could not be started; the message says why, with its log tail."""


class Interrupted(BaseException):
    """Raised from the SIGTERM/SIGHUP handler so that `finally` blocks run as for Ctrl-C."""


# ----------------------------------------------------------------------------------------------
# process bookkeeping


class Procs:
    """Every child process we start, so that all of them are stopped on any exit path."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen[Any]] = []

    def spawn(self, cmd: list[str], **kw: Any) -> subprocess.Popen[Any]:
        p: subprocess.Popen[Any] = subprocess.Popen(cmd, **kw)
        self.live.append(p)
        return p

    def stop(self, p: subprocess.Popen[Any], timeout: float = 10.0) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait(5)
        for stream in (p.stdin, p.stdout, p.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if p in self.live:
            self.live.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.live)):
            with contextlib.suppress(Exception):
                self.stop(p, timeout=5.0)


def nice_prefix() -> list[str]:
    # A negative nice value needs root; without it we run at the default priority.
    return ["nice", "-n", str(NICE)] if os.geteuid() == 0 else []


def renice(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, NICE)


def raise_nofile(needed: int) -> int:
    """Raise RLIMIT_NOFILE for us and every child (poolers hold 10,000 idle clients)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed and os.geteuid() == 0:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
    new = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_text(cmd: list[str], timeout: float = 30.0, env: dict[str, str] | None = None) -> str:
    """stdout of a short command, or 'unknown (...)' if it fails: used only for version strings."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    if r.returncode != 0:
        return f"unknown ({(r.stderr or r.stdout).strip()[-200:]})"
    return r.stdout.strip()


# ----------------------------------------------------------------------------------------------
# CPU accounting from /proc


def task_cpu_ns(pid: int) -> int | None:
    """Exact on-CPU ns of pid summed over its threads (schedstat; tick-based utime is unreliable)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
    except OSError:
        return None
    return total


def family_cpu_ns(parent: int) -> dict[int, int]:
    """{pid: ns} for `parent` and its direct children: our postmaster and its backends only."""
    out: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        pid = int(d)
        try:
            if pid != parent:
                with open(f"/proc/{d}/stat") as f:
                    s = f.read()
                if int(s[s.rindex(")") + 2 :].split()[1]) != parent:
                    continue
            with open(f"/proc/{d}/schedstat") as f:
                out[pid] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


def machine_idle_s() -> float:
    """Idle + iowait seconds of all CPUs since boot (exact under nohz)."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    return (vals[3] + vals[4]) / HZ


def busy_cores(interval: float) -> float:
    a = machine_idle_s()
    time.sleep(interval)
    return NCPU - (machine_idle_s() - a) / interval


def wait_quiet(max_wait: float, threshold: float) -> float | None:
    """Wait (up to max_wait s) until the box is nearly idle; returns the last busy reading."""
    if max_wait <= 0:
        return None
    deadline = time.monotonic() + max_wait
    while True:
        b = busy_cores(2.0)
        if b < threshold or time.monotonic() >= deadline:
            return round(b, 3)


@dataclasses.dataclass
class Snapshot:
    t: float
    procs: dict[str, int | None]
    postgres: dict[int, int]
    idle_s: float

    @classmethod
    def take(cls, pids: dict[str, int], postmaster: int) -> Snapshot:
        return cls(
            time.monotonic(),
            {k: task_cpu_ns(p) for k, p in pids.items()},
            family_cpu_ns(postmaster),
            machine_idle_s(),
        )


def vm_kib(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0])
    return out


# ----------------------------------------------------------------------------------------------
# results


@dataclasses.dataclass
class Cell:
    target: str
    mode: str
    clients: int
    status: str = "ok"  # ok | failed (transactions failed / clients aborted) | error | skipped
    note: str = ""
    tps: float | None = None
    lat_ms: float | None = None
    p99_ms: float | None = None
    p50_ms: float | None = None
    conn_ms: float | None = None  # pgbench's initial (or, under -C, average) connection time
    kind: str = "grid"  # grid (the -M x -c tables) | headline (-c 10,000) | storm (TLS + SCRAM logins)
    n_tx: int | None = None
    failed: int | None = None
    aborted_clients: int = 0
    rc: int | None = None
    pooler_us: float | None = None
    pgbench_us: float | None = None
    postgres_us: float | None = None
    box_us: float | None = None
    busy_cores: float | None = None
    foreign_cores: float | None = None
    pre_busy: float | None = None
    window_s: float | None = None
    cpu_whole_run: bool = False
    attempts: int = 0
    contaminated: bool = False
    errors: list[str] = dataclasses.field(default_factory=list)
    cmd: str = ""
    progress: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # pgbench -P 1: (s, tps)


@dataclasses.dataclass(frozen=True)
class Run:
    """How pgbench runs a cell beyond target, -M and -c: the defaults are the grid's cells (-S as the md5 role,
    -j 2, -T --duration)."""

    kind: str = "grid"
    duration: int | None = None
    # Seconds added to -T for the connections: pgbench's -T clock starts before its clients connect, and 10,000
    # TLS logins take a while. With it the CPU window starts from the first progress line (all connected).
    connect_s: int = 0
    threads: int = 2
    role: str = ROLE
    script: tuple[str, ...] = ("-S",)


@dataclasses.dataclass
class Idle:
    target: str
    clients: int
    status: str = "ok"
    rss_before: int | None = None
    rss_after: int | None = None
    hwm_after: int | None = None
    logged_in: int | None = None
    login_s: float | None = None
    alive: str = ""
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def kib_per_client(self) -> float | None:
        if self.rss_before is None or self.rss_after is None or not self.logged_in:
            return None
        return (self.rss_after - self.rss_before) / self.logged_in


@dataclasses.dataclass
class Storm:
    """One row of the login-storm cell (scripts/login_storm.py): static or auth_query users, both passes."""

    kind: str
    logins: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_us_per_login: float | None = None


# ----------------------------------------------------------------------------------------------
# the benchmark


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.procs = Procs()
        self.tmp = Path(tempfile.mkdtemp(prefix="pgdoorman-bench-"))
        self.tmp.chmod(0o755)  # the postgres OS user runs the cluster and PgBouncer below it
        self.password = secrets.token_hex(12)
        self.stored_password = ""
        self.scram_verifier = ""
        # Who the poolers let in: ROLE (md5) for the pgbench cells, SCRAM_ROLE for the login storm's fresh poolers.
        self.login_role = ROLE
        self.cluster: Any = None
        self.bindir = ""
        self.postmaster = 0
        self.cells: list[Cell] = []
        self.idle: list[Idle] = []
        self.storm: list[Storm] = []
        self.storm_error = ""  # why the login-storm cell gave no rows
        self.headline: list[Cell] = []  # -c --headline-clients, HEADLINE_MODE, every pooler
        self.storm_cells: list[Cell] = []  # the TLS + SCRAM login storm (--tls), every pooler
        self.commands: list[str] = []
        self.versions: dict[str, str] = {}
        self.start_errors: dict[str, str] = {}
        # Targets left out of this run, and why (the current PgBouncer could not be built, say): not a failure.
        self.unavailable: dict[str, str] = {}
        self.pgbouncer_new_exe: str | None = None
        self.nofile = 0  # RLIMIT_NOFILE (soft) of the harness and every process it starts
        self.charts: dict[str, str] = {}  # mode -> PNG path relative to the report
        self.charts_note = ""
        # How pgdoorman is started: scripts/profile_workers.py runs it under scripts/pgdoorman_counters.py,
        # or from a snapshot of the package (`src`: the directory that holds pgdoorman/).
        self.pgdoorman_launch: list[str] = ["-m", "pgdoorman"]
        self.pgdoorman_src = REPO
        self.pgdoorman_env: dict[str, str] = {}
        self.env = dict(os.environ)
        self.env.update(PGPASSWORD=self.password, PGSSLMODE="disable", PGGSSENCMODE="disable")
        for k in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE", "PGOPTIONS"):
            self.env.pop(k, None)

    # --- cluster ---------------------------------------------------------------------------

    def start_cluster(self) -> None:
        try:
            from pgcluster import PgCluster, find_bindir
        except ImportError as exc:
            raise StartError(f"scripts/pgcluster.py is not importable: {exc}") from exc
        self.bindir = find_bindir()
        settings = {
            "listen_addresses": f"'{HOST}'",
            "max_connections": str(PG_MAX_CONNECTIONS),
            "fsync": "off",
            # The ~160 MB scale-10 data set must sit in shared buffers (default 128MB is too small).
            "shared_buffers": "'1GB'",
        }
        self.cluster = PgCluster(str(self.tmp / "pg"), PORT_PG, host=HOST, settings=settings)
        self.cluster.init()
        self.cluster.start()
        self.cluster.create_role(ROLE, self.password, method="md5")
        self.cluster.create_database(DB, owner=ROLE)
        self.stored_password = self.cluster.stored_password(ROLE)
        if not self.stored_password.startswith("md5"):
            raise StartError(f"role {ROLE} has no md5 password (got {self.stored_password[:12]}...)")
        self.cluster.create_role(SCRAM_ROLE, self.password, method="scram-sha-256")
        self.scram_verifier = self.cluster.stored_password(SCRAM_ROLE)
        if not self.scram_verifier.startswith("SCRAM-SHA-256$"):
            raise StartError(f"role {SCRAM_ROLE} has no SCRAM verifier (got {self.scram_verifier[:14]}...)")
        datadir = self.cluster.psql("SHOW data_directory").strip()
        with open(os.path.join(datadir, "postmaster.pid")) as f:
            self.postmaster = int(f.readline())
        self.renice_postgres()
        init = [
            self.bin("pgbench"),
            "-i",
            "-s",
            str(self.args.scale),
            "-q",
            "-h",
            HOST,
            "-p",
            str(PORT_PG),
            "-U",
            ROLE,
            DB,
        ]
        self.commands.append(shlex.join(init))
        r = subprocess.run(init, env=self.env, capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise StartError(f"pgbench -i failed: {r.stderr.strip()[-2000:]}")

    def renice_postgres(self) -> None:
        # Backends forked later inherit the postmaster's nice value.
        for pid in family_cpu_ns(self.postmaster):
            renice(pid)

    def bin(self, name: str) -> str:
        return os.path.join(self.bindir, name)

    # --- poolers ---------------------------------------------------------------------------

    def wait_ready(self, p: subprocess.Popen[Any], port: int, logs: list[Path], name: str) -> None:
        """Poll with a real login + query until the pooler answers, it exits, or time runs out."""
        deadline = time.monotonic() + self.args.start_timeout
        env = dict(self.env, PGCONNECT_TIMEOUT="3")
        if self.args.tls and port != PORT_PG:
            env["PGSSLMODE"] = "require"
        probe = [self.bin("psql"), "-h", HOST, "-p", str(port), "-U", self.login_role, "-d", DB, "-Atc", "select 1"]
        last = "no answer"
        while True:
            rc = p.poll()
            if rc is not None:
                raise StartError(f"{name} exited with status {rc} during start-up:\n{self.log_tails(logs)}")
            try:
                r = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=15)
                if r.returncode == 0 and r.stdout.strip() == "1":
                    return
                last = (r.stderr or r.stdout).strip()
            except subprocess.TimeoutExpired:
                last = "probe query timed out"
            if time.monotonic() > deadline:
                raise StartError(
                    f"{name} did not answer `select 1` within {self.args.start_timeout:.0f} s "
                    f"({last}):\n{self.log_tails(logs)}"
                )
            time.sleep(0.3)

    @staticmethod
    def log_tails(logs: list[Path]) -> str:
        return "\n".join(t for t in (tail(log) for log in logs) if t)

    def tls_files(self) -> tuple[Path, Path]:
        """A self-signed certificate and key for --tls, readable by the postgres user (PgBouncer runs as it)."""
        d = self.tmp / "tls"
        cert, key = d / "server.crt", d / "server.key"
        if not cert.exists():
            d.mkdir(exist_ok=True)
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                            "/CN=localhost", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
            key.chmod(0o600)
            if os.geteuid() == 0:
                for path in (d, cert, key):
                    os.chown(path, _postgres_uid(), _postgres_gid())
        return cert, key

    def start_pgbouncer(self) -> subprocess.Popen[Any]:
        exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not os.path.exists(exe):
            ensure = REPO / "scripts" / "ensure_deps.sh"
            r = subprocess.run(["bash", str(ensure), "pgbouncer"], capture_output=True, text=True)
            exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
            if not os.path.exists(exe):
                raise StartError(f"pgbouncer is not installed and ensure_deps.sh failed: {r.stderr[-500:]}")
        return self._start_pgbouncer("pgbouncer", exe, PORT_PGBOUNCER, "")

    def start_pgbouncer_new(self) -> subprocess.Popen[Any]:
        if not self.pgbouncer_new_exe:
            raise StartError("the current PgBouncer is not available")
        return self._start_pgbouncer("pgbouncer-new", self.pgbouncer_new_exe, PORT_PGBOUNCER_NEW,
                                     f"max_prepared_statements = {PGBOUNCER_MAX_PREPARED}\n")

    def find_pgbouncer_new(self) -> None:
        """The current PgBouncer: --pgbouncer-new, else scripts/build_pgbouncer.sh (a cached build is reused;
        a first build takes about a minute). If neither works the target is left out, with the reason."""
        if "pgbouncer-new" not in self.args.only:
            return
        exe = self.args.pgbouncer_new
        if not exe:
            print("finding or building the current PgBouncer (scripts/build_pgbouncer.sh) ...", flush=True)
            try:
                r = subprocess.run(["bash", str(SCRIPT_DIR / "build_pgbouncer.sh")], capture_output=True, text=True,
                                   timeout=1800)
            except (OSError, subprocess.TimeoutExpired) as exc:
                self.unavailable["pgbouncer-new"] = f"scripts/build_pgbouncer.sh did not finish: {exc}"
            else:
                lines = r.stdout.strip().splitlines()
                if r.returncode == 0 and lines and os.access(lines[-1], os.X_OK):
                    exe = lines[-1]
                else:
                    why = (r.stderr or r.stdout).strip().splitlines()[-3:]
                    self.unavailable["pgbouncer-new"] = (
                        f"scripts/build_pgbouncer.sh failed (status {r.returncode}): {' / '.join(why)}")
        elif not os.access(exe, os.X_OK):
            self.unavailable["pgbouncer-new"] = f"--pgbouncer-new {exe} is not an executable"
            exe = None
        if exe:
            self.pgbouncer_new_exe = exe
        else:
            print(f"  pgbouncer-new: left out of this run: {self.unavailable['pgbouncer-new']}", flush=True)

    def _start_pgbouncer(self, name: str, exe: str, port: int, extra: str) -> subprocess.Popen[Any]:
        d = self.tmp / name
        d.mkdir(exist_ok=True)
        userlist = d / "userlist.txt"
        scram = self.login_role == SCRAM_ROLE
        userlist.write_text(f'"{self.login_role}" "{self.scram_verifier if scram else self.stored_password}"\n')
        userlist.chmod(0o600)
        ini = d / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"{DB} = host={HOST} port={PORT_PG} dbname={DB}\n"
            "[pgbouncer]\n"
            f"listen_addr = {HOST}\n"
            f"listen_port = {port}\n"
            "unix_socket_dir =\n"
            f"auth_type = {'scram-sha-256' if scram else 'md5'}\n"
            f"auth_file = {userlist}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.args.pool_size}\n"
            f"max_client_conn = {MAX_CLIENTS_POOLER}\n"
            "max_db_connections = 0\n"
            f"logfile = {d / 'pgbouncer.log'}\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
            "log_pooler_errors = 1\n"
            + extra
        )
        if self.args.tls:
            cert, key = self.tls_files()
            with ini.open("a") as f:
                f.write(f"client_tls_sslmode = require\nclient_tls_cert_file = {cert}\nclient_tls_key_file = {key}\n")
        cmd = [exe, str(ini)]
        if os.geteuid() == 0:
            # PgBouncer refuses to run as root; setpriv execs in place, so the pid we get is PgBouncer's.
            for path in d.iterdir():
                os.chown(path, _postgres_uid(), _postgres_gid())
            os.chown(d, _postgres_uid(), _postgres_gid())
            cmd = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *cmd]
        cmd = nice_prefix() + cmd
        self._note_command(cmd)
        log = d / "stdout.log"
        with open(log, "ab") as out:
            p = self.procs.spawn(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self.wait_ready(p, port, [log, d / "pgbouncer.log"], name)
        except BaseException:
            self.procs.stop(p)
            raise
        return p

    def pgdoorman_config(self) -> Path:
        d = self.tmp / "pgdoorman"
        d.mkdir(exist_ok=True)
        cfg = d / "pgdoorman.yaml"
        q = json.dumps  # a JSON string is a valid YAML scalar, so no YAML library is needed here
        cfg.write_text(
            "general:\n"
            f"  host: {q(HOST)}\n"
            f"  port: {PORT_PGDOORMAN}\n"
            f"  admin_username: {q('admin')}\n"
            f"  admin_password: {q(secrets.token_hex(8))}\n"
            f"  worker_threads: {self.workers}\n"
            f"  max_connections: {MAX_CLIENTS_POOLER}\n"
            f"  query_wait_timeout: {QUERY_WAIT_TIMEOUT_S * 1000}\n"
            "  log_client_connections: false\n"
            "  log_client_disconnections: false\n"
            + (f"  tls_mode: {q('require')}\n  tls_certificate: {q(str(self.tls_files()[0]))}\n"
               f"  tls_private_key: {q(str(self.tls_files()[1]))}\n" if self.args.tls else "")
            + "pools:\n"
            f"  {DB}:\n"
            f"    server_host: {q(HOST)}\n"
            f"    server_port: {PORT_PG}\n"
            f"    pool_mode: {q('transaction')}\n"
            "    users:\n"
            f"      - username: {q(self.login_role)}\n"
            f"        password: {q(self.scram_verifier if self.login_role == SCRAM_ROLE else self.stored_password)}\n"
            f"        pool_size: {self.args.pool_size}\n"
        )
        return cfg

    def start_pgdoorman(self) -> subprocess.Popen[Any]:
        cfg = self.pgdoorman_config()
        cmd = nice_prefix() + [self.args.python, *self.pgdoorman_launch, str(cfg)]
        self._note_command(cmd)
        env = dict(self.env, **self.pgdoorman_env)
        # A --python interpreter outside the venv still finds this checkout's package.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.pgdoorman_src), env.get("PYTHONPATH", "")]))
        log = cfg.parent / "pgdoorman.log"
        with open(log, "ab") as out:
            p = self.procs.spawn(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cfg.parent
            )
        try:
            self.wait_ready(p, PORT_PGDOORMAN, [log], "pgdoorman")
        except BaseException:
            self.procs.stop(p)
            raise
        return p

    def _note_command(self, cmd: list[str]) -> None:
        line = shlex.join(cmd).replace(str(self.tmp), "$TMP")
        if line not in self.commands:
            self.commands.append(line)

    @property
    def workers(self) -> int:
        if self.args.workers is not None:
            return int(self.args.workers)
        # One worker per core only pays off without a GIL; on ordinary CPython threads would contend.
        return NCPU if self.free_threaded else 1

    @property
    def free_threaded(self) -> bool:
        return self.versions.get("pooler_gil_disabled") == "True"

    # --- pgbench cells ---------------------------------------------------------------------

    def cell(self, target: str, port: int, mode: str, clients: int, pooler_pid: int | None,
             run: Run | None = None) -> Cell:
        """Run one cell, retrying while foreign load contaminated the CPU window."""
        best: Cell | None = None
        for attempt in range(1, self.args.retries + 2):
            pre = wait_quiet(self.args.wait_quiet, self.args.max_foreign)
            c = self.pgbench_once(target, port, mode, clients, pooler_pid, run)
            c.attempts, c.pre_busy = attempt, pre
            if c.status == "ok" and c.foreign_cores is not None and c.foreign_cores > self.args.max_foreign:
                c.contaminated = True
            # Keep the last clean attempt, else the least contaminated one.
            if (
                best is None
                or not c.contaminated
                or (best.contaminated and (c.foreign_cores or 0) < (best.foreign_cores or 0))
            ):
                best = c
            best.attempts = attempt
            if not c.contaminated or attempt > self.args.retries:
                break
            print(f" foreign load {c.foreign_cores} cores, re-running ...", end="", flush=True)
        assert best is not None
        return best

    def pgbench_once(self, target: str, port: int, mode: str, clients: int, pooler_pid: int | None,
                     run: Run | None = None) -> Cell:
        """One pgbench run; `run` changes the defaults (-S as bench, -j 2, -T --duration) for the headline
        cells: its duration and threads, the role, and what each client runs (a login storm's -C -R -f)."""
        run = run or Run()
        c = Cell(target, mode, clients, kind=run.kind)
        logdir = Path(tempfile.mkdtemp(prefix=f"{target}-{mode}-{clients}-", dir=self.tmp))
        duration = run.duration or self.args.duration
        total = duration + run.connect_s
        cmd = [
            *nice_prefix(),
            self.bin("pgbench"),
            "-h",
            HOST,
            "-p",
            str(port),
            "-U",
            run.role,
            "-M",
            mode,
            *run.script,
            "-c",
            str(clients),
            "-j",
            str(min(run.threads, clients)),
            "-T",
            str(total),
            "-P",
            "1",
            "--log",
            "--log-prefix",
            str(logdir / "tx"),
            DB,
        ]
        c.cmd = shlex.join(cmd).replace(str(logdir), "$LOGDIR")
        # Steady window: skip the ramp-up (connections, first second) and the last second.
        win_start = max(1.0, round(duration * 0.2))
        win_end = max(win_start + 1.0, duration - 1.0)
        env = self.env
        if self.args.tls and target != "direct":
            env = {**env, "PGSSLMODE": "require"}
        p = self.procs.spawn(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        # pgbench -T cannot stop a client stuck in connect(); a hung pooler must not hang the benchmark.
        limit = total + 30 + clients * 0.02
        hung = threading.Event()

        def kill_hung() -> None:
            hung.set()
            p.kill()

        watchdog = threading.Timer(limit, kill_hung)
        watchdog.start()
        pids = {"pgbench": p.pid}
        if pooler_pid:
            pids["pooler"] = pooler_pid
        s_begin = Snapshot.take(pids, self.postmaster)
        out_lines: list[str] = []
        reader = threading.Thread(target=lambda: out_lines.extend(p.stdout or []), daemon=True)
        reader.start()
        progress: list[tuple[float, float]] = []
        err_lines: list[str] = []
        s0 = s1 = None
        t0 = t1 = 0.0
        prog_re = re.compile(r"^progress: ([\d.]+) s, ([\d.]+) tps")
        try:
            assert p.stderr is not None
            for line in p.stderr:
                m = prog_re.match(line)
                if not m:
                    err_lines.append(line.rstrip())
                    continue
                t, tps = float(m.group(1)), float(m.group(2))
                progress.append((t, tps))
                if run.connect_s and len(progress) == 1:  # connected: the window counts from here
                    win_start = t + max(1.0, round(duration * 0.2))
                    win_end = max(win_start + 1.0, total - 1.0)
                if s0 is None and t >= win_start:
                    s0, t0 = Snapshot.take(pids, self.postmaster), t
                elif s0 is not None and s1 is None and t >= win_end:
                    s1, t1 = Snapshot.take(pids, self.postmaster), t
            p.wait()
            s_end = Snapshot.take(pids, self.postmaster)
            reader.join(10)
        finally:
            watchdog.cancel()
            self.procs.stop(p)
        c.rc = p.returncode
        c.progress = progress
        out = "".join(out_lines)

        def grab(pattern: str) -> str | None:
            m = re.search(pattern, out)
            return m.group(1) if m else None

        tps_s = grab(r"tps = ([\d.]+) \((?:without initial connection time|including reconnection times)\)")
        conn = grab(r"(?:initial|average) connection time = ([\d.]+) ms")
        c.conn_ms = float(conn) if conn else None
        lat = grab(r"latency average = ([\d.]+) ms")
        n_tx = grab(r"number of transactions actually processed: (\d+)")
        failed = grab(r"number of failed transactions: (\d+)")
        c.tps = float(tps_s) if tps_s else None
        c.lat_ms = float(lat) if lat else None
        c.n_tx = int(n_tx) if n_tx else None
        c.failed = int(failed) if failed else None
        c.aborted_clients = sum(1 for ln in err_lines if re.search(r"client \d+ .*aborted", ln))
        noise = ("pgbench (", "starting vacuum", "end.", "dropping old", "creating ")
        c.errors = [ln for ln in err_lines if ln and not ln.startswith(noise)][-6:]
        if c.tps is None and not c.errors:  # e.g. -T ran out before a transaction: pgbench's own summary says so
            c.errors = [ln.rstrip() for ln in out_lines if ln.strip()][-4:]
        if hung.is_set():
            # Say where pgbench was stuck: its last output line, e.g. an unfinished "starting vacuum...".
            last = next((ln for ln in reversed(err_lines) if ln), "")
            where = f"{len(progress)} progress reports" if progress else "before its first progress report"
            c.note = f"pgbench hung and was killed after {limit:.0f} s ({where}" + (
                f"; last stderr line: {last!r})" if last else ")"
            )
        (c.p50_ms, c.p99_ms), log_failed = percentiles_from_logs(logdir, (0.5, 0.99))
        if c.failed is None and log_failed:
            c.failed = log_failed
        shutil.rmtree(logdir, ignore_errors=True)
        if p.returncode != 0 or c.tps is None:
            c.status = "error" if c.tps is None else "failed"
            if "Run was aborted" in out + "\n".join(err_lines):
                c.note = "run aborted"
        elif c.failed or c.aborted_clients:
            c.status = "failed"

        # CPU: steady window when pgbench got that far, else the whole run (marked in the report).
        if s0 is not None and s1 is not None:
            tx = 0.0
            prev: float | None = None
            for t, rate in progress:
                if prev is not None and t0 < t <= t1:
                    tx += rate * (t - prev)
                prev = t
            a, b, tx_n = s0, s1, tx
        else:
            a, b, tx_n = s_begin, s_end, float(c.n_tx or 0)
            c.cpu_whole_run = True
        wall = b.t - a.t
        if tx_n > 0 and wall > 0:
            c.window_s = round(wall, 2)

            def per_tx(ns: float) -> float:
                return round(ns / 1e3 / tx_n, 1)

            mine = 0.0
            for key in pids:
                x, y = a.procs.get(key), b.procs.get(key)
                if x is not None and y is not None:
                    mine += y - x
                    if key == "pooler":
                        c.pooler_us = per_tx(y - x)
                    else:
                        c.pgbench_us = per_tx(y - x)
            pg = sum(b.postgres[q] - a.postgres[q] for q in set(a.postgres) & set(b.postgres))
            mine += pg
            c.postgres_us = per_tx(pg)
            busy_s = NCPU * wall - (b.idle_s - a.idle_s)
            c.box_us = round(busy_s * 1e6 / tx_n, 1)
            c.busy_cores = round(busy_s / wall, 2)
            c.foreign_cores = round(c.busy_cores - mine / 1e9 / wall, 2)
        return c

    def starter(self, target: str) -> Callable[[], subprocess.Popen[Any]] | None:
        return {"pgbouncer": self.start_pgbouncer, "pgbouncer-new": self.start_pgbouncer_new,
                "pgdoorman": self.start_pgdoorman}.get(target)

    def run_targets(self, targets: list[str]) -> None:
        """Every cell for every target, the targets of one cell back to back (pgbouncer, then pgdoorman, at
        the same -M and -c): slow drifts of a shared machine then hit both sides of a ratio alike, which
        running all of one pooler's cells before the other's does not. Both poolers stay up throughout
        (an idle one costs nothing measurable); the idle-client test runs afterwards on fresh processes."""
        poolers: dict[str, subprocess.Popen[Any] | None] = {}
        restart: dict[str, bool] = {}
        try:
            for target in targets:
                poolers[target] = None
                restart[target] = False
                starter = self.starter(target)
                if starter is not None:
                    try:
                        poolers[target] = starter()
                    except StartError as exc:
                        self.start_errors[target] = str(exc)
                        print(f"  {target}: could not start: {exc}", flush=True)
            for mode in self.args.modes:
                for clients in self.args.clients:
                    for target in targets:
                        cell = self.run_cell(target, mode, clients, poolers, restart)
                        self.cells.append(cell)
            self.run_headline([t for t in targets if t != "direct"], poolers, restart)
        finally:
            for pooler in poolers.values():
                if pooler is not None:
                    self.procs.stop(pooler)
        for target in targets:
            starter = self.starter(target)
            if starter is not None and self.args.idle_clients > 0 and target not in self.start_errors:
                self.idle.append(self.idle_memory(target, starter, PORTS[target]))
        if "pgdoorman" in targets and self.args.login_storm > 0 and not self.args.tls:
            self.login_storm()
        if self.args.login_storm > 0 and self.args.tls:
            self.run_tls_storm([t for t in targets if t != "direct"])

    # --- headline cells --------------------------------------------------------------------

    def run_headline(self, targets: list[str], poolers: dict[str, subprocess.Popen[Any] | None],
                     restart: dict[str, bool]) -> None:
        """-c --headline-clients (10,000) in HEADLINE_MODE through every pooler, back to back, on the processes
        that ran the grid: -j 2 and a longer -T (--headline-duration), as 10,000 logins take a while."""
        n = self.args.headline_clients
        if n <= 0:
            return
        run = Run("headline", duration=self.args.headline_duration, connect_s=headline_connect_s(n))
        for target in targets:
            self.headline.append(self.run_cell(target, HEADLINE_MODE, n, poolers, restart, run))

    def run_tls_storm(self, targets: list[str]) -> None:
        """The login storm over TLS with SCRAM-SHA-256 (--tls): fresh pooler processes that let SCRAM_ROLE in,
        pgbench -C -R rate (each transaction a new connection: TLS handshake, SCRAM, `select 1`, close)."""
        a = self.args
        script = self.tmp / "select1.sql"
        script.write_text("select 1;\n")
        script.chmod(0o644)
        run = Run("storm", duration=a.login_storm, role=SCRAM_ROLE,
                  script=("-C", "-R", str(a.login_storm_rate), "-f", str(script)))
        poolers: dict[str, subprocess.Popen[Any] | None] = {}
        restart = {t: False for t in targets}
        self.login_role = SCRAM_ROLE
        try:
            for target in targets:
                if target in self.start_errors:
                    continue
                starter = self.starter(target)
                assert starter is not None
                try:
                    poolers[target] = starter()
                except StartError as exc:
                    print(f"  {target}: could not start for the login storm: {exc}", flush=True)
                    self.storm_cells.append(Cell(target, "simple", STORM_CLIENTS, kind="storm", status="error",
                                                 note=f"pooler did not start: {_md(str(exc))}"))
            for target in poolers:
                self.storm_cells.append(self.run_cell(target, "simple", STORM_CLIENTS, poolers, restart, run))
        finally:
            self.login_role = ROLE
            for pooler in poolers.values():
                if pooler is not None:
                    self.procs.stop(pooler)

    # --- login storm -----------------------------------------------------------------------

    def login_storm(self) -> None:
        """scripts/login_storm.py (its own PostgreSQL and pgdoorman): static against auth_query users in the
        same run, two passes of each; one Storm row per kind from its JSON line."""
        a = self.args
        cmd = [sys.executable, str(SCRIPT_DIR / "login_storm.py"), "--rate", str(a.login_storm_rate), "--seconds",
               str(a.login_storm), "--workers", str(self.workers), "--python", a.python, "--json"]
        self._note_command(cmd)
        print(f"  pgdoorman     login storm: {a.login_storm_rate}/s, {a.login_storm} s a pass ...", end="", flush=True)
        proc = self.procs.spawn([*nice_prefix(), *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = ""
        try:
            out, _ = proc.communicate(timeout=120 + 4 * a.login_storm)
            self.storm = storm_rows(out)
        except (ValueError, KeyError, subprocess.TimeoutExpired) as exc:
            self.storm_error = f"no result from login_storm.py ({exc}): {out.strip()[-300:]}"
        finally:
            self.procs.stop(proc)
        print(" " + ("; ".join(f"{r.kind} p99 {fmt(r.p99_ms, 2)} ms, {fmt(r.cpu_us_per_login, 0)} µs/login"
                               for r in self.storm) or self.storm_error), flush=True)

    def run_cell(self, target: str, mode: str, clients: int, poolers: dict[str, subprocess.Popen[Any] | None],
                 restart: dict[str, bool], run: Run | None = None) -> Cell:
        starter = self.starter(target)
        cell = self.skip_reason(target, mode, clients)
        if cell is None and target in self.start_errors:
            cell = Cell(target, mode, clients, status="error", note="pooler did not start")
        pooler = poolers.get(target)
        if cell is None and pooler is not None and (pooler.poll() is not None or restart[target]):
            # An earlier cell killed or wedged the pooler: restart it so that one crash or hang is one red
            # cell, not a column of them.
            restart[target] = False
            self.procs.stop(pooler)
            poolers[target] = None
            try:
                assert starter is not None
                pooler = poolers[target] = starter()
            except StartError as exc:
                self.start_errors[target] = str(exc)
                cell = Cell(target, mode, clients, status="error", note="pooler crashed")
        if cell is not None:
            cell.kind = run.kind if run else cell.kind
            return cell
        label = "login storm" if run and run.kind == "storm" else f"-M {mode:8} -c {clients:<5}"
        print(f"  {target:13} {label} ...", end="", flush=True)
        cell = self.cell(target, PORTS[target], mode, clients, pooler.pid if pooler else None, run)
        if pooler is not None and pooler.poll() is not None:
            cell.status = "error"
            cell.note = (cell.note + "; " if cell.note else "") + f"pooler exited with status {pooler.returncode}"
        restart[target] = cell.note.startswith("pgbench hung")
        print(" " + one_line(cell), flush=True)
        return cell

    def skip_reason(self, target: str, mode: str, clients: int) -> Cell | None:
        if target.startswith("pgbouncer") and mode == "prepared" and not self.pgbouncer_prepares(target):
            return Cell(target, mode, clients, status="skipped", note=PGBOUNCER_PREPARED_NOTE)
        # Every pool may hold its server connections at the same time as direct clients.
        poolers = sum(1 for t in POOLERS if t in self.args.only and t not in self.unavailable)
        room = PG_MAX_CONNECTIONS - PG_RESERVED - poolers * self.args.pool_size
        if target == "direct" and clients > room:
            return Cell(target, mode, clients, status="skipped", note=DIRECT_TOO_MANY_NOTE)
        return None

    # --- idle clients ----------------------------------------------------------------------

    def idle_memory(self, target: str, starter: Callable[[], subprocess.Popen[Any]], port: int) -> Idle:
        n = self.args.idle_clients
        res = Idle(target, n)
        print(f"  {target:13} idle clients: {n} ...", end="", flush=True)
        pooler: subprocess.Popen[Any] | None = None
        holder: subprocess.Popen[Any] | None = None
        try:
            pooler = starter()  # a fresh process: RSS must not include the pgbench runs' leftovers
            time.sleep(1.0)
            res.rss_before = vm_kib(pooler.pid)["VmRSS"]
            cmd = [
                sys.executable,
                str(SCRIPT_DIR / "idle_clients.py"),
                "--host",
                HOST,
                "--port",
                str(port),
                "--user",
                ROLE,
                "--password",
                self.password,
                "--dbname",
                DB,
                "-n",
                str(n),
                "--concurrency",
                str(IDLE_LOGIN_CONCURRENCY),
            ]
            self._note_command(cmd[:-8] + ["--password", "$PASSWORD", *cmd[-6:]])
            holder = self.procs.spawn(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            lines = _line_queue(holder.stdout)
            ready = _next_json(lines, timeout=60 + n / 100)
            if ready is None:
                raise StartError("idle_clients.py did not report its logins in time")
            res.logged_in, res.login_s = ready["clients"], ready["login_seconds"]
            if ready["failed"]:
                res.status = "failed"
                res.errors.append(f"{ready['failed']} logins failed: {ready['errors']}")
            time.sleep(2.0)  # let the pooler finish any per-client work before measuring
            if pooler.poll() is not None:
                raise StartError(f"{target} exited with status {pooler.returncode} holding idle clients")
            mem = vm_kib(pooler.pid)
            res.rss_after, res.hwm_after = mem["VmRSS"], mem["VmHWM"]
            assert holder.stdin is not None
            holder.stdin.close()
            alive = _next_json(lines, timeout=120)
            if alive is None:
                res.status = "failed"
                res.alive = "no answer"
            else:
                res.alive = f"{alive['ok']}/{alive['checked']} answered SELECT 1"
                if alive["ok"] != alive["checked"] or alive["lost_while_idle"]:
                    res.status = "failed"
                    res.errors.append(
                        f"{alive['lost_while_idle']} clients dropped while idle; check errors: {alive['errors']}"
                    )
            holder.wait(60)
        except (StartError, OSError, subprocess.TimeoutExpired, KeyError) as exc:
            res.status = "error"
            res.errors.append(str(exc))
        finally:
            if holder is not None:
                self.procs.stop(holder)
            if pooler is not None:
                self.procs.stop(pooler)
        per = res.kib_per_client
        print(
            f" {res.status}: {res.logged_in} logged in, "
            f"{f'{per:.2f} KiB/client' if per is not None else 'no RSS figure'} {'; '.join(res.errors)}",
            flush=True,
        )
        return res

    # --- versions, the whole run -----------------------------------------------------------

    def collect_versions(self) -> None:
        v = self.versions
        v["harness_python"] = platform.python_version()
        env = dict(self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.pgdoorman_src), env.get("PYTHONPATH", "")]))
        probe = (
            "import sys, sysconfig\n"
            "print(sys.version.split()[0])\n"
            "print(bool(sysconfig.get_config_var('Py_GIL_DISABLED')))\n"
            "try:\n"
            "    import pgdoorman\n"
            "    print(getattr(pgdoorman, '__version__', 'unknown'))\n"
            "except Exception as exc:\n"
            "    print(f'not importable ({exc})')\n"
        )
        out = run_text([self.args.python, "-c", probe], env=env).splitlines()
        v["pooler_python"] = out[0] if out else "unknown"
        v["pooler_gil_disabled"] = out[1] if len(out) > 1 else "unknown"
        version = out[2] if len(out) > 2 else "unknown"
        src = str(self.pgdoorman_src)
        commit = run_text(["git", "-C", src, "rev-parse", "--short", "HEAD"])
        dirty = run_text(["git", "-C", src, "status", "--porcelain", "--", "pgdoorman"])
        if commit.startswith("unknown"):
            commit = "no commit"
        v["pgdoorman"] = f"{version} (git {commit}{', pgdoorman/ modified' if dirty else ''})"
        exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        v["pgbouncer"] = (
            run_text([exe, "--version"]).splitlines()[0] if os.path.exists(exe) else "not installed"
        )
        if self.pgbouncer_new_exe:
            v["pgbouncer-new"] = run_text([self.pgbouncer_new_exe, "--version"]).splitlines()[0]
            src = Path(self.pgbouncer_new_exe).parent.parent / "SOURCE"
            if src.exists():
                v["pgbouncer-new"] += f" (built from Debian's {src.read_text().strip()})"
        elif "pgbouncer-new" in self.unavailable:
            v["pgbouncer-new"] = "left out: " + self.unavailable["pgbouncer-new"]

    def pgbouncer_prepares(self, target: str) -> bool:
        """Whether this PgBouncer keeps prepared statements in transaction mode (1.21+)."""
        m = re.match(r"PgBouncer (\d+)\.(\d+)", self.versions.get(target, ""))
        return m is not None and (int(m.group(1)), int(m.group(2))) >= (1, 21)

    def run(self) -> int:
        self.find_pgbouncer_new()
        self.collect_versions()
        self.nofile = raise_nofile(MAX_CLIENTS_POOLER + 4096)
        print(f"workdir {self.tmp}; creating the cluster (pgbench -i -s {self.args.scale}) ...", flush=True)
        try:
            self.start_cluster()
        except (RuntimeError, OSError, KeyError, subprocess.SubprocessError) as exc:
            if isinstance(exc, StartError):
                raise
            raise StartError(f"cluster set-up failed: {exc}") from exc
        self.versions["postgresql"] = run_text([self.bin("postgres"), "--version"])
        self.versions["pgbench"] = run_text([self.bin("pgbench"), "--version"])
        self.run_targets([t for t in TARGETS if t in self.args.only and t not in self.unavailable])
        return 0

    def cleanup(self) -> None:
        # A second Ctrl-C must not cut the clean-up short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.procs.stop_all()
        if self.cluster is not None:
            try:
                self.cluster.stop()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on to remove the directory
                print(f"warning: stopping the cluster failed: {exc}", file=sys.stderr)
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            print(f"kept {self.tmp}", file=sys.stderr)

    def bad_results(self) -> list[str]:
        """Pooler cells and idle tests whose answers were wrong or missing: these fail the run."""
        bad = [
            f"{c.target} {cell_name(c)}: {c.status} {c.note}".strip()
            for c in self.cells + self.headline + self.storm_cells
            if c.target != "direct" and c.status in ("failed", "error") and c.target not in self.start_errors
        ]
        bad += [f"{i.target} idle clients: {i.status}" for i in self.idle if i.status != "ok"]
        bad += [f"login storm ({r.kind}): {r.errors} logins failed" for r in self.storm if r.errors]
        bad += [f"login storm: {self.storm_error}"] if self.storm_error else []
        bad += [f"{t}: did not start" for t in self.start_errors]
        return bad


def _postgres_uid() -> int:
    import pwd

    return pwd.getpwnam("postgres").pw_uid


def _postgres_gid() -> int:
    import pwd

    return pwd.getpwnam("postgres").pw_gid


def _line_queue(stream: IO[str] | None) -> queue.Queue[str | None]:
    q: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        if stream is not None:
            for line in stream:
                q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _next_json(lines: queue.Queue[str | None], timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if line is None:
            return None
        with contextlib.suppress(json.JSONDecodeError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                return obj


def percentiles_from_logs(logdir: Path, qs: tuple[float, ...]) -> tuple[tuple[float | None, ...], int]:
    """Latency percentiles (ms) from pgbench --log files, and the number of transactions logged as failed.

    Per-transaction log lines are `client_id transaction_no time script_no time_epoch time_us [...]`
    where `time` is the latency in microseconds, or "failed" / "skipped". Under -R `time` counts from the
    transaction's scheduled start, so with -C it holds the wait for the schedule, the connection (TLS and
    authentication included) and the query."""
    lat: list[int] = []
    failed = 0
    for path in glob.glob(str(logdir / "tx.*")):
        with open(path) as f:
            for line in f:
                parts = line.split(" ", 3)
                if len(parts) < 3:
                    continue
                field = parts[2]
                if field.isdigit():
                    lat.append(int(field))
                elif field == "failed":
                    failed += 1
    if not lat:
        return tuple(None for _ in qs), failed
    lat.sort()
    return tuple(lat[max(0, math.ceil(q * len(lat)) - 1)] / 1000.0 for q in qs), failed


# ----------------------------------------------------------------------------------------------
# report


def storm_rows(out: str) -> list[Storm]:
    """The static and auth_query rows of login_storm.py --json's last JSON line; ValueError without one."""
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        raise ValueError("no JSON line")
    kinds = json.loads(lines[-1])["kinds"]
    fields = [f.name for f in dataclasses.fields(Storm) if f.name != "kind"]
    return [Storm(k, **{f: kinds[k][f] for f in fields}) for k in ("static", "auth_query")]


def storm_table(bench: Bench) -> list[str]:
    """The login-storm section of the report (empty when it did not run)."""
    a = bench.args
    if not bench.storm and not bench.storm_error:
        return []
    out = [
        "## Login storm: static vs auth_query users",
        "",
        f"`scripts/login_storm.py`: {a.login_storm_rate} new connections per second for {a.login_storm} s a pass "
        "through one pgdoorman (its own throwaway PostgreSQL; md5, `select 1`, close; 50 users), static users "
        "and auth_query users (a `SECURITY DEFINER` lookup over `pg_shadow`) in the same run, two passes of "
        "each interleaved (static, auth_query, auth_query, static). A row is both passes together, the first "
        "pass's server connections and auth_query lookups included. **p99 login** is connect until "
        "ReadyForQuery as the client sees it; **pooler CPU per login** is the pooler process's CPU time over "
        "the passes divided by the logins.",
        "",
    ]
    if bench.storm_error:
        return out + [f"Not measured: {_md(bench.storm_error)}", ""]
    out += ["| users | logins | failed | p50 login ms | p99 login ms | pooler CPU µs/login |",
            "|---|---:|---:|---:|---:|---:|"]
    for r in bench.storm:
        out.append(f"| {r.kind} | {fmt(r.logins, thousands=True)} | {r.errors} | {fmt(r.p50_ms, 2)} "
                   f"| {fmt(r.p99_ms, 2)} | {fmt(r.cpu_us_per_login, 0)} |")
    return out + [""]


def fmt(x: float | int | None, digits: int = 1, thousands: bool = False) -> str:
    if x is None:
        return "–"
    if thousands:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def failed_text(c: Cell) -> str:
    parts = [] if c.failed is None else [str(c.failed)]
    if c.aborted_clients:
        parts.append(f"{c.aborted_clients} clients aborted")
    elif c.note == "run aborted":
        parts.append("run aborted")
    return ", ".join(parts) if parts else "–"


def one_line(c: Cell) -> str:
    s = (
        f"{c.status}: tps={fmt(c.tps, thousands=True)} avg={fmt(c.lat_ms, 3)}ms p99={fmt(c.p99_ms, 3)}ms "
        f"failed={failed_text(c)} pooler={fmt(c.pooler_us)}us/tx foreign={fmt(c.foreign_cores, 2)} "
        f"attempts={c.attempts}"
    )
    if c.status != "ok" and (c.note or c.errors):
        s += f" [{'; '.join(filter(None, [c.note, *c.errors[-2:]]))}]"
    return s


def headline_connect_s(clients: int) -> int:
    """Seconds of -T set aside for the headline cell's logins (10,000 TLS logins: 17-25 s seen on a busy box)."""
    return max(10, clients // 250)


def tps_text(c: Cell) -> str:
    if c.status == "error" and c.tps is None:
        return "error: " + _md("; ".join(filter(None, [c.note, *c.errors[-1:]])))
    return fmt(c.tps, thousands=True) + (" †" if c.contaminated else "") + (" (FAILED)" if c.status != "ok" else "")


def bouncer_label(bench: Bench, target: str) -> str:
    m = re.match(r"PgBouncer (\S+)", bench.versions.get(target, ""))
    return f"PgBouncer {m.group(1)} (`{target}`)" if m else f"`{target}`"


def _ratio(x: float | None, y: float | None, digits: int = 2) -> str:
    return f"{x / y:.{digits}f}×" if x is not None and y else "–"


def comparisons(bench: Bench, cells: list[Cell]) -> list[str]:
    """pgdoorman against each PgBouncer of the same cell in this run: the headline's target (tps ratio ≥ 1.0
    and p99 no worse), or the login storm's logins/s, p99 and CPU per login."""
    by = {c.target: c for c in cells if c.status == "ok"}
    me = by.get("pgdoorman")
    out: list[str] = []
    for b in ("pgbouncer", "pgbouncer-new"):
        other = by.get(b)
        if other is None or me is None:
            if any(c.target == b for c in cells):
                out.append(f"* pgdoorman / {bouncer_label(bench, b)}: no ratio (a cell of the pair failed).")
            continue
        if me.kind == "headline":
            met = (me.tps or 0) >= (other.tps or 0) and (me.p99_ms or 0) <= (other.p99_ms or 0)
            out.append(f"* pgdoorman / {bouncer_label(bench, b)}: tps **{_ratio(me.tps, other.tps)}**, p99 "
                       f"{fmt(me.p99_ms, 1)} ms vs {fmt(other.p99_ms, 1)} ms ({_ratio(me.p99_ms, other.p99_ms)}), "
                       f"pooler CPU {_ratio(me.pooler_us, other.pooler_us)} per transaction: target "
                       + ("**met**." if met else "**not met**."))
        else:
            out.append(f"* pgdoorman / {bouncer_label(bench, b)}: logins/s {_ratio(me.tps, other.tps)}, p99 "
                       f"{fmt(me.p99_ms, 2)} ms vs {fmt(other.p99_ms, 2)} ms ({_ratio(me.p99_ms, other.p99_ms)}), "
                       f"pooler CPU per login {fmt(me.pooler_us, 0)} µs vs {fmt(other.pooler_us, 0)} µs "
                       f"({_ratio(me.pooler_us, other.pooler_us)}).")
    return out


def headline_section(bench: Bench) -> list[str]:
    """The headline cells (issue 15), first in the report: each pooler's row, then pgdoorman against each
    PgBouncer (ratios of cells of this run only). Empty when neither ran."""
    a = bench.args
    out: list[str] = []
    if bench.headline:
        n = bench.headline[0].clients
        out += [
            f"## Headline: {n:,} clients{' over TLS' if a.tls else ''}, -M {HEADLINE_MODE}",
            "",
            f"`pgbench -S -M {HEADLINE_MODE} -c {n} -j 2 -T {a.headline_duration + headline_connect_s(n)}` "
            f"({a.headline_duration} s once connected) through each pooler, back to back (how: *Setup and "
            "method* below). Target: pgdoorman at least 1.0× PgBouncer's tps with a p99 latency no worse.",
            "",
            "| target | tps | avg latency ms | p99 latency ms | failed tx | initial connection s | pooler µs/tx |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for c in bench.headline:
            conn_s = c.conn_ms / 1000 if c.conn_ms is not None else None
            out.append(f"| {c.target} | {tps_text(c)} | {fmt(c.lat_ms, 1)} | {fmt(c.p99_ms, 1)} | {failed_text(c)} "
                       f"| {fmt(conn_s, 1)} | {fmt(c.pooler_us)} |")
        out += ["", *comparisons(bench, bench.headline), ""]
    if bench.storm_cells:
        out += [
            "## Headline: login storm over TLS with SCRAM-SHA-256",
            "",
            f"{a.login_storm_rate} new connections per second asked for {a.login_storm} s through each pooler "
            "(fresh processes, back to back): each one a TLS handshake, SCRAM-SHA-256, `select 1`, close "
            "(`pgbench -C -R`; how: *Setup and method* below).",
            "",
            "| target | logins/s done | logins | failed | p50 ms | p99 ms | avg connect ms | pooler µs/login |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c in bench.storm_cells:
            out.append(f"| {c.target} | {tps_text(c)} | {fmt(c.n_tx, thousands=True)} | {failed_text(c)} "
                       f"| {fmt(c.p50_ms, 2)} | {fmt(c.p99_ms, 2)} | {fmt(c.conn_ms, 2)} | {fmt(c.pooler_us, 0)} |")
        out += ["", *comparisons(bench, bench.storm_cells), ""]
    return out


def headline_method(bench: Bench) -> list[str]:
    """The method bullets of the headline cells that ran."""
    a = bench.args
    out: list[str] = []
    if bench.headline:
        n = bench.headline[0].clients
        conn = headline_connect_s(n)
        out.append(
            f"* **Headline cell** (`-c {n}`, `-M {HEADLINE_MODE}`), after the grid on the same pooler processes: "
            f"`-j 2` (two pgbench threads of {n // 2:,} connections each: pgbench 15 waits with ppoll, so "
            "FD_SETSIZE does not limit it, and more threads would only take CPU from the poolers on this "
            f"2-core box) and `-T {a.headline_duration + conn}`. pgbench's -T clock starts before its threads "
            "open their connections (one after another, TLS and md5 login included), so -T is "
            f"{a.headline_duration} s plus {conn} s set aside for the logins; **tps** is pgbench's figure without "
            "the initial connection time, which has its own column. The CPU window runs from "
            f"{max(1.0, round(a.headline_duration * 0.2)):.0f} s after the first progress line (all clients "
            f"connected) to the line at {a.headline_duration + conn - 1} s. The harness raises RLIMIT_NOFILE to "
            f"{bench.nofile or 'the hard limit'} for itself and everything it starts (pgbench needs one descriptor "
            f"per connection, the poolers one per client); both poolers allow {MAX_CLIENTS_POOLER:,} clients, and "
            f"pgdoorman's `query_wait_timeout` is PgBouncer's default, {QUERY_WAIT_TIMEOUT_S} s (pgdoorman's own "
            f"default, 5 s, would end clients that queue longer behind the {a.pool_size} server connections).")
    if bench.storm_cells:
        ws = max(1.0, round(a.login_storm * 0.2))
        out.append(
            f"* **Login storm** (`--login-storm {a.login_storm} --login-storm-rate {a.login_storm_rate}`): fresh "
            f"pooler processes whose one user is role `{SCRAM_ROLE}`, stored by PostgreSQL as a SCRAM-SHA-256 "
            "verifier (PgBouncer: `auth_type = scram-sha-256` with that verifier in its auth_file; pgdoorman: the "
            "verifier as the user's password); both log in to PostgreSQL with the client's SCRAM keys. "
            f"`pgbench -C -R {a.login_storm_rate} -c {STORM_CLIENTS} -j 2 -T {a.login_storm} -M simple -f "
            "select1.sql` over TLS: every transaction opens a new connection (a full TLS handshake: libpq does "
            "not resume sessions; SCRAM-SHA-256), runs `select 1` and closes it. **logins/s done** is pgbench's "
            "tps (including reconnection times); **p50/p99** come from the per-transaction log, where under -R "
            "a latency counts from the scheduled start: the wait for its pgbench thread (pgbench connects "
            "synchronously), the connection and the query; **avg connect ms** is pgbench's average connection "
            "time; **pooler µs/login** is the pooler's CPU in the window (progress lines at "
            f"{ws:.0f} s to {max(ws + 1, a.login_storm - 1):.0f} s) divided by the logins in it.")
    return out


def cell_name(c: Cell) -> str:
    return "login storm" if c.kind == "storm" else f"-M {c.mode} -c {c.clients}"


def ratio_text(c: Cell, base: Cell | None) -> str:
    if base is None or not base.tps or c.tps is None or c.status != "ok" or base.status != "ok":
        return "–"
    return f"{c.tps / base.tps:.2f}×"


def mode_table(cells: list[Cell], mode: str, clients: list[int]) -> list[str]:
    by_key = {(c.target, c.mode, c.clients): c for c in cells}
    new = any(c.target == "pgbouncer-new" for c in cells)
    rows = [
        "| -c | target | tps | avg latency ms | p99 latency ms | failed tx | pooler µs/tx | pgdoorman / pgbouncer tps |"
        + (" pgdoorman / pgbouncer-new tps |" if new else ""),
        "|---:|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if new else ""),
    ]
    for n in clients:
        for target in TARGETS:
            c = by_key.get((target, mode, n))
            if c is None:
                continue
            ratios = ["–", "–"]
            if target == "pgdoorman":
                ratios = [ratio_text(c, by_key.get((b, mode, n))) for b in ("pgbouncer", "pgbouncer-new")]
            ratio = " | ".join(ratios if new else ratios[:1])
            if c.status == "skipped":
                rows.append(f"| {n} | {target} | {c.note} | – | – | – | – | {ratio} |")
                continue
            tps = fmt(c.tps, thousands=True) + (" †" if c.contaminated else "")
            if c.status == "error" and c.tps is None:
                tps = "error: " + _md("; ".join(filter(None, [c.note, *c.errors[-1:]])))
            elif c.status != "ok":
                tps += " (FAILED)"
            pooler = fmt(c.pooler_us) + (
                " (whole run)" if c.cpu_whole_run and c.pooler_us is not None else ""
            )
            rows.append(
                f"| {n} | {target} | {tps} | {fmt(c.lat_ms, 3)} | {fmt(c.p99_ms, 3)} | {failed_text(c)} "
                f"| {pooler if target != 'direct' else '–'} | {ratio} |"
            )
    return rows


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")[:300]


def machine_facts() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    return {
        "nproc": str(NCPU),
        "CPU model": model,
        "memory": mem,
        "kernel": platform.release(),
        "OS": platform.platform(terse=True),
    }


def render(bench: Bench, started: datetime.datetime, finished: datetime.datetime, argv: list[str]) -> str:
    a = bench.args
    v = bench.versions
    out: list[str] = [
        ("# Benchmarks over TLS: pgdoorman vs PgBouncer, clients connecting with sslmode=require" if a.tls
         else "# Benchmarks: pgdoorman vs PgBouncer vs direct PostgreSQL"),
        "",
        f"Generated by `scripts/bench.py` (`make {'bench-tls' if a.tls else 'bench'}`) on {started:%Y-%m-%d %H:%M} UTC "
        f"(finished {finished:%H:%M} UTC). Do not edit by hand: re-run the script.",
        "",
        "Each cell is a single pgbench run on a shared machine. Single runs carry about 3–8 % noise on this "
        "kind of box, so treat differences under about 10 % as noise.",
        "",
        *headline_section(bench),
        "## Machine and versions",
        "",
        "| item | value |",
        "|---|---|",
    ]
    for k, val in machine_facts().items():
        out.append(f"| {k} | {_md(val)} |")
    free = " (free-threaded, GIL disabled)" if bench.free_threaded else ""
    items = [
        ("Python running pgdoorman", f"{v.get('pooler_python')}{free} — `{a.python}`"),
        ("Python running the harness", v.get("harness_python", "")),
        ("PostgreSQL", v.get("postgresql", "")),
        ("pgbench", v.get("pgbench", "")),
        ("PgBouncer (`pgbouncer`: what Debian installs)", v.get("pgbouncer", "")),
        ("PgBouncer (`pgbouncer-new`: scripts/build_pgbouncer.sh)", v.get("pgbouncer-new", "not run")),
        ("pgdoorman", v.get("pgdoorman", "")),
        ("pgdoorman worker_threads", str(bench.workers)),
        ("pool size (every pooler)", str(a.pool_size)),
    ]
    for k, val in items:
        out.append(f"| {k} | {_md(val)} |")
    out += [
        "",
        "## Setup and method",
        "",
        f"* PostgreSQL: throwaway cluster on {HOST}:{PORT_PG}, `max_connections={PG_MAX_CONNECTIONS}`, "
        f"`fsync=off`, `shared_buffers=1GB`; data from `pgbench -i -s {a.scale}` in database `{DB}`, "
        f"owned by role `{ROLE}` with an md5 password.",
        f"* PgBouncer on port {PORT_PGBOUNCER} (`pgbouncer`, Debian's package) and on port {PORT_PGBOUNCER_NEW} "
        "(`pgbouncer-new`, built by `scripts/build_pgbouncer.sh` from Debian trixie's source package): plain "
        f"processes (not the system service), `pool_mode = transaction`, `default_pool_size = {a.pool_size}`, "
        f"`auth_type = md5` with an auth_file, `max_client_conn = {MAX_CLIENTS_POOLER}`"
        + (", `client_tls_sslmode = require` with a self-signed RSA 2048 certificate" if a.tls else "")
        + f"; `pgbouncer-new` also `max_prepared_statements = {PGBOUNCER_MAX_PREPARED}`."
        + (f" **pgbouncer-new was left out of this run:** {_md(bench.unavailable['pgbouncer-new'])}."
           if "pgbouncer-new" in bench.unavailable else ""),
        f"* pgdoorman on port {PORT_PGDOORMAN}: `pool_mode: transaction`, md5 user, `pool_size: {a.pool_size}`, "
        f"`max_connections: {MAX_CLIENTS_POOLER}`, `query_wait_timeout: {QUERY_WAIT_TIMEOUT_S * 1000}` (ms: "
        "PgBouncer's default), connection logging off as in PgBouncer, `worker_threads: "
        f"{bench.workers}`" + (", `tls_mode: require` with the same certificate." if a.tls else "."),
        ("* Direct PostgreSQL is not run with `--tls` (the cluster has no certificate); the poolers reach "
         "PostgreSQL in plain text." if a.tls else
         "* Direct: pgbench straight to PostgreSQL. Direct cells with more clients than "
         f"`max_connections` − {PG_RESERVED} reserved − both pools' server connections are not run "
         f"({DIRECT_TOO_MANY_NOTE})."),
        f"* Every cell of the -M tables: `pgbench -S` (select-only), `-j 2`, `-T {a.duration}`, `-P 1`, over TCP with "
        f"`PGSSLMODE={'require' if a.tls else 'disable'}`. **tps** is pgbench's figure without initial "
        "connection time, **avg latency** is "
        "pgbench's latency average, **p99** is computed from pgbench's per-transaction `--log` files, "
        '**failed tx** is pgbench\'s "number of failed transactions" (plus aborted clients, if any).',
        "* **pooler µs/tx**: the pooler's exact on-CPU time (`/proc/PID/task/*/schedstat`, summed over threads, "
        "user + kernel) over a steady window divided by the transactions in that window. The window runs from "
        f"the progress line at {max(1.0, round(a.duration * 0.2)):.0f} s to the one at "
        f"{max(max(1.0, round(a.duration * 0.2)) + 1, a.duration - 1):.0f} s; transactions in it are rebuilt "
        'from the progress lines. "(whole run)" marks a cell that never reached the window (for instance '
        "an aborted run), where the whole run is used instead.",
        "* Cells are run cell by cell, not target by target: direct, both PgBouncers and pgdoorman at one -M and -c "
        "back to back (every pooler stays up, idle while another is measured), so that slow drifts of the "
        "machine hit both sides of a ratio alike.",
        f"* All our processes (postmaster and backends, poolers, pgbench) run at nice {NICE}. Before each cell "
        f"the script waits up to {a.wait_quiet:.0f} s for the machine to be idle (below {a.max_foreign} busy "
        "cores). Foreign CPU (machine busy minus our processes) is measured in the window; above "
        f"{a.max_foreign} cores the cell is re-run, up to {a.retries} more time(s). **†** marks a cell where "
        "every attempt was contaminated (the least contaminated one is shown).",
        "* `-M prepared` through a PgBouncer older than 1.21 (Debian 12's 1.18) is not run: prepared statements in "
        "transaction mode arrived in PgBouncer 1.21 (`max_prepared_statements`). Through `pgbouncer-new` and "
        "pgdoorman it is run and any failure is reported as such.",
        "* Charts: `scripts/bench.py` draws tps and pooler CPU per transaction by client count, one PNG per "
        "protocol, with matplotlib (a benchmark-only dependency: `scripts/bench-requirements.txt`, installed "
        "into .venv by `make bench`)." + (f" Not drawn in this run: {bench.charts_note}" if bench.charts_note else ""),
        (f"* Idle clients: a fresh pooler process; `scripts/idle_clients.py` logs in {a.idle_clients:,} clients "
         "(StartupMessage, md5 password, up to ReadyForQuery) and holds them idle. KiB per idle client = "
         f"(VmRSS with the clients − VmRSS before) / clients, read 2 s after the last login. Afterwards "
         "`SELECT 1` runs on 20 random idle clients to prove they are alive." if a.idle_clients else
         "* Idle clients: not measured in this run (`scripts/idle_clients.py` speaks plain TCP only)."),
        *headline_method(bench),
        "",
        "## Commands",
        "",
        "```sh",
        "# this report",
        shlex.join(
            [
                os.path.relpath(sys.executable, REPO)
                if sys.executable.startswith(str(REPO))
                else sys.executable,
                "scripts/bench.py",
                *argv,
            ]
        ),
        "# what it ran ($TMP is its throwaway directory, $LOGDIR a per-cell directory in it)",
        *bench.commands,
    ]
    seen: list[str] = []
    for c in bench.cells:
        if c.cmd:
            key = re.sub(r"-c \d+ -j \d+ ", "-c N -j 2 ", c.cmd.replace(str(bench.tmp), "$TMP"))
            if key not in seen:
                seen.append(key)
    if seen:
        out.append(f"# pgbench cells: N in {{{','.join(map(str, a.clients))}}} (-j 1 when N is 1)")
        out += seen
    for kind, title in (("headline", "# the headline cell"), ("storm", "# the login storm (TLS + SCRAM)")):
        cmds = list(dict.fromkeys(c.cmd.replace(str(bench.tmp), "$TMP") for c in bench.headline + bench.storm_cells
                                  if c.kind == kind and c.cmd))
        out += [title, *cmds] if cmds else []
    out += ["```", ""]
    for mode in a.modes:
        cells = [c for c in bench.cells if c.mode == mode]
        if not cells:
            continue
        out += [f"## -S -M {mode}", ""] + mode_table(cells, mode, a.clients) + [""]
        if mode in bench.charts:
            out += [f"![-S -M {mode}: tps and pooler CPU per transaction by clients]({bench.charts[mode]})", ""]
    if bench.idle:
        out += [
            "## Idle clients: memory",
            "",
            "| pooler | idle clients logged in | VmRSS before KiB | VmRSS with clients KiB | KiB per idle client "
            "| login time s | liveness check | status |",
            "|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for i in bench.idle:
            out.append(
                f"| {i.target} | {fmt(i.logged_in, thousands=True)} | {fmt(i.rss_before, thousands=True)} "
                f"| {fmt(i.rss_after, thousands=True)} | {fmt(i.kib_per_client, 2)} | {fmt(i.login_s, 2)} "
                f"| {i.alive or '–'} | {i.status}{': ' + _md('; '.join(i.errors)) if i.errors else ''} |"
            )
        out.append("")
    out += storm_table(bench)
    measured = sorted(
        (c for c in bench.cells if c.status != "skipped" and (c.tps is not None or c.pooler_us is not None)),
        key=lambda c: (TARGETS.index(c.target), a.modes.index(c.mode), a.clients.index(c.clients)),
    )
    extra = [c for c in bench.headline + bench.storm_cells if c.tps is not None or c.pooler_us is not None]
    out += (
        []
        if not measured + extra
        else [
            "## CPU detail per cell",
            "",
            'µs of CPU per transaction in the window, by process. "box" is everything the machine did '
            "(2 cores = 2,000,000 µs/s); foreign is what other work on the machine used.",
            "",
            "| target | -M | -c | tps | pgbench µs/tx | postgres µs/tx | pooler µs/tx | box µs/tx | busy cores "
            "| foreign cores | idle before (cores) | window s | attempts |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    )
    for c in measured + extra:
        mode = c.mode if c.kind == "grid" else f"{c.mode} ({'headline' if c.kind == 'headline' else 'login storm'})"
        out.append(
            f"| {c.target} | {mode} | {c.clients} | {fmt(c.tps, thousands=True)}{' †' if c.contaminated else ''} "
            f"| {fmt(c.pgbench_us)} | {fmt(c.postgres_us)} | {fmt(c.pooler_us)} | {fmt(c.box_us)} "
            f"| {fmt(c.busy_cores, 2)} | {fmt(c.foreign_cores, 2)} | {fmt(c.pre_busy, 2)} | {fmt(c.window_s, 1)} "
            f"| {c.attempts} |"
        )
    problems = [c for c in bench.cells + bench.headline + bench.storm_cells if c.status in ("failed", "error")]
    if problems or bench.start_errors:
        out += ["", "## Failures and errors", ""]
        for t, err in bench.start_errors.items():
            out += [
                f"* **{t} did not start:**",
                "",
                "  ```",
                *("  " + ln for ln in err.splitlines()),
                "  ```",
            ]
        for c in problems:
            detail = "; ".join(filter(None, [c.note, *c.errors]))
            out.append(f"* {c.target} {cell_name(c)}: {c.status}, rc={c.rc}: {_md(detail)}")
    bad = bench.bad_results()
    out += [
        "",
        "## Verdict",
        "",
        (
            "Every transaction through the poolers succeeded."
            if not bad
            else "**Not a clean benchmark:** " + "; ".join(_md(b) for b in bad) + "."
        ),
        "",
    ]
    return "\n".join(out)


CHART_STYLE = {
    "direct": ("#7f7f7f", "s", "direct PostgreSQL"),
    "pgbouncer": ("#1f77b4", "o", "PgBouncer (Debian)"),
    "pgbouncer-new": ("#9467bd", "D", "PgBouncer (current)"),
    "pgdoorman": ("#ff7f0e", "^", "pgdoorman"),
}


def chart_label(bench: Bench, target: str) -> str:
    v = bench.versions
    if target.startswith("pgbouncer"):
        m = re.match(r"PgBouncer (\S+)", v.get(target, ""))
        where = "Debian package" if target == "pgbouncer" else "built from Debian trixie source"
        return f"PgBouncer {m.group(1)} ({where})" if m else CHART_STYLE[target][2]
    if target == "pgdoorman":
        py = v.get("pooler_python", "?") + ("t" if bench.free_threaded else "")
        return f"pgdoorman (Python {py}, {bench.workers} worker{'s' if bench.workers != 1 else ''})"
    return CHART_STYLE[target][2]


def draw_charts(bench: Bench, report: Path) -> None:
    """One PNG per -M mode next to the report (img/<report stem>-<mode>.png): tps and the pooler's CPU per
    transaction against the client count, one line per target. Sets bench.charts (mode -> path relative to the
    report) or bench.charts_note (why none were drawn)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        bench.charts_note = f"matplotlib is not importable ({exc}; pip install -r scripts/bench-requirements.txt)."
        print(f"charts: {bench.charts_note}", file=sys.stderr)
        return
    a = bench.args
    img = report.parent / "img"
    for mode in a.modes:
        cells = [c for c in bench.cells if c.mode == mode and c.status == "ok" and c.tps is not None]
        if not cells:
            continue
        fig, (ax_tps, ax_cpu) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
        for target in TARGETS:
            pts = sorted((c.clients, c.tps, c.pooler_us) for c in cells if c.target == target)
            if not pts:
                continue
            color, marker, _ = CHART_STYLE[target]
            label = chart_label(bench, target)
            xs = [p[0] for p in pts]
            ax_tps.plot(xs, [p[1] for p in pts], color=color, marker=marker, label=label)
            cpu = [(p[0], p[2]) for p in pts if p[2] is not None]
            if target != "direct" and cpu:
                ax_cpu.plot([p[0] for p in cpu], [p[1] for p in cpu], color=color, marker=marker, label=label)
        for ax, title, unit in ((ax_tps, "throughput", "transactions per second"),
                                (ax_cpu, "pooler CPU per transaction", "µs of CPU per transaction")):
            ax.set_xscale("log")
            ax.set_xticks(a.clients, [str(n) for n in a.clients])
            ax.minorticks_off()
            ax.set_xlabel("pgbench clients (-c)")
            ax.set_ylabel(unit)
            ax.set_title(title)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
        handles, labels = ax_tps.get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize="small", frameon=False)
        tls = ", clients over TLS" if a.tls else ""
        fig.suptitle(f"pgbench -S -M {mode}{tls}: pool size {a.pool_size}, {NCPU} cores, {a.duration} s per cell")
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        img.mkdir(parents=True, exist_ok=True)
        path = img / f"{report.stem}-{mode}.png"
        fig.savefig(path, metadata={"Software": None})
        plt.close(fig)
        bench.charts[mode] = os.path.relpath(path, report.parent)
        print(f"wrote {path}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, help="seconds per pgbench cell (-T); default 15, 5 with --quick")
    ap.add_argument(
        "--clients", help="comma-separated client counts; default 10,100,1000 (10,100 with --quick)"
    )
    ap.add_argument("--modes", default="simple,extended,prepared", help="comma-separated pgbench -M modes")
    ap.add_argument(
        "--quick", action="store_true", help="smoke test: 5 s cells, 10 and 100 clients, 2,000 idle"
    )
    ap.add_argument(
        "--only", help="run only these targets: pgdoorman, pgbouncer, pgbouncer-new, direct (comma-separated)"
    )
    ap.add_argument(
        "--pgbouncer-new",
        help="a PgBouncer 1.21+ binary for the pgbouncer-new column (default: scripts/build_pgbouncer.sh builds "
        "or reuses one in /var/cache/pgdoorman)",
    )
    ap.add_argument("--no-charts", dest="charts", action="store_false", help="do not draw the PNG charts")
    ap.add_argument(
        "--python",
        default=str(REPO / ".venv" / "bin" / "python"),
        help="interpreter that runs pgdoorman (e.g. a free-threaded 3.13t)",
    )
    ap.add_argument(
        "--workers", type=int, help="pgdoorman worker_threads (default: nproc if free-threaded, else 1)"
    )
    ap.add_argument("--pool-size", type=int, default=20, help="server connections per pool, both poolers")
    ap.add_argument(
        "--idle-clients",
        type=int,
        help="idle clients for the memory test (0 skips it); default 10000, 2000 with --quick",
    )
    ap.add_argument(
        "--login-storm",
        type=int,
        help="seconds a pass of the login-storm cell; 0 skips it. Without --tls: scripts/login_storm.py, static vs "
        "auth_query users through pgdoorman, default 5 (3 with --quick). With --tls: pgbench -C -R through every "
        "pooler, TLS + SCRAM-SHA-256 logins, default 10 (5 with --quick)",
    )
    ap.add_argument("--login-storm-rate", type=int,
                    help="new connections per second in it (default 500; 100 with --tls, where a libpq client spends "
                    "about 4 ms of CPU on each TLS + SCRAM login)")
    ap.add_argument("--headline-clients", type=int,
                    help=f"clients of the headline cell (-M {HEADLINE_MODE} through every pooler, after the grid; "
                    "0 skips it); default 10000 with --tls (1000 with --quick), else 0")
    ap.add_argument("--headline-duration", type=int,
                    help="seconds of the headline cell after its clients have connected (pgbench -T is this plus "
                    "clients/250 s, at least 10, for the logins); default 20, 10 with --quick")
    ap.add_argument("--scale", type=int, default=10, help="pgbench -i -s")
    ap.add_argument("--port-base", type=int, default=PORT_PG,
                    help=f"PostgreSQL's port; the poolers take the next three (default {PORT_PG})")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        help="max seconds to wait for an idle box before a cell (default 60, 10 with --quick)",
    )
    ap.add_argument(
        "--max-foreign", type=float, default=0.15, help="foreign CPU cores that contaminate a cell"
    )
    ap.add_argument("--retries", type=int, help="re-runs of a contaminated cell (default 2, 0 with --quick)")
    ap.add_argument("--start-timeout", type=float, default=30.0, help="seconds for a pooler to answer")
    ap.add_argument(
        "--tls",
        action="store_true",
        help="clients reach both poolers over TLS (pgbench sslmode=require, a throwaway self-signed certificate, "
        "tls_mode require / client_tls_sslmode require); direct PostgreSQL and the idle-client test are left out; "
        "report in docs/benchmarks-tls.md",
    )
    ap.add_argument("--out", help="report path (default docs/benchmarks.md, docs/benchmarks-tls.md with --tls)")
    ap.add_argument("--json", help="also write the raw results as JSON to this path")
    ap.add_argument("--keep", action="store_true", help="keep the throwaway directory (logs) for debugging")
    ap.add_argument("--src", help="run the pgdoorman package of this checkout (a worktree of another commit, for "
                    "before/after comparisons of the same run method); default: this one")
    a = ap.parse_args(argv)
    a.out = a.out or str(REPO / "docs" / ("benchmarks-tls.md" if a.tls else "benchmarks.md"))
    if os.sep in a.python:
        a.python = os.path.abspath(a.python)  # pgdoorman runs in the throwaway directory
    a.duration = a.duration or (5 if a.quick else 15)
    a.clients = [int(x) for x in (a.clients or ("10,100" if a.quick else "10,100,1000")).split(",") if x]
    a.modes = [m for m in a.modes.split(",") if m]
    a.only = [t for t in (a.only or ",".join(TARGETS)).split(",") if t]
    for t in a.only:
        if t not in TARGETS:
            ap.error(f"unknown target {t!r} (choose from {', '.join(TARGETS)})")
    for m in a.modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r} (choose from {', '.join(MODES)})")
    if a.idle_clients is None:
        a.idle_clients = 0 if a.tls else 2000 if a.quick else 10000
    if a.login_storm is None:
        a.login_storm = (5 if a.quick else 10) if a.tls else 3 if a.quick else 5
    if a.login_storm_rate is None:
        a.login_storm_rate = 100 if a.tls else 500
    if a.headline_clients is None:
        a.headline_clients = (1000 if a.quick else 10000) if a.tls else 0
    if a.headline_duration is None:
        a.headline_duration = 10 if a.quick else 20
    if a.tls:
        a.only = [t for t in a.only if t != "direct"]  # the benchmark cluster runs without TLS
    if a.wait_quiet is None:
        a.wait_quiet = 10.0 if a.quick else 60.0
    if a.retries is None:
        a.retries = 0 if a.quick else 2
    if min(a.duration, a.headline_duration, a.login_storm or 3) < 3:
        ap.error("--duration, --headline-duration and --login-storm must be at least 3 s (the CPU window needs "
                 "a steady part)")
    return a


def _on_signal(signum: int, _frame: object) -> None:
    raise Interrupted(f"signal {signum}")


def set_ports(base: int) -> None:
    """--port-base: PostgreSQL on `base`, PgBouncer, pgdoorman and the current PgBouncer on the next three."""
    global PORT_PG, PORT_PGBOUNCER, PORT_PGDOORMAN, PORT_PGBOUNCER_NEW
    PORT_PG, PORT_PGBOUNCER, PORT_PGDOORMAN, PORT_PGBOUNCER_NEW = base, base + 1, base + 2, base + 3
    PORTS.update({"direct": PORT_PG, "pgbouncer": PORT_PGBOUNCER, "pgbouncer-new": PORT_PGBOUNCER_NEW,
                  "pgdoorman": PORT_PGDOORMAN})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    set_ports(args.port_base)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    # Started in the background by a non-interactive shell, SIGINT arrives ignored; we still want it to stop us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    bench = Bench(args)
    if args.src:
        bench.pgdoorman_src = Path(args.src).resolve()
    started = datetime.datetime.now(datetime.UTC)
    status = 0
    interrupted = False
    try:
        bench.run()
    except StartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = 2
    except (KeyboardInterrupt, Interrupted):
        interrupted = True
        print("\ninterrupted: stopping everything", file=sys.stderr)
    finally:
        bench.cleanup()
    if interrupted:
        return 130
    finished = datetime.datetime.now(datetime.UTC)
    if bench.cells and args.charts:
        draw_charts(bench, Path(args.out))
    if bench.cells or bench.idle or bench.storm or bench.storm_error or bench.headline or bench.storm_cells:
        report = render(bench, started, finished, argv)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
        print()
        first = min((report.index(h) for h in ("## Headline", "## -S") if h in report), default=0)
        print(report[first:])
        print(f"wrote {args.out}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "versions": bench.versions,
                    "cells": [dataclasses.asdict(c) for c in bench.cells],
                    "headline": [dataclasses.asdict(c) for c in bench.headline],
                    "login_storm_tls": [dataclasses.asdict(c) for c in bench.storm_cells],
                    "idle": [
                        dataclasses.asdict(i) | {"kib_per_client": i.kib_per_client} for i in bench.idle
                    ],
                    "login_storm": [dataclasses.asdict(r) for r in bench.storm],
                    "start_errors": bench.start_errors,
                    "unavailable": bench.unavailable,
                },
                indent=1,
            )
        )
    bad = bench.bad_results()
    if bad:
        print("FAILED: " + "; ".join(bad), file=sys.stderr)
        return max(status, 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
