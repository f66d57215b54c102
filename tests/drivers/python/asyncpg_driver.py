"""asyncpg driver program: the canonical scenarios through asyncpg, which prepares every parameterised
statement server-side (named, cached per connection), one JSON line per scenario."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from io import BytesIO
from typing import Any

import asyncpg
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
    listen_refused,
    md5hex,
    run_async,
    sleep_query,
    unique,
)

NAME = "asyncpg"


class Driver:
    def __init__(self, params: Params) -> None:
        self.p = params

    async def connect(self, user: str | None = None, password: str | None = None) -> Any:
        return await asyncpg.connect(
            host=self.p.host,
            port=self.p.port,
            database=self.p.db,
            user=user or self.p.user,
            password=password if password is not None else self.p.password,
            timeout=10,
            **({"ssl": "require"} if self.p.ssl else {}),
        )

    async def table(self, conn: Any, cols: str = "k int, v text") -> str:
        name = unique("t")
        await conn.execute(f"CREATE TABLE {name} ({cols})")
        return name

    async def _login(self, user: str, password: str) -> str:
        conn = await self.connect(user, password)
        try:
            got = await conn.fetchval("SELECT current_user")
            check(got == user, f"current_user is {got!r}, expected {user!r}")
        finally:
            await conn.close()
        try:
            await (await self.connect(user, password + "-wrong")).close()
        except (asyncpg.PostgresError, OSError, ConnectionError) as exc:
            text = str(exc).lower()
            check("password" in text or "auth" in text, f"unexpected login error: {describe(exc)}")
            return "wrong password refused"
        raise CheckFailed("login with a wrong password succeeded")

    async def login_scram(self) -> str:
        return await self._login(self.p.user, self.p.password)

    async def login_md5(self) -> str:
        return await self._login(self.p.md5_user, self.p.md5_password)

    async def simple_query(self) -> None:
        conn = await self.connect()
        try:
            # execute() without arguments uses the simple protocol and returns the last command tag.
            status = await conn.execute("SELECT 1; SELECT 'x' || 'y'; SELECT 3")
            check(status == "SELECT 1", f"status {status!r}")
        finally:
            await conn.close()

    async def param_query(self) -> None:
        vals = (42, "héllo 'quoted' \\ \"", None, True, Decimal("12.345"), b"\x00\x01\xff'")
        conn = await self.connect()
        try:
            row = await conn.fetchrow(
                "SELECT $1::int, $2::text, $3::text, $4::bool, $5::numeric, $6::bytea", *vals
            )
            check(tuple(row) == vals, f"round trip {tuple(row)!r} != {vals!r}")
        finally:
            await conn.close()

    async def prepared_reuse(self) -> str:
        async def client(cid: int) -> None:
            conn = await self.connect()
            try:
                stmt = await conn.prepare("SELECT $1::int * 2 + $2::int, $3::text")
                for j in range(PREPARED_REUSES):
                    async with conn.transaction():
                        row = await stmt.fetchrow(cid, j, f"c{cid}")
                    check(tuple(row) == (cid * 2 + j, f"c{cid}"), f"client {cid} got {tuple(row)!r} at {j}")
            finally:
                await conn.close()

        await gather_clients(self.p.clients, client)
        return f"{self.p.clients} clients x {PREPARED_REUSES} transactions"

    async def transaction(self) -> None:
        conn, other = await self.connect(), await self.connect()
        t = await self.table(conn)
        try:
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {t} VALUES (1, 'committed')")
            try:
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {t} VALUES (2, 'rolled back')")
                    raise KeyError("rollback me")
            except KeyError:
                pass
            tr = conn.transaction()
            await tr.start()
            await conn.execute(f"INSERT INTO {t} VALUES (3, 'committed')")
            await tr.commit()
            tr = conn.transaction()
            await tr.start()
            await conn.execute(f"INSERT INTO {t} VALUES (4, 'rolled back')")
            await tr.rollback()
            rows = [r[0] for r in await other.fetch(f"SELECT k FROM {t} ORDER BY k")]
            check(rows == [1, 3], f"visible rows {rows!r}, expected [1, 3]")
        finally:
            await conn.execute(f"DROP TABLE {t}")
            await conn.close()
            await other.close()

    async def error_recovery(self) -> None:
        conn = await self.connect()
        t = await self.table(conn)
        try:
            for sql in ("SELECT 1/0", "SELECT $1::int / 0"):
                try:
                    await (conn.execute(sql) if "$1" not in sql else conn.fetchval(sql, 1))
                    raise CheckFailed("division by zero did not fail")
                except asyncpg.PostgresError as exc:
                    expect_sqlstate(exc, "22012")
                check(await conn.fetchval("SELECT 2") == 2, "query after error")
            tr = conn.transaction()
            await tr.start()
            await conn.execute(f"INSERT INTO {t} VALUES (1, 'x')")
            try:
                await conn.fetchval("SELECT $1::int / 0", 1)
                raise CheckFailed("division by zero did not fail")
            except asyncpg.PostgresError as exc:
                expect_sqlstate(exc, "22012")
            try:
                await conn.fetchval("SELECT 1")
                raise CheckFailed("statement in an aborted transaction did not fail")
            except asyncpg.PostgresError as exc:
                expect_sqlstate(exc, "25P02")
            await tr.rollback()
            check(await conn.fetchval("SELECT 3") == 3, "query after rollback")
            n = await conn.fetchval(f"SELECT count(*) FROM {t}")
            check(n == 0, f"rolled-back insert visible ({n} rows)")
        finally:
            await conn.execute(f"DROP TABLE {t}")
            await conn.close()

    async def copy_in(self) -> None:
        rows = copy_rows()
        conn = await self.connect()
        t = await self.table(conn)
        try:
            await conn.copy_records_to_table(t, records=rows, columns=["k", "v"])
            got = tuple(await conn.fetchrow(f"SELECT count(*), sum(k) FROM {t}"))
            check(got == (ROWS_COPY, sum(range(ROWS_COPY))), f"count/sum {got!r}")
            v = await conn.fetchval(f"SELECT v FROM {t} WHERE k = 1000")
            check(v == rows[1000][1], f"escaped value {v!r}")
        finally:
            await conn.execute(f"DROP TABLE {t}")
            await conn.close()

    async def copy_out(self) -> None:
        conn = await self.connect()
        buf = BytesIO()
        try:
            await conn.copy_from_query(
                f"SELECT g, 'v' || g FROM generate_series(1, {ROWS_COPY}) g", output=buf, format="text"
            )
        finally:
            await conn.close()
        expected = "".join(f"{i}\tv{i}\n" for i in range(1, ROWS_COPY + 1)).encode()
        check(buf.getvalue() == expected, f"copy out mismatch ({len(buf.getvalue().splitlines())} lines)")

    async def large_result(self) -> None:
        conn = await self.connect()
        try:
            rows = await conn.fetch(f"SELECT g, md5(g::text) FROM generate_series(1, {ROWS_LARGE}) g")
        finally:
            await conn.close()
        check(len(rows) == ROWS_LARGE, f"{len(rows)} rows")
        for i, (g, h) in enumerate(rows, 1):
            if g != i or h != md5hex(str(i).encode()):
                raise CheckFailed(f"row {i} is {(g, h)!r}")

    async def large_bytea(self) -> None:
        data = bytea_payload()
        conn = await self.connect()
        try:
            n, h, back = await conn.fetchrow(
                "SELECT length(x), md5(x), x FROM (SELECT $1::bytea AS x) s", data
            )
        finally:
            await conn.close()
        check(n == len(data) and h == md5hex(data), f"server saw length {n} md5 {h}")
        check(bytes(back) == data, "bytes read back differ")

    async def listen_notify(self) -> str:
        channel = unique("ch")
        listener, sender = await self.connect(), await self.connect()
        got: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        try:
            try:
                await listener.add_listener(
                    channel, lambda _c, _pid, ch, payload: got.put_nowait((ch, payload))
                )
            except asyncpg.PostgresError as exc:
                if self.p.mode == "transaction" and listen_refused(exc):
                    raise NotApplicable(LISTEN_TXN_NA.format(err=describe(exc))) from exc
                raise
            await sender.execute(f"NOTIFY {channel}, 'payload-1'")
            try:
                item = await asyncio.wait_for(got.get(), 5)
            except TimeoutError:
                if self.p.mode == "transaction":
                    raise CheckFailed(LISTEN_TXN_SILENT) from None
                raise CheckFailed("no notification within 5s") from None
            check(item == (channel, "payload-1"), f"notification {item!r}")
        finally:
            await listener.close()
            await sender.close()
        return "notification received"

    async def cancel(self) -> str:
        marker = unique("cancel")
        conn, monitor = await self.connect(), await self.connect()
        try:
            task = asyncio.create_task(conn.execute(sleep_query(marker)))
            deadline = time.monotonic() + 5
            while not await monitor.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1",
                f"%{marker} */",
            ):
                check(time.monotonic() < deadline, "pg_sleep never showed up in pg_stat_activity")
                await asyncio.sleep(0.02)
            # asyncpg's cancel API is task cancellation: it sends a CancelRequest for the running query.
            t0 = time.monotonic()
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            # The server must really have stopped: wait until the backend no longer runs pg_sleep.
            while await monitor.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1",
                f"%{marker} */",
            ):
                check(time.monotonic() - t0 < 5, "pg_sleep still running 5s after cancel")
                await asyncio.sleep(0.02)
            took = time.monotonic() - t0
            check(await conn.fetchval("SELECT 7") == 7, "connection unusable after cancel")
        finally:
            await conn.close()
            await monitor.close()
        return f"cancelled after {took:.2f}s"

    async def statement_timeout(self) -> None:
        conn = await self.connect()
        try:
            t0 = time.monotonic()
            try:
                async with conn.transaction():
                    await conn.execute("SET LOCAL statement_timeout = '100ms'")
                    await conn.execute("SELECT pg_sleep(5)")
                raise CheckFailed("pg_sleep(5) was not interrupted")
            except asyncpg.PostgresError as exc:
                expect_sqlstate(exc, "57014")
            check(time.monotonic() - t0 < 3, "statement_timeout took too long")
            check(await conn.fetchval("SELECT 8") == 8, "connection unusable after timeout")
            st = await conn.fetchval("SHOW statement_timeout")
            check(st == "0", f"SET LOCAL leaked: statement_timeout={st}")
        finally:
            await conn.close()

    async def batch(self) -> str:
        conn = await self.connect()
        t = await self.table(conn)
        try:
            await conn.executemany(
                f"INSERT INTO {t} VALUES ($1, $2)", [(i, f"p{i}") for i in range(BATCH_SIZE)]
            )
            got = tuple(await conn.fetchrow(f"SELECT count(*), sum(k) FROM {t}"))
            check(got == (BATCH_SIZE, sum(range(BATCH_SIZE))), f"count/sum {got!r}")
            try:
                await conn.executemany(
                    f"INSERT INTO {t} VALUES ($1, $2::int / $3)", [(-1, 1, 1), (-2, 1, 0), (-3, 1, 1)]
                )
                raise CheckFailed("failing batch raised nothing")
            except asyncpg.PostgresError as exc:
                expect_sqlstate(exc, "22012")
            n = await conn.fetchval(f"SELECT count(*) FROM {t} WHERE k < 0")
            check(n == 0, f"failed executemany left {n} rows (it is atomic)")
        finally:
            await conn.execute(f"DROP TABLE {t}")
            await conn.close()
        return "executemany (pipelined)"

    async def pool_churn(self) -> str:
        for i in range(self.p.churn):
            conn = await self.connect()
            try:
                got = await conn.fetchval("SELECT $1::int", i)
                check(got == i, f"cycle {i} got {got}")
            finally:
                await conn.close()
        return f"{self.p.churn} connections"

    async def concurrent_clients(self) -> str:
        conn = await self.connect()
        t = await self.table(conn, "cid int, i int, v text")
        try:

            async def client(cid: int) -> None:
                c = await self.connect()
                try:
                    for i in range(TXNS_PER_CLIENT):
                        async with c.transaction():
                            await c.execute(f"INSERT INTO {t} VALUES ($1, $2, $3)", cid, i, f"c{cid}-{i}")
                            got = await c.fetchval("SELECT $1::int * 1000 + $2::int", cid, i)
                            check(got == client_value(cid, i), f"client {cid} got {got} at {i}")
                    rows = [
                        tuple(r)
                        for r in await c.fetch(f"SELECT i, v FROM {t} WHERE cid = $1 ORDER BY i", cid)
                    ]
                    check(
                        rows == [(i, f"c{cid}-{i}") for i in range(TXNS_PER_CLIENT)],
                        f"client {cid} rows {rows!r}",
                    )
                finally:
                    await c.close()

            await gather_clients(self.p.clients, client)
        finally:
            await conn.execute(f"DROP TABLE {t}")
            await conn.close()
        return f"{self.p.clients} clients"


async def amain() -> None:
    params = Params.from_env()
    d = Driver(params)
    emit_version(NAME, f"asyncpg {asyncpg.__version__}")
    await run_async(NAME, params, {s: getattr(d, s) for s in dir(d) if not s.startswith("_")})


if __name__ == "__main__":
    asyncio.run(amain())
