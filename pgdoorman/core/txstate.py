"""Session state at the end of a transaction-mode transaction: the housekeeping query that reads it back
from the server, and what its answer means (pure functions: the client runs the query, session/txstate.py).

Settings are read back rather than interpreted: when a transaction ran SET, RESET, DISCARD ALL or named
set_config, PostgreSQL itself has applied SET LOCAL, rollbacks and savepoints by the time it is idle, and
`pg_settings` rows whose source is 'session' are exactly the settings the session changed (the pooler's own
sync of the client's startup settings uses set_config(..., false), whose source is 'session' too). `role`
and `session_authorization`, which pg_settings does not list, are read with current_setting(). The result
becomes the client's wanted settings, replayed on whichever server it gets next by the startup sync.

What cannot move (temporary objects, session advisory locks, WITH HOLD cursors, SQL prepared statements) is
looked up in the catalogs; anything left pins the client to its server until a later check finds nothing.
"""

from __future__ import annotations

from pgdoorman.core.params import canonical_name

# Per-transaction settings: not session state even when pg_settings says 'session' inside a transaction.
_TRANSACTION_ONLY = "'transaction_isolation', 'transaction_read_only', 'transaction_deferrable'"
SETTINGS_QUERY = (
    "SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings WHERE source = 'session' "
    f"AND name NOT IN ({_TRANSACTION_ONLY}) "
    "UNION ALL SELECT 'session_authorization', pg_catalog.current_setting('session_authorization') "
    "UNION ALL SELECT 'role', pg_catalog.current_setting('role')"
)
# One row, one column: what is left that cannot move, comma-separated ('' for nothing).
_TEMP = "pg_catalog.pg_my_temp_schema()"
PINS_QUERY = (
    "SELECT pg_catalog.concat_ws(',', "
    f"CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_class WHERE relnamespace = {_TEMP}) "
    f"OR EXISTS (SELECT FROM pg_catalog.pg_proc WHERE pronamespace = {_TEMP}) "
    f"OR EXISTS (SELECT FROM pg_catalog.pg_type WHERE typnamespace = {_TEMP}) THEN 'temp' END, "
    "CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_locks WHERE locktype = 'advisory' "
    "AND pid = pg_catalog.pg_backend_pid()) THEN 'advisory_lock' END, "
    "CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_cursors WHERE is_holdable) THEN 'cursor' END, "
    "CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql) THEN 'prepare' END)"
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


def check_query(settings: bool, pins: bool, reset: bool) -> str:
    """One simple query (one round trip): the settings read back, the pin check, then the reset."""
    parts = []
    if settings:
        parts.append(SETTINGS_QUERY)
    if pins:
        parts.append(PINS_QUERY)
    if reset:
        parts.append(RESET)
    return "; ".join(parts)


def read_rows(rows: list[list[str | None]], login_user: str | None) -> tuple[list[tuple[str, str]], str]:
    """The check's DataRows: the session's settings (name as params.canonical_name, value), with
    session_authorization (when not the login user) and role (when set) last, in the order they must be
    applied; and what pins ('' for nothing)."""
    settings: list[tuple[str, str]] = []
    auth: list[tuple[str, str]] = []
    pins = ""
    for r in rows:
        if len(r) == 1:
            pins = r[0] or ""
            continue
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
    return settings + auth, pins


def followed(base: dict[str, str], session: list[tuple[str, str]]) -> dict[str, str]:
    """A client's wanted settings: what it had at login (`base`: the pool's reported defaults and its startup
    settings), with what its session holds now over them (RESET returns a setting to `base`, as RESET on
    PostgreSQL returns it to the startup packet's value)."""
    want = dict(base)
    for k, v in session:  # role and session_authorization are never in `base`: they stay last
        want[k] = v
    return want
