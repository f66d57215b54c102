"""psycopg 3 (sync API) driver program: runs the canonical scenarios and prints one JSON line each.
`--prepare-threshold 0` makes psycopg prepare every statement server-side (named statements)."""

from __future__ import annotations

import argparse
import threading
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
    libpq_str,
    listen_refused,
    md5hex,
    run_sync,
    run_threads,
    sleep_query,
    unique,
)


class Driver:
    def __init__(self, params: Params, name: str, prepare_threshold: int | None) -> None:
        self.p = params
        self.name = name
        self.threshold = prepare_threshold

    def connect(self, user: str | None = None, password: str | None = None, autocommit: bool = True) -> Any:
        kwargs: dict[str, Any] = {"autocommit": autocommit}
        if self.threshold is not None:
            kwargs["prepare_threshold"] = self.threshold
        return psycopg.connect(self.p.conninfo(user, password), **kwargs)

    def table(self, conn: Any, cols: str = "k int, v text") -> str:
        name = unique("t")
        conn.execute(f"CREATE TABLE {name} ({cols})")
        return name

    def _login(self, user: str, password: str) -> str:
        with self.connect(user, password) as conn:
            got = conn.execute("SELECT current_user").fetchone()[0]
            check(got == user, f"current_user is {got!r}, expected {user!r}")
        try:
            self.connect(user, password + "-wrong").close()
        except psycopg.OperationalError as exc:
            text = str(exc).lower()
            check("password" in text or "auth" in text, f"unexpected login error: {describe(exc)}")
            return "wrong password refused"
        raise CheckFailed("login with a wrong password succeeded")

    def login_scram(self) -> str:
        return self._login(self.p.user, self.p.password)

    def login_md5(self) -> str:
        return self._login(self.p.md5_user, self.p.md5_password)

    def simple_query(self) -> None:
        with self.connect() as conn:
            cur = conn.execute("SELECT 1 AS a; SELECT 'x' || 'y' AS b", prepare=False)
            check(cur.fetchall() == [(1,)], "first result set")
            check(cur.nextset(), "second result set missing")
            check(cur.fetchall() == [("xy",)], "second result set")

    def param_query(self) -> None:
        vals = (42, "héllo 'quoted' \\ \"", None, True, Decimal("12.345"), b"\x00\x01\xff'")
        with self.connect() as conn:
            row = conn.execute(
                "SELECT %s::int, %s::text, %s::text, %s::bool, %s::numeric, %s::bytea", vals
            ).fetchone()
            check(row == vals, f"round trip {row!r} != {vals!r}")

    def prepared_reuse(self) -> str:
        def client(cid: int) -> None:
            with self.connect() as conn:
                for j in range(PREPARED_REUSES):
                    with conn.transaction():
                        row = conn.execute(
                            "SELECT %s::int * 2 + %s::int, %s::text", (cid, j, f"c{cid}"), prepare=True
                        ).fetchone()
                    check(row == (cid * 2 + j, f"c{cid}"), f"client {cid} got {row!r} at reuse {j}")

        run_threads(self.p.clients, client)
        return f"{self.p.clients} clients x {PREPARED_REUSES} transactions"

    def transaction(self) -> None:
        with self.connect() as conn, self.connect() as other:
            t = self.table(conn)
            try:
                with conn.transaction():
                    conn.execute(f"INSERT INTO {t} VALUES (1, 'committed')")
                with conn.transaction():
                    conn.execute(f"INSERT INTO {t} VALUES (2, 'rolled back')")
                    raise psycopg.Rollback()
                conn.autocommit = False
                conn.execute(f"INSERT INTO {t} VALUES (3, 'committed')")
                conn.commit()
                conn.execute(f"INSERT INTO {t} VALUES (4, 'rolled back')")
                conn.rollback()
                conn.autocommit = True
                rows = other.execute(f"SELECT k FROM {t} ORDER BY k").fetchall()
                check(rows == [(1,), (3,)], f"visible rows {rows!r}, expected [1, 3]")
            finally:
                conn.autocommit = True
                conn.execute(f"DROP TABLE {t}")

    def error_recovery(self) -> None:
        with self.connect() as conn:
            t = self.table(conn)
            try:
                try:
                    conn.execute("SELECT 1/0")
                    raise CheckFailed("division by zero did not fail")
                except psycopg.Error as exc:
                    expect_sqlstate(exc, "22012")
                check(conn.execute("SELECT 2").fetchone() == (2,), "query after error")
                conn.autocommit = False
                conn.execute(f"INSERT INTO {t} VALUES (1, 'x')")
                try:
                    conn.execute("SELECT 1/0")
                    raise CheckFailed("division by zero did not fail")
                except psycopg.Error as exc:
                    expect_sqlstate(exc, "22012")
                try:
                    conn.execute("SELECT 1")
                    raise CheckFailed("statement in an aborted transaction did not fail")
                except psycopg.Error as exc:
                    expect_sqlstate(exc, "25P02")
                conn.rollback()
                check(conn.execute("SELECT 3").fetchone() == (3,), "query after rollback")
                conn.commit()
                n = conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                check(n == 0, f"rolled-back insert visible ({n} rows)")
            finally:
                conn.rollback()
                conn.autocommit = True
                conn.execute(f"DROP TABLE {t}")

    def copy_in(self) -> None:
        rows = copy_rows()
        with self.connect() as conn:
            t = self.table(conn)
            try:
                with conn.cursor() as cur:
                    with cur.copy(f"COPY {t} (k, v) FROM STDIN") as cp:
                        for r in rows:
                            cp.write_row(r)
                got = conn.execute(f"SELECT count(*), sum(k) FROM {t}").fetchone()
                check(got == (ROWS_COPY, sum(range(ROWS_COPY))), f"count/sum {got!r}")
                v = conn.execute(f"SELECT v FROM {t} WHERE k = 1000").fetchone()[0]
                check(v == rows[1000][1], f"escaped value {v!r}")
            finally:
                conn.execute(f"DROP TABLE {t}")

    def copy_out(self) -> None:
        with self.connect() as conn, conn.cursor() as cur:
            with cur.copy(
                f"COPY (SELECT g, 'v' || g FROM generate_series(1, {ROWS_COPY}) g) TO STDOUT"
            ) as cp:
                got = list(cp.rows())
        expected = [(str(i), f"v{i}") for i in range(1, ROWS_COPY + 1)]
        check(got == expected, f"copy out mismatch ({len(got)} rows)")

    def large_result(self) -> None:
        with self.connect() as conn:
            rows = conn.execute(f"SELECT g, md5(g::text) FROM generate_series(1, {ROWS_LARGE}) g").fetchall()
        check(len(rows) == ROWS_LARGE, f"{len(rows)} rows")
        for i, (g, h) in enumerate(rows, 1):
            if g != i or h != md5hex(str(i).encode()):
                raise CheckFailed(f"row {i} is {(g, h)!r}")

    def large_bytea(self) -> None:
        data = bytea_payload()
        with self.connect() as conn:
            n, h, back = conn.execute(
                "SELECT length(x), md5(x), x FROM (SELECT %s::bytea AS x) s", (data,)
            ).fetchone()
        check(n == len(data) and h == md5hex(data), f"server saw length {n} md5 {h}")
        check(bytes(back) == data, "bytes read back differ")

    def listen_notify(self) -> str:
        channel = unique("ch")
        with self.connect() as listener, self.connect() as sender:
            try:
                listener.execute(f"LISTEN {channel}")
            except psycopg.Error as exc:
                if self.p.mode == "transaction" and listen_refused(exc):
                    raise NotApplicable(LISTEN_TXN_NA.format(err=describe(exc))) from exc
                raise
            sender.execute("SELECT pg_notify(%s, %s)", (channel, "payload-1"))
            got = [(n.channel, n.payload) for n in listener.notifies(timeout=5, stop_after=1)]
            if self.p.mode == "transaction" and not got:
                raise CheckFailed(LISTEN_TXN_SILENT)
            check(got == [(channel, "payload-1")], f"notifications {got!r}")
        return "notification received"

    def cancel(self) -> str:
        marker = unique("cancel")
        with self.connect() as conn, self.connect() as monitor:
            box: dict[str, Any] = {}

            def run() -> None:
                try:
                    conn.execute(sleep_query(marker))
                except BaseException as exc:  # noqa: BLE001
                    box["exc"] = exc

            th = threading.Thread(target=run, daemon=True)
            th.start()
            deadline = time.monotonic() + 5
            while True:
                n = monitor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s",
                    (f"%{marker} */",),
                ).fetchone()[0]
                if n:
                    break
                check(time.monotonic() < deadline, "pg_sleep never showed up in pg_stat_activity")
                time.sleep(0.02)
            t0 = time.monotonic()
            conn.cancel_safe()
            th.join(5)
            took = time.monotonic() - t0
            check(not th.is_alive(), "query still running 5s after cancel")
            exc = box.get("exc")
            check(exc is not None, "pg_sleep finished without error")
            expect_sqlstate(exc, "57014")
            check(conn.execute("SELECT 7").fetchone() == (7,), "connection unusable after cancel")
        return f"cancelled after {took:.2f}s"

    def statement_timeout(self) -> None:
        with self.connect() as conn:
            t0 = time.monotonic()
            try:
                with conn.transaction():
                    conn.execute("SET LOCAL statement_timeout = '100ms'")
                    conn.execute("SELECT pg_sleep(5)")
                raise CheckFailed("pg_sleep(5) was not interrupted")
            except psycopg.Error as exc:
                expect_sqlstate(exc, "57014")
            check(time.monotonic() - t0 < 3, "statement_timeout took too long")
            check(conn.execute("SELECT 8").fetchone() == (8,), "connection unusable after timeout")
            st = conn.execute("SHOW statement_timeout").fetchone()[0]
            check(st == "0", f"SET LOCAL leaked: statement_timeout={st}")

    def batch(self) -> str:
        with self.connect() as conn:
            t = self.table(conn)
            try:
                half = BATCH_SIZE // 2
                with conn.pipeline():
                    for i in range(half):
                        conn.execute(f"INSERT INTO {t} VALUES (%s, %s)", (i, f"p{i}"))
                    with conn.cursor() as cur:
                        cur.executemany(
                            f"INSERT INTO {t} VALUES (%s, %s)",
                            [(i, f"p{i}") for i in range(half, BATCH_SIZE)],
                        )
                got = conn.execute(f"SELECT count(*), sum(k) FROM {t}").fetchone()
                check(got == (BATCH_SIZE, sum(range(BATCH_SIZE))), f"count/sum {got!r}")
                try:
                    with conn.pipeline():
                        conn.execute(f"INSERT INTO {t} VALUES (-1, 'a')")
                        conn.execute("SELECT 1/0")
                        conn.execute(f"INSERT INTO {t} VALUES (-2, 'b')")
                    raise CheckFailed("failing pipeline raised nothing")
                except psycopg.Error as exc:
                    expect_sqlstate(exc, "22012")
                check(
                    conn.execute("SELECT 9").fetchone() == (9,), "connection unusable after failed pipeline"
                )
            finally:
                conn.execute(f"DROP TABLE {t}")
        return "pipeline mode + executemany"

    def pool_churn(self) -> str:
        for i in range(self.p.churn):
            with self.connect() as conn:
                got = conn.execute("SELECT %s::int", (i,)).fetchone()[0]
                check(got == i, f"cycle {i} got {got}")
        return f"{self.p.churn} connections"

    def concurrent_clients(self) -> str:
        with self.connect() as conn:
            t = self.table(conn, "cid int, i int, v text")
        try:

            def client(cid: int) -> None:
                with self.connect() as c:
                    for i in range(TXNS_PER_CLIENT):
                        with c.transaction():
                            c.execute(f"INSERT INTO {t} VALUES (%s, %s, %s)", (cid, i, f"c{cid}-{i}"))
                            got = c.execute("SELECT %s::int * 1000 + %s::int", (cid, i)).fetchone()[0]
                            check(got == client_value(cid, i), f"client {cid} got {got} at {i}")
                    rows = c.execute(f"SELECT i, v FROM {t} WHERE cid = %s ORDER BY i", (cid,)).fetchall()
                    check(
                        rows == [(i, f"c{cid}-{i}") for i in range(TXNS_PER_CLIENT)],
                        f"client {cid} rows {rows!r}",
                    )

            run_threads(self.p.clients, client)
        finally:
            with self.connect() as conn:
                conn.execute(f"DROP TABLE {t}")
        return f"{self.p.clients} clients"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prepare-threshold", type=int, default=None)
    args = ap.parse_args()
    name = "psycopg3" if args.prepare_threshold is None else f"psycopg3-prepare{args.prepare_threshold}"
    params = Params.from_env()
    d = Driver(params, name, args.prepare_threshold)
    emit_version(name, f"psycopg {psycopg.__version__}, libpq {libpq_str(psycopg.pq.version())}")
    run_sync(name, params, {s: getattr(d, s) for s in dir(d) if not s.startswith("_")})


if __name__ == "__main__":
    main()
