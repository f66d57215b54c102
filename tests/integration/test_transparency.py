"""A client cannot tell pgdoorman from PostgreSQL: the same steps run directly and through the pooler (session
and transaction mode, pool_size 1 so that the second client reuses the first one's server) and give the same
answers. Each test here was written for a defect found by such a comparison (issue "Drop-in means
indistinguishable")."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER, SUPERUSER
from tests.support.pooler import Pooler, started_in_mode
from tests.support.wire import (
    WireClient,
    WireError,
    bind,
    cancel_request,
    close,
    comparable,
    execute,
    flush,
    frame,
    parse,
    parse_fields,
    query,
    split_messages,
    startup_message,
    sync,
)

pytestmark = pytest.mark.timeout(180)

MODES = ("session", "transaction")

# Another client's, which differ from A's in a reported and an unreported setting.
SETTINGS_B = {"TimeZone": "Europe/Paris", "work_mem": "9MB"}

# Startup settings of client A, PostgreSQL's reported ones and others, one through `options`.
SETTINGS_A = {
    "application_name": "app-1",
    "TimeZone": "Asia/Tokyo",
    "DateStyle": "SQL, DMY",
    "search_path": "s1, public",
    "work_mem": "7MB",
    "statement_timeout": "12345",
    "client_encoding": "utf8",
    "options": "-c lock_timeout=4s --geqo=off -c default_transaction_isolation=repeatable\\ read",
}
SHOWN = ("application_name", "TimeZone", "DateStyle", "search_path", "work_mem", "statement_timeout",
         "lock_timeout", "geqo", "client_encoding", "default_transaction_isolation", "IntervalStyle")


def show_all(c: WireClient) -> dict[str, str | None]:
    return {k: c.query_rows(f"show {k}")[0][0] for k in SHOWN}


def connect(host: str, port: int, params: dict[str, str] | None = None) -> WireClient:
    return WireClient.connect(host, port, SCRAM_USER, DBNAME, SCRAM_PASSWORD, params=params)


def server_major(c: WireClient) -> int:
    """The major version of the PostgreSQL `c` talks to, from its ParameterStatus server_version ("18.4",
    "15.18 (Debian ...)", "19beta1")."""
    v = c.parameters["server_version"]
    return int(v[: len(v) - len(v.lstrip("0123456789"))])


@pytest.fixture(scope="module", params=MODES)
def mode_pooler(request: pytest.FixtureRequest, pg: Any, tmp_path_factory: Any) -> Iterator[Pooler]:
    with started_in_mode(pg, tmp_path_factory, request.param, "transparency", pool_size=1,
                         general={"query_wait_timeout": 20000}) as p:
        yield p


def test_login_reports_every_setting_postgresql_reports(pg: Any, mode_pooler: Pooler) -> None:
    """The ParameterStatus messages of a login, names, values and order, are PostgreSQL's: whichever settings
    its version reports (18 adds search_path), with and without startup settings of the client's own."""
    got: dict[str, list[Any]] = {}
    for name, host, port in (("direct", pg.host, pg.port), ("pooled", mode_pooler.host, mode_pooler.port)):
        got[name] = []
        for params in ({}, SETTINGS_A, {"search_path": "x, public", "application_name": "tr"}):
            with connect(host, port, params) as c:
                got[name].append(list(c.parameters.items()))
    assert got["pooled"] == got["direct"]


def test_startup_settings_reach_the_server_and_follow_their_client(pg: Any, mode_pooler: Pooler) -> None:
    """Defects 1, 2 and 8: every startup setting is applied before the first query, reported as PostgreSQL
    reports it, and a second client on the same server (pool_size 1) sees none of them."""
    expected: dict[str, Any] = {}
    for name, host, port in (("direct", pg.host, pg.port), ("pooled", mode_pooler.host, mode_pooler.port)):
        a = connect(host, port, SETTINGS_A)
        got: dict[str, Any] = {"a_params": {k: a.parameters.get(k) for k in ("application_name", "TimeZone",
                                                                             "DateStyle", "client_encoding")},
                               "a": show_all(a)}
        if mode_pooler.mode == "session":  # type: ignore[attr-defined]
            a.terminate()  # pool_size 1: B gets A's server once A has left
            a.close()
        b = connect(host, port, {"TimeZone": "UTC"})
        got["b"] = show_all(b)
        got["b_params"] = {k: b.parameters.get(k) for k in ("application_name", "TimeZone", "DateStyle",
                                                            "client_encoding")}
        if mode_pooler.mode == "transaction":  # type: ignore[attr-defined]
            got["a_again"] = show_all(a)
            got["b_again"] = show_all(b)
            a.close()
        b.close()
        expected[name] = got
    assert expected["pooled"] == expected["direct"]
    assert expected["direct"]["a"]["client_encoding"] == "UTF8"  # the test means what it says


