"""Patroni-assisted fallback (issue 14 item 6) end to end: two throwaway clusters (node_a, the pool's
configured server, and node_b, standing in for its standby; node_b's roles carry node_a's password verifiers,
as a physical replica would) and the fake Patroni REST server of patroni_proxy's tests. node_a is stopped:
new server connections go to node_b, SHOW POOLS says fallback_active, the metrics and /api/events record it;
node_a started again: the pool returns to it. What a client reads through the pooler is compared with what
the cluster it landed on answers directly."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.test_admin import admin, client, show
from tests.integration.test_metrics import scrape
from tests.integration.test_web_api import PASSWORD, get
from tests.support.cluster import (
    DBNAME,
    MD5_PASSWORD,
    MD5_USER,
    SCRAM_PASSWORD,
    SCRAM_USER,
    pooler_config,
    start_test_cluster,
)
from tests.support.fake_patroni import FakePatroni, pmember
from tests.support.pooler import Pooler, free_port, wait_for

pytestmark = pytest.mark.timeout(180)

# What a client asks to see where it landed, and something of its session (compared with direct answers).
ASK = "select current_setting('cluster_name'), current_setting('DateStyle'), current_user::text"


@pytest.fixture(scope="module")
def nodes() -> Iterator[dict[str, Any]]:
    basedir = tempfile.mkdtemp(prefix="pgdoorman-fallback-")
    os.chmod(basedir, 0o755)
    started: dict[str, Any] = {}
    try:
        for name in ("node_a", "node_b"):
            started[name] = start_test_cluster(os.path.join(basedir, name), free_port(),
                                               settings={"cluster_name": f"'{name}'"})
        a, b = started["node_a"], started["node_b"]
        for role in (SCRAM_USER, MD5_USER):  # a replica has its primary's pg_authid
            b.psql(f"ALTER ROLE {role} PASSWORD '{a.stored_password(role)}'")
        yield started
    finally:
        for pg in started.values():
            pg.stop("immediate")
        shutil.rmtree(basedir, ignore_errors=True)


@pytest.fixture
def node_a(nodes: dict[str, Any]) -> Iterator[Any]:
    """node_a, running at the start and at the end of each test."""
    a = nodes["node_a"]
    if not a.running():
        a.start()
    yield a
    if not a.running():
        a.start()


def direct(pg: Any, user: str = SCRAM_USER) -> Any:
    password = SCRAM_PASSWORD if user == SCRAM_USER else MD5_PASSWORD
    return psycopg.connect(host=pg.host, port=pg.port, user=user, password=password, dbname=DBNAME,
                           autocommit=True, options="-c DateStyle=SQL,DMY")


def ask(conn: Any) -> tuple[Any, ...]:
    row = conn.execute(ASK).fetchone()
    assert row is not None
    return tuple(row)


def start_pooler(nodes: dict[str, Any], tmp_path: Path, patroni: FakePatroni, workers: int = 1,
                 **pool: Any) -> tuple[Pooler, int]:
    a = nodes["node_a"]
    general = {"admin_password": PASSWORD, "query_wait_timeout": 20000, "worker_threads": workers}
    cfg = pooler_config(a, pool_size=2, general=general,
                        pool={"patroni_api_urls": [patroni.url], "fallback_cooldown": "2s",
                              "fallback_lifetime": "2s", "fallback_connect_timeout": "2s", **pool})
    web = free_port()
    cfg["web"] = {"enabled": True, "host": "127.0.0.1", "port": web, "ui": True}
    p = Pooler(cfg, str(tmp_path / "pooler"))
    p.start()
    return p, web


def connect(p: Pooler, user: str = SCRAM_USER) -> Any:
    password = SCRAM_PASSWORD if user == SCRAM_USER else MD5_PASSWORD
    return client(p, user=user, password=password, options="-c DateStyle=SQL,DMY")


def pool_row(p: Pooler, user: str = SCRAM_USER) -> dict[str, Any]:
    with admin(p, password=PASSWORD) as a:
        (row,) = [r for r in show(a, "POOLS")[1] if r["database"] == DBNAME and r["user"] == user]
        return row


@pytest.mark.parametrize("workers", [1, 2])
def test_fallback_to_the_standby_and_back(nodes: dict[str, Any], node_a: Any, tmp_path: Path, workers: int) -> None:
    """With two workers, clients and the servers opened for them may live on different threads."""
    b = nodes["node_b"]
    patroni = FakePatroni([pmember("node_a", "leader", "127.0.0.1", node_a.port),
                           pmember("node_b", "sync_standby", "127.0.0.1", b.port)])
    p, web = start_pooler(nodes, tmp_path, patroni, workers)
    try:
        with direct(node_a) as d, connect(p) as c:
            assert ask(c) == ask(d) and ask(c)[0] == "node_a"
        assert pool_row(p)["fallback_active"] == 0 and patroni.requests == 0
        node_a.stop("fast")
        # Both users (two pools of one configured pool) land on node_b and see what node_b shows them.
        for user in (SCRAM_USER, MD5_USER):
            with direct(b, user) as d, connect(p, user) as c:
                assert ask(c) == ask(d) and ask(c)[0] == "node_b"
                assert c.execute("select inet_server_port()").fetchone() == (b.port,)
        assert pool_row(p)["fallback_active"] == 1
        m = scrape(web)
        assert m.value("pg_doorman_fallback_active", pool=DBNAME) == 1
        assert m.value("pg_doorman_fallback_host", pool=DBNAME, host="127.0.0.1", port=str(b.port)) == 1
        assert m.value("pg_doorman_fallback_connections_total", pool=DBNAME) >= 2
        assert m.value("pg_doorman_patroni_api_requests_total", pool=DBNAME) >= 1
        assert m.value("pg_doorman_patroni_api_errors_total", pool=DBNAME) == 0
        assert patroni.requests >= 1
        kinds = [(e["kind"], e["target"], e["ok"]) for e in get(web, "events")["events"]]
        assert ("fallback", DBNAME, False) in kinds and ("fallback", DBNAME, True) in kinds
        node_a.start()
        # After the cooldown the configured server is tried again; node_b's connections end with their
        # fallback_lifetime.
        wait_for(lambda: _lands(p) == "node_a", timeout=30, what="the pool back on node_a")
        wait_for(lambda: pool_row(p)["fallback_active"] == 0, what="fallback_active back to 0")
        with direct(node_a) as d, connect(p) as c:
            assert ask(c) == ask(d)
        details = [e["detail"] for e in get(web, "events")["events"] if e["kind"] == "fallback"]
        assert any("is back" in d for d in details), details
    finally:
        p.stop()
        patroni.close()


def _lands(p: Pooler) -> str:
    with connect(p) as c:
        return str(ask(c)[0])


def test_sync_standby_first_then_replica(nodes: dict[str, Any], node_a: Any, tmp_path: Path) -> None:
    """A sync standby that does not answer is tried first and avoided; the replica serves; the failure is
    counted by reason."""
    b = nodes["node_b"]
    dead = free_port()
    patroni = FakePatroni([pmember("node_b", "replica", "127.0.0.1", b.port),
                           pmember("node_a", "leader", "127.0.0.1", node_a.port),
                           pmember("node_c", "sync_standby", "127.0.0.1", dead),
                           pmember("node_d", "sync_standby", "127.0.0.1", b.port, tags={"nofailover": True})])
    p, web = start_pooler(nodes, tmp_path, patroni)
    try:
        node_a.stop("fast")
        with direct(b) as d, connect(p) as c:
            assert ask(c) == ask(d) and ask(c)[0] == "node_b"
        m = scrape(web)
        assert m.value("pg_doorman_fallback_candidate_failures_total", pool=DBNAME, reason="connect_error") == 1
        assert f"fallback candidate 127.0.0.1:{dead} (sync_standby) failed" in p.log()
    finally:
        p.stop()
        patroni.close()


def test_no_usable_member_fails_the_client_at_once(nodes: dict[str, Any], node_a: Any, tmp_path: Path) -> None:
    """Patroni lists no usable member (or does not answer): the waiting client gets 08006 now, not at
    query_wait_timeout (20 s here), as a client of the stopped server directly gets an error."""
    patroni = FakePatroni([pmember("node_a", "leader", "127.0.0.1", node_a.port),
                           pmember("node_b", "replica", "127.0.0.1", nodes["node_b"].port, state="stopped")])
    p, web = start_pooler(nodes, tmp_path, patroni)
    try:
        node_a.stop("fast")
        with pytest.raises(psycopg.OperationalError):
            direct(node_a)
        for why in ("no usable cluster member", "Patroni API unavailable"):
            t0 = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as e:
                with connect(p) as c:
                    c.execute("select 1")
            assert time.monotonic() - t0 < 10
            assert why in str(e.value), str(e.value)
            assert pool_row(p)["fallback_active"] == 0
            patroni.down()
        assert scrape(web).value("pg_doorman_patroni_api_errors_total", pool=DBNAME) >= 1
        node_a.start()
        time.sleep(2.1)  # the cooldown
        with direct(node_a) as d, connect(p) as c:
            assert ask(c) == ask(d)
    finally:
        p.stop()
        patroni.close()


def test_session_mode_clients_waiting_together(nodes: dict[str, Any], node_a: Any, tmp_path: Path) -> None:
    """Session mode, pool_size 2: two clients logging in at once while Patroni is read each get a server of
    their own on node_b (the retry opens one per waiter)."""
    b = nodes["node_b"]
    patroni = FakePatroni([pmember("node_b", "replica", "127.0.0.1", b.port)])
    p, web = start_pooler(nodes, tmp_path, patroni, pool_mode="session")
    conns: list[Any] = []
    try:
        node_a.stop("fast")
        errors: list[BaseException] = []

        def login() -> None:
            try:
                conns.append(connect(p))
            except BaseException as e:  # noqa: BLE001 (reported below)
                errors.append(e)

        threads = [threading.Thread(target=login) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors and len(conns) == 2
        with direct(b) as d:
            assert [ask(c) for c in conns] == [ask(d)] * 2
        pids = {c.execute("select pg_backend_pid()").fetchone() for c in conns}
        assert len(pids) == 2
        row = pool_row(p)
        assert (row["sv_active"], row["fallback_active"]) == (2, 1)
    finally:
        for c in conns:
            c.close()
        p.stop()
        patroni.close()
