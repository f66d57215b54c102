"""The admin console's command parser: statement splitting, keywords, arguments and the SQLSTATEs of
bad input (58000 unknown command, 42601 bad arguments), without a running pooler."""

from __future__ import annotations

import pytest

from pgdoorman.admin.parser import (
    SHOW_SUBCOMMANDS,
    UNSUPPORTED,
    UNSUPPORTED_SHOW,
    Command,
    ParseError,
    parse,
    split_statements,
    tokenize,
)


@pytest.mark.parametrize("sub", SHOW_SUBCOMMANDS)
def test_every_show_subcommand_any_case_with_semicolon(sub: str) -> None:
    assert parse(f"show {sub}") == [Command("SHOW", sub)]
    assert parse(f"SHOW {sub.upper()};") == [Command("SHOW", sub)]
    assert parse(f"  Show\t{sub.title()} ;  ") == [Command("SHOW", sub)]


def test_show_alias_and_errors() -> None:
    assert parse("SHOW POOL_MEMORY") == [Command("SHOW", "pools_memory")]
    assert parse("SHOW") == [ParseError("58000", UNSUPPORTED)]
    assert parse("SHOW nonsense") == [ParseError("58000", UNSUPPORTED_SHOW)]
    assert parse("SHOW POOLS extra") == [ParseError("42601", "SHOW POOLS takes no arguments")]


@pytest.mark.parametrize("verb", ["PAUSE", "RESUME", "RECONNECT"])
def test_pool_commands_with_and_without_database(verb: str) -> None:
    assert parse(verb.lower()) == [Command(verb)]
    assert parse(f"{verb} app") == [Command(verb, "app")]
    assert parse(f'{verb} "MixedCase"') == [Command(verb, "MixedCase")]
    assert parse(f"{verb} MixedCase;") == [Command(verb, "MixedCase")]
    err = parse(f"{verb} a b")[0]
    assert isinstance(err, ParseError) and err.sqlstate == "42601"


def test_kill_needs_exactly_one_database() -> None:
    assert parse("KILL app") == [Command("KILL", "app")]
    for bad in ("KILL", "KILL a b"):
        err = parse(bad)[0]
        assert isinstance(err, ParseError) and err.sqlstate == "42601"


def test_reload_shutdown_take_no_arguments() -> None:
    assert parse("reload") == [Command("RELOAD")]
    assert parse("SHUTDOWN;") == [Command("SHUTDOWN")]
    for bad in ("RELOAD now", "SHUTDOWN WAIT_FOR_CLIENTS"):
        err = parse(bad)[0]
        assert isinstance(err, ParseError) and err.sqlstate == "42601"


@pytest.mark.parametrize(
    "sql,value",
    [
        ("SET log_level = 'debug'", "debug"),
        ("set LOG_LEVEL='warn'", "warn"),
        ("SET log_level TO info", "info"),
        ("SET log_level 'error'", "error"),
        ("SET log_level = \"trace\"", "trace"),
        ("SET log_level = 'info,pg_doorman::pool=debug'", "info,pg_doorman::pool=debug"),
        ("SET log_level = 'default';", "default"),
    ],
)
def test_set_log_level_spellings(sql: str, value: str) -> None:
    assert parse(sql) == [Command("SET", value)]


@pytest.mark.parametrize(
    "sql,fragment",
    [
        ("SET", "SET requires"),
        ("SET log_level", "SET requires"),
        ("SET log_level =", "SET requires"),
        ("SET log_level = ''", "SET requires"),
        ("SET pool_size = 5", "Unknown SET parameter: POOL_SIZE"),
        ("SET log_level = 'unterminated", "unterminated"),
    ],
)
def test_set_errors_are_42601(sql: str, fragment: str) -> None:
    err = parse(sql)[0]
    assert isinstance(err, ParseError) and err.sqlstate == "42601" and fragment in err.message


def test_unknown_commands_are_58000() -> None:
    for sql in ("SELECT 1", "BEGIN", "KILL_CLIENT 1", "RESET ALL", "RESET INTERNER NOW", "hello world"):
        assert parse(sql) == [ParseError("58000", UNSUPPORTED)], sql


def test_interner_commands() -> None:
    assert parse("RESET INTERNER; reset interner") == [Command("RESET", "interner")] * 2
    assert parse("SHOW INTERNER") == [Command("SHOW", "interner")]
    assert parse("show interner 5") == [Command("SHOW", "interner", 5)]
    err = parse("SHOW INTERNER x")[0]
    assert isinstance(err, ParseError) and err.sqlstate == "42601"


def test_several_statements_in_one_query() -> None:
    assert parse("SHOW POOLS; show clients;;  PAUSE app") == [
        Command("SHOW", "pools"), Command("SHOW", "clients"), Command("PAUSE", "app"),
    ]
    # Semicolons inside quotes and comments do not split.
    assert parse("SET log_level = 'a;b' -- c;d\n; SHOW HELP /* x;y */") == [
        Command("SET", "a;b"), Command("SHOW", "help"),
    ]


def test_empty_queries() -> None:
    assert parse("") == [Command("EMPTY")]
    assert parse(" ; ;\n") == [Command("EMPTY")]
    assert parse("-- only a comment") == [Command("EMPTY")]


def test_psql_tab_completion_is_not_split() -> None:
    q = ("SELECT pg_catalog.lower(name) FROM pg_catalog.pg_settings WHERE pg_catalog.lower(name) "
         "LIKE pg_catalog.lower('po%'); SELECT 'all'")
    assert parse(q) == [Command("TAB_COMPLETION", q)]


def test_split_and_tokenize_helpers() -> None:
    assert split_statements("a;'b;c';\"d;e\"") == ["a", "'b;c'", '"d;e"']
    assert split_statements("x 'it''s;' ; y") == ["x 'it''s;'", "y"]
    assert tokenize("SET log_level='a b'") == ["SET", "log_level", "=", "'a b'"]
    assert tokenize("PAUSE  \"My DB\"") == ["PAUSE", '"My DB"']


def test_upgrade_parses_without_arguments() -> None:
    assert parse("UPGRADE;") == [Command("UPGRADE")]
    assert isinstance(parse("UPGRADE now")[0], ParseError)