def test_reset_returns_a_startup_setting_to_its_startup_value(pg: Any, mode_pooler: Pooler) -> None:
    """On PostgreSQL RESET, RESET ALL and DISCARD ALL return a setting to the value the startup packet gave;
    through the pooler that value was set on a server started for the pool, whose RESET returned it to the
    pool's value (session mode). The next client (pool_size 1) still gets none of it."""
    got: dict[str, Any] = {}
    for name, host, port in (("direct", pg.host, pg.port), ("pooled", mode_pooler.host, mode_pooler.port)):
        a = connect(host, port, SETTINGS_A)
        seen: dict[str, Any] = {}
        for q in ("set work_mem = '9MB'", "set timezone = 'UTC'", "reset all"):
            a.query_rows(q)
        seen["reset all"] = show_all(a)
        for q in ("set work_mem = '10MB'", "set datestyle = 'German'", "reset work_mem"):
            a.query_rows(q)
        seen["reset one"] = show_all(a)
        for q in ("begin", "reset datestyle", "rollback"):
            a.query_rows(q)
        seen["rolled back"] = show_all(a)
        told = [b for t, b in a.query("discard all") + a.query("select 1") if t == "S"]
        seen["discard all"] = show_all(a)
        seen["told"] = told  # PostgreSQL reports nothing: no value changed
        seen["reported"] = {k: a.parameters.get(k) for k in ("TimeZone", "DateStyle", "application_name")}
        a.terminate()
        with connect(host, port) as b:  # no startup settings: application_name '' all the same
            told = [b for t, b in b.query("reset all") + b.query("select 1") if t == "S"]
            seen["next client"] = (show_all(b), told)
        got[name] = seen
    assert got["direct"]["reset all"]["work_mem"] == "7MB" and got["direct"]["rolled back"]["DateStyle"] == "German, DMY"
    assert got["pooled"] == got["direct"]


def everything(msgs: list[tuple[str, bytes]]) -> list[Any]:
    """A simple query's answer as a client reads it, ParameterStatus messages included."""
    out: list[Any] = []
    for t, b in msgs:
        if t == "S":
            out.append((t, *b.rstrip(b"\0").decode().split("\0")))
        elif t in "DC":
            out.append((t, b[6:] if t == "D" else b.rstrip(b"\0")))
        elif t == "Z":
            out.append((t, b))
    return out


def test_startup_values_are_reported_as_postgresql_spells_them_and_only_on_change(pg: Any,
                                                                                 mode_pooler: Pooler) -> None:
    """Client A's startup packet spells client_encoding `utf8` (PostgreSQL reports `UTF8`). In transaction mode,
    after A changed a setting and client B used the server in between (pool_size 1), A was told
    `client_encoding=UTF8` again, and later `utf8` (the packet's spelling), though its encoding never changed:
    PostgreSQL reports a setting only when its value changes."""
    steps = [("a", "set application_name = 'a2'"), ("b", "select 1"), ("a", "select 1"),
             ("a", "set datestyle = 'German'"), ("b", "select 2"), ("a", "show datestyle"), ("a", "select 3")]
    got: dict[str, Any] = {}
    for name, host, port in (("direct", pg.host, pg.port), ("pooled", mode_pooler.host, mode_pooler.port)):
        a = connect(host, port, SETTINGS_A)
        b = connect(host, port) if mode_pooler.mode == "transaction" else None  # type: ignore[attr-defined]
        got[name] = [(who, everything(a.query(q) if who == "a" else b.query(q))) for who, q in steps
                     if who == "a" or b is not None]
        got[name].append(a.parameters["client_encoding"])
        a.close()
        if b is not None:
            b.close()
    assert got["direct"][-1] == "UTF8"
    assert got["pooled"] == got["direct"]


def _extended(c: WireClient, sql: str) -> list[Any]:
    c.send(parse("", sql), bind(), execute(), sync())
    return everything(c.read_until("Z"))


def _quiet(c: WireClient, wait: float = 0.15) -> list[Any]:
    """What arrives unasked within `wait` seconds."""
    out = []
    try:
        while True:
            out.append(c.read_message(timeout=wait))
    except TimeoutError:
        return everything(out)


RESETS = ["set timezone = 'UTC'", "reset timezone", "set datestyle = 'German'", "reset all",
          "set timezone = 'UTC'", "begin", "reset timezone", "commit",
          "set timezone = 'UTC'", "begin", "reset timezone", "rollback",
          "begin", "reset timezone", "set timezone = 'Europe/Paris'", "commit",
          "set application_name = 'a2'", "reset application_name", "reset all", "discard all", "select 1",
          "set timezone = 'UTC'; set datestyle = 'German'", "reset all; select 1", "select 2"]


def test_a_reset_reports_the_startup_value_where_postgresql_does(pg: Any, mode_pooler: Pooler) -> None:
    """On PostgreSQL a RESET (RESET ALL, DISCARD ALL) of a startup setting the client had changed reports the
    startup value just before its ReadyForQuery. Through the pooler the server's RESET reports the pool's
    value: it was dropped and the startup value told only after the ReadyForQuery (when the transaction's
    settings were read back); in the extended protocol with prepared statements, and after a RESET followed
    by another statement in the same query, the pool's values (application_name 'pg_doorman', the server's
    TimeZone and DateStyle) reached the client. Compared message
    by message, simple and extended protocol, in and out of transactions, client B (no startup settings) on
    the same server in between (transaction mode)."""
    got: dict[str, Any] = {}
    for name, host, port in (("direct", pg.host, pg.port), ("pooled", mode_pooler.host, mode_pooler.port)):
        out = []
        for settings in (SETTINGS_A, None):
            a = connect(host, port, settings)
            for how in ("simple", "extended"):
                for q in RESETS if how == "simple" else [q for q in RESETS if ";" not in q]:
                    answer = everything(a.query(q)) if how == "simple" else _extended(a, q)
                    out.append((how, q, answer, _quiet(a) if answer[-1] == ("Z", b"I") else []))
                    if answer[-1] == ("Z", b"I") and mode_pooler.mode == "transaction":  # type: ignore[attr-defined]
                        with connect(host, port) as b:
                            out.append(("b", everything(b.query("show timezone"))))
            out.append(("shown", show_all(a)))
            a.close()
        got[name] = out
    assert ("simple", "reset timezone", [("C", b"RESET"), ("S", "TimeZone", "Asia/Tokyo"), ("Z", b"I")], []) \
        in got["direct"]
    assert got["pooled"] == got["direct"]


