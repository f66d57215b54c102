"""The driver compatibility matrix: starts a throwaway PostgreSQL and pgdoorman (session mode, then
transaction mode, pool_size 3), runs every driver program under tests/drivers/ directly against
PostgreSQL ("direct", which proves the scenario itself) and through each pooler, prints a
driver x scenario x mode table, writes docs/compatibility.md and exits non-zero on any failure.

The -tls modes run the same programs over TLS (DRV_SSL=require: encrypted, certificates not checked)
against a second PostgreSQL that takes only TLS connections over TCP (hostssl): "direct-tls" straight to
it, "transaction-tls" through a pgdoorman in transaction mode with `tls_mode: require` towards the
clients and `server_tls_mode: require` towards PostgreSQL, pool_churn with TLS_CHURN connections.

    python tests/drivers/run_matrix.py [--drivers a,b] [--modes direct,session,transaction,...]
                                       [--scenarios x,y] [--workers N] [--pooler-python PY]
                                       [--doc PATH | --no-doc]

tests/drivers/test_matrix.py (plain modes) and test_matrix_tls.py (-tls modes) are the pytest entry points
over the same Matrix class.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from scenarios import BY_DESIGN_TRANSACTION_MODE, SCENARIO_TABLE, SCENARIOS  # noqa: E402

from tests.support.certs import make_certs, tls_cluster  # noqa: E402
from tests.support.cluster import (  # noqa: E402
    DBNAME,
    MD5_PASSWORD,
    MD5_USER,
    SCRAM_PASSWORD,
    SCRAM_USER,
    PgCluster,
    pooler_config,
    start_test_cluster,
)
from tests.support.pooler import Pooler, free_port  # noqa: E402

MODES = ("direct", "session", "transaction", "direct-tls", "transaction-tls")
TLS_SUFFIX = "-tls"
# pool_churn's connections in the -tls modes: each is a TLS handshake and a SCRAM exchange at both ends.
TLS_CHURN = 200
# The TLS cluster takes TLS connections only over TCP (the drivers' and the pooler's), md5 by the role's
# stored password (SCRAM for the SCRAM role), trust over its Unix socket (the harness's psql).
TLS_HBA = "local all all trust\nhostssl all all 127.0.0.1/32 md5\nhostnossl all all 127.0.0.1/32 reject\n"
POOL_SIZE = 3
BUILD = HERE / "build"
GOCODE = Path("/usr/share/gocode")
PGJDBC_JAR = Path("/usr/share/java/postgresql.jar")
# Seconds per scenario inside a program; the slowest passing one (pool_churn) takes ~5-15s here,
# more on a loaded machine.
SCENARIO_TIMEOUT = 45
# Seconds for one program run; then it is killed and its unreported cells fail.
PROGRAM_TIMEOUT = 240
# A program whose scenarios time out this many times in a row is stopped: a wedged pooler must not
# cost every remaining scenario its full timeout (the matrix has to fit in CI's time budget).
MAX_CONSECUTIVE_TIMEOUTS = 2
LOG_DIR = BUILD / "logs"  # pooler logs of runs with failures are kept here
DOC_PATH = ROOT / "docs" / "compatibility.md"


# --------------------------------------------------------------------------------------------
# Drivers: how to find the toolchain, build the program and run it


def _which(*tools: str) -> str | None:
    missing = [t for t in tools if shutil.which(t) is None]
    return f"{', '.join(missing)} not on PATH" if missing else None


def _quiet(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


_build_lock = threading.Lock()
_built: dict[str, str | None] = {}  # lang -> None when built, else the error text


def _build_once(lang: str, build: Callable[[], str | None]) -> str | None:
    with _build_lock:
        if lang not in _built:
            _built[lang] = build()
        return _built[lang]


def _go_env() -> dict[str, str]:
    gopath = BUILD / "gopath"
    return {
        **os.environ,
        "GO111MODULE": "off",  # Debian's packaged sources, GOPATH mode: nothing is downloaded
        "GOPATH": f"{gopath}:{GOCODE}",
        "GOCACHE": str(BUILD / "gocache"),
        "GOFLAGS": "",
    }


def _build_go() -> str | None:
    src = BUILD / "gopath" / "src"
    src.mkdir(parents=True, exist_ok=True)
    link = src / "drivertests"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(HERE / "go")
    (BUILD / "bin").mkdir(parents=True, exist_ok=True)
    for prog in ("pgx", "pq"):
        proc = _quiet(["go", "build", "-o", str(BUILD / "bin" / prog), f"drivertests/{prog}"], env=_go_env())
        if proc.returncode != 0:
            return f"go build drivertests/{prog} failed: {(proc.stdout + proc.stderr).strip()[-1500:]}"
    return None


def _build_java() -> str | None:
    out = BUILD / "java"
    out.mkdir(parents=True, exist_ok=True)
    proc = _quiet(
        ["javac", "-nowarn", "-d", str(out), "-cp", str(PGJDBC_JAR), str(HERE / "java" / "PgJdbcDriver.java")]
    )
    if proc.returncode != 0:
        return f"javac failed: {(proc.stdout + proc.stderr).strip()[-1500:]}"
    return None


CARGO_REGISTRY = Path("/usr/share/cargo/registry")
RUST_BUILD = BUILD / "rust"


def _cargo() -> str | None:
    # Debian's cargo matches the crates Debian packages; a rustup toolchain on PATH also works.
    return "/usr/bin/cargo" if os.access("/usr/bin/cargo", os.X_OK) else shutil.which("cargo")


def _rust_probe() -> str | None:
    if _cargo() is None:
        return "cargo not installed"
    if not any(CARGO_REGISTRY.glob("tokio-postgres-*")):
        return f"Debian crate sources missing in {CARGO_REGISTRY} (librust-tokio-postgres-dev)"
    return None


def _build_rust() -> str | None:
    # Build from a copy so Cargo.lock (which records Debian's crate versions) stays out of the tree.
    crate = RUST_BUILD / "crate"
    crate.mkdir(parents=True, exist_ok=True)
    for name in ("Cargo.toml", "main.rs"):
        shutil.copyfile(HERE / "rust" / name, crate / name)
    home = RUST_BUILD / "cargo-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        '[source.crates-io]\nreplace-with = "debian"\n'
        f'[source.debian]\ndirectory = "{CARGO_REGISTRY}"\n'
        "[net]\noffline = true\n"
    )
    cargo = _cargo() or "cargo"
    proc = _quiet(
        [
            cargo,
            "build",
            # Release: in a debug build SCRAM's 4096 PBKDF2 rounds make pool_churn's 1,000 logins crawl.
            "--release",
            "--offline",
            "--manifest-path",
            str(crate / "Cargo.toml"),
            "--target-dir",
            str(RUST_BUILD / "target"),
        ],
        env={**os.environ, "CARGO_HOME": str(home)},
    )
    if proc.returncode != 0:
        return f"cargo build failed: {(proc.stdout + proc.stderr).strip()[-1500:]}"
    return None


def _rust_version() -> str:
    lock = RUST_BUILD / "crate" / "Cargo.lock"
    try:
        text = lock.read_text()
    except OSError:
        return ""
    i = text.find('name = "tokio-postgres"')
    ver = text[i:].split("version = ")[1].split("\n")[0].strip('"') if i >= 0 else "?"
    rustc = _quiet([str(Path(_cargo() or "cargo").with_name("rustc")), "--version"]).stdout.strip()
    return f"tokio-postgres {ver} (Debian crate), {rustc}"


@dataclass(frozen=True)
class Driver:
    name: str  # as printed by the program
    short: str  # column header in the tables
    lang: str
    argv: tuple[str, ...]
    probe: Callable[[], str | None]  # None when the toolchain is present, else why not
    build: Callable[[], str | None] = lambda: None  # None when built, else the build error

    def missing(self) -> str | None:
        return self.probe()


def _python_probe(*modules: str) -> Callable[[], str | None]:
    def probe() -> str | None:
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        return f"Python modules missing: {', '.join(missing)}" if missing else None

    return probe


def _node_probe() -> str | None:
    why = _which("node")
    if why:
        return why
    missing = [
        m for m in ("pg", "pg-copy-streams", "postgres") if not (HERE / "node" / "node_modules" / m).is_dir()
    ]
    return f"tests/drivers/node/node_modules lacks {', '.join(missing)} (npm ci)" if missing else None


def _go_probe() -> str | None:
    why = _which("go")
    if why:
        return why
    need = [GOCODE / "src/github.com/jackc/pgx/v4", GOCODE / "src/github.com/lib/pq"]
    missing = [str(p) for p in need if not p.is_dir()]
    return f"Debian Go sources missing: {', '.join(missing)}" if missing else None


def _java_probe() -> str | None:
    return _which("java", "javac") or (None if PGJDBC_JAR.is_file() else f"{PGJDBC_JAR} missing")


def _ruby_probe() -> str | None:
    why = _which("ruby")
    if why:
        return why
    return None if _quiet(["ruby", "-e", "require 'pg'"]).returncode == 0 else "Ruby gem pg missing (ruby-pg)"


def _php_probe() -> str | None:
    why = _which("php")
    if why:
        return why
    code = "exit(class_exists('PDO') && in_array('pgsql', PDO::getAvailableDrivers()) ? 0 : 1);"
    return None if _quiet(["php", "-r", code]).returncode == 0 else "PHP PDO_pgsql missing (php-pgsql)"


PY = sys.executable
PYDIR = HERE / "python"
JAVA_CP = f"{BUILD / 'java'}:{PGJDBC_JAR}"

DRIVERS: list[Driver] = [
    Driver("psycopg3", "pg3", "python", (PY, str(PYDIR / "psycopg3_sync.py")), _python_probe("psycopg")),
    Driver(
        "psycopg3-prepare0",
        "pg3-p0",
        "python",
        (PY, str(PYDIR / "psycopg3_sync.py"), "--prepare-threshold", "0"),
        _python_probe("psycopg"),
    ),
    Driver(
        "psycopg3-async", "pg3-as", "python", (PY, str(PYDIR / "psycopg3_async.py")), _python_probe("psycopg")
    ),
    Driver("psycopg2", "pg2", "python", (PY, str(PYDIR / "psycopg2_driver.py")), _python_probe("psycopg2")),
    Driver("asyncpg", "apg", "python", (PY, str(PYDIR / "asyncpg_driver.py")), _python_probe("asyncpg")),
    Driver(
        "sqlalchemy-psycopg",
        "sa-pg3",
        "python",
        (PY, str(PYDIR / "sqlalchemy_driver.py"), "--dialect", "psycopg"),
        _python_probe("sqlalchemy", "psycopg"),
    ),
    Driver(
        "sqlalchemy-asyncpg",
        "sa-apg",
        "python",
        (PY, str(PYDIR / "sqlalchemy_driver.py"), "--dialect", "asyncpg"),
        _python_probe("sqlalchemy", "asyncpg", "greenlet"),
    ),
    Driver("node-pg", "node-pg", "node", ("node", str(HERE / "node" / "pg_driver.js")), _node_probe),
    Driver("postgres.js", "pg.js", "node", ("node", str(HERE / "node" / "postgres_driver.js")), _node_probe),
    Driver(
        "pgx-v4", "pgx", "go", (str(BUILD / "bin" / "pgx"),), _go_probe, lambda: _build_once("go", _build_go)
    ),
    Driver(
        "lib/pq", "pq", "go", (str(BUILD / "bin" / "pq"),), _go_probe, lambda: _build_once("go", _build_go)
    ),
    Driver(
        "pgjdbc",
        "jdbc",
        "java",
        ("java", "-cp", JAVA_CP, "PgJdbcDriver"),
        _java_probe,
        lambda: _build_once("java", _build_java),
    ),
    Driver(
        "pgjdbc-pt1",
        "jdbc-pt1",
        "java",
        ("java", "-cp", JAVA_CP, "PgJdbcDriver", "--prepare-threshold", "1"),
        _java_probe,
        lambda: _build_once("java", _build_java),
    ),
    Driver("ruby-pg", "ruby-pg", "ruby", ("ruby", str(HERE / "ruby" / "pg_driver.rb")), _ruby_probe),
    Driver("php-pdo", "php-pdo", "php", ("php", str(HERE / "php" / "pdo_driver.php")), _php_probe),
    Driver(
        "tokio-postgres",
        "tokio-pg",
        "rust",
        (str(RUST_BUILD / "target" / "release" / "tokio_postgres_driver"),),
        _rust_probe,
        lambda: _build_once("rust", _build_rust),
    ),
]
DRIVERS_BY_NAME = {d.name: d for d in DRIVERS}

# Drivers the issue asks about that cannot run on this machine, with the reason (for the doc).
NOT_RUN = [
    (
        ".NET (Npgsql)",
        "Npgsql is distributed only through NuGet, which is not reachable from this machine, and "
        "Debian packages neither the .NET SDK nor Npgsql.",
    ),
    (
        "Rust through crates.io",
        "crates.io is not reachable from this machine, so the Rust row (tokio-postgres) is built offline "
        "from the crates Debian packages (librust-tokio-postgres-dev); sqlx and other crates Debian lacks "
        "are not covered.",
    ),
]


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class Cell:
    status: str  # pass | fail | na | missing
    detail: str


@dataclass
class Run:
    driver: str
    mode: str
    cells: dict[str, Cell] = field(default_factory=dict)
    version: str | None = None
    missing: str | None = None  # toolchain missing: nothing ran
    elapsed: float = 0.0
    notes: list[str] = field(default_factory=list)
    pooler_excerpt: list[str] = field(default_factory=list)  # pooler warnings/errors during the run

    def failures(self) -> list[tuple[str, str]]:
        return [(s, c.detail) for s, c in self.cells.items() if c.status == "fail"]


# The user property (pytest's record_property) under which tests/drivers/test_matrix.py reports each run.
MATRIX_PROPERTY = "driver_matrix_run"


def run_to_dict(run: Run) -> dict[str, Any]:
    """A Run as plain data (it travels from a pytest-xdist worker to the controller)."""
    return {
        "driver": run.driver,
        "mode": run.mode,
        "version": run.version,
        "missing": run.missing,
        "notes": list(run.notes),
        "cells": {s: [c.status, c.detail] for s, c in run.cells.items()},
    }


def run_from_dict(data: dict[str, Any]) -> Run:
    cells = {s: Cell(str(st), str(detail)) for s, (st, detail) in data["cells"].items()}
    return Run(data["driver"], data["mode"], cells, data["version"], data["missing"], notes=list(data["notes"]))


def render_recorded(recorded: list[dict[str, Any]]) -> str:
    """render_text() of runs recorded with run_to_dict(), drivers and modes in the matrix's order."""
    runs = {(r.driver, r.mode): r for r in map(run_from_dict, recorded)}
    ran = [d for d in DRIVERS if any(dn == d.name for dn, _ in runs)]
    modes = [mode for mode in MODES if any(md == mode for _, md in runs)]
    modes += sorted({md for _, md in runs} - set(modes))  # labels of other runs (test_matrix_ft.py's)
    return render_text(runs, ran, modes, list(SCENARIOS))


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def health_check(host: str, port: int, wait: float = 8.0) -> str | None:
    """None if a SCRAM client can log in and run SELECT 1 within ``wait`` seconds, else why not."""
    import psycopg  # a test dependency; only the orchestrator needs it

    box: dict[str, str] = {}

    def go() -> None:
        try:
            with psycopg.connect(
                host=host,
                port=port,
                dbname=DBNAME,
                user=SCRAM_USER,
                password=SCRAM_PASSWORD,
                connect_timeout=5,
                autocommit=True,
            ) as conn:
                conn.execute("SELECT 1").fetchone()
        except Exception as exc:  # noqa: BLE001 - reported as text
            box["err"] = (
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            )

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(wait)
    if t.is_alive():
        return f"SELECT 1 through the pooler got no answer within {wait:.0f}s"
    return box.get("err")


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_program(
    driver: Driver,
    mode: str,
    host: str,
    port: int,
    scenarios: list[str],
    churn: int = 1000,
    clients: int = 30,
    timeout: float = PROGRAM_TIMEOUT,
    on_result: Callable[[str, Cell], bool] | None = None,
) -> Run:
    """Runs one driver program against host:port and parses its JSON lines into a Run. A -tls mode runs it
    with DRV_SSL=require and DRV_MODE the mode without the suffix."""
    run = Run(driver.name, mode)
    missing = driver.missing()
    if missing:
        run.missing = missing
        for s in scenarios:
            run.cells[s] = Cell("missing", missing)
        return run
    build_error = driver.build()
    if build_error:
        for s in scenarios:
            run.cells[s] = Cell("fail", build_error)
        return run
    env = {
        **os.environ,
        "DRV_HOST": host,
        "DRV_PORT": str(port),
        "DRV_DB": DBNAME,
        "DRV_USER": SCRAM_USER,
        "DRV_PASSWORD": SCRAM_PASSWORD,
        "DRV_MD5_USER": MD5_USER,
        "DRV_MD5_PASSWORD": MD5_PASSWORD,
        "DRV_MODE": mode.removesuffix(TLS_SUFFIX),
        "DRV_SSL": "require" if mode.endswith(TLS_SUFFIX) else "",
        "DRV_CLIENTS": str(clients),
        "DRV_CHURN": str(churn),
        "DRV_TIMEOUT": str(SCENARIO_TIMEOUT),
        "DRV_ONLY": ",".join(scenarios) if scenarios != SCENARIOS else "",
        "DRV_SCENARIOS_FILE": str(HERE / "scenarios.py"),
        "PYTHONUNBUFFERED": "1",
    }
    start = time.monotonic()
    proc = subprocess.Popen(
        list(driver.argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=str(HERE),
        start_new_session=True,  # so a timeout can kill the program and whatever it spawned
    )
    err_chunks: list[str] = []
    consecutive_timeouts = 0
    stopped_early = False
    err_reader = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read() if proc.stderr else ""))
    err_reader.start()
    # Lines are handled as they arrive so that on_result can react to a hung pooler mid-run.
    killed = threading.Event()
    watchdog = threading.Timer(timeout, lambda: (killed.set(), _killpg(proc.pid)))
    watchdog.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "version" in rec:
                run.version = str(rec["version"])
            elif rec.get("scenario") in scenarios:
                cell = Cell(str(rec["status"]), str(rec.get("detail", "")))
                run.cells[rec["scenario"]] = cell
                restarted = on_result(rec["scenario"], cell) if on_result is not None else False
                timed_out = cell.status == "fail" and "timed out" in cell.detail
                consecutive_timeouts = 0 if (restarted or not timed_out) else consecutive_timeouts + 1
                if consecutive_timeouts >= MAX_CONSECUTIVE_TIMEOUTS:
                    stopped_early = True
                    _killpg(proc.pid)
                    break
        proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            _killpg(proc.pid)
            proc.wait()
        err_reader.join(10)
    err = "".join(err_chunks)
    run.elapsed = time.monotonic() - start
    if driver.lang == "rust" and run.version:
        run.version = _rust_version() or run.version
    for s in scenarios:
        if s not in run.cells:
            if stopped_early:
                run.cells[s] = Cell(
                    "fail",
                    f"not run: the program was stopped after {MAX_CONSECUTIVE_TIMEOUTS} scenario timeouts in a row",
                )
                continue
            why = f"killed after {timeout:.0f}s" if killed.is_set() else f"exited with {proc.returncode}"
            run.cells[s] = Cell("fail", f"no result reported (program {why}); stderr: {_tail(err, 6)}")
    return run


