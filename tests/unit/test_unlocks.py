"""session/unlocks.py: which cleanups a request or login waits for (those in flight when it came, not later
ones), that it goes on at the end of the last of them, on its own worker, or after LIMIT, and that nothing is
noted for a cleanup that releases no advisory lock. The end to end case (a client that reconnects at once finds
its lock free, compared with PostgreSQL) is tests/integration/test_advisory_reconnect.py."""

from __future__ import annotations

import threading
from typing import Any

from pgdoorman.session import unlocks

RELEASE = ["DISCARD TEMP; SELECT pg_catalog.pg_advisory_unlock_all()"]


class Loop:
    def __init__(self) -> None:
        self.now = 5.0
        self.later: list[tuple[float, Any, tuple[Any, ...]]] = []
        self.soon: list[tuple[Any, tuple[Any, ...]]] = []

    def call_later(self, delay: float, fn: Any, *args: Any) -> None:
        self.later.append((delay, fn, args))

    def call_soon_threadsafe(self, fn: Any, *args: Any) -> None:
        self.soon.append((fn, args))


class Worker:
    def __init__(self) -> None:
        self.loop = Loop()


class Pool:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.unlocking: Any = None


class Server:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool


class Client:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.loop = worker.loop
        self.waiting = False
        self.wait_start = 0.0
        self.closed = False
        self.checkouts = 0

    def need_server(self) -> None:
        self.checkouts += 1


def _setup() -> tuple[Pool, Worker, Server, Server]:
    pool = Pool()
    return pool, Worker(), Server(pool), Server(pool)


def test_a_cleanup_that_releases_no_advisory_lock_is_not_waited_for() -> None:
    pool, w, s1, _ = _setup()
    unlocks.begin(s1, ["ROLLBACK", "RESET ROLE; RESET SESSION AUTHORIZATION; RESET ALL"])
    assert pool.unlocking is None
    unlocks.begin(s1, ["DISCARD ALL"])
    assert pool.unlocking is not None
    unlocks.end(s1, w)
    assert pool.unlocking is None


def test_a_request_waits_for_the_cleanups_in_flight_when_it_came_and_no_later_one() -> None:
    pool, w, s1, s2 = _setup()
    c1, c2, other = Client(w), Client(w), Client(w)
    unlocks.begin(s1, RELEASE)
    assert not unlocks.hold(other, pool, memoryview(b"Q\0\0\0\rselect 1\0"))  # names no advisory lock
    assert unlocks.hold(c1, pool, memoryview(b"Q\0\0\0\x30select pg_try_advisory_lock(4711)\0"))
    assert c1.waiting and c1.wait_start == 5.0
    unlocks.begin(s2)  # (its client left while our query runs on it)
    assert unlocks.hold_login(c2, pool)
    unlocks.end(s1, w)
    assert (c1.checkouts, c2.checkouts) == (1, 0)  # c1 did not wait for s2's, which began after it came
    unlocks.end(s2, w)
    assert (c1.checkouts, c2.checkouts) == (1, 1)
    assert pool.unlocking is None
    assert not unlocks.hold_login(Client(w), pool)  # nothing in flight: no wait


def test_the_wait_is_bounded_and_a_client_that_left_is_not_served() -> None:
    pool, w, s1, _ = _setup()
    c1, c2 = Client(w), Client(w)
    unlocks.begin(s1, RELEASE)
    assert unlocks.hold_login(c1, pool) and unlocks.hold_login(c2, pool)
    delay, fn, args = w.loop.later[0]
    assert delay == unlocks.LIMIT
    fn(*args)  # LIMIT passed for c1: it goes on; s1's cleanup is still in flight
    assert c1.checkouts == 1 and pool.unlocking is not None
    fn(*args)  # (its timer again: nothing more)
    assert c1.checkouts == 1
    c2.closed = True
    unlocks.end(s1, w)
    assert c2.checkouts == 0 and pool.unlocking is None


def test_a_client_of_another_worker_goes_on_through_its_own_loop() -> None:
    pool, w, s1, _ = _setup()
    elsewhere = Worker()
    c = Client(elsewhere)
    unlocks.begin(s1, RELEASE)
    assert unlocks.hold_login(c, pool)
    unlocks.end(s1, w)
    assert c.checkouts == 0 and len(elsewhere.loop.soon) == 1
    fn, args = elsewhere.loop.soon[0]
    fn(*args)
    assert c.checkouts == 1
