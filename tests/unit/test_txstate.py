"""core/txstate.py and leaks.py's bits: the end-of-transaction check's query and how its rows become a client's
settings and pins."""

from __future__ import annotations

from pgdoorman.core import leaks, txstate


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
