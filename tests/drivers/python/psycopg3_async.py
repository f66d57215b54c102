"""psycopg 3 (asyncio API) driver program: the canonical scenarios with AsyncConnection, async pipeline
mode and async cancel, one JSON line per scenario."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import psycopg
from common import (
    BATCH_SIZE,
    LISTEN_TXN_NA,
    LISTEN_TXN_SILENT,
    PREPARED_REUSES,
    ROWS_COPY,
    ROWS_LARGE,
    TXNS_PER_CLIENT,
    CheckFailed,
    NotApplicable,
    Params,
    bytea_payload,
    check,
    client_value,
    copy_rows,
    describe,
    emit_version,
    expect_sqlstate,
    gather_clients,
    libpq_str,
    listen_refused,
    md5hex,
    run_async,
    sleep_query,
    unique,
)

NAME = "psycopg3-async"


class Driver:
    def __init__(self, params: Params) -> None:
        self.p = params

    async def connect(self, user: str | None = None, password: str | None = None) -> Any:
        return await psycopg.AsyncConnection.connect(self.p.conninfo(user, password), autocommit=True)

    async def one(self, conn: Any, sql: str, args: Any = None, **kw: Any) -> Any:
        cur = await conn.execute(sql, args, **kw)
        return await cur.fetchone()

    async def table(self, conn: Any, cols: str = "k int, v text") -> str:
        name = unique("t")
        await conn.execute(f"CREATE TABLE {name} ({cols})")
        return name

    async def _login(self, user: str, password: str) -> str:
        async with await self.connect(user, password) as conn:
            got = (await self.one(conn, "SELECT current_user"))[0]
            check(got == user, f"current_user is {got!r}, expected {user!r}")
        try:
            await (await self.connect(user, password + "-wrong")).close()
        except psycopg.OperationalError as exc:
            text = str(exc).lower()
            check("password" in text or "auth" in text, f"unexpected login error: {describe(exc)}")
            return "wrong password refused"
        raise CheckFailed("login with a wrong password succeeded")

    async def login_scram(self) -> str:
        return await self._login(self.p.user, self.p.password)

    async def login_md5(self) -> str:
        return await self._login(self.p.md5_user, self.p.md5_password)

    async def simple_query(self) -> None:
        async with await self.connect() as conn:
            cur = await conn.execute("SELECT 1 AS a; SELECT 'x' || 'y' AS b", prepare=False)
            check(await cur.fetchall() == [(1,)], "first result set")
            check(cur.nextset(), "second result set missing")
            check(await cur.fetchall() == [("xy",)], "second result set")

    async def param_query(self) -> None:
        vals = (42, "héllo 'quoted' \\ \"", None, True, Decimal("12.345"), b"\x00\x01\xff'")
        async with await self.connect() as conn:
            row = await self.one(
                conn, "SELECT %s::int, %s::text, %s::text, %s::bool, %s::numeric, %s::bytea", vals
            )
            check(row == vals, f"round trip {row!r} != {vals!r}")

    async def prepared_reuse(self) -> str:
        async def client(cid: int) -> None:
            async with await self.connect() as conn:
                for j in range(PREPARED_REUSES):
                    async with conn.transaction():
                        row = await self.one(
                            conn, "SELECT %s::int * 2 + %s::int, %s::text", (cid, j, f"c{cid}"), prepare=True
                        )
                    check(row == (cid * 2 + j, f"c{cid}"), f"client {cid} got {row!r} at reuse {j}")

        await gather_clients(self.p.clients, client)
        return f"{self.p.clients} clients x {PREPARED_REUSES} transactions"

    async def transaction(self) -> None:
        async with await self.connect() as conn, await self.connect() as other:
            t = await self.table(conn)
            try:
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {t} VALUES (1, 'committed')")
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {t} VALUES (2, 'rolled back')")
                    raise psycopg.Rollback()
                await conn.set_autocommit(False)
                await conn.execute(f"INSERT INTO {t} VALUES (3, 'committed')")
                await conn.commit()
                await conn.execute(f"INSERT INTO {t} VALUES (4, 'rolled back')")
                await conn.rollback()
                await conn.set_autocommit(True)
                cur = await other.execute(f"SELECT k FROM {t} ORDER BY k")
                rows = await cur.fetchall()
                check(rows == [(1,), (3,)], f"visible rows {rows!r}, expected [1, 3]")
            finally:
                await conn.set_autocommit(True)
                await conn.execute(f"DROP TABLE {t}")

    async def error_recovery(self) -> None:
        async with await self.connect() as conn:
            t = await self.table(conn)
            try:
                try:
                    await conn.execute("SELECT 1/0")
                    raise CheckFailed("division by zero did not fail")
                except psycopg.Error as exc:
                    expect_sqlstate(exc, "22012")
                check(await self.one(conn, "SELECT 2") == (2,), "query after error")
                await conn.set_autocommit(False)
                await conn.execute(f"INSERT INTO {t} VALUES (1, 'x')")
                try:
                    await conn.execute("SELECT 1/0")
                    raise CheckFailed("division by zero did not fail")
                except psycopg.Error as exc:
                    expect_sqlstate(exc, "22012")
                try:
                    await conn.execute("SELECT 1")
                    raise CheckFailed("statement in an aborted transaction did not fail")
                except psycopg.Error as exc:
                    expect_sqlstate(exc, "25P02")
                await conn.rollback()
                check(await self.one(conn, "SELECT 3") == (3,), "query after rollback")
                await conn.commit()
                n = (await self.one(conn, f"SELECT count(*) FROM {t}"))[0]
                check(n == 0, f"rolled-back insert visible ({n} rows)")
            finally:
                await conn.rollback()
                await conn.set_autocommit(True)
                await conn.execute(f"DROP TABLE {t}")

    async def copy_in(self) -> None:
        rows = copy_rows()
        async with await self.connect() as conn:
            t = await self.table(conn)
            try:
                async with conn.cursor() as cur:
                    async with cur.copy(f"COPY {t} (k, v) FROM STDIN") as cp:
                        for r in rows:
                            await cp.write_row(r)
                got = await self.one(conn, f"SELECT count(*), sum(k) FROM {t}")
                check(got == (ROWS_COPY, sum(range(ROWS_COPY))), f"count/sum {got!r}")
                v = (await self.one(conn, f"SELECT v FROM {t} WHERE k = 1000"))[0]
                check(v == rows[1000][1], f"escaped value {v!r}")
            finally:
                await conn.execute(f"DROP TABLE {t}")

    async def copy_out(self) -> None:
        async with await self.connect() as conn, conn.cursor() as cur:
            async with cur.copy(
                f"COPY (SELECT g, 'v' || g FROM generate_series(1, {ROWS_COPY}) g) TO STDOUT"
            ) as cp:
                got = [r async for r in cp.rows()]
        expected = [(str(i), f"v{i}") for i in range(1, ROWS_COPY + 1)]
        check(got == expected, f"copy out mismatch ({len(got)} rows)")

    async def large_result(self) -> None:
        async with await self.connect() as conn:
            cur = await conn.execute(f"SELECT g, md5(g::text) FROM generate_series(1, {ROWS_LARGE}) g")
            rows = await cur.fetchall()
        check(len(rows) == ROWS_LARGE, f"{len(rows)} rows")
        for i, (g, h) in enumerate(rows, 1):
            if g != i or h != md5hex(str(i).encode()):
                raise CheckFailed(f"row {i} is {(g, h)!r}")

    async def large_bytea(self) -> None:
        data = bytea_payload()
        async with await self.connect() as conn:
            n, h, back = await self.one(
                conn, "SELECT length(x), md5(x), x FROM (SELECT %s::bytea AS x) s", (data,)
            )
        check(n == len(data) and h == md5hex(data), f"server saw length {n} md5 {h}")
        check(bytes(back) == data, "bytes read back differ")

    async def listen_notify(self) -> str:
        channel = unique("ch")
        async with await self.connect() as listener, await self.connect() as sender:
            try:
                await listener.execute(f"LISTEN {channel}")
            except psycopg.Error as exc:
                if self.p.mode == "transaction" and listen_refused(exc):
                    raise NotApplicable(LISTEN_TXN_NA.format(err=describe(exc))) from exc
                raise
            await sender.execute("SELECT pg_notify(%s, %s)", (channel, "payload-1"))
            got = [(n.channel, n.payload) async for n in listener.notifies(timeout=5, stop_after=1)]
            if self.p.mode == "transaction" and not got:
                raise CheckFailed(LISTEN_TXN_SILENT)
            check(got == [(channel, "payload-1")], f"notifications {got!r}")
        return "notification received"

    async def cancel(self) -> str:
        marker = unique("cancel")
        async with await self.connect() as conn, await self.connect() as monitor:
            task = asyncio.create_task(conn.execute(sleep_query(marker)))
            deadline = time.monotonic() + 5
            while True:
                n = (
                    await self.one(
                        monitor,
                        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s",
                        (f"%{marker} */",),
                    )
                )[0]
                if n:
                    break
                check(time.monotonic() < deadline, "pg_sleep never showed up in pg_stat_activity")
                await asyncio.sleep(0.02)
            t0 = time.monotonic()
            await conn.cancel_safe()
            try:
                await asyncio.wait_for(task, 5)
                raise CheckFailed("pg_sleep finished without error")
            except psycopg.Error as exc:
                expect_sqlstate(exc, "57014")
            took = time.monotonic() - t0
            check(await self.one(conn, "SELECT 7") == (7,), "connection unusable after cancel")
        return f"cancelled after {took:.2f}s"

    async def statement_timeout(self) -> None:
        async with await self.connect() as conn:
            t0 = time.monotonic()
            try:
                async with conn.transaction():
                    await conn.execute("SET LOCAL statement_timeout = '100ms'")
                    await conn.execute("SELECT pg_sleep(5)")
                raise CheckFailed("pg_sleep(5) was not interrupted")
            except psycopg.Error as exc:
                expect_sqlstate(exc, "57014")
            check(time.monotonic() - t0 < 3, "statement_timeout took too long")
            check(await self.one(conn, "SELECT 8") == (8,), "connection unusable after timeout")
            st = (await self.one(conn, "SHOW statement_timeout"))[0]
            check(st == "0", f"SET LOCAL leaked: statement_timeout={st}")

    async def batch(self) -> str:
        async with await self.connect() as conn:
            t = await self.table(conn)
            try:
                half = BATCH_SIZE // 2
                async with conn.pipeline():
                    for i in range(half):
                        await conn.execute(f"INSERT INTO {t} VALUES (%s, %s)", (i, f"p{i}"))
                    async with conn.cursor() as cur:
                        await cur.executemany(
                            f"INSERT INTO {t} VALUES (%s, %s)",
                            [(i, f"p{i}") for i in range(half, BATCH_SIZE)],
                        )
                got = await self.one(conn, f"SELECT count(*), sum(k) FROM {t}")
                check(got == (BATCH_SIZE, sum(range(BATCH_SIZE))), f"count/sum {got!r}")
                try:
                    async with conn.pipeline():
                        await conn.execute(f"INSERT INTO {t} VALUES (-1, 'a')")
                        await conn.execute("SELECT 1/0")
                        await conn.execute(f"INSERT INTO {t} VALUES (-2, 'b')")
                    raise CheckFailed("failing pipeline raised nothing")
                except psycopg.Error as exc:
                    expect_sqlstate(exc, "22012")
                check(await self.one(conn, "SELECT 9") == (9,), "connection unusable after failed pipeline")
            finally:
                await conn.execute(f"DROP TABLE {t}")
        return "async pipeline mode + executemany"

    async def pool_churn(self) -> str:
        for i in range(self.p.churn):
            async with await self.connect() as conn:
                got = (await self.one(conn, "SELECT %s::int", (i,)))[0]
                check(got == i, f"cycle {i} got {got}")
        return f"{self.p.churn} connections"

    async def concurrent_clients(self) -> str:
        async with await self.connect() as conn:
            t = await self.table(conn, "cid int, i int, v text")
        try:

            async def client(cid: int) -> None:
                async with await self.connect() as c:
                    for i in range(TXNS_PER_CLIENT):
                        async with c.transaction():
                            await c.execute(f"INSERT INTO {t} VALUES (%s, %s, %s)", (cid, i, f"c{cid}-{i}"))
                            got = (await self.one(c, "SELECT %s::int * 1000 + %s::int", (cid, i)))[0]
                            check(got == client_value(cid, i), f"client {cid} got {got} at {i}")
                    cur = await c.execute(f"SELECT i, v FROM {t} WHERE cid = %s ORDER BY i", (cid,))
                    rows = await cur.fetchall()
                    check(
                        rows == [(i, f"c{cid}-{i}") for i in range(TXNS_PER_CLIENT)],
                        f"client {cid} rows {rows!r}",
                    )

            await gather_clients(self.p.clients, client)
        finally:
            async with await self.connect() as conn:
                await conn.execute(f"DROP TABLE {t}")
        return f"{self.p.clients} clients"


async def amain() -> None:
    params = Params.from_env()
    d = Driver(params)
    emit_version(NAME, f"psycopg {psycopg.__version__} (asyncio), libpq {libpq_str(psycopg.pq.version())}")
    await run_async(NAME, params, {s: getattr(d, s) for s in dir(d) if not s.startswith("_")})


if __name__ == "__main__":
    asyncio.run(amain())
