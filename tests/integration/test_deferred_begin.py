"""Deferred BEGIN (issue 12 item 4): in transaction mode a lone BEGIN is answered by the pooler and sent with
the client's next request, so a client that opens a transaction and then thinks holds no server. Everything a
client can see is compared with the same steps run directly on PostgreSQL (pool_size 1 and 2, so the servers
are reused), with the wire client, psycopg 3 and asyncpg."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.support.cluster import ADMIN_PASSWORD, ADMIN_USER, DBNAME, SCRAM_PASSWORD, SCRAM_USER, SUPERUSER
from tests.support.pooler import Pooler
from tests.support.wire import (
    WireClient,
    bind,
    cancel_request,
    execute,
    parse,
    parse_fields,
    query,
    sync,
)

pytestmark = pytest.mark.timeout(180)


def connect(host: str, port: int) -> WireClient:
    return WireClient.connect(host, port, SCRAM_USER, DBNAME, SCRAM_PASSWORD)


@pytest.fixture(scope="module", params=[("transaction", 1, True), ("transaction", 2, True),
                                        ("transaction", 1, False), ("session", 2, True)],
                ids=["tx-pool1", "tx-pool2", "tx-pool1-no-prepared", "session"])
def pooler(request: pytest.FixtureRequest, pg: Any, tmp_path_factory: Any) -> Iterator[Pooler]:
    """prepared_statements off too: the relay then reads messages with another scanner table and handler."""
    from tests.support.cluster import pooler_config

    mode, size, prepared = request.param
    cfg = pooler_config(pg, pool_mode=mode, pool_size=size,
                        general={"query_wait_timeout": 3000, "prepared_statements": prepared})
    p = Pooler(cfg, str(tmp_path_factory.mktemp(f"begin-{mode}-{size}-{prepared}"))).start()
    p.mode = mode  # type: ignore[attr-defined]
    yield p
    p.stop()


def _norm(t: str, body: bytes) -> Any:
    if t in ("E", "N"):
        f = parse_fields(body)
        return (f.get("S"), f.get("V"), f.get("C"), f.get("M"), f.get("P"))
    return body


def run(host: str, port: int, steps: list[bytes]) -> list[list[tuple[str, Any]]]:
    """Each step sent, then everything up to its (last) ReadyForQuery."""
    c = connect(host, port)
    out = []
    try:
        for data in steps:
            c.send(data)
            got = []
            for _ in range(max(1, data.count(b"Q\x00\x00") + data.count(b"S\x00\x00\x00\x04"))):
                got += [(t, _norm(t, b)) for t, b in c.read_until("Z")]
            out.append(got)
    finally:
        c.close()
    return out


SEQUENCES = {
    "commit": [query("BEGIN"), query("select 1"), query("COMMIT"), query("select 2")],
    "empty-commit": [query("BEGIN"), query("COMMIT"), query("select 1")],
    "empty-rollback": [query("begin;"), query("rollback;"), query("select 1")],
    "end-abort": [query("begin work"), query("end"), query("start transaction"), query("abort transaction")],
    "start-tag": [query("START TRANSACTION"), query("select 1"), query("commit")],
    "options": [query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY DEFERRABLE;"),
                query("show transaction_isolation"), query("show transaction_read_only"),
                query("show transaction_deferrable"), query("COMMIT")],
    "options-comma": [query("begin isolation level read uncommitted, read only"),
                      query("show transaction_isolation"), query("commit")],
    "read-only-refuses": [query("BEGIN READ ONLY"), query("create table t_ro (a int)"), query("COMMIT"),
                          query("select 1")],
    "twice": [query("BEGIN"), query("BEGIN"), query("select 1"), query("COMMIT")],
    "serializable": [query("BEGIN ISOLATION LEVEL SERIALIZABLE"), query("show transaction_isolation"),
                     query("commit")],
    "syntax-error": [query("BEGIN, READ ONLY"), query("select 1"), query("BEGIN ISOLATION LEVEL FOO")],
    "error-then-commit": [query("BEGIN"), query("select 1/0"), query("select 1"), query("COMMIT"),
                          query("select 2")],
    "no-transaction": [query("COMMIT"), query("ROLLBACK"), query("select 1")],
    "extended": [query("BEGIN"), parse("", "select $1::int + 1") + bind("", "", [b"41"]) + execute() + sync(),
                 query("COMMIT")],
    "pipelined": [query("BEGIN") + query("ROLLBACK"), query("BEGIN") + query("select 1"), query("commit")],
    "savepoint": [query("BEGIN"), query("savepoint a"), query("select 1/0"), query("rollback to a"),
                  query("select 3"), query("commit")],
    "multi": [query("BEGIN; select 1"), query("commit")],
}


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_same_answers_as_postgres(pg: Any, pooler: Pooler, name: str) -> None:
    steps = SEQUENCES[name]
    direct = run(pg.host, pg.port, steps)
    pooled = run(pooler.host, pooler.port, steps)
    assert pooled == direct


def test_notice_and_tags_are_postgres_own(pg: Any, pooler: Pooler) -> None:
    """The test above means what it says: the tags and the notice compared are PostgreSQL's."""
    got = run(pooler.host, pooler.port, [query("begin"), query("begin"), query("end"), query("commit")])
    assert got[0] == [("C", b"BEGIN\x00"), ("Z", b"T")]
    assert got[1][0][0] == "N" and got[1][0][1][2] == "25001"
    assert got[2] == [("C", b"COMMIT\x00"), ("Z", b"I")]
    assert got[3][0][0] == "N" and got[3][0][1][3] == "there is no transaction in progress"


