"""The admin console's result-set renderer (golden wire bytes), cell formatting, the column tables of
every SHOW subcommand (PgDoorman's order), psql tab completion and log filter parsing."""

from __future__ import annotations

import logging

import pytest

from pgdoorman import logs
from pgdoorman.admin.console import tab_completion
from pgdoorman.admin.parser import SHOW_SUBCOMMANDS
from pgdoorman.admin.resultset import NUMERIC, TEXT, ResultSet, fmt, render
from pgdoorman.admin.show import SHOW_BUILDERS, SHOW_COLUMNS
from pgdoorman.protocol import messages as m

GOLDEN = (
    # RowDescription: 2 columns, ("a", text) and ("n", numeric), no table info, text format.
    b"T\x00\x00\x00\x2e\x00\x02"
    b"a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00"
    b"n\x00\x00\x00\x00\x00\x00\x00\x00\x00\x06\xa4\xff\xff\xff\xff\xff\xff\x00\x00"
    # DataRow ('x', '1'), DataRow (NULL, '2.5')
    b"D\x00\x00\x00\x10\x00\x02\x00\x00\x00\x01x\x00\x00\x00\x011"
    b"D\x00\x00\x00\x11\x00\x02\xff\xff\xff\xff\x00\x00\x00\x032.5"
    # CommandComplete SHOW
    b"C\x00\x00\x00\x09SHOW\x00"
)


def test_render_golden_bytes() -> None:
    rs = ResultSet([("a", TEXT), ("n", NUMERIC)], [["x", 1], [None, 2.5]])
    assert render(rs) == GOLDEN


def test_render_parses_back() -> None:
    rs = ResultSet([("list", TEXT), ("items", NUMERIC)], [["pools", 3], ["users", 0]], tag="SHOW")
    msgs = list(m.iter_messages(render(rs)))
    assert [chr(t) for t, _ in msgs] == ["T", "D", "D", "C"]
    assert msgs[-1][1] == b"SHOW\x00"


def test_render_rejects_ragged_rows() -> None:
    with pytest.raises(ValueError):
        render(ResultSet([("a", TEXT)], [["x", "y"]]))


@pytest.mark.parametrize(
    "value,text",
    [(None, None), (0, "0"), (-7, "-7"), (0.0, "0"), (3.0, "3"), (0.5, "0.5"), (1e-06, "1e-06"),
     (True, "t"), (False, "f"), ("abc", "abc"), ("", "")],
)
def test_cell_format(value: object, text: str | None) -> None:
    assert fmt(value) == text  # type: ignore[arg-type]


EXPECTED_COLUMNS = {
    "startup_parameters": "user database parameter value source state",
    "auth_query": "database cache_entries cache_hits cache_misses cache_refetches cache_rate_limited auth_success "
                  "auth_failure executor_queries executor_errors dynamic_pools_current dynamic_pools_created "
                  "dynamic_pools_destroyed",
    "pools": "database user pool_mode cl_idle cl_active cl_waiting cl_cancel_req sv_active sv_idle sv_used "
             "sv_login pool_size maxwait maxwait_us avg_xact_time paused fallback_active oldest_active_age_ms",
    "pools_extended": "database user cl_active cl_waiting sv_active sv_idle sv_used sv_login maxwait maxwait_us "
                      "pool_mode bytes_recieved bytes_sent query_0.99 transaction_0.99 query_0.95 "
                      "transaction_0.95 query_0.5 transaction_0.5",
    "pools_memory": "database user pool_prepared_count pool_prepared_bytes client_prepared_count "
                    "client_prepared_bytes client_named_count client_anonymous_count "
                    "client_anonymous_evictions_alive async_clients",
    "clients": "client_id database user application_name addr tls state wait transaction_count query_count "
               "error_count age_seconds pinned",
    "servers": "server_id server_process_id database_name user application_name tls state wait transaction_count "
               "query_count bytes_sent bytes_received age_seconds prepare_cache_hit prepare_cache_miss "
               "prepare_cache_size pinned",
    "stats": "database user total_xact_count total_query_count total_received total_sent total_xact_time "
             "total_query_time total_wait_time total_errors avg_xact_count avg_query_count avg_recv avg_sent "
             "avg_errors avg_xact_time avg_query_time avg_wait_time",
    "databases": "name host port database force_user pool_size min_pool_size reserve_pool pool_mode "
                 "max_connections current_connections",
    "users": "name pool_mode",
    "config": "key value default changeable",
    "connections": "total errors tls plain cancel",
    "lists": "list items",
    "sockets": " ".join([*(f"{p}_{s}" for p in ("tcp", "tcp6") for s in (
        "established syn_sent syn_recv fin_wait1 fin_wait2 time_wait close close_wait last_ack listen closing "
        "new_syn_recv bound_inactive").split()),
        "unix_free unix_unconnected unix_connecting unix_connected unix_disconnecting unix_dgram unix_seq_packet",
        "unknown"]),
    "prepared_statements": "pool hash name query count_used kind",
    "pool_coordinator": "database max_db_conn current reserve_size reserve_used evictions reserve_acq exhaustions",
    "pool_scaling": "user database inflight creates gate_waits gate_budget_ex antic_notify antic_timeout "
                    "create_fallback replenish_def",
    "help": "item",
    "interner": "kind entries bytes",
    "listeners": "user database state server_pid channels clients connects failures received delivered overflows removed",
    "log_level": "log_level",
    "version": "version",
}


