"""A RESET inside a transaction block, put right at once (both modes).

On PostgreSQL `RESET name`, `RESET ALL`, `SET name TO DEFAULT` (and `SET TIME ZONE LOCAL`, `SET NAMES DEFAULT`,
`SET SESSION AUTHORIZATION DEFAULT`) return a setting to its value at the session's start: the one the client's
startup packet gave. A pooled server started for the pool, and the client's startup settings were set on it
with set_config() (core/params.py), so there they return to the pool's value. Outside a transaction block the
settings are read back after the request and put right before the client's next statement (transaction mode's
check, session/resets.py). Inside one nothing that takes a snapshot may run before the client's next statement
(`SET TRANSACTION ISOLATION LEVEL` must come before any query, and a REPEATABLE READ transaction's snapshot is
taken by its first query), so there the request's own text says which settings went back to their default:
`note` reads it (sqllex.reset_steps) when it has one of the words such a statement needs (and `reported` takes
a RESET's report of the pool's value of a reported setting for one more such step), and at the request's
ReadyForQuery (status T, nothing else in flight) `taken` turns the steps into SET statements (which take no
snapshot) that give each such startup setting its startup value again, `SET LOCAL` for `SET LOCAL name TO
DEFAULT`; they run on the server before the ReadyForQuery goes to the client (`run`). The reports the RESET
caused were already put right (ServerConn._on_parameter, session/reports.py).

Session mode reads the small Query and Parse messages of a client with startup settings (other than
application_name) for this (CLIENT_SESSION_READ_TABLE), and puts back a `SET name TO DEFAULT` outside a
transaction block the same way (one PostgreSQL does not report: the read-back of session/resets.py runs only on
a report or a RESET).

Left as they were (the setting reads as the pool's value until the transaction ends: docs/transaction-mode.md):
a setting the request changes again after its reset (a SET or set_config() of it, or one whose name is not a
literal), a request that rolls back to a savepoint, a request with another pipelined behind it,
a statement after the reset in the same query string, and for a setting PostgreSQL does not report: a text too
large to read (over 8 kB; where statements are not the pooler's, session mode and prepared_statements off, a
Bind too: `parsed` keeps the steps of a statement by name, `bound` notes them), a session-mode client's whose
only startup setting is application_name.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol, cast

from pgdoorman.core import sqllex
from pgdoorman.core.params import READ_ONLY, quote
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.framing import RETABLE, Scanner
from pgdoorman.session.peer import ClientPeer
from pgdoorman.session.states import DIRTY_RESTORE, READS_BINDS

if TYPE_CHECKING:
    from collections.abc import Callable

    from pgdoorman.core.pool import Pool

log = logging.getLogger("pgdoorman.client")

# Settings whose value is a list of identifiers that SET quotes one by one (PostgreSQL's GUC_LIST_QUOTE).
_LIST_QUOTE = frozenset({"search_path", "temp_tablespaces", "local_preload_libraries", "session_preload_libraries"})
STEPS = tuple[int, list[tuple[str, int]]]  # (the client's `answered` before the request's answer, reset_steps)


class Client(ClientPeer, Protocol):
    """What of a client (ClientBase) this module reads and writes, besides ClientPeer."""

    resets: STEPS | None
    reset_names: dict[bytes, list[tuple[str, int]]] | None
    scanner: Scanner
    addr: str
    user: str
    database: str
    answered: int
    expect: int
    last_status: int

    def _server_ready(self) -> None: ...

    def request_index(self, counted: bool) -> int: ...


class Server(Protocol):
    """What of a server connection (ServerConn) this module reads and calls."""

    pool: Pool
    cancel_pending: int
    dirty: int
    txn_status: int
    internal_error: dict[str, str] | None

    @property
    def client(self) -> ClientPeer | None: ...

    def run_internal(self, queries: list[str], done: Callable[[bool], None], rows: bool = False,
                     extended: bool = False) -> None: ...


def note(c: Client, text: bytes | bytearray | memoryview, low: bytes | None = None, counted: bool = False) -> None:
    """A small simple query or Parse text of the client's (ClientBase.note_settings): its steps, if it may reset
    a setting, kept for the request's ReadyForQuery (ClientBase.request_index; `counted`: a simple query)."""
    steps = sqllex.resetting_steps(text, low)
    if steps is not None:
        c.resets = (c.request_index(counted), steps)


