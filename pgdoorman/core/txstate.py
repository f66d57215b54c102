"""Session state at the end of a transaction-mode transaction: the housekeeping query that reads it back
from the server, and what its answer means (pure functions: the client runs the query, session/client_base.py's session_check).

Settings are read back rather than interpreted: when a transaction ran SET, RESET, DISCARD ALL or named
set_config, PostgreSQL itself has applied SET LOCAL, rollbacks and savepoints by the time it is idle, and
`pg_settings` rows whose source is 'session' are exactly the settings the session changed (the pooler's own
sync of the client's startup settings uses set_config(..., false), whose source is 'session' too). `role`
and `session_authorization`, which pg_settings does not list, are read with current_setting(). So are the
custom (placeholder) settings the client has (`myapp.user_id`: pg_settings does not list them either), by name:
those in its wanted settings and those its SQL named (core/sqllex.py's setting_names); NULL is a name that is
not defined on the server. The result becomes the client's wanted settings, replayed on whichever server it
gets next by the startup sync.

What cannot move (temporary objects, session advisory locks, WITH HOLD cursors, SQL prepared statements) is
looked up in the catalogs; anything left pins the client to its server until a later check finds nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from pgdoorman.core.params import canonical_name, quote

MAX_NAMED = 64  # custom setting names a client's SQL named that are waiting to be read back (noted)
# Per-transaction settings: not session state even when pg_settings says 'session' inside a transaction.
_TRANSACTION_ONLY = "'transaction_isolation', 'transaction_read_only', 'transaction_deferrable'"
# These queries run under the client's search_path, which may put a schema of its own with its own operators
# before pg_catalog: every operator is named with its schema (an `=` of the client's could hide a temporary
# table from the pin check, and the table would reach the next client of the server).
_EQ = "OPERATOR(pg_catalog.=)"
_NOT_TRANSACTION_ONLY = f"name OPERATOR(pg_catalog.<>) ALL (ARRAY[{_TRANSACTION_ONLY}])"
SETTINGS_QUERY = (
    f"SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings WHERE source {_EQ} 'session' "
    f"AND {_NOT_TRANSACTION_ONLY} "
    "UNION ALL SELECT 'session_authorization', pg_catalog.current_setting('session_authorization') "
    "UNION ALL SELECT 'role', pg_catalog.current_setting('role')"
)
# One row, one column: what is left that cannot move, comma-separated ('' for nothing).
_TEMP = "pg_catalog.pg_my_temp_schema()"
PINS_QUERY = (
    "SELECT pg_catalog.concat_ws(',', "
    f"CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_class WHERE relnamespace {_EQ} {_TEMP}) "
    f"OR EXISTS (SELECT FROM pg_catalog.pg_proc WHERE pronamespace {_EQ} {_TEMP}) "
    f"OR EXISTS (SELECT FROM pg_catalog.pg_type WHERE typnamespace {_EQ} {_TEMP}) THEN 'temp' END, "
    f"CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_locks WHERE locktype {_EQ} 'advisory' "
    f"AND pid {_EQ} pg_catalog.pg_backend_pid()) THEN 'advisory_lock' END, "
    "CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_cursors WHERE is_holdable) THEN 'cursor' END, "
    "CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql) THEN 'prepare' END, "
    # A search_path whose first schema that exists is pg_temp: a CREATE without a schema makes a temporary
    # object, whatever its text says (`SET search_path = pg_temp, public; CREATE TABLE t ...`). What the
    # session creates then cannot be seen by keyword, so the client keeps its server while it has it.
    "CASE WHEN (SELECT e FROM pg_catalog.unnest(pg_catalog.string_to_array("
    "pg_catalog.current_setting('search_path'), ',')) WITH ORDINALITY AS p(x, n), "
    "LATERAL (SELECT pg_catalog.btrim(x, ' \"') AS e) b WHERE e OPERATOR(pg_catalog.~) '^pg_temp(_[0-9]+)?$' "
    "OR EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname::text OPERATOR(pg_catalog.=) "
    "CASE WHEN e OPERATOR(pg_catalog.=) '$user' THEN current_user::text ELSE e END) ORDER BY n LIMIT 1) "
    "OPERATOR(pg_catalog.~) '^pg_temp' THEN 'temp_path' END)"
)
# What RESET ALL leaves alone, first (a server goes back to the pool with none of a client's settings).
RESET = "RESET ROLE; RESET SESSION AUTHORIZATION; RESET ALL"


_REFUSED = {
    "temp": "temporary tables",
    "advisory_lock": "session-level advisory locks",
    "cursor": "WITH HOLD cursors",
    "prepare": "SQL PREPARE",
}


def refusal(why: str, pool: str) -> str:
    """A statement that makes PostgreSQL itself raise 0A000 for a statement that would pin its client (the
    error, the failed transaction and ReadyForQuery's status are then PostgreSQL's own)."""
    what = _REFUSED.get(why, why)
    msg = f"{what} are not supported in transaction pooling mode".replace("'", "''")
    hint = (f"Pool {pool.replace('$', '')} has transaction_pinning = refuse; use transaction_pinning = allow or "
            "pool_mode = session.").replace("'", "''")
    return (f"DO $pgdoorman$ BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = '{msg}', "
            f"HINT = '{hint}'; END $pgdoorman$")


def settings_query(customs: list[str]) -> str:
    """SETTINGS_QUERY, and with it the custom settings `customs` as they are on the server: rows (name, value or
    NULL when not defined, 'custom'), the others with NULL in that third column. Settings pg_settings lists (an
    extension's: SETTINGS_QUERY reads them when the session set them) are left out; pg_settings is read once."""
    if not customs:
        return SETTINGS_QUERY
    arr = ", ".join(quote(n) for n in customs)
    return (f"WITH s AS (SELECT name, source FROM pg_catalog.pg_settings WHERE source {_EQ} 'session' "
            "OR pg_catalog.strpos(name, '.') OPERATOR(pg_catalog.>) 0) "
            f"SELECT name, pg_catalog.current_setting(name), NULL FROM s WHERE source {_EQ} 'session' "
            f"AND {_NOT_TRANSACTION_ONLY} "
            "UNION ALL SELECT 'session_authorization', pg_catalog.current_setting('session_authorization'), NULL "
            "UNION ALL SELECT 'role', pg_catalog.current_setting('role'), NULL "
            "UNION ALL SELECT n, pg_catalog.current_setting(n, true), 'custom' FROM pg_catalog.unnest(ARRAY["
            f"{arr}]::text[]) n WHERE NOT EXISTS (SELECT FROM s WHERE pg_catalog.lower(s.name) {_EQ} pg_catalog.lower(n))")


def customs_to_read(want: dict[str, str], named: tuple[str, ...]) -> list[str]:
    """The custom settings a check reads: those a client has (names with a dot in its wanted settings) and
    those its SQL named since (`named`, ClientConn.customs)."""
    return [k for k in want if "." in k] + list(named)


def noted(named: tuple[str, ...], names: list[str], want: dict[str, str]) -> tuple[str, ...]:
    """ClientConn.customs with `names` (sqllex.setting_names_text of a query) added: those not known yet, the
    MAX_NAMED most recent kept (a name the client never had defined on a server is dropped after that)."""
    new = [n for n in dict.fromkeys(names) if n not in named and n not in want]
    return (*named, *new)[-MAX_NAMED:] if new else named


def check_query(settings: bool, pins: bool, reset: bool, customs: Iterable[str] = ()) -> str:
    """One simple query (one round trip): the settings read back (with the custom ones named), the pin check,
    then the reset."""
    parts = []
    if settings:
        parts.append(settings_query(sorted(set(customs))))
    if pins:
        parts.append(PINS_QUERY)
    if reset:
        parts.append(RESET)
    return "; ".join(parts)


Rows = tuple[list[tuple[str, str]], str, dict[str, str | None]]


def read_rows(rows: list[list[str | None]], login_user: str | None) -> Rows:
    """The check's DataRows: the session's settings (name as params.canonical_name, value), with
    session_authorization (when not the login user) and role (when set) last, in the order they must be
    applied; what pins ('' for nothing); and the custom settings read (name: value, None when not defined)."""
    settings: list[tuple[str, str]] = []
    auth: list[tuple[str, str]] = []
    customs: dict[str, str | None] = {}
    pins = ""
    for r in rows:
        if len(r) == 1:
            pins = r[0] or ""
            continue
        if len(r) == 3:
            if r[2] is not None and r[0] is not None:
                customs[canonical_name(r[0])] = r[1]
                continue
            r = r[:2]  # (settings_query: a SETTINGS_QUERY row)
        if len(r) != 2 or r[0] is None or r[1] is None:
            continue
        name, value = r[0], r[1]
        if name == "role":
            if value != "none":
                auth.append((name, value))
        elif name == "session_authorization":
            if login_user is not None and value != login_user:
                auth.insert(0, (name, value))
        else:
            settings.append((canonical_name(name), value))
    return settings + auth, pins, customs


def followed(base: dict[str, str], session: list[tuple[str, str]],
             customs: dict[str, str | None] | None = None) -> dict[str, str]:
    """A client's wanted settings: what it had at login (`base`: the pool's reported defaults and its startup
    settings), with what its session holds now over them (RESET returns a setting to `base`, as RESET on
    PostgreSQL returns it to the startup packet's value), and its custom settings as read (a defined one stays
    defined, '' after a RESET on PostgreSQL, so it is kept with that value; one given at startup that reads ''
    was RESET on a server whose own value is '': back to `base`)."""
    want = dict(base)
    for k, c in (customs or {}).items():
        if c is not None and (c or not base.get(k)):
            want[k] = c
    for k, v in session:  # role and session_authorization are never in `base`: they stay last
        want[k] = v
    return want


def lost_at_reset(startup: Iterable[str], base: dict[str, str], session: list[tuple[str, str]],
                  customs: dict[str, str | None]) -> dict[str, str]:
    """Session mode, read back after a RESET: the client's startup settings (`startup`: their names, as
    params.canonical_name) its session no longer holds, with the values to set again (`base`: as PostgreSQL
    spells them). A setting the session holds was set since (SET after the RESET): it stays. A custom one
    reads '' once RESET (a placeholder stays defined): it goes back to its startup value too."""
    held = {k for k, _ in session}
    lost = {}
    for k in startup:
        v = base.get(k)
        if v is None:
            continue
        if "." in k:
            if customs.get(k) == "" and v:
                lost[k] = v
        elif k not in held:
            lost[k] = v
    return lost