def test_show_columns_in_pgdoorman_order() -> None:
    assert set(SHOW_COLUMNS) == set(SHOW_SUBCOMMANDS) == set(SHOW_BUILDERS) == set(EXPECTED_COLUMNS)
    for sub, names in EXPECTED_COLUMNS.items():
        assert [c[0] for c in SHOW_COLUMNS[sub]] == names.split(), sub


def test_tab_completion_answers() -> None:
    show = tab_completion("SELECT pg_catalog.lower(name) FROM pg_catalog.pg_settings "
                          "WHERE pg_catalog.lower(name) LIKE pg_catalog.lower('po%')")
    assert [r[0] for r in show.rows] == ["pools", "pools_extended", "pools_memory", "pool_coordinator",
                                         "pool_scaling"]
    assert show.tag == "SELECT 5"
    every = tab_completion("SELECT name FROM pg_catalog.pg_settings")
    assert [r[0] for r in every.rows] == list(SHOW_SUBCOMMANDS)
    settable = tab_completion("SELECT name FROM pg_catalog.pg_settings WHERE context IN ('user', 'superuser') "
                              "AND name LIKE 'log%'")
    assert [r[0] for r in settable.rows] == ["log_level"]
    vartype = tab_completion("SELECT vartype FROM pg_catalog.pg_settings WHERE name = 'log_level'")
    assert vartype.rows == [["enum"]]
    enum = tab_completion("SELECT val FROM (SELECT name, pg_catalog.unnest(enumvals) AS val "
                          "FROM pg_catalog.pg_settings) ss WHERE val LIKE 'd%'")
    assert [r[0] for r in enum.rows] == ["debug", "default"]


def test_log_filter_parsing() -> None:
    assert logs.parse_filter("info") == ("info", [])
    assert logs.parse_filter("WARN, pg_doorman::pool=debug") == ("warn", [("pgdoorman.pool", "debug")])
    assert logs.parse_filter("pgdoorman.server=trace") == (None, [("pgdoorman.server", "trace")])
    for bad in ("", "loud", "info,debug", "info,,", "x y=debug", "pool=loud"):
        with pytest.raises(ValueError):
            logs.parse_filter(bad)


def test_set_filter_applies_and_default_restores() -> None:
    root = logging.getLogger()
    before = root.level
    try:
        logs.set_level("info")
        logs._initial = None
        logs.remember_initial()
        assert logs.set_filter("warn,pg_doorman::pool=debug") == "warn,pgdoorman.pool=debug"
        assert root.level == logging.WARNING
        assert logging.getLogger("pgdoorman.pool").level == logging.DEBUG
        assert logs.current_filter() == "warn,pgdoorman.pool=debug"
        assert logs.set_filter("default") == "info"
        assert root.level == logging.INFO
        assert logging.getLogger("pgdoorman.pool").level == logging.NOTSET
        with pytest.raises(ValueError):
            logs.set_filter("chatty")
        assert logs.current_filter() == "info"
    finally:
        root.setLevel(before)
        logs._current = None


def test_docs_list_every_command_and_column() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "admin.md").read_text()
    for sub, cols in EXPECTED_COLUMNS.items():
        assert f"### SHOW {sub.upper()}" in doc, sub
        for col in cols.split():
            assert f"`{col}`" in doc, (sub, col)
    for cmd in ("PAUSE [db]", "RESUME [db]", "RECONNECT [db]", "KILL <db>", "`RELOAD`", "`SHUTDOWN`",
                "SET log_level"):
        assert cmd in doc, cmd
