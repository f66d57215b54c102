"""The pool decides under its lock and returns what the worker must do (core/pool.py): a server for the
client now, or the waiter to hand a freed server to, (server, waiter) pairs to hand, whether to open a new
server (its slot already reserved). No sockets: the pool sees clients and servers only through its
protocols (Waiter, Pooled), so small stand-ins drive it; the worker's part is in test_janitor.py and the
integration tests."""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import count

import pytest

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
    assert pool.acquire(a, 0, 1.0) == (None, True, 0.0)  # queued; open a server (slot reserved)
    assert a.waiting and a.wait_start == 1.0
    assert pool.acquire(b, 0, 2.0) == (None, True, 0.0)
    assert pool.acquire(c, 0, 3.0) is None  # full: it just waits
    assert pool.counts() == {"sv_idle": 0, "sv_total": 2, "sv_login": 2, "cl_waiting": 3}


def test_acquire_pairs_a_waiter_with_an_idle_server_of_another_shard() -> None:
    pool = make_pool(1, workers=2)
    s = Server()
    pool.total = 1
    assert pool.release(s, 1, 0.0) is None  # idle in shard 1
    c = Client(Shard(0))
    assert pool.acquire(c, 0, 1.0) == ([(s, c)], False, 0.0)
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
    assert pool.acquire(c, 0, 0.0) == (None, True, 0.0)
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
    assert pool.set_paused(False) == ([(s, c)], False, 0.0)
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
    assert pool.expired_waiters(100.0) == [] and not pool.queued


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
    assert not pool.queued


def test_release_serves_the_oldest_waiter_when_the_local_one_queued_much_later() -> None:
    pool = make_pool(2, workers=2)
    slack = pool_mod.LOCAL_SLACK
    old, local = _queue(pool, (1, 1.0), (0, 1.0 + 2 * slack))
    assert _served(pool, 0, 2.0) is old  # the fairness bound: it moves to worker 1
    assert _served(pool, 0, 2.1) is local


def test_release_finds_the_local_waiter_behind_any_number_of_others() -> None:
    """Each worker has its own queue: worker 0's oldest waiter is its queue's head, however many clients of
    other workers queued before it (within LOCAL_SLACK)."""
    pool = make_pool(2, workers=2)
    queued = _queue(pool, *([(1, 1.0)] * 100 + [(0, 1.0)] + [(1, 1.0)] + [(0, 1.0)]))
    assert _served(pool, 0, 2.0) is queued[100]
    assert _served(pool, 0, 2.0) is queued[102]
    assert _served(pool, 0, 2.0) is queued[0]  # none of worker 0's left: the oldest of all


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
        assert pool.acquire(c, 0, now) is None  # it runs a transaction and queues again, behind everyone
    assert served_at is not None and served_at - t <= 2 * slack


# ------------------------------------------------------------------ one waiter queue per worker
def test_release_on_a_worker_with_nobody_waiting_serves_the_oldest_head_of_all() -> None:
    pool = make_pool(3, workers=3)
    b1, a1, b2, a2 = _queue(pool, (2, 1.0), (1, 1.1), (2, 1.2), (1, 1.3))
    assert pool.queues[0] == deque() and len(pool.queues[1]) == len(pool.queues[2]) == 2
    assert [_served(pool, 0, 2.0) for _ in range(4)] == [b1, a1, b2, a2]
    assert _served(pool, 0, 2.0) is None and pool.n_queued == 0 and pool.counts()["sv_idle"] == 1


def test_fifo_within_a_worker() -> None:
    pool = make_pool(2, workers=2)
    mine = _queue(pool, *[(1, 1.0 + i * 0.001) for i in range(5)])
    assert [_served(pool, 1, 2.0) for _ in range(5)] == mine


