"""SQLAlchemy 2 driver program: the canonical scenarios through Core and the ORM (Session with selectin
loading), with either the psycopg dialect (sync engine) or the asyncpg dialect (AsyncEngine on an
event loop thread; scenario bodies run inside it through run_sync, SQLAlchemy's own bridge)."""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from common import (
    BATCH_SIZE,
    PREPARED_REUSES,
    ROWS_LARGE,
    TXNS_PER_CLIENT,
    CheckFailed,
    NotApplicable,
    Params,
    bytea_payload,
    check,
    client_value,
    describe,
    emit_version,
    expect_sqlstate,
    gather_clients,
    md5hex,
    run_sync,
    run_threads,
    unique,
)
from sqlalchemy import ForeignKey, String, select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload
from sqlalchemy.pool import NullPool


class Base(DeclarativeBase):
    pass


PARENT_TABLE = unique("parent")
CHILD_TABLE = unique("child")


class Parent(Base):
    __tablename__ = PARENT_TABLE
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    children: Mapped[list[Child]] = relationship(back_populates="parent", order_by="Child.i")


class Child(Base):
    __tablename__ = CHILD_TABLE
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey(f"{PARENT_TABLE}.id"))
    i: Mapped[int]
    v: Mapped[str] = mapped_column(String(50))
    parent: Mapped[Parent] = relationship(back_populates="children")


class SyncBackend:
    """Plain Engine with NullPool: every connect() is a real connection (no client-side pooling, so a
    session-mode pooler is not starved by idle connections parked in SQLAlchemy's pool)."""

    def __init__(self, params: Params) -> None:
        self.p = params

    def engine(self, user: str | None = None, password: str | None = None) -> Any:
        return sa.create_engine(self.p.url("postgresql+psycopg", user, password), poolclass=NullPool)

    def call(self, fn: Callable[[Any], Any], user: str | None = None, password: str | None = None) -> Any:
        eng = self.engine(user, password)
        try:
            with eng.connect() as conn:
                return fn(conn)
        finally:
            eng.dispose()

    def session(self, fn: Callable[[Session], Any]) -> Any:
        eng = self.engine()
        try:
            with Session(eng) as s:
                return fn(s)
        finally:
            eng.dispose()

    def clients(self, n: int, fn: Callable[[int, Any], None]) -> None:
        eng = self.engine()
        try:

            def one(cid: int) -> None:
                with eng.connect() as conn:
                    fn(cid, conn)

            run_threads(n, one)
        finally:
            eng.dispose()

    def clients_orm(self, n: int, fn: Callable[[int, Session], None]) -> None:
        eng = self.engine()
        try:

            def one(cid: int) -> None:
                with Session(eng) as s:
                    fn(cid, s)

            run_threads(n, one)
        finally:
            eng.dispose()


