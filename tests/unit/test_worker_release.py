"""A server released while paused for back-pressure (its last client's queue was still full) must go back to
the pool readable: otherwise the next client's query is answered by PostgreSQL and never read (found by the
node-pg driver matrix after a 10 MB bytea). Real sockets, no PostgreSQL: the worker's loop is not run."""

from __future__ import annotations

import socket

from pgdoorman.net.loop import EVENT_READ
from pgdoorman.session.server import ACTIVE, ServerConn
from tests.support.app import one_pool_app


def test_paused_server_goes_back_to_the_pool_readable() -> None:
    app = one_pool_app(pool_size=2)
    worker = app.workers[0]
    pool = app.pools[("app", "u")]
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        s = ServerConn(a, worker, pool, "test")
        s.timer.cancel()
        s.state = ACTIVE
        s.attach(worker.loop)
        s.pause_reading()  # a slow client's queue passed the high-water mark
        assert not s.mask & EVENT_READ
        worker.release_server(s)
        assert not s.read_paused and s.mask & EVENT_READ
        assert pool.idle[0] == [s]
    finally:
        a.close()
        b.close()
        worker.loop.close()
