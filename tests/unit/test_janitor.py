"""Per-worker maintenance (pgdoorman/janitor.py): waiters past query_wait_timeout are failed on their own
worker, idle servers past idle_timeout or server_lifetime are retired (never below min_pool_size, at most
retain_connections_max a round), and a pool's idle servers are closed on RELOAD/RECONNECT and, unless
clients wait for them, by a binary upgrade. A real App and Worker, loops not run, no sockets: stand-ins for
the servers and clients the pool holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count
from typing import Any

from pgdoorman.app import App
from pgdoorman.config import config_from_dict
from pgdoorman.core.pool import Pool
from pgdoorman.janitor import Janitor

_ids = count(1)


@dataclass(eq=False)
class Server:
    id: int = field(default_factory=lambda: next(_ids))
    created: float = 0.0
    idle_since: float = 0.0
    fallback_until: float = 0.0
    retired: str | None = None
    pool: Pool | None = None

    def retire(self, why: str) -> None:
        self.retired = why
        if self.pool is not None:
            self.pool.server_gone()  # as ServerConn's close does, through the worker


@dataclass(eq=False)
class Client:
    worker: Any
    waiting: bool = False
    wait_start: float = 0.0
    timed_out: bool = False

    def wait_timed_out(self) -> None:
        self.timed_out = True


def make_app(**general: Any) -> App:
    app = App(config_from_dict({
        "general": {"admin_username": "admin", "admin_password": "admin", "worker_threads": 1, **general},
        "pools": {"app": {"server_host": "127.0.0.1", "server_port": 5432,
                          "users": [{"username": "u", "password": "p", "pool_size": 10}]}},
    }, "test.yaml"))
    for w in app.workers:
        w.loop.close()
    return app


def park(pool: Pool, servers: list[Server]) -> None:
    pool.total += len(servers)
    for s in servers:
        assert pool.release(s, 0, s.idle_since) is None


def test_retain_retires_expired_idle_servers_within_budget_and_min_pool_size() -> None:
    app = make_app(retain_connections_max=2)
    pool = app.pools[("app", "u")]
    pool.idle_timeout, pool.server_lifetime, pool.min_pool_size = 10.0, 0.0, 2
    old = [Server(idle_since=0.0, pool=pool) for _ in range(4)]
    fresh = Server(idle_since=95.0, pool=pool)
    park(pool, [*old, fresh])
    j = app.janitors[0]
    assert isinstance(j, Janitor) and j.worker is app.workers[0]
    assert j.retain(100.0) == 2  # retain_connections_max per round
    assert j.retain(100.0) == 1  # 5 servers, min_pool_size 2: one expired server stays
    assert j.retain(100.0) == 0
    assert [s.retired for s in old].count("idle_timeout") == 3 and fresh.retired is None
    assert pool.counts()["sv_idle"] == 2


def test_retired_servers_are_named_by_the_limit_they_passed() -> None:
    """The reason is the limit that retired the server: server_lifetime when idle_timeout is off (it was named
    idle_timeout whenever it had been idle at all), idle_timeout when its jittered idle_timeout passed."""
    app = make_app(retain_connections_max=10)
    pool = app.pools[("app", "u")]
    pool.idle_timeout, pool.server_lifetime = 0.0, 50.0  # idle_timeout off
    aged = Server(created=0.0, idle_since=90.0, pool=pool)
    park(pool, [aged])
    assert app.janitors[0].retain(100.0) == 1 and aged.retired == "server_lifetime"
    pool.idle_timeout, pool.server_lifetime = 10.0, 1000.0
    # Idle 9 s: past idle_timeout for the servers whose jitter factor is below 0.9, not past 10 s itself.
    idle = [Server(created=99.0, idle_since=91.0, pool=pool) for _ in range(40)]
    park(pool, idle)
    assert app.janitors[0].retain(100.0) > 0
    assert {s.retired for s in idle} == {None, "idle_timeout"}


def test_close_idle_empties_the_shard_unless_clients_wait_during_an_upgrade() -> None:
    app = make_app()
    pool = app.pools[("app", "u")]
    a, b = Server(), Server()
    park(pool, [a, b])
    j = app.janitors[0]
    c = Client(app.workers[0])
    pool.queues[0].append(c)  # a client of this pool waits (for a server being opened)
    pool.n_queued += 1
    c.waiting = True
    j.trim()
    assert a.retired is None and b.retired is None
    assert j.close_idle(pool) == 2  # RELOAD / RECONNECT: regardless of waiters
    assert a.retired == "pool reconfigured" and pool.counts()["sv_idle"] == 0


def test_expire_waiters_fails_clients_past_query_wait_timeout() -> None:
    app = make_app(query_wait_timeout=1000)
    pool = app.pools[("app", "u")]
    pool.pool_size = 0  # nothing to open: they just wait
    old, new = Client(app.workers[0]), Client(app.workers[0])
    assert pool.acquire(old, 0, 0.0) is None
    assert pool.acquire(new, 0, 5.0) is None
    assert app.janitors[0].expire_waiters(5.5) == 1
    assert old.timed_out and not new.timed_out
    assert app.janitors[0].expire_waiters(5.5) == 0
