"""params.py and leaks.py: the pure pieces behind startup settings that follow their client and the cleanup of
temp objects and advisory locks (the integration tests compare the whole with PostgreSQL)."""

from __future__ import annotations

import pytest

from pgdoorman.core.leaks import TAIL, may_leave_state
from pgdoorman.core.params import (
    OptionsError,
    canonical_name,
    isolation_refusal,
    known_spelling,
    parse_options,
    server_major,
    split_options,
    startup_isolation,
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
    # PostgreSQL's own switches, several in one word, an argument attached or next; -- ends them
    assert parse_options("-eP -S 4MB -fs -tpa -C x -- ") == [
        ("datestyle", "euro"), ("ignore_system_indexes", "true"), ("work_mem", "4MB"),
        ("enable_seqscan", "false"), ("log_parser_stats", "true")]
    assert parse_options("--") == []
    for bad, message, sqlstate in (
            ("-z", "invalid command-line argument for server process: -z", "42601"),
            ("-c", "invalid command-line argument for server process: -c", "42601"),
            ("-c novalue", "-c novalue requires a value", "42601"),
            ("--novalue", "--novalue requires a value", "42601"),
            ("-c -x", "-c -x requires a value", "42601"),
            ("-- -c a=1", "invalid command-line argument for server process: -c", "42601"),
            ("--=x", 'unrecognized configuration parameter ""', "42704"),
            ("-fz", "invalid command-line argument for server process: -fz", "42601"),
            ("plain", "invalid command-line argument for server process: plain", "42601")):
        with pytest.raises(OptionsError) as ei:
            parse_options(bad)
        assert (str(ei.value), ei.value.sqlstate) == (message, sqlstate)


def test_startup_settings_refused_as_postgresql_refuses_them() -> None:
    for params, sqlstate in (({"is_superuser": "on"}, "55P02"), ({"options": "-c server_version_num=1"}, "55P02"),
                             ({"session_authorization": "other"}, "42501")):
        with pytest.raises(OptionsError) as ei:
            startup_settings({"user": "u", **params})
        assert ei.value.sqlstate == sqlstate
    assert startup_settings({"user": "u", "session_authorization": "u"}) == {}  # its own: nothing to do
    # Internal up to PostgreSQL 15, no settings from 16 on: the server's set_config() at login refuses them
    # as that version's startup does (55P02 or 42704; test_transparency.py compares on the cluster).
    assert startup_settings({"user": "u", "options": "-c lc_collate=C", "LC_CTYPE": "C"}) == {
        "lc_collate": "C", "lc_ctype": "C"}


def test_startup_isolation_answered_by_the_servers_version() -> None:
    """PostgreSQL up to 17 refuses a startup transaction_isolation level (25001), 18 takes it; a value that is
    no level is refused by every version (22023). test_transparency.py compares with each server."""
    packet = {"user": "u", "options": "-c transaction_isolation=serializable -c work_mem=4MB"}
    assert startup_settings(packet) == {"work_mem": "4MB"}  # (never a setting to replay)
    assert startup_isolation(packet) == "serializable"
    assert startup_isolation({**packet, "Transaction_Isolation": "read committed"}) == "read committed"
    assert startup_isolation({"user": "u", "options": "-c work_mem=4MB"}) is None
    assert startup_isolation({"user": "u", "options": "--transaction-isolation=serializable"}) == "serializable"
    for version, value, sqlstate in (("15.18 (Debian 15.18-0+deb12u1)", "serializable", "25001"),
                                     ("17.10", "Repeatable Read", "25001"), ("", "serializable", "25001"),
                                     ("18.4", "Repeatable Read", None), ("19beta1", "read uncommitted", None),
                                     ("18.4", "bogus", "22023"), ("15.18", "bogus", "22023")):
        e = isolation_refusal(value, version)
        assert (e.sqlstate if e is not None else None) == sqlstate, (version, value)
    assert [server_major(v) for v in ("18.4", "15.18 (Debian 15.18-0+deb12u1)", "19beta1", "9.6", "")] == [
        18, 15, 19, 9, 0]
    e = isolation_refusal("bogus", "18.4")
    assert e is not None and (str(e), e.hint) == ('invalid value for parameter "transaction_isolation": "bogus"',
                                                  "Available values: serializable, repeatable read, read committed, "
                                                  "read uncommitted.")


def test_startup_settings_keys_and_precedence() -> None:
    got = startup_settings({"user": "u", "database": "d", "options": "-c work_mem=1MB -c TimeZone=UTC",
                            "timezone": "Asia/Tokyo", "_pq_.x": "1", "replication": "false",
                            "Application_Name": "a"})
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


def test_sync_sets_a_value_other_than_the_startup_one_even_when_the_server_shows_it() -> None:
    """The server shows the pool's TimeZone (its default, not set in its session); the client set that value
    itself, away from its startup value: it is set, so that the read-back sees it held (not a RESET)."""
    base = {"TimeZone": "Asia/Tokyo", "DateStyle": "ISO, MDY"}
    want = {"TimeZone": "Etc/UTC", "DateStyle": "ISO, MDY"}
    reported = {"TimeZone": "Etc/UTC", "DateStyle": "ISO, MDY"}
    assert sync_calls(want, reported, {}, base) == ["pg_catalog.set_config(E'TimeZone', E'Etc/UTC', false)"]
    assert sync_calls(want, reported, {}) == []  # (without `base`: session mode)
    assert sync_calls(base, {**reported, "TimeZone": "Asia/Tokyo"}, {}, base) == []


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
