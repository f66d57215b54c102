"""Requests PostgreSQL will never answer do not hold a server (issue 18 item 2), and a COPY FROM STDIN holds it
exactly as long as PostgreSQL works on it, in every relay: transaction and session mode, prepared_statements on
and off. Raw protocol through tests/support/wire.py, pool_size 1: each
sequence runs directly on PostgreSQL and through the pooler, with the same answers; then the server is
checked: in transaction mode a second client gets it at once (the same backend, idle), in session mode the
client goes on and, once it leaves, the next client gets the same backend (it was not closed as busy)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER
from tests.support.pooler import Pooler
from tests.support.wire import (
    WireClient,
    bind,
    comparable,
    describe,
    execute,
    flush,
    frame,
    parse,
    query,
    sync,
)

pytestmark = pytest.mark.timeout(180)

MODES = [("transaction", True), ("transaction", False), ("session", True), ("session", False)]


@pytest.fixture(scope="module", params=MODES, ids=[f"{m}-ps_{'on' if p else 'off'}" for m, p in MODES])
def relay(pg: Any, tmp_path_factory: Any, request: Any) -> Iterator[Pooler]:
    from tests.support.cluster import pooler_config

    mode, prepared = request.param
    cfg = pooler_config(pg, pool_mode=mode, pool_size=1,
                        general={"query_wait_timeout": 20000, "prepared_statements": prepared})
    p = Pooler(cfg, str(tmp_path_factory.mktemp("relay"))).start()
    p.mode = mode  # type: ignore[attr-defined]
    yield p
    p.stop()


def connect(host: str, port: int) -> WireClient:
    return WireClient.connect(host, port, SCRAM_USER, DBNAME, SCRAM_PASSWORD)


def pid_of(c: WireClient) -> str | None:
    return c.query_rows("select pg_backend_pid()")[0][0]


def assert_free_at_once(relay: Pooler, pid: str | None) -> None:
    """Transaction mode, pool_size 1, while the first client is still connected: a second client is served at
    once (within 3 s, not after query_wait_timeout), by the same server `pid`."""
    with connect(relay.host, relay.port) as b:
        b.send(query("select pg_backend_pid()"))
        got = b.read_until("Z", timeout=3)
        assert [t for t, _ in got] == ["T", "D", "C", "Z"] and got[-1][1] == b"I"
        assert got[1][1][6:].decode() == pid


# A step: bytes to send, then read through the `count`-th message of type `stop` (0: nothing to read).
Step = tuple[bytes, str, int]


def run(c: WireClient, steps: list[Step]) -> list[Any]:
    got: list[Any] = []
    for data, stop, count in steps:
        c.send(data)
        for _ in range(count):
            got += c.read_until(stop, timeout=10)
        if not count:
            time.sleep(0.2)  # the next step goes in another read of the pooler
    return comparable(got)


BAD_BIND = bind("", "", ("1",), (7,))  # format code 7: PostgreSQL refuses the Bind, then skips to Sync
SEQUENCES: dict[str, list[Step]] = {
    # The sequence, in one read: the Query is skipped, one ReadyForQuery.
    "query_after_failed_bind": [(parse("", "select $1::int") + BAD_BIND + query("select 2") + execute() + sync(),
                                 "Z", 1)],
    # The same, with the window opened in one read and the rest in another.
    "window_across_reads": [(parse("", "select $1::int"), "", 0),
                            (BAD_BIND + query("select 2") + execute() + sync(), "Z", 1)],
    # The error reaches the pooler (Flush) before the Query is even sent: skipped too.
    "query_after_the_error_arrived": [(parse("", "select $1::int") + BAD_BIND + flush(), "E", 1),
                                      (query("select 2") + query("select 3") + execute() + sync(), "Z", 1)],
    # No error: the Query inside the window runs (its own ReadyForQuery), then the Execute fails (its portal
    # went with the simple query) and PostgreSQL skips to Sync.
    "query_inside_a_good_window": [(parse("", "select $1::int") + bind("", "", ("5",)) + describe("P")
                                    + query("select 2") + execute() + sync(), "Z", 2)],
    # A Query after the Sync of a failed window is not skipped.
    "query_after_the_sync": [(parse("", "select $1::int") + BAD_BIND + sync() + query("select 4"), "Z", 2)],
    # A failed window, then a good one with a Query inside, pipelined.
    "two_windows": [(parse("", "select $1::int") + BAD_BIND + query("select 2") + sync()
                     + parse("", "select 1") + bind() + query("select 6") + execute() + sync(), "Z", 3)],
    # A FunctionCall inside a failed window: skipped as the Query is (int4abs(-3), oid 1397).
    "function_call_after_failed_bind": [(parse("", "select $1::int") + BAD_BIND
                                         + frame("F", b"\x00\x00\x05\x75\x00\x00\x00\x01\x00\x04\xff\xff\xff\xfd"
                                                 b"\x00\x00") + sync(), "Z", 1)],
}


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_skipped_requests_do_not_hold_the_server(pg: Any, relay: Pooler, name: str) -> None:
    steps = SEQUENCES[name]
    with connect(pg.host, pg.port) as d:
        direct = run(d, steps) + comparable(d.query("select 'after'"))
    a = connect(relay.host, relay.port)
    try:
        pid = pid_of(a)
        through = run(a, steps)
        if relay.mode == "transaction":  # type: ignore[attr-defined]
            assert_free_at_once(relay, pid)
        through += comparable(a.query("select 'after'"))
        assert a.transaction_status == "I"
    finally:
        a.close()
    assert through == direct
    with connect(relay.host, relay.port) as b:  # session mode: kept (reset), not closed as busy
        assert pid_of(b) == pid
    assert "Traceback" not in relay.log()


def test_requests_pipelined_behind_a_copy_start_never_reach_another_client(pg: Any, relay: Pooler) -> None:
    """COPY FROM STDIN, its data and CopyDone, then an extended-protocol batch, all sent before PostgreSQL's
    CopyInResponse; then, once answered, another batch with a Query pipelined behind its Sync. Every answer is
    PostgreSQL's and reaches this client; a client waiting meanwhile gets only its own answer."""
    with connect(pg.host, pg.port) as d:
        d.query("create table if not exists hostile_relay_copy (a int)")
    first = (query("copy hostile_relay_copy from stdin") + frame("d", b"1\n") + frame("c")
             + parse("", "select 42") + bind() + execute() + sync())
    second = parse("", "select 43") + bind() + execute() + sync() + query("select 'a' from pg_sleep(0.5)")
    answers = []
    for host, port in ((pg.host, pg.port), (relay.host, relay.port)):
        a = connect(host, port)
        a.send(first)
        got = a.read_until("Z") + a.read_until("Z")
        b = connect(host, port) if relay.mode == "transaction" else None  # type: ignore[attr-defined]
        if b is not None:
            b.send(query("select 'b'"))
        a.send(second)
        got += a.read_until("Z") + a.read_until("Z")
        answers.append(comparable([(t, body) for t, body in got if t != "G"]))
        a.close()
        if b is not None:
            assert b.read_until("Z", timeout=10)[1] == ("D", b"\x00\x01\x00\x00\x00\x01b")
            b.close()
    assert answers[1] == answers[0]
    with connect(relay.host, relay.port) as c:
        assert c.query_rows("select 'c'") == [["c"]]
    assert "Traceback" not in relay.log()


