"""LISTEN/NOTIFY in transaction mode (issue 12 item 2): the same steps run by a pair of clients directly on
PostgreSQL and through pgdoorman in transaction mode (pool_size 1 and 2, so servers are shared and reused)
give the same messages: LISTEN/UNLISTEN's answers, and each notification's channel, payload and sender
(the PID of the backend that ran the NOTIFY, which a client learns with pg_backend_pid() in the same
transaction), delivered only between transactions. Session mode is unchanged (the last tests)."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.cluster import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    DBNAME,
    SCRAM_PASSWORD,
    SCRAM_USER,
    pooler_config,
)
from tests.support.pooler import Pooler, wait_for
from tests.support.wire import WireClient, bind, command_tag, execute, parse, parse_fields, query, rows, sync

pytestmark = pytest.mark.timeout(240)

Transcript = list[Any]


@pytest.fixture(scope="module", params=[1, 2], ids=["pool_size1", "pool_size2"])
def txn_pooler(request: pytest.FixtureRequest, pg: Any, tmp_path_factory: Any) -> Iterator[Pooler]:
    cfg = pooler_config(pg, pool_mode="transaction", pool_size=request.param,
                        general={"query_wait_timeout": 20000})
    p = Pooler(cfg, str(tmp_path_factory.mktemp(f"listen-{request.param}"))).start()
    yield p
    p.stop()


def connect(host: str, port: int) -> WireClient:
    return WireClient.connect(host, port, SCRAM_USER, DBNAME, SCRAM_PASSWORD)


def shape(msgs: list[tuple[str, bytes]], sender: tuple[str, int] = ("", 0)) -> list[Any]:
    """Messages as comparable values: tags, statuses, error codes, notifications as (channel, payload, who
    sent it: the name of the client of the last notify step if it carries that step's backend PID)."""
    out: list[Any] = []
    for t, body in msgs:
        if t == "C":
            out.append(("C", command_tag(body)))
        elif t == "Z":
            out.append(("Z", body.decode()))
        elif t == "E":
            f = parse_fields(body)
            out.append(("E", f.get("C"), f.get("M")))
        elif t == "N":
            out.append(("N", parse_fields(body).get("C")))
        elif t == "A":
            pid = struct.unpack_from("!i", body, 0)[0]
            ch, payload = body[4:].split(b"\x00")[:2]
            who = sender[0] if pid == sender[1] else "another backend"
            out.append(("A", ch.decode(), payload.decode(), who))
        elif t == "D":
            out.append(("D",))
        else:
            out.append((t,))
    return out


def drain(c: WireClient, wait: float = 0.3) -> list[tuple[str, bytes]]:
    """Whatever arrives within `wait` seconds (notifications of an idle client)."""
    got = []
    end = time.monotonic() + wait
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return got
        try:
            got.append(c.read_message(timeout=left))
        except TimeoutError:
            return got


class Pair:
    """Clients a and b (and more) of one side, with each notifier's backend PIDs learned as it runs."""

    def __init__(self, host: str, port: int, pg: Any) -> None:
        self.host, self.port, self.pg = host, port, pg
        self.clients: dict[str, WireClient] = {}
        self.pids: tuple[str, int] = ("", 0)  # the last notify step's client and backend PID

    def __getitem__(self, name: str) -> WireClient:
        if name not in self.clients:
            # "pg-..." is a checker connected to PostgreSQL itself on both sides: it can NOTIFY while a
            # pooled client holds the only server of pool_size 1 in a transaction.
            direct = name.startswith("pg-")
            self.clients[name] = connect(self.pg.host if direct else self.host, self.pg.port if direct else self.port)
        return self.clients[name]

    def run(self, name: str, sql: str) -> list[Any]:
        return shape(self[name].query(sql), self.pids)

    def notify(self, name: str, sql: str) -> list[Any]:
        """`sql` (NOTIFYs) in one transaction with pg_backend_pid(), so the sender's PID is known."""
        msgs = self[name].query(f"begin; select pg_backend_pid(); {sql}; commit")
        self.pids = (name, int(rows(msgs)[0][0] or 0))
        return shape([m for m in msgs if m[0] != "D"], self.pids)

    def idle(self, name: str, wait: float = 0.3) -> list[Any]:
        return shape(drain(self[name], wait), self.pids)

    def notify_self(self, name: str, sql: str) -> list[Any]:
        """notify() by a client that listens itself, with the notifications that follow: its own come just
        before the ReadyForQuery of its COMMIT, as PostgreSQL sends them."""
        return self.notify(name, sql) + self.idle(name)

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


def compare(pg: Any, pooler: Pooler, steps: Callable[[Pair], Transcript]) -> Transcript:
    got = {}
    for side, host, port in (("direct", pg.host, pg.port), ("pooled", pooler.host, pooler.port)):
        pair = Pair(host, port, pg)
        try:
            got[side] = steps(pair)
        finally:
            pair.close()
    assert got["pooled"] == got["direct"]
    return got["direct"]


def test_listen_notify_basic(pg: Any, txn_pooler: Pooler) -> None:
    def steps(p: Pair) -> Transcript:
        t = [p.run("a", "LISTEN ch1"), p.run("a", 'listen "Ch 2"'), p.run("a", "LISTEN CH3;")]
        t.append(p.notify("b", "notify ch1, 'one'; notify \"Ch 2\", 'two'; select pg_notify('ch3', 'three')"))
        t.append(p.idle("a"))
        t.append(p.notify("b", "notify other, 'nobody'; notify ch1"))
        t.append(p.idle("a"))
        t.append(p.idle("b", 0.1))
        return t

    t = compare(pg, txn_pooler, steps)
    assert ("A", "ch1", "one", "b") in t[4] and ("A", "ch3", "three", "b") in t[4]  # the test means it


def test_own_notify_and_unlisten(pg: Any, txn_pooler: Pooler) -> None:
    def steps(p: Pair) -> Transcript:
        t = [p.run("a", "LISTEN x1"), p.run("a", "LISTEN x2")]
        t.append(p.notify_self("a", "notify x1, 'self'"))
        t.append(p.run("a", "UNLISTEN x1"))
        t.append(p.notify("b", "notify x1, 'gone'; notify x2, 'still'"))
        t.append(p.idle("a"))
        t.append(p.run("a", "UNLISTEN *"))
        t.append(p.notify("b", "notify x2, 'none'"))
        t.append(p.run("a", "select 1"))
        t.append(p.idle("a"))
        return t

    t = compare(pg, txn_pooler, steps)
    assert ("A", "x2", "still", "b") in t[5] and ("A", "x1", "self", "a") in t[2]


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "plain"])
def test_listen_and_notify_in_one_query_on_a_fresh_pool(pg: Any, pooler_factory: Any, prepared: bool) -> None:
    """`LISTEN ch; NOTIFY ch` in one query string commits on the client's server at once; PostgreSQL sends the
    session its own notification before the ReadyForQuery. On a pool whose LISTEN connection was still being
    opened the LISTEN connection listened only after that commit, and the notification was lost: the query now
    waits until it listens; so does a NOTIFY pipelined behind the LISTEN (whose ReadyForQuery waited for the
    notification only when no request was pipelined after it). A LISTEN's fate is its own request's: it was
    dropped with an earlier pipelined request's error, or by a ROLLBACK pipelined after its autocommit
    transaction. Each case on a pool of its own (its first LISTEN), compared with PostgreSQL."""
    cases = [["listen ch_a; notify ch_a, 'p'"], ["begin", "listen ch_b; select pg_notify('ch_b', 'q')", "commit"],
             ["listen ch_c; notify ch_c", "notify ch_c, 'again'", "unlisten *; notify ch_c"],
             ["select 1 || listen ch_d || notify ch_d, 'r'"],  # (`||`: pipelined, sent in one write)
             # a LISTEN pipelined behind a request that fails (its error is not the LISTEN's), and one followed by
             # a pipelined ROLLBACK outside any transaction (it undoes nothing)
             ["select 1/0 || listen ch_e; notify ch_e", "notify ch_e, 'again'"],
             ["listen ch_f; select 1 || rollback", "notify ch_f, 'kept'"],
             # a NOTIFY before the client's first LISTEN, in the same transaction: delivered before the COMMIT's end
             ["begin", "notify ch_g, 'first'", "listen ch_g", "commit"],
             # an UNLISTEN pipelined before a LISTEN of the same channel and a NOTIFY of it: the UNLISTEN, applied
             # at its own ReadyForQuery, undid the later LISTEN's early registration (random probe, seed 1171)
             ["listen ch_h"] + ["unlisten * || select 1 || listen ch_h; notify ch_h, 'back'",
                                "unlisten ch_h || listen ch_h; notify ch_h, 'again'"] * 3]
    got: dict[str, Any] = {}
    for case in cases:
        p = pooler_factory(pool_mode="transaction", pool_size=2, general={"prepared_statements": prepared})
        for name, host, port in (("direct", pg.host, pg.port), ("pooled", p.host, p.port)):
            c = connect(host, port)
            answers = []
            for q in case:
                parts = q.split(" || ")
                c.send(*(query(x) for x in parts))
                answers.append(_notifications([msg for _ in parts for msg in c.read_until("Z")]))
            got.setdefault(name, []).append(answers)
            c.close()
        p.stop()
    assert got["direct"][0] == [[("C", "LISTEN"), ("C", "NOTIFY"), ("A", "ch_a", "p"), ("Z", "I")]]
    assert got["pooled"] == got["direct"]


