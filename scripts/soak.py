#!/usr/bin/env python3
"""Soak: the real pooler under mixed traffic for a long time (default 30 minutes), in both pool modes at
once, reporting every interval the errors, the pooler's RSS, fds and threads, and the server connections
(PostgreSQL's pg_stat_activity and the pooler's SHOW POOLS); at the end a verdict on whether RSS stayed
flat after warm-up and whether everything came back idle.

    make soak ARGS="--duration 1800"
    .venv/bin/python scripts/soak.py [--duration S] [--interval S] [--pooler-src DIR] [--json FILE]

Two pools on one throwaway PostgreSQL: `app` in transaction mode, `app_session` in session mode (same
database, same user). Against each, in threads, with real drivers:
  simple     psycopg2 (simple protocol): SELECT, multi-statement transactions, checked answers
  extended   psycopg 3 with prepare_threshold=None: parameterised queries on the unnamed statement
  prepared   psycopg 3 with prepare_threshold=0: named prepared statements, five rotating queries
  copy       psycopg2: COPY FROM STDIN then COPY TO STDOUT of the rows just written, counted
  cancel     psycopg2: pg_sleep cancelled by a CancelRequest after 20-200 ms; the session must go on
             (a cancel that misses its query is counted apart: the pooler drops one sent while the
             client waits for a server, and under load one can overtake its query, as without a pooler)
  abort      raw protocol: BEGIN + INSERT then the socket is dropped (no Terminate), or a query sent and
             the socket dropped before the answer
  storm      every --storm-every seconds, many clients connect, query and leave at the same moment
Errors other than the expected ones (57014 for the cancels) are counted and the first ones printed.
Exit status 0 only when there were no unexpected errors, no traceback in the pooler's log, every server
came back idle, and RSS was flat after warm-up.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import psycopg2
import psycopg2.errors

sys.path.insert(0, str(Path(__file__).resolve().parent))

from robustness_common import (  # noqa: E402
    DBNAME,
    MD5_PASSWORD,
    MD5_USER,
    ROOT,
    PoolerProcess,
    admin_rows,
    deep_merge,
    pooler_config,
    raise_nofile,
    stack,
    wire,
)

POOLS = {"app": "transaction", "app_session": "session"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Stats:
    """Operation and error counts per (pool, kind), thread-safe; errors keep their first messages."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: collections.Counter[tuple[str, str]] = collections.Counter()
        self.errors: collections.Counter[tuple[str, str]] = collections.Counter()
        self.first_errors: list[str] = []
        self.reported = 0  # first_errors already printed

    def ok(self, pool: str, kind: str, n: int = 1) -> None:
        with self.lock:
            self.ops[pool, kind] += n

    def error(self, pool: str, kind: str, exc: BaseException | str) -> None:
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {str(exc).strip()[:200]}"
        with self.lock:
            self.errors[pool, kind] += 1
            if len(self.first_errors) < 40:
                self.first_errors.append(f"{time.strftime('%H:%M:%S')} {pool}/{kind}: {text}")

    def snapshot(self) -> tuple[collections.Counter[tuple[str, str]], collections.Counter[tuple[str, str]]]:
        with self.lock:
            return collections.Counter(self.ops), collections.Counter(self.errors)


class CancelRace(Exception):
    """A cancel that did not hit its query: it arrived while the client waited for a server (the pooler
    drops it, there is no query on a server to cancel) or, under load, before or after the query ran on
    the server (as with PostgreSQL directly). Counted apart, not an error."""


