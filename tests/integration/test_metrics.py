"""The /metrics endpoint end to end: a pooler subprocess with `web.enabled`, scraped over HTTP while
clients generate load. The text is parsed by prometheus_client's parser (and `promtool check metrics`
when Debian's prometheus package is installed), and its numbers agree with SHOW POOLS / SHOW STATS."""

from __future__ import annotations

import asyncio
import http.client
import time
from typing import Any

import asyncpg
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_admin import (
    admin,
    client,
    finish_pgbench,
    pool_row,
    pool_row_when,
    rows,
    start_pgbench,
    waiting_clients,
)
from tests.support.cluster import DBNAME, MD5_USER, SCRAM_PASSWORD, SCRAM_USER
from tests.support.pooler import free_port, wait_for
from tests.unit.test_metrics_exposition import promtool_check

pytestmark = pytest.mark.timeout(180)

def metrics_pooler(pooler_factory: Any, section: str = "web", **kw: Any) -> tuple[Any, int]:
    port = free_port()
    p = pooler_factory(start=False, **kw)
    p.config[section] = {"enabled": True, "host": "127.0.0.1", "port": port}
    p.start()
    return p, port


def http_get(port: int, path: str = "/metrics", method: str = "GET") -> tuple[int, dict[str, str], str]:
    deadline = time.monotonic() + 10
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request(method, path)
            resp = conn.getresponse()
            body = resp.read().decode()
            headers = {k.lower(): v for k, v in resp.getheaders()}
            conn.close()
            return resp.status, headers, body
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Scrape:
    """One parsed scrape: value lookups by sample name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        untyped = [f.name for f in self.families if f.type == "untyped"]
        assert not untyped, f"samples outside their family: {untyped}"

    def samples(self, name: str) -> list[Any]:
        return [s for f in self.families for s in f.samples if s.name == name]

    def value(self, name: str, **labels: str) -> float:
        found = [s.value for s in self.samples(name) if all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(found) == 1, (name, labels, found)
        return float(found[0])


def scrape(port: int) -> Scrape:
    status, headers, body = http_get(port)
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return Scrape(body)


def test_scrape_agrees_with_show_pools_under_twenty_waiters(pooler_factory: Any) -> None:
    p, port = metrics_pooler(pooler_factory, pool_size=2, general={"query_wait_timeout": 30000})
    holders = [client(p) for _ in range(2)]
    try:
        for h in holders:
            h.execute("begin")
            h.execute("select 1")
        with admin(p) as a, waiting_clients(p, 20):
            pool_row_when(a, lambda r: r["cl_waiting"] == 20, "20 waiters")
            s = scrape(port)
            pools = rows(a, "POOLS")
            for r in pools:
                ud = {"user": r["user"], "database": r["database"]}
                assert s.value("pg_doorman_pools_clients", status="waiting", **ud) == int(r["cl_waiting"])
                assert s.value("pg_doorman_pools_clients", status="active", **ud) == int(r["cl_active"])
                assert s.value("pg_doorman_pools_clients", status="idle", **ud) == int(r["cl_idle"])
                assert s.value("pg_doorman_pools_servers", status="active", **ud) == int(r["sv_active"])
                assert s.value("pg_doorman_pools_servers", status="idle", **ud) == int(r["sv_idle"])
                assert s.value("pg_doorman_pool_size", **ud) == int(r["pool_size"])
                assert s.value("pg_doorman_pools_paused", **ud) == int(r["paused"])
            scram = {"user": SCRAM_USER, "database": DBNAME}
            assert s.value("pg_doorman_pools_clients", status="waiting", **scram) == 20
            assert s.value("pg_doorman_pools_maxwait_microseconds", **scram) > 0
            assert s.value("pg_doorman_pools_oldest_active_age_ms", **scram) > 0
            promtool_check(s.text)
            for h in holders:
                h.execute("commit")
    finally:
        for h in holders:
            h.close()
    with admin(p) as a:
        s = scrape(port)
        st = [r for r in rows(a, "STATS") if r["user"] == SCRAM_USER][0]
        scram = {"user": SCRAM_USER, "database": DBNAME}
        assert s.value("pg_doorman_pools_transactions_total", **scram) == int(st["total_xact_count"]) == 22
        assert s.value("pg_doorman_pools_queries_total", **scram) == int(st["total_query_count"])
        assert s.value("pg_doorman_pools_bytes_total", direction="received", **scram) == int(st["total_received"])
        assert s.value("pg_doorman_pools_bytes_total", direction="sent", **scram) == int(st["total_sent"])
        assert s.value("pg_doorman_pools_query_duration_seconds_count", **scram) == int(st["total_query_count"])
        assert s.value("pg_doorman_pools_transaction_duration_seconds_count", **scram) == 22
        assert s.value("pg_doorman_pools_wait_duration_seconds_count", **scram) >= 20
        assert s.value("pg_doorman_pools_wait_duration_seconds_sum", **scram) == pytest.approx(
            int(st["total_wait_time"]) / 1e6)
        # The two held transactions lasted > 0.05 s; the 20 single SELECTs mostly did not.
        assert s.value("pg_doorman_pools_transaction_duration_seconds_bucket", le="+Inf", **scram) == 22
        assert s.value("pg_doorman_pools_transaction_duration_seconds_bucket", le="0.01", **scram) <= 20


def test_families_labels_and_errors(pooler_factory: Any) -> None:
    p, port = metrics_pooler(pooler_factory)
    with client(p) as c:
        for sql in ("select 1/0", "select * from missing_table", "select 1"):
            try:
                c.execute(sql)
            except psycopg.Error:
                pass
    s = scrape(port)
    names = {f.name for f in s.families}
    for fam in ("pg_doorman_build_info", "pg_doorman_log_level", "pg_doorman_total_memory",
                "pg_doorman_connections", "pg_doorman_connection_count", "pg_doorman_users_configured",
                "pg_doorman_pools_clients", "pg_doorman_pools_servers", "pg_doorman_pool_size",
                "pg_doorman_pools_bytes", "pg_doorman_pools_queries", "pg_doorman_pools_transactions",
                "pg_doorman_pools_query_duration_seconds", "pg_doorman_pools_transaction_duration_seconds",
                "pg_doorman_pools_wait_duration_seconds", "pg_doorman_pools_errors",
                "pg_doorman_pools_queries_percentile", "pg_doorman_pools_avg_wait_time",
                "pg_doorman_pool_prepared_cache_entries", "pg_doorman_servers_prepared_hits"):
        assert fam in names, fam
    assert s.value("pg_doorman_build_info") == 1
    assert s.samples("pg_doorman_build_info")[0].labels["version"]
    assert s.value("pg_doorman_log_level", level="debug") == 1
    assert s.value("pg_doorman_total_memory") > 10_000_000
    assert s.value("pg_doorman_connections_total", type="total") >= 1
    assert s.value("pg_doorman_users_configured", user=MD5_USER, database=DBNAME, pool_mode="transaction") == 1
    scram = {"user": SCRAM_USER, "database": DBNAME}
    errs = {x.labels["sqlstate"]: x.value for x in s.samples("pg_doorman_pools_errors_total")
            if x.labels["user"] == SCRAM_USER}
    # 22012 division_by_zero and 42P01 undefined_table are both "other"; every bucket is present.
    assert errs == {"08": 0, "53": 0, "57": 0, "25P02": 0, "26000": 0, "other": 2}
    buckets = [x for x in s.samples("pg_doorman_pools_query_duration_seconds_bucket") if x.labels["user"] == SCRAM_USER]
    assert [b.labels["le"] for b in buckets] == ["0.0005", "0.005", "0.05", "0.5", "5", "+Inf"]
    assert buckets[-1].value == s.value("pg_doorman_pools_query_duration_seconds_count", **scram) == 3
    assert s.value("pg_doorman_pools_queries_percentile", percentile="99", **scram) > 0
    sockets = {x.labels["type"]: x.value for x in s.samples("pg_doorman_sockets")}
    # The counts are a sample taken when the sampler starts and every 15 s after: at start-up only the
    # client listener is certain to exist (the backend may connect after the first sample).
    assert set(sockets) == {"tcp", "tcp6", "unix", "unknown"} and sockets["tcp"] >= 1
    promtool_check(s.text)
    # Other paths are 404, other methods 405, HEAD has no body.
    assert http_get(port, "/")[0] == 404
    assert http_get(port, "/metrics/x")[0] == 404
    assert http_get(port, "/metrics", "POST")[0] == 405
    status, headers, body = http_get(port, "/metrics", "HEAD")
    assert status == 200 and body == "" and int(headers["content-length"]) > 1000


def test_prepared_statement_metrics(pooler_factory: Any) -> None:
    p, port = metrics_pooler(pooler_factory, pool_size=1)
    scram = {"user": SCRAM_USER, "database": DBNAME}
    # Unnamed Parse/Bind/Execute/Sync batches (psycopg's default with parameters).
    with client(p, prepare_threshold=None) as c1, client(p, prepare_threshold=None) as c2:
        for c in (c1, c2, c1):
            c.execute("select %s::text", ("x",))
        s = scrape(port)
        assert s.value("pg_doorman_pool_prepared_cache_entries", **scram) == 1
        assert s.value("pg_doorman_clients_prepared_anonymous_entries", **scram) == 2
        assert s.value("pg_doorman_clients_prepared_named_entries", **scram) == 0
        assert s.value("pg_doorman_servers_prepared_misses_total", **scram) == 1
        assert s.value("pg_doorman_servers_prepared_hits_total", **scram) == 2
        assert s.value("pg_doorman_servers_prepared_hits", **scram) == 2
        with admin(p) as a:
            a.execute("RECONNECT")
    # The server that counted them is gone; the counters keep what it counted.
    with client(p, prepare_threshold=None) as c3:
        c3.execute("select %s::text", ("y",))
    s = scrape(port)
    assert s.value("pg_doorman_servers_prepared_misses_total", **scram) == 2
    assert s.value("pg_doorman_servers_prepared_hits_total", **scram) == 2
    assert s.value("pg_doorman_servers_prepared_hits", **scram) == 0


def test_log_level_and_pause_show_in_metrics(pooler_factory: Any) -> None:
    p, port = metrics_pooler(pooler_factory)
    with admin(p) as a:
        a.execute("SET log_level = 'warn'")
        a.execute("PAUSE")
        s = scrape(port)
        assert s.value("pg_doorman_log_level", level="warn") == 1
        assert s.value("pg_doorman_pools_paused", user=SCRAM_USER, database=DBNAME) == 1
        a.execute("RESUME")
        assert scrape(port).value("pg_doorman_pools_paused", user=SCRAM_USER, database=DBNAME) == 0


def test_legacy_prometheus_section(pooler_factory: Any) -> None:
    p, port = metrics_pooler(pooler_factory, section="prometheus")
    assert scrape(port).value("pg_doorman_pool_size", user=SCRAM_USER, database=DBNAME) == 5


@pytest.mark.concurrency
@pytest.mark.parametrize("workers", [1, 2])
def test_scrapes_under_pgbench_agree_and_counters_grow(pooler_factory: Any, tmp_path: Any, workers: int) -> None:
    p, port = metrics_pooler(pooler_factory, pool_size=3, general={"worker_threads": workers})
    scram = {"user": SCRAM_USER, "database": DBNAME}
    with admin(p) as a:
        bench = start_pgbench(p, tmp_path, clients=8, seconds=6)
        try:
            pool_row_when(a, lambda r: r["cl_active"] + r["cl_idle"] + r["cl_waiting"] == 8, "pgbench clients")
            prev = 0.0
            for _ in range(8):
                s = scrape(port)
                r = pool_row(a)
                # The split between states moves under load, the number of clients does not.
                total = sum(s.value("pg_doorman_pools_clients", status=st, **scram)
                            for st in ("idle", "active", "waiting"))
                assert total == r["cl_idle"] + r["cl_active"] + r["cl_waiting"] == 8
                assert s.value("pg_doorman_pools_servers", status="active", **scram) <= 3
                x = s.value("pg_doorman_pools_transactions_total", **scram)
                assert x >= prev
                prev = x
                assert s.value("pg_doorman_pools_transaction_duration_seconds_count", **scram) == x
                time.sleep(0.4)
        finally:
            finish_pgbench(bench)
        st = [r for r in rows(a, "STATS") if r["user"] == SCRAM_USER][0]
        s = scrape(port)
        assert s.value("pg_doorman_pools_transactions_total", **scram) == int(st["total_xact_count"]) > prev > 0
        assert s.value("pg_doorman_pools_avg_wait_time", **scram) >= 0


def login_sqlstate(host: str, port: int, database: str, password: str) -> str | None:
    """The SQLSTATE a login of SCRAM_USER gets (asyncpg keeps it for login errors; libpq does not)."""
    async def run() -> str | None:
        try:
            conn = await asyncpg.connect(host=host, port=port, user=SCRAM_USER, password=password, database=database,
                                         ssl=False, timeout=10)
        except asyncpg.PostgresError as e:
            return str(e.sqlstate)
        await conn.close()
        return None
    return asyncio.run(run())


def test_server_login_failures(pooler_factory: Any, pg: Any) -> None:
    """Server connections the pooler could not open or log in, counted per pool by the SQLSTATE class of
    what PostgreSQL (or the failed connect) said: the client gets the same SQLSTATE PostgreSQL gives a
    direct login with the same credentials; a min_pool_size pool nobody uses counts its attempts too."""
    def user(**kw: Any) -> list[dict[str, Any]]:
        return [{"username": SCRAM_USER, "password": pg.stored_password(SCRAM_USER), "pool_size": 1, **kw}]

    base = {"server_host": pg.host, "server_port": pg.port, "pool_mode": "transaction"}
    pools = {
        "badpw": {**base, "server_database": DBNAME,
                  "users": user(server_username=SCRAM_USER, server_password="not-the-password")},
        "nodb": {**base, "server_database": "no_such_database", "users": user()},
        "dead": {**base, "server_port": free_port(), "users": user()},
    }
    p, port = metrics_pooler(pooler_factory, pools=pools)
    direct = {"badpw": (DBNAME, "not-the-password"), "nodb": ("no_such_database", SCRAM_PASSWORD)}
    for db, (dbname, password) in direct.items():
        want = login_sqlstate(pg.host, pg.port, dbname, password)
        assert want in ("28P01", "3D000"), want
        for attempt in (1, 2):
            assert login_sqlstate(p.host, p.port, db, SCRAM_PASSWORD) == want, db
            n = scrape(port).value("pg_doorman_server_login_failures_total", user=SCRAM_USER, database=db,
                                   sqlstate=want[:2])
            assert n == attempt, (db, n)
    assert login_sqlstate(p.host, p.port, "dead", SCRAM_PASSWORD) == "08006"
    assert scrape(port).value("pg_doorman_server_login_failures_total", user=SCRAM_USER, database="dead",
                              sqlstate="08") == 1
    with client(p) as c:  # the working pool: no failure of its own
        c.execute("SELECT 1").fetchall()
    assert not [x for x in scrape(port).samples("pg_doorman_server_login_failures_total")
                if x.labels["database"] == DBNAME]

    # Nobody waits for a min_pool_size server: its failures are counted all the same. (A server password:
    # passthrough SCRAM cannot log in before a client has.)
    warm = {"warm": {**base, "server_port": free_port(), "users": user(
        min_pool_size=1, server_username=SCRAM_USER, server_password=SCRAM_PASSWORD)}}
    p2, port2 = metrics_pooler(pooler_factory, pools=warm)
    wait_for(lambda: scrape(port2).samples("pg_doorman_server_login_failures_total"), what="a failed warm-up")
    assert scrape(port2).value("pg_doorman_server_login_failures_total", user=SCRAM_USER, database="warm",
                               sqlstate="08") >= 1
