"""client_anonymous_prepared_cache_size: each client's LRU of its recent unnamed statements.

The pool's own cache is kept at one statement here, so that every Parse of another text evicts the one before
and only the client's LRU can find a statement again. Differential part: sequences of unnamed statements sent
directly to PostgreSQL and through pgdoorman must get the same responses (a Bind of "" always runs the latest
unnamed Parse, also after a failed Parse, a skipped one and a Close), in transaction mode with pool_size 1 and 2
(the client's server switched between steps), with the LRU at 8 and at 1. Then what the LRU is for: a client
alternating between unnamed queries (raw wire, psycopg, asyncpg) has each parsed once on its server, not once
per use, with the answers PostgreSQL gives; with an LRU of 1 each use is a new statement."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.integration.test_admin import admin, rows
from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER, pooler_config
from tests.support.holder import ServerHolder
from tests.support.pooler import Pooler, wait_for
from tests.support.wire import (
    WireClient,
    bind,
    close,
    comparable,
    describe,
    execute,
    parse,
    query,
    sync,
)

pytestmark = pytest.mark.timeout(300)

S = sync()
A, B_, C = "select $1::int + 1 as a", "select $1::text || 'b' as b", "select 3 as c, $1::int as d"


def run(q: str, *params: str) -> bytes:
    return parse("", q) + bind("", "", params) + execute() + S


# Steps: (bytes, ReadyForQuerys to wait for).
SEQUENCES: dict[str, list[tuple[bytes, int]]] = {
    "alternate_three": [(run(q, "7"), 1) for _ in range(3) for q in (A, B_, C)],
    "latest_parse_wins": [(parse("", A) + S, 1), (parse("", B_) + S, 1), (parse("", A) + S, 1),
                          (parse("", B_) + S, 1), (bind("", "", ("x",)) + execute() + S, 1)],
    "latest_after_failed_parse": [(run(A, "1"), 1), (run(B_, "2"), 1), (parse("", "selec bad") + S, 1),
                                  (bind("", "", ("3",)) + execute() + S, 1), (run(A, "4"), 1),
                                  (bind("", "", ("5",)) + execute() + S, 1)],
    "pipeline_alternating": [(parse("", A) + bind("", "", ("1",)) + execute() + parse("", B_)
                              + bind("", "", ("2",)) + execute() + parse("", A) + bind("", "", ("3",)) + execute()
                              + S, 1), (bind("", "", ("4",)) + execute() + S, 1)],
    "describe_alternating": [(parse("", A) + describe("S") + S, 1), (parse("", C) + describe("S") + S, 1),
                             (parse("", A) + describe("S") + S, 1), (bind("", "", ("6",)) + execute() + S, 1)],
    "same_text_other_types": [(parse("", "select $1 as v", (23,)) + bind("", "", ("1",)) + execute() + S, 1),
                              (parse("", "select $1 as v", (25,)) + bind("", "", ("x",)) + execute() + S, 1),
                              (parse("", "select $1 as v", (23,)) + describe("S") + S, 1),
                              (bind("", "", ("2",)) + execute() + S, 1)],
    # Bind with a parameter too many fails, so PostgreSQL skips the Parse after it: "" is still A.
    "skipped_parse_keeps_latest": [(run(B_, "1"), 1), (run(A, "1"), 1),
                                   (bind("", "", ("1", "2")) + execute() + parse("", B_) + S, 1),
                                   (bind("", "", ("8",)) + execute() + S, 1)],
    "close_unnamed_then_bind": [(run(A, "1"), 1), (run(B_, "1"), 1), (close("S") + S, 1),
                                (bind("", "", ("1",)) + execute() + S, 1), (run(A, "9"), 1)],
    "in_transaction": [(query("begin"), 1), (run(A, "1"), 1), (run(B_, "2"), 1), (run(A, "3"), 1),
                       (bind("", "", ("4",)) + execute() + S, 1), (query("commit"), 1)],
}

CASES = [(1, 8), (2, 8), (2, 1)]  # (pool_size, client_anonymous_prepared_cache_size)


def _connect(host: str, port: int) -> WireClient:
    return WireClient.connect(host, port, SCRAM_USER, DBNAME, SCRAM_PASSWORD)


@pytest.fixture(scope="module", params=CASES, ids=[f"pool{p}-lru{n}" for p, n in CASES])
def pooler(request: pytest.FixtureRequest, pg: Any, tmp_path_factory: Any) -> Iterator[Pooler]:
    size, lru = request.param
    cfg = pooler_config(pg, pool_size=size, pool={"prepared_statements_cache_size": 1},
                        general={"client_anonymous_prepared_cache_size": lru,
                                 "server_prepared_statements_cache_size": 100})
    p = Pooler(cfg, str(tmp_path_factory.mktemp(f"pooler-anon-{size}-{lru}"))).start()
    p.pool_size, p.lru = size, lru  # type: ignore[attr-defined]
    yield p
    p.stop()


def _transcript(c: WireClient, steps: list[tuple[bytes, int]], between: Any = None) -> list[Any]:
    out = []
    for data, zs in steps:
        c.send(data)
        got = []
        while zs:
            t, body = c.read_message(timeout=10)
            got.append((t, body))
            zs -= t == "Z"
        out.append(comparable(got))
        if between is not None:
            between()
    return out


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_same_responses_as_postgres(pg: Any, pooler: Pooler, name: str) -> None:
    steps = SEQUENCES[name]
    direct, pooled = _connect(pg.host, pg.port), _connect(pooler.host, pooler.port)
    # pool_size 2: each step runs on the other server than the one before (statements parsed again there;
    # the holder checks it).
    holder = ServerHolder(pooler.host, pooler.port, [pooled], enabled=pooler.pool_size == 2)  # type: ignore[attr-defined]
    try:
        want = _transcript(direct, steps)
        got = _transcript(pooled, steps, holder.move)
        assert got == want
        if pooler.pool_size == 2 and name != "in_transaction":  # type: ignore[attr-defined]
            assert holder.switches > 0, holder.used  # (never two steps in a row on one server: holder checks)
    finally:
        holder.close()
        direct.close()
        pooled.close()


def _server_statements(c: WireClient) -> int:
    return int(c.query_rows("select count(*) from pg_prepared_statements")[0][0] or 0)


@pytest.mark.parametrize("lru", [8, 1])
def test_alternating_unnamed_queries_are_parsed_once_per_server(pooler_factory: Any, lru: int) -> None:
    pooler = pooler_factory(pool_size=1, pool={"prepared_statements_cache_size": 1},
                            general={"client_anonymous_prepared_cache_size": lru,
                                     "server_prepared_statements_cache_size": 100})
    pooled = _connect(pooler.host, pooler.port)
    try:
        before = _server_statements(pooled)
        texts = [f"select $1::int + {i} as v" for i in range(4)]
        for r in range(5):
            for q in texts:
                pooled.send(run(q, str(r)))
                pooled.read_until("Z")
        new = _server_statements(pooled) - before
        # The pool's cache holds one statement: with an LRU of 8 the client finds its four again on the server;
        # with an LRU of 1 every Parse is a new statement, parsed again (the server keeps up to 100 names).
        assert new == (4 if lru >= 4 else 20), new
        with admin(pooler) as a:
            mem = [r for r in rows(a, "POOLS_MEMORY") if r["user"] == SCRAM_USER][0]
            assert int(mem["client_anonymous_count"]) == min(4, lru)
            assert int(mem["client_anonymous_evictions_alive"]) == (0 if lru >= 4 else 19)
    finally:
        pooled.close()


def _psycopg_answers(host: str, port: int) -> list[Any]:
    out = []
    with psycopg.connect(host=host, port=port, user=SCRAM_USER, password=SCRAM_PASSWORD, dbname=DBNAME,
                         sslmode="disable", autocommit=True, prepare_threshold=None) as c:  # unnamed Parse each execute
        for r in range(4):
            out.append(c.execute("select %s::int * 2 as x", (r,)).fetchall())
            out.append(c.execute("select %s::text as y, %s::int as z", (f"t{r}", r)).fetchall())
            out.append(c.execute("select count(*) from generate_series(1, %s::int)", (r + 1,)).fetchall())
            with c.transaction():
                out.append(c.execute("select %s::int * 2 as x", (r + 10,)).fetchall())
                out.append(c.execute("select %s::text as y, %s::int as z", ("in", r)).fetchall())
    return out


async def _asyncpg_answers(host: str, port: int) -> list[Any]:
    # statement_cache_size=0: asyncpg prepares every query as the unnamed statement (Parse, Describe, Bind).
    c = await asyncpg.connect(host=host, port=port, user=SCRAM_USER, password=SCRAM_PASSWORD, database=DBNAME,
                              statement_cache_size=0)
    out: list[Any] = []
    try:
        for r in range(4):
            out.append(await c.fetchval("select $1::int * 3", r))
            out.append(tuple(await c.fetchrow("select $1::text as y, $2::int8 as z", f"a{r}", r)))
            async with c.transaction():
                out.append(await c.fetchval("select $1::int * 3", r + 100))
                out.append([tuple(x) for x in await c.fetch("select g from generate_series(1, $1::int) g", r)])
    finally:
        await c.close()
    return out


def test_drivers_alternating_unnamed_statements_get_postgres_answers(pg: Any, pooler: Pooler) -> None:
    want = _psycopg_answers(pg.host, pg.port)
    assert _psycopg_answers(pooler.host, pooler.port) == want
    want_a = asyncio.run(_asyncpg_answers(pg.host, pg.port))
    assert asyncio.run(_asyncpg_answers(pooler.host, pooler.port)) == want_a


# ------------------------------------------------------------------ the query interner
def _interner(p: Pooler) -> dict[str, tuple[int, int]]:
    with admin(p) as a:
        return {r["kind"]: (int(r["entries"]), int(r["bytes"])) for r in rows(a, "INTERNER")}


def _names(p: Pooler) -> dict[str, str]:
    with admin(p) as a:
        return {r["query"]: r["name"] for r in rows(a, "PREPARED_STATEMENTS")}


X, Y = "select $1::int * 11 as x", "select $1::text || 'named' as y"


def _steps_then(c: WireClient, between: Any) -> list[Any]:
    """An unnamed statement prepared, `between()`, then bound again, then prepared again and run: the answers."""
    out = [comparable(c.read_until("Z")) for _ in [c.send(parse("", X) + bind("", "", ("1",)) + execute() + S)]]
    between()
    c.send(bind("", "", ("2",)) + execute() + S)
    out.append(comparable(c.read_until("Z")))
    c.send(run(X, "3"))
    out.append(comparable(c.read_until("Z")))
    return out


def test_unnamed_only_statements_leave_the_cache_after_the_idle_ttl(pg: Any, pooler_factory: Any) -> None:
    p = pooler_factory(pool_size=1, general={"query_interner_gc_interval_seconds": 1,
                                             "query_interner_anon_idle_ttl_seconds": 1})
    direct, pooled, other = _connect(pg.host, pg.port), _connect(p.host, p.port), _connect(p.host, p.port)
    try:
        other.send(parse("keep", Y) + S)  # named: never dropped for idling
        other.read_until("Z")
        seen: dict[str, Any] = {}

        def idle_past_ttl() -> None:
            seen["before"] = _names(p)
            assert _interner(p) == {"named": (1, len(Y)), "anonymous": (1, len(X))}
            with admin(p) as a:
                top = {r["query"]: r for r in rows(a, "INTERNER 5")}
            assert top[Y]["kind"] == "named" and int(top[Y]["idle_ms"]) == -1
            assert top[X]["kind"] == "anonymous" and len(top[X]["hash"]) == 16
            wait_for(lambda: _interner(p)["anonymous"] == (0, 0), timeout=10, what="the unnamed text swept")
            assert _interner(p)["named"] == (1, len(Y))

        want = _steps_then(direct, lambda: None)
        assert _steps_then(pooled, idle_past_ttl) == want  # the client's statement still runs after the sweep
        # (That client's own statement served its new Parse too.) Another client's Parse of the text makes a
        # new entry, under a new name; the named one is still the same.
        assert X not in _names(p)
        other.send(run(X, "4") + bind("", "keep", ("n",)) + execute() + S)
        assert [t for t, _ in other.read_until("Z")] == ["1", "2", "D", "C", "Z"]
        other.read_until("Z")
        after = _names(p)
        assert after[X] != seen["before"][X] and after[Y] == seen["before"][Y]
    finally:
        for c in (direct, pooled, other):
            c.close()


def test_ttl_zero_keeps_them_and_reset_interner_drops_them(pg: Any, pooler_factory: Any) -> None:
    p = pooler_factory(pool_size=1, general={"query_interner_gc_interval_seconds": 1,
                                             "query_interner_anon_idle_ttl_seconds": 0})
    direct, pooled = _connect(pg.host, pg.port), _connect(p.host, p.port)
    try:
        pooled.send(parse("keep", Y) + S)
        pooled.read_until("Z")

        def reset() -> None:
            time.sleep(1.5)  # six sweep ticks: TTL 0 drops nothing
            assert _interner(p) == {"named": (1, len(Y)), "anonymous": (1, len(X))}
            with admin(p) as a:
                assert a.execute("RESET INTERNER").statusmessage == "RESET"
            assert _interner(p) == {"named": (1, len(Y)), "anonymous": (0, 0)}

        want = _steps_then(direct, lambda: None)
        assert _steps_then(pooled, reset) == want
    finally:
        direct.close()
        pooled.close()