def _backend_pid(c: WireClient) -> int:
    return int(c.query_rows("select pg_backend_pid()")[0][0] or 0)


def _terminate(pg: Any, pid: int) -> None:
    with WireClient.connect(pg.host, pg.port, SUPERUSER, DBNAME, None) as k:
        k.query(f"select pg_terminate_backend({pid})")


def _column(adm: psycopg.Connection[Any], sql: str, name: str) -> list[Any]:
    cur = adm.execute(sql)
    assert cur.description is not None
    i = [d.name for d in cur.description].index(name)
    return [r[i] for r in cur.fetchall()]


def test_lone_begin_holds_no_server(pg: Any, pooler_factory: Any) -> None:
    """pool_size 1: a client in a deferred transaction leaves the server to others; its transaction is real once
    it sends a statement (the other client's row is visible to it only after that other commit, and its own
    changes stay its own until COMMIT); SHOW CLIENTS counts it active, SHOW SERVERS has no active server."""
    p = pooler_factory(pool_mode="transaction", pool_size=1, general={"query_wait_timeout": 2000})
    with connect(pg.host, pg.port) as setup:
        setup.query("create table if not exists dbt (a int)")
        setup.query("truncate dbt")
    a = connect(p.host, p.port)
    b = connect(p.host, p.port)
    try:
        assert a.query("BEGIN ISOLATION LEVEL REPEATABLE READ")[-1] == ("Z", b"T")
        assert b.query_rows("select 1") == [["1"]]  # would wait 2 s and fail if A held the only server
        with psycopg.connect(p.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgdoorman"), autocommit=True,
                             prepare_threshold=None) as adm:
            states = _column(adm, "show clients", "state")
            servers = _column(adm, "show servers", "state")
        assert sorted(states) == ["active", "idle"] and "active" not in servers
        b.query("insert into dbt values (1)")
        assert a.query_rows("select count(*) from dbt") == [["1"]]  # the snapshot is taken now
        a.query("insert into dbt values (2)")
        b.send(query("select count(*) from dbt"))  # waits: A holds the server from its first statement on
        time.sleep(0.3)
        a.query("insert into dbt values (3)")
        assert a.query_rows("select count(*) from dbt") == [["3"]]
        assert a.query("COMMIT")[-1] == ("Z", b"I")
        rows = [r for t, r in b.read_until("Z") if t == "D"]
        assert len(rows) == 1 and rows[0].endswith(b"3")
    finally:
        a.close()
        b.close()


