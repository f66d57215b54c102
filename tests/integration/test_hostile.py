"""Broken and hostile clients never reach another client (issue "Hostile and broken clients"): raw protocol,
transaction mode, pool_size 1, so the next client certainly gets the same server. Each case runs directly on
PostgreSQL too, and the broken client's answers must be PostgreSQL's."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER
from tests.support.pooler import Pooler
from tests.support.wire import (
    WireClient,
    bind,
    comparable,
    execute,
    frame,
    parse,
    query,
    sync,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def one_server(pg: Any, tmp_path_factory: Any) -> Iterator[Pooler]:
    from tests.support.cluster import pooler_config

    cfg = pooler_config(pg, pool_mode="transaction", pool_size=1, general={"query_wait_timeout": 20000})
    p = Pooler(cfg, str(tmp_path_factory.mktemp("hostile"))).start()
    yield p
    p.stop()


def connect(host: str, port: int) -> WireClient:
    return WireClient.connect(host, port, SCRAM_USER, DBNAME, SCRAM_PASSWORD)


def backend_pid(c: WireClient) -> str | None:
    return c.query_rows("select pg_backend_pid()")[0][0]


def test_incomplete_copydata_keeps_the_server_with_its_client(pg: Any, one_server: Pooler) -> None:
    """Defect 1: SELECT 1, then a CopyData announcing 1,000 bytes with 5 sent. The server must not serve
    anyone else before the message is whole; then it does, and nobody's query is swallowed."""
    p = one_server
    a = connect(p.host, p.port)
    b = connect(p.host, p.port)
    try:
        head = b"d" + struct.pack("!I", 4 + 1000)
        a.send(query("select 1") + head + b"x" * 5)
        assert [t for t, _ in a.read_until("Z")] == ["T", "D", "C", "Z"]
        b.send(query("select 'b'"))
        with pytest.raises(TimeoutError):
            b.read_message(timeout=1.0)  # the only server is still reading A's message
        a.send(b"x" * 995)  # the message is whole: PostgreSQL ignores a CopyData outside COPY
        assert comparable(b.read_until("Z", timeout=10)) == comparable(direct_answer(pg, "select 'b'"))
        assert a.query_rows("select 'a'") == [["a"]]
    finally:
        a.close()
        b.close()
    # A client that leaves mid-message costs its server (it cannot be handed on), never the next client.
    a = connect(p.host, p.port)
    a.send(query("select 1") + b"d" + struct.pack("!I", 4 + 1000) + b"x" * 5)
    a.read_until("Z")
    a.close()
    with connect(p.host, p.port) as c:
        assert c.query_rows("select 'c'") == [["c"]]


def direct_answer(pg: Any, sql: str) -> list[tuple[str, bytes]]:
    with connect(pg.host, pg.port) as d:
        return d.query(sql)


def test_query_skipped_after_an_error_does_not_pin_the_server(pg: Any, one_server: Pooler) -> None:
    """Defect 2: Parse, a Bind that fails (format code 7), a simple Query, Execute, Sync: PostgreSQL skips the
    Query and answers one ReadyForQuery; the server is free for the next client right after it."""
    batch = (parse("", "select $1::int") + bind("", "", ("1",), (7,)) + query("select 2") + execute() + sync())
    answers = []
    for host, port in ((pg.host, pg.port), (one_server.host, one_server.port)):
        a = connect(host, port)
        a.send(batch)
        answers.append(comparable(a.read_until("Z")))
        with connect(host, port) as b:
            assert b.query_rows("select 'next'") == [["next"]]
        answers.append(comparable(a.query("select 'a again'")))
        a.close()
    assert answers[2:] == answers[:2]
    assert [m[0] for m in answers[0]] == ["1", "E", "Z"]  # the Query was skipped


