"""A cancel that comes just after a waiting request was handed its server is sent once more if that request
still runs a moment later (PostgreSQL drops a cancel that reaches a backend still reading the statement:
docs/transparency.md, "Cancel requests"); never for a request that has ended, nor with a second one in flight.
Real sockets and the relay's own handlers, the test playing PostgreSQL and the client; CancelRequests recorded
instead of sent, the re-check called by the test instead of the loop's timer."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from pgdoorman.session import login, server_wrap
from pgdoorman.session.client import ClientConn
from pgdoorman.session.server import ServerConn
from tests.support.app import linked_pair
from tests.support.wire import frame, query


@pytest.fixture()
def running(monkeypatch: Any) -> Iterator[tuple[ClientConn, ServerConn, socket.socket, list[Any], list[Any]]]:
    """A client whose `select pg_sleep(5)` runs on its server; the cancels sent, the timers set."""
    cancels: list[Any] = []
    timers: list[Any] = []
    monkeypatch.setattr(server_wrap, "send_cancel", lambda addr, pid, secret, done=None: cancels.append(pid))
    with linked_pair(ps=False) as (client, server, _c_peer, s_peer):
        monkeypatch.setattr(client.loop, "call_later", lambda delay, fn, *args: timers.append((delay, fn, args)))
        server.pid, server.secret = 4242, 7
        q = query("select pg_sleep(5)")
        client._consume(memoryview(q), len(q))
        assert s_peer.recv(65536) == q and client.server is server and client.expect == 1
        yield client, server, s_peer, cancels, timers


def _again(timers: list[Any]) -> None:
    (delay, fn, args), = timers
    assert 0 < delay <= login.CANCEL_RACE
    fn(*args)


def test_a_cancel_just_after_the_hand_over_is_sent_again_while_the_request_runs(running: Any) -> None:
    client, _server, _s_peer, cancels, timers = running
    client.handed_at = client.loop.now
    client.cancel_requested()
    assert cancels == [4242]
    _again(timers)
    assert cancels == [4242, 4242]


def test_not_again_once_the_request_ended(running: Any) -> None:
    client, server, s_peer, cancels, timers = running
    client.handed_at = client.loop.now
    client.cancel_requested()
    s_peer.sendall(frame("E", b"SERROR\0C57014\0Mcanceling statement due to user request\0\0") + frame("Z", b"I"))
    server.on_event(1)
    _again(timers)
    assert cancels == [4242]


def test_not_again_with_a_second_request_in_flight(running: Any) -> None:
    client, _server, _s_peer, cancels, timers = running
    client.handed_at = client.loop.now
    client.cancel_requested()
    q = query("select 2")
    client._consume(memoryview(q), len(q))  # (pipelined: sent on at once)
    _again(timers)
    assert cancels == [4242]


def test_a_request_that_did_not_wait_gets_one_cancel(running: Any) -> None:
    client, _server, _s_peer, cancels, timers = running
    client.handed_at = client.loop.now - 10 * login.CANCEL_RACE
    client.cancel_requested()
    assert cancels == [4242] and timers == []
