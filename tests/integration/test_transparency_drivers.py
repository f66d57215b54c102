"""Real drivers, directly on PostgreSQL and through pgdoorman in transaction mode, must see the same thing:
psycopg's aborted pipeline must not poison later pipelines (defect 4), and statements parsed before DDL must
not be served after it (defect 5: re-created types, changed column types)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg.types.composite import CompositeInfo, register_composite
from psycopg.types.enum import EnumInfo, register_enum

from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER
from tests.support.pooler import Pooler

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def txn_pooler(pg: Any, tmp_path_factory: Any) -> Iterator[Pooler]:
    from tests.support.cluster import pooler_config

    cfg = pooler_config(pg, pool_mode="transaction", pool_size=5)
    p = Pooler(cfg, str(tmp_path_factory.mktemp("transparency-drivers"))).start()
    yield p
    p.stop()


def _targets(pg: Any, p: Pooler) -> list[tuple[str, str, int]]:
    return [("direct", pg.host, pg.port), ("pooled", p.host, p.port)]


def _dsn(host: str, port: int) -> str:
    return f"host={host} port={port} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname={DBNAME} sslmode=disable"


# psycopg's own pipeline tests, in its pure-Python implementation (as reported): a pipeline whose first
# statement fails and whose connection closes without a rollback, then pipelines with transaction blocks.
PIPELINE_SCRIPT = r'''
import sys
import psycopg
assert psycopg.pq.__impl__ == "python", psycopg.pq.__impl__
dsn = sys.argv[1]
out = []
conn = psycopg.connect(dsn)
try:
    with conn.pipeline():
        conn.execute("select error")
        conn.execute("create table voila ()")
        conn.commit()
except psycopg.Error as e:
    out.append(("aborted", type(e).__name__))
conn.close()

def tx(conn):
    with conn.pipeline():
        with conn.transaction():
            conn.execute("select 1")

def nested(conn):
    with conn.pipeline():
        with conn.transaction():
            conn.execute("select 1")
            with conn.transaction():
                conn.execute("select 2")

def implicit(conn):
    with conn.pipeline():
        conn.execute("select 1")
        conn.commit()

def many(conn):
    with conn.pipeline():
        cur = conn.cursor()
        cur.executemany("select %s::int", [(1,), (2,)], returning=True)
        return [cur.fetchone()[0] for _ in [0] if True] + ([cur.fetchone()[0]] if cur.nextset() else [])

for _ in range(3):
    for f in (tx, nested, implicit, many):
        conn = psycopg.connect(dsn)
        try:
            out.append((f.__name__, "ok", f(conn)))
        except psycopg.Error as e:
            out.append((f.__name__, "error", str(e)))
        conn.close()
print(repr(out))
'''


def test_aborted_pipeline_does_not_poison_later_ones(pg: Any, txn_pooler: Pooler) -> None:
    results = {}
    for name, host, port in _targets(pg, txn_pooler):
        env = {**os.environ, "PSYCOPG_IMPL": "python"}
        run = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, _dsn(host, port)], env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        results[name] = run.stdout
    assert results["pooled"] == results["direct"]
    assert "error" not in results["direct"]


def test_recreated_types_are_not_served_stale(pg: Any, txn_pooler: Pooler) -> None:
    """A type dropped and created again under the same name: psycopg sends a registered composite's or enum's
    new OID in Parse, and a text parameter cast to it (`%s::tmptype`) is parsed against the current type,
    whether the DDL ran through the pooler or on another connection. psycopg's own server-side prepare is off
    (it would fail on PostgreSQL too)."""
    results = {}
    for name, host, port in _targets(pg, txn_pooler):
        got: list[Any] = []
        for ddl_via in ("same", "direct"):
            with psycopg.connect(_dsn(host, port), autocommit=True, prepare_threshold=None) as conn, \
                    psycopg.connect(_dsn(pg.host, pg.port), autocommit=True) as direct:
                ddl = conn if ddl_via == "same" else direct
                for round_ in range(3):
                    ddl.execute("drop type if exists tmptype cascade; drop type if exists tmpenum cascade")
                    ddl.execute("create type tmptype as (a int, b text); create type tmpenum as enum ('x', 'y')")
                    for _ in range(2):
                        try:
                            got.append(("ok", str(conn.execute("select %s::tmptype, %s::tmpenum",
                                                                [f"({round_},r)", "y"]).fetchone())))
                        except psycopg.Error as e:
                            got.append(("error", type(e).__name__, str(e).splitlines()[0]))
                    cinfo = CompositeInfo.fetch(conn, "tmptype")
                    einfo = EnumInfo.fetch(conn, "tmpenum")
                    assert cinfo is not None and einfo is not None
                    register_composite(cinfo, conn)
                    register_enum(einfo, conn)
                    for _ in range(2):
                        try:
                            row = conn.execute("select %s::tmptype, %s",
                                               [cinfo.python_type(round_, "r"), einfo.enum.y]).fetchone()
                            got.append(("ok", str(row)))
                        except psycopg.Error as e:
                            got.append(("error", type(e).__name__, str(e).splitlines()[0]))
                ddl.execute("drop type tmptype cascade; drop type tmpenum cascade")
        results[name] = got
    assert results["pooled"] == results["direct"]
    assert all(r[0] == "ok" for r in results["direct"]), results["direct"]


def test_changed_column_types_are_not_served_stale(pg: Any, txn_pooler: Pooler) -> None:
    """asyncpg prepares by text (Parse, Describe); after ALTER TABLE or a table re-created with other column
    types, the same text must describe the new types, whether the DDL ran through the pooler or on another
    connection straight to PostgreSQL; with asyncpg's statement cache and without it."""
    kw = {"user": SCRAM_USER, "password": SCRAM_PASSWORD, "database": DBNAME}

    async def run(host: str, port: int, ddl_host: str, ddl_port: int, cache: int) -> list[Any]:
        conn = await asyncpg.connect(host=host, port=port, statement_cache_size=cache, **kw)
        ddl = await asyncpg.connect(host=ddl_host, port=ddl_port, **kw)
        got: list[Any] = []
        try:
            await ddl.execute("drop table if exists stale_t; create table stale_t (a int); "
                              "insert into stale_t values (1)")
            got.append([tuple(r) for r in await conn.fetch("select * from stale_t")])
            await ddl.execute("alter table stale_t alter column a type text")
            for _ in range(2):
                try:
                    got.append([tuple(r) for r in await conn.fetch("select * from stale_t")])
                except asyncpg.PostgresError as e:
                    got.append(("error", type(e).__name__))
            async with conn.transaction():
                got.append([tuple(r) for r in await conn.fetch("select * from stale_t")])
            await ddl.execute("drop table stale_t; create table stale_t (a numeric, b date)")
            stmt = await conn.prepare("select * from stale_t where a = $1")
            got.append([t.name for t in stmt.get_parameters()])
            got.append([a.type.name for a in stmt.get_attributes()])
        finally:
            await conn.close()
            await ddl.close()
        return got

    for cache in (100, 0):
        for ddl_via in ("pooled", "direct"):
            results = {}
            for name, host, port in _targets(pg, txn_pooler):
                dh, dp = (host, port) if ddl_via == "pooled" else (pg.host, pg.port)
                results[name] = asyncio.run(run(host, port, dh, dp, cache))
            assert results["pooled"] == results["direct"], (cache, ddl_via)
