"""Worker.release_done, the release after the ReadyForQuery that ends a client's work (once per transaction):
a clean server goes straight back to the pool, and every case with something to do first (dirt to clean or
read back, a pin, a cancel on its way, a paused read, a COPY gone wrong, a failed transaction) is left to
release_server, whose handling stays the one place for them. Real sockets and the relay's own read handlers,
with the test playing PostgreSQL; the worker's loop is not run."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pgdoorman.session.client import ClientConn
from pgdoorman.session.server import ACTIVE, IDLE, ServerConn
from tests.support.app import linked_pair
from tests.support.wire import frame, query

ROW = frame("T", b"\0\x01a\0" + b"\0" * 18) + frame("D", b"\0\x01\0\0\0\x011") + frame("C", b"SELECT 1\0")


@pytest.fixture()
def linked(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ClientConn, ServerConn, socket.socket, list[Any]]]:
    """A transaction-mode client and its pool's one server, idle; the calls to release_server are listed."""
    with linked_pair(ps=False) as (client, server, _, s_peer):
        worker = client.worker
        general: list[Any] = []
        real = worker.release_server

        def spy(s: ServerConn, client_gone: bool = False, client: Any = None) -> None:
            general.append(s)
            real(s, client_gone, client)

        monkeypatch.setattr(worker, "release_server", spy)
        yield client, server, s_peer, general


def _transaction(client: ClientConn, server: ServerConn, s_peer: socket.socket, status: bytes = b"I",
                 before_answer: Callable[[], None] | None = None) -> None:
    """The client sends one query, which checks the server out; PostgreSQL answers it."""
    client._consume(memoryview(query("select 1")), len(query("select 1")))
    assert client.server is server and server.state == ACTIVE
    s_peer.recv(65536)
    if before_answer is not None:
        before_answer()
    s_peer.sendall(ROW + frame("Z", status))
    server.on_event(1)


def test_clean_server_goes_straight_back_to_the_pool(linked: Any) -> None:
    client, server, s_peer, general = linked
    _transaction(client, server, s_peer)
    assert general == []  # the fast path did it all
    assert client.server is None and server.client is None and server.state == IDLE
    assert server.pool.idle[0] == [server]
    _transaction(client, server, s_peer)  # and it is checked out again as usual
    assert general == [] and server.pool.idle[0] == [server]


CASES: dict[str, Callable[[ClientConn, ServerConn], None]] = {
    "server dirty": lambda c, s: setattr(s, "dirty", s.dirty | 1),
    "read paused": lambda c, s: s.pause_reading(),
    "cancel on its way": lambda c, s: setattr(s, "cancel_pending", True),
    "statements to evict": lambda c, s: s.evicted.append(b"DOORMAN_1"),
    "client left state": lambda c, s: setattr(c, "leaves", 1),
    "client pinned": lambda c, s: setattr(c, "pinned", "temp table t"),
    "named Parse forwarded": lambda c, s: setattr(c, "named_parse", True),
    "COPY confused": lambda c, s: setattr(c, "copy_confused", True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_anything_to_do_first_goes_through_release_server(linked: Any, case: str) -> None:
    client, server, s_peer, general = linked
    _transaction(client, server, s_peer, before_answer=lambda: CASES[case](client, server))
    assert general == [server]


def test_failed_transaction_is_not_released(linked: Any) -> None:
    """ReadyForQuery 'E' (or 'T') keeps the server with its client: no release at all."""
    client, server, s_peer, general = linked
    _transaction(client, server, s_peer, status=b"E")
    assert general == [] and client.server is server and server.state == ACTIVE
