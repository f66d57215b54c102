"""Runs the real pooler (``python -m pgdoorman CONFIG -l debug``) as a subprocess for integration tests:
writes its YAML config, waits until its port accepts connections, stops it, and exposes its log.
"""

from __future__ import annotations

import atexit
import copy
import os
import random
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
# The directory holding the pgdoorman package the poolers run: this checkout, or PGDOORMAN_SRC (tests/conftest.py).
SRC = Path(os.environ.get("PGDOORMAN_SRC") or ROOT)

# Poolers started by this process; whatever a crashed or interrupted test left running is stopped
# when the interpreter exits, so no pooler outlives the test run.
_live: weakref.WeakSet[Pooler] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for pooler in list(_live):
        pooler.stop(timeout=2)


_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _binds(host: str, port: int) -> bool:
    """Whether a TCP socket can bind (host, port) now."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, port))
    except OSError:
        return False
    return True


def _worker_range(low: int, high: int) -> tuple[int, int]:
    """This pytest-xdist worker's share of [low, high] (the whole of it without xdist): the `make test` workers
    never hand out the same port, which a port's bind check alone cannot rule out (the other worker may have
    chosen it and not bound it yet)."""
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if count <= 1 or not worker.startswith("gw") or not worker[2:].isdigit():
        return low, high
    size = (high - low + 1) // count
    start = low + int(worker[2:]) % count * size
    return start, start + size - 1


def free_port(host: str = "127.0.0.1") -> int:
    """A port that binds now, below the kernel's ephemeral range and never handed out before by this
    process. Port 0 would give an ephemeral port, the very range every outgoing connection of the suite
    (clients, pgbench, the pooler's server connections) draws from, so a listener started a moment later
    could find it taken. Under pytest-xdist, from this worker's share of the range only. Still racy against
    other programs, as any free-port scheme."""
    low, high = _worker_range(12000, _ephemeral_low() - 1)
    for _ in range(200 if high - low > 1000 else 0):
        port = random.randint(low, high)
        if port in _handed_out or not _binds(host, port):
            continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_block(n: int, host: str = "127.0.0.1") -> int:
    """The first of `n` consecutive ports that all bind now (a program that takes a base port and the ones
    after it, as scripts/bench.py --port-base), all in this xdist worker's share of the range (free_port's
    base alone could sit at the top of it, the rest in the other worker's). As racy as free_port."""
    high = _worker_range(12000, _ephemeral_low() - 1)[1]
    for _ in range(100):
        base = free_port(host)
        rest = range(base + 1, base + n)
        if base + n - 1 > high or any(p in _handed_out or not _binds(host, p) for p in rest):
            continue
        _handed_out.update(rest)
        return base
    raise RuntimeError(f"no block of {n} free ports on {host}")


def port_free_on_both(host_a: str, host_b: str) -> int:
    """A port free on two loopback addresses at once (servers that must share a port number)."""
    for _ in range(50):
        p = free_port(host_a)
        if _binds(host_b, p):
            return p
    raise RuntimeError(f"no port free on both {host_a} and {host_b}")


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition", interval: float = 0.05) -> Any:
    """Poll `cond` until it returns something true and return that; AssertionError naming `what` and the
    last value after `timeout` seconds. Tests wait with this instead of sleeping a fixed time."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = cond()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last value: {last!r})")
        time.sleep(interval)


def libpq_quote(value: str) -> str:
    """Quote a value for a libpq key=value connection string."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _connect_host(listen_host: str) -> str:
    # A wildcard listen address is reached through loopback.
    if listen_host in ("", "*", "0.0.0.0"):
        return "127.0.0.1"
    if listen_host == "::":
        return "::1"
    return listen_host


class Pooler:
    """One pooler process. ``config`` is PgDoorman's YAML schema as a dict; it is copied."""

    def __init__(
        self,
        config: dict[str, Any],
        workdir: str,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = copy.deepcopy(config)
        self.workdir = workdir
        self.python = python
        self.env = dict(env or {})
        general = self.config.setdefault("general", {})
        general.setdefault("host", "127.0.0.1")
        self.host = _connect_host(str(general["host"]))
        self.port: int = int(general["port"]) if "port" in general else 0
        self.config_path = os.path.join(workdir, "pg_doorman.yaml")
        self.log_path = os.path.join(workdir, "pooler.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Pooler:
        return self.start() if self.proc is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def write_config(self) -> None:
        """(Re)write the YAML file from ``self.config``, e.g. before sending SIGHUP."""
        os.makedirs(self.workdir, exist_ok=True)
        with open(self.config_path, "w", encoding="utf-8") as f:
            yaml.safe_dump(self.config, f, sort_keys=False)

    def start(self, timeout: float = 15) -> Pooler:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("pooler already running")
        if not self.port:
            self.port = free_port()
        self.config["general"]["port"] = self.port
        self.write_config()
        env = {**os.environ, **self.env}
        # The pooler must import this checkout (or PGDOORMAN_SRC) even from a venv where it is not installed.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "ab") as log:
            log.write(f"--- starting pooler on {self.host}:{self.port} ---\n".encode())
            log.flush()
            # New session: a Ctrl-C aimed at pytest must not reach the pooler (SIGINT without a TTY
            # means "binary upgrade" to PgDoorman), and stop() can reap the whole process group.
            self.proc = subprocess.Popen(
                [self.python, "-m", "pgdoorman", self.config_path, "-l", "debug"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=True,
            )
        _live.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"pooler exited with {self.proc.returncode} before accepting connections\n{self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pooler did not accept connections within {timeout}s\n{self.log_tail()}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        if self.proc is None:
            raise RuntimeError("pooler not started")
        self.proc.send_signal(sig)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM (PgDoorman's immediate exit), SIGKILL after ``timeout``; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self.proc.wait(5)
        # Children it spawned (a binary upgrade, say) share its process group: leave none behind.
        self._kill_group()
        return self.proc.returncode

    def _kill_group(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        tail = self.log().splitlines()[-lines:]
        return f"--- {self.log_path} (last {len(tail)} lines) ---\n" + "\n".join(tail)

    def wait_for_log(self, text: str, timeout: float = 10) -> bool:
        """True once ``text`` appears in the log; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            time.sleep(0.05)
        return text in self.log()

    def dsn(self, user: str, password: str, dbname: str) -> str:
        parts = {
            "host": self.host,
            "port": str(self.port),
            "user": user,
            "password": password,
            "dbname": dbname,
            "sslmode": "disable",
        }
        return " ".join(f"{k}={libpq_quote(v)}" for k, v in parts.items())


@contextmanager
def started_in_mode(pg: Any, tmp_path_factory: Any, mode: str, name: str, **config: Any) -> Iterator[Pooler]:
    """A pooler in front of `pg` with `pooler_config(pg, pool_mode=mode, **config)`, its `mode` attribute set (the
    module-scoped fixtures that run each test in session and in transaction mode); stopped on exit."""
    from tests.support.cluster import pooler_config

    p = Pooler(pooler_config(pg, pool_mode=mode, **config), str(tmp_path_factory.mktemp(f"{name}-{mode}"))).start()
    p.mode = mode  # type: ignore[attr-defined]
    try:
        yield p
    finally:
        p.stop()