def test_killed_backend_after_deferred_begin(pg: Any, pooler_factory: Any) -> None:
    """Transaction mode: the backend the client last used is killed after its deferred BEGIN: the transaction
    runs on a fresh server (it had not started anywhere). Session mode defers nothing: the client's own backend
    is killed and it gets PostgreSQL's FATAL, as directly."""
    for mode in ("transaction", "session"):
        p = pooler_factory(pool_mode=mode, pool_size=1, general={"query_wait_timeout": 3000})
        a = connect(p.host, p.port)
        pid = _backend_pid(a)
        assert a.query("BEGIN")[-1] == ("Z", b"T")
        _terminate(pg, pid)
        time.sleep(0.3)
        if mode == "transaction":
            assert _backend_pid(a) != pid
            assert a.query("COMMIT")[-1] == ("Z", b"I")
            assert a.query_rows("select 1") == [["1"]]
        else:
            t, body = a.read_message(timeout=5)  # relayed as PostgreSQL sends it, unasked
            assert t == "E" and parse_fields(body)["C"] == "57P01"
        a.close()


def test_cancel_while_waiting_after_deferred_begin(pg: Any, pooler_factory: Any) -> None:
    """A statement after a deferred BEGIN waits for a server and is cancelled: 57014 and the transaction fails
    ('E'), then PostgreSQL's own 25P02 for the next statement and ROLLBACK: what the same client sees directly
    when its statement is cancelled."""
    p = pooler_factory(pool_mode="transaction", pool_size=1, general={"query_wait_timeout": 20000})
    seen = {}
    for name in ("direct", "pooled"):
        host, port = (pg.host, pg.port) if name == "direct" else (p.host, p.port)
        holder = connect(p.host, p.port)
        holder.query("BEGIN")
        holder.query("select 1")  # holds the only server
        a = connect(host, port)
        got = [[(t, _norm(t, b)) for t, b in a.query("BEGIN")]]
        a.send(query("do $$ begin perform pg_sleep(5); end $$"))  # (a SELECT would send its row description)
        time.sleep(0.5)
        with socket.create_connection((host, port)) as s:
            s.sendall(cancel_request(*a.backend_key))
            s.recv(1)
        got.append([(t, _norm(t, b)) for t, b in a.read_until("Z", timeout=5)])
        holder.query("COMMIT")
        got.append([(t, _norm(t, b)) for t, b in a.query("select 1")])
        got.append([(t, _norm(t, b)) for t, b in a.query("COMMIT")])
        got.append([(t, _norm(t, b)) for t, b in a.query("select 2")])
        seen[name] = got
        a.close()
        holder.close()
    assert seen["pooled"] == seen["direct"]
    assert seen["direct"][1][-1] == ("Z", b"E") and seen["direct"][3][0] == ("C", b"ROLLBACK\x00")


def test_terminate_after_deferred_begin_takes_no_server(pg: Any, pooler_factory: Any) -> None:
    p = pooler_factory(pool_mode="transaction", pool_size=1, general={"query_wait_timeout": 2000})
    holder = connect(p.host, p.port)
    holder.query("BEGIN")
    holder.query("select 1")
    a = connect(p.host, p.port)
    a.query("BEGIN")
    a.terminate()
    a.close()
    holder.query("COMMIT")
    with connect(p.host, p.port) as b:
        assert b.query_rows("select 1") == [["1"]]


