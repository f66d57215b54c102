"""Plumbing shared by the Python driver programs: connection parameters from the environment, the
JSON-line result protocol, per-scenario time limits (so one hang does not hide the other results),
deterministic test data, and helpers for the checks every driver repeats."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scenarios import SCENARIOS  # noqa: E402

ROWS_LARGE = 100_000
ROWS_COPY = 10_000
BYTEA_SIZE = 10 * 1024 * 1024
BATCH_SIZE = 500
TXNS_PER_CLIENT = 10
PREPARED_REUSES = 20


@dataclass
class Params:
    host: str
    port: int
    db: str
    user: str
    password: str
    md5_user: str
    md5_password: str
    mode: str  # direct | session | transaction
    clients: int
    churn: int
    timeout: float
    only: set[str]
    ssl: bool  # DRV_SSL=require: TLS without certificate checks (the matrix's -tls modes)

    @classmethod
    def from_env(cls) -> Params:
        e = os.environ
        only = {s for s in e.get("DRV_ONLY", "").split(",") if s}
        return cls(
            host=e.get("DRV_HOST", "127.0.0.1"),
            port=int(e.get("DRV_PORT", "5432")),
            db=e.get("DRV_DB", "app"),
            user=e.get("DRV_USER", "app_scram"),
            password=e.get("DRV_PASSWORD", ""),
            md5_user=e.get("DRV_MD5_USER", "app_md5"),
            md5_password=e.get("DRV_MD5_PASSWORD", ""),
            mode=e.get("DRV_MODE", "direct"),
            clients=int(e.get("DRV_CLIENTS", "30")),
            churn=int(e.get("DRV_CHURN", "1000")),
            timeout=float(e.get("DRV_TIMEOUT", "60")),
            only=only,
            ssl=e.get("DRV_SSL", "") == "require",
        )

    def conninfo(self, user: str | None = None, password: str | None = None) -> str:
        return (
            f"host={self.host} port={self.port} dbname={self.db} user={user or self.user} "
            f"password={password if password is not None else self.password} connect_timeout=10"
            + (" sslmode=require" + self._binding(user) if self.ssl else "")
        )

    def _binding(self, user: str | None) -> str:
        # Over TLS the SCRAM role's logins must bind to the channel (SCRAM-SHA-256-PLUS), directly and through
        # the pooler; the md5 role cannot (libpq refuses an md5 login under channel_binding=require).
        return " channel_binding=require" if user in (None, self.user) else ""

    def url(self, scheme: str, user: str | None = None, password: str | None = None) -> str:
        return (
            f"{scheme}://{user or self.user}:{password if password is not None else self.password}"
            f"@{self.host}:{self.port}/{self.db}"
            + (("?ssl=require" if "asyncpg" in scheme else "?sslmode=require" + self._binding(user).replace(" ", "&"))
               if self.ssl else "")
        )


class NotApplicable(Exception):
    """Raised by a scenario that cannot run with this driver or in this mode; the message says why."""


class CheckFailed(AssertionError):
    pass


def check(cond: object, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


def sqlstate_of(exc: BaseException) -> str | None:
    # psycopg 3 and asyncpg use .sqlstate, psycopg2 uses .pgcode; SQLAlchemy wraps the DBAPI error in .orig.
    for obj in (exc, getattr(exc, "orig", None), getattr(exc, "__cause__", None)):
        if obj is None:
            continue
        for attr in ("sqlstate", "pgcode"):
            val = getattr(obj, attr, None)
            if isinstance(val, str) and val:
                return val
    return None


def describe(exc: BaseException) -> str:
    state = sqlstate_of(exc)
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    prefix = f"{type(exc).__name__}" + (f" [{state}]" if state else "")
    return f"{prefix}: {msg}"[:500]


def expect_sqlstate(exc: BaseException, *states: str) -> None:
    got = sqlstate_of(exc)
    if got not in states:
        raise CheckFailed(f"expected SQLSTATE {'/'.join(states)}, got {describe(exc)}") from exc


def unique(prefix: str) -> str:
    return f"drv_{prefix}_{os.getpid()}_{random.randrange(1 << 30)}"


_payload: bytes | None = None


def bytea_payload() -> bytes:
    # Deterministic pseudo-random bytes: every byte value occurs, so escaping bugs show up.
    global _payload
    if _payload is None:
        _payload = random.Random(20240601).randbytes(BYTEA_SIZE)
    return _payload


def md5hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def copy_rows() -> list[tuple[int, str]]:
    return [(i, f"row-{i}\ttab\\back") if i % 1000 == 0 else (i, f"row-{i}") for i in range(ROWS_COPY)]


def client_value(client: int, i: int) -> int:
    return client * 1000 + i


def emit(driver: str, scenario: str, status: str, detail: str) -> None:
    line = json.dumps({"driver": driver, "scenario": scenario, "status": status, "detail": detail})
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def libpq_str(v: int) -> str:
    # libpq reports 150018 for 15.18 (and 90624 for 9.6.24).
    return f"{v // 10000}.{v % 100}" if v >= 100000 else f"{v // 10000}.{v // 100 % 100}.{v % 100}"


def emit_version(driver: str, version: str) -> None:
    sys.stdout.write(json.dumps({"driver": driver, "version": version}) + "\n")
    sys.stdout.flush()


def _selected(params: Params) -> list[str]:
    return [s for s in SCENARIOS if not params.only or s in params.only]


def _outcome(driver: str, name: str, result: Any, exc: BaseException | None, elapsed: float) -> None:
    if exc is None:
        detail = f"{result} ({elapsed:.2f}s)" if result else f"ok ({elapsed:.2f}s)"
        emit(driver, name, "pass", detail)
    elif isinstance(exc, NotApplicable):
        emit(driver, name, "na", str(exc))
    else:
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" at line {tb[-1].lineno}" if tb else ""
        emit(driver, name, "fail", describe(exc) + where)


def run_sync(driver: str, params: Params, table: dict[str, Callable[[], Any]]) -> None:
    """Runs each scenario in a worker thread with a deadline, so a hang becomes one failed cell."""
    hung = False
    for name in _selected(params):
        fn = table.get(name)
        if fn is None:
            emit(driver, name, "fail", "scenario not implemented by this program")
            continue
        box: dict[str, Any] = {}

        def target(fn: Callable[[], Any] = fn, box: dict[str, Any] = box) -> None:
            try:
                box["result"] = fn()
            except BaseException as exc:  # noqa: BLE001 - every error becomes a result line
                box["exc"] = exc

        start = time.monotonic()
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        t.join(params.timeout)
        elapsed = time.monotonic() - start
        if t.is_alive():
            hung = True
            emit(driver, name, "fail", f"timed out after {params.timeout:.0f}s")
            continue
        _outcome(driver, name, box.get("result"), box.get("exc"), elapsed)
    sys.stdout.flush()
    if hung:
        # A hung scenario thread still blocks in the driver; do not wait for it at interpreter exit.
        os._exit(0)


async def run_async(driver: str, params: Params, table: dict[str, Callable[[], Awaitable[Any]]]) -> None:
    for name in _selected(params):
        fn = table.get(name)
        if fn is None:
            emit(driver, name, "fail", "scenario not implemented by this program")
            continue
        start = time.monotonic()
        result: Any = None
        exc: BaseException | None = None
        try:
            result = await asyncio.wait_for(fn(), params.timeout)
        except TimeoutError:
            exc = TimeoutError(f"timed out after {params.timeout:.0f}s")
        except Exception as e:  # noqa: BLE001 - every error becomes a result line
            exc = e
        _outcome(driver, name, result, exc, time.monotonic() - start)


def run_threads(n: int, fn: Callable[[int], None]) -> None:
    """Runs fn(client_id) in n threads at once; raises with a summary if any client failed."""
    errors: list[tuple[int, BaseException]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n)

    def body(cid: int) -> None:
        try:
            barrier.wait(30)
            fn(cid)
        except BaseException as exc:  # noqa: BLE001
            with lock:
                errors.append((cid, exc))

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        cid, first = errors[0]
        raise CheckFailed(f"{len(errors)}/{n} clients failed; client {cid}: {describe(first)}") from first


async def gather_clients(n: int, fn: Callable[[int], Awaitable[None]]) -> None:
    results = await asyncio.gather(*(fn(i) for i in range(n)), return_exceptions=True)
    errors = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
    if errors:
        cid, first = errors[0]
        raise CheckFailed(f"{len(errors)}/{n} clients failed; client {cid}: {describe(first)}") from first


def listen_refused(exc: BaseException) -> bool:
    """A pooler's refusal of LISTEN must say so: SQLSTATE 0A000 (feature_not_supported) or a message
    naming LISTEN. Any other error on LISTEN (say, a prepared-statement bug) is a plain failure."""
    return sqlstate_of(exc) == "0A000" or "listen" in str(exc).lower()


LISTEN_TXN_NA = "impossible by design in transaction mode; the pooler refused LISTEN: {err}"
LISTEN_TXN_SILENT = (
    "LISTEN was accepted silently in transaction mode and the notification was lost; "
    "the pooler must refuse LISTEN with a clear error"
)


def find_activity_sql() -> str:
    # Used to wait until the query to be cancelled really runs: a cancel sent earlier would be lost.
    return "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s"


def sleep_query(marker: str) -> str:
    return f"SELECT pg_sleep(10) /* {marker} */"
