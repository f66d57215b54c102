"""Settings that follow a client: what its startup packet asks for, and the set_config() calls that make
a server match it.

Pure functions and constants (no sockets): the client computes what it wants at login
(`startup_settings`), the server connection computes what to run to match it (`sync_calls`).

A client's settings are every startup-packet key that is a setting (not user/database/replication, not a
protocol `_pq_.` option), plus each `-c name=value` / `--name=value` of `options`, as PostgreSQL reads them.
PostgreSQL applies them when the backend starts; a pooled server started for someone else, so they are applied
with `set_config(name, value, false)` before the client's first statement on it, and a server that still
carries another client's value of a setting this client did not ask for gets it reset (`set_config(name, NULL,
false)` = RESET) first. Reported settings (those PostgreSQL announces with ParameterStatus) are compared with
what the server last reported; the others with what we last set there (`ServerConn.extra`).
"""

from __future__ import annotations

TRACKED_PARAMS = (
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "standard_conforming_strings",
    "application_name",
)
_CANONICAL_CASE = {k.lower(): k for k in TRACKED_PARAMS}

# Startup parameters that are not settings to replay on a server.
NOT_SETTINGS = frozenset({"user", "database", "replication", "options"})
# Settings PostgreSQL reports but no client may set (session_authorization only by its own statement, read
# back apart: core/txstate.py; transaction_isolation only inside a transaction). default_transaction_read_only
# and scram_iterations are reported and a client may set them, in its startup packet too: they follow it.
READ_ONLY = frozenset({
    "server_version", "server_encoding", "is_superuser", "session_authorization", "integer_datetimes",
    "in_hot_standby", "server_version_num", "transaction_isolation",
})

# PostgreSQL truncates application_name to NAMEDATALEN - 1 bytes and replaces what is not printable ASCII;
# a value within both limits is reported exactly as given, so it needs no server to learn its spelling.
_APPNAME_MAX = 63


# Settings PostgreSQL computes itself (context "internal") in every version we serve: a startup packet naming
# one is refused (55P02), as PostgreSQL refuses it, not dropped. lc_collate and lc_ctype are not among them:
# internal settings up to PostgreSQL 15 (55P02), no settings at all from 16 on (42704); the server's own
# set_config() at login answers each version as its startup would.
INTERNAL = frozenset({
    "server_version", "server_encoding", "is_superuser", "integer_datetimes", "in_hot_standby",
    "server_version_num",
})