def _notifications(msgs: list[tuple[str, bytes]]) -> list[Any]:
    out: list[Any] = []
    for t, b in msgs:
        if t == "A":
            out.append((t, *b[4:].rstrip(b"\0").decode().split("\0")))
        elif t in "CZ":
            out.append((t, b.rstrip(b"\0").decode()))
        elif t in "TDE":
            out.append((t,))
    return out


def test_listen_in_transaction_takes_effect_at_commit(pg: Any, txn_pooler: Pooler) -> None:
    def steps(p: Pair) -> Transcript:
        t = [p.run("a", "begin"), p.run("a", "listen t1"), p.run("a", "select 1")]
        t.append(p.notify("pg-b", "notify t1, 'before commit'"))
        t.append(p.idle("a", 0.2))
        t.append(p.run("a", "commit"))
        t.append(p.idle("a", 0.2))
        t.append(p.notify("pg-b", "notify t1, 'after commit'"))
        t.append(p.idle("a"))
        # rolled back: no effect
        t += [p.run("a", "begin; listen t2"), p.run("a", "rollback")]
        t.append(p.notify("pg-b", "notify t2, 'rolled back'; notify t1, 'marker'"))
        t.append(p.idle("a"))
        # failed transaction: COMMIT is a ROLLBACK
        t += [p.run("a", "begin"), p.run("a", "listen t3"), p.run("a", "select 1/0"), p.run("a", "listen t4"),
              p.run("a", "commit")]
        t.append(p.notify("pg-b", "notify t3; notify t4; notify t1, 'marker2'"))
        t.append(p.idle("a"))
        # UNLISTEN in a transaction, rolled back, then committed
        t += [p.run("a", "begin; unlisten t1; rollback")]
        t.append(p.notify("pg-b", "notify t1, 'kept'"))
        t.append(p.idle("a"))
        t += [p.run("a", "begin; unlisten *"), p.run("a", "commit")]
        t.append(p.notify("pg-b", "notify t1, 'dropped'"))
        t.append(p.run("a", "select 2"))
        t.append(p.idle("a"))
        # a failed transaction that LISTENed, rolled back: the next one's LISTEN counts
        t += [p.run("a", "begin"), p.run("a", "listen t5"), p.run("a", "select 1/0"), p.run("a", "rollback")]
        t.append(p.run("a", "listen t6; select 1"))  # (autocommit: run on the server, ready with status I)
        t.append(p.notify("pg-b", "notify t5; notify t6, 'after a rollback'"))
        t.append(p.idle("a"))
        # savepoints: ROLLBACK TO undoes the LISTEN/UNLISTEN after it, RELEASE keeps them (psycopg's quoted names)
        t += [p.run("a", "begin"), p.run("a", "savepoint s"), p.run("a", "listen t7"), p.run("a", "unlisten t6"),
              p.run("a", "rollback to savepoint s"), p.run("a", 'savepoint "_pg3_1"'), p.run("a", "listen t8"),
              p.run("a", 'release savepoint "_pg3_1"'), p.run("a", "commit")]
        t.append(p.notify("pg-b", "notify t7; notify t8, 'released'; notify t6, 'kept'"))
        t.append(p.idle("a"))
        return t

    t = compare(pg, txn_pooler, steps)
    assert ("A", "t1", "after commit", "pg-b") in t[8]
    assert ("A", "t6", "after a rollback", "pg-b") in t[-12]
    assert ("A", "t8", "released", "pg-b") in t[-1] and ("A", "t6", "kept", "pg-b") in t[-1]


