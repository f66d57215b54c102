"""A client moving between workers (general.worker_placement `pack`: Janitor.move, then adopt_client on the
other worker's thread) is in no worker's set meanwhile. placement.Transit lists it, so that SHOW CLIENTS
(observe.live_clients) still sees it, and numbers the admin console's KILLs, so that a KILL that ran on the
new worker before the client arrived there, after the old worker had let it go, still reaches it. The same
for a server handed to a waiter of another worker (Worker._move_server, then Worker.adopt): SHOW SERVERS
(observe.live_servers) lists it meanwhile, and a KILL it missed closes it on arrival.

A real App with two workers whose loops are not run: the calls posted to each loop are run here, one loop at
a time, in the orders the two threads could run them. The client is a stand-in with what the move, the
adoption and the KILL read and call."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from pgdoorman.app import App
from pgdoorman.config import config_from_dict
from pgdoorman.net.loop import Loop
from pgdoorman.observe import live_clients
from pgdoorman.observe.snapshot import live_servers
from pgdoorman.placement import KILL_LOG, Transit


@dataclass(eq=False)
class StandIn:
    """What a move, an adoption and a KILL read and call on a client or a server."""

    pool: Any
    worker: Any
    loop: Any = None
    closed: bool = False
    why: str = ""

    def detach(self) -> None:
        pass

    def attach(self, loop: Loop) -> None:
        self.loop = loop

    def close(self, why: str) -> None:
        self.closed, self.why = True, why


@dataclass(eq=False)
class Client(StandIn):
    admin: None = None
    written: list[bytes] = field(default_factory=list)
    scanner: Any = field(default_factory=lambda: SimpleNamespace(budget=None, on_stream=None))

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def close_orderly(self, why: str) -> None:
        self.close(why)


@pytest.fixture
def app() -> Any:
    a = App(config_from_dict({
        "general": {"admin_username": "admin", "admin_password": "admin", "worker_threads": 2},
        "pools": {
            "one": {"server_host": "127.0.0.1", "server_port": 5432,
                    "users": [{"username": "u", "password": "p", "pool_size": 2}]},
            "two": {"server_host": "127.0.0.1", "server_port": 5432,
                    "users": [{"username": "u", "password": "p", "pool_size": 2}]},
        },
    }, "test.yaml"))
    yield a
    for w in a.workers:
        w.loop.close()


def run_posted(loop: Loop) -> None:
    """What the loop's thread runs next: the calls posted to it, in order."""
    while loop.calls:
        fn, args = loop.calls.popleft()
        fn(*args)


def client_on(app: Any, wid: int, database: str = "one") -> Client:
    c = Client(pool=app.pools[(database, "u")], worker=app.workers[wid])
    c.worker.clients.add(c)
    return c


def test_a_kill_that_ran_where_the_client_goes_before_it_arrived_still_reaches_it(app: Any) -> None:
    w0, w1 = app.workers
    c = client_on(app, 0)
    app.kill(None)  # posted to both loops; worker 0's janitor moves the client before its loop runs the KILL
    app.janitors[0].move(c, w1)
    run_posted(w0.loop)  # the KILL on worker 0: the client is gone from its set
    assert not c.closed
    assert [id(x) for x in live_clients(app)] == [id(c)]  # in no worker's set, listed as moving
    run_posted(w1.loop)  # worker 1 runs the KILL first (the client is not there yet), then adopts it
    assert c.closed and c.why == "killed from the admin console"
    assert b"57P01" in c.written[0] and b"administrator command" in c.written[0]
    assert not app.transit.moving


def test_a_kill_posted_after_the_move_finds_the_client_in_its_new_workers_set(app: Any) -> None:
    w0, w1 = app.workers
    c = client_on(app, 0)
    app.janitors[0].move(c, w1)
    app.kill("one")
    run_posted(w0.loop)
    run_posted(w1.loop)  # the adoption, then the KILL
    assert c.closed and len(c.written) == 1  # once
    assert c not in w1.clients or c.closed


def test_a_kill_the_old_worker_ran_before_the_move_is_not_applied_again(app: Any) -> None:
    w0, w1 = app.workers
    survivor = client_on(app, 0, "two")  # a KILL of database "one" leaves it alone
    app.kill("one")
    run_posted(w0.loop)
    run_posted(w1.loop)
    app.janitors[0].move(survivor, w1)
    run_posted(w1.loop)
    assert not survivor.closed and survivor in w1.clients and survivor.loop is w1.loop
    assert [id(x) for x in live_clients(app)] == [id(survivor)]


