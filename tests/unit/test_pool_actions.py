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