def test_a_reset_and_own_notification_in_one_request(pg: Any, txn_pooler: Pooler) -> None:
    """A listening client whose startup TimeZone is not the pool's sets it `TO DEFAULT` in the request that
    brings it its own notification. PostgreSQL reports nothing when the value comes back to what the client
    last heard, and its startup value when it does not; notifications before the reports, then the
    ReadyForQuery. The pooler held that ReadyForQuery twice, for the settings read-back and for the LISTEN
    connection's round trip, and the second hold skipped the first: the client heard the pool's value (a
    documented difference until both holds ran one after the other). Messages compared whole, bodies too."""
    def steps(host: str, port: int) -> list[Any]:
        a = WireClient.connect(host, port, SCRAM_USER, DBNAME, SCRAM_PASSWORD, params={"TimeZone": "Asia/Tokyo"})
        try:
            out = []
            for sql in ("listen tz1", "set timezone to default; notify tz1, 'one'",
                        "set timezone = 'UTC'", "set timezone to default; notify tz1, 'two'",
                        "begin; set timezone = 'UTC'; commit; set timezone to default; notify tz1, 'three'",
                        "set timezone = 'Europe/Paris'; notify tz1, 'four'", "show timezone"):
                out.append([(t, b if t in "SZDC" else b[4:]) for t, b in a.query(sql)])
            out.append([(t, b[4:]) for t, b in drain(a)])
            return out
        finally:
            a.close()

    direct = steps(pg.host, pg.port)
    assert direct[1] == [("C", b"SET\0"), ("C", b"NOTIFY\0"), ("A", b"tz1\0one\0"), ("Z", b"I")]
    assert steps(txn_pooler.host, txn_pooler.port) == direct