def test_set_to_default_returns_to_the_startup_value(pg: Any, mode_pooler: Pooler) -> None:
    """`SET name TO DEFAULT` is a RESET: on PostgreSQL a startup setting goes back to its startup value. In
    session mode it stayed at the pool's value for the rest of the session. A SET to the pool's own value is
    a SET like any other: it stays; in transaction mode it went back to the startup value after the next
    transaction that ran a SET (the server showed the pool's value, so the sync did not set it, and the
    read-back took "not set in this session" for a RESET). Compared by what the client reads (its reports
    may differ: docs). Session mode followed TO DEFAULT only for settings PostgreSQL reports until it read the
    query texts of a client with startup settings (session/txresets.py)."""
    steps = ["set datestyle = 'German'", "set datestyle to default", "show datestyle",
             "begin", "set timezone to default", "commit", "show timezone",
             "set timezone = 'Etc/UTC'", "show timezone", "select 1", "show timezone",
             "set datestyle = 'ISO, MDY'", "select 2", "set work_mem = '3MB'", "show datestyle", "show timezone"]
    steps += ["set search_path = default", "show search_path", "set work_mem = default", "show work_mem"]
    got: dict[str, Any] = {}
    for name, host, port in (("direct", pg.host, pg.port), ("pooled", mode_pooler.host, mode_pooler.port)):
        with connect(host, port, SETTINGS_A) as a:
            got[name] = [replies(a.query(q)) for q in steps] + [show_all(a)]
    assert got["direct"][2] == [("D", "SQL, DMY"), ("C", "SHOW")] and got["direct"][8][0] == ("D", "Etc/UTC")
    assert got["pooled"] == got["direct"]


IN_BLOCK = ["begin", "reset all", "show timezone", "show search_path", "show work_mem", "show application_name",
            "show lock_timeout", "show datestyle", "commit",
            "begin", "set local timezone to default", "show timezone", "set work_mem = '1MB'", "reset work_mem",
            "show work_mem", "rollback", "show work_mem",
            "begin", "set time zone local", "show timezone", "set search_path to default", "show search_path",
            "set names default", "show client_encoding", "savepoint a", "reset datestyle", "show datestyle",
            "rollback to a", "show datestyle", "commit",
            "begin", "reset all", "set transaction isolation level serializable", "show transaction_isolation",
            "show timezone", "commit",
            "begin", "set search_path = public", "reset search_path; set work_mem = '2MB'", "show search_path",
            "show work_mem", "rollback",
            "set search_path = public", "set search_path to default", "show search_path",
            "set lock_timeout = '1s'", "set lock_timeout to default", "show lock_timeout",
            "begin", "reset all", "x-reset work_mem", "show work_mem", "commit",
            # the same statement parsed again (the pooler's prepared statement, its Parse answered here), and a
            # Parse of a RESET that is not executed
            "begin", "x-set timezone to default", "x-set timezone to default", "show timezone",
            "x-reset work_mem", "x-reset work_mem", "show work_mem", "set work_mem = '1MB'", "p-reset work_mem",
            "show work_mem", "commit"]


def test_a_reset_inside_a_transaction_block_reads_the_startup_value(pg: Any, mode_pooler: Pooler) -> None:
    """On PostgreSQL `RESET` (`RESET ALL`, `SET name TO DEFAULT`, `SET TIME ZONE LOCAL`, `SET NAMES DEFAULT`)
    inside a transaction block returns a startup setting to its startup value at once; through the pooler it
    read as the pool's value until the transaction ended (and in session mode `SET name TO DEFAULT` of a
    setting PostgreSQL does not report, outside a block too, for good). What the client reads and is told,
    step by step; `SET TRANSACTION` still works after the RESET (nothing that takes a snapshot ran); client B
    (other settings) on the same server between A's transactions (transaction mode, pool_size 1). `x-`: the
    statement through the extended protocol, `p-`: only parsed."""
    got: dict[str, Any] = {}
    for name, host, port in (("direct", pg.host, pg.port), ("pooled", mode_pooler.host, mode_pooler.port)):
        out: list[Any] = []
        a = connect(host, port, SETTINGS_A)
        for q in IN_BLOCK:
            if q.startswith("p-"):
                a.send(parse("", q[2:]), sync())
                answer = everything(a.read_until("Z"))
            else:
                answer = _extended(a, q[2:]) if q.startswith("x-") else everything(a.query(q))
            out.append((q, answer))
            if answer[-1] == ("Z", b"I") and mode_pooler.mode == "transaction":  # type: ignore[attr-defined]
                with connect(host, port, {"TimeZone": "UTC", "search_path": "public"}) as b:
                    out.append(("b", show_all(b)))
        out.append(("shown", show_all(a)))
        a.close()
        # Texts the pooler does not read: the RESET's reports say which reported settings went back. A client
        # whose only startup setting is application_name (session mode reads none of its queries), a query
        # over 8 kB, and a prepared RESET executed in a later request than its Parse.
        with connect(host, port, {"application_name": "only-name"}) as b:
            for q in ("begin", "reset all", "show application_name", "commit", "begin", "reset application_name",
                      "show application_name", "rollback"):
                out.append(("only-name", q, everything(b.query(q))))
        with connect(host, port, SETTINGS_A) as a:
            long = "reset timezone /*" + "x" * 9000 + "*/"
            a.send(parse("r", "reset datestyle"), sync())
            a.read_until("Z")
            for q in ("begin", long, "show timezone", "x-r", "show datestyle", "commit"):
                if q == "x-r":
                    a.send(bind("", "r"), execute(), sync())
                    answer = everything(a.read_until("Z"))
                else:
                    answer = everything(a.query(q))
                out.append(("unread", q[:20], answer))
        with connect(host, port, SETTINGS_A) as a:  # the reset pipelined behind another request (the last one)
            for first, second in (("begin", "set time zone local"), ("select 1", "set work_mem to default")):
                a.send(query(first), query(second))
                answer = everything(a.read_until("Z")) + everything(a.read_until("Z"))
                out.append(("pipelined", second, answer, everything(a.query("show timezone; show work_mem"))))
            a.query("commit")
        got[name] = out
    assert ("show timezone", [("D", b"Asia/Tokyo"), ("C", b"SHOW"), ("Z", b"T")]) in got["direct"]
    assert got["pooled"] == got["direct"]