class Traffic:
    def __init__(self, pooler: PoolerProcess, stats: Stats, deadline: float, pause: float, storm_every: float,
                 storm_size: dict[str, int]) -> None:
        self.pooler = pooler
        self.stats = stats
        self.deadline = deadline
        self.pause = pause
        self.storm_every = storm_every
        self.storm_size = storm_size
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ connections
    def dsn(self, db: str) -> str:
        return self.pooler.cfg.dsn(MD5_USER, MD5_PASSWORD, db) + " connect_timeout=15"

    def pg2(self, db: str) -> Any:
        conn = psycopg2.connect(self.dsn(db))
        conn.autocommit = True
        return conn

    def pg3(self, db: str, prepare: int | None) -> Any:
        return psycopg.connect(self.dsn(db), autocommit=True, prepare_threshold=prepare)

    def running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline

    def loop(self, pool: str, kind: str, connect: Callable[[], Any], step: Callable[[Any, random.Random], int]) -> None:
        """Run `step(conn, rng)` until the end, reconnecting after an error; step returns operations done."""
        rng = random.Random(f"{pool}/{kind}")
        conn: Any = None
        while self.running():
            try:
                if conn is None:
                    conn = connect()
                self.stats.ok(pool, kind, step(conn, rng))
            except CancelRace as e:
                self.stats.ok(pool, f"cancel missed ({e})")
            except Exception as e:  # every failure is a finding: count it, reconnect, go on
                self.stats.error(pool, kind, e)
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
                conn = None
                self.stop.wait(0.5)
            self.stop.wait(self.pause)
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    # ------------------------------------------------------------------ the kinds of traffic
    @staticmethod
    def simple(conn: Any, rng: random.Random) -> int:
        k = rng.randrange(1_000_000)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
            cur.execute(f"BEGIN; INSERT INTO soak_t (k, v) VALUES ({k}, 'simple'); "
                        f"UPDATE soak_t SET v = 'simple2' WHERE k = {k}; COMMIT")
            cur.execute(f"SELECT count(*) FROM soak_t WHERE k = {k} AND v = 'simple2'")
            row = cur.fetchone()
            assert row is not None and row[0] >= 1, row
            cur.execute(f"DELETE FROM soak_t WHERE k = {k}")
        return 4

    @staticmethod
    def extended(conn: Any, rng: random.Random) -> int:
        a, b = rng.randrange(1000), rng.randrange(1000)
        row = conn.execute("SELECT %s::int + %s::int, %s::text", (a, b, "x" * rng.randrange(200))).fetchone()
        assert row[0] == a + b, row
        with conn.transaction():
            conn.execute("INSERT INTO soak_t (k, v) VALUES (%s, %s)", (a, "ext"))
            n = conn.execute("SELECT count(*) FROM soak_t WHERE k = %s AND v = 'ext'", (a,)).fetchone()[0]
            assert n >= 1, n
            conn.execute("DELETE FROM soak_t WHERE k = %s AND v = 'ext'", (a,))
        return 4

    @staticmethod
    def prepared(conn: Any, rng: random.Random) -> int:
        i = rng.randrange(5)
        x = rng.randrange(10_000)
        queries = [
            ("SELECT %s::int * 2", lambda r: r[0] == 2 * x),
            ("SELECT %s::int + 7, 'p1'", lambda r: r[0] == x + 7),
            ("SELECT length(repeat('y', %s::int %% 100))", lambda r: r[0] == x % 100),
            ("SELECT %s::bigint, now() IS NOT NULL", lambda r: r[0] == x and r[1]),
            ("SELECT count(*) >= 0 FROM generate_series(1, %s::int %% 50)", lambda r: r[0]),
        ]
        sql, check = queries[i]
        row = conn.execute(sql, (x,)).fetchone()
        assert check(row), (sql, x, row)
        return 1

    @staticmethod
    def copy(conn: Any, rng: random.Random) -> int:
        tag = rng.randrange(1_000_000_000)
        n = rng.randrange(1, 300)
        data = "".join(f"{tag}\t{i}\trow {i}\n" for i in range(n))
        with conn.cursor() as cur:
            cur.copy_expert("COPY soak_copy (tag, i, t) FROM STDIN", io.StringIO(data))
            out = io.StringIO()
            cur.copy_expert(f"COPY (SELECT i FROM soak_copy WHERE tag = {tag} ORDER BY i) TO STDOUT", out)
            got = out.getvalue().split()
            assert got == [str(i) for i in range(n)], (len(got), n)
            cur.execute(f"DELETE FROM soak_copy WHERE tag = {tag}")
        return 3

    @staticmethod
    def cancel(conn: Any, rng: random.Random) -> int:
        timer = threading.Timer(rng.uniform(0.02, 0.2), conn.cancel)
        timer.start()
        try:
            with conn.cursor() as cur:
                try:
                    cur.execute("SELECT pg_sleep(3)")
                    missed = True
                except psycopg2.errors.QueryCanceled:
                    missed = False
                try:
                    cur.execute("SELECT 2")
                    assert cur.fetchone() == (2,)
                except psycopg2.errors.QueryCanceled:
                    raise CancelRace("the cancel hit the next query") from None
        finally:
            timer.cancel()
        if missed:
            raise CancelRace("pg_sleep(3) ran to the end")
        return 2

    def abort(self, db: str, rng: random.Random) -> int:
        c = self.pooler.connect(MD5_USER, MD5_PASSWORD, db)
        try:
            if rng.random() < 0.5:
                c.query_rows("BEGIN")
                c.query_rows(f"INSERT INTO soak_t (k, v) VALUES ({rng.randrange(10**6)}, 'aborted')")
            else:
                c.send(wire.query("SELECT pg_sleep(0.2), 'dropped before the answer'"))
        finally:
            # Gone without Terminate, and with RST rather than FIN half the time.
            if rng.random() < 0.5:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()
        return 1

    def storm(self, pool: str, db: str) -> None:
        rng = random.Random(f"storm/{pool}")
        while self.running():
            self.stop.wait(self.storm_every * rng.uniform(0.7, 1.3))
            if not self.running():
                return
            n = self.storm_size[pool]
            gate = threading.Barrier(n)
            done: list[int] = []

            def one(gate: threading.Barrier, done: list[int]) -> None:
                try:
                    gate.wait(10)
                    conn = psycopg2.connect(self.dsn(db))
                    try:
                        with conn.cursor() as cur:
                            cur.execute("SELECT 1")
                            assert cur.fetchone() == (1,)
                    finally:
                        conn.close()
                    done.append(1)
                except Exception as e:
                    self.stats.error(pool, "storm", e)

            ths = [threading.Thread(target=one, args=(gate, done), daemon=True) for _ in range(n)]
            for th in ths:
                th.start()
            for th in ths:
                th.join(60)
            self.stats.ok(pool, "storm", len(done))

    def start(self) -> None:
        for pool in POOLS:
            db = pool
            jobs: list[tuple[str, Callable[[], Any], Callable[[Any, random.Random], int]]] = [
                ("simple", lambda db=db: self.pg2(db), self.simple),
                ("extended", lambda db=db: self.pg3(db, None), self.extended),
                ("prepared", lambda db=db: self.pg3(db, 0), self.prepared),
                ("copy", lambda db=db: self.pg2(db), self.copy),
                ("cancel", lambda db=db: self.pg2(db), self.cancel),
                ("abort", lambda db=db: db, lambda d, rng: self.abort(d, rng)),
            ]
            for kind, connect, step in jobs:
                self.threads.append(threading.Thread(target=self.loop, args=(pool, kind, connect, step),
                                                     name=f"{pool}/{kind}", daemon=True))
            self.threads.append(threading.Thread(target=self.storm, args=(pool, db), name=f"{pool}/storm", daemon=True))
        for th in self.threads:
            th.start()

    def join(self) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(30)