def test_local_waiter_within_the_slack_wins_and_beyond_it_loses() -> None:
    pool = make_pool(2, workers=3)
    slack = pool_mod.LOCAL_SLACK
    old1, old2, local = _queue(pool, (1, 1.0), (2, 1.0 + slack / 4), (0, 1.0 + slack))
    assert _served(pool, 0, 2.0) is local  # exactly LOCAL_SLACK after the oldest: still served first
    late = _queue(pool, (0, 1.0 + 2 * slack))[0]
    assert _served(pool, 0, 2.0) is old1  # queued more than LOCAL_SLACK after old1: old1 first
    assert _served(pool, 0, 2.0) is old2  # ... and after old2 (LOCAL_SLACK / 4 younger than old1)
    assert _served(pool, 0, 2.0) is late


def test_a_head_that_stopped_waiting_is_skipped_and_dropped() -> None:
    pool = make_pool(2, workers=2)
    gone, other, mine_gone, mine = _queue(pool, (1, 1.0), (1, 1.5), (0, 0.5), (0, 1.2))
    gone.waiting = mine_gone.waiting = False  # they left (or timed out) while queued
    assert pool.counts()["cl_waiting"] == 2 and pool.n_queued == 4
    # Worker 0's own stopped head is dropped; worker 1's (1.0, older than `mine`) does not count.
    assert _served(pool, 0, 2.0) is mine
    assert pool.n_queued == 1 and list(pool.queues[1]) == [other]
    assert _served(pool, 0, 2.0) is other
    assert _served(pool, 0, 2.0) is None and not pool.queued


def test_remove_waiter_takes_it_out_of_its_workers_queue() -> None:
    pool = make_pool(2, workers=2)
    a, b, c = _queue(pool, (0, 1.0), (1, 1.001), (1, 1.002))
    b.waiting = False
    pool.remove_waiter(b)
    pool.remove_waiter(b)  # a second time: nothing to remove
    assert pool.n_queued == 2 and list(pool.queues[1]) == [c]
    assert _served(pool, 1, 2.0) is c and _served(pool, 1, 2.0) is a


def test_fail_first_waiter_takes_the_oldest_of_all_queues() -> None:
    pool = make_pool(2, workers=3)
    spec = [(2, 1.0), (0, 1.1), (1, 1.2), (0, 1.3), (2, 1.4), (1, 1.5)]
    clients = _queue(pool, *spec)
    clients[1].waiting = False
    order = []
    while (c := pool.fail_first_waiter()) is not None:
        order.append(c)
    assert order == [c for c in clients if c is not clients[1]] and pool.n_queued == 0


def test_resume_pairs_waiters_in_global_order_each_with_its_own_shards_server_first() -> None:
    pool = make_pool(4, workers=2)
    pool.set_paused(True)
    s0, s1a, s1b = Server(), Server(), Server()
    pool.total = 3
    for s, wid in ((s0, 0), (s1a, 1), (s1b, 1)):
        assert pool.release(s, wid, 0.5) is None  # paused: parked
    clients = [Client(Shard(w)) for w in (1, 0, 0, 1)]
    for c, t in zip(clients, (1.0, 1.1, 1.2, 1.3), strict=True):
        assert pool.acquire(c, c.worker.id, t) is None  # paused: queued, not served
    r = pool.set_paused(False)
    assert r is not None
    pairs, spawn, _ = r
    # Oldest first: clients[0] (worker 1) gets s1b (its shard's LIFO), clients[1] (worker 0) s0, clients[2]
    # (worker 0, its shard now empty) worker 1's last one; clients[3] waits for the next server.
    assert pairs == [(s1b, clients[0]), (s0, clients[1]), (s1a, clients[2])]
    assert spawn is True and pool.counts()["cl_waiting"] == 1 and list(pool.queues[1]) == [clients[3]]


def test_expired_waiters_come_from_every_queue_oldest_first() -> None:
    pool = make_pool(1, workers=2)
    pool.query_wait_timeout = 5.0
    a, b, c, d = _queue(pool, (1, 1.0), (0, 2.0), (1, 3.0), (0, 9.0))
    assert pool.expired_waiters(8.5) == [a, b, c]
    assert pool.n_queued == 1 and pool.counts()["cl_waiting"] == 1 and list(pool.queues[0]) == [d]


