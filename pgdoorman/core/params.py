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
    "in_hot_standby", "server_version_num", "lc_collate", "lc_ctype", "transaction_isolation",
})

# PostgreSQL truncates application_name to NAMEDATALEN - 1 bytes and replaces what is not printable ASCII;
# a value within both limits is reported exactly as given, so it needs no server to learn its spelling.
_APPNAME_MAX = 63


class OptionsError(ValueError):
    """`options` holds something PostgreSQL would refuse ("invalid command-line argument")."""


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


def parse_options(options: str) -> list[tuple[str, str]]:
    """The settings of an `options` startup parameter: `-c name=value`, `-cname=value` and `--name=value`
    (dashes in the name read as underscores, as PostgreSQL does). Anything else raises OptionsError."""
    words = split_options(options)
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        w = words[i]
        i += 1
        if w == "-c":
            if i >= len(words):
                raise OptionsError("-c requires a value")
            arg = words[i]
            i += 1
        elif w.startswith("-c"):
            arg = w[2:]
        elif w.startswith("--"):
            arg = w[2:]
        else:
            raise OptionsError(f'invalid command-line argument for server process: {w}')
        name, eq, value = arg.partition("=")
        if not eq or not name:
            raise OptionsError(f'invalid command-line argument for server process: {w if w != "-c" else arg}')
        out.append((name.replace("-", "_"), value))
    return out


def startup_settings(params: dict[str, str]) -> dict[str, str]:
    """The settings a startup packet asks for, keyed by `canonical_name`, in the order PostgreSQL applies
    them (options first, then the packet's own keys, which win). Raises OptionsError."""
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
        if k.lower() in READ_ONLY:
            del out[k]
    return out


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


def sync_calls(want: dict[str, str], reported: dict[str, str], extra: dict[str, str]) -> list[str]:
    """set_config() calls that take a server whose reported settings are `reported` and whose other settings
    we changed to `extra` to exactly the settings `want` (what is not in `want` goes back to its default).
    Updates `extra` to what the calls leave."""
    calls = []
    for k, v in want.items():
        cur = reported.get(k)
        if cur is None:
            cur = extra.get(k)
        if cur != v:
            calls.append(set_config_call(k, v))
            if k not in reported:
                extra[k] = v
    for k in [k for k in extra if k not in want]:
        calls.append(f"pg_catalog.set_config({quote(k)}, NULL, false)")
        del extra[k]
    return calls