def test_notification_waits_for_the_end_of_the_transaction(pg: Any, txn_pooler: Pooler) -> None:
    """Another session's notifications that come while a client is in a transaction, or has a request in
    flight, reach it just before the ReadyForQuery that leaves it idle, as PostgreSQL sends them: compared
    message by message, the order included (psycopg2's `conn.notifies` has them when its execute returns)."""
    def extended(p: Pair, sql: str) -> list[Any]:
        p["a"].send(parse("", sql), bind(), execute(), sync())
        return shape(p["a"].read_until("Z"), p.pids)

    def steps(p: Pair) -> Transcript:
        t = [p.run("a", "listen w1"), p.run("a", "listen w2"), p.run("a", "begin"), p.run("a", "select 1")]
        t.append(p.notify("pg-b", "notify w1, 'during'"))
        t.append(p.idle("a", 0.3))
        t.append(p.run("a", "select 2"))
        t.append(p.run("a", "commit"))  # CommandComplete, the notification, ReadyForQuery
        t.append(p.idle("a", 0.2))
        # The extended protocol (the rewriter's relay), a COMMIT and a ROLLBACK.
        for end in ("commit", "rollback"):
            t += [extended(p, "begin"), extended(p, "select 3")]
            t.append(p.notify("pg-b", f"notify w2, '{end} extended'; notify w1"))
            t.append(p.idle("a", 0.3))
            t.append(extended(p, end))
        # An empty transaction (pgdoorman answers its BEGIN and COMMIT itself in transaction mode).
        t.append(p.run("a", "begin"))
        t.append(p.notify("pg-b", "notify w1, 'empty'"))
        t.append(p.idle("a", 0.3))
        t.append(p.run("a", "commit"))
        # A request in flight, outside a transaction.
        p["a"].send(query("select pg_sleep(0.6)"))
        time.sleep(0.1)
        t.append(p.notify("pg-b", "notify w2, 'in flight'"))
        t.append(shape(p["a"].read_until("Z"), p.pids))
        t.append(p.idle("a", 0.2))
        return t

    t = compare(pg, txn_pooler, steps)
    assert t[7][-2:] == [("A", "w1", "during", "pg-b"), ("Z", "I")]  # the test means it
    assert ("A", "w2", "in flight", "pg-b") in t[-2]