COPY = query("copy relay_copy from stdin")
XCOPY = parse("", "copy relay_copy from stdin") + bind() + execute()
ROW, BAD, DONE, FAIL = frame("d", b"1\n"), frame("d", b"x\n"), frame("c"), frame("f", b"no\x00")
BATCH = parse("", "select 42") + bind() + execute() + sync()
# COPY FROM STDIN with more behind it. PostgreSQL ignores Sync and Flush during the COPY, ends the session on
# anything else but CopyData/CopyDone/CopyFail, and (after an error in the data) ignores what is left of the
# COPY's messages and answers the rest.
COPY_SEQUENCES: dict[str, list[Step]] = {
    # All sent before PostgreSQL's CopyInResponse.
    "copydone_then_batch": [(COPY + ROW + DONE + BATCH, "Z", 2)],
    "copydone_then_query": [(COPY + ROW + DONE + query("select 43"), "Z", 2)],
    "copydone_then_query_and_batch": [(COPY + ROW + DONE + query("select 43") + BATCH, "Z", 3)],
    "copy_in_a_multi_statement_query": [(query("copy relay_copy from stdin; select 9") + ROW + DONE
                                         + query("select 2"), "Z", 2)],
    "two_copies_in_one_query": [(query("copy relay_copy from stdin; copy relay_copy from stdin") + ROW + DONE
                                 + ROW + DONE + query("select 3"), "Z", 2)],
    "copyfail_then_query": [(COPY + ROW + FAIL + query("select 2"), "Z", 2)],
    "bad_row_then_query": [(COPY + BAD + ROW + DONE + query("select 2"), "Z", 2)],
    # Extended protocol: the Sync after the Execute is ignored (libpq, tokio-postgres), the one after the
    # CopyDone/CopyFail is answered.
    "extended_copy_pipelined": [(XCOPY + sync() + ROW + DONE + sync() + BATCH, "Z", 2)],
    "extended_copydone_then_batch": [(XCOPY + sync() + ROW + DONE + BATCH, "Z", 1)],
    "extended_copyfail_pipelined": [(XCOPY + sync() + ROW + FAIL + sync() + query("select 3"), "Z", 2)],
    "extended_copy_without_sync": [(XCOPY + ROW + DONE + sync() + query("select 3"), "Z", 2)],
    # Not pipelined: the client waits for CopyInResponse.
    "extended_bad_row_after_copy_in": [(XCOPY + sync(), "G", 1), (BAD + DONE, "E", 1), (sync(), "Z", 1)],
    "sync_inside_a_good_copy": [(COPY, "G", 1), (ROW + sync() + ROW + DONE, "Z", 1)],
    # The second time the statement is cached on the server (prepared-statement mode's fast batch): the
    # server stays with its client through the whole COPY.
    "extended_copy_twice": [(XCOPY + sync(), "G", 1), (ROW + DONE + sync(), "Z", 1), (XCOPY + sync(), "G", 1),
                            (ROW, "", 0), (ROW + DONE + sync(), "Z", 1)],
    # A COPY that fails on its data is over: what the client pipelined behind the data is answered as usual
    # (after PostgreSQL's skip to Sync for an Execute's COPY), also what it sends after the error reached it.
    "requests_after_bad_data": [(XCOPY + BAD + BAD_BIND + BAD + BATCH + sync() + sync(), "Z", 3)],
    "query_after_bad_data": [(COPY + BAD + query("select 5") + sync(), "Z", 3)],
    "batches_after_the_error_arrived": [(XCOPY + sync(), "G", 1), (BAD, "E", 1), (BATCH + BATCH, "Z", 2)],
    # A Sync after CopyData inside a COPY that fails: whether PostgreSQL read it before the failure (ignored)
    # or after (answered) cannot be known; this client keeps its server until it leaves (closed then).
    "sync_inside_a_failing_copy": [(COPY, "G", 1), (BAD + sync() + ROW + DONE, "Z", 2)],
    "sync_inside_a_failing_copy_pipelined": [(COPY + BAD + sync() + ROW + DONE + query("select 2"), "Z", 3)],
}
KEPT = {"sync_inside_a_failing_copy", "sync_inside_a_failing_copy_pipelined"}