# --------------------------------------------------------------------------------------------
# The environment: PostgreSQL plus one pooler per mode


class Matrix:
    """Owns the PostgreSQL cluster (or borrows one) and the pooler for the current mode."""

    def __init__(
        self,
        pg: PgCluster | None = None,
        workers: int | None = None,
        workdir: str | None = None,
        pooler_python: str | None = None,
    ) -> None:
        self._own_dir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="pgdoorman-drivers-")
        # mkdtemp makes it 0700: the postgres OS user must traverse it to reach the cluster inside.
        os.chmod(self.workdir, 0o711)
        self._own_pg = pg is None
        self._pg = pg
        self.workers = workers
        # The interpreter the poolers run on (the free-threaded build, say); the test process's by default.
        self.pooler_python = os.path.abspath(pooler_python) if pooler_python else sys.executable
        self.pooler: Pooler | None = None
        self.pooler_mode: str | None = None
        self.pooler_error: str | None = None
        self.runs: dict[tuple[str, str], Run] = {}
        self.pooler_logs: dict[str, str] = {}
        self.pooler_logs_all: list[tuple[str, str]] = []
        self.kept_logs: list[Path] = []
        self._pooler_starts = 0
        self._tls: ExitStack | None = None
        self._tls_pg: PgCluster | None = None
        self._server_cert: tuple[str, str] = ("", "")

    @property
    def pg(self) -> PgCluster:
        if self._pg is None:
            # The postgres OS user must reach the cluster directory: not under a private temp dir.
            self._pg = start_test_cluster(os.path.join(self.workdir, "pg"), free_port())
        return self._pg

    @property
    def tls_pg(self) -> PgCluster:
        """The -tls modes' PostgreSQL (TLS_HBA), with throwaway certificates, started on first use."""
        if self._tls_pg is None:
            certs = make_certs(Path(self.workdir) / "certs", "matrix-client")
            self._server_cert = (certs.server_cert, certs.server_key)
            self._tls = ExitStack()
            self._tls_pg = self._tls.enter_context(tls_cluster(certs, TLS_HBA))
        return self._tls_pg

    def _start_pooler(self, mode: str) -> None:
        self.stop_pooler()
        general: dict[str, Any] = {}
        if self.workers is not None:
            general["worker_threads"] = self.workers
        tls = mode.endswith(TLS_SUFFIX)
        pg = self.tls_pg if tls else self.pg
        if tls:
            general.update(tls_certificate=self._server_cert[0], tls_private_key=self._server_cert[1],
                           tls_mode="require", server_tls_mode="require")
        cfg = pooler_config(pg, general=general, pool_mode=mode.removesuffix(TLS_SUFFIX), pool_size=POOL_SIZE)
        self._pooler_starts += 1
        workdir = os.path.join(self.workdir, f"pooler-{mode}-{self._pooler_starts}")
        os.makedirs(workdir, exist_ok=True)
        pooler = Pooler(cfg, workdir, python=self.pooler_python)
        self.pooler_mode = mode
        self.pooler_logs[mode] = pooler.log_path
        self.pooler_logs_all.append((mode, pooler.log_path))
        try:
            pooler.start()
        except Exception as exc:  # noqa: BLE001 - becomes the detail of every cell in this mode
            self.pooler = None
            self.pooler_error = f"pooler did not start: {_tail(str(exc), 12)}"
            return
        self.pooler = pooler
        self.pooler_error = None
        # A pooler that cannot run SELECT 1 would make every program wait out its timeouts.
        why = health_check(pooler.host, pooler.port)
        if why:
            self.pooler_error = f"pooler health check failed: {why}"
            self.stop_pooler()

    def stop_pooler(self) -> None:
        if self.pooler is not None:
            self.pooler.stop()
        self.pooler = None
        self.pooler_mode = None

    def target(self, mode: str) -> tuple[str, int] | str:
        """(host, port) for the mode, or why there is none."""
        if mode == "direct":
            return (self.pg.host, self.pg.port)
        if mode == "direct" + TLS_SUFFIX:
            return (self.tls_pg.host, self.tls_pg.port)
        if self.pooler_mode != mode or self.pooler is None or not self.pooler.running():
            self._start_pooler(mode)
        if self.pooler is None:
            return self.pooler_error or "pooler did not start"
        return (self.pooler.host, self.pooler.port)

    def run(self, driver: Driver, mode: str, scenarios: list[str] | None = None, churn: int = 1000) -> Run:
        scenarios = scenarios or list(SCENARIOS)
        if mode.endswith(TLS_SUFFIX):
            churn = min(churn, TLS_CHURN)
        tgt = self.target(mode)
        if isinstance(tgt, str):
            run = Run(driver.name, mode)
            missing = driver.missing()
            for s in scenarios:
                run.cells[s] = Cell("missing", missing) if missing else Cell("fail", tgt)
            run.missing = missing
        else:
            log_before = len(self.pooler.log()) if self.pooler and not mode.startswith("direct") else 0
            notes: list[str] = []

            def on_result(scenario: str, cell: Cell) -> bool:
                # A scenario that timed out may mean a wedged pooler: check, and restart it on the
                # same port so the program's remaining scenarios and the next drivers get a fresh one.
                if mode.startswith("direct") or self.pooler is None or "timed out" not in cell.detail:
                    return False
                why = health_check(self.pooler.host, self.pooler.port)
                if not why:
                    return False
                self.pooler.stop()
                try:
                    self.pooler.start()
                except Exception as exc:  # noqa: BLE001
                    notes.append(
                        f"after {scenario} timed out the pooler was unresponsive ({why}); restart failed: {_tail(str(exc), 3)}"
                    )
                    return False
                after = health_check(self.pooler.host, self.pooler.port)
                notes.append(
                    f"after {scenario} timed out the pooler was unresponsive ({why}); restarted"
                    + (f", but it is still unhealthy: {after}" if after else "")
                )
                return not after

            run = run_program(driver, mode, tgt[0], tgt[1], scenarios, churn=churn, on_result=on_result)
            run.notes.extend(notes)
            if self.pooler is not None and not mode.startswith("direct"):
                new_log = self.pooler.log()[log_before:]
                # What the pooler had to say about this program's run, minus per-client chatter.
                run.pooler_excerpt = [
                    ln
                    for ln in new_log.splitlines()
                    if any(
                        k in ln for k in ("WARNING", "ERROR", "CRITICAL", "Traceback", "Error", " closed: ")
                    )
                ][-40:]
                if "Traceback" in new_log:
                    run.notes.append("the pooler logged a Python traceback during this run")
                if not self.pooler.running():
                    code = self.pooler.proc.returncode if self.pooler.proc else None
                    run.notes.append(
                        f"the pooler exited (code {code}) during this run; restarted for the next"
                    )
                    for c in run.cells.values():
                        if c.status == "fail":
                            c.detail += f" [pooler exited with code {code}]"
        self.runs[(driver.name, mode)] = run
        return run

    def server_version(self) -> str:
        try:
            return (self._pg or self.tls_pg).psql("SHOW server_version;")
        except Exception as exc:  # noqa: BLE001
            return f"unknown ({exc})"

    def keep_logs(self) -> list[Path]:
        """Copies the pooler logs to tests/drivers/build/logs/ (they outlive the work dir)."""
        kept = []
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for mode, path in self.pooler_logs_all:
            if os.path.exists(path):
                dest = LOG_DIR / f"{stamp}-{mode}-{Path(path).parent.name}.log"
                shutil.copyfile(path, dest)
                kept.append(dest)
        return kept

    def close(self) -> None:
        if any(r.failures() and not r.mode.startswith("direct") for r in self.runs.values()):
            self.kept_logs = self.keep_logs()
        self.stop_pooler()
        if self._tls is not None:
            self._tls.close()
        if self._own_pg and self._pg is not None:
            self._pg.stop()
        if self._own_dir and not os.environ.get("PGDOORMAN_KEEP_DRIVER_RUNS"):
            shutil.rmtree(self.workdir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Rendering

SYMBOL = {"pass": "ok", "fail": "FAIL", "na": "n/a", "missing": "--"}


def _grid(
    runs: dict[tuple[str, str], Run], drivers: list[Driver], mode: str, scenarios: list[str]
) -> list[list[str]]:
    rows = [["scenario", *[d.short for d in drivers]]]
    for s in scenarios:
        row = [s]
        for d in drivers:
            run = runs.get((d.name, mode))
            cell = run.cells.get(s) if run else None
            row.append(SYMBOL.get(cell.status, cell.status) if cell else "")
        rows.append(row)
    return rows


def render_text(
    runs: dict[tuple[str, str], Run], drivers: list[Driver], modes: list[str], scenarios: list[str]
) -> str:
    out: list[str] = []
    for mode in modes:
        grid = _grid(runs, drivers, mode, scenarios)
        widths = [max(len(r[i]) for r in grid) for i in range(len(grid[0]))]
        out.append(f"== {mode} ==")
        for r in grid:
            out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        out.append("")
    fails = [
        (run.driver, run.mode, s, c.detail)
        for run in runs.values()
        for s, c in run.cells.items()
        if c.status == "fail"
    ]
    if fails:
        out.append(f"{len(fails)} failing cells:")
        for d, m, s, detail in fails:
            out.append(f"  {d} / {m} / {s}: {detail}")
    missing = sorted({(run.driver, run.missing) for run in runs.values() if run.missing})
    for d, why in missing:
        out.append(f"  {d}: not run, {why}")
    notes = [(run.driver, run.mode, n) for run in runs.values() for n in run.notes]
    for d, m, n in notes:
        out.append(f"  note {d} / {m}: {n}")
    legend = ", ".join(f"{d.short}={d.name}" for d in drivers)
    out.append(f"legend: ok=pass FAIL=fail n/a=not applicable --=toolchain missing; {legend}")
    return "\n".join(out)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _git_head() -> str:
    proc = _quiet(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def _debian_version() -> str:
    try:
        return Path("/etc/debian_version").read_text().strip()
    except OSError:
        return platform.platform()


def _dpkg_versions(packages: list[str]) -> str:
    proc = _quiet(["dpkg-query", "-W", "-f=${Package} ${Version}\\n", *packages])
    return ", ".join(proc.stdout.split("\n")[:-1]) if proc.stdout else "not installed"


def render_markdown(
    runs: dict[tuple[str, str], Run],
    drivers: list[Driver],
    modes: list[str],
    scenarios: list[str],
    pg_version: str,
    workers: int | None,
) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Driver compatibility",
        "",
        "<!-- Generated by tests/drivers/run_matrix.py; do not edit by hand. -->",
        "",
        f"Generated {now} by `python tests/drivers/run_matrix.py` at commit `{_git_head()}`: every driver program "
        "in `tests/drivers/` runs the same scenarios directly against PostgreSQL (**direct**, which proves the "
        "scenario itself) and through pgdoorman in **session** and **transaction** mode, with "
        f"`pool_size: {POOL_SIZE}` and 30 concurrent clients where a scenario is concurrent"
        + (f", `worker_threads: {workers}`" if workers else "")
        + ". The **-tls** modes run the same programs over TLS (`DRV_SSL=require`: encrypted, the certificate "
        "not checked) against a second PostgreSQL that takes TCP connections only with TLS (`hostssl`): "
        "**direct-tls** straight to it, **transaction-tls** through pgdoorman in transaction mode with "
        "`tls_mode: require` and `server_tls_mode: require`; their `pool_churn` opens "
        f"{TLS_CHURN} connections. Where the driver has the setting (libpq's drivers, tokio-postgres), the "
        "SCRAM role logs in with `channel_binding=require` there: bound (`SCRAM-SHA-256-PLUS`) at both ends.",
        "",
        "Legend: `ok` pass, **FAIL** fail (details below), `n/a` not applicable (reason below), "
        "`--` toolchain missing on the machine that generated this file.",
        "",
        "## Versions tested",
        "",
        f"- PostgreSQL {pg_version}; Debian {_debian_version()}; Python {platform.python_version()} (pooler and Python drivers)",
    ]
    for d in drivers:
        vs = sorted({r.version for (dn, _), r in runs.items() if dn == d.name and r.version})
        lines.append(f"- {d.name}: {'; '.join(vs) if vs else 'not run'}")
    lines.append(
        "- Debian packages: "
        + _dpkg_versions(
            [
                "golang-go",
                "golang-github-jackc-pgx-v4-dev",
                "golang-github-lib-pq-dev",
                "libpostgresql-jdbc-java",
                "ruby-pg",
                "php-pgsql",
                "cargo",
                "librust-tokio-postgres-dev",
            ]
        )
    )
    lines += ["", "## Scenarios", "", "| scenario | what it checks |", "|---|---|"]
    desc = dict(SCENARIO_TABLE)
    for s in scenarios:
        lines.append(f"| `{s}` | {_md_escape(desc[s])} |")
    for mode in modes:
        grid = _grid(runs, drivers, mode, scenarios)
        lines += ["", f"## {mode}", ""]
        lines.append("| " + " | ".join(grid[0]) + " |")
        lines.append("|" + "---|" * len(grid[0]))
        for r in grid[1:]:
            cells = [f"**{c}**" if c == "FAIL" else c for c in r[1:]]
            lines.append(f"| `{r[0]}` | " + " | ".join(cells) + " |")
    lines += ["", "Columns: " + ", ".join(f"`{d.short}` = {d.name}" for d in drivers) + "."]

    na: dict[tuple[str, str], dict[str, list[str]]] = {}
    for (dn, mode), run in runs.items():
        for s, c in run.cells.items():
            if c.status == "na":
                na.setdefault((s, c.detail), {}).setdefault(dn, []).append(mode)
    lines += ["", "## Not applicable", ""]
    for s, why in BY_DESIGN_TRANSACTION_MODE.items():
        lines.append(f"- `{s}` in transaction mode, by design: {why}.")
    for (s, why), where in sorted(na.items()):
        who = ", ".join(
            f"{dn} ({'all modes' if len(ms) == len(modes) else ', '.join(ms)})"
            for dn, ms in sorted(where.items())
        )
        lines.append(f"- `{s}`: {_md_escape(why)} — {who}")

    fails = [
        (run.driver, run.mode, s, c.detail)
        for run in runs.values()
        for s, c in run.cells.items()
        if c.status == "fail"
    ]
    lines += ["", "## Failures", ""]
    if not fails:
        lines.append("None.")
    for d, m, s, detail in fails:
        lines.append(f"- {d} / {m} / `{s}`: {_md_escape(detail)}")
    notes = [(run.driver, run.mode, n) for run in runs.values() for n in run.notes]
    for d, m, n in notes:
        lines.append(f"- note, {d} / {m}: {n}")

    lines += ["", "## Drivers not run here", ""]
    for d, why in NOT_RUN:
        lines.append(f"- {d}: {why}")
    for d in drivers:
        missing = {r.missing for (dn, _), r in runs.items() if dn == d.name and r.missing}
        for why in missing:
            lines.append(f"- {d.name}: toolchain missing when this file was generated ({why}).")
    lines += [
        "",
        "## Running it",
        "",
        "`scripts/install_drivers.sh` (as root) installs Node packages from the committed lock file, Go with "
        "Debian's packaged pgx v4 and lib/pq sources, the JDK and pgjdbc, Ruby pg and PHP PDO_pgsql. Then "
        "`python tests/drivers/run_matrix.py` regenerates this file; `pytest tests/drivers` runs one test "
        "per driver and mode (a missing toolchain fails under `CI=true` and is skipped with its reason otherwise). "
        "Each program reads `DRV_HOST`, `DRV_PORT`, `DRV_DB`, `DRV_USER`, `DRV_PASSWORD`, `DRV_MD5_USER`, "
        "`DRV_MD5_PASSWORD`, `DRV_MODE` (and optionally `DRV_ONLY`, `DRV_CLIENTS`, `DRV_CHURN`, `DRV_TIMEOUT`, "
        "`DRV_SSL`) "
        "and prints one JSON line per scenario: `{driver, scenario, status: pass|fail|na, detail}`.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drivers", help="comma-separated driver names (default: all)")
    ap.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}"
    )
    ap.add_argument("--scenarios", help="comma-separated scenario names (default: all)")
    ap.add_argument(
        "--workers", type=int, default=None, help="pooler worker_threads (default: the test config's)"
    )
    ap.add_argument("--pooler-python", default=None, help="the interpreter the poolers run on (default: this one)")
    ap.add_argument("--churn", type=int, default=1000, help="connections in pool_churn (default 1000)")
    ap.add_argument(
        "--doc", default=None, help=f"markdown output (default {DOC_PATH.relative_to(ROOT)} on a full run)"
    )
    ap.add_argument("--no-doc", action="store_true", help="do not write the markdown file")
    ap.add_argument("--json", default=None, help="also write the raw results as JSON here")
    ap.add_argument("--allow-missing", action="store_true", help="a missing toolchain does not fail the run")
    args = ap.parse_args(argv)

    drivers = DRIVERS
    if args.drivers:
        unknown = [n for n in args.drivers.split(",") if n not in DRIVERS_BY_NAME]
        if unknown:
            ap.error(f"unknown drivers {unknown}; known: {', '.join(DRIVERS_BY_NAME)}")
        drivers = [DRIVERS_BY_NAME[n] for n in args.drivers.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in MODES for m in modes):
        ap.error(f"modes must be among {MODES}")
    scenarios = list(SCENARIOS)
    if args.scenarios:
        scenarios = [s for s in args.scenarios.split(",") if s]
        if any(s not in SCENARIOS for s in scenarios):
            ap.error(f"scenarios must be among {SCENARIOS}")
    full = not args.drivers and not args.scenarios and modes == list(MODES) and args.churn == 1000
    doc = None if args.no_doc else (Path(args.doc) if args.doc else (DOC_PATH if full else None))

    matrix = Matrix(workers=args.workers, pooler_python=args.pooler_python)
    started = time.monotonic()
    try:
        for mode in modes:
            for d in drivers:
                run = matrix.run(d, mode, scenarios, churn=args.churn)
                counts = {st: sum(1 for c in run.cells.values() if c.status == st) for st in SYMBOL}
                summary = ", ".join(f"{n} {st}" for st, n in counts.items() if n)
                print(f"[{mode:<11}] {d.name:<20} {summary} ({run.elapsed:.1f}s)", flush=True)
        pg_version = matrix.server_version()
        logs = dict(matrix.pooler_logs)
    finally:
        matrix.close()
    print()
    print(render_text(matrix.runs, drivers, modes, scenarios))
    print(f"\nmatrix took {time.monotonic() - started:.0f}s")
    for path in matrix.kept_logs:
        print(f"pooler log kept: {path}")
    del logs
    if doc is not None:
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(render_markdown(matrix.runs, drivers, modes, scenarios, pg_version, args.workers))
        print(f"wrote {doc}")
    if args.json:
        data = [
            {
                "driver": r.driver,
                "mode": r.mode,
                "version": r.version,
                "missing": r.missing,
                "notes": r.notes,
                "cells": {s: {"status": c.status, "detail": c.detail} for s, c in r.cells.items()},
            }
            for r in matrix.runs.values()
        ]
        Path(args.json).write_text(json.dumps(data, indent=1))
    bad = [c for r in matrix.runs.values() for c in r.cells.values() if c.status == "fail"]
    missing = [r for r in matrix.runs.values() if r.missing]
    return 1 if bad or (missing and not args.allow_missing) else 0


if __name__ == "__main__":
    raise SystemExit(main())
