"""params.py and leaks.py: the pure pieces behind startup settings that follow their client and the cleanup of
temp objects and advisory locks (the integration tests compare the whole with PostgreSQL)."""

from __future__ import annotations

import pytest

from pgdoorman.core.leaks import TAIL, may_leave_state
from pgdoorman.core.params import (
    OptionsError,
    canonical_name,
    known_spelling,
    parse_options,
    split_options,
    startup_settings,
    sync_calls,
)


def test_split_options_as_pg_split_opts() -> None:
    assert split_options("  -c a=1\t-c  b=2 ") == ["-c", "a=1", "-c", "b=2"]
    assert split_options(r"-c search_path=a\ b") == ["-c", "search_path=a b"]
    assert split_options("x\\") == ["x"]
    assert split_options("") == []


def test_parse_options_forms() -> None:
    assert parse_options("-c a=1 -cb=2 --c-d=3") == [("a", "1"), ("b", "2"), ("c_d", "3")]
    assert parse_options("-c lock_timeout=4s --geqo=off") == [("lock_timeout", "4s"), ("geqo", "off")]
    for bad in ("-z", "-c", "-c novalue", "--=x", "plain"):
        with pytest.raises(OptionsError):
            parse_options(bad)


def test_startup_settings_keys_and_precedence() -> None:
    got = startup_settings({"user": "u", "database": "d", "options": "-c work_mem=1MB -c TimeZone=UTC",
                            "timezone": "Asia/Tokyo", "_pq_.x": "1", "replication": "false",
                            "is_superuser": "on", "Application_Name": "a"})
    # The packet's own keys win over options; reported settings keep PostgreSQL's spelling; read-only and
    # protocol keys are not settings.
    assert got == {"work_mem": "1MB", "TimeZone": "Asia/Tokyo", "application_name": "a"}
    assert canonical_name("DATESTYLE") == "DateStyle" and canonical_name("Work_Mem") == "work_mem"


def test_known_spelling_only_where_certain() -> None:
    assert known_spelling("application_name", "app-1") == "app-1"
    assert known_spelling("application_name", "x" * 64) is None  # PostgreSQL truncates it
    assert known_spelling("application_name", "é") is None
    assert known_spelling("client_encoding", "utf8") is None  # reported as UTF8


def test_sync_calls_set_reset_and_unknown() -> None:
    extra: dict[str, str] = {"search_path": "s1", "work_mem": "\x00"}
    calls = sync_calls({"TimeZone": "UTC", "work_mem": "7MB"}, {"TimeZone": "Etc/UTC"}, extra)
    assert calls == [
        "pg_catalog.set_config(E'TimeZone', E'UTC', false)",
        "pg_catalog.set_config(E'work_mem', E'7MB', false)",
        "pg_catalog.set_config(E'search_path', NULL, false)",
    ]
    assert extra == {"work_mem": "7MB"}
    assert sync_calls({"TimeZone": "UTC", "work_mem": "7MB"}, {"TimeZone": "UTC"}, extra) == []
    assert sync_calls({"application_name": "it's\\"}, {}, {}) == [
        "pg_catalog.set_config(E'application_name', E'it''s\\\\', false)"]


@pytest.mark.parametrize("text", [b"create TEMP table t (a int)", b"CREATE TEMPORARY TABLE t()",
                                  b"select * from pg_temp.t", b"select pg_advisory_lock(1)",
                                  b"SELECT PG_TRY_ADVISORY_LOCK_SHARED(1)", b"select temperature from w"])
def test_leaves_state(text: bytes) -> None:
    assert may_leave_state(text)


@pytest.mark.parametrize("text", [b"select 1", b"update t set a = 1", b"begin", b"select tem_p"])
def test_leaves_no_state(text: bytes) -> None:
    assert not may_leave_state(text)


def test_tail_covers_the_longest_keyword() -> None:
    assert TAIL >= len(b"advisory") - 1
