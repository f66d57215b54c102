"""The batch fast path of transparent prepared statements (ClientConn._fast_batch, Rewriter.fast_batch), driven message by message
over real sockets with the test playing PostgreSQL, so that the orderings a live server makes unlikely are
forced: a second batch pipelined before the first one's answer, and an error answering a fast batch.
The worker's loop is not run: the test calls the connections' read handlers itself."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from pgdoorman.session import listening
from pgdoorman.session.client import ClientConn
from pgdoorman.session.server import ACTIVE, ServerConn
from tests.support.app import linked_pair
from tests.support.wire import bind, describe, execute, frame, parse, query, split_messages, sync


def _read_messages(sock: socket.socket) -> list[tuple[str, bytes]]:
    """Everything the pooler wrote to this socket so far, split into messages."""
    sock.settimeout(1.0)
    data = b""
    while True:
        try:
            sock.setblocking(False)
            chunk = sock.recv(65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return split_messages(data)


def _error(message: str) -> bytes:
    body = b"SERROR\0C26000\0M" + message.encode() + b"\0\0"
    return frame("E", body)


ROW = frame("T", b"\0\x01a\0" + b"\0" * 18) + frame("D", b"\0\x01\0\0\0\x011") + frame("C", b"SELECT 1\0")
RFQ = frame("Z", b"I")


@pytest.fixture()
def linked() -> Iterator[tuple[ClientConn, ServerConn, socket.socket, socket.socket]]:
    with linked_pair(ps=True) as pair:
        yield pair


def _client_sends(client: ClientConn, peer: socket.socket, *chunks: bytes) -> None:
    peer.sendall(b"".join(chunks))
    client.on_readable()


def _server_answers(server: ServerConn, peer: socket.socket, data: bytes) -> None:
    peer.sendall(data)
    assert server.state == ACTIVE
    server.on_readable()


def _prime(client: ClientConn, server: ServerConn, c_peer: socket.socket, s_peer: socket.socket,
           name: str, sql: str) -> bytes:
    """One batch through the general path: the server learns the statement; returns its DOORMAN name."""
    _client_sends(client, c_peer, parse(name, sql), bind("", name), execute(), sync())
    sent = _read_messages(s_peer)
    assert [t for t, _ in sent] == ["P", "B", "E", "S"]
    _server_answers(server, s_peer, frame("1") + frame("2") + ROW + RFQ)
    assert [t for t, _ in _read_messages(c_peer)] == ["1", "2", "T", "D", "C", "Z"]
    assert client.server is None  # released at ReadyForQuery
    return sent[0][1].split(b"\0")[0]


def test_pipelined_batch_behind_a_fast_batch(linked: Any) -> None:
    client, server, c_peer, s_peer = linked
    _prime(client, server, c_peer, s_peer, "", "select 1")
    # The same batch again: the fast path sends Bind, Describe, Execute, Sync only.
    _client_sends(client, c_peer, parse("", "select 1"), bind(), describe("P"), execute(), sync())
    assert client.rw.fast_bind is not None and client.rw.synth_head is not None and not client.rw.rq
    assert [t for t, _ in _read_messages(s_peer)] == ["B", "D", "E", "S"]
    # Before PostgreSQL answers, a second batch: the fast one joins the expected-response queue.
    _client_sends(client, c_peer, bind(), execute(), sync())
    assert client.rw.fast_bind is None and client.rw.synth_head is None and client.rw.rq
    assert [t for t, _ in _read_messages(s_peer)] == ["B", "E", "S"]
    _server_answers(server, s_peer, frame("2") + ROW + RFQ + frame("2") + frame("D", b"\0\x01\0\0\0\x011")
                    + frame("C", b"SELECT 1\0") + RFQ)
    got = [t for t, _ in _read_messages(c_peer)]
    assert got == ["1", "2", "T", "D", "C", "Z", "2", "D", "C", "Z"]
    assert not client.rw.rq and client.expect == 0 and client.server is None


def test_fast_batch_error_names_the_clients_statement(linked: Any) -> None:
    client, server, c_peer, s_peer = linked
    ours = _prime(client, server, c_peer, s_peer, "mine", "select 1")
    _client_sends(client, c_peer, bind("", "mine"), execute(), sync())
    assert client.rw.fast_bind is not None
    sent = _read_messages(s_peer)
    assert [t for t, _ in sent] == ["B", "E", "S"] and ours in sent[0][1]
    _server_answers(server, s_peer, _error(f'prepared statement "{ours.decode()}" does not exist') + RFQ)
    got = _read_messages(c_peer)
    assert [t for t, _ in got] == ["E", "Z"]
    assert b'prepared statement "mine" does not exist' in got[0][1]
    assert client.rw.fast_bind is None


def test_fast_batch_answer_split_across_reads(linked: Any) -> None:
    client, server, c_peer, s_peer = linked
    _prime(client, server, c_peer, s_peer, "", "select 1")
    _client_sends(client, c_peer, parse("", "select 1"), bind(), execute(), sync())
    assert [t for t, _ in _read_messages(s_peer)] == ["B", "E", "S"]
    answer = frame("2") + ROW + RFQ
    _server_answers(server, s_peer, answer[:3])  # not even a header: nothing relayed, ParseComplete kept
    assert _read_messages(c_peer) == [] and client.rw.synth_head is not None
    _server_answers(server, s_peer, answer[3:])
    assert [t for t, _ in _read_messages(c_peer)] == ["1", "2", "T", "D", "C", "Z"]


def test_other_batches_take_the_general_path(linked: Any) -> None:
    client, server, c_peer, s_peer = linked
    _prime(client, server, c_peer, s_peer, "", "select 1")
    # Another text than last time: the general path (the server has not got it: Parse sent).
    _client_sends(client, c_peer, parse("", "select 2"), bind(), execute(), sync())
    assert client.rw.fast_bind is None and client.rw.rq
    assert [t for t, _ in _read_messages(s_peer)] == ["P", "B", "E", "S"]
    _server_answers(server, s_peer, frame("1") + frame("2") + ROW + RFQ)
    assert [t for t, _ in _read_messages(c_peer)] == ["1", "2", "T", "D", "C", "Z"]
    # A statement Describe needs the queue too.
    _client_sends(client, c_peer, parse("", "select 2"), describe("S"), bind(), execute(), sync())
    assert client.rw.fast_bind is None and client.rw.rq


STALE = b"SERROR\0C0A000\0Mcached plan must not change result type\0\0"


def test_stale_plan_is_parsed_again_outside_a_transaction(linked: Any) -> None:
    """DDL changed the statement's result: PostgreSQL would have planned the client's Parse afresh, so the
    batch is sent again under a new statement and the client never sees the 0A000."""
    client, server, c_peer, s_peer = linked
    old = _prime(client, server, c_peer, s_peer, "", "select * from t")
    _client_sends(client, c_peer, parse("", "select * from t"), bind(), describe("P"), execute(), sync())
    assert [t for t, _ in _read_messages(s_peer)] == ["B", "D", "E", "S"]
    _server_answers(server, s_peer, frame("E", STALE) + frame("Z", b"I"))
    assert [t for t, _ in _read_messages(c_peer)] == ["1"]  # the error and its ReadyForQuery are held back
    again = _read_messages(s_peer)
    assert [t for t, _ in again] == ["P", "B", "D", "E", "S"]
    fresh = again[0][1].split(b"\0")[0]
    assert fresh != old and fresh in again[1][1] and old in server.evicted
    _server_answers(server, s_peer, frame("1") + frame("2") + ROW + RFQ)
    assert [t for t, _ in _read_messages(c_peer)] == ["2", "T", "D", "C", "Z"]
    assert not client.rw.rq and client.expect == 0 and client.server is None and client.rw.held_error is None


def test_stale_plan_in_a_failed_transaction_reaches_the_client(linked: Any) -> None:
    """Inside a transaction block the error has aborted the client's transaction: nothing to redo."""
    client, server, c_peer, s_peer = linked
    _prime(client, server, c_peer, s_peer, "", "select * from t")
    _client_sends(client, c_peer, parse("", "select * from t"), bind(), execute(), sync())
    _read_messages(s_peer)
    _server_answers(server, s_peer, frame("E", STALE) + frame("Z", b"E"))
    got = _read_messages(c_peer)
    assert [t for t, _ in got] == ["1", "E", "Z"] and got[1][1] == STALE and got[2][1] == b"E"
    assert _read_messages(s_peer) == [] and client.expect == 0 and client.rw.held_error is None