# ------------------------------------------------------------------ drivers
def _psycopg_steps(host: str, port: int) -> list[Any]:
    dsn = f"host={host} port={port} dbname={DBNAME} user={SCRAM_USER} password={SCRAM_PASSWORD} sslmode=disable"
    out: list[Any] = []
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        with a.transaction():
            out.append(str(a.info.transaction_status))
            out.append(b.execute("select 1").fetchone())  # the other client runs while A's is open
            out.append(a.execute("show transaction_isolation").fetchone())
        a.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        a.read_only = True
        a.autocommit = False
        out.append(a.execute("show transaction_isolation").fetchone())
        a.commit()
        a.autocommit = True
        with a.transaction():
            pass  # an empty transaction
        out.append(str(a.info.transaction_status))
        try:
            with a.transaction():
                b.execute("select 2")
                a.execute("select 1/0")
        except psycopg.errors.DivisionByZero as e:
            out.append(e.sqlstate)
        out.append(a.execute("select 3").fetchone())
    return out


async def _asyncpg_steps(host: str, port: int) -> list[Any]:
    kw = dict(host=host, port=port, user=SCRAM_USER, password=SCRAM_PASSWORD, database=DBNAME, ssl=False)
    a = await asyncpg.connect(**kw)
    b = await asyncpg.connect(**kw)
    out: list[Any] = []
    try:
        tr = a.transaction(isolation="repeatable_read", readonly=True)
        await tr.start()
        out.append(await b.fetchval("select 1"))
        out.append(await a.fetchval("show transaction_isolation"))
        await tr.commit()
        async with a.transaction():
            pass
        async with a.transaction():
            out.append(await b.fetchval("select 2"))
            out.append(await a.fetchval("select $1::int + 1", 41))
        try:
            async with a.transaction():
                await a.execute("select 1/0")
        except asyncpg.DivisionByZeroError as e:
            out.append(e.sqlstate)
        out.append(await a.fetchval("select 3"))
    finally:
        await a.close()
        await b.close()
    return out


@pytest.mark.parametrize("pool_size,workers", [(1, 1), (2, 1), (1, 2)])
def test_drivers_same_as_postgres(pg: Any, pooler_factory: Any, pool_size: int, workers: int) -> None:
    """With pool_size 1 these steps run a query of client B while client A's transaction is open but empty:
    through a pooler that sent BEGIN at once, B would wait for query_wait_timeout and fail. With two workers
    the clients may land on different workers, and the one server then moves between them."""
    p = pooler_factory(pool_mode="transaction", pool_size=pool_size,
                       general={"query_wait_timeout": 2000, "worker_threads": workers})
    assert _psycopg_steps(p.host, p.port) == _psycopg_steps(pg.host, pg.port)
    assert asyncio.run(_asyncpg_steps(p.host, p.port)) == asyncio.run(_asyncpg_steps(pg.host, pg.port))


def test_binary_upgrade_waits_for_a_deferred_begin(pg: Any, pooler_factory: Any) -> None:
    """A client told it is in a transaction stays with the old process while its BEGIN is deferred (it holds
    no server, but the new process would not know of its transaction), finishes it there, and moves once it
    is idle; an idle client moves at once."""
    from tests.integration.test_ops import alive, current_pid, owner_of, stop_pid, upgrade, wait_exit
    from tests.support.pooler import wait_for

    p = pooler_factory(pool_mode="transaction", pool_size=2, general={"shutdown_timeout": 30000})
    dsn = p.dsn(SCRAM_USER, SCRAM_PASSWORD, DBNAME)
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        a.execute("select 1")
        b.execute("select 1")
        old = current_pid(p)
        with a.transaction():  # BEGIN, deferred
            new = upgrade(p)
            wait_for(lambda: owner_of(b, p.port, [old, new]) == [new], what="the idle client to move")
            time.sleep(1.0)  # several of the old process's hand-over rounds
            assert owner_of(a, p.port, [old, new]) == [old] and alive(old)
            assert a.execute("select 2").fetchone() == (2,)
        wait_for(lambda: owner_of(a, p.port, [old, new]) == [new], what="the client to move after its COMMIT")
        assert a.execute("select 3").fetchone() == (3,) and b.execute("select 4").fetchone() == (4,)
    wait_exit(old, p, timeout=30)
    stop_pid(new)
