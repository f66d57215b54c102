"""general.worker_placement (issue 15 item 1; pgdoorman/placement.py): with `pack`, clients go to the
lowest-numbered worker that is not busy, and a busy worker moves idle clients to one that is not; `spread`
(and `pack` with worker_busy_percent 0, every worker busy) leaves each client on the worker whose listener
accepted it; once the load has gone, `pack` gathers the clients on the lowest worker again. Where clients are is read from pg_doorman_worker_clients{worker}, moves from
pg_doorman_worker_clients_moved_total. Answers are checked against PostgreSQL's."""

from __future__ import annotations

import http.client
import signal
from typing import Any

import psycopg
import pytest

from tests.support.certs import Certs, make_certs
from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER
from tests.support.pooler import Pooler, free_port, wait_for
from tests.support.wire import WireClient, frame, query

pytestmark = [pytest.mark.timeout(180), pytest.mark.concurrency]

SESSION_DB = "app_session"  # the same database through a session-mode pool: its client never moves


def _metrics(p: Pooler) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", p.web_port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for line in text.splitlines():
        if line.startswith("pg_doorman_worker_"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def _placed(p: Pooler) -> tuple[int, int]:
    m = _metrics(p)
    return int(m['pg_doorman_worker_clients{worker="0"}']), int(m['pg_doorman_worker_clients{worker="1"}'])


def _moved(p: Pooler) -> int:
    m = _metrics(p)
    return int(sum(v for k, v in m.items() if k.startswith("pg_doorman_worker_clients_moved_total")
                   and 'direction="out"' in k))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"), SCRAM_USER)


def _pooler(pooler_factory: Any, pg: Any, **general: Any) -> Pooler:
    users = [{"username": SCRAM_USER, "password": pg.stored_password(SCRAM_USER), "pool_size": 2}]
    session = {"server_host": pg.host, "server_port": pg.port, "server_database": DBNAME, "pool_mode": "session",
               "users": users}
    p: Pooler = pooler_factory(pool_size=4, general={"worker_threads": 2, **general}, pools={SESSION_DB: session},
                               start=False)
    p.web_port = free_port()
    p.config["web"] = {"enabled": True, "host": "127.0.0.1", "port": p.web_port}
    return p.start()


def _connect(p: Pooler, db: str = DBNAME, sslmode: str = "disable") -> psycopg.Connection[Any]:
    return psycopg.connect(p.dsn(SCRAM_USER, SCRAM_PASSWORD, db), autocommit=True, sslmode=sslmode)


def test_pack_keeps_clients_on_the_first_worker(pooler_factory: Any, pg: Any) -> None:
    # 100: never busy (one thread cannot use more than its CPU), so every client goes to worker 0, whichever
    # worker's listener the kernel gave it to.
    p = _pooler(pooler_factory, pg, worker_placement="pack", worker_busy_percent=100)
    conns = [_connect(p) for _ in range(16)]
    try:
        for i, c in enumerate(conns):
            assert c.execute("select %s::int + 1", (i,)).fetchone() == (i + 1,)
        assert _placed(p) == (16, 0)
        assert _moved(p) == 0
    finally:
        for c in conns:
            c.close()


@pytest.mark.parametrize("general", [{"worker_placement": "spread"},
                                     {"worker_placement": "pack", "worker_busy_percent": 0}],
                         ids=["spread", "pack-all-busy"])
def test_spread_leaves_clients_where_the_kernel_put_them(pooler_factory: Any, pg: Any,
                                                          general: dict[str, Any]) -> None:
    p = _pooler(pooler_factory, pg, **general)
    conns = [_connect(p) for _ in range(16)]
    try:
        for i, c in enumerate(conns):
            assert c.execute("select %s::int + 1", (i,)).fetchone() == (i + 1,)
        on0, on1 = _placed(p)
        # SO_REUSEPORT spreads connections by a hash of their addresses: all 16 on one listener has odds of
        # 1 in 32,768.
        assert on0 + on1 == 16 and on0 > 0 and on1 > 0, (on0, on1)
        assert _moved(p) == 0
    finally:
        for c in conns:
            c.close()


def test_busy_worker_moves_idle_clients_and_they_keep_working(pooler_factory: Any, pg: Any, certs: Certs) -> None:
    p = _pooler(pooler_factory, pg, worker_placement="pack", worker_busy_percent=100,
                tls_certificate=certs.server_cert, tls_private_key=certs.server_key)
    with _connect(p) as c:
        c.execute("drop table if exists placed_tx, placed_copy")
        c.execute("create table placed_tx (x int)")
        c.execute("create table placed_copy (x int)")
    idle = [_connect(p, sslmode="require" if i % 3 == 0 else "disable") for i in range(10)]  # 4 over TLS
    assert [c.pgconn.ssl_in_use for c in idle].count(True) == 4
    loader = _connect(p, SESSION_DB)  # holds its server: stays on worker 0 and keeps it busy
    txc = _connect(p)  # in a transaction across the moves: linked to a server, not moved
    copier = WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD)  # mid-COPY: not moved
    try:
        sql = "select %s::int * 100 + length(%s::text)"
        for i, c in enumerate(idle):  # a named prepared statement each (psycopg's _pg3_0), before the move
            assert c.execute(sql, (i, "ab"), prepare=True).fetchone() == (i * 100 + 2,)
        txc.execute("begin")
        txc.execute("insert into placed_tx values (1)")
        copier.send(query("copy placed_copy from stdin"))
        assert copier.read_message()[0] == "G"
        copier.send(frame("d", b"1\n2\n"))
        assert _placed(p) == (13, 0)

        # Any CPU use makes worker 0 busy now, however busy the machine is; worker 1 serves nobody and stays
        # under it.
        p.config["general"]["worker_busy_percent"] = 1
        p.config["general"]["worker_spare_cpu_percent"] = 0
        p.write_config()
        p.signal(signal.SIGHUP)
        assert p.wait_for_log("configuration reloaded", timeout=10)

        def spread_out() -> bool:
            for _ in range(50):
                loader.execute("select count(*) from generate_series(1, 200)")
            return _placed(p) == (3, 10)

        wait_for(spread_out, timeout=60, what="the idle clients moved to worker 1")
        assert _moved(p) >= 10

        # Each moved client (TLS ones included): its prepared statement, a transaction, a plain query, all on
        # worker 1 now.
        for i, c in enumerate(idle):
            assert c.execute(sql, (i, "abc"), prepare=True).fetchone() == (i * 100 + 3,)
            with c.transaction():
                c.execute("insert into placed_tx values (%s)", (100 + i,))
                assert c.execute("select count(*) from placed_tx where x = %s", (100 + i,)).fetchone() == (1,)
            assert c.execute("select %s::text || 'x'", (str(i),)).fetchone() == (f"{i}x",)
        # The transaction and the COPY that were under way finish as if nothing happened.
        txc.execute("insert into placed_tx values (2)")
        assert txc.execute("select count(*) from placed_tx where x < 100").fetchone() == (2,)
        txc.execute("commit")
        copier.send(frame("d", b"3\n"), frame("c"))
        replies = [t for t, _ in copier.read_until("Z")]
        assert "C" in replies and "E" not in replies, replies
        with _connect(p) as c:
            assert c.execute("select count(*), sum(x) from placed_copy").fetchone() == (3, 6)
            assert c.execute("select count(*) from placed_tx").fetchone() == (12,)

        # The load is gone: worker 0 has room for worker 1's clients again, and they come back.
        wait_for(lambda: _placed(p) == (13, 0), timeout=60, what="the clients gathered on worker 0")
        m = _metrics(p)
        assert m['pg_doorman_worker_clients_moved_total{worker="0",direction="in"}'] >= 10
        for i, c in enumerate(idle):
            assert c.execute(sql, (i, "abcd"), prepare=True).fetchone() == (i * 100 + 4,)
    finally:
        for c in [*idle, loader, txc]:
            c.close()
        copier.sock.close()
        with _connect(p) as c:
            c.execute("drop table if exists placed_tx, placed_copy")
