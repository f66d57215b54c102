"""Server health and lifecycle (issue 14 item 3) against a real PostgreSQL: the idle check
(server_idle_check_timeout), pooler_check_query, server_round_robin, the replacement opened before
server_lifetime ends, and the slow-checkout warning. What a client sees is compared with what PostgreSQL
answers directly."""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
from typing import Any

import psycopg
import pytest

from tests.integration.test_metrics import metrics_pooler, scrape
from tests.support.cluster import DBNAME, MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER, SUPERUSER
from tests.support.pooler import wait_for
from tests.support.wire import WireClient, query

pytestmark = pytest.mark.timeout(120)

# What both clients ask, each with its own startup settings (compared with PostgreSQL's direct answers).
ASK = "select current_setting('DateStyle'), current_setting('TimeZone'), '2024-03-05 10:00'::timestamptz::text"
SETTINGS = {SCRAM_USER: "-c DateStyle=SQL,DMY -c TimeZone=Asia/Tokyo", MD5_USER: "-c DateStyle=German"}
PASSWORDS = {SCRAM_USER: SCRAM_PASSWORD, MD5_USER: MD5_PASSWORD}


def connect(p: Any, user: str = SCRAM_USER, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(p.dsn(user, PASSWORDS[user], DBNAME), autocommit=True, **kw)


def direct(pg: Any, user: str) -> psycopg.Connection[Any]:
    return psycopg.connect(host=pg.host, port=pg.port, user=user, password=PASSWORDS[user], dbname=DBNAME,
                           options=SETTINGS[user], autocommit=True)


def backends(pg: Any) -> set[int]:
    out = pg.psql(f"select pid from pg_stat_activity where datname = '{DBNAME}' and backend_type = 'client backend'")
    return {int(x) for x in out.split()}


class FreezingProxy:
    """A TCP relay in front of PostgreSQL whose connections can be frozen: from then on nothing PostgreSQL
    sends reaches the pooler (its goodbye included), and the first bytes the pooler sends make the relay
    reset the connection, as a firewall or NAT that forgot the flow would. The pooler's socket stays open
    and silent until it writes: a server that died unseen while idle."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.frozen: set[int] = set()  # ids of the pooler-side sockets
        self.reset = True  # a frozen connection is reset when the pooler writes (else its bytes are swallowed)
        self.lock = threading.Lock()
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                down, _ = self.lsock.accept()
            except OSError:
                return
            up = socket.create_connection(self.target)
            with self.lock:
                self.pairs.append((down, up))
            threading.Thread(target=self._pump, args=(down, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_pooler: bool) -> None:
        down = src if from_pooler else dst
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            frozen = id(down) in self.frozen
            if from_pooler and frozen and data and self.reset:
                down.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                down.close()  # RST: the pooler's write meets a dead path
                return
            if not data:
                if not frozen:
                    for s in (src, dst):
                        try:
                            s.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                return
            if frozen:
                continue  # PostgreSQL's words (its FATAL, say) never reach the pooler
            try:
                dst.sendall(data)
            except OSError:
                return

    def freeze_all(self, reset: bool = True) -> None:
        with self.lock:
            self.reset = reset
            self.frozen |= {id(d) for d, _ in self.pairs}

    def close(self) -> None:
        self.stopped = True
        self.lsock.close()
        with self.lock:
            for d, u in self.pairs:
                for s in (d, u):
                    # shutdown first: close() alone does not end a connection whose socket a pump thread is
                    # blocked reading (the kernel keeps it open until that read returns), and PostgreSQL's
                    # backends behind frozen pairs stayed connected for the rest of the session.
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    s.close()


@pytest.fixture
def proxy(pg: Any) -> Any:
    px = FreezingProxy(pg.host, pg.port)
    yield px
    px.close()


def health_pooler(pooler_factory: Any, proxy: FreezingProxy, idle_check: int, pool_size: int = 1, **kw: Any) -> Any:
    return pooler_factory(general={"server_idle_check_timeout": idle_check, **kw.pop("general", {})},
                          pool={"server_host": "127.0.0.1", "server_port": proxy.port}, pool_size=pool_size, **kw)


# ------------------------------------------------------------------------------------------ idle check
@pytest.mark.parametrize("pool_size,workers", [(1, 1), (2, 1), (2, 2)])
def test_server_killed_while_idle_is_never_handed_out(pooler_factory: Any, pg: Any, proxy: FreezingProxy,
                                                      pool_size: int, workers: int) -> None:
    """Backends killed (pg_terminate_backend) while idle, their goodbye lost on the way: each client's next
    query runs on a fresh server and answers as PostgreSQL does directly (with two workers, an idle server may
    be checked on the client's worker after moving there)."""
    p = health_pooler(pooler_factory, proxy, 300, pool_size, general={"worker_threads": workers})
    want = {}
    for user in SETTINGS:
        with direct(pg, user) as d:
            want[user] = d.execute(ASK).fetchone()
    clients = {u: connect(p, u, options=SETTINGS[u]) for u in SETTINGS}
    try:
        before = {u: c.execute("select pg_backend_pid()").fetchone()[0] for u, c in clients.items()}
        for u, c in clients.items():
            assert c.execute(ASK).fetchone() == want[u]
        proxy.freeze_all()
        for pid in before.values():
            pg.psql(f"select pg_terminate_backend({pid})")
        wait_for(lambda: not (backends(pg) & set(before.values())), what="backends gone")
        time.sleep(0.5)  # idle longer than server_idle_check_timeout
        for u, c in clients.items():
            assert c.execute(ASK).fetchone() == want[u]
            assert c.execute("select pg_backend_pid()").fetchone()[0] not in before.values()
    finally:
        for c in clients.values():
            c.close()
    assert "failed its idle check: replaced for client" in p.log()


def test_without_the_idle_check_the_dead_server_reaches_the_client(pooler_factory: Any, pg: Any,
                                                                   proxy: FreezingProxy) -> None:
    """The same steps with server_idle_check_timeout 0: the client's query meets the dead server (what the
    check is for)."""
    p = health_pooler(pooler_factory, proxy, 0)
    with connect(p) as c:
        pid = c.execute("select pg_backend_pid()").fetchone()[0]
        proxy.freeze_all()
        pg.psql(f"select pg_terminate_backend({pid})")
        wait_for(lambda: pid not in backends(pg), what="backend gone")
        with pytest.raises(psycopg.OperationalError):
            c.execute("select 1")


def test_idle_check_only_after_the_timeout(pooler_factory: Any, proxy: FreezingProxy) -> None:
    """Servers idle for less than server_idle_check_timeout go to the client unchecked; after it, one `;`."""
    p = health_pooler(pooler_factory, proxy, 1000)
    probe = re.compile(r"housekeeping \[';'\]")
    with connect(p) as c:
        for _ in range(10):
            c.execute("select 1")
        assert not probe.findall(p.log())
        time.sleep(1.3)
        c.execute("select 1")
        c.execute("select 1")
        wait_for(lambda: len(probe.findall(p.log())) == 1, what="one idle check")
        assert len(probe.findall(p.log())) == 1


def test_idle_check_of_a_silent_server_times_out(pooler_factory: Any, pg: Any, proxy: FreezingProxy) -> None:
    """A server that takes the check and never answers (SIGSTOPped backend's path: the relay swallows) is
    given up after connect_timeout; the client gets a fresh one."""
    p = health_pooler(pooler_factory, proxy, 200, general={"connect_timeout": 1000})
    with connect(p) as c:
        pid = c.execute("select pg_backend_pid()").fetchone()[0]
        # Frozen, not killed: the backend lives, but nothing reaches it or comes back from it.
        proxy.freeze_all(reset=False)
        time.sleep(0.4)
        t0 = time.monotonic()
        assert c.execute("select 41 + 1").fetchone() == (42,)
        assert time.monotonic() - t0 < 5
        assert c.execute("select pg_backend_pid()").fetchone()[0] != pid


# ------------------------------------------------------------------------------------------ pooler_check_query
def _answer(host: str, port: int, user: str, sql: str, password: str | None = None) -> list[tuple[str, bytes]]:
    """The messages answering one simple query, on a fresh session."""
    with WireClient.connect(host, port, user, DBNAME, password) as w:
        return w.query(sql)


def test_pooler_check_query_answered_without_a_server(pooler_factory: Any, pg: Any) -> None:
    """The first check goes to PostgreSQL; then PostgreSQL's answer, kept, is given while the pool's only
    server is busy (no wait); a query one byte longer waits for the server. The metrics count both kinds."""
    sql = "select 1 as alive"
    p, port = metrics_pooler(pooler_factory, general={"pooler_check_query": sql}, pool_size=1)
    want = _answer(pg.host, pg.port, SUPERUSER, sql)
    # The first one goes to PostgreSQL; the pooler then keeps PostgreSQL's answer.
    assert _answer(p.host, p.port, SCRAM_USER, sql, SCRAM_PASSWORD) == want
    wait_for(lambda: "pooler_check_query of app_scram@app: PostgreSQL's answer" in p.log(), what="answer kept")
    with connect(p) as holder:
        holder.execute("begin")
        holder.execute("select 1")  # the pool's only server is busy now
        for _ in range(3):
            t0 = time.monotonic()
            assert _answer(p.host, p.port, SCRAM_USER, sql, SCRAM_PASSWORD) == want
            assert time.monotonic() - t0 < 2  # query_wait_timeout is 5 s: no server was waited for
        # A query that differs by one byte is not the check: it waits for the busy server.
        with WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD) as w:
            w.send(query(sql + " "))
            with pytest.raises(TimeoutError):
                w.read_message(timeout=0.5)
            holder.execute("commit")
            assert w.read_until("Z") == _answer(pg.host, pg.port, SUPERUSER, sql + " ")
    m = scrape(port)
    assert m.value("pg_doorman_pooler_check_query_backend_total") == 1
    assert m.value("pg_doorman_pooler_check_query_cache_total") == 3


def test_pooler_check_query_errors_are_not_kept_and_reload_changes_it(pooler_factory: Any, pg: Any) -> None:
    """An error answer is never kept (each check goes to PostgreSQL, which answers it as directly); a RELOAD
    that changes pooler_check_query drops the kept answer: the new text goes to PostgreSQL once, then is kept."""
    bad = "select 1/0"
    p, port = metrics_pooler(pooler_factory, general={"pooler_check_query": bad}, pool_size=1)
    want = _answer(pg.host, pg.port, SUPERUSER, bad)
    assert [t for t, _ in want] == ["E", "Z"]
    for _ in range(3):
        assert _answer(p.host, p.port, SCRAM_USER, bad, SCRAM_PASSWORD) == want
        time.sleep(0.3)  # the janitor's try at keeping an answer has run (and kept nothing)
    assert "pooler_check_query of app_scram@app" not in p.log()
    assert scrape(port).value("pg_doorman_pooler_check_query_backend_total") == 3
    good = "select 'up'"
    p.config["general"]["pooler_check_query"] = good
    p.write_config()
    p.signal(signal.SIGHUP)
    assert p.wait_for_log("configuration reloaded from", timeout=10)
    want = _answer(pg.host, pg.port, SUPERUSER, good)
    for _ in range(3):
        assert _answer(p.host, p.port, SCRAM_USER, good, SCRAM_PASSWORD) == want
        wait_for(lambda: "pooler_check_query of app_scram@app" in p.log(), what="answer kept")
    m = scrape(port)
    assert m.value("pg_doorman_pooler_check_query_backend_total") == 4
    assert m.value("pg_doorman_pooler_check_query_cache_total") == 2


def test_default_pooler_check_query(pooler_factory: Any, pg: Any) -> None:
    """`;` (the default) while the pool's only server is in another client's transaction: PostgreSQL's
    EmptyQueryResponse at once; the same client's next query waits for the server. (In session mode a client
    holds its server from login on, so its `;` goes to that server.)"""
    p = pooler_factory(pool_size=1)
    want = _answer(pg.host, pg.port, SUPERUSER, ";")
    assert _answer(p.host, p.port, SCRAM_USER, ";", SCRAM_PASSWORD) == want
    wait_for(lambda: "pooler_check_query of app_scram@app" in p.log(), what="answer kept")
    with connect(p) as holder:
        holder.execute("begin")
        holder.execute("select 1")
        with WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD) as w:
            assert w.query(";") == want
            w.send(query("select 2"))
            with pytest.raises(TimeoutError):
                w.read_message(timeout=0.5)
            holder.execute("commit")
            assert w.read_until("Z") == _answer(pg.host, pg.port, SUPERUSER, "select 2")


