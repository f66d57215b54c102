"""psycopg 3 pipeline mode with a failing statement among others, then more statements (the same texts, so the
pooler's statement cache and the statements its server holds are involved): what the application sees through
pgdoorman must be what it sees on PostgreSQL directly (transaction and session mode, pool_size 1 and 2,
prepare_threshold 0 and psycopg's default)."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER

pytestmark = pytest.mark.timeout(120)


def _run(host: str, port: int, threshold: int | None) -> list[Any]:
    seen: list[Any] = []
    conn = psycopg.connect(host=host, port=port, user=SCRAM_USER, password=SCRAM_PASSWORD, dbname=DBNAME,
                           autocommit=True, prepare_threshold=threshold)
    try:
        for rnd in range(3):
            curs = []
            try:
                with conn.pipeline() as p:
                    for sql, args in (("select %s::int + 1", (rnd,)), ("select 1 / %s::int", (0,)),
                                      ("select %s::int + 1", (rnd + 10,)), ("select %s::text", ("x",))):
                        cur = conn.cursor()
                        curs.append(cur)
                        cur.execute(sql, args)
                        if sql.startswith("select 1 /"):
                            p.sync()  # a window of its own ends here, the next one follows
                    seen.append("ok")
            except psycopg.Error as e:
                seen.append(("error", e.sqlstate))
            for cur in curs:
                try:
                    seen.append(cur.fetchall())
                except psycopg.Error as e:
                    seen.append(("fetch", type(e).__name__))
            with conn.pipeline():  # the same statements again, after the failed pipeline
                cur = conn.execute("select %s::int + 1", (rnd,))
                cur2 = conn.execute("select %s::text", ("y",))
            seen.append((cur.fetchall(), cur2.fetchall()))
    finally:
        conn.close()
    return seen


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("size", [1, 2])
@pytest.mark.parametrize("threshold", [0, 5])
def test_psycopg_pipeline_with_a_failure_as_on_postgres(pg: Any, pooler_factory: Any, mode: str, size: int,
                                                        threshold: int) -> None:
    p = pooler_factory(pool_mode=mode, pool_size=size, general={"prepared_statements": True})
    want = _run(pg.host, pg.port, threshold)
    assert ("error", "22012") in want  # (the failure happened: the comparison below is about it)
    assert _run(p.host, p.port, threshold) == want


def _wire_run(host: str, port: int) -> list[Any]:
    """A window that fails slowly, skipping a Parse of "w9"; the next window binds "w9" (it waits in the pooler
    until the first is answered), and more arrives while it waits."""
    from tests.support.wire import WireClient, bind, comparable, execute, parse, sync

    c = WireClient.connect(host, port, SCRAM_USER, DBNAME, SCRAM_PASSWORD)
    try:
        slow_error = "select 1 / (count(*) - count(*))::int from (select pg_sleep(0.3)) s"  # (after 0.3 s)
        c.send(parse("", slow_error) + bind() + execute() + parse("w9", "select 9") + sync()
               + bind("", "w9") + execute() + sync())
        time.sleep(0.1)
        c.send(parse("w9", "select 9") + bind("", "w9") + execute() + sync() + parse("", "select 10") + bind()
               + execute() + sync())
        got = c.read_until("Z") + c.read_until("Z") + c.read_until("Z") + c.read_until("Z")
        return comparable(got)
    finally:
        c.close()


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("size", [1, 2])
def test_messages_waiting_for_an_earlier_window_and_more_behind_them(pg: Any, pooler_factory: Any, mode: str,
                                                                      size: int) -> None:
    p = pooler_factory(pool_mode=mode, pool_size=size, general={"prepared_statements": True})
    want = _wire_run(pg.host, pg.port)
    assert [m for m in want if m[0] == "E"][1][2] == "26000"  # (w9 was skipped: the comparison is about it)
    assert _wire_run(p.host, p.port) == want