def keep(c: Client, steps: list[tuple[str, int]]) -> None:
    """The steps of a prepared statement the client binds (Statement.resets, lexed once), as `note` keeps a
    text's (a copy: `reported` may add to it)."""
    c.resets = (c.request_index(False), list(steps))


def parsed(c: Client, name: bytes, sql: bytes) -> bytes | None:
    """A small Parse the pooler does not keep (session mode, prepared_statements off) of statement `name`: when
    its text may reset a setting, its steps are kept and noted where it is bound (`bound`: a Parse alone, as
    asyncpg's prepare() sends it, resets nothing), and the client's Binds are read from now on (RETABLE, for
    the scanner: the Bind may follow in the same data)."""
    steps = sqllex.resetting_steps(sql)
    names = c.reset_names
    if steps is not None:
        if names is None:
            c.reset_names = {name: steps}
            sc = c.scanner
            sc.table = READS_BINDS.get(sc.table, sc.table)
            return RETABLE
        names[name] = steps
    elif names:
        names.pop(name, None)  # (the unnamed statement replaced)
        forgotten(c, sql)
    return None


def bound(c: Client, t: int, body: memoryview) -> None:
    """A small Bind (t 66) or Close (67) of a client that parsed a statement that resets (`parsed`)."""
    names = c.reset_names
    if not names:
        return
    b = bytes(body)
    if t == 67:
        if b[:1] == b"S":
            names.pop(b[1 : b.find(b"\x00", 1)], None)
        return
    j = b.find(b"\x00") + 1
    steps = names.get(b[j : b.find(b"\x00", j)])
    if steps is not None:
        keep(c, steps)


def forgotten(c: Client, text: bytes | memoryview) -> None:
    """A small simple query or Parse of a client that parsed a statement that resets: a DEALLOCATE or DISCARD
    may drop it (then its name is forgotten, all of them: a Bind of it fails on PostgreSQL, and noting its steps would
    put settings back that no RESET took)."""
    low = bytes(text).lower()
    if low.find(b"deallocate") >= 0 or low.find(b"discard") >= 0:
        assert c.reset_names is not None
        c.reset_names.clear()


def reported(peer: ClientPeer, k: str) -> None:
    """A RESET's report of the pool's value of the client's startup setting `k` (ServerConn._on_parameter): a
    step of the request, as its text would say (a text not read: session mode's without startup settings but
    application_name, one over 8 kB, a prepared statement's executed after the request that parsed it)."""
    c = cast(Client, peer)
    name = k.lower()
    noted = c.resets
    if noted is None or noted[0] != c.answered:
        c.resets = (c.answered, [(name, sqllex.RESET_STEP)])
    elif all(n != name for n, _ in noted[1]):  # (the text's steps of `k`, in their order, are the better guide)
        noted[1].append((name, sqllex.RESET_STEP))


def taken(s: Server, peer: ClientPeer, st: int) -> list[tuple[str, str, str]]:
    """At a ReadyForQuery (status `st`, the request already counted: ClientBase.ready) of a request that ran a
    SET or RESET: what puts back what it reset (`statements`), or [] (nothing to do, or not now)."""
    c = cast(Client, peer)
    noted = c.resets
    if noted is None or noted[0] >= c.answered:
        return []  # (a request pipelined behind this one noted it)
    c.resets = None
    if noted[0] + 1 != c.answered or c.expect or s.cancel_pending or c.copy_confused or c.rw.rq:
        return []
    if st != 84 and (st != 73 or c.transaction_mode or s.dirty & DIRTY_RESTORE):
        return []  # (outside a transaction block the settings are read back: ClientBase.session_check, resets.py)
    return statements(c, s.pool, noted[1], st == 84)