@pytest.mark.parametrize("mode,prepared", [("session", True), ("transaction", True), ("transaction", False)],
                         ids=["session", "transaction", "transaction-no-ps"])
def test_a_prepared_reset_counts_where_it_is_executed(pg: Any, pooler_factory: Any, mode: str,
                                                      prepared: bool) -> None:
    """A prepared reset of a setting PostgreSQL does not report (work_mem; client A started with 7MB, the pool
    has 4MB) executed in a later request than its Parse (asyncpg's prepare()), in a transaction block and
    outside one; a Parse alone resets nothing; a Bind of a closed or deallocated one fails and resets nothing.
    Client B (9MB, another TimeZone) uses the one server between A's transactions and after A left.
    Where the pooler does not keep statements (session mode, prepared_statements off) it noted the text at
    the Parse: a Parse alone put the startup value back, and a later Bind did not."""
    p = pooler_factory(pool_mode=mode, pool_size=1, general={"prepared_statements": prepared})
    got: dict[str, Any] = {}
    for name, host, port in (("direct", pg.host, pg.port), ("pooled", p.host, p.port)):
        out: list[Any] = []
        with connect(host, port, SETTINGS_A) as a:
            def run(*msgs: bytes) -> list[Any]:
                a.send(*msgs, sync())
                got = a.read_until("Z")
                return [("E", parse_fields(b).get("C")) for t, b in got if t == "E"] + everything(got)

            def b_sees(host: str = host, port: int = port, out: list[Any] = out) -> None:
                """Client B (other settings) on the one server between A's transactions (transaction mode)."""
                if mode == "transaction":
                    with connect(host, port, SETTINGS_B) as b:
                        out.append(("b", everything(b.query("show work_mem; show timezone"))))

            if not prepared:
                a.query("begin")  # (named statements last until the transaction's end there: in one block)
            out.append(run(parse("w", "set work_mem to default")))
            a.query("begin")
            out.append(("in a block", run(bind("", "w"), execute()), everything(a.query("show work_mem"))))
            if prepared:
                a.query("commit")
            a.query("set work_mem = '1MB'")
            out.append(("parsed only", run(parse("w2", "reset work_mem")), everything(a.query("show work_mem"))))
            if prepared:
                b_sees()
            out.append(("later", run(bind("", "w2"), execute()), everything(a.query("show work_mem"))))
            if not prepared:
                out.append(everything(a.query("commit")))
            else:
                b_sees()
                a.query("set work_mem = '2MB'")
                out.append(("closed", run(close("S", "w2")), run(bind("", "w2"), execute()),
                            everything(a.query("show work_mem"))))
                b_sees()
                out.append(("deallocated", everything(a.query("deallocate w")), run(bind("", "w"), execute()),
                            everything(a.query("show work_mem"))))
                out.append(("unnamed", run(parse("", "reset work_mem"), bind(), execute()),
                            everything(a.query("show work_mem"))))
                b_sees()
        with connect(host, port, SETTINGS_B) as b:  # (after A left: the server it used, pool_size 1)
            out.append(("b after", everything(b.query("show work_mem; show timezone"))))
        got[name] = out
    status = b"I" if prepared else b"T"
    got_later = [e for e in got["direct"] if e[0] == "later"]
    assert got_later[0] == ("later", [("C", b"RESET"), ("Z", status)], [("D", b"7MB"), ("C", b"SHOW"), ("Z", status)])
    assert got["pooled"] == got["direct"]


def test_bad_startup_setting_is_refused_as_postgres_refuses_it(pg: Any, mode_pooler: Pooler) -> None:
    answers = []
    for host, port in ((pg.host, pg.port), (mode_pooler.host, mode_pooler.port)):
        for params in ({"work_mem": "lots"}, {"no_such_setting": "1"}, {"options": "-z"}):
            with pytest.raises(WireError) as ei:
                connect(host, port, params)
            f = ei.value.fields
            answers.append((f.get("S"), f.get("C"), f.get("M")))
    assert answers[:3] == answers[3:]
    # and the pool still serves
    with connect(mode_pooler.host, mode_pooler.port) as c:
        assert c.query_rows("select 1") == [["1"]]


