"""The pool coordinator (max_db_connections) and connection scaling (scaling_max_parallel_creates), end to end
against a real PostgreSQL: the database-wide cap over two users with the reserve and an eviction visible in
SHOW POOL_COORDINATOR and counted on the PostgreSQL side, PgDoorman's error once the cap and the reserve stay
full, the guarantees that stop an eviction, and a burst of 500 clients that never has more than 2 server
logins in flight (PostgreSQL's log_connections lines, by backend)."""

from __future__ import annotations

import asyncio
import gc
import re
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest

from tests.integration.test_auth_query import admin, connect, show
from tests.support.cluster import (
    DBNAME,
    MD5_PASSWORD,
    MD5_USER,
    SCRAM_PASSWORD,
    SCRAM_USER,
    PgCluster,
    pooler_config,
    throwaway_cluster,
)
from tests.support.pooler import Pooler, wait_for

pytestmark = pytest.mark.timeout(180)


# Backends of the test database some earlier test on this xdist worker left open (CI saw one app_scram
# backend stay through all of this file's tests, twice): not this file's poolers', so not counted.
_BEFORE: set[int] = set()


@pytest.fixture(autouse=True)
def _earlier_backends(pg: PgCluster) -> None:
    """What is connected to the test database when a test starts. A connection an earlier test's objects
    still hold (in a reference cycle) goes with a garbage collection; whatever stays is named and left out."""
    gc.collect()
    _BEFORE.clear()
    rows = pg.psql(f"SELECT pid, usename, application_name, backend_start, state, query FROM pg_stat_activity "
                   f"WHERE datname = '{DBNAME}' AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                   dbname="postgres")
    for line in rows.splitlines():
        if "|" in line:
            _BEFORE.add(int(line.split("|")[0]))
            warnings.warn(f"a backend was open before this test, left out of its counts: {line}", stacklevel=1)


def backends(pg: PgCluster) -> dict[str, int]:
    """Client backends of the test database per user, as PostgreSQL counts them (those open before the test
    left out)."""
    skip = f"AND pid NOT IN ({', '.join(map(str, _BEFORE))}) " if _BEFORE else ""
    out = pg.psql(f"SELECT usename, count(*) FROM pg_stat_activity WHERE datname = '{DBNAME}' "
                  f"AND backend_type = 'client backend' AND pid <> pg_backend_pid() {skip}GROUP BY usename",
                  dbname="postgres")
    counts: dict[str, int] = {}
    for line in out.splitlines():
        if "|" in line:
            user, n = line.split("|")
            counts[user.strip()] = int(n)
    return counts


def coordinator_row(p: Pooler) -> dict[str, Any]:
    (row,) = show(p, "POOL_COORDINATOR")
    return row


class Holder:
    """A client inside a transaction that has used its server (so it holds one) until `release`."""

    def __init__(self, p: Pooler, user: str, password: str) -> None:
        self.conn = psycopg.connect(p.dsn(user, password, DBNAME), connect_timeout=10)
        self.conn.execute("select 1")  # BEGIN + the query: a server is linked until COMMIT

    def release(self) -> None:
        self.conn.commit()
        self.conn.close()


def coordinated(pg: PgCluster, pooler_factory: Any, **pool: Any) -> Pooler:
    return pooler_factory(pool={"max_db_connections": 2, "reserve_pool_size": 1, "reserve_pool_timeout": 1000,
                                "min_connection_lifetime": 0, **pool}, pool_size=3)


def test_reserve_then_eviction_then_error(pg: PgCluster, pooler_factory: Any) -> None:
    p = coordinated(pg, pooler_factory)
    assert coordinator_row(p) == {"database": DBNAME, "max_db_conn": 2, "current": 0, "reserve_size": 1,
                                  "reserve_used": 0, "evictions": 0, "reserve_acq": 0, "exhaustions": 0}
    # app_scram needs three servers at once: two under the cap, the third from the reserve.
    held = [Holder(p, SCRAM_USER, SCRAM_PASSWORD) for _ in range(3)]
    assert backends(pg) == {SCRAM_USER: 3}
    row = coordinator_row(p)
    assert (row["current"], row["reserve_used"], row["reserve_acq"], row["evictions"]) == (3, 1, 1, 0)
    for h in held:
        h.release()
    # app_md5 needs one: the cap and the reserve are full, so an idle server of app_scram (the user with the
    # largest surplus) is closed for it; PostgreSQL sees the swap.
    with connect(p, MD5_USER, MD5_PASSWORD) as c:
        assert c.execute("select current_user").fetchone() == (MD5_USER,)
    wait_for(lambda: backends(pg) == {SCRAM_USER: 2, MD5_USER: 1}, what="one app_scram backend evicted")
    row = coordinator_row(p)
    assert (row["current"], row["evictions"], row["exhaustions"]) == (3, 1, 0)
    # Everything busy: a client of app_md5 waits reserve_pool_timeout, then gets PgDoorman's error.
    held = [Holder(p, SCRAM_USER, SCRAM_PASSWORD) for _ in range(2)] + [Holder(p, MD5_USER, MD5_PASSWORD)]
    t0 = time.monotonic()
    with connect(p, MD5_USER, MD5_PASSWORD) as c:
        with pytest.raises(psycopg.OperationalError) as ei:
            c.execute("select 1")
    waited = time.monotonic() - t0
    assert 0.9 < waited < 4.0
    diag = ei.value.diag
    assert diag.sqlstate == "53300"
    assert diag.message_primary == (
        "Could not get a database connection from the pool. All servers may be busy or down. Error details: all "
        f"server connections to database '{DBNAME}' are in use (max=2, reserve=1/1, user='{MD5_USER}'). "
        "Please try again later.")
    assert coordinator_row(p)["exhaustions"] == 1
    # The holders are unharmed, and a slot given back serves the next client.
    for h in held:
        assert h.conn.execute("select 2").fetchone() == (2,)
    held[0].release()
    with connect(p, MD5_USER, MD5_PASSWORD) as c:
        assert c.execute("select 3").fetchone() == (3,)
    for h in held[1:]:
        h.release()
    assert sum(backends(pg).values()) <= 3


@pytest.mark.parametrize("guard", [{"min_guaranteed_pool_size": 3}, {"min_connection_lifetime": 600000}],
                         ids=["guaranteed", "too-young"])
def test_no_eviction_below_the_guarantee_or_lifetime(pg: PgCluster, pooler_factory: Any,
                                                     guard: dict[str, int]) -> None:
    p = coordinated(pg, pooler_factory, **guard)
    held = [Holder(p, SCRAM_USER, SCRAM_PASSWORD) for _ in range(3)]
    for h in held:
        h.release()
    with pytest.raises(psycopg.OperationalError) as ei:  # its first login needs a server already
        with connect(p, MD5_USER, MD5_PASSWORD) as c:
            c.execute("select 1")
    assert "(max=2, reserve=1/1, user='app_md5')" in str(ei.value)
    assert backends(pg) == {SCRAM_USER: 3}
    row = coordinator_row(p)
    assert (row["evictions"], row["exhaustions"]) == (0, 1)


def test_coordinator_off_by_default(pg: PgCluster, pooler_factory: Any) -> None:
    p = pooler_factory(pool_size=3)
    assert show(p, "POOL_COORDINATOR") == []
    held = [Holder(p, SCRAM_USER, SCRAM_PASSWORD) for _ in range(3)] + [Holder(p, MD5_USER, MD5_PASSWORD)]
    assert backends(pg) == {SCRAM_USER: 3, MD5_USER: 1}
    for h in held:
        h.release()


# ------------------------------------------------------------------------------------------ connection scaling
_LOG = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \S+ \[(\d+)\] LOG:  connection (received|authorized)")


def logins_in_flight(logfile: str, user: str) -> tuple[int, int]:
    """(most PostgreSQL logins in flight at once, logins) of `user` from log_connections: a backend is logging
    in from its 'connection received' line to its 'connection authorized' one (PgDoorman's connects last
    longer: they end at ReadyForQuery, so the next one starts after the authorized line)."""
    received: dict[str, tuple[datetime, int]] = {}
    events: list[tuple[datetime, int]] = []
    with open(logfile, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _LOG.match(line)
            if not m:
                continue
            ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
            pid = m.group(2)
            if m.group(3) == "received":
                received[pid] = (ts, len(events))
            elif pid in received and f"user={user} " in line:
                events.append((received.pop(pid)[0], 1))
                events.append((ts, -1))
    events.sort(key=lambda e: (e[0], e[1]))  # at the same millisecond an end comes first
    most = cur = 0
    for _, d in events:
        cur += d
        most = max(most, cur)
    return most, len(events) // 2


@pytest.fixture(scope="module")
def logged_pg() -> Iterator[PgCluster]:
    with throwaway_cluster(settings={"log_connections": "on", "log_line_prefix": "'%m [%p] '"}) as cluster:
        yield cluster


def burst(p: Pooler, n: int) -> list[Any]:
    async def one(i: int) -> Any:
        async with await psycopg.AsyncConnection.connect(p.dsn(SCRAM_USER, SCRAM_PASSWORD, DBNAME),
                                                         autocommit=True, connect_timeout=60) as c:
            cur = await c.execute("select pg_sleep(0.02), %s::int", (i,))
            return (await cur.fetchone())[1]

    async def run() -> list[Any]:
        return list(await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True))

    return asyncio.run(run())


def test_burst_never_opens_more_than_two_at_once(logged_pg: PgCluster, tmp_path: Any) -> None:
    pg = logged_pg
    cfg = pooler_config(pg, general={"scaling_max_parallel_creates": 2, "query_wait_timeout": 60000,
                                     "max_connections": 1000}, pool_size=40)
    with Pooler(cfg, str(tmp_path)) as p:
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            with admin(p) as a:
                while not done.is_set():
                    for r in a.execute("SHOW POOL_SCALING").fetchall():
                        if r[0] == SCRAM_USER:
                            samples.append(int(r[2]))
                    time.sleep(0.005)

        t = threading.Thread(target=sample)
        t.start()
        try:
            results = burst(p, 500)
        finally:
            done.set()
            t.join()
        assert results == list(range(500))
        most, logins = logins_in_flight(pg.logfile, SCRAM_USER)
        print(f"PostgreSQL logins of {SCRAM_USER}: {logins}, most in flight at once: {most}; "
              f"SHOW POOL_SCALING inflight max {max(samples)} over {len(samples)} samples")
        assert 2 <= logins <= 40
        assert most <= 2
        assert samples and max(samples) <= 2
        (row,) = [r for r in show(p, "POOL_SCALING") if r["user"] == SCRAM_USER]
        assert row["creates"] == logins and row["inflight"] == 0
        assert row["gate_waits"] > 0