def statements(c: ClientPeer, pool: Pool, steps: list[tuple[str, int]], block: bool) -> list[tuple[str, str, str]]:
    """For each startup setting the steps leave at its default: its name, startup value, and the SET statement
    that gives it that value again. Outside a transaction block (`block` False: the request ended in none) a
    SET LOCAL did nothing that lasts: its steps are left out (a warning on PostgreSQL, and the value after it
    is the one before)."""
    keys = {k.lower(): k for k in (*c.settings, "application_name")}
    last: dict[str, int] = {}
    for name, kind in steps:
        if name == sqllex.UNKNOWN or name == sqllex.UNDONE:
            return []
        if name == sqllex.ENDED:
            last.clear()
        elif name == sqllex.ALL_SETTINGS:
            last.update(dict.fromkeys(keys, sqllex.RESET_STEP))
        elif name in keys and (block or not kind & sqllex.LOCAL_STEP):
            last[name] = kind
    out = []
    pool_values = pool.server_params or {}
    for name, kind in last.items():
        k = keys[name]
        v = c.want_base.get(k)
        if (not kind & sqllex.RESET_STEP or v is None or name.startswith("transaction_") or k in READ_ONLY
                or pool_values.get(k, v + "\x00") == v):  # (a reported setting whose startup value is the pool's)
            continue
        value = _list_value(v) if name in _LIST_QUOTE else quote(v)
        if value is None:
            continue  # (an empty or unreadable list: left as it is)
        scope = "LOCAL " if kind & sqllex.LOCAL_STEP else ""
        out.append((k, v, f"SET {scope}{'.'.join(_ident(p) for p in k.split('.'))} TO {value}"))
    return out


def run(s: Server, peer: ClientPeer, queries: list[str], out: bytes) -> None:
    """Run `queries` on `s` (each a statement of ours: the client's unnamed statement stays), then send the
    client `out` (the request's held reports and its ReadyForQuery) and what it sent meanwhile."""
    c = cast(Client, peer)
    s.run_internal(queries, lambda ok: _done(s, c, ok, out), extended=True)


def _done(s: Server, c: Client, ok: bool, out: bytes) -> None:
    if s.client is not c or c.closed:
        return
    if not ok:
        # The server's transaction failed on our statement: the client hears why, and that its transaction is
        # aborted (its ReadyForQuery says so), rather than a 25P02 later with no cause.
        err = s.internal_error or {}
        log.warning("client %s (%s@%s): its startup settings could not be set again after a RESET in a "
                    "transaction block: %s %s", c.addr, c.user, c.database, err.get("C"), err.get("M"))
        out = out[:-6] + m.error_response(
            err.get("C", "XX000"), f"pgdoorman could not return a setting to its startup value: {err.get('M')}"
        ) + m.msg(b"Z", bytes([s.txn_status]))
        c.last_status = s.txn_status
    c.write(out)
    c._server_ready()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _list_value(v: str) -> str | None:
    """A list of identifiers, as PostgreSQL reads a GUC_LIST_QUOTE setting's value (SplitIdentifierString),
    written as SET's arguments: one string per element, which SET quotes as an identifier again."""
    items: list[str] = []
    i, n = 0, len(v)
    while True:
        while i < n and v[i].isspace():
            i += 1
        if i < n and v[i] == '"':
            j = i + 1
            item = []
            while True:
                k = v.find('"', j)
                if k < 0:
                    return None
                item.append(v[j:k])
                if v.startswith('""', k):
                    item.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            items.append("".join(item))
        else:
            j = i
            while i < n and v[i] != "," and not v[i].isspace():
                i += 1
            if i == j:
                return None
            items.append(v[j:i].lower())
        while i < n and v[i].isspace():
            i += 1
        if i == n:
            break
        if v[i] != ",":
            return None
        i += 1
    return ", ".join(quote(x) for x in items) if items else None