# Startup packets PostgreSQL refuses or takes in a way of its own, and the setting to SHOW when it takes them.
STARTUP_EDGES = [
    ({"is_superuser": "on"}, "is_superuser"),  # computed by PostgreSQL: 55P02
    ({"options": "-c lc_collate=C"}, "lc_collate"),
    ({"options": "-c transaction_isolation=serializable"}, "transaction_isolation"),  # 25001; 18: taken, no effect
    ({"transaction_isolation": "Repeatable Read"}, "transaction_isolation"),  # (its own key; any case)
    ({"options": "-c transaction_isolation=bogus"}, "transaction_isolation"),  # 22023 (every version)
    ({"options": "-c session_authorization=app_md5"}, "session_authorization"),  # another role: 42501
    ({"options": "-c session_authorization=" + SCRAM_USER}, "session_authorization"),  # its own: taken
    ({"options": "-e"}, "DateStyle"),  # PostgreSQL's own switches
    ({"options": "-S 5MB -fs"}, "work_mem"),
    ({"options": "-tpa"}, "log_parser_stats"),  # a superuser's setting: 42501
    ({"options": "-F"}, "fsync"),  # 55P02 "cannot be changed now"
    ({"options": "-c geqo=off --"}, "geqo"),  # -- ends the switches
    ({"options": "-- -c geqo=off"}, "geqo"),
    ({"options": "-c geqo"}, "geqo"),  # "-c geqo requires a value"
    ({"options": "--geqo"}, "geqo"),
    ({"options": "-c"}, "geqo"),
    ({"options": "-c -x"}, "geqo"),
    ({"options": "-c =1"}, "geqo"),  # 42704
]


def test_startup_packets_taken_and_refused_as_postgresql_does(pg: Any, mode_pooler: Pooler) -> None:
    """Each packet above, directly and through the pooler: the same refusal (severity, SQLSTATE, message), or
    the same value of the setting it names. The pooler dropped the settings PostgreSQL refuses
    (is_superuser, lc_collate, transaction_isolation, another role's session_authorization), refused
    PostgreSQL's single-letter switches, `--`, and gave other words for a `-c` without a value. What differs
    by version, as PostgreSQL does (15 here, 17 and 18 by `make test-pg-newest`): lc_collate is no setting
    from 16 on (42704, not 55P02), and PostgreSQL 18 takes a transaction_isolation level at login."""
    got: dict[str, list[Any]] = {}
    for name, host, port in (("direct", pg.host, pg.port), ("pooled", mode_pooler.host, mode_pooler.port)):
        got[name] = []
        for params, shown in STARTUP_EDGES:
            try:
                c = connect(host, port, params)
            except WireError as e:
                got[name].append((params, e.fields.get("S"), e.fields.get("C"), e.fields.get("M")))
                continue
            got[name].append((params, c.query_rows(f"show {shown}")))
            c.terminate()
    with connect(pg.host, pg.port) as c:
        major = server_major(c)
    # (taken: the comparison covers both outcomes)
    assert sum(len(r) == 2 for r in got["direct"]) == (6 if major >= 18 else 4)
    assert got["pooled"] == got["direct"]


def test_temp_tables_and_advisory_locks_do_not_leak(pg: Any, mode_pooler: Pooler) -> None:
    """Defect 3: a temporary table or session advisory lock left by one client is gone for the next one. (In
    transaction mode they pin A to its server, the only one here: A keeps them, as on PostgreSQL, until it
    leaves; test_transaction_session.py has B run while A is pinned.)"""
    seen = {}
    for name, host, port in (("direct", pg.host, pg.port), ("pooled", mode_pooler.host, mode_pooler.port)):
        a = connect(host, port)
        a.query("create temp table leak_t (a int)")
        a.query("select pg_advisory_lock(4242)")
        a_sees = (a.query_rows("select to_regclass('leak_t') is null"),
                  a.query_rows("select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()"))
        a.terminate()
        a.close()
        b = connect(host, port)
        # B sees no temp table of A's and holds no lock it did not take.
        seen[name] = (
            a_sees,
            b.query_rows("select to_regclass('leak_t') is null"),
            b.query_rows("select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()"),
        )
        b.close()
    assert seen["pooled"] == seen["direct"]


def test_parse_of_existing_name_fails_as_in_postgres(pg: Any, mode_pooler: Pooler) -> None:
    """Defect 7 (and 6): a second Parse of a name answers 42P05 and PostgreSQL skips to Sync; a Parse that was
    skipped after an error does not exist afterwards (26000 at Bind)."""
    seq = [
        parse("dup", "select 1") + sync(),
        parse("dup", "select 2") + bind("", "dup") + execute() + sync(),
        bind("", "dup") + execute() + sync(),
        parse("", "select error") + parse("skipped", "select 3") + flush() + sync(),
        bind("", "skipped") + execute() + sync(),
        query("select 'after'"),
    ]
    out = {}
    for name, host, port in (("direct", pg.host, pg.port), ("pooled", mode_pooler.host, mode_pooler.port)):
        c = connect(host, port)
        got = []
        for data in seq:
            c.send(data)
            got.append([(t, _norm(t, b)) for t, b in c.read_until("Z")])
        out[name] = got
        c.close()
    assert out["pooled"] == out["direct"]
    assert ("E", ("ERROR", "42P05", 'prepared statement "dup" already exists')) in out["direct"][1]