def test_fairness_bound_holds_for_random_queueing_and_releases_over_three_workers() -> None:
    """No waiter is ever overtaken by one that queued more than LOCAL_SLACK after it, whatever the order of
    queueing, leaving and releases, and every waiter is served in the end."""
    rng = random.Random(15)
    slack = pool_mod.LOCAL_SLACK
    pool = make_pool(4, workers=3)
    pool.total = pool.pool_size
    now = 1.0
    waiting: list[Client] = []
    served = 0
    for _ in range(5000):
        now += rng.random() * slack / 3
        op = rng.random()
        if op < 0.5:
            c = Client(Shard(rng.randrange(3)))
            assert pool.acquire(c, c.worker.id, now) is None
            waiting.append(c)
        elif op < 0.55 and waiting:
            c = waiting.pop(rng.randrange(len(waiting)))
            c.waiting = False  # it left; half the time it is removed, else it stays until it is a head
            if rng.random() < 0.5:
                pool.remove_waiter(c)
        else:
            got = _served(pool, rng.randrange(3), now)
            if got is None:
                assert not waiting
                pool.total = pool.pool_size
                pool.take_one_idle(0) or pool.take_one_idle(1) or pool.take_one_idle(2)
                continue
            waiting.remove(got)
            served += 1
            assert all(w.wait_start >= got.wait_start - slack for w in waiting), got.wait_start
        assert pool.counts()["cl_waiting"] == len(waiting)
    while waiting:
        got = _served(pool, rng.randrange(3), now)
        assert got is not None and all(w.wait_start >= got.wait_start - slack for w in waiting)
        waiting.remove(got)
    assert served > 1000 and pool.fail_first_waiter() is None


# ------------------------------------------------------------------ connection scaling and the coordinator
def test_burst_gate_caps_the_servers_being_opened() -> None:
    pool = make_pool(10)
    pool.warm, pool.max_creates = 10, 2  # no anticipation here: the gate alone
    clients = [Client(Shard(0)) for _ in range(5)]
    got = [pool.acquire(c, 0, time.monotonic()) for c in clients]
    assert got == [(None, True, 0.0), (None, True, 0.0), None, None, None]
    assert pool.scaling_row()[:3] == (2, 2, 3)  # inflight, creates, gate_waits
    pool.connected(Server())  # one login done: its place in the gate opens one more for the waiters
    assert pool.retry_for_waiters() is True and pool.scaling_row()[:2] == (2, 3)
    assert pool.reserve_spawn() is False and pool.scaling.replenish_def == 1  # min_pool_size waits its turn


def test_anticipation_above_the_warm_threshold() -> None:
    pool = make_pool(10)
    pool.warm = 1
    a, b, c = Client(Shard(0)), Client(Shard(0)), Client(Shard(0))
    assert pool.acquire(a, 0, time.monotonic()) == (None, True, 0.0)  # cold: opened at once
    pool.connected(Server())
    a.waiting = False
    r = pool.acquire(b, 0, time.monotonic())  # above the threshold: wait for a return first
    assert r is not None and r[:2] == (None, False) and 0.05 < r[2] <= 0.1 + 1e-9  # 100 ms before any transaction (float sums)
    assert pool.release(Server(), 0, time.monotonic()) is b  # a returned server serves it
    assert pool.scaling.antic_notify == 1
    b.waiting = False
    assert pool.anticipation_due(time.monotonic()) == (0, 0.0)  # b's timer: nobody left to open one for
    r = pool.acquire(c, 0, time.monotonic())
    assert r is not None and r[:2] == (None, False)
    assert pool.anticipation_due(time.monotonic()) == (0, pytest.approx(r[2], abs=0.02))  # too early
    time.sleep(r[2] + 0.01)
    assert pool.anticipation_due(time.monotonic()) == (1, 0.0)  # its budget ran out: open one
    assert (pool.scaling.antic_timeout, pool.scaling.create_fallback, pool.scaling.creates) == (1, 1, 2)


