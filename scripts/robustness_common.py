"""What scripts/soak.py and scripts/abuse_bench.py share: a throwaway PostgreSQL and the real pooler (the
test suite's helpers in tests/support), the pooler's process figures from /proc, its admin console, and
canary clients that time SELECT 1 while something else abuses the pooler."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import wire  # noqa: E402
from tests.support.cluster import (  # noqa: E402
    ADMIN_PASSWORD,
    ADMIN_USER,
    DBNAME,
    MD5_PASSWORD,
    MD5_USER,
    SCRAM_PASSWORD,
    SCRAM_USER,
    PgCluster,
    deep_merge,
    pooler_config,
    throwaway_cluster,
)
from tests.support.pooler import Pooler, free_port  # noqa: E402

__all__ = [
    "ADMIN_PASSWORD", "ADMIN_USER", "DBNAME", "MD5_PASSWORD", "MD5_USER", "ROOT", "SCRAM_PASSWORD", "SCRAM_USER",
    "Canary", "PgCluster", "PoolerProcess", "admin_rows", "deep_merge", "percentiles", "pooler_config", "proc_stats",
    "raise_nofile", "stack", "throwaway_cluster", "wire",
]


def raise_nofile(needed: int) -> int:
    """Raise RLIMIT_NOFILE (root may raise the hard limit too); the pooler inherits it. Returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(needed, hard)))
        return needed
    target = min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def proc_stats(pid: int) -> dict[str, int]:
    """rss_kib, hwm_kib (peak RSS), fds and threads of a process, from /proc."""
    out = {"rss_kib": 0, "hwm_kib": 0, "fds": 0, "threads": 0}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == "VmRSS":
                    out["rss_kib"] = int(value.split()[0])
                elif key == "VmHWM":
                    out["hwm_kib"] = int(value.split()[0])
                elif key == "Threads":
                    out["threads"] = int(value)
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        pass
    return out


