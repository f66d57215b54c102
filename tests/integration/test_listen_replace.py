"""RECONNECT, and a RELOAD that changes the pool's server, replace the pool's LISTEN connection too (session/
listener.py `replace`): a new backend LISTENs first, then the old one is closed, and nothing is lost or
delivered twice meanwhile. A client listening through pgdoorman and a session listening on PostgreSQL itself
receive the same notifications, in the same order, while a notifier keeps sending across the replacement;
SHOW LISTENERS names the new backend and the old one is gone from pg_stat_activity."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from typing import Any

import pytest

from tests.integration.test_listen_notify import _listeners, connect, drain, shape
from tests.support.cluster import ADMIN_PASSWORD, ADMIN_USER, MD5_USER, SCRAM_USER, start_test_cluster
from tests.support.pooler import Pooler, free_port, wait_for
from tests.support.wire import WireClient

pytestmark = pytest.mark.timeout(180)


def _notifier(pg: Any, stop: threading.Event, sent: list[str]) -> None:
    """NOTIFY rl, '1', '2', ... one transaction each, until `stop`."""
    with connect(pg.host, pg.port) as n:
        i = 0
        while not stop.is_set():
            i += 1
            n.query(f"notify rl, '{i}'")
            sent.append(str(i))
            time.sleep(0.002)
        n.query("notify rl, 'end'")
        sent.append("end")


def _payloads(c: WireClient, deadline: float = 20.0) -> list[str]:
    """rl's payloads `c` receives, through 'end'."""
    got: list[str] = []
    end = time.monotonic() + deadline
    while time.monotonic() < end and (not got or got[-1] != "end"):
        for x in shape(drain(c, 0.5)):
            if x[0] == "A" and x[1] == "rl":
                got.append(x[2])
    return got


def _replaced_across(pg: Any, p: Pooler, act: Any) -> tuple[list[str], list[str], list[str]]:
    """`act()` run while notifications flow: (what the pooled client got, what a direct session got, sent)."""
    pooled, direct = connect(p.host, p.port), connect(pg.host, pg.port)
    checker = connect(pg.host, pg.port)
    try:
        assert shape(pooled.query("listen rl")) == [("C", "LISTEN"), ("Z", "I")]
        assert shape(direct.query("listen rl")) == [("C", "LISTEN"), ("Z", "I")]
        old_pid = _listeners(p)["server_pid"]
        stop, sent = threading.Event(), []
        t = threading.Thread(target=_notifier, args=(pg, stop, sent))
        t.start()
        try:
            wait_for(lambda: len(sent) > 50, what="notifications flowing")
            act()

            def replaced() -> dict[str, str | None] | None:
                info = _listeners(p)
                return info if info["state"] == "up" and info["server_pid"] not in (old_pid, "0") else None

            info = wait_for(replaced, what="the new LISTEN connection")
            count = len(sent)
            wait_for(lambda: len(sent) > count + 50, what="notifications after the replacement")
        finally:
            stop.set()
            t.join(20)
        new_pid = info["server_pid"]
        wait_for(lambda: checker.query_rows(f"select count(*) from pg_stat_activity where pid = {old_pid}")
                 == [["0"]], what="the old LISTEN backend gone")
        assert checker.query_rows(f"select count(*) from pg_stat_activity where pid = {new_pid}") == [["1"]]
        assert int(info["failures"] or 0) == 0 and int(info["connects"] or 0) == 2, info
        got_pooled, got_direct = _payloads(pooled), _payloads(direct)
        # The pooled client still works as a client afterwards, and its channel is still listened.
        assert shape(pooled.query("select 1"))[-1] == ("Z", "I")
        checker.query("notify rl, 'later'")
        assert [x[:3] for x in shape(drain(pooled, 1.0))] == [("A", "rl", "later")]
        return got_pooled, got_direct, sent
    finally:
        pooled.close()
        direct.close()
        checker.close()


def test_reconnect_replaces_the_listen_connection_without_a_gap(pg: Any, pooler_factory: Any) -> None:
    p = pooler_factory(pool_size=1)

    def reconnect() -> None:
        with WireClient.connect(p.host, p.port, ADMIN_USER, "pgdoorman", ADMIN_PASSWORD) as adm:
            adm.query("reconnect")

    got_pooled, got_direct, sent = _replaced_across(pg, p, reconnect)
    assert got_direct == sent  # (the direct session is the reference: PostgreSQL's own delivery)
    assert got_pooled == got_direct
    assert p.wait_for_log("replaces pid")


def test_reload_with_a_new_server_host_replaces_it(pg: Any, pooler_factory: Any) -> None:
    p = pooler_factory(pool_size=1, pool={"server_host": "127.0.0.1"})

    def reload() -> None:
        p.config["pools"]["app"]["server_host"] = "localhost"  # the same cluster, by another name
        p.write_config()
        with WireClient.connect(p.host, p.port, ADMIN_USER, "pgdoorman", ADMIN_PASSWORD) as adm:
            adm.query("reload")

    got_pooled, got_direct, sent = _replaced_across(pg, p, reload)
    assert got_direct == sent
    assert got_pooled == got_direct


def test_reload_to_another_server_moves_the_listen_connection(pg: Any, pooler_factory: Any) -> None:
    """RELOAD pointing the pool at another cluster (a second throwaway one, whose roles carry the first's
    password verifiers, as a replica's would): the LISTEN connection moves there, and the pooled client
    receives what a session on the new cluster receives; the old cluster's backend is closed."""
    basedir = tempfile.mkdtemp(prefix="pgdoorman-listen-")
    os.chmod(basedir, 0o755)
    other = start_test_cluster(os.path.join(basedir, "b"), free_port())
    try:
        for role in (SCRAM_USER, MD5_USER):
            other.psql(f"ALTER ROLE {role} PASSWORD '{pg.stored_password(role)}'")
        p = pooler_factory(pool_size=1)
        pooled = connect(p.host, p.port)
        direct_b, checker_a = connect(other.host, other.port), connect(pg.host, pg.port)
        try:
            assert shape(pooled.query("listen rl")) == [("C", "LISTEN"), ("Z", "I")]
            assert shape(direct_b.query("listen rl")) == [("C", "LISTEN"), ("Z", "I")]
            old_pid = _listeners(p)["server_pid"]
            p.config["pools"]["app"]["server_port"] = other.port
            p.write_config()
            with WireClient.connect(p.host, p.port, ADMIN_USER, "pgdoorman", ADMIN_PASSWORD) as adm:
                adm.query("reload")
            wait_for(lambda: _listeners(p)["server_pid"] not in (old_pid, "0"), what="the LISTEN connection moved")
            wait_for(lambda: checker_a.query_rows(f"select count(*) from pg_stat_activity where pid = {old_pid}")
                     == [["0"]], what="the old cluster's LISTEN backend gone")
            with connect(other.host, other.port) as n:
                for i in range(5):
                    n.query(f"notify rl, 'b{i}'")
            checker_a.query("notify rl, 'on the old cluster'")
            got = [x[:3] for x in shape(drain(pooled, 1.0))]
            assert got == [x[:3] for x in shape(drain(direct_b, 1.0))]
            assert got == [("A", "rl", f"b{i}") for i in range(5)]
            assert "replaces pid" in p.log() and "in time" not in p.log()  # each saw its own token
        finally:
            pooled.close()
            direct_b.close()
            checker_a.close()
    finally:
        other.stop("immediate")
        shutil.rmtree(basedir, ignore_errors=True)
