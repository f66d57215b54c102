"""An App for unit tests that drive connections by hand: one worker, one pool `app` for user `u`, no sockets
listening and the worker's loop not running."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pgdoorman.app import App
from pgdoorman.config import config_from_dict
from pgdoorman.session.client import READY, ClientConn
from pgdoorman.session.server import ACTIVE, IDLE, ServerConn


def one_pool_app(pool_size: int, **pool: Any) -> App:
    return App(config_from_dict({
        "general": {"admin_username": "admin", "admin_password": "admin", "worker_threads": 1},
        "pools": {"app": {"server_host": "127.0.0.1", "server_port": 5432, **pool,
                          "users": [{"username": "u", "password": "p", "pool_size": pool_size}]}},
    }, "test.yaml"))


@contextmanager
def linked_pair(ps: bool, pool_mode: str = "transaction",
                linked: bool = False) -> Iterator[tuple[ClientConn, ServerConn, socket.socket, socket.socket]]:
    """A logged-in client (prepared-statement mode if `ps`) and its pool's one server, idle in the pool, each on
    a socketpair whose other end the test plays (client, server, client's peer, server's peer); the client's
    first bytes check the server out. `linked`: the server is the client's already, active (as a session-mode
    client's is). Closed, with the worker's loop, on exit."""
    app = one_pool_app(pool_size=1, pool_mode=pool_mode)
    worker = app.workers[0]
    pool = app.pools[("app", "u")]
    c_sock, c_peer = socket.socketpair()
    s_sock, s_peer = socket.socketpair()
    for x in (c_sock, s_sock):
        x.setblocking(False)
    client = ClientConn(c_sock, worker, "test")
    client.login_timer.cancel()
    client.pool = pool
    client.transaction_mode = pool.transaction_mode
    client.state = READY
    if ps:
        client.ps = True
        client.use_ps_scanner(pool, ())
    server = ServerConn(s_sock, worker, pool, "test")
    server.timer.cancel()
    server.state = IDLE
    server.synced_key = ()
    server.attach(worker.loop)
    pool.total = 1
    if linked:
        server.state = ACTIVE
        server.client, client.server = client, server
    else:
        assert pool.release(server, worker.id, worker.loop.now) is None
    try:
        yield client, server, c_peer, s_peer
    finally:
        for x in (c_sock, c_peer, s_sock, s_peer):
            x.close()
        worker.loop.close()
