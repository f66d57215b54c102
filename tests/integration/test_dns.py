"""Server host names are resolved off the worker's loop, with a cache (pgdoorman/net/resolve.py), through the
real pooler and a real PostgreSQL:

- `server_host: localhost` (resolved through /etc/hosts) serves its clients as the cluster does directly;
- a name that does not resolve fails each waiting client with 08006 and libpq's own wording (what psql
  prints for the same host), the failure is cached, and the pool is left with nothing connecting or waiting;
- a slow lookup (the resolver's test-only hook, PGDOORMAN_TEST_RESOLVER, delays it on the resolver's thread)
  does not hold up the worker: another pool's client on the same single worker gets its answers meanwhile,
  SHOW LISTS counts the lookup in flight, and connect_timeout bounds the lookup as it bounds a TCP connect;
- a name with several addresses is connected at the first that accepts (as libpq tries them in order).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from typing import Any

import psycopg
import pytest

from tests.integration.test_admin import admin, client, rows
from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER, pooler_config
from tests.support.pooler import Pooler, wait_for
from tests.support.wire import WireClient, WireError, query

pytestmark = pytest.mark.timeout(180)

SLOW = 3.0  # seconds the hook holds the lookup of slow.test
HOOK = {
    "slow.test": {"delay": SLOW, "addresses": ["127.0.0.1"]},
    "slower.test": {"delay": 30, "addresses": ["127.0.0.1"]},
    "multi.test": {"addresses": ["::1", "127.0.0.2", "127.0.0.1"]},
}
ASK = "select current_user::text, current_database()::text, inet_server_addr()::text, current_setting('DateStyle')"


def _pool(pg: Any, host: str, **extra: Any) -> dict[str, Any]:
    users = [{"username": SCRAM_USER, "password": pg.stored_password(SCRAM_USER), "pool_size": 1}]
    return {"server_host": host, "server_port": pg.port, "server_database": DBNAME, "pool_mode": "transaction",
            "users": users, **extra}


@pytest.fixture
def dns_pooler(pg: Any, tmp_path: Any) -> Any:
    pools = {"bad": _pool(pg, "nonexistent.invalid"), "slow": _pool(pg, "slow.test", connect_timeout=10000),
             "slower": _pool(pg, "slower.test", connect_timeout=1000), "multi": _pool(pg, "multi.test")}
    cfg = pooler_config(pg, pool={"server_host": "localhost"}, pools=pools, pool_size=1,
                        general={"worker_threads": 1, "query_wait_timeout": 20000})
    p = Pooler(cfg, str(tmp_path / "pooler"), env={"PGDOORMAN_TEST_RESOLVER": json.dumps(HOOK)}).start()
    yield p
    p.stop()


def _ask(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    row = conn.execute(ASK).fetchone()
    assert row is not None
    return tuple(row)


def test_localhost_serves_as_postgres_does(dns_pooler: Pooler, pg: Any) -> None:
    dsn = f"host={pg.host} port={pg.port} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname={DBNAME}"
    for style in ("ISO, DMY", "SQL, MDY"):  # two clients whose settings differ, on a pool of one server
        opts = f"-c DateStyle={style.replace(' ', '')}"
        with psycopg.connect(dsn, options=opts, autocommit=True) as direct, \
                client(dns_pooler, options=opts) as pooled:
            assert _ask(pooled) == _ask(direct)
    with admin(dns_pooler) as a:
        servers = [s for s in rows(a, "SERVERS") if s["database_name"] == DBNAME]
        lists = {r["list"]: r["items"] for r in rows(a, "LISTS")}
    assert len(servers) == 1, servers
    assert lists["dns_names"] >= 1  # localhost, cached


def _libpq_says(host: str) -> str:
    """psql's own message for `host` (after its "psql: error: " prefix)."""
    if shutil.which("psql") is None:
        pytest.skip("psql not installed: no libpq wording to compare with")
    out = subprocess.run(["psql", f"host={host} port=5432 dbname=x connect_timeout=5", "-c", "select 1"],
                         capture_output=True, text=True, timeout=60)
    return out.stderr.strip().removeprefix("psql: error: ")


