"""Memory and streaming limits (issue 14 item 4, issue 18): max_memory_usage bounds what the real pooler
process holds (its RSS read from /proc), a client message that would pass it gets 53200 and costs nobody
else, and proxy_copy_data_timeout turns a backend that stopped reading into 58006 instead of a hang."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER, pooler_config
from tests.support.pooler import Pooler, free_port, wait_for
from tests.support.wire import WireClient, bind, execute, frame, parse, parse_fields, query, sync

pytestmark = pytest.mark.timeout(300)

MiB = 1 << 20


def connect(p: Any) -> WireClient:
    return WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD, timeout=30)


def rss(p: Pooler) -> int:
    """The pooler process's resident set, in bytes, from /proc."""
    assert p.proc is not None
    with open(f"/proc/{p.proc.pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def start(pg: Any, tmp: Any, name: str, pool_size: int, **general: Any) -> Pooler:
    cfg = pooler_config(pg, pool_mode="transaction", pool_size=pool_size,
                        general={"query_wait_timeout": 30000, "worker_threads": 1, **general})
    return Pooler(cfg, str(tmp.mktemp(name))).start()


@pytest.fixture(scope="module")
def small_budget(pg: Any, tmp_path_factory: Any) -> Iterator[Pooler]:
    p = start(pg, tmp_path_factory, "budget", 1, max_memory_usage="4MB")
    yield p
    p.stop()


def big_bind(size: int) -> bytes:
    """Parse, a Bind with one text parameter of `size` bytes, Execute, Sync: the Bind must be read whole."""
    return parse("", "select length($1::text)") + bind("", "", ("y" * size,)) + execute() + sync()


def answer(c: WireClient) -> list[Any]:
    out: list[Any] = []
    for t, b in c.read_until("Z"):
        out.append((t, parse_fields(b).get("C")) if t == "E" else (t, b))
    return out


def test_a_message_past_max_memory_usage_gets_53200_and_costs_nobody(pg: Any, small_budget: Pooler) -> None:
    p = small_budget
    with connect(pg) as d:  # PostgreSQL: both sizes are fine
        d.send(big_bind(MiB))
        direct_small = answer(d)
    c = connect(p)
    c.send(big_bind(MiB))  # under the 4 MB budget: as on PostgreSQL
    assert answer(c) == direct_small
    big = big_bind(6 * MiB)

    def send_big() -> None:
        try:
            c.sock.sendall(big)
        except OSError:
            pass  # the pooler closes the connection before it has it all

    sender = threading.Thread(target=send_big, daemon=True)
    sender.start()  # past the budget: refused with 53200, the client closed
    t, body = c.read_message()
    f = parse_fields(body)
    assert (t, f["S"], f["C"]) == ("E", "FATAL", "53200"), f
    assert "max_memory_usage" in f["M"]
    sender.join(10)
    c.close()
    # The only server serves the next client, and the refused bytes no longer count against the budget.
    with connect(p) as b:
        assert b.query_rows("select 'next'") == [["next"]]
        b.send(big_bind(3 * MiB))
        assert [m[0] for m in answer(b)] == ["1", "2", "D", "C", "Z"]
    assert "Traceback" not in p.log_tail()


def start_big_result(c: WireClient, rows: int, width: int) -> None:
    c.send(query(f"select repeat('x', {width}) from generate_series(1, {rows})"))


def test_stalled_clients_stay_within_max_memory_usage(pg: Any, tmp_path_factory: Any) -> None:
    """20 clients that stop reading a large result: without the budget each holds HIGH_WATER (1 MiB) plus a
    read in the pooler (about 25 MB together); under max_memory_usage: 2MB the producers stop once the total
    passes it, so the pooler holds the budget plus at most one read (256 KiB) per stalled client."""
    n = 20
    p = start(pg, tmp_path_factory, "stalled", n + 2, max_memory_usage="2MB")
    clients: list[WireClient] = []
    try:
        warm = connect(p)
        warm.query("select 1")
        base = rss(p)
        for _ in range(n):
            c = connect(p)
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            start_big_result(c, 200_000, 1000)
            clients.append(c)
        time.sleep(3)  # every result has filled what the kernel and the pooler will hold
        peak = max(rss(p) for _ in range(5) if time.sleep(0.2) is None)
        grown = peak - base
        print(f"{n} stalled clients: RSS {base / MiB:.1f} -> {peak / MiB:.1f} MiB")
        bound = 2 * MiB + n * 256 * 1024 + 4 * MiB  # budget, one read each, and allocator slack
        assert grown < bound, f"RSS grew {grown / MiB:.1f} MiB with {n} stalled clients (bound {bound / MiB:.1f})"
        # The others are not held up: a reading client gets its whole result.
        warm.send(query("select count(*) from (select repeat('x', 1000) from generate_series(1, 20000)) s"))
        assert [m[0] for m in warm.read_until("Z")] == ["T", "D", "C", "Z"]
        warm.close()
    finally:
        for c in clients:
            c.close()
        p.stop()


def test_slow_reader_of_a_500mb_result_under_64mb(pg: Any, tmp_path_factory: Any) -> None:
    """The issue's demonstration: a client reading slowly from a 500 MB result under max_memory_usage: 64MB
    keeps the pooler's RSS under its idle RSS plus that bound (measured: a few MiB above idle)."""
    p = start(pg, tmp_path_factory, "slow", 2, max_memory_usage="64MB")
    try:
        with connect(p) as c:
            c.query("select 1")
            base = rss(p)
            start_big_result(c, 500_000, 1000)
            sock = c.sock
            sock.settimeout(30)
            got = sampled = 0
            peak = base
            t0 = time.monotonic()
            tail = b""
            while not tail.endswith(b"Z\x00\x00\x00\x05I"):
                slow = time.monotonic() - t0 < 5
                data = sock.recv(64 * 1024 if slow else 4 * MiB)
                assert data, "pooler closed the connection"
                got += len(data)
                tail = (tail + data)[-6:]
                if slow:
                    time.sleep(0.01)  # slow: at most 6.4 MB/s for the first 5 s
                if slow or got - sampled > 16 * MiB:
                    sampled = got
                    peak = max(peak, rss(p))
        assert got > 500_000 * 1000
        grown = peak - base
        print(f"idle RSS {base / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB (+{grown / MiB:.1f}) over {got / MiB:.0f} MiB")
        assert grown < 64 * MiB
    finally:
        p.stop()


def test_a_stuck_backend_gets_58006_after_proxy_copy_data_timeout(pg: Any, tmp_path_factory: Any) -> None:
    """A backend that stops reading while the client streams COPY data: before, the client hung for good;
    now it gets 58006 once proxy_copy_data_timeout passes with no byte taken, and the pool serves the next."""
    p = start(pg, tmp_path_factory, "stuck", 1, proxy_copy_data_timeout="1s")
    c = connect(p)
    pid = int(c.query_rows("select pg_backend_pid()")[0][0] or 0)
    c.query("create temp table if not exists t58006 (x text)")  # (pins: the same server for the COPY)
    c.send(query("copy t58006 from stdin"))
    assert c.read_message()[0] == "G"
    os.kill(pid, signal.SIGSTOP)
    stop = threading.Event()

    def feed() -> None:
        chunk = frame("d", b"x" * 65536 + b"\n")
        try:
            while not stop.is_set():
                c.sock.sendall(chunk)
        except OSError:
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        feeder.start()
        t0 = time.monotonic()
        seen = b""
        c.sock.settimeout(20)
        while b"58006" not in seen:
            data = c.sock.recv(65536)
            assert data, f"closed without 58006: {seen!r}"
            seen += data
        assert time.monotonic() - t0 < 15
        assert b"SFATAL" in seen and b"proxy_copy_data_timeout" in seen
    finally:
        stop.set()
        os.kill(pid, signal.SIGCONT)
        c.close()
    wait_for(lambda: "flush timeout" in p.log_tail(), what="the server closed")
    with connect(p) as b:
        assert b.query_rows("select 'next'") == [["next"]]
    p.stop()



def metrics(port: int, prefix: str = "pg_doorman_streaming_") -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def test_streaming_metrics_count_messages_of_message_size_to_be_stream(pg: Any, tmp_path_factory: Any) -> None:
    web = free_port()
    cfg = pooler_config(pg, pool_mode="transaction", pool_size=2,
                        general={"message_size_to_be_stream": "1MB", "worker_threads": 1,
                                 "max_memory_usage": "4MB"})
    cfg["web"] = {"enabled": True, "host": "127.0.0.1", "port": web}
    p = Pooler(cfg, str(tmp_path_factory.mktemp("streaming"))).start()
    labels = f'user="{SCRAM_USER}",database="{DBNAME}"'
    try:
        with connect(p) as c:
            c.query("select repeat('x', 500000)")  # under the threshold: not counted
            assert len(c.query_rows("select repeat('x', 3000000)")[0][0] or "") == 3_000_000
            c.send(query("copy (select repeat('y', 2000000)) to stdout"))
            assert [m[0] for m in c.read_until("Z")] == ["H", "d", "c", "C", "Z"]
        m = metrics(web)
        assert m[f'pg_doorman_streaming_events_total{{{labels},kind="data_row",result="ok"}}'] == 1
        assert m[f'pg_doorman_streaming_events_total{{{labels},kind="copy_data",result="ok"}}'] == 1
        assert m[f'pg_doorman_streaming_bytes_total{{{labels},kind="data_row"}}'] > 3_000_000
        assert m[f'pg_doorman_streaming_events_total{{{labels},kind="data_row",result="error"}}'] == 0
        # A client that leaves in the middle of a 50 MB row: its server is closed mid-message, an error.
        c = connect(p)
        c.send(query("select repeat('x', 50000000)"))
        c.read_bytes(100)
        c.close()
        key = f'pg_doorman_streaming_events_total{{{labels},kind="data_row",result="error"}}'
        wait_for(lambda: metrics(web)[key] == 1, what="the failed stream counted")
        # max_memory_usage's own metrics: the limit, what is counted now, the messages refused.
        mem = metrics(web, "pg_doorman_memory_budget_")
        assert mem['pg_doorman_memory_budget_bytes{kind="limit"}'] == 4 * MiB
        assert mem["pg_doorman_memory_budget_refused_total"] == 0
        c = connect(p)
        big = big_bind(6 * MiB)
        sender = threading.Thread(target=lambda: _send_quietly(c, big), daemon=True)
        sender.start()
        assert parse_fields(c.read_message()[1])["C"] == "53200"
        sender.join(10)
        c.close()
        mem = metrics(web, "pg_doorman_memory_budget_")
        assert mem["pg_doorman_memory_budget_refused_total"] == 1
        wait_for(lambda: metrics(web, "pg_doorman_memory_budget_")['pg_doorman_memory_budget_bytes{kind="used"}'] == 0,
                 what="nothing counted once the clients are gone")
    finally:
        p.stop()


def _send_quietly(c: WireClient, data: bytes) -> None:
    try:
        c.sock.sendall(data)
    except OSError:
        pass  # the pooler closed the connection before it had it all
