"""The core pooler end to end: a real PostgreSQL, the pooler as a subprocess, psycopg 3, asyncpg and a raw
wire client. Covers login and refusals, both pool modes, everything a client can send, session-state
cleanup, timeouts and limits, and faults on either side."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors

from tests.support.cluster import DBNAME, MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER
from tests.support.pooler import wait_for
from tests.support.wire import WireClient, WireError, frame, parse_fields, query

pytestmark = pytest.mark.timeout(120)


def connect(p: Any, user: str = SCRAM_USER, password: str = SCRAM_PASSWORD, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(p.dsn(user, password, DBNAME), autocommit=kw.pop("autocommit", True), **kw)


# ------------------------------------------------------------------------------------------ login
@pytest.mark.parametrize("user,password", [(SCRAM_USER, SCRAM_PASSWORD), (MD5_USER, MD5_PASSWORD)])
@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_login_and_query_through_pooler(pooler_factory: Any, user: str, password: str, mode: str) -> None:
    p = pooler_factory(pool_mode=mode)
    with connect(p, user, password) as conn:
        assert conn.execute("select current_user, 1 + 1").fetchone() == (user, 2)
        assert conn.info.parameter_status("server_version")
        assert conn.info.parameter_status("client_encoding") == "UTF8"


def test_wrong_password_unknown_user_unknown_db(pooler_factory: Any) -> None:
    p = pooler_factory()
    for user, pw in [(SCRAM_USER, "nope"), (MD5_USER, "nope"), ("ghost", "whatever")]:
        with pytest.raises(psycopg.OperationalError) as ei:
            psycopg.connect(p.dsn(user, pw, DBNAME))
        msg = str(ei.value)
        assert f'password authentication failed for user "{user}"' in msg
    # The unknown user gets the same SCRAM challenge as a real one: nothing says whether it exists.
    with WireClient(p.host, p.port) as w:
        w.send(frame_startup("ghost"))
        t, body = w.read_message()
        assert t == "R" and body[:4] == (10).to_bytes(4, "big") and b"SCRAM-SHA-256" in body
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(p.dsn(SCRAM_USER, SCRAM_PASSWORD, "nosuchdb"))
    assert 'database "nosuchdb" does not exist' in str(ei.value)


def frame_startup(user: str, db: str = DBNAME) -> bytes:
    from tests.support.wire import startup_message

    return startup_message({"user": user, "database": db})


def test_sqlstate_of_wrong_password(pooler_factory: Any) -> None:
    p = pooler_factory()
    with pytest.raises(WireError) as ei:
        WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, "bad")
    assert ei.value.fields["C"] == "28P01"


def test_server_credentials_and_plain_text_password(pooler_factory: Any, pg: Any) -> None:
    users = [{
        "username": "alice", "password": "alice_pw", "pool_size": 2,
        "server_username": MD5_USER, "server_password": MD5_PASSWORD,
    }, {
        "username": "bob", "password": "md5" + __import__("hashlib").md5(b"bob_pwbob").hexdigest(),
        "pool_size": 2, "server_username": SCRAM_USER, "server_password": SCRAM_PASSWORD,
    }]
    p = pooler_factory(users=users)
    with psycopg.connect(p.dsn("alice", "alice_pw", DBNAME)) as conn:
        assert conn.execute("select current_user").fetchone() == (MD5_USER,)
    with psycopg.connect(p.dsn("bob", "bob_pw", DBNAME)) as conn:
        assert conn.execute("select current_user").fetchone() == (SCRAM_USER,)


def test_ssl_and_gssenc_requests_answered_n(pooler_factory: Any) -> None:
    p = pooler_factory()
    for code in (80877103, 80877104):
        with socket.create_connection((p.host, p.port)) as s:
            s.sendall((8).to_bytes(4, "big") + code.to_bytes(4, "big"))
            assert s.recv(1) == b"N"
    with psycopg.connect(p.dsn(SCRAM_USER, SCRAM_PASSWORD, DBNAME) + " sslmode=prefer gssencmode=prefer") as c:
        assert c.execute("select 1").fetchone() == (1,)


# ------------------------------------------------------------------------------------------ protocol
@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_everything_a_client_sends(pooler_factory: Any, mode: str) -> None:
    p = pooler_factory(pool_mode=mode, pool_size=2)
    with connect(p) as conn:
        # multi-statement simple query
        cur = conn.execute("select 1; select 2")
        assert cur.fetchone() == (1,)
        assert cur.nextset() and cur.fetchone() == (2,)
        # extended protocol, unnamed statement, with parameters and binary results
        assert conn.execute("select %s::int + %s", (40, 2)).fetchone() == (42,)
        assert conn.execute("select %b::bytea", (b"\x00\x01",), binary=True).fetchone() == (b"\x00\x01",)
        # pipeline
        with conn.pipeline():
            c1 = conn.execute("select 1")
            c2 = conn.execute("select %s::text", ("two",))
            c3 = conn.execute("select 3")
        assert (c1.fetchone(), c2.fetchone(), c3.fetchone()) == ((1,), ("two",), (3,))
        # explicit transaction with commit and rollback
        conn.execute("create temp table if not exists t_ev (x int)") if mode == "session" else None
        with conn.transaction():
            conn.execute("create table if not exists ev_" + mode + " (x int)")
            conn.execute(f"insert into ev_{mode} values (1)")
        try:
            with conn.transaction():
                conn.execute(f"insert into ev_{mode} values (2)")
                raise RuntimeError("rollback")
        except RuntimeError:
            pass
        assert conn.execute(f"select count(*) from ev_{mode} where x = 2").fetchone() == (0,)
        # SQL error, then continue
        with pytest.raises(errors.UndefinedTable):
            conn.execute("select * from no_such_table")
        assert conn.execute("select 'ok'").fetchone() == ("ok",)
        # COPY in and out
        conn.execute(f"create table if not exists cp_{mode} (a int, b text)")
        conn.execute(f"truncate cp_{mode}")
        with conn.cursor() as cur, cur.copy(f"copy cp_{mode} from stdin") as cp:
            for i in range(1000):
                cp.write_row((i, f"row{i}"))
        out = bytearray()
        with conn.cursor() as cur, cur.copy(f"copy cp_{mode} to stdout") as cp:
            for chunk in cp:
                out += chunk
        assert out.count(b"\n") == 1000
        # notices pass through
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("do $$ begin raise notice 'hello %', 7; end $$")
        assert notices == ["hello 7"]
        conn.execute(f"drop table ev_{mode}; drop table cp_{mode}")


def test_named_prepared_statements_in_session_mode(pooler_factory: Any) -> None:
    p = pooler_factory(pool_mode="session", pool_size=1)
    with connect(p, prepare_threshold=0) as conn:
        for i in range(5):
            assert conn.execute("select %s::int * 2", (i,)).fetchone() == (i * 2,)
        conn.execute("prepare q(int) as select $1 + 100")
        assert conn.execute("execute q(1)").fetchone() == (101,)


def test_function_call_and_terminate(pooler_factory: Any) -> None:
    p = pooler_factory(pool_size=1)
    with WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD) as w:
        oid = int(w.query_rows("select 'pg_catalog.int4pl'::regproc::oid")[0][0] or 0)
        arg = (2).to_bytes(4, "big")
        body = (oid.to_bytes(4, "big") + (1).to_bytes(2, "big") + (1).to_bytes(2, "big")
                + (2).to_bytes(2, "big") + (4).to_bytes(4, "big") + arg + (4).to_bytes(4, "big")
                + (40).to_bytes(4, "big") + (1).to_bytes(2, "big"))
        w.send(frame("F", body))
        msgs = w.read_until("Z")
        v = [b for t, b in msgs if t == "V"]
        assert v and v[0][4:] == (42).to_bytes(4, "big")
        w.send(frame("X"))
        assert w.expect_closed() == b""
    # the server went back to the pool, clean
    with connect(p) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_listen_notify_in_session_mode(pooler_factory: Any) -> None:
    p = pooler_factory(pool_mode="session", pool_size=3)
    with connect(p) as listener, connect(p) as sender:
        listener.execute("listen chan")
        sender.execute("notify chan, 'payload'")
        got = []
        for n in listener.notifies(timeout=5):
            got.append((n.channel, n.payload))
            break
        assert got == [("chan", "payload")]


def test_cancel_reaches_only_its_own_query(pooler_factory: Any) -> None:
    p = pooler_factory(pool_size=2)
    with connect(p) as victim, connect(p) as bystander:
        t = threading.Timer(0.5, victim.cancel)
        t.start()
        started = time.monotonic()
        with pytest.raises(errors.QueryCanceled):
            victim.execute("select pg_sleep(20)")
        assert time.monotonic() - started < 10
        t.join()
        assert victim.execute("select 1").fetchone() == (1,)
        # a late cancel (nothing running) is harmless for the other client's query
        victim.cancel()
        assert bystander.execute("select pg_sleep(0.5), 7").fetchone()[1] == 7


def test_large_result_and_large_row_stream(pooler_factory: Any) -> None:
    p = pooler_factory(pool_size=1)
    with WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD, timeout=60) as w:
        # ~200 MB result in 200,000 rows, read and dropped as it comes
        w.send(query("select repeat('x', 1000) from generate_series(1, 200000)"))
        rows = total = 0
        while True:
            t, body = w.read_message()
            if t == "D":
                rows += 1
                total += len(body)
            elif t == "Z":
                break
            assert t in "TDC", t
        assert rows == 200000 and total > 200_000_000
        # a single 100 MB row
        w.send(query("select repeat('y', 100 * 1024 * 1024)"))
        msgs = w.read_until("Z")
        d = [b for t, b in msgs if t == "D"]
        assert len(d) == 1 and len(d[0]) == 100 * 1024 * 1024 + 6
    rss_kb = int([ln for ln in open(f"/proc/{p.proc.pid}/status") if ln.startswith("VmHWM")][0].split()[1])
    assert rss_kb < 150 * 1024, f"pooler peak RSS {rss_kb} kB: large messages were buffered"


# ------------------------------------------------------------------------------------------ pooling
def test_transaction_mode_shares_servers_and_resets_session_state(pooler_factory: Any) -> None:
    p = pooler_factory(pool_size=1)
    with connect(p) as a, connect(p) as b:
        pid_a = a.execute("select pg_backend_pid()").fetchone()
        pid_b = b.execute("select pg_backend_pid()").fetchone()
        assert pid_a == pid_b  # one server shared
        a.execute("set statement_timeout = 1234")
        a.execute("prepare sp as select 1")
        a.execute("declare cur cursor with hold for select 1")
        # They pin A to the server until released (test_transaction_session.py): B runs once they are.
        assert a.execute("execute sp").fetchone() == (1,)
        assert a.execute("fetch cur").fetchone() == (1,)
        a.execute("deallocate sp")
        a.execute("close cur")
        a.execute("select 1; listen somechan")  # runs as a LISTEN of a channel nobody notifies
        assert b.execute("show statement_timeout").fetchone() == ("0",)
        assert a.execute("show statement_timeout").fetchone() == ("1234ms",)
        assert b.execute("select count(*) from pg_prepared_statements").fetchone() == (0,)
        assert b.execute("select count(*) from pg_cursors").fetchone() == (0,)
        assert b.execute("select count(*) from pg_listening_channels()").fetchone() == (0,)


def test_tracked_parameters_follow_the_client(pooler_factory: Any) -> None:
    p = pooler_factory(pool_size=1)
    a = psycopg.connect(p.dsn(SCRAM_USER, SCRAM_PASSWORD, DBNAME) + " application_name=alpha options=''",
                        autocommit=True)
    b = psycopg.connect(p.dsn(SCRAM_USER, SCRAM_PASSWORD, DBNAME) + " application_name=beta", autocommit=True)
    try:
        a.execute("set timezone = 'Asia/Tokyo'")
        b.execute("set datestyle = 'German'")
        for _ in range(3):
            assert a.execute("show timezone").fetchone() == ("Asia/Tokyo",)
            assert a.execute("select current_setting('application_name')").fetchone() == ("alpha",)
            assert b.execute("show timezone").fetchone() != ("Asia/Tokyo",)
            assert b.execute("show datestyle").fetchone()[0].startswith("German")
            assert b.execute("select current_setting('application_name')").fetchone() == ("beta",)
    finally:
        a.close()
        b.close()


def test_client_left_mid_transaction_is_rolled_back(pooler_factory: Any) -> None:
    p = pooler_factory(pool_size=1)
    with connect(p) as c:
        c.execute("create table if not exists midtx (x int)")
        c.execute("truncate midtx")
    w = WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD)
    w.query("begin")
    w.query("insert into midtx values (1)")
    w.query("lock table midtx")
    w.sock.close()  # vanish mid-transaction
    with connect(p) as c:
        c.execute("set lock_timeout = '5s'")
        assert c.execute("select count(*) from midtx").fetchone() == (0,)
        assert c.execute("select pg_catalog.current_setting('transaction_isolation') is not null").fetchone()
        c.execute("drop table midtx")


def test_client_left_mid_copy_and_mid_query(pooler_factory: Any) -> None:
    p = pooler_factory(pool_size=1)
    with connect(p) as c:
        c.execute("create table if not exists midcopy (x int)")
    w = WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD)
    w.send(query("copy midcopy from stdin"))
    assert w.read_message()[0] == "G"
    w.send(frame("d", b"1\n2\n"))
    w.sock.close()
    w2 = WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD)
    w2.send(query("select pg_sleep(30)"))
    time.sleep(0.3)
    w2.sock.close()
    with connect(p) as c:
        assert c.execute("select count(*) from midcopy").fetchone() == (0,)
        assert c.execute("select 5").fetchone() == (5,)
        c.execute("drop table midcopy")


def test_query_wait_timeout_and_fifo(pooler_factory: Any) -> None:
    p = pooler_factory(pool_size=1, general={"query_wait_timeout": 700})
    with connect(p) as holder:
        holder.execute("begin")
        holder.execute("select 1")
        with connect(p) as waiter:
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as ei:
                waiter.execute("select 1")
            waited = time.monotonic() - started
            assert 0.5 < waited < 5
            assert ei.value.sqlstate == "53300"
        holder.execute("commit")
    with connect(p) as c:
        assert c.execute("select 1").fetchone() == (1,)


def test_max_connections(pooler_factory: Any) -> None:
    p = pooler_factory(general={"max_connections": 2})
    c1, c2 = connect(p), connect(p)
    try:
        with pytest.raises(psycopg.OperationalError) as ei:
            connect(p)
        assert "sorry, too many clients already" in str(ei.value)
        with socket.create_connection((p.host, p.port), timeout=5) as s:
            data = s.recv(4096)
        assert data[:1] == b"E" and parse_fields(data[5:])["C"] == "53300"
    finally:
        c1.close()
        c2.close()
    time.sleep(0.2)
    with connect(p) as c:
        assert c.execute("select 1").fetchone() == (1,)


def test_pool_size_is_a_hard_cap_and_min_pool_size(pooler_factory: Any, pg: Any) -> None:
    users = [{"username": SCRAM_USER, "password": SCRAM_PASSWORD, "pool_size": 3, "min_pool_size": 2,
              "server_username": SCRAM_USER, "server_password": SCRAM_PASSWORD}]
    p = pooler_factory(users=users, general={"worker_threads": 2, "retain_connections_time": 200},
                       pool={"application_name": "minpool_test"})
    deadline = time.monotonic() + 5
    n = 0
    while time.monotonic() < deadline:
        n = int(pg.psql("select count(*) from pg_stat_activity where application_name = 'minpool_test'"))
        if n >= 2:
            break
        time.sleep(0.1)
    assert n == 2

    async def hammer() -> int:
        conns = [await psycopg.AsyncConnection.connect(p.dsn(SCRAM_USER, SCRAM_PASSWORD, DBNAME), autocommit=True)
                 for _ in range(20)]
        peak = 0
        for _ in range(5):
            await asyncio.gather(*(c.execute("select pg_sleep(0.05)") for c in conns))
            peak = max(peak, int(pg.psql(
                "select count(*) from pg_stat_activity where application_name = 'minpool_test'")))
        for c in conns:
            await c.close()
        return peak

    assert asyncio.run(hammer()) <= 3


def test_idle_timeout_and_server_lifetime(pooler_factory: Any, pg: Any) -> None:
    p = pooler_factory(general={"idle_timeout": 300, "retain_connections_time": 100})
    with connect(p) as c:
        pid = c.execute("select pg_backend_pid()").fetchone()[0]
        wait_for(lambda: int(pg.psql(f"select count(*) from pg_stat_activity where pid = {pid}")) == 0,
                 what="the idle server to be closed after idle_timeout")
        assert c.execute("select pg_backend_pid() <> %s", (pid,)).fetchone() == (True,)
    p2 = pooler_factory(general={"server_lifetime": 300})
    with connect(p2) as c:
        pid = c.execute("select pg_backend_pid()").fetchone()[0]
        time.sleep(0.5)
        c.execute("select 1")  # returned to the pool after its lifetime: closed, not reused
        assert c.execute("select pg_backend_pid()").fetchone()[0] != pid


# ------------------------------------------------------------------------------------------ faults
def test_server_killed_mid_transaction_and_recovery(pooler_factory: Any, pg: Any) -> None:
    p = pooler_factory(pool_size=2)
    c = connect(p)
    c.execute("begin")
    pid = c.execute("select pg_backend_pid()").fetchone()[0]
    pg.psql(f"select pg_terminate_backend({pid})")
    with pytest.raises(psycopg.OperationalError):
        c.execute("select 1")
    c.close()
    with connect(p) as c2:
        assert c2.execute("select 1").fetchone() == (1,)


def test_postgres_restart_recovers(pooler_factory: Any, pg: Any) -> None:
    p = pooler_factory(pool_size=2)
    with connect(p) as c:
        c.execute("select 1")
    idle = connect(p)
    pg.restart()
    # the pool's idle server died with PostgreSQL; the client that was idle gets a fresh one
    deadline = time.monotonic() + 10
    while True:
        try:
            assert idle.execute("select 42").fetchone() == (42,)
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            idle.close()
            time.sleep(0.2)
            idle = connect(p)
    idle.close()


def test_postgres_down_gives_errors_not_silence(pooler_factory: Any, pg: Any) -> None:
    p = pooler_factory(pool_size=2, general={"connect_timeout": 1000})
    pg.stop()
    try:
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            connect(p).execute("select 1")
        assert time.monotonic() - started < 8
    finally:
        pg.start()
    with connect(p) as c:
        assert c.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize("garbage", [
    b"\x00\x00\x00\x00\x04",                   # not a message type
    b"Y\x00\x00\x00\x05x",                     # unknown type
    b"Q\x00\x00\x00\x02",                      # impossible length
    b"p\x00\x00\x00\x08abc\x00",               # password message after login
])
def test_garbage_from_client_gets_08P01(pooler_factory: Any, garbage: bytes) -> None:
    p = pooler_factory(pool_size=1)
    with connect(p) as bystander:
        with WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD) as w:
            w.send(garbage)
            data = w.expect_closed()
            assert data[:1] == b"E"
            assert parse_fields(data[5:])["C"] == "08P01"
        assert bystander.execute("select 1").fetchone() == (1,)


def test_truncated_message_does_not_leak_server(pooler_factory: Any, pg: Any) -> None:
    p = pooler_factory(pool_size=1)
    w = WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD)
    w.query("select 1")
    w.send(b"Q\x00\x00\x00\x40select 1")  # says 64 bytes, sends 13, then leaves
    time.sleep(0.2)
    w.sock.close()
    with connect(p) as c:
        assert c.execute("select 2").fetchone() == (2,)


def test_bad_startup_packets(pooler_factory: Any) -> None:
    p = pooler_factory()
    for pkt in [(4).to_bytes(4, "big"), (20000).to_bytes(4, "big") + b"x" * 16]:
        with socket.create_connection((p.host, p.port), timeout=5) as s:
            s.sendall(pkt)
            data = b""
            while chunk := s.recv(4096):  # an end of file after the FATAL, not a reset (Conn.close_orderly)
                data += chunk
            assert data[:1] == b"E" and parse_fields(data[5:])["C"] == "08P01", data
    # Protocol 1.0 is refused as PostgreSQL refuses it: in the old protocol's error format (no SQLSTATE).
    with socket.create_connection((p.host, p.port), timeout=5) as s:
        s.sendall((12).to_bytes(4, "big") + (1 << 16).to_bytes(4, "big") + b"\0\0\0\0")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        assert data == b"EFATAL:  unsupported frontend protocol 1.0: server supports 3.0 to 3.0\n\0", data
    with connect(p) as c:
        assert c.execute("select 1").fetchone() == (1,)


def test_unix_socket_listener(pooler_factory: Any, tmp_path: Any) -> None:
    sockdir = str(tmp_path)
    p = pooler_factory(general={"unix_socket_dir": sockdir})
    assert os.path.exists(os.path.join(sockdir, f".s.PGSQL.{p.port}"))
    with psycopg.connect(host=sockdir, port=p.port, user=SCRAM_USER, password=SCRAM_PASSWORD,
                         dbname=DBNAME) as c:
        assert c.execute("select 1").fetchone() == (1,)


# ------------------------------------------------------------------------------------------ asyncpg
@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_asyncpg(pooler_factory: Any, mode: str) -> None:
    p = pooler_factory(pool_mode=mode, pool_size=2)

    async def main() -> None:
        kw: dict[str, Any] = {} if mode == "session" else {"statement_cache_size": 0}
        conn = await asyncpg.connect(host=p.host, port=p.port, user=MD5_USER, password=MD5_PASSWORD,
                                     database=DBNAME, **kw)
        try:
            assert await conn.fetchval("select $1::int + 1", 41) == 42
            async with conn.transaction():
                assert await conn.fetchval("select 'in tx'") == "in tx"
            rows = await conn.fetch("select g from generate_series(1, 1000) g")
            assert [r[0] for r in rows] == list(range(1, 1001))
            with pytest.raises(asyncpg.UndefinedTableError):
                await conn.fetch("select * from nope")
            assert await conn.fetchval("select 1") == 1
        finally:
            await conn.close()

    asyncio.run(main())


# ------------------------------------------------------------------------------------------ concurrency
@pytest.mark.concurrency
@pytest.mark.parametrize("workers", [1, 2])
def test_200_clients_over_pool_of_5(pooler_factory: Any, workers: int) -> None:
    p = pooler_factory(pool_size=5, general={"worker_threads": workers, "query_wait_timeout": 30000})
    errors_seen: list[str] = []

    async def client(i: int) -> None:
        conn = await psycopg.AsyncConnection.connect(
            p.dsn(SCRAM_USER if i % 2 else MD5_USER, SCRAM_PASSWORD if i % 2 else MD5_PASSWORD, DBNAME),
            autocommit=True, application_name=f"c{i}", prepare_threshold=2)
        try:
            for j in range(20):
                cur = await conn.execute("select %s::int, %s::text, current_setting('application_name')",
                                         (i * 1000 + j, f"v{i}-{j}"))
                row = await cur.fetchone()
                if row != (i * 1000 + j, f"v{i}-{j}", f"c{i}"):
                    errors_seen.append(f"client {i} got {row}")
                if j % 5 == 0:
                    async with conn.transaction():
                        await conn.execute("select pg_sleep(0.001)")
                        cur = await conn.execute("select %s::int", (i,))
                        if (await cur.fetchone()) != (i,):
                            errors_seen.append(f"client {i} tx mismatch")
        finally:
            await conn.close()

    async def main() -> None:
        await asyncio.gather(*(client(i) for i in range(200)))

    asyncio.run(main())
    assert errors_seen == []


@pytest.mark.parametrize("mode,prepared", [("session", True), ("transaction", False)])
def test_protocol_prepared_statements_do_not_leak_to_the_next_client(
    pooler_factory: Any, mode: str, prepared: bool
) -> None:
    """A driver's named statements must not survive on the server for the next client (which would get
    42P05 'already exists' for the same driver-generated name)."""
    p = pooler_factory(pool_mode=mode, pool_size=1, general={"prepared_statements": prepared})
    for _ in range(3):
        with connect(p, prepare_threshold=0) as c:
            # Without transparent prepared statements a statement cannot outlive its transaction in
            # transaction mode (as with PgBouncer): prepare and use it inside one.
            with c.transaction():
                assert c.execute("select %s::int + 1", (1,)).fetchone() == (2,)  # psycopg prepares _pg3_0
                assert c.execute("select %s::int + 1", (2,)).fetchone() == (3,)
            c.execute("create temp table if not exists leak_t (x int)") if mode == "session" else None
    with connect(p) as c:
        assert c.execute("select count(*) from pg_prepared_statements").fetchone() == (0,)
        if mode == "session":
            assert c.execute("select count(*) from pg_class where relname = 'leak_t'").fetchone() == (0,)


def test_server_paused_for_a_slow_client_is_heard_by_the_next(pooler_factory: Any) -> None:
    """A slow reader of a large result gets it all and the next client is served. (The exact window, where the
    chunk with ReadyForQuery arrives while the server is paused for back-pressure, depends on kernel buffer
    timing: tests/unit/test_worker_release.py pins that invariant down deterministically.)"""
    p = pooler_factory(pool_size=1)
    for _ in range(3):
        slow = WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD, timeout=30)
        # A tiny receive buffer and slow reads to the very end: the pooler's queue for this client stays past
        # its high-water mark (server paused) when the chunk with ReadyForQuery comes in.
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        slow.send(query("select repeat('z', 3 * 1024 * 1024)"))
        got = bytearray()
        slow.sock.settimeout(20)
        while not got.endswith(b"Z\x00\x00\x00\x05I"):
            chunk = slow.sock.recv(65536)
            assert chunk, "pooler closed the connection"
            got += chunk
            time.sleep(0.002)
        assert len(got) > 3 * 1024 * 1024
        slow.close()
        with WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD, timeout=5) as w:
            assert w.query_rows("select 'heard'") == [["heard"]]