def test_unresolvable_name_fails_like_libpq(dns_pooler: Pooler) -> None:
    expected = _libpq_says("nonexistent.invalid")
    assert expected.startswith('could not translate host name "nonexistent.invalid" to address: '), expected
    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            with WireClient.connect(dns_pooler.host, dns_pooler.port, SCRAM_USER, "bad", SCRAM_PASSWORD) as c:
                c.send(query("select 1"))
                c.read_until()
        except WireError as e:
            errors.append(e)

    threads = [threading.Thread(target=attempt) for _ in range(3)]  # three clients wait on one server slot
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(errors) == 3, errors
    for e in errors:
        assert isinstance(e, WireError)
        assert (e.fields["S"], e.sqlstate, e.fields["M"]) == ("FATAL", "08006", expected)
    with admin(dns_pooler) as a:
        lists = {r["list"]: r["items"] for r in rows(a, "LISTS")}
        pool = next(p for p in rows(a, "POOLS") if p["database"] == "bad")
        assert not [s for s in rows(a, "SERVERS") if s["database_name"] == "bad"]
    assert lists["dns_names"] >= 1 and lists["dns_queries"] == 0
    assert pool["cl_waiting"] == 0 and pool["sv_active"] == 0 and pool["sv_idle"] == 0, pool
    # The failure is cached: one lookup for all of them (the pooler logs each lookup that fails).
    assert dns_pooler.log().count("lookup of nonexistent.invalid failed:") == 1
    # And the pool still serves nothing but that error afterwards, without a hang.
    with pytest.raises(WireError) as again:
        WireClient.connect(dns_pooler.host, dns_pooler.port, SCRAM_USER, "bad", SCRAM_PASSWORD).close()
    assert (again.value.sqlstate, again.value.fields["M"]) == ("08006", expected)


def test_slow_lookup_does_not_hold_the_worker(dns_pooler: Pooler, pg: Any) -> None:
    with client(dns_pooler) as other:  # pool app: its server is up before the slow lookup starts
        first = _ask(other)
        result: list[Any] = []
        started = time.monotonic()

        def slow_client() -> None:
            try:
                with client(dns_pooler, db="slow") as c:
                    result.append((_ask(c), time.monotonic() - started))
            except psycopg.Error as e:
                result.append(e)

        t = threading.Thread(target=slow_client)
        t.start()
        with admin(dns_pooler) as a:
            wait_for(lambda: {r["list"]: r["items"] for r in rows(a, "LISTS")}["dns_queries"] == 1,
                     timeout=SLOW - 0.5, what="the lookup of slow.test in flight")
        # Meanwhile the same (single) worker answers the other pool's client at once, again and again.
        worst = 0.0
        answered = 0
        while t.is_alive() and time.monotonic() - started < SLOW - 0.3:
            t0 = time.monotonic()
            assert _ask(other) == first
            worst = max(worst, time.monotonic() - t0)
            answered += 1
        t.join(30)
    assert answered >= 5 and worst < 0.5, (answered, worst)
    assert len(result) == 1 and not isinstance(result[0], BaseException), result
    (user, db, addr, _), took = result[0]
    assert (user, db, addr) == (SCRAM_USER, DBNAME, "127.0.0.1/32")
    assert took >= SLOW - 0.2, took  # it did wait for its lookup
    # The answer is cached: a second client of that pool does not wait for another lookup.
    t0 = time.monotonic()
    with client(dns_pooler, db="slow") as c:
        assert _ask(c)[0] == SCRAM_USER
    assert time.monotonic() - t0 < 1.5


def test_connect_timeout_bounds_the_lookup(dns_pooler: Pooler) -> None:
    t0 = time.monotonic()
    with pytest.raises(WireError) as err:
        WireClient.connect(dns_pooler.host, dns_pooler.port, SCRAM_USER, "slower", SCRAM_PASSWORD).close()
    took = time.monotonic() - t0
    port = dns_pooler.config["pools"]["slower"]["server_port"]
    assert (err.value.sqlstate, err.value.fields["M"]) == (
        "08006", f"could not connect to server slower.test:{port}: connect_timeout expired")
    assert took < 10, took
    with admin(dns_pooler) as a:
        pool = next(p for p in rows(a, "POOLS") if p["database"] == "slower")
        assert pool["cl_waiting"] == 0 and not [s for s in rows(a, "SERVERS") if s["database_name"] == "slower"]


def test_every_address_is_tried_in_order(dns_pooler: Pooler, pg: Any) -> None:
    dsn = f"host={pg.host} port={pg.port} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname={DBNAME}"
    with psycopg.connect(dsn, autocommit=True) as direct, client(dns_pooler, db="multi") as pooled:
        assert _ask(pooled) == _ask(direct)  # ::1 and 127.0.0.2 refuse: 127.0.0.1 is the one
    log = dns_pooler.log()
    for refused in ("::1", "127.0.0.2"):
        assert f"server multi.test:{pg.port} ({refused}) for {SCRAM_USER}@multi: Connection refused; trying the " \
            "next address" in log, dns_pooler.log_tail()