# ------------------------------------------------------------------------------------------ observation

def server_connections(pg: Any) -> dict[str, int]:
    """PostgreSQL's view: backends of the soak user by state."""
    conn = psycopg2.connect(host=pg.host, port=pg.port, user="postgres", dbname="postgres", sslmode="disable")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT coalesce(state, '?'), count(*) FROM pg_stat_activity WHERE usename = %s GROUP BY 1",
                        (MD5_USER,))
            return {str(s): int(n) for s, n in cur.fetchall()}
    finally:
        conn.close()


def pools_view(pooler: PoolerProcess) -> dict[str, dict[str, int]]:
    out = {}
    for r in admin_rows(pooler, "SHOW POOLS"):
        if r["user"] == MD5_USER:
            out[str(r["database"])] = {k: int(r[k] or 0) for k in ("cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_login")}
    return out


def rss_verdict(samples: list[dict[str, Any]], warmup: float) -> dict[str, Any]:
    """Flat when RSS after warm-up grew by at most max(2 MiB, 3%) from its first post-warm-up sample to the
    last one, and no post-warm-up sample exceeds the first by more than max(4 MiB, 6%)."""
    after = [s for s in samples if s["elapsed_s"] >= warmup]
    if len(after) < 2:
        return {"flat": None, "why": "fewer than two samples after warm-up"}
    first, last = after[0]["rss_kib"], after[-1]["rss_kib"]
    peak = max(s["rss_kib"] for s in after)
    xs = [s["elapsed_s"] / 60 for s in after]
    ys = [s["rss_kib"] for s in after]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    growth_ok = last - first <= max(2048, 0.03 * first)
    peak_ok = peak - first <= max(4096, 0.06 * first)
    return {"flat": growth_ok and peak_ok, "first_kib": first, "last_kib": last, "peak_kib": peak,
            "growth_kib": last - first, "slope_kib_per_min": round(slope, 1), "samples": len(after)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=1800, help="seconds of traffic (default 1800)")
    ap.add_argument("--interval", type=float, default=60, help="seconds between reports (default 60)")
    ap.add_argument("--warmup", type=float, help="seconds before RSS must be flat (default: 20%% of the "
                    "duration, at least one interval)")
    ap.add_argument("--pause", type=float, default=0.002, help="seconds each traffic thread sleeps between steps")
    ap.add_argument("--storm-every", type=float, default=30, help="seconds between reconnect storms (default 30)")
    ap.add_argument("--storm-size", type=int, default=60, help="clients per storm on the transaction pool "
                    "(the session pool gets a third, it has a server per client)")
    ap.add_argument("--workers", type=int, default=2, help="pooler worker_threads (default 2)")
    ap.add_argument("--pooler-src", type=Path, default=ROOT, help="source tree to run the pooler from")
    ap.add_argument("--json", type=Path, help="write the samples and the verdict here as JSON")
    args = ap.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else max(args.interval, 0.2 * args.duration)
    storm_size = {"app": args.storm_size, "app_session": max(2, args.storm_size // 3)}
    raise_nofile(8192)

    def config(pg: Any) -> dict[str, Any]:
        base = pooler_config(pg, pool_size=10, general={"worker_threads": args.workers})
        session = deep_merge(base["pools"][DBNAME], {"pool_mode": "session", "server_database": DBNAME})
        for u in session["users"]:
            u["pool_size"] = storm_size["app_session"] + 12  # persistent session clients + a storm
        base["pools"]["app_session"] = session
        return base

    samples: list[dict[str, Any]] = []
    stats = Stats()
    with stack(config, args.pooler_src, "pgdoorman-soak-") as (pg, pooler):
        pg.psql("CREATE TABLE soak_t (k int, v text); CREATE TABLE soak_copy (tag bigint, i int, t text);"
                f" GRANT ALL ON soak_t, soak_copy TO {MD5_USER};", dbname=DBNAME)
        log(f"pooler pid {pooler.pid} on {pooler.host}:{pooler.port} (source {args.pooler_src}); "
            f"{args.duration:.0f} s of traffic, a report every {args.interval:.0f} s, warm-up {warmup:.0f} s")
        start = time.monotonic()
        traffic = Traffic(pooler, stats, start + args.duration, args.pause, args.storm_every, storm_size)
        traffic.start()
        prev_ops: collections.Counter[tuple[str, str]] = collections.Counter()
        prev_err: collections.Counter[tuple[str, str]] = collections.Counter()
        next_at = start + args.interval
        while True:
            time.sleep(max(0.0, next_at - time.monotonic()))
            now = time.monotonic()
            ops, errs = stats.snapshot()
            d_ops, d_err = ops - prev_ops, errs - prev_err
            prev_ops, prev_err = ops, errs
            st = pooler.stats()
            try:
                pools, servers = pools_view(pooler), server_connections(pg)
            except Exception as e:  # the report must not stop the soak
                pools, servers = {}, {"error": 1}
                stats.error("monitor", "report", e)
            s = {"elapsed_s": round(now - start), **st, "ops": sum(d_ops.values()),
                 "ops_per_s": round(sum(d_ops.values()) / args.interval), "errors": sum(d_err.values()),
                 "errors_by_kind": {f"{p}/{k}": n for (p, k), n in d_err.items()}, "servers": servers, "pools": pools}
            samples.append(s)
            log(f"t={s['elapsed_s']:5d}s ops/s {s['ops_per_s']:5d} errors {s['errors']:3d} "
                f"RSS {st['rss_kib'] / 1024:6.1f} MiB fds {st['fds']:4d} threads {st['threads']:3d} "
                f"PG backends {sum(v for k, v in servers.items())} {servers} "
                + " ".join(f"{p}: cl {v['cl_active']}/{v['cl_waiting']}w sv {v['sv_active']}a/{v['sv_idle']}i"
                           for p, v in pools.items())
                + (f" | {s['errors_by_kind']}" if s["errors"] else ""))
            with stats.lock:
                fresh, stats.reported = stats.first_errors[stats.reported:], len(stats.first_errors)
            for line in fresh[:5]:
                log(f"  error: {line}")
            if now - start >= args.duration:
                break
            next_at += args.interval
        traffic.join()

        # Afterwards: every server idle and answering, nothing left over.
        settled: dict[str, Any] = {}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            pools = pools_view(pooler)
            servers = server_connections(pg)
            settled = {"pools": pools, "servers": servers}
            if all(v["cl_active"] == 0 and v["sv_active"] == 0 for v in pools.values()) and \
                    set(servers) <= {"idle"}:
                break
            time.sleep(0.5)
        answers = {}
        for db in POOLS:
            try:
                with pooler.connect(MD5_USER, MD5_PASSWORD, db) as c:
                    answers[db] = c.query_rows("SELECT 42") == [["42"]]
                    c.terminate()
            except Exception as e:
                answers[db] = False
                stats.error(db, "final check", e)
        tracebacks = pooler.tracebacks()
        final = pooler.stats()

    verdict = rss_verdict(samples, warmup)
    ops, errs = stats.snapshot()
    idle = all(v["cl_active"] == 0 and v["sv_active"] == 0 for v in settled.get("pools", {}).values()) and \
        set(settled.get("servers", {})) <= {"idle"}
    ok = bool(verdict["flat"]) and not errs and tracebacks == 0 and idle and all(answers.values())
    log(f"operations: {sum(ops.values())} ({', '.join(f'{p}/{k} {n}' for (p, k), n in sorted(ops.items()))})")
    log("cancels that did not hit their query (not errors, see CancelRace): "
        + (", ".join(f"{p}/{k} {n}" for (p, k), n in sorted(ops.items()) if k.startswith("cancel missed")) or "none"))
    log(f"unexpected errors: {sum(errs.values())} {dict(errs) if errs else ''}")
    for line in stats.first_errors[:20]:
        log(f"  {line}")
    log(f"afterwards: {settled}; pools answer: {answers}; tracebacks in the pooler log: {tracebacks}")
    log(f"RSS after warm-up: {verdict}")
    log(f"final RSS {final['rss_kib'] / 1024:.1f} MiB, peak {final['hwm_kib'] / 1024:.1f} MiB, fds {final['fds']}")
    log("VERDICT: " + ("PASS" if ok else "FAIL") + f" (RSS {'flat' if verdict['flat'] else 'NOT flat'} after warm-up,"
        f" {sum(errs.values())} unexpected errors, {tracebacks} tracebacks, servers {'idle' if idle else 'NOT idle'})")
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: str(v) for k, v in vars(args).items()}, "samples": samples, "verdict": verdict,
            "ops": {f"{p}/{k}": n for (p, k), n in ops.items()}, "errors": {f"{p}/{k}": n for (p, k), n in errs.items()},
            "first_errors": stats.first_errors, "settled": settled, "answers": answers, "tracebacks": tracebacks,
            "final": final, "pass": ok,
        }, indent=2) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