class OptionsError(ValueError):
    """A startup packet PostgreSQL would refuse: its message, and the SQLSTATE (42601 "invalid command-line
    argument" unless said)."""

    def __init__(self, message: str, sqlstate: str = "42601", hint: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.hint = hint


def canonical_name(name: str) -> str:
    """The spelling we key a setting by: PostgreSQL's own for the reported ones, lower case otherwise
    (setting names are case-insensitive)."""
    low = name.lower()
    return _CANONICAL_CASE.get(low, low)


def split_options(options: str) -> list[str]:
    """`options` split as PostgreSQL's pg_split_opts does: on whitespace, a backslash keeps the next
    character (a space included) in the word."""
    out: list[str] = []
    cur: list[str] = []
    have = False
    it = iter(options)
    for ch in it:
        if ch == "\\":
            nxt = next(it, None)
            if nxt is not None:
                cur.append(nxt)
                have = True
            continue
        if ch.isspace():
            if have:
                out.append("".join(cur))
                cur.clear()
                have = False
            continue
        cur.append(ch)
        have = True
    if have:
        out.append("".join(cur))
    return out


# PostgreSQL's own single-letter switches (postgres.c, process_postgres_switches), read from `options` as its
# getopt reads them: the setting each one sets, with its value (None: the switch's argument); _IGNORED are
# taken and ignored (an argument, if they have one, consumed). -d (debug level) is not among them: it is
# refused as an invalid argument.
_SWITCHES: dict[str, tuple[str, str | None]] = {
    "B": ("shared_buffers", None), "e": ("datestyle", "euro"), "F": ("fsync", "false"),
    "h": ("listen_addresses", None), "i": ("listen_addresses", "*"), "k": ("unix_socket_directories", None),
    "l": ("ssl", "true"), "N": ("max_connections", None), "O": ("allow_system_table_mods", "true"),
    "P": ("ignore_system_indexes", "true"), "p": ("port", None), "S": ("work_mem", None),
    "s": ("log_statement_stats", "true"), "W": ("post_auth_delay", None),
}
_IGNORED = frozenset("bCDEjnrTv")
_WITH_ARGUMENT = frozenset("BCcDdfhkNprStvW-")
_PLAN_SWITCHES = {"s": "enable_seqscan", "i": "enable_indexscan", "o": "enable_indexonlyscan",
                  "b": "enable_bitmapscan", "t": "enable_tidscan", "n": "enable_nestloop",
                  "m": "enable_mergejoin", "h": "enable_hashjoin"}
_STATS_SWITCHES = {"pa": "log_parser_stats", "pl": "log_planner_stats", "ex": "log_executor_stats"}


def _invalid(word: str) -> OptionsError:
    return OptionsError(f"invalid command-line argument for server process: {word}")


def parse_options(options: str) -> list[tuple[str, str]]:
    """The settings of an `options` startup parameter, as PostgreSQL's backend reads its command line:
    `-c name=value`, `-cname=value` and `--name=value` (dashes in the name read as underscores), PostgreSQL's
    single-letter switches (`-e`, `-S 4MB`, `-fs`, ...; several in one word), `--` ending the switches.
    Raises OptionsError with PostgreSQL's message where PostgreSQL refuses the packet."""
    words = split_options(options)
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        w = words[i]
        i += 1
        if w == "--":  # the end of the switches: anything after it is an argument the backend refuses
            if i < len(words):
                raise _invalid(words[i])
            break
        if len(w) < 2 or w[0] != "-":
            raise _invalid(w)
        j = 1
        while j < len(w):
            flag = w[j]
            j += 1
            arg = ""
            if flag in _WITH_ARGUMENT:
                if j < len(w):
                    arg = w[j:]
                elif i < len(words):
                    arg = words[i]
                    i += 1
                else:
                    raise _invalid(w)
                j = len(w)
            if flag in "c-":
                name, eq, value = arg.partition("=")
                if not eq:
                    raise OptionsError(f"{'-c ' if flag == 'c' else '--'}{arg} requires a value")
                if not name:
                    raise OptionsError('unrecognized configuration parameter ""', "42704")
                out.append((name.replace("-", "_"), value))
            elif flag == "f":
                if arg[:1] not in _PLAN_SWITCHES:  # (PostgreSQL reads the first letter only)
                    raise _invalid(w)
                out.append((_PLAN_SWITCHES[arg[:1]], "false"))
            elif flag == "t":
                if arg[:2] not in _STATS_SWITCHES:  # (the first two letters)
                    raise _invalid(w)
                out.append((_STATS_SWITCHES[arg[:2]], "true"))
            elif flag in _SWITCHES:
                setting, fixed = _SWITCHES[flag]
                out.append((setting, arg if fixed is None else fixed))
            elif flag not in _IGNORED:
                raise _invalid(w)
    return out


def startup_settings(params: dict[str, str]) -> dict[str, str]:
    """The settings a startup packet asks for, keyed by `canonical_name`, in the order PostgreSQL applies
    them (options first, then the packet's own keys, which win). Raises OptionsError where PostgreSQL refuses
    the packet: a setting PostgreSQL computes itself (55P02), a `session_authorization` other than the user
    itself (42501). `transaction_isolation` is left out: its answer depends on the server's version
    (`isolation_refusal`, once a server is known)."""
    out: dict[str, str] = {}
    opts = params.get("options")
    if opts:
        for k, v in parse_options(opts):
            out[canonical_name(k)] = v
    for k, v in params.items():
        lk = k.lower()
        if lk in NOT_SETTINGS or lk.startswith("_pq_."):
            continue
        out[canonical_name(k)] = v
    for k in list(out):
        lk = k.lower()
        if lk in INTERNAL:
            raise OptionsError(f'parameter "{lk}" cannot be changed', "55P02")
        if lk == "session_authorization" and out[k] != params.get("user"):
            raise OptionsError(f'permission denied to set session authorization "{out[k]}"', "42501")
        if lk in READ_ONLY:
            del out[k]
    return out


ISOLATION_LEVELS = ("serializable", "repeatable read", "read committed", "read uncommitted")


def startup_isolation(params: dict[str, str]) -> str | None:
    """The `transaction_isolation` a startup packet gives (in `options` or as its own key, which wins), if any."""
    value = None
    opts = params.get("options")
    if opts and "isolation" in opts:
        for k, v in parse_options(opts):
            if k.lower() == "transaction_isolation":
                value = v
    for k, v in params.items():
        if k.lower() == "transaction_isolation":
            value = v
    return value


def isolation_refusal(value: str, server_version: str) -> OptionsError | None:
    """PostgreSQL's answer to a startup packet's `transaction_isolation`, by the server's version: a value
    that is no level is refused (22023); up to PostgreSQL 17 a level is then refused as a SET TRANSACTION
    after the login's first query (25001; PostgreSQL itself takes the level its login transaction already
    has, which only a server could tell: docs/transparency.md), and from 18 on it is taken, without effect
    (each transaction starts at default_transaction_isolation)."""
    if value.lower() not in ISOLATION_LEVELS:
        return OptionsError(f'invalid value for parameter "transaction_isolation": "{value}"', "22023",
                            f"Available values: {', '.join(ISOLATION_LEVELS)}.")
    if server_major(server_version) < 18:
        return OptionsError("SET TRANSACTION ISOLATION LEVEL must be called before any query", "25001")
    return None


def server_major(server_version: str) -> int:
    """The major version in a server's reported `server_version` ("18.4", "15.18 (Debian ...)", "19beta1");
    0 when it names none."""
    digits = len(server_version) - len(server_version.lstrip("0123456789"))
    return int(server_version[:digits] or 0)


def known_spelling(name: str, value: str) -> str | None:
    """How PostgreSQL will report `value` of `name`, when that is certain without asking a server."""
    if name == "application_name" and len(value.encode()) <= _APPNAME_MAX and value.isascii() and value.isprintable():
        return value
    return None


def quote(v: str) -> str:
    # E'' literals parse the same whatever standard_conforming_strings is.
    return "E'" + v.replace("\\", "\\\\").replace("'", "''") + "'"


def set_config_call(k: str, v: str) -> str:
    """The call that sets `k` to `v` for the session (source 'session', as a SET)."""
    return f"pg_catalog.set_config({quote(k)}, {quote(v)}, false)"


def sync_calls(want: dict[str, str], reported: dict[str, str], extra: dict[str, str],
               base: dict[str, str] | None = None) -> list[str]:
    """set_config() calls that take a server whose reported settings are `reported` and whose other settings
    we changed to `extra` to exactly the settings `want` (what is not in `want` goes back to its default).
    Updates `extra` to what the calls leave. A reported setting whose wanted value is not the client's startup
    value (`base`) is set even when the server shows that value already (its own default, say): the
    transaction-mode read-back takes a setting the session does not hold for one the client RESET, i.e. back
    at its startup value (ClientBase._checked)."""
    calls = []
    for k, v in want.items():
        cur = reported.get(k)
        if cur is None:
            cur = extra.get(k)
        elif base is not None and cur == v and base.get(k, v) != v:
            cur = None
        if cur != v:
            calls.append(set_config_call(k, v))
            if k not in reported:
                extra[k] = v
    for k in [k for k in extra if k not in want]:
        calls.append(f"pg_catalog.set_config({quote(k)}, NULL, false)")
        del extra[k]
    return calls