# ------------------------------------------------------------------------------ drivers
def _psycopg_steps(dsn: str, prepare: int | None) -> list[Any]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True, prepare_threshold=prepare) as a, \
            psycopg.connect(dsn, autocommit=True) as b:
        out: list[Any] = []
        a.execute('LISTEN "drv one"')
        a.execute("listen drv2")
        pid_b = b.execute("select pg_backend_pid(), pg_notify('drv one', 'p1')").fetchone()[0]
        got = [(n.channel, n.payload, n.pid == pid_b) for n in a.notifies(timeout=2, stop_after=1)]
        out.append(got)
        with a.transaction():  # LISTEN in a transaction, then the client's own NOTIFY
            a.execute("listen drv3")
            pid_a = a.execute("select pg_backend_pid()").fetchone()[0]
            a.execute("notify drv3, 'own'")
        got = [(n.channel, n.payload, n.pid == pid_a) for n in a.notifies(timeout=2, stop_after=1)]
        out.append(got)
        a.execute("unlisten drv2")
        b.execute("notify drv2, 'x'; notify drv3, 'y'")
        out.append([(n.channel, n.payload) for n in a.notifies(timeout=1, stop_after=1)])
        return out


@pytest.mark.parametrize("prepare", [None, 0], ids=["simple", "prepare0"])
def test_psycopg_listen_notify(pg: Any, txn_pooler: Pooler, prepare: int | None) -> None:
    """psycopg 3's notifies(): the simple protocol, and prepare_threshold=0 (LISTEN as a prepared statement)."""
    via_pg = _psycopg_steps(f"host={pg.host} port={pg.port} dbname={DBNAME} user={SCRAM_USER} "
                            f"password={SCRAM_PASSWORD} sslmode=disable", prepare)
    via_pooler = _psycopg_steps(txn_pooler.dsn(SCRAM_USER, SCRAM_PASSWORD, DBNAME), prepare)
    assert via_pooler == via_pg
    assert via_pg[0] == [("drv one", "p1", True)] and via_pg[1] == [("drv3", "own", True)]


def _psycopg2_steps(dsn: str) -> list[Any]:
    """psycopg2 reads the notifications that come with a statement's answer into conn.notifies as the
    statement returns: what is there right after each execute, without polling."""
    import psycopg2

    a = psycopg2.connect(dsn)
    b = psycopg2.connect(dsn)
    a.autocommit = b.autocommit = True
    try:
        ca, cb = a.cursor(), b.cursor()
        out: list[Any] = []
        ca.execute("listen pg2")
        ca.execute("notify pg2, 'own, autocommit'")
        out.append([(n.channel, n.payload) for n in a.notifies])
        a.notifies.clear()
        ca.execute("begin; notify pg2, 'own, in a transaction'; select 1")
        ca.execute("commit")
        out.append([(n.channel, n.payload) for n in a.notifies])
        a.notifies.clear()
        ca.execute("begin")
        cb.execute("notify pg2, 'from b'")
        time.sleep(0.3)  # (delivered to the pooler's LISTEN connection meanwhile)
        ca.execute("select 1")
        out.append([(n.channel, n.payload) for n in a.notifies])
        ca.execute("commit")
        out.append([(n.channel, n.payload) for n in a.notifies])
        return out
    finally:
        a.close()
        b.close()


