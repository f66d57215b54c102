"""Random sequences of session-state statements, run directly against PostgreSQL and through pgdoorman, compared
message by message (the standard: compare with PostgreSQL, not with our expectations).

Two clients whose startup settings differ (A: SETTINGS_A; B: its own TimeZone, DateStyle, application_name and
work_mem) take turns on a pool of 3 servers in session and in transaction mode, so that servers are reused and
shared. Each step is one of OPS: temporary tables, SQL and protocol-level prepared statements (Parse, Bind,
Describe, Close, DEALLOCATE, SQL EXECUTE; names of each client's own, and one name both use for their own texts),
cursors, advisory locks, transactions with savepoints and errors, settings (SET, SET LOCAL, RESET, `TO DEFAULT`,
set_config, custom settings), LISTEN, UNLISTEN and NOTIFY of the client's own channel, sequences, roles, COPY (FROM
STDIN as a simple query and through the extended protocol, CopyFail), a FunctionCall, a pipeline of two batches, two
requests in one write (simple or extended; fixed pairs, random pairs of the SQL statements, and two or three
requests of any kind, a COPY FROM STDIN with its data among them), a portal suspended, a named portal executed again
in a later request, a Flush before the Sync, results in binary, a statement cancelled while it runs (alone, or with
a query pipelined behind it); a statement without `;` is sent as a simple query or through the extended protocol at
random. The clients also act on each other: one sends a cancel while idle as the other's statement runs (which
PostgreSQL ignores: its own backend is idle), and one NOTIFYs the other's channel, which reads what arrives within
0.3 s (sometimes after a LISTEN of it). Now and then a fresh client C connects, reads what a new session would see
(CHECKS: nothing of A's or B's sessions but their advisory locks, which PostgreSQL shows every session), and
leaves; now and then A or B reconnects. The same again in transaction mode with pool_size 1, so that A and B run
every request on the one server: without what pins a client, and with a client in a transaction block keeping the
turn until it ends (the other would wait for the server). And in transaction mode with
prepared_statements off, without named protocol-level statements and with LISTEN and NOTIFY as simple queries only
(the documented differences there); with statement caches of 2 per server and 3 per pool; and on two worker threads
(`worker_placement: spread`), both modes.

Left out, as documented differences: SQL EXECUTE of a protocol-level statement through the extended protocol
(docs/prepared-statements.md "Known differences from PostgreSQL"). A reset followed by a request pipelined
behind it is left out (the pipelined request reads the pool's value: docs/transaction-mode.md), and so is a
COMMIT or NOTIFY with a request pipelined behind it (a notification of the client's own may come after that
request's answer: same). pg_prepared_statements is read for SQL PREPAREd names only. SHOW ALL's `plpgsql.*` rows
are left out: a server on which any client ran PL/pgSQL (the DO step) lists them for every later client
(docs/transparency.md, "Known differences"). On PostgreSQL 16 and later the order of a request's several
ParameterStatus messages is not compared (it follows the order of changes the pooler's server did not all make:
docs/transaction-mode.md); before 16 PostgreSQL sorts them, and the order is compared.

The seeds are fixed; PGDOORMAN_STATE_SEEDS=<n> runs n of them per mode, from PGDOORMAN_STATE_SEED_BASE (0) on
(most defects this found were within the first 30; some only with hundreds or thousands, worth a run after a
change to the relay: 300 take about 10 minutes with -n 2). A failure prints the client's history up to the
first difference, both ways; PGDOORMAN_STATE_ALL=1 prints every client's steps, not only the one that differs.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_transparency import SETTINGS_A, connect, server_major
from tests.support.pooler import Pooler, started_in_mode
from tests.support.wire import (
    WireClient,
    WireError,
    bind,
    cancel_request,
    close,
    describe,
    execute,
    flush,
    frame,
    parse,
    parse_fields,
    query,
    sync,
)

pytestmark = pytest.mark.timeout(300)

SEEDS = int(os.environ.get("PGDOORMAN_STATE_SEEDS", "16"))
SEED_BASE = int(os.environ.get("PGDOORMAN_STATE_SEED_BASE", "0"))  # the first seed (a sweep past earlier ones)
SEED_RANGE = range(SEED_BASE, SEED_BASE + SEEDS)
STEPS = 60
B_SETTINGS = {"TimeZone": "Europe/Paris", "DateStyle": "German", "application_name": "bee", "work_mem": "9MB"}

# {me}: the client's letter (each names its own objects). Upper-case words: protocol messages (see run()).
OPS = [
    "create temp table tt_{me} (x int)", "insert into tt_{me} values (1)", "select count(*) from tt_{me}",
    "drop table tt_{me}", "create temp table tc_{me} (x int) on commit drop",
    "create temp table td_{me} (x int) on commit delete rows",
    "select to_regclass('tt_a') is null, to_regclass('tt_b') is null, to_regclass('tc_a') is null",
    "prepare p_{me} as select 1", "execute p_{me}", "deallocate p_{me}", "deallocate all",
    "select name from pg_prepared_statements where name like 'p\\_%' order by 1",
    "declare c_{me} cursor with hold for select generate_series(1,3)", "fetch c_{me}", "close c_{me}", "close all",
    "declare n_{me} cursor for select 1", "select name from pg_cursors order by 1",
    "select pg_try_advisory_lock(1)", "select pg_try_advisory_lock(2)", "select pg_advisory_unlock(1)",
    "select pg_advisory_unlock_all()", "select pg_try_advisory_xact_lock(3)",
    "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()",
    "begin", "commit", "rollback", "savepoint s", "rollback to savepoint s", "release savepoint s", "select 1/0",
    "begin isolation level repeatable read", "start transaction read only", "show transaction_isolation",
    "set transaction isolation level serializable", "show transaction_read_only",
    "set work_mem = '3MB'", "set local work_mem = '5MB'", "show work_mem", "reset work_mem",
    "set search_path = pg_catalog", "show search_path", "reset search_path", "reset all", "discard all",
    "set myapp.{me} = 'v'; show myapp.{me}", "reset myapp.{me}; show myapp.{me}",
    "discard temp", "discard plans", "discard sequences", "create temp sequence sq_{me}",
    "select nextval('sq_{me}')", "set role = pg_monitor", "reset role", "select current_user, session_user",
    "set statement_timeout = 1000", "show statement_timeout", "show timezone", "show datestyle", "select 1",
    "set default_transaction_read_only = on", "reset default_transaction_read_only",
    "select set_config('work_mem', '6MB', true)", "select set_config('work_mem', '4MB', false)",
    "set session characteristics as transaction isolation level serializable", "show default_transaction_isolation",
    "PARSE n1_{me} select 1", "PARSE n1_{me} select 2", "PARSE n2_{me} select $1::int", "PARSE n3_{me} selec 1",
    "PARSE  select 7", "BIND n1_{me}", "BIND n2_{me}", "BIND ", "CLOSE n1_{me}", "CLOSE n2_{me}", "DESC n1_{me}",
    "DESC n2_{me}", "execute n1_{me}", "deallocate n1_{me}", "deallocate n2_{me}", "PIPE",
    "select 1; select 1/0; select 2", "begin; select 1/0; commit", "savepoint s; select 1/0",
    "copy (select 1) to stdout", "PORTAL",
    "set timezone to default", "set local timezone to default", "set time zone local", "reset timezone",
    "set datestyle to default", "set search_path to default", "set work_mem to default", "set names default",
    "COPYIN tt_{me}", "COPYIN copy_{me}", "BINARY n2_{me}", "FLUSH", "NPORTAL", "NEXEC", "PARSE n4_{me} select 1; select 2",
    "copy tt_{me} to stdout",
    "listen ch_{me}", "notify ch_{me}, 'p'", "select pg_notify('ch_{me}', 'q')", "unlisten ch_{me}", "unlisten *",
    "listen ch_{me}; notify ch_{me}",
    "set timezone to default; notify ch_{me}, 'z'", "set timezone = 'UTC'; select pg_notify('ch_{me}', 'u')",
    "PAIRX set work_mem = '2MB' || show work_mem", "PAIRX begin || reset timezone",
    "PAIRX select 1/0 || show work_mem",
    "PAIRQ set local work_mem = '8MB' || show work_mem",
    "PAIRQ listen ch_{me} || notify ch_{me}", "PAIRQ select 1/0 || rollback", "PAIRX PREP || execute n5_{me}",
    "XCOPYIN tt_{me}", "XCOPYIN copy_{me}", "COPYFAIL copy_{me}", "FCALL", "show all", "DESCP",
    "select 1 /*" + "x" * 9000 + "*/; set work_mem = '2MB'",
    "PIPE2", "PIPE2", "PIPE2", "PIPE2",  # two of the SQL statements above, in one write (_pipe)
    "PIPEN", "PIPEN", "PIPEN",  # two or three requests of the above, protocol steps too, in one write (_pipen)
    "CANCEL", "CANCEL show work_mem", "CANCEL set work_mem = '7MB'",  # cancelled while it runs (a request behind)
    "PARSE sh_x select '{me}'", "BIND sh_x", "DESC sh_x", "CLOSE sh_x",  # one name, each client's own text
    "prepare sh_p as select '{me}'", "execute sh_p", "deallocate sh_p",
    "set client_encoding = 'LATIN1'", "select 'é' as e, length('é')", "reset client_encoding",
    "set datestyle = 'SQL, DMY'", "select '2024-03-04'::date, '2024-03-04 05:06'::timestamp",
    "set intervalstyle = 'sql_standard'", "select interval '1 day 2 hours'",
    "set application_name = 'app_{me}'", "show application_name", "reset application_name",
    "set extra_float_digits = 0", "select 0.1::float8 * 3",
    "set bytea_output = 'escape'", "select 'ab'::bytea",
    "set standard_conforming_strings = off", "select length('a\\\\b')", "reset standard_conforming_strings",
    "set timezone = 'Asia/Tokyo'", "select '2024-01-01 00:00+00'::timestamptz::text",
    "set client_min_messages = warning", "do $$ begin raise notice 'n_{me}'; end $$",
    "set lock_timeout = 1000", "show lock_timeout", "set row_security = off", "show row_security",
    "set session authorization app_scram", "reset session authorization", "set session authorization default",
    "create function pg_temp.f_{me}() returns int language sql as 'select 1'",
    # (not a call of pg_temp.f: a server keeps its empty temporary schema, docs/transparency.md)
    "select count(*) from pg_proc where pronamespace = pg_my_temp_schema()",
    "select pg_advisory_lock_shared(5)", "select pg_advisory_unlock_shared(5)",
    "set work_mem = 'bogus'", "set no_such_setting = 1", "set local lock_timeout = 2000",
    "select * into temp tsel_{me} from generate_series(1, 2)", "create temp view tv_{me} as select 1",
    "select count(*) from pg_class where relnamespace = pg_my_temp_schema()",
    "set constraints all deferred", "select lo_create(0) > 0",
    "begin; set local work_mem = '11MB'; show work_mem", "set search_path = pg_temp, public",
    # DDL on a table of each client's (`pt{w}_a`, `pt{w}_b`; {w}: the test process), statements of either
    # prepared before and used after it; a lock held by the other client's open transaction times out alike
    "create table pt{w}_{me} (x int)", "insert into pt{w}_{me} values (1)", "select * from pt{w}_{me}",
    "set lock_timeout = 200; alter table pt{w}_{me} alter column x type text",
    "set lock_timeout = 200; alter table pt{w}_{other} alter column x type text",
    "set lock_timeout = 200; alter table pt{w}_{me} alter column x type int using x::int",
    "set lock_timeout = 200; alter table pt{w}_{me} add column y int",
    "set lock_timeout = 200; drop table pt{w}_{me}", "set lock_timeout = 200; drop table pt{w}_{other}",
    "PARSE n6_{me} select * from pt{w}_{me}", "BIND n6_{me}", "DESC n6_{me}",
    "PARSE n7_{me} select * from pt{w}_{other}", "BIND n7_{me}",
    # types too: a composite and an enum of each client's, dropped and made again under the same name
    "create type ty{w}_{me} as (a int, b text)", "set lock_timeout = 200; drop type ty{w}_{me}",
    "set lock_timeout = 200; drop type ty{w}_{other}", "PARSE n8_{me} select row(1, 'x')::ty{w}_{me}",
    "BIND n8_{me}", "select row(2, 'y')::ty{w}_{me}", "create type en{w}_{me} as enum ('p', 'q')",
    "select 'p'::en{w}_{me}", "set lock_timeout = 200; drop type en{w}_{me}",
    "set lock_timeout = 200; alter type en{w}_{me} add value 'r'", "PARSE n9_{me} select $1::en{w}_{me}",
    "select enum_range(null::en{w}_{other})",
    "XCANCEL", "XNOTIFY", "XLISTEN",  # a cancel while idle and the other client's query runs; a NOTIFY of the
    # other's channel (XLISTEN: it LISTENs to it first)
]
# What may not come first in a random pipeline (documented differences: a reset, or a COMMIT or NOTIFY of the
# client's own channel, followed by a pipelined request).
NOT_FIRST = ("reset", "default", "time zone local", "discard all", "commit", "notify", "end")
# What a fresh session sees.
CHECKS = [
    "select to_regclass('tt_a') is null, to_regclass('tt_b') is null",
    "select name from pg_prepared_statements where name like 'p\\_%' order by 1",
    "select name from pg_cursors order by 1",
    "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()",
    # (every session's: A's and B's, and none of a session that reconnected: session/unlocks.py)
    "select objid, mode, granted from pg_locks where locktype = 'advisory' order by 1, 2, 3",
    "show work_mem", "show search_path", "show statement_timeout", "select current_user",
    "show transaction_read_only", "show default_transaction_isolation", "show timezone",
]


def answer(msgs: list[tuple[str, bytes]]) -> list[Any]:
    """What the client reads: every message, ErrorResponses and notices by severity, SQLSTATE and text."""
    out: list[Any] = []
    for t, b in msgs:
        if t in "EN":
            f = parse_fields(b)
            out.append((t, f.get("V"), f.get("C"), f.get("M")))
        elif t == "S":
            out.append((t, *b.rstrip(b"\0").decode().split("\0")))
        elif t == "D" and b[6:14] == b"plpgsql.":
            continue  # SHOW ALL's rows of a library a server loaded for another client: a known difference
        elif t in "DCZIAV":
            out.append((t, b[4:] if t == "A" else b))
        elif t == "T":
            out.append((t, b[2:].split(b"\0")[0]))
        elif t != "K":
            out.append((t,))
    return out


def _request(q: str, ext: bool, me: str) -> bytes | None:
    """The messages of step `q` when it is one request (one ReadyForQuery answers it), else None."""
    op, _, rest = q.partition(" ")
    if op == "PARSE":
        name, _, text = rest.partition(" ")
        return parse(name, text) + sync()
    if op == "BIND":
        return bind("", rest, ["5"] if rest.startswith("n2") else []) + execute() + sync()
    if op == "CLOSE":
        return close("S", rest) + sync()
    if op == "DESC":
        return describe("S", rest) + sync()
    if op == "DESCP":  # a typed parameter, the portal described
        return parse("", "select $1::int + 1", [23]) + bind("", "", ["4"]) + describe("P", "") + execute() + sync()
    if op == "FCALL":  # FunctionCall: int4pl(2, 3), binary arguments and result
        return frame("F", struct.pack("!IHHHI4sI4sH", 177, 1, 1, 2, 4, struct.pack("!i", 2), 4,
                                      struct.pack("!i", 3), 1))
    if op == "BINARY":  # the result in binary
        return bind("", rest, ["6"], result_formats=[1]) + execute() + sync()
    if op == "NPORTAL":  # a named portal, left open (it lasts to the transaction's end)
        return parse("", "select generate_series(1, 5)") + bind(f"np_{me}") + execute(f"np_{me}", 2) + sync()
    if op == "NEXEC":  # that portal again, in a later request
        return execute(f"np_{me}", 2) + sync()
    if op == "PORTAL":
        return parse("", "select generate_series(1, 5)") + bind() + execute("", 2) + execute("", 2) + sync()
    if op == "COPYIN":  # (PostgreSQL ignores the CopyData and CopyDone when the COPY fails first)
        return query(f"copy {rest} (x) from stdin") + frame("d", b"4\n5\n") + frame("c")
    if op == "COPYFAIL":
        return query(f"copy {rest} (x) from stdin") + frame("d", b"7\n") + frame("f", b"given up\0")
    if q[:1].islower():
        return parse("", q) + bind() + execute() + sync() if ext else query(q)
    return None


SLEEP = "select pg_sleep(30)"
_W = os.environ.get("PYTEST_XDIST_WORKER", "")  # in the DDL steps' table names: each test process its own
# PostgreSQL itself (the pg fixture), where _wait_running looks for a statement running (_watch sets it).
_PG: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _watch(pg: Any) -> Iterator[None]:
    _PG.setdefault("addr", (pg.host, pg.port))
    yield


def _wait_running(text: str) -> None:
    """Until a backend sleeps in `text` (so that a cancel finds it running), asked of PostgreSQL directly. (Its
    Parse already shows it active: a cancel then may fail the Parse, before the ParseComplete that a pooler
    which parsed it earlier sends.)"""
    sql = f"select count(*) from pg_stat_activity where wait_event = 'PgSleep' and query = '{text}'"
    deadline = time.monotonic() + 10
    w = _watcher()
    while w.query_rows(sql)[0][0] != "1":
        assert time.monotonic() < deadline, f"{text!r} never ran"
        time.sleep(0.005)


def _watcher() -> WireClient:
    """The connection to PostgreSQL that _wait_running asks (opened again if another test closed it)."""
    c: WireClient | None = _PG.get("conn")
    if c is not None:
        try:
            c.query_rows("select 1")
            return c
        except (OSError, ValueError, WireError):
            c.close()
    c = connect(*_PG["addr"])
    _PG["conn"] = c
    return c


def _cancel(c: WireClient) -> None:
    """A CancelRequest with `c`'s key, sent where `c` is connected (as libpq does: a connection of its own)."""
    assert c.backend_key is not None
    with socket.create_connection(c.sock.getpeername()[:2], timeout=10) as s:
        s.sendall(cancel_request(*c.backend_key))
        s.recv(1)  # (the server closes it without an answer)