def two_users(**pool: object) -> App:
    app = App(config_from_dict({
        "general": {"admin_username": "admin", "admin_password": "admin", "worker_threads": 1},
        "pools": {"app": {"server_host": "127.0.0.1", "server_port": 5432, "max_db_connections": 2,
                          "reserve_pool_size": 1, "reserve_pool_timeout": 1000, "min_connection_lifetime": 0,
                          **pool,
                          "users": [{"username": "a", "password": "p", "pool_size": 5},
                                    {"username": "b", "password": "p", "pool_size": 5}]}},
    }, "test.yaml"))
    for w in app.workers:
        w.loop.close()
    return app


def fill(pool: Pool, n: int) -> list[Server]:
    """`n` servers of `pool` opened for `n` clients at once, then parked idle."""
    clients = [Client(Shard(0)) for _ in range(n)]
    for c in clients:
        r = pool.acquire(c, 0, time.monotonic())
        assert r is not None and r[1]
    out = []
    for c in clients:
        s = Server(created=time.monotonic() - 1)
        pool.connected(s)
        assert pool.release(s, 0, time.monotonic()) is c
        c.waiting = False
        out.append(s)
    for s in out:
        pool.release(s, 0, time.monotonic())
    return out


def test_coordinator_cap_reserve_eviction_and_error() -> None:
    app = two_users()
    a, b = app.pools[("app", "a")], app.pools[("app", "b")]
    for p in (a, b):
        p.warm, p.max_creates = 5, 5
    coord = app.coordinators.by_db["app"]
    assert a.coord is coord and b.coord is coord
    fill(a, 3)  # two under the cap, one from the reserve
    assert app.coordinators.rows() == [("app", 2, 3, 1, 1, 0, 1, 0)]
    c = Client(Shard(0))
    assert pool_acquire_blocked(b, c)
    victim = coord.evict_for(b, time.monotonic())
    assert victim is not None and a.idle_count == 2  # the user with a surplus gives its oldest idle server
    assert coord.evict_for(b, time.monotonic()) is None  # one eviction at a time per blocked pool
    a.server_gone()  # the victim closed: the slot is free for b
    assert coord.take_blocked() == [b] and b.retry_for_waiters() is True
    assert app.coordinators.rows() == [("app", 2, 3, 1, 1, 1, 2, 0)]
    s = Server()
    b.connected(s)
    assert b.release(s, 0, time.monotonic()) is c
    c.waiting = False
    # b's server is busy, a keeps 2: a client of b that needs a second one is refused until reserve_pool_timeout
    d = Client(Shard(0))
    assert pool_acquire_blocked(b, d, wait_start=time.monotonic() - 1.5)
    assert b.exhausted_waiters(time.monotonic()) == []
    b.coord_blocked_since -= 1.0
    assert b.exhausted_waiters(time.monotonic()) == [d]
    assert "(max=2, reserve=1/1, user='b')" in coord.exhausted_error("b")


def pool_acquire_blocked(pool: Pool, c: Client, wait_start: float | None = None) -> bool:
    r = pool.acquire(c, 0, time.monotonic() if wait_start is None else wait_start)
    return r is None and bool(pool.coord_blocked_since) and c.waiting


def test_no_eviction_below_the_guarantee_and_reload_leaves_the_coordinator() -> None:
    app = two_users(min_guaranteed_pool_size=3)
    a, b = app.pools[("app", "a")], app.pools[("app", "b")]
    for p in (a, b):
        p.warm, p.max_creates = 5, 5
    fill(a, 3)
    assert pool_acquire_blocked(b, Client(Shard(0)))
    coord = app.coordinators.by_db["app"]
    assert coord.evict_for(b, time.monotonic()) is None  # a has nothing above its guarantee
    app.coordinators.refresh(app.config, [b])  # a leaves (a RELOAD removed it): its servers are not counted
    assert a.coord is None and coord.current == 0 and b.retry_for_waiters() is True
