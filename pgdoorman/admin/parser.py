"""Parsing of admin console query text into commands, with no access to the running pooler.

A Query message may hold several statements separated by `;` (outside quotes); each becomes a
`Command` or a `ParseError` carrying the SQLSTATE PgDoorman answers with: 58000 for an unknown
command or SHOW subcommand, 42601 for malformed arguments. Keywords are case-insensitive; database
names keep their case (double quotes are stripped, as in PgBouncer's console).
"""

from __future__ import annotations

from dataclasses import dataclass

# Every SHOW subcommand the console answers, in the order `SHOW HELP` and psql's tab completion list them.
SHOW_SUBCOMMANDS = (
    "help",
    "config",
    "databases",
    "pools",
    "pools_extended",
    "pools_memory",
    "prepared_statements",
    "clients",
    "servers",
    "connections",
    "stats",
    "version",
    "users",
    "log_level",
    "lists",
    "auth_query",
    "startup_parameters",
    "sockets",
    "listeners",
    "pool_coordinator",
    "pool_scaling",
    "interner",
)
# Accepted spellings that map onto a canonical subcommand.
SHOW_ALIASES = {"pool_memory": "pools_memory"}

UNSUPPORTED = "Unsupported query against the admin database, please use SHOW HELP for a list of supported subcommands"
UNSUPPORTED_SHOW = "Unsupported SHOW query against the admin database"


@dataclass(frozen=True)
class Command:
    """verb: SHOW, PAUSE, RESUME, RECONNECT, KILL, RELOAD, SHUTDOWN, UPGRADE, SET, RESET, TAB_COMPLETION, EMPTY.
    arg: the SHOW subcommand (lower case), the database name, the log filter, the raw query, or what RESET
    resets (`interner`). count: SHOW INTERNER's row count, when given."""

    verb: str
    arg: str | None = None
    count: int | None = None


@dataclass(frozen=True)
class ParseError:
    sqlstate: str
    message: str


Parsed = Command | ParseError


def split_statements(sql: str) -> list[str]:
    """Split on semicolons that are not inside single quotes, double quotes or comments."""
    out: list[str] = []
    cur: list[str] = []
    i = 0
    n = len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"":
            j = i + 1
            while j < n:
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:  # doubled quote inside the literal
                        j += 2
                        continue
                    break
                j += 1
            cur.append(sql[i : j + 1])
            i = j + 1
            continue
        if ch == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
            continue
        if ch == "/" and sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
            cur.append(" ")
            continue
        if ch == ";":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return [s.strip() for s in out if s.strip()]


def tokenize(stmt: str) -> list[str]:
    """Whitespace-separated words; `=` is its own token; quoted strings stay one token (quotes kept)."""
    toks: list[str] = []
    i = 0
    n = len(stmt)
    while i < n:
        ch = stmt[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "=":
            toks.append("=")
            i += 1
            continue
        if ch in "'\"":
            j = i + 1
            buf = [ch]
            while j < n:
                if stmt[j] == ch:
                    if j + 1 < n and stmt[j + 1] == ch:
                        buf.append(ch)
                        j += 2
                        continue
                    break
                buf.append(stmt[j])
                j += 1
            if j >= n:
                raise ValueError("unterminated quoted string")
            buf.append(ch)
            toks.append("".join(buf))
            i = j + 1
            continue
        j = i
        while j < n and not stmt[j].isspace() and stmt[j] not in "='\"":
            j += 1
        toks.append(stmt[i:j])
        i = j
    return toks


def unquote(tok: str) -> str:
    if len(tok) >= 2 and tok[0] == tok[-1] and tok[0] in "'\"":
        return tok[1:-1]
    return tok


def parse(sql: str) -> list[Parsed]:
    """All statements of one Query message. An empty query gives [Command('EMPTY')]."""
    # psql's tab completion asks pg_catalog.pg_settings; it is answered as a whole, never split.
    if "pg_catalog.pg_settings" in sql:
        return [Command("TAB_COMPLETION", sql)]
    stmts = split_statements(sql)
    if not stmts:
        return [Command("EMPTY")]
    return [parse_statement(s) for s in stmts]


def parse_statement(stmt: str) -> Parsed:
    try:
        toks = tokenize(stmt)
    except ValueError as e:
        return ParseError("42601", f"syntax error: {e}")
    if not toks:
        return Command("EMPTY")
    verb = toks[0].upper()
    args = toks[1:]
    if verb == "SHOW":
        return _parse_show(args)
    if verb in ("PAUSE", "RESUME", "RECONNECT"):
        if len(args) > 1:
            return ParseError("42601", f"{verb} takes at most one argument: {verb} [db]")
        return Command(verb, unquote(args[0]) if args else None)
    if verb == "KILL":
        if len(args) != 1:
            return ParseError("42601", "KILL takes one argument: KILL <db>")
        return Command(verb, unquote(args[0]))
    if verb in ("RELOAD", "SHUTDOWN", "UPGRADE"):
        if args:
            return ParseError("42601", f"{verb} takes no arguments")
        return Command(verb)
    if verb == "SET":
        return _parse_set(args)
    if verb == "RESET" and [a.lower() for a in args] == ["interner"]:
        return Command("RESET", "interner")
    return ParseError("58000", UNSUPPORTED)


def _parse_show(args: list[str]) -> Parsed:
    if not args:
        return ParseError("58000", UNSUPPORTED)
    sub = unquote(args[0]).lower()
    sub = SHOW_ALIASES.get(sub, sub)
    if sub not in SHOW_SUBCOMMANDS:
        return ParseError("58000", UNSUPPORTED_SHOW)
    if sub == "interner" and len(args) == 2:
        if not args[1].isdigit():
            return ParseError("42601", "SHOW INTERNER takes a row count: SHOW INTERNER [n]")
        return Command("SHOW", sub, int(args[1]))
    if len(args) > 1:
        return ParseError("42601", f"SHOW {sub.upper()} takes no arguments")
    return Command("SHOW", sub)


def _parse_set(args: list[str]) -> Parsed:
    # SET log_level = 'x' | SET log_level TO 'x' | SET log_level 'x' | SET log_level=x
    usage = "SET requires: SET <parameter> = '<value>'"
    if len(args) < 2:
        return ParseError("42601", usage)
    param = args[0].lower()
    rest = args[1:]
    if rest[0] == "=" or rest[0].upper() == "TO":
        rest = rest[1:]
    if not rest:
        return ParseError("42601", usage)
    if param != "log_level":
        return ParseError("42601", f"Unknown SET parameter: {args[0].upper()}. Supported: log_level")
    value = " ".join(unquote(t) for t in rest).strip()
    if not value:
        return ParseError("42601", usage)
    return Command("SET", value)
