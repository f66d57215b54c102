"""One auth_query executor connection: the blocking client of session/pgclient.py (the login of
session/server_login.py, the pool's server TLS) logged in as `auth_query.user`, running the query with the
user name as `$1` (extended protocol, text format).

It runs on an executor thread only (never on a worker loop). Every socket operation has a timeout, so a
dead or frozen PostgreSQL costs an executor thread at most that long, never a worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pgdoorman.session.pgclient import PgClient, PgError

APPLICATION_NAME = "pg_doorman_auth_query"
# The query failed in a way that says nothing about the connection: no second try on a new one.
_FINAL = ("timed out", "query error", "bad result")


@dataclass(frozen=True)
class Row:
    """What the query returned for one user: the password (None: NULL or no row) and the raw text of an
    optional `startup_parameters` column."""

    password: str | None
    startup_parameters: str | None = None


class Executor:
    """The query on one connection (`client`, not connected yet), opened on first use and again after any
    failure. The service sets `client.tls` to the pool's server TLS before each lookup (RELOAD may change
    it; a new connection uses what is set then)."""

    def __init__(self, client: PgClient, query: str) -> None:
        self.client = client
        self.query = query
        self.connected = False

    def close(self) -> None:
        self.connected = False
        self.client.close()

    def _login(self) -> None:
        self.client.connect()
        self.connected = True

    # ------------------------------------------------------------------ the query
    def fetch(self, username: str) -> Row:
        """Run the query for `username` (one retry on a fresh connection if an open one turns out dead)."""
        fresh = not self.connected
        if fresh:
            self._login()
        try:
            return self._run(username)
        except PgError as e:
            self.close()
            if fresh or e.cause in _FINAL:
                raise
        self._login()  # the kept connection was dead (killed backend, restart): once more on a new one
        try:
            return self._run(username)
        except PgError:
            self.close()
            raise

    def _run(self, username: str) -> Row:
        try:
            columns, rows = self.client.execute(self.query, [username])
        except PgError as e:
            if e.cause == "query error" and e.sqlstate.startswith(("57P", "08")):
                # A terminated backend or a shutdown: the connection is gone, not the query wrong.
                raise PgError("connection lost", e.detail) from None
            raise
        return pick(columns, rows)


def pick(columns: list[str], rows: Sequence[Sequence[str | None]]) -> Row:
    """The password and startup_parameters of a result: the `passwd` column, else `password`, else the
    only column. No row: unknown user (password None); several rows: PgError."""
    if len(rows) > 1:
        raise PgError("bad result", f"the query returned {len(rows)} rows for one user (expected at most 1)")
    lowered = [c.lower() for c in columns]
    if "passwd" in lowered:
        i = lowered.index("passwd")
    elif "password" in lowered:
        i = lowered.index("password")
    elif len(columns) == 1:
        i = 0
    else:
        raise PgError("bad result", f"no passwd or password column among {', '.join(columns) or 'none'}")
    if not rows:
        return Row(None)
    row = rows[0]
    sp = lowered.index("startup_parameters") if "startup_parameters" in lowered else -1
    password = row[i] if i < len(row) else None
    return Row(password or None, row[sp] if 0 <= sp < len(row) else None)