# ------------------------------------------------------------------------------------------ server choice
def _pids_served(p: Any, n: int) -> list[int]:
    """The backend serving each of n simple queries in a row (one checkout each)."""
    with WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD) as w:
        return [int(w.query_rows("select pg_backend_pid()")[0][0] or 0) for _ in range(n)]


@pytest.mark.parametrize("round_robin", [False, True])
def test_server_round_robin(pooler_factory: Any, round_robin: bool) -> None:
    """Three idle servers: most-recently-used first keeps giving the same one; round robin rotates through
    all three in turn."""
    p = pooler_factory(general={"server_round_robin": round_robin}, pool_size=3)
    # Open three servers: three clients in transactions at once.
    holders = [connect(p) for _ in range(3)]
    for h in holders:
        h.execute("begin")
        h.execute("select 1")
    for h in holders:
        h.execute("commit")
        h.close()
    served = _pids_served(p, 9)
    if round_robin:
        assert len(set(served[:3])) == 3 and served[3:6] == served[:3] and served[6:] == served[:3]
    else:
        assert len(set(served)) == 1


# ------------------------------------------------------------------------------------------ server_lifetime
@pytest.mark.parametrize("pre_open", [True, False])
def test_expiring_server_is_replaced_before_a_client_waits(pooler_factory: Any, pre_open: bool) -> None:
    """server_lifetime 3 s, one client querying every 50 ms for 7 s: its server is replaced (twice) and the
    client never waits for a new connection, because the replacement was opened ahead (SHOW STATS
    total_wait_time stays 0). Without the replacement ahead (a retain round too slow to see it coming), the
    client waits each time."""
    retain = 500 if pre_open else 60_000
    p = pooler_factory(general={"retain_connections_time": retain}, pool={"server_lifetime": 3000}, pool_size=1)
    pids = set()
    with connect(p) as c:
        c.execute("select 1")
        waited = _total_wait(p)  # the first login waited for the pool's first server
        end = time.monotonic() + 7
        while time.monotonic() < end:
            pids.add(c.execute("select pg_backend_pid()").fetchone()[0])
            time.sleep(0.05)
    assert len(pids) >= 3  # it expired twice
    if pre_open:
        assert _total_wait(p) == waited
        assert "opening its replacement" in p.log()
    else:
        assert _total_wait(p) > waited