def _norm(t: str, body: bytes) -> Any:
    if t in ("E", "N"):
        f = parse_fields(body)
        return (f.get("S"), f.get("C"), f.get("M"))
    return body


def test_session_mode_client_gets_the_real_backend_key(pg: Any, pooler_factory: Any) -> None:
    """Session mode: pg_backend_pid() is the PID the client was given; pg_terminate_backend of it from another
    connection ends the client with PostgreSQL's 57P01 and nothing after it; cancel by that key works."""
    p = pooler_factory(pool_mode="session", pool_size=2)
    a = connect(p.host, p.port)
    pid = int(a.query_rows("select pg_backend_pid()")[0][0] or 0)
    assert a.backend_key[0] == pid
    # a cancel with that key reaches the query
    a.send(query("select pg_sleep(10)"))
    time.sleep(0.5)
    with socket.create_connection((p.host, p.port)) as s:
        s.sendall(cancel_request(*a.backend_key))
        s.recv(1)
    msgs = a.read_until("Z", timeout=8)
    errs = [parse_fields(b) for t, b in msgs if t == "E"]
    assert errs and errs[0]["C"] == "57014"
    # NOTIFY's sender PID is the one the client was given
    msgs = a.query("listen chan; notify chan, 'hi'")
    notes = [b for t, b in msgs if t == "A"]
    assert notes and int.from_bytes(notes[0][:4], "big") == pid
    with connect(pg.host, pg.port) as killer:
        killer.query(f"select pg_terminate_backend({pid})")
    t, body = a.read_message(timeout=10)
    assert t == "E" and parse_fields(body)["C"] == "57P01"
    assert a.expect_closed(timeout=10) == b""
    a.close()


def send_cancel(host: str, port: int, key: tuple[int, int] | None) -> None:
    assert key is not None
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(cancel_request(*key))
        s.recv(1)  # the end of file: the request was taken


def error_codes(msgs: list[tuple[str, bytes]]) -> list[str]:
    return [parse_fields(b)["C"] for t, b in msgs if t == "E"]


def test_a_departed_clients_key_cancels_nothing(pg: Any, mode_pooler: Pooler) -> None:
    """On PostgreSQL a cancel key dies with its session: once client A has left, a cancel request with A's key
    cancels nothing, whoever runs a query. Through the pooler the same, though client B (other settings) gets
    A's server (pool_size 1) and, in session mode, that server's PID as its own key's (session_real_backend_key)."""
    got: dict[str, Any] = {}
    for name, host, port in (("direct", pg.host, pg.port), ("pooled", mode_pooler.host, mode_pooler.port)):
        a = connect(host, port, SETTINGS_A)
        a_key = a.backend_key
        a.send(query("select pg_sleep(10)"))
        time.sleep(0.5)
        send_cancel(host, port, a_key)  # while A is there, its key cancels its query
        a_codes = error_codes(a.read_until("Z", timeout=8))
        a.terminate()
        with connect(host, port) as b:
            b.send(query("select pg_sleep(1.5)"))
            time.sleep(0.5)
            send_cancel(host, port, a_key)
            got[name] = (a_codes, error_codes(b.read_until("Z", timeout=10)))
    assert got["direct"] == (["57014"], [])
    assert got["pooled"] == got["direct"]


def replies(msgs: list[tuple[str, bytes]]) -> list[tuple[str, str]]:
    """What a client reads of a simple query's answer: errors by SQLSTATE, rows, command tags."""
    out = []
    for t, b in msgs:
        if t == "E":
            out.append(("E", parse_fields(b)["C"]))
        elif t == "D":
            out.append(("D", b[6:].decode(errors="replace")))
        elif t == "C":
            out.append(("C", b.rstrip(b"\0").decode()))
    return out


def test_default_transaction_read_only_is_a_setting_like_any_other(pg: Any, mode_pooler: Pooler) -> None:
    """PostgreSQL reports default_transaction_read_only, and a client may set it, in its startup packet too
    (`-c default_transaction_read_only=on`, the usual read-only connection). Through the pooler a startup
    value was dropped, and a value SET by one client stayed on the server for the next (pool_size 1)."""
    got: dict[str, Any] = {}
    steps = ["show default_transaction_read_only", "create temp table ro_t (x int)"]
    for name, host, port in (("direct", pg.host, pg.port), ("pooled", mode_pooler.host, mode_pooler.port)):
        ro = connect(host, port, {"options": "-c default_transaction_read_only=on"})
        r = [replies(ro.query(q)) for q in steps]
        ro.terminate()
        a = connect(host, port, SETTINGS_A)
        r += [replies(a.query("set default_transaction_read_only = on"))]
        a.terminate()
        with connect(host, port) as b:
            r += [replies(b.query(q)) for q in steps]
            b.query("drop table if exists ro_t")
        got[name] = r
    assert got["direct"][1] == [("E", "25006")] and got["direct"][4] == [("C", "CREATE TABLE")]
    assert got["pooled"] == got["direct"]


