"""psycopg2 driver program: the canonical scenarios through psycopg2 (simple protocol only; parameters
are interpolated client-side), one JSON line per scenario."""

from __future__ import annotations

import select
import threading
import time
from decimal import Decimal
from io import StringIO
from typing import Any

import psycopg2
import psycopg2.extras
from common import (
    BATCH_SIZE,
    LISTEN_TXN_NA,
    LISTEN_TXN_SILENT,
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
    libpq_str,
    listen_refused,
    md5hex,
    run_sync,
    run_threads,
    sleep_query,
    unique,
)

NAME = "psycopg2"


class Driver:
    def __init__(self, params: Params) -> None:
        self.p = params

    def connect(self, user: str | None = None, password: str | None = None, autocommit: bool = True) -> Any:
        conn = psycopg2.connect(self.p.conninfo(user, password))
        conn.autocommit = autocommit
        return conn

    def one(self, conn: Any, sql: str, args: Any = None) -> Any:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchone()

    def run(self, conn: Any, sql: str, args: Any = None) -> None:
        with conn.cursor() as cur:
            cur.execute(sql, args)

    def table(self, conn: Any, cols: str = "k int, v text") -> str:
        name = unique("t")
        self.run(conn, f"CREATE TABLE {name} ({cols})")
        return name

    def _login(self, user: str, password: str) -> str:
        conn = self.connect(user, password)
        try:
            got = self.one(conn, "SELECT current_user")[0]
            check(got == user, f"current_user is {got!r}, expected {user!r}")
        finally:
            conn.close()
        try:
            self.connect(user, password + "-wrong").close()
        except psycopg2.OperationalError as exc:
            text = str(exc).lower()
            check("password" in text or "auth" in text, f"unexpected login error: {describe(exc)}")
            return "wrong password refused"
        raise CheckFailed("login with a wrong password succeeded")

    def login_scram(self) -> str:
        return self._login(self.p.user, self.p.password)

    def login_md5(self) -> str:
        return self._login(self.p.md5_user, self.p.md5_password)

    def simple_query(self) -> None:
        conn = self.connect()
        try:
            # psycopg2 keeps only the last result of a multi-statement string.
            check(
                self.one(conn, "SELECT 1 AS a; SELECT 'x' || 'y' AS b") == ("xy",), "multi-statement result"
            )
        finally:
            conn.close()

    def param_query(self) -> None:
        vals = (42, "héllo 'quoted' \\ \"", None, True, Decimal("12.345"), b"\x00\x01\xff'")
        conn = self.connect()
        try:
            row = self.one(conn, "SELECT %s::int, %s::text, %s::text, %s::bool, %s::numeric, %s::bytea", vals)
            row = row[:5] + (bytes(row[5]),)
            check(row == vals, f"round trip {row!r} != {vals!r}")
        finally:
            conn.close()

    def prepared_reuse(self) -> None:
        raise NotApplicable(
            "psycopg2 has no protocol-level prepared statements (parameters are interpolated client-side)"
        )

    def transaction(self) -> None:
        conn, other = self.connect(autocommit=False), self.connect()
        t = self.table(other)
        try:
            with conn:  # psycopg2: the context commits on success, rolls back on exception
                self.run(conn, f"INSERT INTO {t} VALUES (1, 'committed')")
            try:
                with conn:
                    self.run(conn, f"INSERT INTO {t} VALUES (2, 'rolled back')")
                    raise KeyError("rollback me")
            except KeyError:
                pass
            self.run(conn, f"INSERT INTO {t} VALUES (3, 'committed')")
            conn.commit()
            self.run(conn, f"INSERT INTO {t} VALUES (4, 'rolled back')")
            conn.rollback()
            with other.cursor() as cur:
                cur.execute(f"SELECT k FROM {t} ORDER BY k")
                rows = cur.fetchall()
            check(rows == [(1,), (3,)], f"visible rows {rows!r}, expected [1, 3]")
        finally:
            conn.close()
            self.run(other, f"DROP TABLE {t}")
            other.close()

    def error_recovery(self) -> None:
        conn = self.connect()
        t = self.table(conn)
        try:
            try:
                self.run(conn, "SELECT 1/0")
                raise CheckFailed("division by zero did not fail")
            except psycopg2.Error as exc:
                expect_sqlstate(exc, "22012")
            check(self.one(conn, "SELECT 2") == (2,), "query after error")
            conn.autocommit = False
            self.run(conn, f"INSERT INTO {t} VALUES (1, 'x')")
            try:
                self.run(conn, "SELECT 1/0")
                raise CheckFailed("division by zero did not fail")
            except psycopg2.Error as exc:
                expect_sqlstate(exc, "22012")
            try:
                self.run(conn, "SELECT 1")
                raise CheckFailed("statement in an aborted transaction did not fail")
            except psycopg2.Error as exc:
                expect_sqlstate(exc, "25P02")
            conn.rollback()
            check(self.one(conn, "SELECT 3") == (3,), "query after rollback")
            conn.commit()
            n = self.one(conn, f"SELECT count(*) FROM {t}")[0]
            check(n == 0, f"rolled-back insert visible ({n} rows)")
        finally:
            conn.rollback()
            conn.autocommit = True
            self.run(conn, f"DROP TABLE {t}")
            conn.close()

    def copy_in(self) -> None:
        rows = copy_rows()
        buf = StringIO()
        for k, v in rows:
            buf.write(f"{k}\t{v.replace(chr(92), chr(92) * 2).replace(chr(9), chr(92) + 't')}\n")
        buf.seek(0)
        conn = self.connect()
        t = self.table(conn)
        try:
            with conn.cursor() as cur:
                cur.copy_expert(f"COPY {t} (k, v) FROM STDIN", buf)
            got = self.one(conn, f"SELECT count(*), sum(k) FROM {t}")
            check(got == (ROWS_COPY, sum(range(ROWS_COPY))), f"count/sum {got!r}")
            v = self.one(conn, f"SELECT v FROM {t} WHERE k = 1000")[0]
            check(v == rows[1000][1], f"escaped value {v!r}")
        finally:
            self.run(conn, f"DROP TABLE {t}")
            conn.close()

    def copy_out(self) -> None:
        conn = self.connect()
        buf = StringIO()
        try:
            with conn.cursor() as cur:
                cur.copy_expert(
                    f"COPY (SELECT g, 'v' || g FROM generate_series(1, {ROWS_COPY}) g) TO STDOUT", buf
                )
        finally:
            conn.close()
        expected = "".join(f"{i}\tv{i}\n" for i in range(1, ROWS_COPY + 1))
        check(buf.getvalue() == expected, f"copy out mismatch ({buf.getvalue().count(chr(10))} lines)")

    def large_result(self) -> None:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT g, md5(g::text) FROM generate_series(1, {ROWS_LARGE}) g")
                rows = cur.fetchall()
        finally:
            conn.close()
        check(len(rows) == ROWS_LARGE, f"{len(rows)} rows")
        for i, (g, h) in enumerate(rows, 1):
            if g != i or h != md5hex(str(i).encode()):
                raise CheckFailed(f"row {i} is {(g, h)!r}")

    def large_bytea(self) -> None:
        data = bytea_payload()
        conn = self.connect()
        try:
            n, h, back = self.one(
                conn, "SELECT length(x), md5(x), x FROM (SELECT %s::bytea AS x) s", (psycopg2.Binary(data),)
            )
        finally:
            conn.close()
        check(n == len(data) and h == md5hex(data), f"server saw length {n} md5 {h}")
        check(bytes(back) == data, "bytes read back differ")

    def listen_notify(self) -> str:
        channel = unique("ch")
        listener, sender = self.connect(), self.connect()
        try:
            try:
                self.run(listener, f"LISTEN {channel}")
            except psycopg2.Error as exc:
                if self.p.mode == "transaction" and listen_refused(exc):
                    raise NotApplicable(LISTEN_TXN_NA.format(err=describe(exc))) from exc
                raise
            self.run(sender, "SELECT pg_notify(%s, %s)", (channel, "payload-1"))
            deadline = time.monotonic() + 5
            while not listener.notifies and time.monotonic() < deadline:
                select.select([listener], [], [], max(0.0, deadline - time.monotonic()))
                listener.poll()
            got = [(n.channel, n.payload) for n in listener.notifies]
            if self.p.mode == "transaction" and not got:
                raise CheckFailed(LISTEN_TXN_SILENT)
            check(got == [(channel, "payload-1")], f"notifications {got!r}")
        finally:
            listener.close()
            sender.close()
        return "notification received"

    def cancel(self) -> str:
        marker = unique("cancel")
        conn, monitor = self.connect(), self.connect()
        try:
            box: dict[str, Any] = {}

            def run() -> None:
                try:
                    self.run(conn, sleep_query(marker))
                except BaseException as exc:  # noqa: BLE001
                    box["exc"] = exc

            th = threading.Thread(target=run, daemon=True)
            th.start()
            deadline = time.monotonic() + 5
            while not self.one(
                monitor,
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s",
                (f"%{marker} */",),
            )[0]:
                check(time.monotonic() < deadline, "pg_sleep never showed up in pg_stat_activity")
                time.sleep(0.02)
            t0 = time.monotonic()
            conn.cancel()
            th.join(5)
            took = time.monotonic() - t0
            check(not th.is_alive(), "query still running 5s after cancel")
            exc = box.get("exc")
            check(exc is not None, "pg_sleep finished without error")
            expect_sqlstate(exc, "57014")
            check(self.one(conn, "SELECT 7") == (7,), "connection unusable after cancel")
        finally:
            conn.close()
            monitor.close()
        return f"cancelled after {took:.2f}s"

    def statement_timeout(self) -> None:
        conn = self.connect(autocommit=False)
        try:
            t0 = time.monotonic()
            try:
                self.run(conn, "SET LOCAL statement_timeout = '100ms'")
                self.run(conn, "SELECT pg_sleep(5)")
                raise CheckFailed("pg_sleep(5) was not interrupted")
            except psycopg2.Error as exc:
                expect_sqlstate(exc, "57014")
            conn.rollback()
            check(time.monotonic() - t0 < 3, "statement_timeout took too long")
            conn.autocommit = True
            check(self.one(conn, "SELECT 8") == (8,), "connection unusable after timeout")
            st = self.one(conn, "SHOW statement_timeout")[0]
            check(st == "0", f"SET LOCAL leaked: statement_timeout={st}")
        finally:
            conn.close()

    def batch(self) -> str:
        conn = self.connect()
        t = self.table(conn)
        try:
            half = BATCH_SIZE // 2
            with conn.cursor() as cur:
                psycopg2.extras.execute_batch(
                    cur, f"INSERT INTO {t} VALUES (%s, %s)", [(i, f"p{i}") for i in range(half)]
                )
                psycopg2.extras.execute_values(
                    cur, f"INSERT INTO {t} VALUES %s", [(i, f"p{i}") for i in range(half, BATCH_SIZE)]
                )
            got = self.one(conn, f"SELECT count(*), sum(k) FROM {t}")
            check(got == (BATCH_SIZE, sum(range(BATCH_SIZE))), f"count/sum {got!r}")
            try:
                with conn.cursor() as cur:
                    psycopg2.extras.execute_batch(
                        cur,
                        f"INSERT INTO {t} VALUES (%s, %s::int / %s)",
                        [(-1, 1, 1), (-2, 1, 0), (-3, 1, 1)],
                    )
                raise CheckFailed("failing batch raised nothing")
            except psycopg2.Error as exc:
                expect_sqlstate(exc, "22012")
            check(self.one(conn, "SELECT 9") == (9,), "connection unusable after failed batch")
        finally:
            self.run(conn, f"DROP TABLE {t}")
            conn.close()
        return "execute_batch + execute_values"

    def pool_churn(self) -> str:
        for i in range(self.p.churn):
            conn = self.connect()
            try:
                got = self.one(conn, "SELECT %s::int", (i,))[0]
                check(got == i, f"cycle {i} got {got}")
            finally:
                conn.close()
        return f"{self.p.churn} connections"

    def concurrent_clients(self) -> str:
        conn = self.connect()
        t = self.table(conn, "cid int, i int, v text")
        try:

            def client(cid: int) -> None:
                c = self.connect(autocommit=False)
                try:
                    for i in range(TXNS_PER_CLIENT):
                        with c:
                            self.run(c, f"INSERT INTO {t} VALUES (%s, %s, %s)", (cid, i, f"c{cid}-{i}"))
                            got = self.one(c, "SELECT %s::int * 1000 + %s::int", (cid, i))[0]
                            check(got == client_value(cid, i), f"client {cid} got {got} at {i}")
                    with c, c.cursor() as cur:
                        cur.execute(f"SELECT i, v FROM {t} WHERE cid = %s ORDER BY i", (cid,))
                        rows = cur.fetchall()
                    check(
                        rows == [(i, f"c{cid}-{i}") for i in range(TXNS_PER_CLIENT)],
                        f"client {cid} rows {rows!r}",
                    )
                finally:
                    c.close()

            run_threads(self.p.clients, client)
        finally:
            self.run(conn, f"DROP TABLE {t}")
            conn.close()
        return f"{self.p.clients} clients"


def main() -> None:
    params = Params.from_env()
    d = Driver(params)
    emit_version(
        NAME,
        f"psycopg2 {psycopg2.__version__.split()[0]}, libpq {libpq_str(psycopg2.extensions.libpq_version())}",
    )
    run_sync(NAME, params, {s: getattr(d, s) for s in dir(d) if not s.startswith("_")})


if __name__ == "__main__":
    main()
