"""Servers stay on their worker thread (issue 15 item 1): with clients waiting on two workers, a server
freed on one worker goes to a waiting client of that worker (Pool.release's local preference, bounded by
LOCAL_SLACK so nobody starves) instead of the oldest waiter of any worker, which moved about half of the
servers between threads. pg_doorman_pools_servers_handed_total{worker="same"|"other"} counts the hand-offs
(unit tests of the decision itself: tests/unit/test_pool_actions.py). Every answer is checked against what
PostgreSQL returns for the same statement directly."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

import psycopg
import pytest

from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER
from tests.support.pooler import free_port

pytestmark = pytest.mark.timeout(180)

CLIENTS = 16
ROUNDS = 60


def _handed(p: Any) -> dict[str, int]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{p.web_port}/metrics", timeout=5).read().decode()
    out = {"same": 0, "other": 0}
    for line in body.splitlines():
        if line.startswith("pg_doorman_pools_servers_handed_total{"):
            kind = "same" if 'worker="same"' in line else "other"
            out[kind] += int(float(line.rsplit(" ", 1)[1]))
    return out


def _worker_clients(p: Any) -> dict[str, int]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{p.web_port}/metrics", timeout=5).read().decode()
    out = {}
    for line in body.splitlines():
        if line.startswith("pg_doorman_worker_clients{"):
            out[line.split('worker="', 1)[1].split('"', 1)[0]] = int(float(line.rsplit(" ", 1)[1]))
    return out


async def _connect_evenly(dsn: str, p: Any) -> list[psycopg.AsyncConnection[Any]]:
    """CLIENTS connections, half on each worker. The kernel's SO_REUSEPORT hash splits them at random (12/4 one
    time in ten), and how often a server must cross depends on the split: a connection that lands on a worker
    that has its half already is put aside and closed once the others are open."""
    kept: list[psycopg.AsyncConnection[Any]] = []
    extra: list[psycopg.AsyncConnection[Any]] = []
    per: dict[str, int] = {}
    while len(kept) < CLIENTS:
        before = _worker_clients(p)
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        after = _worker_clients(p)
        grew = [w for w in after if after[w] > before.get(w, 0)]
        assert len(grew) == 1, (before, after)
        if per.get(grew[0], 0) < CLIENTS // 2:
            per[grew[0]] = per.get(grew[0], 0) + 1
            kept.append(conn)
        else:
            extra.append(conn)
        assert len(extra) < 100, per
    for conn in extra:
        await conn.close()
    print("clients per worker:", per, "put aside:", len(extra))
    return kept


async def _run(dsn: str, sql: str, rounds: int, p: Any = None) -> list[Any]:
    conns = await _connect_evenly(dsn, p) if p is not None else [
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(CLIENTS)]

    async def client(i: int) -> list[Any]:
        async with conns[i] as conn:
            rows = []
            for j in range(rounds):
                cur = await conn.execute(sql, (i, j))
                rows.append(await cur.fetchone())
            return rows
    return await asyncio.gather(*(client(i) for i in range(CLIENTS)))


@pytest.mark.concurrency
def test_freed_servers_go_to_waiters_of_their_own_worker(pooler_factory: Any, pg: Any) -> None:
    p = pooler_factory(pool_size=4, general={"worker_threads": 2, "query_wait_timeout": 30000}, start=False)
    p.web_port = free_port()
    p.config["web"] = {"enabled": True, "host": "127.0.0.1", "port": p.web_port}
    p.start()
    # Each statement holds its server 1 ms or more, so the servers are the bottleneck and clients of both workers
    # are always waiting (as at pgbench -c 100 over a pool of 20).
    sql = "select %s::int * 1000 + %s::int, pg_sleep(0.001) is not null"
    direct_dsn = f"host={pg.host} port={pg.port} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname={DBNAME}"
    direct = asyncio.run(_run(direct_dsn, sql, 2))
    through = asyncio.run(_run(p.dsn(SCRAM_USER, SCRAM_PASSWORD, DBNAME), sql, ROUNDS, p))
    assert [r[:2] for r in through] == direct  # same answers as PostgreSQL's
    assert all(r == [(i * 1000 + j, True) for j in range(ROUNDS)] for i, r in enumerate(through))
    n = _handed(p)
    print("servers handed:", n)
    total = n["same"] + n["other"]
    # 16 clients over 4 servers: most transactions waited for a freed server.
    assert total >= CLIENTS * ROUNDS // 2, n
    # Oldest-waiter-first moved 45-57 % of them (the clients are split over the two workers); with the local
    # preference a server moves only when its worker has no client waiting, or for fairness, when a waiter of
    # the other worker has waited LOCAL_SLACK: 1-6 % when this was written (GIL and 3.13t), and on 3.13t with
    # the clients split 8/8, 6.4-6.5 % on a quiet machine and 19 % with the rest of the suite running beside
    # it (waits past LOCAL_SLACK); at random splits (the kernel's) 26-29 % was seen, and once in CI (2026-12-05)
    # 34 % (227 of 672) beside the suite. Two fifths still tells the two rules apart (the oldest-waiter rule never
    # went under 45 %) without failing on a loaded machine.
    assert n["other"] <= total * 2 // 5, n