def test_protocol_versions_and_unknown_messages_answered_as_postgresql(pg: Any, mode_pooler: Pooler) -> None:
    """A startup packet asking for protocol 3.1 or 3.2, or with `_pq_.` options, gets NegotiateProtocolVersion
    (3.0, the options not recognised) before authentication, as from PostgreSQL 15 to 17 (18 speaks 3.2: a
    documented difference); one for protocol 2.0 gets
    PostgreSQL's refusal in that version's own error format (a client asking for 3.2 that hears nothing
    assumes 3.2). A message type PostgreSQL does not know gets its FATAL 08P01, word for word."""
    got: dict[str, Any] = {}
    for name, host, port, user in (("direct", pg.host, pg.port, SUPERUSER),
                                   ("pooled", mode_pooler.host, mode_pooler.port, SCRAM_USER)):
        seen = []
        for version, extra in (((3 << 16) | 1, {}), ((3 << 16) | 2, {"_pq_.foo": "1", "_pq_.bar": "x"}),
                               ((3 << 16), {"_pq_.foo": "1"})):
            with WireClient(host, port) as w:
                w.send(startup_message({"user": user, "database": DBNAME, **extra}, protocol=version))
                seen.append(w.read_message())  # then authentication, which differs (trust on PostgreSQL here)
        with WireClient(host, port) as w:
            w.send(startup_message({"user": user, "database": DBNAME}, protocol=2 << 16))
            seen.append(("v2", w.expect_closed()))  # (not protocol 3: the raw bytes)
        w = connect(host, port) if name == "pooled" else WireClient.connect(host, port, SUPERUSER, DBNAME, None)
        w.send(frame("x", b""))
        seen.append(("unknown", comparable(split_messages(w.expect_closed()))))
        w.close()
        got[name] = seen
    with connect(pg.host, pg.port) as c:
        major = server_major(c)
    if major >= 18:
        # PostgreSQL 18 speaks protocol 3.2 (and takes 3.1 without a word); the pooler answers as PostgreSQL up
        # to 17 does, which every client that asks for 3.2 accepts (docs/transparency.md, "Known differences").
        assert got["direct"][0][0] == "R" and got["direct"][1][0] == "v"
        got["direct"][:2] = [npv([]), npv(["_pq_.foo", "_pq_.bar"])]
        assert got["direct"][3][1].endswith(b"server supports 3.0 to 3.2\n\0")
        got["direct"][3] = ("v2", got["direct"][3][1].replace(b"to 3.2", b"to 3.0"))
    assert got["direct"][0] == npv([]) and got["direct"][2] == npv(["_pq_.foo"])
    assert got["pooled"] == got["direct"]


def npv(options: list[str]) -> tuple[str, bytes]:
    """NegotiateProtocolVersion as PostgreSQL 15 to 17 send it: protocol 3.0 and the options not recognised."""
    return "v", (3 << 16).to_bytes(4, "big") + len(options).to_bytes(4, "big") + b"".join(
        o.encode() + b"\0" for o in options)


def to_the_end(w: WireClient) -> list[Any]:
    """Every message up to the close, then how it closed: an end of file, or a reset (which loses what the
    client had not read yet)."""
    out: list[Any] = []
    try:
        while True:
            t, body = w.read_message(timeout=5)
            if t == "E":
                f = parse_fields(body)
                out.append((t, f["S"], f["C"]))
            elif t == "Z":
                out.append((t, body.decode()))
    except ConnectionResetError:
        out.append("reset")
    except ConnectionError:
        out.append("end of file")
    return out


def test_a_server_ending_the_session_reaches_the_client_as_postgresql_ends_it(pg: Any, mode_pooler: Pooler) -> None:
    """A server that ends its session with a FATAL of its own (pg_terminate_backend, an
    idle_in_transaction_session_timeout, a lost protocol synchronisation) while a client holds it (session
    mode, or inside a transaction): the client reads PostgreSQL's FATAL, then an end of file. The pooler
    closed such a client with a reset (tcp_so_linger 0), and the reset took the unread FATAL with it."""
    got: dict[str, Any] = {}
    killer = connect(pg.host, pg.port)
    for name, host, port in (("direct", pg.host, pg.port), ("pooled", mode_pooler.host, mode_pooler.port)):
        seen = []
        a = connect(host, port, SETTINGS_A)
        a.query("begin")
        killer.query(f"select pg_terminate_backend({a.query_rows('select pg_backend_pid()')[0][0]})")
        time.sleep(0.3)
        a.send(query("select 1"))
        seen.append(to_the_end(a))
        a.close()
        a = connect(host, port, {"options": "-c idle_in_transaction_session_timeout=200"})
        a.query("begin")
        a.query("select 1")  # (the pooler defers a lone BEGIN: transaction-mode.md)
        time.sleep(0.6)
        a.send(query("select 1"))
        seen.append(to_the_end(a))
        a.close()
        a = connect(host, port, SETTINGS_A)
        a.send(query("create temp table if not exists end_t (x int); copy end_t from stdin"))
        a.read_until("G")
        a.send(frame("d", b"1\n"), query("select 1"))  # a Query inside COPY: synchronisation is lost
        seen.append(to_the_end(a))
        a.close()
        with connect(host, port) as b:  # and the next client (pool_size 1) is served
            seen.append(b.query_rows("select 2"))
        got[name] = seen
    killer.close()
    assert got["direct"][0] == [("E", "FATAL", "57P01"), "end of file"]
    assert got["pooled"] == got["direct"]


SEQUENCE_SETUP = ("create table if not exists seq_t (id serial primary key, x int)",
                  "create sequence if not exists seq_s")