def run(c: WireClient, q: str, ext: bool, me: str = "") -> list[Any]:
    op, _, rest = q.partition(" ")
    one = _request(q, ext, me)
    if one is not None:
        c.send(one)
    elif op == "CANCEL":  # a long statement cancelled while it runs; `CANCEL x`: the query x pipelined behind it
        c.send(_request(SLEEP, ext, me) or b"", query(rest) if rest else b"")
        _wait_running(SLEEP)
        _cancel(c)
        got = answer(c.read_until("Z", timeout=10)) + (answer(c.read_until("Z", timeout=10)) if rest else [])
        if ext:  # (else a later `BIND ` would run the sleep again: the unnamed statement is another one)
            c.send(parse("", "select 7") + sync())
            got += answer(c.read_until("Z", timeout=10))
        return got
    elif op == "PIPEN":  # several requests in one write: `q:` a simple query, `x:` extended, else a protocol step
        parts = rest.split(" || ")
        c.send(*(_request(p[2:], p[0] == "x", me) or b"" for p in parts))
        return [x for _ in parts for x in answer(c.read_until("Z", timeout=10))]
    elif op == "XCOPYIN":  # COPY FROM STDIN through the extended protocol, as libpq sends it (a Sync after too)
        c.send(parse(f"xc_{me}", f"copy {rest} (x) from stdin"), bind("", f"xc_{me}"), execute(), sync(),
               frame("d", b"6\n"), frame("c"), close("S", f"xc_{me}"), sync())  # (named: a BIND of the unnamed
        # statement later would start that COPY again and wait for data that never comes)
        first = c.read_until("Z", timeout=10)  # (a COPY that started ignores the first Sync: one ReadyForQuery)
        return answer(first) + ([] if any(t == "G" for t, _ in first) else answer(c.read_until("Z", timeout=10)))
    elif op in ("PAIRX", "PAIRQ"):  # two requests in one write (a pipeline): extended, or simple queries
        first, _, second = rest.partition(" || ")
        if first == "PREP":
            c.send(parse(f"n5_{me}", "select 5"), sync(), query(second))
        elif op == "PAIRX":
            c.send(parse("", first), bind(), execute(), sync(), parse("", second), bind(), execute(), sync())
        else:
            c.send(query(first), query(second))
        return answer(c.read_until("Z", timeout=10)) + answer(c.read_until("Z", timeout=10))
    elif op == "FLUSH":  # the answers before any Sync, then the Sync's
        c.send(parse("", "select 9"), bind(), execute(), flush())
        got = [c.read_message(timeout=10)]
        while got[-1][0] not in "CE":  # (in a failed transaction the Parse is refused: nothing more comes)
            got.append(c.read_message(timeout=10))
        first = answer(got)
        c.send(sync())
        return first + answer(c.read_until("Z", timeout=10))
    elif op == "PIPE":
        c.send(parse("", "select 1/0"), bind(), execute(), sync(), parse("", "select 8"), bind(), execute(), sync())
        return answer(c.read_until("Z", timeout=10)) + answer(c.read_until("Z", timeout=10))
    else:
        raise AssertionError(f"no such step: {q}")
    return answer(c.read_until("Z", timeout=10))


