"""A ReadyForQuery held for the settings read back (session/reports.py): it reaches the client after the
read-back, and nothing held for a client that leaves meanwhile stays on its server for the next client.
Real sockets and the relay's own handlers, the test playing PostgreSQL and the client; the loop is not run."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from pgdoorman.session import reports
from pgdoorman.session.client import ClientConn
from pgdoorman.session.server import INTERNAL, ServerConn
from tests.support.app import linked_pair
from tests.support.wire import frame, query, split_messages

POOL_TZ = "Etc/UTC"


def _status(k: str, v: str) -> bytes:
    return frame("S", f"{k}\0{v}\0".encode())


def _read(peer: socket.socket) -> list[Any]:
    peer.setblocking(False)
    try:
        data = peer.recv(65536)
    except BlockingIOError:
        return []
    finally:
        peer.setblocking(True)
    return [(t, b) for t, b in split_messages(data)]


@pytest.fixture()
def tokyo() -> Iterator[tuple[ClientConn, ServerConn, socket.socket, socket.socket]]:
    """A transaction-mode client that started with TimeZone Asia/Tokyo, on a pool whose servers have Etc/UTC,
    its settings already on the pool's one server."""
    with linked_pair(ps=False) as (client, server, c_peer, s_peer):
        server.pool.server_params = {"TimeZone": POOL_TZ}
        server.params = {"TimeZone": "Asia/Tokyo"}
        client.settings = {"TimeZone": "Asia/Tokyo"}
        client.want_base = client.want = {"TimeZone": "Asia/Tokyo"}
        client.want_key = server.synced_key = tuple(client.want.items())
        yield client, server, c_peer, s_peer


def _set_to_default(client: ClientConn, server: ServerConn, s_peer: socket.socket, more: bytes = b"") -> bytes:
    """`SET timezone TO DEFAULT`: the server goes back to the pool's value and reports it (after `more`
    reports). The request's ReadyForQuery is held, the read-back sent; what the server got is returned."""
    q = query("set timezone to default")
    client._consume(memoryview(q), len(q))
    assert s_peer.recv(65536) == q
    s_peer.sendall(frame("C", b"SET\0") + more + _status("TimeZone", POOL_TZ) + frame("Z", b"I"))
    server.on_event(1)
    assert reports.waiting(server) and server.state == INTERNAL
    return s_peer.recv(65536)


CHECK_ANSWER = (frame("T", b"\0\x02" + b"name\0" + b"\0" * 18 + b"v\0" + b"\0" * 18) + frame("C", b"SELECT 0\0")
                + frame("C", b"RESET\0") * 3 + frame("Z", b"I"))  # (the session holds no setting of its own)


def test_the_ready_for_query_follows_the_read_back(tokyo: Any) -> None:
    client, server, c_peer, s_peer = tokyo
    check = _set_to_default(client, server, s_peer)
    assert b"pg_settings" in check and b"RESET ALL" in check
    assert _read(c_peer) == [("C", b"SET\0")]  # the pool's value is not told, and the ReadyForQuery waits
    # The session holds no TimeZone of its own (TO DEFAULT): the startup value, which the client heard already.
    s_peer.sendall(CHECK_ANSWER)
    server.on_event(1)
    assert _read(c_peer) == [("Z", b"I")]  # as PostgreSQL: no report, TimeZone never changed
    assert server.held_ps is None and client.want["TimeZone"] == "Asia/Tokyo"


def test_nothing_held_for_a_client_that_left_stays_on_its_server(tokyo: Any) -> None:
    client, server, c_peer, s_peer = tokyo
    _set_to_default(client, server, s_peer)
    client.close("gone")  # while the read-back runs
    assert server.held_ps is None  # (it would have put this client's ReadyForQuery before the next one's)


def test_a_report_the_read_back_cannot_give_goes_as_the_server_sent_it(tokyo: Any) -> None:
    """`SET ROLE` to a superuser role in the same query: PostgreSQL reports is_superuser, which is no setting
    the read-back reads (its RESET ROLE turns it off again): it goes as the server reported it."""
    client, server, c_peer, s_peer = tokyo
    server.params["is_superuser"] = "off"
    _set_to_default(client, server, s_peer, more=_status("is_superuser", "on"))
    s_peer.sendall(CHECK_ANSWER[:-len(frame("Z", b"I"))] + _status("is_superuser", "off") + frame("Z", b"I"))
    server.on_event(1)
    assert _read(c_peer) == [("C", b"SET\0"), ("S", b"is_superuser\0on\0"), ("Z", b"I")]
