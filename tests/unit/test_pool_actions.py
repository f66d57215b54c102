"""The pool decides under its lock and returns what the worker must do (core/pool.py): a server for the
client now, or the waiter to hand a freed server to, (server, waiter) pairs to hand, whether to open a new
server (its slot already reserved). No sockets: the pool sees clients and servers only through its
protocols (Waiter, Pooled), so small stand-ins drive it; the worker's part is in test_janitor.py and the
integration tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count

from pgdoorman.app import App
from pgdoorman.config import config_from_dict
from pgdoorman.core import pool as pool_mod
from pgdoorman.core.pool import Pool

_ids = count(1)


@dataclass
class Shard:
    id: int


@dataclass(eq=False)
class Client:
    worker: Shard
    waiting: bool = False
    wait_start: float = 0.0


@dataclass(eq=False)
class Server:
    id: int = field(default_factory=lambda: next(_ids))
    created: float = 0.0
    idle_since: float = 0.0
    fallback_until: float = 0.0


def make_pool(pool_size: int, workers: int = 1) -> Pool:
    app = App(config_from_dict({
        "general": {"admin_username": "admin", "admin_password": "admin", "worker_threads": workers},
        "pools": {"app": {"server_host": "127.0.0.1", "server_port": 5432,
                          "users": [{"username": "u", "password": "p", "pool_size": pool_size}]}},
    }, "test.yaml"))
    for w in app.workers:
        w.loop.close()
    return app.pools[("app", "u")]


def test_acquire_takes_a_local_idle_server_and_queues_nobody() -> None:
    pool = make_pool(2)
    s = Server()
    pool.total = 1
    assert pool.release(s, 0, 5.0) is None  # nobody waits: parked idle
    assert s.idle_since == 5.0 and pool.counts()["sv_idle"] == 1
    c = Client(Shard(0))
    assert pool.acquire(c, 0, 6.0) is s
    assert not c.waiting and pool.counts() == {"sv_idle": 0, "sv_total": 1, "sv_login": 0, "cl_waiting": 0}


def test_acquire_queues_and_asks_for_a_server_while_the_pool_has_room() -> None:
    pool = make_pool(2)
    a, b, c = Client(Shard(0)), Client(Shard(0)), Client(Shard(0))
    assert pool.acquire(a, 0, 1.0) == (None, True)  # queued; open a server (slot reserved)
    assert a.waiting and a.wait_start == 1.0
    assert pool.acquire(b, 0, 2.0) == (None, True)
    assert pool.acquire(c, 0, 3.0) is None  # full: it just waits
    assert pool.counts() == {"sv_idle": 0, "sv_total": 2, "sv_login": 2, "cl_waiting": 3}


def test_acquire_pairs_a_waiter_with_an_idle_server_of_another_shard() -> None:
    pool = make_pool(1, workers=2)
    s = Server()
    pool.total = 1
    assert pool.release(s, 1, 0.0) is None  # idle in shard 1
    c = Client(Shard(0))
    assert pool.acquire(c, 0, 1.0) == ([(s, c)], False)
    assert pool.counts()["sv_idle"] == 0 and pool.counts()["cl_waiting"] == 0


def test_release_hands_to_the_oldest_client_still_waiting() -> None:
    pool = make_pool(1)
    gone, old, young = Client(Shard(0)), Client(Shard(0)), Client(Shard(0))
    for c in (gone, old, young):
        pool.acquire(c, 0, 0.0)
    gone.waiting = False  # it left (or timed out) while queued
    s = Server()
    assert pool.release(s, 0, 1.0) is old
    assert pool.counts()["sv_idle"] == 0
    old.waiting = False  # the worker attached s to it
    young.waiting = False
    assert pool.release(s, 0, 2.0) is None and pool.counts()["sv_idle"] == 1


def test_server_gone_and_retry_reserve_a_replacement_only_for_waiters() -> None:
    pool = make_pool(1)
    c = Client(Shard(0))
    assert pool.acquire(c, 0, 0.0) == (None, True)
    assert pool.server_gone(was_connecting=True) is False  # the login failed: no retry loop from here
    assert pool.counts()["sv_total"] == 0
    assert pool.retry_for_waiters() is True and pool.counts()["sv_login"] == 1
    pool.connected(Server())
    assert pool.server_gone() is True  # it died while c still waits: open another
    c.waiting = False
    pool.remove_waiter(c)
    pool.connected(Server())
    assert pool.server_gone() is False


def test_paused_pool_queues_without_opening_and_resume_returns_the_backlog() -> None:
    pool = make_pool(2)
    s = Server()
    pool.total = 1
    pool.release(s, 0, 0.0)
    assert pool.set_paused(True) is None
    c = Client(Shard(0))
    assert pool.acquire(c, 0, 1.0) is None  # not the idle server, no new one: it waits
    assert c.waiting
    assert pool.set_paused(False) == ([(s, c)], False)
    assert pool.set_paused(False) is None  # nothing left to do


def test_expired_waiters_pops_only_those_past_query_wait_timeout() -> None:
    pool = make_pool(1)
    pool.query_wait_timeout = 5.0
    assert pool.expired_waiters(100.0) == []
    old, new = Client(Shard(0)), Client(Shard(0))
    pool.acquire(old, 0, 1.0)
    pool.acquire(new, 0, 8.0)
    assert pool.expired_waiters(10.0) == [old]
    assert old.waiting  # the client's to clear (wait_timed_out, on its worker)
    assert pool.counts()["cl_waiting"] == 1
    new.waiting = False  # it left: dropped from the queue without being reported
    assert pool.expired_waiters(100.0) == [] and not pool.waiters


def _queue(pool: Pool, *spec: tuple[int, float]) -> list[Client]:
    """Clients queued in this order, each (worker, wait start); the pool is full so none gets a server."""
    pool.total = pool.pool_size
    out = []
    for wid, t in spec:
        c = Client(Shard(wid))
        assert pool.acquire(c, wid, t) is None
        out.append(c)
    return out


def _served(pool: Pool, wid: int, now: float) -> Client | None:
    c = pool.release(Server(), wid, now)
    if c is not None:
        c.waiting = False  # the worker attaches the server to it
    return c  # type: ignore[return-value]


def test_release_prefers_a_waiter_of_the_releasing_worker_queued_about_as_early() -> None:
    pool = make_pool(2, workers=2)
    a1, b1, a2, b2 = _queue(pool, (1, 1.000), (0, 1.001), (1, 1.002), (0, 1.003))
    # Worker 0 frees a server: its own oldest waiter b1 (1 ms younger than a1), not a1 on worker 1.
    assert _served(pool, 0, 1.010) is b1
    assert _served(pool, 0, 1.011) is b2
    # None of worker 0's left: the oldest waiter of worker 1 gets it (the server moves there).
    assert _served(pool, 0, 1.012) is a1
    # The overtaken waiter kept its place at the head of the queue.
    assert _served(pool, 1, 1.013) is a2
    assert not pool.waiters


def test_release_serves_the_oldest_waiter_when_the_local_one_queued_much_later() -> None:
    pool = make_pool(2, workers=2)
    slack = pool_mod.LOCAL_SLACK
    old, local = _queue(pool, (1, 1.0), (0, 1.0 + 2 * slack))
    assert _served(pool, 0, 2.0) is old  # the fairness bound: it moves to worker 1
    assert _served(pool, 0, 2.1) is local


def test_release_looks_only_local_scan_waiters_ahead() -> None:
    pool = make_pool(2, workers=2)
    n = pool_mod.LOCAL_SCAN
    queued = _queue(pool, *([(1, 1.0)] * n + [(0, 1.0)] + [(1, 1.0)] + [(0, 1.0)]))
    assert _served(pool, 0, 2.0) is queued[n]  # the LOCAL_SCAN-th waiter after the oldest is looked at
    assert _served(pool, 0, 2.0) is queued[0]  # the next of worker 0 is past the scan: the oldest wins


def test_release_skips_clients_that_stopped_waiting_when_looking_for_a_local_one() -> None:
    pool = make_pool(2, workers=2)
    a, gone, b = _queue(pool, (1, 1.0), (0, 1.001), (0, 1.002))
    gone.waiting = False
    assert _served(pool, 0, 1.01) is b
    assert _served(pool, 0, 1.02) is a
    assert _served(pool, 0, 1.03) is None  # nobody waits any more: parked idle
    assert pool.counts()["sv_idle"] == 1


def test_one_worker_release_is_plain_fifo() -> None:
    pool = make_pool(1)
    assert not pool.local_first
    first, second = _queue(pool, (0, 1.0), (0, 1.001))
    assert _served(pool, 0, 1.01) is first and _served(pool, 0, 1.02) is second


def test_no_waiter_starves_when_one_worker_keeps_releasing_to_its_own() -> None:
    """Worker 0 owns every server and its clients queue again right after each transaction; worker 1's
    client, queued once, is served once nobody of worker 0 queued within LOCAL_SLACK after it."""
    pool = make_pool(3, workers=2)
    slack = pool_mod.LOCAL_SLACK
    t = 1.0
    starved = _queue(pool, (1, t))[0]
    locals_ = _queue(pool, *[(0, t + 0.0001 * i) for i in range(1, 4)])
    served_at = None
    for step in range(1, 1000):
        now = t + step * slack / 10
        c = _served(pool, 0, now)
        if c is starved:
            served_at = now
            break
        assert c in locals_
        assert c.wait_start <= t + slack  # overtaken only by waiters queued within the slack after it
        c.waiting = True  # it runs a transaction and queues again, behind everyone
        c.wait_start = now
        pool.waiters.append(c)
    assert served_at is not None and served_at - t <= 2 * slack