def test_a_kill_of_another_database_meanwhile_leaves_the_moving_client_alone(app: Any) -> None:
    w0, w1 = app.workers
    c = client_on(app, 0, "two")
    app.kill("one")
    app.janitors[0].move(c, w1)
    run_posted(w0.loop)
    run_posted(w1.loop)
    assert not c.closed and c in w1.clients


def test_a_client_listed_in_its_new_workers_set_and_as_moving_is_counted_once(app: Any) -> None:
    w0, w1 = app.workers
    c = client_on(app, 0)
    other = client_on(app, 1)
    app.janitors[0].move(c, w1)
    w1.clients.add(c)  # adopt_client's first step, before the moving list lets it go
    assert sorted(map(id, live_clients(app))) == sorted([id(c), id(other)])
    run_posted(w1.loop)
    assert sorted(map(id, live_clients(app))) == sorted([id(c), id(other)])


def test_transit_checks_only_the_kills_between_leaving_and_arriving() -> None:
    t = Transit(2)
    c = object()
    pool_a, pool_b = object(), object()
    posted: list[int] = []
    t.kill(frozenset({id(pool_a)}), posted.append)  # 1
    t.ran(0, 1)
    t.leave(c, 0, lambda: None)  # type: ignore[arg-type]
    t.kill(frozenset({id(pool_b)}), posted.append)  # 2: another pool
    t.kill(frozenset({id(pool_a)}), posted.append)  # 3: not run on worker 1 yet
    assert posted == [1, 2, 3]
    t.ran(1, 2)
    assert not t.arrive(c, 1, pool_a)  # type: ignore[arg-type]  # KILL 3 runs there after the adoption
    t.leave(c, 0, lambda: None)  # type: ignore[arg-type]
    t.ran(1, 3)
    assert t.arrive(c, 1, pool_a)  # type: ignore[arg-type]
    assert not t.arrive(c, 1, pool_a)  # type: ignore[arg-type]  # no longer moving
    for _ in range(KILL_LOG + 5):
        t.kill(frozenset(), posted.append)
    assert len(t.kills) == KILL_LOG


# ------------------------------------------------------------------ servers handed to another worker's waiter
@dataclass(eq=False)
class Server(StandIn):
    pstats: Any = field(default_factory=lambda: SimpleNamespace(handed_moved=0))


@dataclass(eq=False)
class Waiter:
    worker: Any
    waiting: bool = True
    closed: bool = False
    got: Any = None
    asked_again: int = 0

    def attach_server(self, s: Any) -> None:
        self.waiting, self.got = False, s

    def need_server(self) -> None:
        self.asked_again += 1


def server_on(app: Any, wid: int, database: str = "one") -> Server:
    s = Server(pool=app.pools[(database, "u")], worker=app.workers[wid])
    s.worker.servers.add(s)
    return s


def test_a_server_handed_to_another_workers_waiter_is_listed_while_it_moves(app: Any) -> None:
    w0, w1 = app.workers
    s, c = server_on(app, 0), Waiter(worker=w1)
    w0.hand(s, c)  # worker 0 owns the server, the waiter is worker 1's: the server moves
    assert s not in w0.servers and s not in w1.servers
    assert [id(x) for x in live_servers(app)] == [id(s)]  # SHOW SERVERS still sees it
    run_posted(w1.loop)
    assert c.got is s and s in w1.servers and s.worker is w1 and s.loop is w1.loop
    assert [id(x) for x in live_servers(app)] == [id(s)] and not app.transit.moving_servers


def test_a_kill_that_ran_where_the_server_goes_before_it_arrived_still_closes_it(app: Any) -> None:
    w0, w1 = app.workers
    s, c = server_on(app, 0), Waiter(worker=w1)
    app.kill("one")  # posted to both loops; worker 0 hands the server on before its loop runs the KILL
    w0.hand(s, c)
    run_posted(w0.loop)  # the KILL on worker 0: the server is gone from its set
    assert not s.closed
    run_posted(w1.loop)  # the KILL first (the server is not there yet), then the adoption
    assert s.closed and s.why == "killed from the admin console"
    assert c.got is None and c.asked_again == 1  # the waiter (of another worker's KILL pass) asks again
    assert not app.transit.moving_servers


def test_a_kill_of_another_database_leaves_the_moving_server_alone(app: Any) -> None:
    w0, w1 = app.workers
    s, c = server_on(app, 0, "two"), Waiter(worker=w1)
    app.kill("one")
    w0.hand(s, c)
    run_posted(w0.loop)
    run_posted(w1.loop)
    assert not s.closed and c.got is s
