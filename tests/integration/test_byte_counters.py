"""SHOW STATS / SHOW POOLS_EXTENDED byte counters count every byte a client sends to its server, including
bytes that arrive while the client waits for a server and are held until one is free."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from tests.support.cluster import ADMIN_PASSWORD, ADMIN_USER, DBNAME, SCRAM_PASSWORD, SCRAM_USER
from tests.support.wire import WireClient, query


def stats_row(p: Any) -> dict[str, str]:
    with psycopg.connect(p.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgdoorman"), autocommit=True, prepare_threshold=None) as a:
        cur = a.execute("SHOW STATS")
        names = [d.name for d in cur.description or []]
        for r in cur.fetchall():
            row = dict(zip(names, (str(v) for v in r), strict=True))
            if row["user"] == SCRAM_USER and row["database"] == DBNAME:
                return row
    raise AssertionError("no SHOW STATS row for the test pool")


@pytest.mark.parametrize("prepared", [True, False])
def test_bytes_sent_while_waiting_for_a_server_are_counted(pooler_factory: Any, prepared: bool) -> None:
    p = pooler_factory(pool_mode="transaction", pool_size=1, general={"prepared_statements": prepared})
    sent = 0
    holder = WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD)
    waiter = WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD)
    try:
        # (A lone BEGIN takes no server in transaction mode: the statement after it does.)
        for text in ("BEGIN", "SELECT 1"):
            msg = query(text)
            holder.send(msg)
            sent += len(msg)
            assert holder.read_until()[-1] == ("Z", b"T")
        # The only server is in the holder's transaction: these bytes are held until it is free.
        waiting = query("SELECT 'held while waiting for a server', " + ", ".join(str(i) for i in range(200)))
        waiter.send(waiting)
        sent += len(waiting)
        commit = query("COMMIT")
        holder.send(commit)
        sent += len(commit)
        assert holder.read_until()[-1] == ("Z", b"I")
        got = waiter.read_until()
        assert got[-1] == ("Z", b"I") and any(t == "D" for t, _ in got)
    finally:
        holder.close()
        waiter.close()
    assert int(stats_row(p)["total_received"]) == sent


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_query_time_excludes_the_clients_think_time(pooler_factory: Any, mode: str) -> None:
    """SHOW STATS query time runs from a statement's arrival to its answer, as PgBouncer counts it: the time a
    client spends between the statements of a transaction is transaction time, not query time. (Before,
    every statement of a transaction counted from the transaction's start.)"""
    p = pooler_factory(pool_mode=mode, pool_size=1)
    c = WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD)
    try:
        for text in ("BEGIN", "SELECT 1", None, "SELECT 2", "COMMIT"):
            if text is None:
                time.sleep(1.0)  # the client thinks inside its transaction
                continue
            c.send(query(text))
            assert c.read_until()[-1][0] == "Z"
    finally:
        c.close()
    row = stats_row(p)
    assert int(row["total_xact_time"]) >= 1_000_000, row  # the transaction lasted the think time and more
    assert int(row["total_query_time"]) < 500_000, row  # its statements took milliseconds