@pytest.fixture(scope="module", params=("session", "transaction"))
def pooler3(request: pytest.FixtureRequest, pg: Any, tmp_path_factory: Any) -> Iterator[Pooler]:
    with started_in_mode(pg, tmp_path_factory, request.param, "state", pool_size=3,
                         general={"query_wait_timeout": 8000}) as p:
        yield p


def steps(seed: int, ops: list[str] = OPS) -> list[tuple[str, str, bool]]:
    rnd = random.Random(seed * 7919 + 1)
    seq = []
    for _ in range(STEPS):
        r = rnd.random()
        if r < 0.06:
            seq.append(("c", "", False))
        elif r < 0.09:
            seq.append((rnd.choice("ab"), "RECONNECT", False))
        else:
            q = rnd.choice(ops)
            if q == "PIPE2":
                q = _pipe(rnd, ops)
            elif q == "PIPEN":
                q = _pipen(rnd, ops)
            seq.append((rnd.choice("ab"), q, rnd.random() < 0.4 and ";" not in q))
    return seq


def _pipe(rnd: random.Random, ops: list[str]) -> str:
    """Two SQL statements of `ops` sent in one write: as simple queries, or (when neither has a `;`) through the
    extended protocol, each with its Sync."""
    plain = [o for o in ops if o[:1].islower()]
    first = rnd.choice([o for o in plain if not any(w in o for w in NOT_FIRST)])
    second = rnd.choice(plain)
    if ";" in first + second or rnd.random() < 0.5:
        return f"PAIRQ {first} || {second}"
    if "execute n" in first + second:  # (SQL EXECUTE of a protocol statement, extended: the module's docstring)
        return f"PAIRQ {first} || {second}"
    return f"PAIRX {first} || {second}"