# ------------------------------------------------------------------ simple Query fast path (_fast_query)
def test_simple_query_fast_path_and_what_it_leaves_alone(linked: Any) -> None:
    client, server, c_peer, s_peer = linked
    _client_sends(client, c_peer, query("select 1"))
    assert client.expect == 1 and client.query_start and client.server is server
    assert _read_messages(s_peer) == [("Q", b"select 1\0")]
    _server_answers(server, s_peer, ROW + RFQ)
    assert [t for t, _ in _read_messages(c_peer)] == ["T", "D", "C", "Z"]
    assert client.expect == 0 and client.server is None and client.query_start == 0.0
    # LISTEN behind a blank goes to the general path (the fast path leaves blanks, d/D and l/L to it), which
    # runs it on the server as a LISTEN of a channel nobody notifies (session/listening.py), sent once the
    # LISTEN connection listens (queued behind a Flush until then; here the listener's answer is played).
    _client_sends(client, c_peer, query(" \tlisten chan"))
    assert _read_messages(s_peer) == []
    listening._listener_listens(client, server)
    server._flush()  # (what the loop does once the server's write interest is back)
    sent = _read_messages(s_peer)
    assert sent == [("H", b""), ("Q", b'LISTEN "pg_doorman.listen"\0')]
    _server_answers(server, s_peer, frame("C", b"LISTEN\0") + RFQ)
    assert [t for t, _ in _read_messages(c_peer)] == ["C", "Z"]
    assert client.lsn is not None and client.lsn.channels == {b"chan"}
    # Back in the pool, the server is cleaned of that LISTEN (DIRTY_LISTEN) before anyone else uses it.
    assert _read_messages(s_peer) == [("Q", b"UNLISTEN *\0")]
    s_peer.sendall(frame("C", b"UNLISTEN\0") + RFQ)
    server.on_readable()  # (INTERNAL: the cleanup's answer is swallowed)
    assert server.state != ACTIVE and client.server is None
    # ... and so does one after another statement.
    _client_sends(client, c_peer, query("select 1; unlisten chan"))
    assert _read_messages(s_peer) == [("Q", b"select 1; unlisten chan\0")]
    _server_answers(server, s_peer, ROW + frame("C", b"UNLISTEN\0") + RFQ)
    assert [t for t, _ in _read_messages(c_peer)] == ["T", "D", "C", "C", "Z"] and client.lsn.channels == set()
    # Two queries in one read: the general path relays both, and the server is kept until both answered.
    _client_sends(client, c_peer, query("select 1"), query("select 2"))
    assert [t for t, _ in _read_messages(s_peer)] == ["Q", "Q"] and client.expect == 2
    _server_answers(server, s_peer, ROW + RFQ)
    assert client.server is server  # one answer of two: not released
    _server_answers(server, s_peer, ROW + RFQ)
    assert [t for t, _ in _read_messages(c_peer)] == ["T", "D", "C", "Z"] * 2
    assert client.expect == 0 and client.server is None
    # A query split across reads: the second part reaches the scanner mid-message, not the fast path.
    q = query("select 3")
    _client_sends(client, c_peer, q[:7])
    _client_sends(client, c_peer, q[7:])
    assert b"".join(frame(t, b) for t, b in _read_messages(s_peer)) == q and client.expect == 1
    _server_answers(server, s_peer, ROW + RFQ)
    assert [t for t, _ in _read_messages(c_peer)] == ["T", "D", "C", "Z"] and client.server is None