# What may leave a sequence value in the session: a column DEFAULT (no sequence named in the text), an
# explicit nextval() or setval() in a SELECT, and nextval() through the extended protocol.
SEQUENCE_USES = ("insert into seq_t (x) values (1)", "select nextval('seq_s') > 0",
                 "select setval('seq_s', 42) > 0", "extended")
# (B's first statement a BEGIN: the pooler defers it, and the discard goes ahead of it in the same write)
SEQUENCE_READS = ("begin", "select currval('seq_t_id_seq')", "rollback", "select currval('seq_s')",
                  "select lastval()")


def use_sequence(c: WireClient, how: str) -> list[tuple[str, str]]:
    if how != "extended":
        return replies(c.query(how))
    c.send(parse("", "select nextval('seq_s') > 0"), bind(), execute(), sync())
    return replies(c.read_until("Z"))


def test_a_clients_sequence_values_do_not_reach_the_next_client(pg: Any, mode_pooler: Pooler) -> None:
    """On PostgreSQL currval() and lastval() read what this session's nextval()/setval() left: 55000 in a
    session that never called one. Through the pooler client B (pool_size 1: client A's server) read A's
    values in transaction mode, whether A's nextval() was a column DEFAULT, explicit, or a setval()."""
    with connect(pg.host, pg.port) as setup:
        for q in SEQUENCE_SETUP:
            setup.query(q)
    got: dict[str, list[Any]] = {}
    for name, host, port in (("direct", pg.host, pg.port), ("pooled", mode_pooler.host, mode_pooler.port)):
        got[name] = []
        # B with A's settings gets the server as it is (the discard goes ahead of B's query); B without them
        # has it synced first (the discard goes with the sync).
        for how, b_settings in itertools.product(SEQUENCE_USES, (SETTINGS_A, None)):
            a = connect(host, port, SETTINGS_A)
            used = use_sequence(a, how)
            if mode_pooler.mode == "session":  # type: ignore[attr-defined]
                a.terminate()  # (pool_size 1: B gets A's server once A has left)
            with connect(host, port, b_settings) as b:
                got[name].append((how, used, [replies(b.query(q)) for q in SEQUENCE_READS]))
            a.close()
        # A client that neither draws nor reads sequence values changes nothing: A, back on its server after
        # B's transaction (pool_size 1), reads its own value there, as on PostgreSQL.
        a = connect(host, port, SETTINGS_A)
        a.query("select setval('seq_s', 99)")
        if mode_pooler.mode == "transaction":  # type: ignore[attr-defined]
            with connect(host, port, SETTINGS_A) as b:
                b.query("select count(*) from seq_t")
            got[name].append(replies(a.query("select currval('seq_s')")))
        a.close()
    assert got["direct"][0][2] == [[("C", "BEGIN")], [("E", "55000")], [("C", "ROLLBACK")], [("E", "55000")],
                                   [("E", "55000")]]
    assert got["pooled"] == got["direct"]


def test_sequence_values_stay_on_the_server_when_told_to(pg: Any, pooler_factory: Any) -> None:
    """transaction_discard_sequences: false keeps PgBouncer's behaviour: B reads A's value."""
    p = pooler_factory(pool_mode="transaction", pool_size=1, pool={"transaction_discard_sequences": False})
    with connect(p.host, p.port) as a, connect(p.host, p.port) as b:
        for q in SEQUENCE_SETUP:
            a.query(q)
        a.query("select setval('seq_s', 77)")
        assert replies(b.query("select currval('seq_s')")) == [("D", "77"), ("C", "SELECT 1")]


def test_session_mode_real_key_can_be_turned_off(pg: Any, pooler_factory: Any) -> None:
    p = pooler_factory(pool_mode="session", pool_size=2, general={"session_real_backend_key": False})
    with connect(p.host, p.port) as a:
        pid = int(a.query_rows("select pg_backend_pid()")[0][0] or 0)
        assert a.backend_key[0] != pid and a.backend_key[0] >= 1 << 22


def test_cancel_reaches_a_query_waiting_for_a_server(pg: Any, pooler_factory: Any) -> None:
    """Defect 9: 20 clients, pool_size 5, pg_sleep(5) each, all cancelled after 1 s: every one answers 57014
    within a second or two of its cancel (PostgreSQL cancels them all)."""
    p = pooler_factory(pool_mode="transaction", pool_size=5, general={"query_wait_timeout": 30000})
    clients = [connect(p.host, p.port) for _ in range(20)]
    results: list[Any] = [None] * 20
    try:
        for c in clients:
            c.send(query("select pg_sleep(5)"))
        time.sleep(1.0)
        t0 = time.monotonic()

        def cancel(i: int) -> None:
            with socket.create_connection((p.host, p.port)) as s:
                s.sendall(cancel_request(*clients[i].backend_key))
                s.recv(1)

        threads = [threading.Thread(target=cancel, args=(i,)) for i in range(20)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        for i, c in enumerate(clients):
            msgs = c.read_until("Z", timeout=10)
            errs = [parse_fields(b)["C"] for t, b in msgs if t == "E"]
            results[i] = (errs, time.monotonic() - t0, msgs[-1][1])
        assert all(r[0] == ["57014"] for r in results), results
        assert all(r[2] == b"I" for r in results)
        assert max(r[1] for r in results) < 3.0, results  # generous: the sleeps would take 5 s and more
        # and every client goes on normally
        for c in clients:
            assert c.query_rows("select 1") == [["1"]]
    finally:
        for c in clients:
            c.close()