def _pipen(rnd: random.Random, ops: list[str]) -> str:
    """Two or three steps of `ops` that are one request each (SQL statements, simple or extended, and protocol
    steps), sent in one write (run(): PIPEN)."""
    single = [o for o in ops if _request(o, False, "a") is not None]
    parts = []
    k = rnd.choice((2, 3))
    for i in range(k):
        o = rnd.choice(single if i == k - 1 else [o for o in single if not any(w in o for w in NOT_FIRST)])
        ext = o[:1].islower() and ";" not in o and "execute n" not in o and rnd.random() < 0.5
        parts.append(("x:" if ext else "q:") + o)
    return "PIPEN " + " || ".join(parts)


def play(host: str, port: int, seq: list[tuple[str, str, bool]], one_server: bool = False) -> list[Any]:
    """`one_server`: the pool has one server, which a client in a transaction block keeps: the steps go to that
    client until the block ends, and the fresh client waits for it too."""
    params = {"a": SETTINGS_A, "b": B_SETTINGS}
    with connect(host, port) as setup:  # (tables COPY fills: permanent, so that a COPY usually starts)
        setup.query_rows("create table if not exists copy_a (x int); create table if not exists copy_b (x int)")
        setup.query_rows(f"drop table if exists pt{_W}_a, pt{_W}_b")  # (this process's: the DDL steps')
        setup.query_rows(f"drop type if exists ty{_W}_a, ty{_W}_b, en{_W}_a, en{_W}_b")
        _SERVER_MAJOR[0] = server_major(setup)
    cs = {k: connect(host, port, params[k]) for k in "ab"}
    status = {"a": b"I", "b": b"I"}
    out: list[Any] = []
    try:
        for who, q, ext in seq:
            if one_server and (busy := [k for k in "ab" if status[k] != b"I"]):
                if who == "c":
                    continue
                who = busy[0]
            q = q.replace("{me}", who).replace("{other}", "b" if who == "a" else "a").replace("{w}", _W)
            if who == "c":
                with connect(host, port) as c:
                    out.append(("c", [run(c, x, False) for x in CHECKS]))
                continue
            if q == "RECONNECT":
                cs[who].close()
                cs[who] = connect(host, port, params[who])
                status[who] = b"I"
                out.append((who, "reconnect"))
                continue
            if ext and q.startswith("execute n"):  # (see the module's docstring)
                q, ext = "select 'left out'", False
            other = "b" if who == "a" else "a"
            if q == "XCANCEL":  # the other client's statement runs; this one, idle, sends a cancel: nothing happens
                if (one_server and status[who] != b"I") or status[other] == b"E":
                    continue  # (the other would wait for the one server; or its statement is refused at once)
                cs[other].send(query("select pg_sleep(0.3)"))
                _wait_running("select pg_sleep(0.3)")
                _cancel(cs[who])
                got = answer(cs[other].read_until("Z", timeout=10))
                status[other] = got[-1][1]
                out.append((other, q, ext, got))
                continue
            if q == "XLISTEN":
                if not (one_server and status[who] != b"I"):  # (else the other would wait for the one server)
                    got = run(cs[other], f"listen ch_{other}", False)
                    status[other] = got[-1][1]
                    out.append((other, q, ext, got))
                q = "XNOTIFY"
            if q == "XNOTIFY":  # what the other client reads within 0.3 s after a NOTIFY of its channel
                out.append((who, q, ext, run(cs[who], f"notify ch_{other}, 'x'", False)))
                out.append((other, "notified", False, _notified(cs[other])))
                continue
            if q.startswith("CANCEL") and status[who] == b"E":
                q = SLEEP  # (refused at once in a failed transaction: nothing runs to cancel)
            try:
                got = run(cs[who], q, ext, who)
            except Exception:
                print(f"step {q!r} of client {who} failed; its last answers:", out[-3:])
                raise
            status[who] = [x for x in got if x[0] == "Z"][-1][1]
            out.append((who, q, ext, got))
    finally:
        for c in cs.values():
            c.close()
    return out