def test_psycopg2_has_the_notifications_when_the_statement_returns(pg: Any, txn_pooler: Pooler) -> None:
    via_pg = _psycopg2_steps(f"host={pg.host} port={pg.port} dbname={DBNAME} user={SCRAM_USER} "
                             f"password={SCRAM_PASSWORD} sslmode=disable")
    assert via_pg == [[("pg2", "own, autocommit")], [("pg2", "own, in a transaction")], [],
                      [("pg2", "from b")]]
    assert _psycopg2_steps(txn_pooler.dsn(SCRAM_USER, SCRAM_PASSWORD, DBNAME)) == via_pg


def _asyncpg_steps(host: str, port: int) -> list[Any]:
    import asyncpg

    async def run() -> list[Any]:
        a = await asyncpg.connect(host=host, port=port, user=SCRAM_USER, password=SCRAM_PASSWORD,
                                  database=DBNAME, ssl=False)
        b = await asyncpg.connect(host=host, port=port, user=SCRAM_USER, password=SCRAM_PASSWORD,
                                  database=DBNAME, ssl=False)
        got: asyncio.Queue[tuple[int, str, str]] = asyncio.Queue()
        try:
            await a.add_listener("apg_ch", lambda _c, pid, ch, payload: got.put_nowait((pid, ch, payload)))
            pid_b = await b.fetchval("select pg_backend_pid() from pg_notify('apg_ch', 'hello')")
            pid, ch, payload = await asyncio.wait_for(got.get(), 5)
            out: list[Any] = [(ch, payload, pid == pid_b)]
            await a.remove_listener("apg_ch", lambda *_: None)  # not the registered callback: still listens
            await b.execute("notify apg_ch, 'again'")
            pid, ch, payload = await asyncio.wait_for(got.get(), 5)
            out.append((ch, payload))
            await a.execute("unlisten apg_ch")
            await b.execute("notify apg_ch, 'gone'")
            await a.execute("select 1")
            await asyncio.sleep(0.5)
            out.append(got.qsize())
            return out
        finally:
            await a.close()
            await b.close()

    return asyncio.run(run())


def test_asyncpg_listen_notify(pg: Any, txn_pooler: Pooler) -> None:
    """asyncpg's add_listener sends LISTEN as a prepared statement (the extended protocol)."""
    via_pg = _asyncpg_steps(pg.host, pg.port)
    assert _asyncpg_steps(txn_pooler.host, txn_pooler.port) == via_pg
    assert via_pg[0] == ("apg_ch", "hello", True)


# ------------------------------------------------------------------------------ the listener connection
def _listeners(p: Pooler) -> dict[str, str | None]:
    with WireClient.connect(p.host, p.port, ADMIN_USER, "pgdoorman", ADMIN_PASSWORD) as adm:
        rows_ = adm.query_rows("show listeners")
    cols = ["user", "database", "state", "server_pid", "channels", "clients", "connects", "failures", "received",
            "delivered", "overflows", "removed"]
    mine = [r for r in rows_ if r[0] == SCRAM_USER]
    return dict(zip(cols, mine[0], strict=True)) if mine else {}


