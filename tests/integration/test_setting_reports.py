"""ParameterStatus after `SET name TO DEFAULT`, RESET and DISCARD ALL, compared message by message with
PostgreSQL (session/reports.py). Client A starts with settings that are not the pool's; on PostgreSQL a
RESET or TO DEFAULT returns to them, on a pooled server to the pool's values. Before session/reports.py the
client heard the pool's value before its ReadyForQuery and its startup value after it (TO DEFAULT, and a RESET
followed by a SET in the same query), or nothing before the ReadyForQuery (a RESET of a setting the client had
set to the pool's own value, which the server does not report)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_transparency import (  # noqa: F401  (mode_pooler: the fixture)
    SETTINGS_A,
    _extended,
    _quiet,
    connect,
    everything,
    mode_pooler,
    show_all,
)
from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER
from tests.support.pooler import Pooler

pytestmark = pytest.mark.timeout(180)

POOL_APP = "pg_doorman"  # the pool's application_name (config/loader.py: pools without one)


def _sorted_reports(answer: list[Any]) -> list[Any]:
    """A request's ParameterStatus messages (they come together, before its ReadyForQuery) by name: their
    order is PostgreSQL's own and differs between versions (15 sorts them, and so does the pooler then; 16 and
    later send them in the reverse order of the changes, and one the server did not report goes after those it
    did)."""
    reports = sorted((m for m in answer if m[0] == "S"), key=lambda m: m[1].lower())
    return [m for m in answer if m[0] != "S" and m[0] != "Z"] + reports + [m for m in answer if m[0] == "Z"]


def steps(pool_tz: str) -> list[str]:
    return [
        "set timezone to default",  # nothing changed: PostgreSQL reports nothing (the server: its own value)
        "set timezone = 'UTC'", "set timezone to default",  # back to the startup value: reported
        f"set timezone = '{pool_tz}'", "show timezone", "select 1", "show timezone",  # the pool's value, kept
        f"set timezone = '{pool_tz}'", "reset timezone",  # the server's value does not change: no report there
        f"set timezone = '{pool_tz}'", "reset all",
        "set datestyle = 'German'", "reset all; set timezone = 'UTC'",  # a RESET, then a SET in one query
        "reset all; set datestyle = 'German'", "select 1",
        "set application_name to default", "set application_name = 'x'", "set application_name to default",
        f"set application_name = '{POOL_APP}'", "reset application_name",
        f"set timezone = '{pool_tz}'", "discard all", "select 2",
        "set timezone = 'UTC'", "set datestyle = 'German'", "set datestyle to default; set timezone to default",
        "set timezone = 'UTC'", "begin", "set timezone to default", "rollback", "show timezone",
        f"set timezone = '{pool_tz}'", "set timezone to default",  # the server's value does not change either
        f"set timezone = '{pool_tz}'", "set timezone to default; set datestyle = 'German'", "show timezone",
        "set intervalstyle = 'iso_8601'", "set application_name = 'y'", "reset all",  # several reports at once
        "set timezone = 'UTC'", "set local timezone to default", "show timezone",  # (no block: nothing changes)
    ]


def test_reports_after_set_to_default_and_reset_are_postgresqls(pg: Any, mode_pooler: Pooler) -> None:  # noqa: F811
    """Simple and extended protocol, both modes, pool_size 1; in transaction mode client B (no startup
    settings) uses the server after each of A's requests. Inside a transaction a TO DEFAULT still reports the
    pool's value (docs/transparency.md): the reports before a ReadyForQuery with status T are not compared
    (the ROLLBACK's are: the value the session goes back to)."""
    with connect(pg.host, pg.port) as plain:
        pool_tz = plain.query_rows("show timezone")[0][0]
        exact = int(plain.parameters["server_version"].split(".")[0]) < 16  # (else the order is normalised)
    assert pool_tz != SETTINGS_A["TimeZone"]
    transaction = mode_pooler.mode == "transaction"  # type: ignore[attr-defined]
    got: dict[str, Any] = {}
    for name, host, port in (("direct", pg.host, pg.port), ("pooled", mode_pooler.host, mode_pooler.port)):
        out = []
        a = connect(host, port, SETTINGS_A)
        for how in ("simple", "extended"):
            for q in steps(pool_tz) if how == "simple" else [q for q in steps(pool_tz) if ";" not in q]:
                answer = everything(a.query(q)) if how == "simple" else _extended(a, q)
                if answer[-1] == ("Z", b"T"):  # (its report differs: the pool's value)
                    answer = [m for m in answer if m[0] != "S"]
                out.append((how, q, answer if exact else _sorted_reports(answer),
                            _quiet(a) if answer[-1] == ("Z", b"I") else []))
                if transaction and answer[-1] == ("Z", b"I"):
                    with connect(host, port) as b:
                        out.append(("b", everything(b.query("show timezone"))))
        out.append(("shown", show_all(a)))
        a.close()
        got[name] = out
    direct = got["direct"]
    assert ("simple", "set timezone to default", [("C", b"SET"), ("Z", b"I")], []) in direct
    assert ("simple", "reset timezone", [("C", b"RESET"), ("S", "TimeZone", "Asia/Tokyo"), ("Z", b"I")], []) \
        in direct
    assert got["pooled"] == direct


def test_psycopg_reads_timestamps_in_the_zone_postgresql_reports(pg: Any, mode_pooler: Pooler) -> None:  # noqa: F811
    """psycopg 3 gives a timestamptz the time zone of the connection's last TimeZone report. Through the
    pooler, right after `SET timezone TO DEFAULT` that was the pool's zone (its report came first, the
    startup value only after the ReadyForQuery), so the next rows came back in the wrong zone."""
    import psycopg

    got = {}
    for name, host, port in (("direct", pg.host, pg.port), ("pooled", mode_pooler.host, mode_pooler.port)):
        with psycopg.connect(host=host, port=port, user=SCRAM_USER, password=SCRAM_PASSWORD, dbname=DBNAME,
                             options="-c TimeZone=Asia/Tokyo", application_name="app-1", autocommit=True) as c:
            seen = []
            for q in ["set timezone = 'Etc/UTC'", "set timezone to default", f"set application_name = '{POOL_APP}'",
                      "reset application_name", "set timezone = 'UTC'", "set timezone to default", "discard all"]:
                c.execute(q)
                row = c.execute("select now()").fetchone()
                assert row is not None
                seen.append((q, c.info.parameter_status("TimeZone"), c.info.parameter_status("application_name"),
                             str(row[0].tzinfo)))
            got[name] = seen
    assert got["direct"][1][1:] == ("Asia/Tokyo", "app-1", "Asia/Tokyo")
    assert got["pooled"] == got["direct"]