def _notified(c: WireClient) -> list[Any]:
    """The messages `c` receives within 0.3 s, or up to its first NotificationResponse."""
    got: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + 0.3
    while not got or got[-1][0] != "A":
        try:
            got.append(c.read_message(timeout=max(deadline - time.monotonic(), 0.001)))
        except TimeoutError:
            break
    return answer(got)


# What pins a client to its server in transaction mode (then the other client would wait for the one server).
PINNING = ("temp", "advisory_lock(", "advisory_lock_shared(", "with hold", "prepare p_", "execute p_", "sequence",
           "sh_p")


@pytest.fixture(scope="module")
def one_server(pg: Any, tmp_path_factory: Any) -> Iterator[Pooler]:
    with started_in_mode(pg, tmp_path_factory, "transaction", "state-one", pool_size=1,
                         general={"query_wait_timeout": 8000}) as p:
        yield p


@pytest.mark.parametrize("seed", SEED_RANGE)
def test_random_steps_on_one_shared_server_as_on_postgresql(pg: Any, one_server: Any, seed: int) -> None:
    """Transaction mode, pool_size 1: A and B, whose settings differ, run every request on the same server."""
    seq = steps(seed, [o for o in OPS if not any(p in o for p in PINNING)])
    want = play(pg.host, pg.port, seq, one_server=True)
    got = play(one_server.host, one_server.port, seq, one_server=True)
    _compare("transaction (one server)", seed, want, got)