@pytest.mark.parametrize("name", list(COPY_SEQUENCES))
def test_copy_with_requests_behind_it(pg: Any, relay: Pooler, name: str) -> None:
    steps = COPY_SEQUENCES[name]
    with connect(pg.host, pg.port) as d:
        d.query("create table if not exists relay_copy (a int)")
        direct = run(d, steps) + comparable(d.query("select 'after'"))
    a = connect(relay.host, relay.port)
    try:
        pid = pid_of(a)
        through = run(a, steps)
        if relay.mode == "transaction" and name not in KEPT:  # type: ignore[attr-defined]
            assert_free_at_once(relay, pid)
        through += comparable(a.query("select 'after'"))
        assert a.transaction_status == "I"
    finally:
        a.close()
    assert through == direct
    with connect(relay.host, relay.port) as b:
        if name in KEPT:
            assert pid_of(b) != pid  # the server was closed with its client
        else:
            assert pid_of(b) == pid  # session mode: kept (reset), not closed as busy
    assert "Traceback" not in relay.log()


def test_a_waiting_client_never_gets_a_server_in_the_middle_of_a_copy(pg: Any, relay: Pooler) -> None:
    """Extended-protocol COPY FROM STDIN of a statement the server already has (the fast batch in
    prepared-statement mode), its Sync sent before the data as libpq and tokio-postgres do: while the client
    sends its data, a client waiting for the only server must not get it (PostgreSQL would answer its query with
    08P01 and end the session); it gets it once the COPY is answered."""
    if relay.mode != "transaction":  # type: ignore[attr-defined]
        pytest.skip("session mode: a server is never shared while its client is connected")
    with connect(pg.host, pg.port) as d:
        d.query("create table if not exists relay_copy (a int)")
    xcopy = parse("", "copy relay_copy from stdin") + bind() + execute() + sync()
    with connect(relay.host, relay.port) as a, connect(relay.host, relay.port) as b:
        a.send(xcopy)
        a.read_until("G")
        a.send(frame("d", b"1\n") + frame("c") + sync())
        assert [t for t, _ in a.read_until("Z")] == ["C", "Z"]
        a.send(xcopy)  # the statement is on the server now
        a.read_until("G")
        a.send(frame("d", b"2\n"))
        time.sleep(0.2)
        b.send(query("select 'b'"))
        time.sleep(0.3)
        a.send(frame("d", b"3\n") + frame("c") + sync())
        assert comparable(a.read_until("Z")) == [("C", b"COPY 2\x00"), ("Z", b"I")]
        assert [t for t, _ in b.read_until("Z", timeout=10)] == ["T", "D", "C", "Z"]
    assert "Traceback" not in relay.log()
