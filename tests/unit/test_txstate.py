"""core/txstate.py and leaks.py's bits: the end-of-transaction check's query and how its rows become a client's
settings and pins."""

from __future__ import annotations

import pytest

from pgdoorman.core import leaks, sqllex, txstate


def test_check_query_parts() -> None:
    assert txstate.check_query(True, False, True) == txstate.SETTINGS_QUERY + "; " + txstate.RESET
    assert txstate.check_query(False, True, False) == txstate.PINS_QUERY
    q = txstate.check_query(True, True, False)
    assert q.startswith(txstate.SETTINGS_QUERY) and q.endswith(txstate.PINS_QUERY) and "RESET" not in q


def test_read_rows_orders_role_last_and_skips_defaults() -> None:
    rows: list[list[str | None]] = [
        ["work_mem", "9MB"], ["DateStyle", "German, DMY"], ["session_authorization", "app"], ["role", "none"],
        ["temp,cursor"],
    ]
    settings, pins, customs = txstate.read_rows(rows, "app")
    assert settings == [("work_mem", "9MB"), ("DateStyle", "German, DMY")]
    assert pins == "temp,cursor" and customs == {}
    settings, pins, customs = txstate.read_rows(
        [["role", "r1", None], ["session_authorization", "bob", None], ["geqo", "off", None],
         ["MyApp.X", "1", "custom"], ["myapp.never", None, "custom"], [""]], "app")
    assert settings == [("geqo", "off"), ("session_authorization", "bob"), ("role", "r1")]
    assert pins == "" and customs == {"myapp.x": "1", "myapp.never": None}


def test_followed_puts_the_session_over_the_login_settings() -> None:
    base = {"TimeZone": "UTC", "application_name": "a", "work_mem": "5MB"}
    want = txstate.followed(base, [("work_mem", "9MB"), ("geqo", "off")])
    assert want == {"TimeZone": "UTC", "application_name": "a", "work_mem": "9MB", "geqo": "off"}
    assert txstate.followed(base, []) == base and txstate.followed(base, []) is not base


def test_followed_custom_settings() -> None:
    """A custom setting read back stays wanted (with '' too: once defined it stays defined), one not defined is
    not wanted, and one given at startup that reads '' was RESET on a server whose own value is '': back to
    its startup value. Role stays last."""
    base = {"myapp.start": "s", "TimeZone": "UTC"}
    want = txstate.followed(base, [("work_mem", "9MB"), ("role", "r")],
                            {"myapp.x": "1", "myapp.e": "", "myapp.never": None, "myapp.start": ""})
    assert want == {"myapp.start": "s", "TimeZone": "UTC", "myapp.x": "1", "myapp.e": "", "work_mem": "9MB",
                    "role": "r"}
    assert list(want)[-1] == "role"
    assert txstate.followed(base, [], {"myapp.start": "t"})["myapp.start"] == "t"



def test_lost_at_reset_names_the_startup_settings_the_session_no_longer_holds() -> None:
    startup = {"work_mem": "7MB", "TimeZone": "Asia/Tokyo", "myapp.x": "1", "myapp.y": "2", "gone": "x"}
    base = {"work_mem": "7MB", "TimeZone": "Asia/Tokyo", "DateStyle": "ISO, MDY", "myapp.x": "1", "myapp.y": "2"}
    session = [("TimeZone", "UTC"), ("search_path", "s1")]  # TimeZone was SET again after the RESET
    customs: dict[str, str | None] = {"myapp.x": "", "myapp.y": "3"}
    assert txstate.lost_at_reset(startup, base, session, customs) == {"work_mem": "7MB", "myapp.x": "1"}
    assert txstate.lost_at_reset({}, base, [], {}) == {}

def test_custom_settings_read_back() -> None:
    assert txstate.customs_to_read({"TimeZone": "UTC", "myapp.a": "1"}, ("x.y",)) == ["myapp.a", "x.y"]
    q = txstate.check_query(True, False, True, ["x.y", "myapp.a", "x.y"])
    assert q.startswith("WITH s AS (SELECT name, source FROM pg_catalog.pg_settings WHERE ")
    assert q.count("pg_settings") == 1  # read once
    assert "ARRAY[E'myapp.a', E'x.y']" in q and q.endswith("; " + txstate.RESET)
    assert txstate.check_query(True, False, False, []) == txstate.SETTINGS_QUERY
    assert "'custom'" not in txstate.check_query(False, True, False, ["x.y"])
    assert "E'it''s.x'" in txstate.settings_query(["it's.x"])
    named = txstate.noted((), ["a.b", "a.b", "c.d", "w.x"], {"w.x": "1"})
    assert named == ("a.b", "c.d")
    assert txstate.noted(named, ["a.b"], {}) is named
    many = txstate.noted((), [f"n.{i}" for i in range(100)], {})
    assert len(many) == txstate.MAX_NAMED and many[-1] == "n.99"