# With prepared_statements off a client's named statements last until its transaction ends, and LISTEN, UNLISTEN
# and NOTIFY through the extended protocol are refused or not held for (docs/prepared-statements.md,
# docs/transaction-mode.md): left out there.
NAMED = ("n1_", "n2_", "n3_", "n4_", "n5_", "n6_", "n7_", "n8_", "n9_", "sh_x", "PREP", "XCOPYIN", "NEXEC", "BIND",
         "CLOSE", "DESC ", "BINARY")
_SIMPLE_ONLY = ("listen", "unlisten", "notify", "select pg_notify")


def _without_ps(seq: list[tuple[str, str, bool]]) -> list[tuple[str, str, bool]]:
    out = []
    for who, q, ext in seq:
        if any(w in q for w in _SIMPLE_ONLY):
            ext = False
            q = q.replace("PAIRX ", "PAIRQ ")
            for w in _SIMPLE_ONLY:
                q = q.replace("x:" + w, "q:" + w)
        out.append((who, q, ext))
    return out


@pytest.fixture(scope="module")
def no_ps(pg: Any, tmp_path_factory: Any) -> Iterator[Pooler]:
    with started_in_mode(pg, tmp_path_factory, "transaction", "state-nops", pool_size=3,
                         general={"query_wait_timeout": 8000, "prepared_statements": False}) as p:
        yield p


