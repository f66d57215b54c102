"""Requests PostgreSQL will never answer do not hold a server (issue 18 item 2), in every relay: transaction and
session mode, prepared_statements on and off. Raw protocol through tests/support/wire.py, pool_size 1: each
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
            with connect(relay.host, relay.port) as b:  # the only server is free at once, and the same one
                b.send(query("select pg_backend_pid()"))
                got = b.read_until("Z", timeout=3)
                assert [t for t, _ in got] == ["T", "D", "C", "Z"] and got[-1][1] == b"I"
                assert got[1][1][6:].decode() == pid
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
    PostgreSQL's and reaches this client; a client waiting meanwhile gets only its own answer. (Such a client
    keeps its server until it leaves: docs/robustness.md.)"""
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