def test_listener_reconnects_and_clients_leave(pg: Any, pooler_factory: Any) -> None:
    """The LISTEN connection killed by PostgreSQL is opened again and LISTENs on the union (notifications
    sent while it is down are lost, as with a direct session that PostgreSQL restarts); a client that
    disconnects stops being listened for; SHOW LISTENERS says so."""
    p = pooler_factory(pool_size=1)
    a, b = connect(p.host, p.port), connect(p.host, p.port)
    checker = connect(pg.host, pg.port)
    try:
        assert shape(a.query("listen r1")) == [("C", "LISTEN"), ("Z", "I")]
        assert shape(b.query("listen r2")) == [("C", "LISTEN"), ("Z", "I")]
        info = _listeners(p)
        assert (info["state"], info["channels"], info["clients"]) == ("up", "2", "2")
        old_pid = info["server_pid"]
        killed = checker.query_rows(f"select pg_terminate_backend({old_pid})")
        assert killed == [["t"]]
        def back() -> dict[str, str | None] | None:
            info = _listeners(p)  # one reading: state and PID of the same connection
            return info if info["state"] == "up" and info["server_pid"] not in (old_pid, "0") else None

        new_pid = wait_for(back, what="the LISTEN connection back")["server_pid"]
        listening = checker.query_rows(f"select count(*) from pg_stat_activity where pid = {new_pid}")
        assert listening == [["1"]]
        checker.query("notify r1, 'after'; notify r2, 'after too'")
        assert [x[:3] for x in shape(drain(a, 1.0))] == [("A", "r1", "after")]
        assert [x[:3] for x in shape(drain(b, 1.0))] == [("A", "r2", "after too")]
        assert p.wait_for_log("LISTEN connection for")
        b.terminate()
        wait_for(lambda: (lambda i: i["channels"] == "1" and i["clients"] == "1")(_listeners(p)),
                 what="b's channel given up")
        info = _listeners(p)
        assert int(info["failures"] or 0) == 1 and int(info["connects"] or 0) == 2
    finally:
        a.close()
        b.close()
        checker.close()


def test_a_notifying_clients_answer_waits_for_the_listen_connection_at_most_a_second(pg: Any,
                                                                                      pooler_factory: Any) -> None:
    """A listening client's NOTIFY holds its ReadyForQuery until the LISTEN connection has had a round trip
    (so that its own notification comes first, as on PostgreSQL), but never longer than HOLD_READY: with the
    LISTEN connection's backend stopped (SIGSTOP), the client still gets its answer, and the notification
    once the backend runs again."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to stop the LISTEN connection's backend with SIGSTOP (CI runs as root)")
    p = pooler_factory(pool_size=1)
    a = connect(p.host, p.port)
    try:
        assert shape(a.query("listen h1")) == [("C", "LISTEN"), ("Z", "I")]
        assert shape(a.query("notify h1, 'running'")) == [("C", "NOTIFY"), ("A", "h1", "running", "another backend"),
                                                         ("Z", "I")]
        pid = int(_listeners(p)["server_pid"] or 0)
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            assert shape(a.query("notify h1, 'stopped'")) == [("C", "NOTIFY"), ("Z", "I")]
            assert time.monotonic() - started >= 0.9  # (held, then let go: not a timing assertion of speed)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert [x[:3] for x in shape(drain(a, 2.0))] == [("A", "h1", "stopped")]
    finally:
        a.close()


def test_a_client_that_does_not_take_its_notifications_is_closed(pg: Any, pooler_factory: Any) -> None:
    """More than 10,000 notifications waiting for a client in a transaction: it gets 54000 and is closed
    (PostgreSQL would keep them in its 8 GB queue; the pooler bounds what it holds per client)."""
    p = pooler_factory(pool_size=2)
    a = connect(p.host, p.port)
    checker = connect(pg.host, pg.port)
    try:
        a.query("listen flood")
        a.query("begin")
        a.query("select 1")  # holds a server: in a transaction
        checker.query("select pg_notify('flood', g::text) from generate_series(1, 10001) g")
        got = a.expect_closed(timeout=10)
        assert b"54000" in got
        wait_for(lambda: _listeners(p)["overflows"] == "1", what="the overflow counted")
    finally:
        a.close()
        checker.close()


# ------------------------------------------------------------------------------ other modes
def test_session_mode_listen_is_the_servers_own(pooler_factory: Any) -> None:
    """Session mode is unchanged: LISTEN runs on the client's own server, and no LISTEN connection opens."""
    p = pooler_factory(pool_mode="session", pool_size=2)
    with connect(p.host, p.port) as a, connect(p.host, p.port) as b:
        a.query("listen sess1")
        assert a.query_rows("select pg_listening_channels()") == [["sess1"]]
        b.query("notify sess1, 'hi'")
        assert [x[:3] for x in shape(drain(a, 1.0))] == [("A", "sess1", "hi")]
    assert _listeners(p) == {}


