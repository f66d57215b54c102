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


async def _run(dsn: str, sql: str, rounds: int) -> list[Any]:
    async def client(i: int) -> list[Any]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
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
    through = asyncio.run(_run(p.dsn(SCRAM_USER, SCRAM_PASSWORD, DBNAME), sql, ROUNDS))
    assert [r[:2] for r in through] == direct  # same answers as PostgreSQL's
    assert all(r == [(i * 1000 + j, True) for j in range(ROUNDS)] for i, r in enumerate(through))
    n = _handed(p)
    print("servers handed:", n)
    total = n["same"] + n["other"]
    # 16 clients over 4 servers: most transactions waited for a freed server.
    assert total >= CLIENTS * ROUNDS // 2, n
    # Oldest-waiter-first moved 45-57 % of them (the clients are split over the two workers); with the local
    # preference a server moves only when its worker has no client waiting, or for fairness (LOCAL_SLACK):
    # 1-6 % when this was written, GIL and 3.13t, on a loaded machine. Few clients per server keep the
    # waits, and so how much the two workers' waits differ when the kernel splits the clients unevenly,
    # well under LOCAL_SLACK (40 clients made that 6-16 %).
    assert n["other"] <= total * 15 // 100, n