def percentiles(samples: list[float]) -> dict[str, float]:
    """n, p50, p99 and max of latencies in seconds, reported in milliseconds."""
    if not samples:
        return {"n": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    s = sorted(samples)

    def at(q: float) -> float:
        return round(1000 * s[min(len(s) - 1, int(q * len(s)))], 2)

    return {"n": len(s), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": round(1000 * s[-1], 2)}


class PoolerProcess:
    """The real pooler (`python -m pgdoorman CONFIG -l LEVEL`) from a source tree of our choice, so a
    measurement can run an older commit checked out elsewhere (git worktree) against the same harness."""

    def __init__(self, config: dict[str, Any], workdir: str, src: Path = ROOT, level: str = "info") -> None:
        self.cfg = Pooler(config, workdir)  # only for its config writing and port choice
        self.src = src
        self.level = level
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return self.cfg.host

    @property
    def port(self) -> int:
        return self.cfg.port

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log_path(self) -> str:
        return self.cfg.log_path

    def start(self, timeout: float = 20.0) -> PoolerProcess:
        cfg = self.cfg
        if not cfg.port:
            cfg.port = free_port()
        cfg.config["general"]["port"] = cfg.port
        cfg.write_config()
        env = {**os.environ, "PYTHONPATH": str(self.src), "PYTHONUNBUFFERED": "1"}
        with open(cfg.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pgdoorman", cfg.config_path, "-l", self.level],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=cfg.workdir, env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pooler exited with {self.proc.returncode}; see {cfg.log_path}")
            with contextlib.suppress(OSError), socket.create_connection((cfg.host, cfg.port), timeout=0.5):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pooler did not listen within {timeout}s; see {cfg.log_path}")
            time.sleep(0.05)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def stats(self) -> dict[str, int]:
        return proc_stats(self.pid)

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tracebacks(self) -> int:
        return self.log_text().count("Traceback (most recent call last)")

    def connect(self, user: str, password: str, database: str = DBNAME, timeout: float = 10.0) -> wire.WireClient:
        return wire.WireClient.connect(self.host, self.port, user, database, password, timeout=timeout)


def admin_rows(pooler: PoolerProcess, command: str) -> list[dict[str, str | None]]:
    """An admin console command (SHOW POOLS, ...) as a list of {column: value}."""
    with pooler.connect(ADMIN_USER, ADMIN_PASSWORD, "pgdoorman") as c:
        msgs = c.query(command)
        c.terminate()
    cols: list[str] = []
    for t, body in msgs:
        if t == "T":
            cols = wire.parse_row_description(body)
        elif t == "E":
            raise wire.WireError(wire.parse_fields(body))
    return [dict(zip(cols, row, strict=False)) for row in wire.rows(msgs)]


@dataclass
class Canary:
    """Threads that time SELECT 1 through the pooler for as long as they run: `persistent` clients keep one
    session, `reconnecting` ones log in, query and leave each time. Samples are (monotonic time, seconds,
    ok); `window(a, b)` summarises those taken between two instants."""

    pooler: PoolerProcess
    user: str
    password: str
    persistent: int = 2
    reconnecting: int = 1
    pause: float = 0.02
    timeout: float = 10.0
    samples: dict[str, list[tuple[float, float, bool]]] = field(default_factory=lambda: {"persistent": [], "reconnecting": []})
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Canary:
        for i in range(self.persistent):
            self._threads.append(threading.Thread(target=self._run, args=(True,), name=f"canary-p{i}", daemon=True))
        for i in range(self.reconnecting):
            self._threads.append(threading.Thread(target=self._run, args=(False,), name=f"canary-r{i}", daemon=True))
        for th in self._threads:
            th.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(self.timeout + 5)

    def _record(self, kind: str, t0: float, ok: bool, err: str = "") -> None:
        self.samples[kind].append((t0, time.monotonic() - t0, ok))
        if not ok and len(self.errors) < 50:
            self.errors.append(f"{kind}: {err}")

    def _run(self, persistent: bool) -> None:
        kind = "persistent" if persistent else "reconnecting"
        client: wire.WireClient | None = None
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                if client is None:
                    client = self.pooler.connect(self.user, self.password, timeout=self.timeout)
                if client.query_rows("SELECT 1") != [["1"]]:
                    raise RuntimeError("SELECT 1 gave something else")
                if not persistent:
                    client.terminate()
                    client.close()
                    client = None
                self._record(kind, t0, True)
            except (OSError, TimeoutError, wire.WireError, RuntimeError, ValueError) as e:
                self._record(kind, t0, False, f"{type(e).__name__}: {e}")
                if client is not None:
                    client.close()
                client = None
                self._stop.wait(0.2)
            self._stop.wait(self.pause)
        if client is not None:
            client.terminate()
            client.close()

    def window(self, start: float, end: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind, samples in self.samples.items():
            inside = [s for s in list(samples) if start <= s[0] < end]
            out[kind] = {**percentiles([s[1] for s in inside if s[2]]), "errors": sum(1 for s in inside if not s[2])}
        return out


@contextlib.contextmanager
def stack(config_for: Any, src: Path, workdir_prefix: str, settings: dict[str, str] | None = None,
          level: str = "info") -> Iterator[tuple[PgCluster, PoolerProcess]]:
    """A throwaway cluster and a pooler configured by `config_for(cluster)`, both stopped and removed
    afterwards (kept with PGDOORMAN_KEEP_PG=1), also on SIGTERM."""
    import shutil
    import tempfile

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGTERM (and SIGINT, which a shell ignores in background jobs) end the run through the cleanup below.
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    with throwaway_cluster(prefix=workdir_prefix + "pg-", settings=settings) as pg:
        workdir = tempfile.mkdtemp(prefix=workdir_prefix + "pooler-")
        pooler = PoolerProcess(config_for(pg), workdir, src=src, level=level)
        pooler.start()
        try:
            yield pg, pooler
        finally:
            pooler.stop()
            if os.environ.get("PGDOORMAN_KEEP_PG"):
                print(f"kept the pooler's config and log in {workdir}", flush=True)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
