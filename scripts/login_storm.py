#!/usr/bin/env python3
"""Login storm: new connections at a fixed rate through static users and through auth_query users of one
pooler, in the same run (issue 13's login-storm cell). Each connection logs in (md5), runs `select 1` and
leaves. Reported per kind: logins done, p50/p99 login time (connect until ReadyForQuery) and the pooler's
CPU per login (its process CPU time over the phase / logins).

    .venv/bin/python scripts/login_storm.py [--rate 1000] [--seconds 5] [--users 50] [--workers auto] [--json]

Two passes of each kind, interleaved (static, auth_query, auth_query, static), so that a drift of a shared
machine hits both alike; the first pass of each kind also opens its servers (and, for auth_query, runs the
lookups). With --json the last line is one JSON object: the passes and, per kind, both passes together.
It starts its own throwaway PostgreSQL (scripts/pgcluster.py) and pooler; needs asyncpg (a test dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from pgcluster import PgCluster  # noqa: E402

PASSWORD = "storm_pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def setup(pg: PgCluster, users: int) -> list[str]:
    names = [f"storm_{i:03d}" for i in range(users)]
    sql = ["SET password_encryption = 'md5';", "CREATE DATABASE storm;"]
    sql += [f"CREATE ROLE {n} LOGIN PASSWORD '{PASSWORD}';" for n in names]
    sql += ["CREATE ROLE storm_exec LOGIN PASSWORD 'exec_pw';"]
    pg.psql("\n".join(sql[:1] + sql[2:]))
    pg.psql(sql[1])
    pg.psql("""
CREATE FUNCTION public.storm_lookup(uname text, OUT usename name, OUT passwd text) RETURNS SETOF record
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$ SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = uname $$;
REVOKE ALL ON FUNCTION public.storm_lookup(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.storm_lookup(text) TO storm_exec;
""", dbname="storm")
    return names


def pooler_config(pg: PgCluster, port: int, names: list[str], workers: str) -> dict[str, Any]:
    common = {"server_host": pg.host, "server_port": pg.port, "server_database": "storm", "pool_mode": "transaction"}
    return {
        "general": {"host": "127.0.0.1", "port": port, "admin_username": "admin", "admin_password": "admin",
                    "worker_threads": workers if workers == "auto" else int(workers), "max_connections": 20000,
                    "log_client_connections": False, "log_client_disconnections": False},
        "pools": {
            "static": {**common, "users": [{"username": n, "password": pg.stored_password(n), "pool_size": 2}
                                           for n in names]},
            "dynamic": {**common, "users": [], "auth_query": {
                "query": "SELECT usename, passwd FROM public.storm_lookup($1)", "user": "storm_exec",
                "password": "exec_pw", "database": "storm", "pool_size": 2}},
        },
    }


async def storm(port: int, db: str, names: list[str], rate: int, seconds: float) -> tuple[list[float], int]:
    times: list[float] = []
    errors = 0

    async def one(user: str) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        try:
            conn = await asyncpg.connect(host="127.0.0.1", port=port, user=user, password=PASSWORD, database=db,
                                         ssl=False, timeout=30, statement_cache_size=0)
            times.append(time.perf_counter() - t0)
            await conn.fetchval("select 1")
            await conn.close()
        except Exception:
            errors += 1

    tasks = []
    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(names[i % len(names)])))
    await asyncio.gather(*tasks)
    return times, errors


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def summary(kind: str, times: list[float], errors: int, cpu: float) -> dict[str, Any]:
    """One row: logins, errors, p50/p99 login time (ms) and pooler CPU per login (µs)."""
    return {"kind": kind, "logins": len(times), "errors": errors, "p50_ms": pct(times, 0.5) * 1e3,
            "p99_ms": pct(times, 0.99) * 1e3, "cpu_us_per_login": cpu / max(1, len(times)) * 1e6}


def run_passes(pid: int, port: int, names: list[str], rate: int, seconds: float) -> dict[str, Any]:
    """The four passes, printed as they end; the passes and both passes of each kind together."""
    print(f"{'kind':<12}{'logins':>8}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/login':>14}", flush=True)
    passes = []
    together: dict[str, tuple[list[float], int, float]] = {}
    for kind, db in (("static", "static"), ("auth_query", "dynamic"), ("auth_query", "dynamic"),
                     ("static", "static")):
        c0 = cpu_seconds(pid)
        times, errors = asyncio.run(storm(port, db, names, rate, seconds))
        used = cpu_seconds(pid) - c0
        row = summary(kind, times, errors, used)
        passes.append(row)
        print(f"{kind:<12}{row['logins']:>8}{errors:>8}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
              f"{row['cpu_us_per_login']:>14.0f}", flush=True)
        t, e, c = together.get(kind, ([], 0, 0.0))
        together[kind] = (t + times, e + errors, c + used)
    return {"passes": passes, "kinds": {k: summary(k, *v) for k, v in together.items()}}


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # SIGTERM (bench.py stopping us): the `finally` stops PostgreSQL and the pooler


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=1000, help="new connections per second")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--workers", default="auto", help='pooler worker_threads ("auto" or a number)')
    ap.add_argument("--python", default=sys.executable, help="interpreter running the pooler")
    ap.add_argument("--json", action="store_true", help="end with the results as one line of JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="login-storm-") as tmp:
        os.chmod(tmp, 0o755)  # the postgres OS user (when run as root) must reach the data directory
        pg = PgCluster(os.path.join(tmp, "pg"), free_port(), settings={"max_connections": "300"})
        pg.init()
        pg.start()
        proc = None
        try:
            names = setup(pg, args.users)
            port = free_port()
            cfg = os.path.join(tmp, "pg_doorman.yaml")
            Path(cfg).write_text(yaml.safe_dump(pooler_config(pg, port, names, args.workers)))
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            proc = subprocess.Popen([args.python, "-m", "pgdoorman", cfg, "-l", "warn"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            print(f"{args.rate} new connections/s for {args.seconds:g} s over {args.users} users "
                  f"(md5, select 1, close); pooler worker_threads={args.workers}")
            result = run_passes(proc.pid, port, names, args.rate, args.seconds)
            if args.json:
                print(json.dumps({"rate": args.rate, "seconds": args.seconds, "users": args.users,
                                  "workers": args.workers, **result}))
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
            pg.stop("immediate")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