@pytest.mark.parametrize("seed", SEED_RANGE)
def test_random_steps_without_prepared_statements_as_on_postgresql(pg: Any, no_ps: Any, seed: int) -> None:
    """Transaction mode with prepared_statements off (the plain relay, session/tracking.py), pool of 3."""
    seq = _without_ps(steps(seed, [o for o in OPS if not any(w in o for w in NAMED)]))
    _compare("transaction (prepared_statements off)", seed, play(pg.host, pg.port, seq),
             play(no_ps.host, no_ps.port, seq))


@pytest.fixture(scope="module")
def tiny_caches(pg: Any, tmp_path_factory: Any) -> Iterator[Pooler]:
    with started_in_mode(pg, tmp_path_factory, "transaction", "state-tiny", pool_size=3,
                         general={"query_wait_timeout": 8000, "server_prepared_statements_cache_size": 2,
                                  "prepared_statements_cache_size": 3}) as p:
        yield p


@pytest.mark.parametrize("seed", SEED_RANGE)
def test_random_steps_with_tiny_statement_caches_as_on_postgresql(pg: Any, tiny_caches: Any, seed: int) -> None:
    """Transaction mode, servers that keep 2 statements and a pool cache of 3: evictions on every few steps."""
    seq = steps(seed)
    _compare("transaction (tiny caches)", seed, play(pg.host, pg.port, seq),
             play(tiny_caches.host, tiny_caches.port, seq))


