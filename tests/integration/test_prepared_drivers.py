"""Real drivers using protocol-level prepared statements in transaction mode, pool_size 2, 20 concurrent
clients each checking its own results (asyncpg's statement cache, psycopg with prepare_threshold=0 and in
pipeline mode, SQLAlchemy on asyncpg), and `pgbench -M prepared` with 100 clients: zero errors."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import asyncpg
import psycopg
import pytest
from sqlalchemy import Integer, String, select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tests.support.cluster import DBNAME, MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER

pytestmark = pytest.mark.timeout(300)

# The issue asks for 30 seconds of load per driver; the three drivers run at the same time.
SOAK = float(os.environ.get("PGDOORMAN_SOAK_SECONDS", "30"))
CLIENTS = 20


async def _each_client(client: Callable[[int], Awaitable[None]]) -> None:
    await asyncio.gather(*(client(i) for i in range(CLIENTS)))


def _run(name: str, main: Coroutine[Any, Any, None], errors: list[str]) -> None:
    try:
        asyncio.run(main)
    except Exception as e:  # noqa: BLE001 - reported as a test failure by the caller
        errors.append(f"{name} crashed: {e!r}")


def _asyncpg_load(p: Any, deadline: float, errors: list[str], counter: list[int]) -> None:
    async def client(i: int) -> None:
        conn = await asyncpg.connect(host=p.host, port=p.port, user=MD5_USER, password=MD5_PASSWORD,
                                     database=DBNAME)
        try:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                v = await conn.fetchval("select $1::int * 3 + $2::int", i, n)
                if v != i * 3 + n:
                    errors.append(f"asyncpg {i}: {v}")
                row = await conn.fetchrow("select $1::text as a, $2::int8 as b", f"c{i}", n)
                if (row["a"], row["b"]) != (f"c{i}", n):
                    errors.append(f"asyncpg {i}: {row}")
                async with conn.transaction():
                    await conn.execute("select $1::int", i)
                    vals = await conn.fetch("select g + $1::int from generate_series(1, 3) g", i)
                    if [r[0] for r in vals] != [i + 1, i + 2, i + 3]:
                        errors.append(f"asyncpg {i} tx: {vals}")
                counter[0] += 1
        finally:
            await conn.close()

    _run("asyncpg", _each_client(client), errors)


def _psycopg_load(p: Any, deadline: float, errors: list[str], counter: list[int]) -> None:
    async def client(i: int) -> None:
        conn = await psycopg.AsyncConnection.connect(p.dsn(SCRAM_USER, SCRAM_PASSWORD, DBNAME), autocommit=True,
                                                     prepare_threshold=0)
        try:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                cur = await conn.execute("select %s::int + %s::int", (i, n))
                if (await cur.fetchone()) != (i + n,):
                    errors.append(f"psycopg {i}")
                if n % 3 == 0:
                    async with conn.pipeline():
                        c1 = await conn.execute("select %s::text", (f"p{i}",))
                        c2 = await conn.execute("select %s::int * 2", (n,))
                    if (await c1.fetchone(), await c2.fetchone()) != ((f"p{i}",), (n * 2,)):
                        errors.append(f"psycopg pipeline {i}")
                counter[0] += 1
        finally:
            await conn.close()

    _run("psycopg", _each_client(client), errors)


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "sa_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(50))


def _sqlalchemy_load(p: Any, deadline: float, errors: list[str], counter: list[int]) -> None:
    url = f"postgresql+asyncpg://{MD5_USER}:{MD5_PASSWORD}@{p.host}:{p.port}/{DBNAME}"

    async def main() -> None:
        engine = create_async_engine(url, pool_size=CLIENTS, max_overflow=0)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)

        async def client(i: int) -> None:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                async with AsyncSession(engine) as session, session.begin():
                    session.add(Item(owner=i, name=f"{i}-{n}"))
                async with AsyncSession(engine) as session:
                    names = (await session.scalars(select(Item.name).where(Item.owner == i))).all()
                    if len(names) != n or any(not x.startswith(f"{i}-") for x in names):
                        errors.append(f"sqlalchemy {i}: {len(names)} rows, expected {n}")
                    v = (await session.execute(text("select :a + 1"), {"a": i})).scalar()
                    if v != i + 1:
                        errors.append(f"sqlalchemy {i}: {v}")
                counter[0] += 1

        await _each_client(client)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        await engine.dispose()

    _run("sqlalchemy", main(), errors)


def test_drivers_with_prepared_statements_in_transaction_mode(pooler_factory: Any) -> None:
    p = pooler_factory(pool_size=2, general={"query_wait_timeout": 30000})
    deadline = time.monotonic() + SOAK
    errors: list[str] = []
    counts = {name: [0] for name in ("asyncpg", "psycopg", "sqlalchemy")}
    threads = [
        threading.Thread(target=_asyncpg_load, args=(p, deadline, errors, counts["asyncpg"])),
        threading.Thread(target=_psycopg_load, args=(p, deadline, errors, counts["psycopg"])),
        threading.Thread(target=_sqlalchemy_load, args=(p, deadline, errors, counts["sqlalchemy"])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SOAK + 120)
    print("iterations:", {k: v[0] for k, v in counts.items()})
    assert errors == []
    assert all(v[0] > CLIENTS for v in counts.values()), counts


@pytest.mark.skipif(shutil.which("pgbench") is None, reason="pgbench is not installed (Debian postgresql-client)")
def test_pgbench_prepared_100_clients(pooler_factory: Any, pg: Any) -> None:
    p = pooler_factory(pool_size=5, general={"query_wait_timeout": 30000, "max_connections": 500})
    env = {**os.environ, "PGPASSWORD": MD5_PASSWORD, "PGSSLMODE": "disable"}
    subprocess.run(["pgbench", "-i", "-s", "1", "-h", pg.host, "-p", str(pg.port), "-U", "postgres", DBNAME],
                   check=True, capture_output=True, env=env)
    pg.psql(f"grant select, update, insert on all tables in schema public to {MD5_USER}", dbname=DBNAME)
    for mode, script in (("prepared", ["-S"]), ("prepared", []), ("extended", ["-S"])):
        r = subprocess.run(["pgbench", "-h", p.host, "-p", str(p.port), "-U", MD5_USER, "-M", mode, *script,
                            "-c", "100", "-j", "2", "-T", "5", DBNAME], capture_output=True, text=True, env=env)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out
        m = re.search(r"number of failed transactions: (\d+)", out)
        assert m is not None and m.group(1) == "0", out
        done = re.search(r"number of transactions actually processed: (\d+)", out)
        assert done is not None and int(done.group(1)) > 100, out


def _psycopg_evicting(host: str, port: int) -> list[Any]:
    """psycopg in pipeline mode with a statement cache of 2: it evicts with `DEALLOCATE name`, sent through the
    extended protocol, when its libpq has no PQsendClosePrepared (before 17, as Debian 12's)."""
    out: list[Any] = []
    with psycopg.connect(host=host, port=port, user=SCRAM_USER, password=SCRAM_PASSWORD, dbname=DBNAME,
                         autocommit=True) as conn:
        conn.prepare_threshold = 0
        conn.prepared_max = 2
        for i in range(8):
            try:
                with conn.pipeline():
                    cur = conn.execute(f"select {i} + %s::int", (1,))
                out.append(cur.fetchall())
            except psycopg.Error as e:
                out.append((type(e).__name__, str(e)))
    return out


def test_psycopg_pipeline_evicting_with_deallocate(pooler_factory: Any, pg: Any, monkeypatch: Any) -> None:
    """Before: every statement after the first eviction failed through the pooler ("prepared statement
    \"_pg3_0\" does not exist": the DEALLOCATE reached the server, which knows the pool's names)."""
    import psycopg._connection_base as base

    if not hasattr(base, "_HAS_SEND_CLOSE"):
        pytest.skip(f"psycopg {psycopg.__version__} no longer has _HAS_SEND_CLOSE: this test needs updating")
    monkeypatch.setattr(base, "_HAS_SEND_CLOSE", False)  # as with a libpq before 17
    p = pooler_factory(pool_mode="transaction", pool_size=1)
    want = _psycopg_evicting(pg.host, pg.port)
    assert want == [[(i + 1,)] for i in range(8)]
    assert _psycopg_evicting(p.host, p.port) == want

