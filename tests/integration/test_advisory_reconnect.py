"""A client that held a session advisory lock leaves and connects again at once: its new session finds the lock
free, as on PostgreSQL, where the old backend's exit releases it before a new login is done. Through the pool the
new login is immediate and another server idle, while the old server's cleanup (`pg_advisory_unlock_all()` or
DISCARD ALL) is still on its way: the request for the lock waits for it (session/unlocks.py; found by
test_state_random, no-ps seed 240 of 1,500).

To make "still on its way" certain, the old server's backend is stopped (SIGSTOP) before the client leaves and
let go 0.3 s later; directly on PostgreSQL nothing is stopped (a stopped backend could not exit: the lock would
stay held there). Session and transaction mode (with and without prepared statements; the lock asked for by a
simple query and through the extended protocol), pool_size 2, so that a second server is idle (opened by client
B, whose settings differ).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

from tests.integration.test_transparency import SETTINGS_A, connect
from tests.support.wire import WireClient, bind, execute, frame, parse, rows, sync

pytestmark = pytest.mark.timeout(120)

OTHER = {"DateStyle": "SQL, MDY", "TimeZone": "Asia/Tokyo", "work_mem": "9MB", "application_name": "bee"}
TRY = "select pg_try_advisory_lock(4711)"


def _try_lock(c: WireClient, extended: bool) -> list[list[str | None]]:
    if not extended:
        return c.query_rows(TRY)
    c.send(parse("", TRY), bind(), execute(), sync())
    return rows(c.read_until("Z", timeout=10))


def _run(host: str, port: int, extended: bool, stop: bool, settle: float) -> list[Any]:
    with connect(host, port, OTHER) as b:
        b.query_rows("select 1")  # (through the pool: a second server, idle once B has left)
    time.sleep(0.1)
    a = connect(host, port, SETTINGS_A)
    a.query_rows("select pg_advisory_lock(4711)")
    pid = int(a.query_rows("select pg_backend_pid()")[0][0] or 0)
    time.sleep(settle)  # (0: it leaves while the pooler's check of what pins it may still run on its server)
    go_on = None
    if stop:
        os.kill(pid, signal.SIGSTOP)
        go_on = threading.Timer(0.3, os.kill, (pid, signal.SIGCONT))
        go_on.start()
    try:
        a.send(frame("X"))
        a.close()
        with connect(host, port, SETTINGS_A) as again:
            got: list[Any] = [_try_lock(again, extended)]
            got.append(again.query_rows("select count(*) from pg_locks where locktype = 'advisory'"))
            again.query_rows("select pg_advisory_unlock_all()")
        with connect(host, port, OTHER) as b:  # (another client on either server: nothing of A's)
            got.append(b.query_rows("show datestyle; show timezone; show work_mem; show application_name"))
            got.append(b.query_rows("select count(*) from pg_locks where locktype = 'advisory'"))
    finally:
        if go_on is not None:
            go_on.join()
            os.kill(pid, signal.SIGCONT)
    return got


@pytest.mark.parametrize("mode,ps,extended,settle,workers,size", [
    ("transaction", True, False, 0, 1, 2), ("transaction", True, True, 0, 1, 2),
    ("transaction", True, False, 0.1, 1, 2), ("transaction", False, False, 0, 1, 2),
    ("transaction", False, True, 0.1, 1, 2), ("session", True, False, 0, 1, 2),
    ("transaction", True, False, 0.1, 1, 1), ("session", True, False, 0, 1, 1),
    pytest.param("transaction", True, False, 0.1, 2, 2, marks=pytest.mark.concurrency),
    pytest.param("session", True, False, 0, 2, 2, marks=pytest.mark.concurrency)])
def test_a_client_that_connects_again_finds_its_advisory_lock_released(pg: Any, pooler_factory: Any, mode: str,
                                                                       ps: bool, extended: bool, settle: float,
                                                                       workers: int, size: int) -> None:
    """(`workers` 2: clients spread over two worker threads, so that the cleanup may end on another worker than
    the one of the client waiting for it. `size` 1: one server, the one A used, which A again and B then get:
    the wait for the cleanup and the wait for the server together, as a guard.)"""
    p = pooler_factory(pool_mode=mode, pool_size=size,
                       general={"query_wait_timeout": 20000, "prepared_statements": ps, "worker_threads": workers,
                                "worker_placement": "spread"})
    direct = _run(pg.host, pg.port, extended, False, settle)
    pooled = _run(p.host, p.port, extended, True, settle)
    assert pooled == direct
    assert direct[:2] == [[["t"]], [["1"]]]
