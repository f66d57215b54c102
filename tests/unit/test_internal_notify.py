"""Session mode: a NotificationResponse for the client's LISTEN that the backend sends while the pooler's own
query runs on the client's server (the read-back after a RESET, session/resets.py) is the client's. It was
swallowed with the query's answer (found by test_state_random, two-worker session variant, seed 134 with the
settings steps: the LISTENing client never got another client's NOTIFY), and when it came in the same read
right behind the query's ReadyForQuery the server was closed as "unexpected data after housekeeping query".

PostgreSQL sends a notification as soon as the backend waits for a command, so it may come before the answer
to a query the pooler has just sent, or right behind it: orderings a live server makes rare and untimeable, so
the test plays PostgreSQL over a socketpair (as test_fast_batch.py does). The worker's loop is not run."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from pgdoorman.session.client import ClientConn
from pgdoorman.session.server import ACTIVE, CLOSED, INTERNAL, ServerConn
from tests.support.app import linked_pair
from tests.support.wire import frame, split_messages

NOTIFY = frame("A", b"\0\0\x30\x39ch_b\0x\0")  # (PID 12345, channel ch_b, payload x)
ANSWER = frame("T", b"\0\x01name\0" + b"\0" * 18) + frame("C", b"SELECT 0\0") + frame("Z", b"I")


@pytest.fixture(params=["session", "transaction"])
def pair(request: Any) -> Iterator[tuple[ClientConn, ServerConn, socket.socket, socket.socket]]:
    """A logged-in client linked to its server, each on a socketpair whose other end the test plays."""
    with linked_pair(ps=False, pool_mode=request.param, linked=True) as p:
        yield p


def _client_got(peer: socket.socket) -> list[str]:
    peer.setblocking(False)
    try:
        return [t for t, _ in split_messages(peer.recv(65536))]
    except BlockingIOError:
        return []


@pytest.mark.parametrize("answer", [NOTIFY + ANSWER, ANSWER + NOTIFY], ids=["before", "behind"])
def test_a_notification_during_our_query_reaches_the_session_client(pair: Any, answer: bytes) -> None:
    client, server, c_peer, s_peer = pair
    done: list[bool] = []
    server.run_internal(["SELECT 1"], done.append, rows=True)
    assert server.state == INTERNAL
    s_peer.sendall(answer)
    server.on_readable()
    if not client.transaction_mode:
        assert done == [True] and server.state == ACTIVE
        assert _client_got(c_peer) == ["A"]  # (the query's own answer stays the pooler's)
        return
    # Transaction mode: no server LISTENs on a client's channel (session/listening.py), so a notification there
    # is not a client's: swallowed before our answer, and behind it the server is not trusted, as before.
    assert "A" not in _client_got(c_peer)  # (behind: the client is told its server closed)
    assert (done, server.state) == (([True], ACTIVE) if answer.startswith(NOTIFY) else ([], CLOSED))