def test_leaks_bits() -> None:
    assert leaks.may_leave_state(b"CREATE TEMP TABLE t ()") == leaks.PINS
    assert leaks.may_leave_state(b"select pg_catalog.SET_CONFIG('a', 'b', false)") == leaks.SETTINGS
    assert leaks.may_leave_state(b"select set_config('x', '1', false), pg_advisory_lock(1)") == \
        leaks.PINS | leaks.SETTINGS
    assert leaks.may_leave_state(b"select 1") == 0
    assert leaks.TAIL >= len(b"set_config") - 1


@pytest.mark.parametrize(("sql", "why"), [
    ("CREATE TEMP TABLE t (a int)", "temp"),
    ("create or replace temporary view v as select 1", "temp"),
    ("CREATE GLOBAL TEMPORARY TABLE t ()", "temp"),
    ("create table pg_temp.t ()", "temp"),
    ("select 1 into temp t", "temp"),
    ("SELECT pg_advisory_lock(1)", "advisory_lock"),
    ("select pg_catalog.pg_try_advisory_lock_shared(1, 2)", "advisory_lock"),
    ("declare c cursor with hold for select 1", "cursor"),
    ("PREPARE p AS SELECT $1", "prepare"),
    ("select 1; /* a comment ; */ prepare p as select 2", "prepare"),
    ("SELECT pg_advisory_xact_lock(1)", None),
    ("select 'create temp table t ()'", None),
    ("select E'it''s \\' create temp table x', 1", None),
    ("select $$ ; create temp table t () $$", None),
    ("select $f$ pg_advisory_lock(1) $f$", None),
    ('select "pg_advisory_lock"', None),
    ("-- create temp table t\nselect 1", None),
    ("/* nested /* create temp table t */ prepare x */ select 1", None),
    ("insert into temp values (1)", None),
    ("declare c cursor for select 1", None),
    ("prepare transaction 'x'", None),
    ("create table temperature (a int)", None),
    ("select date'2020-01-01', pg_advisory_lock(3)", "advisory_lock"),
    ("do $$ begin create temp table t (); end $$", None),
])
def test_lexer_recognises_what_pins(sql: str, why: str | None) -> None:
    assert sqllex.pinning_text(sql.encode()) == why


@pytest.mark.parametrize(("sql", "names"), [
    ("SET myapp.user_id = 42", ["myapp.user_id"]),
    ("set local MyApp.X to default", ["myapp.x"]),
    ("SET SESSION a.b.c TO 'v'", ["a.b.c"]),
    ("SET session.x = 1", ["session.x"]),  # a prefix named like the keyword
    ("RESET myapp . x", ["myapp.x"]),
    ('/* c */ SET "My"."Q" = 1; select 1; -- x\n reset z.w', ["my.q", "z.w"]),
    ("select pg_catalog.SET_CONFIG('MyApp.Y', $1, false), set_config($$d.q$$, 'v', true)", ["myapp.y", "d.q"]),
    ("select set_config('it''s.x', 'v', false)", ["it's.x"]),
    ("SET work_mem = '1MB'; RESET ALL; SET TIME ZONE 'UTC'", []),
    ("select set_config('work_mem', '1MB', false), set_config(name, 'v', false)", []),  # no dot, not a literal
    ("UPDATE s.t SET a = 1.5", []),
    ("select 'SET a.b = 1'", []),
    ("do $$ begin perform set_config('a.b', '1', false); end $$", []),  # inside a body: not seen
])
def test_lexer_finds_custom_setting_names(sql: str, names: list[str]) -> None:
    assert sqllex.setting_names_text(sql.encode()) == names


def test_statement_settings_name_parameters() -> None:
    """A prepared statement's set_config($n, ...) names its setting by parameter: resolved at each Bind."""
    assert sqllex.statement_settings(b"select set_config($1, $2, false)") == (0,)
    st = sqllex.statement_settings(b"select pg_catalog.set_config('A.b', $1, true), set_config($2, 'x', false)")
    assert st == ("a.b", 1)
    assert sqllex.statement_settings(b"SET a.b = 1") == ("a.b",)
    assert sqllex.statement_settings(b"select $1::text") == ()
    assert sqllex.bound_names(st, (memoryview(b"v"), memoryview(b"My.X"))) == ("a.b", "my.x")
    assert sqllex.bound_names(st, (None, None)) == ("a.b",)
    assert sqllex.bound_names((0, 1), (memoryview(b"work_mem"),)) == ()  # no dot; parameter missing


def test_lexer_splits_statements_outside_parentheses() -> None:
    stmts = list(sqllex.statements("create rule r as on insert to t do (select 1; select 2); select 3;;"))
    assert len(stmts) == 2


def test_refusal_is_one_do_block() -> None:
    q = txstate.refusal("temp", "app'$x")
    assert q.startswith("DO $pgdoorman$") and q.count("$pgdoorman$") == 2 and "'0A000'" in q
    assert "temporary tables are not supported" in q and "app''x" in q
