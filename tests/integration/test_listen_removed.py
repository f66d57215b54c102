"""A pool that a RELOAD removes keeps its clients until they leave (docs/operations.md, "Reload"); its idle
servers expire as a configured pool's do (the last test), and its LISTEN connection stays as long as one of
them listens: a listening client goes on receiving what a session listening on
PostgreSQL itself receives. Once none listens (at the RELOAD, or when the last one leaves or UNLISTENs) the
LISTEN connection is closed, its backend gone from pg_stat_activity, also when the pool was removed while that
connection was logging in again or waiting to retry."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.test_listen_notify import connect, drain, shape
from tests.integration.test_web_api import get, web_pooler
from tests.support.cluster import ADMIN_PASSWORD, ADMIN_USER, DBNAME, SCRAM_PASSWORD, SCRAM_USER
from tests.support.pooler import Pooler, wait_for
from tests.support.relay import GateProxy
from tests.support.wire import WireClient, WireError, query

pytestmark = pytest.mark.timeout(120)

GONE = "app_gone"  # the pool the RELOAD removes (DBNAME on the same cluster)


def _gone_pool(pg: Any, port: int | None = None) -> dict[str, Any]:
    return {"server_host": "127.0.0.1", "server_port": port or pg.port, "server_database": DBNAME,
            "connect_timeout": 30000,
            "users": [{"username": SCRAM_USER, "password": pg.stored_password(SCRAM_USER), "pool_size": 1}]}


def _admin(p: Pooler) -> WireClient:
    """The admin console (with the web API on, its admin_password is test_web_api's)."""
    return WireClient.connect(p.host, p.port, ADMIN_USER, "pgdoorman",
                              p.config["general"].get("admin_password", ADMIN_PASSWORD))


def _gone_client(p: Pooler) -> WireClient:
    return WireClient.connect(p.host, p.port, SCRAM_USER, GONE, SCRAM_PASSWORD)


def _lose_listener(p: Pooler, pooled: WireClient, checker: WireClient, gate_first: Any) -> None:
    """`pooled` LISTENs on GONE; `gate_first()` sets what the gate does to the next connection; then the
    LISTEN connection's backend is terminated."""
    assert shape(pooled.query("listen rl")) == [("C", "LISTEN"), ("Z", "I")]
    pid = _listener_pid(p)
    gate_first()
    assert checker.query_rows(f"select pg_terminate_backend({pid})") == [["t"]]


def _listener_pid(p: Pooler) -> str:
    """The server PID of GONE's LISTEN connection (SHOW LISTENERS), once it is up."""
    def up() -> str | None:
        with _admin(p) as adm:
            mine = [r for r in adm.query_rows("show listeners") if r[1] == GONE and r[2] == "up"]
        return mine[0][3] if mine else None

    pid: str = wait_for(up, what=f"{GONE}'s LISTEN connection up")
    return pid


def _gone_listeners(p: Pooler) -> list[list[str | None]]:
    """GONE's rows of SHOW LISTENERS; /api/listeners must have the same."""
    with _admin(p) as adm:
        rows = [r for r in adm.query_rows("show listeners") if r[1] == GONE]
    web = p.config.get("web", {})
    if web.get("enabled"):
        def api() -> list[list[str]]:
            return [[str(v) for v in r.values()] for r in get(web["port"], "listeners")["rows"]
                    if r["database"] == GONE]

        wait_for(lambda: api() == rows, 10, "/api/listeners as SHOW LISTENERS")
    return rows


def _remove_gone(p: Pooler) -> None:
    del p.config["pools"][GONE]
    p.write_config()
    with _admin(p) as adm:
        adm.query("reload")
    with pytest.raises(WireError, match="3D000"):  # a removed pool takes no new logins
        _gone_client(p).close()


def _backend_gone(checker: WireClient, pid: str) -> None:
    wait_for(lambda: checker.query_rows(f"select count(*) from pg_stat_activity where pid = {pid}") == [["0"]],
             10, f"the LISTEN backend {pid} gone")


def test_removed_pool_delivers_to_its_listening_client_then_closes(pg: Any, pooler_factory: Any) -> None:
    p, _ = web_pooler(pooler_factory, pool_size=1, pools={GONE: _gone_pool(pg)})
    pooled, direct, checker = _gone_client(p), connect(pg.host, pg.port), connect(pg.host, pg.port)
    try:
        assert shape(pooled.query("listen rl")) == shape(direct.query("listen rl")) == [("C", "LISTEN"), ("Z", "I")]
        pid = _listener_pid(p)
        _remove_gone(p)
        # Still listed (SHOW LISTENERS, /api/listeners), marked removed, while its client uses it.
        assert _gone_listeners(p) == [[SCRAM_USER, GONE, "up", pid, "1", "1", "1", "0", "0", "0", "0", "1"]]
        checker.query("notify rl, 'after the reload'")
        got = [x[:3] for x in shape(drain(pooled, 1.0))]
        assert got == [x[:3] for x in shape(drain(direct, 1.0))] == [("A", "rl", "after the reload")]
        # It is still a working client: a transaction on a server of the removed pool, another LISTEN.
        assert shape(pooled.query("select 1")) == shape(direct.query("select 1"))
        assert shape(pooled.query("listen r2")) == shape(direct.query("listen r2"))
        checker.query("notify r2, 'two'")
        assert [x[:3] for x in shape(drain(pooled, 1.0))] == [x[:3] for x in shape(drain(direct, 1.0))]
        assert checker.query_rows(f"select count(*) from pg_stat_activity where pid = {pid}") == [["1"]]
        pooled.terminate()  # the last listening client leaves: nobody needs the LISTEN connection any more
        _backend_gone(checker, pid)
        assert p.wait_for_log(f"(pid {pid}) closed: the pool was removed and no client listens")
        assert _gone_listeners(p) == []
    finally:
        pooled.close()
        direct.close()
        checker.close()


def test_removed_pool_nobody_listens_on_closes_it_at_the_reload(pg: Any, pooler_factory: Any) -> None:
    p = pooler_factory(pool_size=1, pools={GONE: _gone_pool(pg)})
    pooled, checker = _gone_client(p), connect(pg.host, pg.port)
    try:
        assert shape(pooled.query("listen rl")) == [("C", "LISTEN"), ("Z", "I")]
        pid = _listener_pid(p)
        assert shape(pooled.query("unlisten *")) == [("C", "UNLISTEN"), ("Z", "I")]
        time.sleep(0.3)  # (the UNLISTEN runs on the LISTEN connection; it stays up for the pool)
        assert checker.query_rows(f"select count(*) from pg_stat_activity where pid = {pid}") == [["1"]]
        _remove_gone(p)
        _backend_gone(checker, pid)
        assert shape(pooled.query("select 1"))[-1] == ("Z", "I")  # the client itself stays
    finally:
        pooled.close()
        checker.close()


@pytest.fixture
def gate(pg: Any) -> Any:
    px = GateProxy("127.0.0.1", pg.port)
    yield px
    px.close()


def test_pool_removed_while_its_listen_connection_logs_in_again(pg: Any, pooler_factory: Any,
                                                                   gate: GateProxy) -> None:
    """The LISTEN connection is lost and its successor's login hangs; meanwhile the pool is removed and its
    listening client leaves. When the login completes, the connection is closed."""
    p = pooler_factory(pool_size=1, pools={GONE: _gone_pool(pg, gate.port)})
    pooled, checker = _gone_client(p), connect(pg.host, pg.port)
    try:
        _lose_listener(p, pooled, checker, gate.hold)
        wait_for(lambda: gate.waiting == 1, what="the new LISTEN connection held at the gate")
        _remove_gone(p)
        pooled.terminate()
        time.sleep(0.3)
        gate.open()
        wait_for(lambda: p.log().count(f"LISTEN connection for {SCRAM_USER}@{GONE} up") >= 2, 10,
                 "the new LISTEN connection logged in")
        wait_for(lambda: gate.backends(checker) == [], 10, "no backend left through the relay")
    finally:
        pooled.close()
        checker.close()


def test_pool_removed_while_its_listen_connection_waits_to_retry(pg: Any, pooler_factory: Any,
                                                                   gate: GateProxy) -> None:
    """The LISTEN connection is lost and PostgreSQL refuses its successor (it retries every second); the pool
    is removed and its listening client leaves before the retry: no connection is opened again."""
    p = pooler_factory(pool_size=1, pools={GONE: _gone_pool(pg, gate.port)})
    pooled, checker = _gone_client(p), connect(pg.host, pg.port)
    try:
        _lose_listener(p, pooled, checker, gate.refuse)
        assert p.wait_for_log(f"LISTEN connection for {SCRAM_USER}@{GONE} could not be opened")
        _remove_gone(p)
        pooled.terminate()
        gate.open()
        time.sleep(2.5)  # past the retry (1 s after the failed login)
        assert gate.backends(checker) == []
    finally:
        pooled.close()
        checker.close()


def test_removed_pool_expires_its_idle_servers(pg: Any, pooler_factory: Any, gate: GateProxy) -> None:
    """The clients of a removed pool keep working, and the servers opened for them expire by the pool's
    idle_timeout as a configured pool's do (before, the janitor no longer saw the pool: they stayed for good)."""
    p = pooler_factory(pool_size=1, pools={GONE: {**_gone_pool(pg, gate.port), "idle_timeout": 300}},
                       general={"retain_connections_time": 200})
    pooled, direct, checker = _gone_client(p), connect(pg.host, pg.port), connect(pg.host, pg.port)
    try:
        ask = "select current_database(), current_user, current_setting('DateStyle')"
        assert pooled.query_rows(ask) == direct.query_rows(ask)
        assert len(gate.backends(checker)) == 1  # its server, idle in the pool
        _remove_gone(p)
        wait_for(lambda: gate.backends(checker) == [], 10, "the idle server closed by the RELOAD")
        assert shape(pooled.query("begin")) == shape(direct.query("begin"))
        assert pooled.query_rows(ask) == direct.query_rows(ask)
        time.sleep(1)  # past idle_timeout: in use by the client's transaction, it stays
        assert len(gate.backends(checker)) == 1
        assert shape(pooled.query("commit")) == shape(direct.query("commit"))
        wait_for(lambda: gate.backends(checker) == [], 10, "the removed pool's server closed by idle_timeout")
        assert pooled.query_rows(ask) == direct.query_rows(ask)  # the client still works
        wait_for(lambda: gate.backends(checker) == [], 10, "that server closed by idle_timeout too")
        assert p.wait_for_log("closed: idle_timeout")
    finally:
        pooled.close()
        direct.close()
        checker.close()


def test_a_lone_listen_in_flight_when_the_listen_connection_is_lost_is_run_on_the_next(
        pg: Any, pooler_factory: Any, gate: GateProxy) -> None:
    """The client's LISTEN is the only thing the LISTEN connection is needed for (no channel listened yet) when
    that connection is lost before answering it: it is opened again and the LISTEN runs there; the client gets
    PostgreSQL's answer and then the channel's notifications (before, nothing reopened it: the client hung)."""
    p = pooler_factory(pool_size=1, pools={GONE: _gone_pool(pg, gate.port)})
    pooled, direct, checker = _gone_client(p), connect(pg.host, pg.port), connect(pg.host, pg.port)
    try:
        assert shape(pooled.query("listen a1")) == [("C", "LISTEN"), ("Z", "I")]
        assert shape(pooled.query("unlisten a1")) == [("C", "UNLISTEN"), ("Z", "I")]
        pid = _listener_pid(p)
        time.sleep(0.3)  # (the UNLISTEN answered on the LISTEN connection)
        gate.freeze()
        pooled.send(query("listen a2"))
        time.sleep(0.5)  # it reached PostgreSQL; the answer is dropped
        assert drain(pooled, 0.1) == []
        gate.cut()
        got = shape(pooled.read_until("Z", timeout=10))
        assert got == shape(direct.query("listen a2")) == [("C", "LISTEN"), ("Z", "I")]
        assert _listener_pid(p) != pid
        checker.query("notify a2, 'after'")
        assert [x[:3] for x in shape(drain(pooled, 1.0))] == [x[:3] for x in shape(drain(direct, 1.0))] \
            == [("A", "a2", "after")]
    finally:
        pooled.close()
        direct.close()
        checker.close()