class AsyncBackend:
    """AsyncEngine (asyncpg dialect) driven from the synchronous scenario code: coroutines run on a
    dedicated event loop thread; the scenario bodies run inside AsyncConnection.run_sync."""

    def __init__(self, params: Params) -> None:
        self.p = params
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def engine(self, user: str | None = None, password: str | None = None) -> Any:
        return create_async_engine(self.p.url("postgresql+asyncpg", user, password), poolclass=NullPool)

    def wait(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def call(self, fn: Callable[[Any], Any], user: str | None = None, password: str | None = None) -> Any:
        async def go() -> Any:
            eng = self.engine(user, password)
            try:
                async with eng.connect() as conn:
                    return await conn.run_sync(fn)
            finally:
                await eng.dispose()

        return self.wait(go())

    def session(self, fn: Callable[[Session], Any]) -> Any:
        async def go() -> Any:
            eng = self.engine()
            try:
                async with AsyncSession(eng) as s:
                    return await s.run_sync(fn)
            finally:
                await eng.dispose()

        return self.wait(go())

    def clients(self, n: int, fn: Callable[[int, Any], None]) -> None:
        async def go() -> None:
            eng = self.engine()
            try:

                async def one(cid: int) -> None:
                    async with eng.connect() as conn:
                        await conn.run_sync(lambda c: fn(cid, c))

                await gather_clients(n, one)
            finally:
                await eng.dispose()

        self.wait(go())

    def clients_orm(self, n: int, fn: Callable[[int, Session], None]) -> None:
        async def go() -> None:
            eng = self.engine()
            try:

                async def one(cid: int) -> None:
                    async with AsyncSession(eng) as s:
                        await s.run_sync(lambda ss: fn(cid, ss))

                await gather_clients(n, one)
            finally:
                await eng.dispose()

        self.wait(go())


def scalar(conn: Any, sql: str, **params: Any) -> Any:
    return conn.execute(text(sql), params).scalar()


class Driver:
    def __init__(self, params: Params, dialect: str) -> None:
        self.p = params
        self.dialect = dialect
        self.b: Any = SyncBackend(params) if dialect == "psycopg" else AsyncBackend(params)

    def _login(self, user: str, password: str) -> str:
        got = self.b.call(lambda c: scalar(c, "SELECT current_user"), user, password)
        check(got == user, f"current_user is {got!r}, expected {user!r}")
        try:
            self.b.call(lambda c: scalar(c, "SELECT 1"), user, password + "-wrong")
        except sa.exc.DBAPIError as exc:
            text_ = str(exc).lower()
            check("password" in text_ or "auth" in text_, f"unexpected login error: {describe(exc)}")
            return "wrong password refused"
        raise CheckFailed("login with a wrong password succeeded")

    def login_scram(self) -> str:
        return self._login(self.p.user, self.p.password)

    def login_md5(self) -> str:
        return self._login(self.p.md5_user, self.p.md5_password)

    def simple_query(self) -> None:
        got = self.b.call(lambda c: c.exec_driver_sql("SELECT 'x' || 'y'").scalar())
        check(got == "xy", f"got {got!r}")

    def param_query(self) -> None:
        vals = (42, "héllo 'quoted' \\ \" :colon", None, True, Decimal("12.345"), b"\x00\x01\xff'")
        q = text(
            "SELECT CAST(:a AS int), CAST(:b AS text), CAST(:c AS text), CAST(:d AS bool), "
            "CAST(:e AS numeric), CAST(:f AS bytea)"
        ).bindparams(sa.bindparam("f", type_=sa.LargeBinary))
        row = self.b.call(lambda c: tuple(c.execute(q, dict(zip("abcdef", vals, strict=True))).one()))
        row = row[:5] + (bytes(row[5]),)
        check(row == vals, f"round trip {row!r} != {vals!r}")

    def prepared_reuse(self) -> str:
        q = text("SELECT CAST(:a AS int) * 2 + CAST(:b AS int), CAST(:c AS text)")

        def client(cid: int, conn: Any) -> None:
            for j in range(PREPARED_REUSES):
                with conn.begin():
                    row = tuple(conn.execute(q, {"a": cid, "b": j, "c": f"c{cid}"}).one())
                check(row == (cid * 2 + j, f"c{cid}"), f"client {cid} got {row!r} at reuse {j}")

        self.b.clients(self.p.clients, client)
        how = (
            "psycopg prepares after 5 uses"
            if self.dialect == "psycopg"
            else "asyncpg prepares every statement"
        )
        return f"{self.p.clients} clients x {PREPARED_REUSES} transactions; {how}"

    def _create_tables(self) -> None:
        self.b.call(lambda c: (Base.metadata.create_all(c), c.commit()))

    def _drop_tables(self) -> None:
        self.b.call(lambda c: (Base.metadata.drop_all(c), c.commit()))

    def transaction(self) -> str:
        self._create_tables()
        try:

            def orm(s: Session) -> None:
                with s.begin():
                    s.add(Parent(id=1, name="committed", children=[Child(i=0, v="a")]))
                try:
                    with s.begin():
                        s.add(Parent(id=2, name="rolled back"))
                        raise KeyError("rollback me")
                except KeyError:
                    pass
                s.add(Parent(id=3, name="committed"))
                s.commit()
                s.add(Parent(id=4, name="rolled back"))
                s.flush()
                s.rollback()

            self.b.session(orm)
            ids = self.b.call(lambda c: [r[0] for r in c.execute(select(Parent.id).order_by(Parent.id))])
            check(ids == [1, 3], f"visible parents {ids!r}, expected [1, 3]")
        finally:
            self._drop_tables()
        return "ORM Session commit/rollback"

    def error_recovery(self) -> None:
        t = unique("t")

        def body(c: Any) -> None:
            c.execute(text(f"CREATE TABLE {t} (k int, v text)"))
            c.commit()
            try:
                try:
                    c.execute(text("SELECT 1/0"))
                    raise CheckFailed("division by zero did not fail")
                except sa.exc.DBAPIError as exc:
                    expect_sqlstate(exc, "22012")
                c.rollback()
                check(scalar(c, "SELECT 2") == 2, "query after error")
                c.commit()
                tr = c.begin()
                c.execute(text(f"INSERT INTO {t} VALUES (1, 'x')"))
                try:
                    c.execute(text("SELECT CAST(:a AS int) / 0"), {"a": 1})
                    raise CheckFailed("division by zero did not fail")
                except sa.exc.DBAPIError as exc:
                    expect_sqlstate(exc, "22012")
                try:
                    c.execute(text("SELECT 1"))
                    raise CheckFailed("statement in an aborted transaction did not fail")
                except sa.exc.DBAPIError as exc:
                    expect_sqlstate(exc, "25P02")
                tr.rollback()
                check(scalar(c, "SELECT 3") == 3, "query after rollback")
                n = scalar(c, f"SELECT count(*) FROM {t}")
                check(n == 0, f"rolled-back insert visible ({n} rows)")
                c.commit()
            finally:
                c.rollback()
                c.execute(text(f"DROP TABLE {t}"))
                c.commit()

        self.b.call(body)

    def copy_in(self) -> None:
        raise NotApplicable("SQLAlchemy has no COPY API (COPY is covered by the DBAPI drivers' rows)")

    def copy_out(self) -> None:
        raise NotApplicable("SQLAlchemy has no COPY API (COPY is covered by the DBAPI drivers' rows)")

    def large_result(self) -> None:
        rows = self.b.call(
            lambda c: c.execute(text(f"SELECT g, md5(g::text) FROM generate_series(1, {ROWS_LARGE}) g")).all()
        )
        check(len(rows) == ROWS_LARGE, f"{len(rows)} rows")
        for i, (g, h) in enumerate(rows, 1):
            if g != i or h != md5hex(str(i).encode()):
                raise CheckFailed(f"row {i} is {(g, h)!r}")

    def large_bytea(self) -> None:
        data = bytea_payload()
        q = text("SELECT length(x), md5(x), x FROM (SELECT CAST(:d AS bytea) AS x) s").bindparams(
            sa.bindparam("d", type_=sa.LargeBinary)
        )
        n, h, back = self.b.call(lambda c: tuple(c.execute(q, {"d": data}).one()))
        check(n == len(data) and h == md5hex(data), f"server saw length {n} md5 {h}")
        check(bytes(back) == data, "bytes read back differ")

    def listen_notify(self) -> None:
        raise NotApplicable("SQLAlchemy has no LISTEN/NOTIFY API (covered by the DBAPI drivers' rows)")

    def cancel(self) -> None:
        # Measured here: cancelling the asyncio task around AsyncConnection.execute does not reach
        # asyncpg's CancelRequest (pg_sleep keeps running), and the sync API has no cancel at all.
        raise NotApplicable(
            "SQLAlchemy exposes no cancel API (task cancellation does not cancel the server query); "
            "cancel is covered by the psycopg3 and asyncpg rows"
        )

    def statement_timeout(self) -> None:
        def body(c: Any) -> None:
            t0 = time.monotonic()
            try:
                with c.begin():
                    c.execute(text("SET LOCAL statement_timeout = '100ms'"))
                    c.execute(text("SELECT pg_sleep(5)"))
                raise CheckFailed("pg_sleep(5) was not interrupted")
            except sa.exc.DBAPIError as exc:
                expect_sqlstate(exc, "57014")
            check(time.monotonic() - t0 < 3, "statement_timeout took too long")
            check(scalar(c, "SELECT 8") == 8, "connection unusable after timeout")
            st = scalar(c, "SHOW statement_timeout")
            check(st == "0", f"SET LOCAL leaked: statement_timeout={st}")
            c.commit()

        self.b.call(body)

    def batch(self) -> str:
        md = sa.MetaData()
        t = sa.Table(unique("t"), md, sa.Column("k", sa.Integer, primary_key=True), sa.Column("v", sa.Text))

        def body(c: Any) -> None:
            md.create_all(c)
            c.commit()
            try:
                c.execute(sa.insert(t), [{"k": i, "v": f"p{i}"} for i in range(BATCH_SIZE)])
                c.commit()
                got = tuple(c.execute(select(sa.func.count(), sa.func.sum(t.c.k))).one())
                check(got == (BATCH_SIZE, sum(range(BATCH_SIZE))), f"count/sum {got!r}")
                c.commit()
                try:
                    c.execute(sa.insert(t), [{"k": -1, "v": "a"}, {"k": 5, "v": "dup"}, {"k": -3, "v": "c"}])
                    raise CheckFailed("failing batch raised nothing")
                except sa.exc.DBAPIError as exc:
                    expect_sqlstate(exc, "23505")
                c.rollback()
                check(scalar(c, "SELECT 9") == 9, "connection unusable after failed batch")
                n = scalar(c, f"SELECT count(*) FROM {t.name} WHERE k < 0")
                check(n == 0, f"rolled-back batch left {n} rows")
                c.commit()
            finally:
                c.rollback()
                md.drop_all(c)
                c.commit()

        self.b.call(body)
        return "executemany via insert() with a list of parameter sets"

    def pool_churn(self) -> str:
        for i in range(self.p.churn):
            got = self.b.call(lambda c, i=i: scalar(c, "SELECT CAST(:i AS int)", i=i))
            check(got == i, f"cycle {i} got {got}")
        return f"{self.p.churn} connections (NullPool engine)"

    def concurrent_clients(self) -> str:
        self._create_tables()
        try:

            def client(cid: int, s: Session) -> None:
                with s.begin():
                    s.add(Parent(id=cid, name=f"p{cid}"))
                for i in range(TXNS_PER_CLIENT):
                    with s.begin():
                        s.add(Child(parent_id=cid, i=i, v=f"c{cid}-{i}"))
                        got = s.execute(
                            text("SELECT CAST(:a AS int) * 1000 + CAST(:b AS int)"), {"a": cid, "b": i}
                        ).scalar()
                        check(got == client_value(cid, i), f"client {cid} got {got} at {i}")
                s.expunge_all()
                with s.begin():
                    parents = (
                        s.execute(
                            select(Parent).options(selectinload(Parent.children)).where(Parent.id == cid)
                        )
                        .scalars()
                        .all()
                    )
                    check(len(parents) == 1 and parents[0].name == f"p{cid}", f"client {cid} parents")
                    kids = [(k.i, k.v) for k in parents[0].children]
                check(
                    kids == [(i, f"c{cid}-{i}") for i in range(TXNS_PER_CLIENT)],
                    f"client {cid} children {kids}",
                )

            self.b.clients_orm(self.p.clients, client)
        finally:
            self._drop_tables()
        return f"{self.p.clients} clients, ORM Session with selectinload"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dialect", choices=["psycopg", "asyncpg"], required=True)
    args = ap.parse_args()
    name = f"sqlalchemy-{args.dialect}"
    params = Params.from_env()
    d = Driver(params, args.dialect)
    if args.dialect == "psycopg":
        import psycopg

        dbapi = f"psycopg {psycopg.__version__}"
    else:
        import asyncpg

        dbapi = f"asyncpg {asyncpg.__version__}"
    emit_version(name, f"SQLAlchemy {sa.__version__}, {dbapi}")
    run_sync(name, params, {s: getattr(d, s) for s in dir(d) if not s.startswith("_")})


if __name__ == "__main__":
    main()