MALFORMED = {
    "empty_query": frame("Q", b""),
    "query_without_nul": frame("Q", b"select 1"),
    "parse_without_nuls": frame("P", b"stmt"),
    "parse_counts_past_end": frame("P", b"\x00select $1\x00" + struct.pack("!h", 5) + b"\x00\x00\x00\x17"),
    "bind_without_nuls": frame("B", b"portal"),
    "bind_counts_past_end": parse("", "select $1::text, $2::text, $3::text")
    + frame("B", b"\x00\x00" + struct.pack("!hh", 0, 3) + struct.pack("!i", 100) + b"ab"),
    "describe_empty": frame("D", b""),
    "describe_bad_kind": frame("D", b"Xname\x00"),
    "close_without_nul": frame("C", b"Sname"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_bodies_get_postgres_answer_and_cost_no_server(pg: Any, one_server: Pooler, name: str) -> None:
    """Defect 3: a malformed body gets PostgreSQL's own 08P01 answer (then the skip to Sync), the connection
    goes on, and the server is the same one afterwards (never closed for it)."""
    msg = MALFORMED[name]
    answers = []
    pids = []
    for host, port in ((pg.host, pg.port), (one_server.host, one_server.port)):
        with connect(host, port) as c:
            pids.append(backend_pid(c))
            c.send(msg + (b"" if msg[:1] == b"Q" else sync()))
            answers.append(comparable(c.read_until("Z")))
            answers.append(comparable(c.query("select 'after'")))
            pids.append(backend_pid(c))
    assert answers[2:] == answers[:2]
    assert any(a[0] == "E" and a[2] == "08P01" for a in answers[0]), answers[0]
    assert pids[2] == pids[3]  # through the pooler: the same (only) server before and after
    assert "Traceback" not in one_server.log()


def test_a_server_that_breaks_the_protocol_gives_its_clients_an_error(pg: Any, pooler_factory: Any) -> None:
    """A "server" whose first answer has a length word below 4 (no PostgreSQL sends that): the waiting client
    gets a FATAL error naming it, and the pooler logs no traceback."""
    import socket
    import threading

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    stop = threading.Event()

    def serve() -> None:
        lsock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(1024)
                    conn.sendall(b"R\x00\x00\x00\x02")
                    conn.recv(1024)
                except OSError:
                    pass

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        p = pooler_factory(pool_mode="session", pool_size=1, pool={"server_port": lsock.getsockname()[1]})
        with pytest.raises(Exception) as ei:
            connect(p.host, p.port)
        assert "08P01" in str(ei.value) and "invalid message from server" in str(ei.value)
        assert "Traceback" not in p.log()
    finally:
        stop.set()
        th.join(timeout=5)
        lsock.close()


def test_requests_pipelined_behind_a_copy_start_stay_with_their_client(pg: Any, one_server: Pooler) -> None:
    """COPY FROM STDIN, its data and CopyDone, then an extended-protocol batch, all sent before PostgreSQL's
    CopyInResponse: every answer reaches this client (as on PostgreSQL), none the next client (with pool_size 1
    it comes after it; tests/integration/test_hostile_relay.py checks that it gets the server at once)."""
    with connect(pg.host, pg.port) as d:
        d.query("drop table if exists hostile_copy; create table hostile_copy (a int)")
    batch = (query("copy hostile_copy from stdin") + frame("d", b"1\n") + frame("c")
             + parse("", "select 42") + bind() + execute() + sync())
    answers = []
    for host, port in ((pg.host, pg.port), (one_server.host, one_server.port)):
        a = connect(host, port)
        a.send(batch)
        got = a.read_until("Z") + a.read_until("Z")
        answers.append(comparable([(t, b) for t, b in got if t != "G"]))
        answers.append(comparable(a.query("select 'a again'")))
        a.close()
        with connect(host, port) as b:
            assert b.query_rows("select 'b'") == [["b"]]
    assert answers[2:] == answers[:2]
    assert "unexpected data from an idle server" not in one_server.log()