def _total_wait(p: Any) -> int:
    """SHOW STATS total_wait_time of app_scram@app (microseconds)."""
    with psycopg.connect(p.dsn("admin", "admin", "pgdoorman"), autocommit=True) as a:
        cur = a.execute("show stats")
        cols = [d.name for d in cur.description or []]
        row = next(dict(zip(cols, r, strict=True)) for r in cur.fetchall() if r[0] == DBNAME and r[1] == SCRAM_USER)
    return int(row["total_wait_time"])


def test_unused_server_expires_without_a_replacement(pooler_factory: Any) -> None:
    """A server nobody uses past its server_lifetime is closed and not replaced: an unused pool shrinks."""
    p = pooler_factory(general={"retain_connections_time": 300}, pool={"server_lifetime": 1500}, pool_size=1)
    with connect(p) as c:
        c.execute("select 1")
        assert p.wait_for_log("closed: server_lifetime", timeout=10)
        time.sleep(1)
    assert "opening its replacement" not in p.log()
    assert p.log().count("connected for app_scram@app") == 1


# ------------------------------------------------------------------------------------------ slow checkout
def test_slow_checkout_is_logged(pooler_factory: Any) -> None:
    p = pooler_factory(pool_size=1)
    with connect(p) as holder, connect(p, MD5_USER) as other:
        holder.execute("begin")
        holder.execute("select 1")
        other.execute("select 1")  # a pool of its own: no wait
        assert "slow checkout" not in p.log()
        t = threading.Timer(0.7, lambda: holder.execute("commit"))
        waiter = connect(p)
        try:
            t.start()
            assert waiter.execute("select 2").fetchone() == (2,)
        finally:
            t.join()
            waiter.close()
    assert p.wait_for_log("slow checkout: client")
    line = next(x for x in p.log().splitlines() if "slow checkout: client" in x)
    assert "(app_scram@app) waited" in line and "pool size 1/1" in line, line