def test_simple_query_behind_a_pipelined_batch_keeps_the_response_order(linked: Any) -> None:
    """With extended-protocol responses queued, a Query must join the queue (general path)."""
    client, server, c_peer, s_peer = linked
    _client_sends(client, c_peer, parse("", "select 1"), bind("", ""), execute(), sync())
    assert client.rw.rq
    _client_sends(client, c_peer, query("select 2"))
    # The same statement again behind the Query (unnamed: a second Parse of a name would fail with 42P05, as on
    # PostgreSQL), while its first Parse is unanswered in an earlier window (PostgreSQL may skip that one): closed
    # and parsed again (the CloseComplete swallowed), its ParseComplete PostgreSQL's, after the Query's answer.
    _client_sends(client, c_peer, parse("", "select 1"), bind("", ""), execute(), sync())
    assert [t for t, _ in _read_messages(s_peer)] == ["P", "B", "E", "S", "Q", "C", "P", "B", "E", "S"]
    assert client.expect == 3
    _server_answers(server, s_peer, frame("1") + frame("2") + ROW + RFQ + ROW + RFQ + frame("3") + frame("1")
                    + frame("2") + ROW + RFQ)
    assert [t for t, _ in _read_messages(c_peer)] == ["1", "2", "T", "D", "C", "Z", "T", "D", "C", "Z",
                                                      "1", "2", "T", "D", "C", "Z"]
    assert not client.rw.rq and client.expect == 0 and client.server is None


def test_bind_end_whole_tail_and_walk_agree() -> None:
    """frontend.bind_batch_end compares the usual `[Describe portal ""] Execute "" 0, Sync` tail whole before it walks
    the messages: both ways must accept exactly the batches the fast path may take."""
    from pgdoorman.protocol.frontend import bind_batch_end

    b = bind("", "S_1", [b"42"])
    ok = [
        b + execute() + sync(),
        b + describe("P") + execute() + sync(),
        b + describe("P", "p1") + execute() + sync(),  # (a named portal: walked)
        b + execute("", 10) + sync(),  # (a row limit: walked)
    ]
    for batch in ok:
        assert bind_batch_end(memoryview(batch), 0, len(batch)) == len(b), batch
    refused = [
        b + describe("S", "S_1") + execute() + sync(),  # a statement Describe: the general path's queue
        b + execute() + sync() + sync(),
        b + execute() + frame("H") + sync(),
        b + describe("P") + describe("P") + execute() + sync(),
        b + describe("P") + sync(),
    ]
    for batch in refused:
        assert bind_batch_end(memoryview(batch), 0, len(batch)) == 0, batch
