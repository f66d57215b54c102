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
    settings, pins = txstate.read_rows(rows, "app")
    assert settings == [("work_mem", "9MB"), ("DateStyle", "German, DMY")]
    assert pins == "temp,cursor"
    settings, pins = txstate.read_rows([["role", "r1"], ["session_authorization", "bob"], ["geqo", "off"], [""]],
                                       "app")
    assert settings == [("geqo", "off"), ("session_authorization", "bob"), ("role", "r1")]
    assert pins == ""


def test_followed_puts_the_session_over_the_login_settings() -> None:
    base = {"TimeZone": "UTC", "application_name": "a", "work_mem": "5MB"}
    want = txstate.followed(base, [("work_mem", "9MB"), ("geqo", "off")])
    assert want == {"TimeZone": "UTC", "application_name": "a", "work_mem": "9MB", "geqo": "off"}
    assert txstate.followed(base, []) == base and txstate.followed(base, []) is not base


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


def test_lexer_splits_statements_outside_parentheses() -> None:
    stmts = list(sqllex.statements("create rule r as on insert to t do (select 1; select 2); select 3;;"))
    assert len(stmts) == 2


def test_refusal_is_one_do_block() -> None:
    q = txstate.refusal("temp", "app'$x")
    assert q.startswith("DO $pgdoorman$") and q.count("$pgdoorman$") == 2 and "'0A000'" in q
    assert "temporary tables are not supported" in q and "app''x" in q