@pytest.fixture(scope="module", params=("session", "transaction"))
def two_workers(request: pytest.FixtureRequest, pg: Any, tmp_path_factory: Any) -> Iterator[Pooler]:
    with started_in_mode(pg, tmp_path_factory, request.param, "state-two", pool_size=3,
                         general={"query_wait_timeout": 8000, "worker_threads": 2, "worker_placement": "spread"}) as p:
        yield p


@pytest.mark.parametrize("seed", SEED_RANGE)
def test_random_steps_on_two_workers_as_on_postgresql(pg: Any, two_workers: Any, seed: int) -> None:
    """Two worker threads, clients spread over both (servers and the LISTEN connection move between them)."""
    seq = steps(seed)
    _compare(f"{two_workers.mode} (two workers)", seed, play(pg.host, pg.port, seq),
             play(two_workers.host, two_workers.port, seq))


@pytest.mark.parametrize("seed", SEED_RANGE)
def test_random_session_state_as_on_postgresql(pg: Any, pooler3: Any, seed: int) -> None:
    seq = steps(seed)
    _compare(pooler3.mode, seed, play(pg.host, pg.port, seq), play(pooler3.host, pooler3.port, seq))


_SERVER_MAJOR = [0]  # the version the last play() ran against (its ParameterStatus)


def _reports_in_order(step: Any) -> Any:
    """A step's answer with each run of ParameterStatus messages sorted by name, on PostgreSQL 16 and later:
    there a request's reports come in the reverse order of the changes, which for a setting the pooler's
    server did not change itself the pooler cannot know (session/reports.py; docs/transaction-mode.md). Before 16
    PostgreSQL sorts them by name, and the order is compared as it comes."""
    if _SERVER_MAJOR[0] < 16 or len(step) < 4 or not isinstance(step[3], list):
        return step
    msgs, out, run_ = step[3], [], []
    for x in [*step[3], None]:
        if isinstance(x, tuple) and x[:1] == ("S",):
            run_.append(x)
            continue
        out += sorted(run_, key=lambda r: r[1].lower())
        run_ = []
        if x is not None:
            out.append(x)
    return step if out == msgs else (*step[:3], out, *step[4:])


def _compare(mode: str, seed: int, want: list[Any], got: list[Any]) -> None:
    want, got = [_reports_in_order(x) for x in want], [_reports_in_order(x) for x in got]
    for i, (d, p) in enumerate(zip(want, got, strict=True)):
        if d != p:
            print(f"{mode} mode, seed {seed}, step {i}: client {d[0]}'s history, PostgreSQL then pgdoorman")
            for x, y in zip(want[:i], got[:i], strict=True):
                if x[0] == d[0] or os.environ.get("PGDOORMAN_STATE_ALL"):  # (every client's steps)
                    print("  ", x[0], x[1:3], x[3] if len(x) > 3 else "")
                    if x != y:
                        print("   P", y[3] if len(y) > 3 else y)
            print("XX", d)
            print(" P", p)
            if len(d) > 3 and len(p) > 3 and isinstance(d[3], list):  # (a long answer: what differs in it)
                print("only on PostgreSQL:", [r for r in d[3] if r not in p[3]][:8])
                print("only through pgdoorman:", [r for r in p[3] if r not in d[3]][:8])
            break
    assert got == want