def test_prepared_statements_off(pooler_factory: Any) -> None:
    """Without prepared_statements a simple-query LISTEN works; a Parse of LISTEN is refused with 0A000 (its
    Execute would run on whichever server the client has then)."""
    p = pooler_factory(pool_size=1, general={"prepared_statements": False})
    with connect(p.host, p.port) as a, connect(p.host, p.port) as b:
        assert shape(a.query("listen off1")) == [("C", "LISTEN"), ("Z", "I")]
        b.query("notify off1, 'x'")
        assert [x[:3] for x in shape(drain(a, 1.0))] == [("A", "off1", "x")]
        from tests.support.wire import bind, execute, parse, sync
        a.send(parse("", "listen off2"), bind(), execute(), sync())
        got = shape(a.read_until("Z"))
        assert got[:2] == [("1",), ("2",)] and got[2][:2] == ("E", "0A000") and got[-1] == ("Z", "I")


def test_discard_all_through_the_extended_protocol_without_prepared_statements(pg: Any, pooler_factory: Any) -> None:
    """DISCARD ALL is UNLISTEN * too. Without prepared_statements a Parse of it goes to the server (unlike a
    LISTEN's); the client went on listening (test_state_random's prepared_statements-off variant found it).
    Compared with PostgreSQL, pool_size 1."""
    p = pooler_factory(pool_size=1, general={"prepared_statements": False})

    def steps(pair: Pair) -> Transcript:
        t = [pair.run("a", "listen dx1")]
        t.append(pair.notify("b", "notify dx1, 'before'"))
        t.append(pair.idle("a"))
        pair["a"].send(parse("", "discard all"), bind(), execute(), sync())
        t.append(shape(pair["a"].read_until("Z")))
        t.append(pair.notify("b", "notify dx1, 'after'"))
        t.append(pair.idle("a"))
        t.append(pair.run("a", "select 1"))
        return t

    t = compare(pg, p, steps)
    assert t[2] and not t[5]


@pytest.mark.parametrize("undo", ["rollback", "abort", "rollback to savepoint s"])
def test_rollback_through_the_extended_protocol_without_prepared_statements(pg: Any, pooler_factory: Any,
                                                                            undo: str) -> None:
    """A LISTEN in a transaction block that a ROLLBACK (or ROLLBACK TO SAVEPOINT) sent through the extended
    protocol undoes, as drivers send it: the client did not listen on PostgreSQL, and without prepared_statements
    it did through the pooler (the Parse of the ROLLBACK was not read for it; test_state_random's
    prepared_statements-off variant found it, seed 203). Compared with PostgreSQL, pool_size 1."""
    p = pooler_factory(pool_size=1, general={"prepared_statements": False})

    def ext(pair: Pair, sql: str) -> list[Any]:
        pair["a"].send(parse("", sql), bind(), execute(), sync())
        return shape(pair["a"].read_until("Z"))

    def steps(pair: Pair) -> Transcript:
        t = [pair.run("a", "begin"), ext(pair, "savepoint s"), pair.run("a", "listen rb1")]
        t.append(ext(pair, undo))
        if undo.endswith(" s"):
            t.append(ext(pair, "commit"))
        t.append(pair.notify("b", "notify rb1, 'after'"))
        t.append(pair.idle("a"))
        t.append(pair.run("a", "select pg_notify('rb1', 'own')"))
        return t

    t = compare(pg, p, steps)
    assert not t[-2] and ("A",) not in [x[:1] for x in t[-1]]


def test_unreadable_listen_is_refused(pg: Any, txn_pooler: Pooler) -> None:
    """A LISTEN the pooler cannot read (a Unicode-escaped name) is refused with 0A000 rather than guessed at;
    the transaction fails as PostgreSQL's own error would make it."""
    with connect(txn_pooler.host, txn_pooler.port) as a:
        got = shape(a.query('LISTEN U&"d\\0061t\\+000061"'))
        assert got[0][:2] == ("E", "0A000") and got[-1] == ("Z", "I")
        assert shape(a.query("select 1"))[-1] == ("Z", "I")
