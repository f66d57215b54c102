"""LISTEN/NOTIFY in transaction mode, the shared half: which statements are LISTEN/UNLISTEN (parsed without
I/O), and one pool's channel registry (which client listens on which channel, the pool's listener
connection and its counters), shared by every worker under a lock.

A pool with listening clients keeps one extra server connection of its own (session/listener.py) that
LISTENs on the union of its clients' channels; each NotificationResponse it receives goes to every client of
the pool listening on that channel, on the client's own worker (session/listening.py).
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

# What a server runs for a client's LISTEN inside a transaction: a channel nobody notifies, so the server
# relays none of the client's notifications (the listener connection delivers them).
MARKER = b'LISTEN "pg_doorman.listen"'
REFUSAL = (
    b"DO $pgdoorman$ BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', "
    b"MESSAGE = 'this form of LISTEN/UNLISTEN is not supported in transaction pooling mode', "
    b"HINT = 'Send LISTEN or UNLISTEN as a statement of its own, with a plain or double-quoted channel name.'; "
    b"END $pgdoorman$"
)
# PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes (and says so in a NOTICE).
NAMEDATALEN = 64
LISTEN, UNLISTEN, UNLISTEN_ALL = 1, 2, 3
BARRIER = 6  # a listener command that changes no channel: its answer means earlier notifications came
# Savepoints of a transaction that LISTENs (session/listening.py: what ROLLBACK TO undoes): `SAVEPOINT name`,
# `ROLLBACK TO [SAVEPOINT] name`, `RELEASE [SAVEPOINT] name` (savepoint()).
SAVEPOINT, ROLLBACK_TO, RELEASE = 7, 8, 9
DISCARD_ALL = 5  # UNLISTEN * too
# A statement that looks like LISTEN/UNLISTEN but that this parser does not read (several statements, a
# Unicode-escaped name): refused in transaction mode rather than guessed at.
UNREADABLE = 4

_COMMENTS = re.compile(rb"--[^\n]*(?:\n|$)|/\*(?:[^*]|\*(?!/))*\*/")
_STMT = re.compile(
    rb'^\s*(listen|unlisten)(?:\s+|(?=["*]))(?:(\*)|"((?:[^"]|"")+)"|([A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*))'
    rb"\s*;?\s*$",
    re.I | re.S,
)
_DISCARD_ALL = re.compile(rb"^\s*discard\s+all\s*;?\s*$", re.I)
_START = re.compile(rb"^\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*(listen|unlisten)\b", re.I | re.S)
_SAVEPOINT = re.compile(
    rb'^\s*(savepoint|release(?:\s+savepoint)?|rollback(?:\s+(?:work|transaction))?\s+to(?:\s+savepoint)?)\s+'
    rb'(?:"((?:[^"]|"")+)"|([A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*))\s*;?\s*$',
    re.I | re.S,
)
_ROLLBACK = re.compile(rb"^\s*(?:rollback|abort)\b(?!\s+(?:to|prepared)\b)(?!\s+(?:work|transaction)\s+to\b)",
                       re.I)

# PostgreSQL's reserved keywords (and type_func_name keywords): not a channel name without quotes; such a
# statement is left to PostgreSQL, which answers it with its own syntax error.
_RESERVED = frozenset(
    b"all analyse analyze and any array as asc asymmetric both case cast check collate column constraint create "
    b"current_catalog current_date current_role current_time current_timestamp current_user default deferrable "
    b"desc distinct do else end except false fetch for foreign from grant group having in initially intersect "
    b"into lateral leading limit localtime localtimestamp not null offset on only or order placing primary "
    b"references returning select session_user some symmetric system_user table then to trailing true union "
    b"unique user using variadic when where window with authorization binary collation concurrently cross "
    b"current_schema freeze full ilike inner is isnull join left like natural notnull outer overlaps right "
    b"similar tablesample verbose".split()
)


def truncate(name: bytes) -> bytes:
    """PostgreSQL's truncation of an identifier to 63 bytes, on a UTF-8 character boundary."""
    if len(name) < NAMEDATALEN:
        return name
    cut = NAMEDATALEN - 1
    while cut > 0 and (name[cut] & 0xC0) == 0x80:
        cut -= 1
    return name[:cut]


def parse(text: bytes) -> tuple[int, bytes] | None:
    """What a statement's text (no trailing NUL) does to the session's channels: (LISTEN, name),
    (UNLISTEN, name), (UNLISTEN_ALL, b"") for UNLISTEN *, (DISCARD_ALL, b""), (UNREADABLE, b"") for a
    LISTEN/UNLISTEN this parser cannot read, or None (not such a statement, or one PostgreSQL refuses with
    its own syntax error). Names are as PostgreSQL keeps them: unquoted ones lower-cased (ASCII only, as in
    UTF-8 databases), quoted ones as written, both truncated to 63 bytes."""
    if not _START.match(text):
        if _DISCARD_ALL.match(text):
            return DISCARD_ALL, b""
        return None
    if b"--" in text or b"/*" in text:
        text = _COMMENTS.sub(b" ", text)
    mt = _STMT.match(text)
    if mt is None:
        return UNREADABLE, b""
    unlisten = mt.group(1).lower() == b"unlisten"
    if mt.group(2):
        return (UNLISTEN_ALL, b"") if unlisten else None  # LISTEN *: PostgreSQL's syntax error
    if mt.group(3) is not None:
        name = mt.group(3).replace(b'""', b'"')
    else:
        name = mt.group(4)
        low = bytes(c + 32 if 65 <= c <= 90 else c for c in name)
        if low in _RESERVED:
            return None
        name = low
    return (UNLISTEN if unlisten else LISTEN), truncate(name)


_DOLLAR_TAG = re.compile(rb"\$(?:[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?\$")


def split(text: bytes) -> list[bytes]:
    """The statements of a simple query, split at semicolons outside quotes, dollar quotes and comments
    (each with its semicolon, blanks kept)."""
    out = []
    start = i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == 59:  # ;
            out.append(text[start : i + 1])
            start = i + 1
        elif c == 39 or c == 34:  # ' or "
            esc = c == 39 and i > 0 and text[i - 1] in b"eE" and (i < 2 or not _ident_char(text[i - 2]))
            i += 1
            while i < n:
                if esc and text[i] == 92:
                    i += 2
                    continue
                if text[i] == c:
                    if i + 1 < n and text[i + 1] == c:
                        i += 2
                        continue
                    break
                i += 1
        elif c == 45 and text[i + 1 : i + 2] == b"-":
            j = text.find(b"\n", i)
            i = n if j < 0 else j
        elif c == 47 and text[i + 1 : i + 2] == b"*":
            depth, i = 1, i + 2
            while i < n and depth:
                if text[i : i + 2] == b"/*":
                    depth, i = depth + 1, i + 2
                elif text[i : i + 2] == b"*/":
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            continue
        elif c == 36 and (i == 0 or not _ident_char(text[i - 1])):
            mt = _DOLLAR_TAG.match(text, i)
            if mt is not None:
                j = text.find(mt.group(0), mt.end())
                i = n if j < 0 else j + len(mt.group(0))
                continue
        i += 1
    if text[start:].strip():
        out.append(text[start:])
    return out


def _ident_char(c: int) -> bool:
    return c == 95 or c == 36 or 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c >= 128


def statement(text: bytes) -> tuple[int, bytes] | None:
    """parse() for the text of a prepared statement (one statement), cheap for the others."""
    low = text.lower()
    if low.find(b"listen") < 0 and low.find(b"discard") < 0:
        return None
    return parse(text)


def server_text(r: tuple[int, bytes], text: bytes) -> bytes:
    """What a server runs for a client's LISTEN/UNLISTEN statement: LISTEN of MARKER (same tag, errors and
    transaction semantics, no notification ever), REFUSAL for an unreadable one, else the text itself."""
    if r[0] == LISTEN:
        return MARKER
    if r[0] == UNREADABLE:
        return REFUSAL
    return text


def is_rollback(text: bytes) -> bool:
    """ROLLBACK or ABORT of the whole transaction (not ROLLBACK TO a savepoint, nor ROLLBACK PREPARED)."""
    return _ROLLBACK.match(text) is not None


def savepoint(text: bytes) -> tuple[int, bytes] | None:
    """(SAVEPOINT | ROLLBACK_TO | RELEASE, name) for a statement that sets, rolls back to or releases a savepoint
    (the name as PostgreSQL keeps it), else None."""
    mt = _SAVEPOINT.match(text)
    if mt is None:
        return None
    verb = mt.group(1)[:3].lower()
    kind = SAVEPOINT if verb == b"sav" else RELEASE if verb == b"rel" else ROLLBACK_TO
    if mt.group(2) is not None:
        return kind, truncate(mt.group(2).replace(b'""', b'"'))
    return kind, truncate(bytes(c + 32 if 65 <= c <= 90 else c for c in mt.group(3)))


def _nobody(clients: list[Any], channel: bytes, msg: bytes) -> None:
    pass


def quote(name: bytes) -> bytes:
    return b'"' + name.replace(b'"', b'""') + b'"'


class Channels:
    """One pool's LISTEN registry. `subs` (channel -> the clients listening on it, in the order they began) is
    read and written under `lock` by every worker; the listener connection (`conn`) and its command queue
    belong to the worker that hosts it (`host`), and other workers reach it only through that worker's loop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.subs: dict[bytes, dict[Any, None]] = {}
        self.host: Any = None  # the Worker whose loop runs the listener connection
        self.conn: Any = None  # the ListenerConn (None while down)
        self.server_pid = 0
        self.connects = 0  # listener connections that logged in
        self.failures = 0  # listener connections lost or refused
        self.received = 0  # NotificationResponses the listener received
        self.delivered = 0  # ... written or queued to clients (one per listening client)
        self.overflows = 0  # clients closed because their notification queue was full
        # The pool was removed (RELOAD, auth_query): the connection serves the clients it still has and is
        # closed once none of them listens (session/listener.py `drop`).
        self.dropped = False
        # Owned by the host's loop: commands waiting for the connection to log in, the reconnect delay.
        self.queue: deque[Any] = deque()
        self.retry = 0.1
        # deliver(clients, channel, message) on the clients' worker (session/listening.py sets it).
        self.deliver: Callable[[list[Any], bytes, bytes], None] = _nobody

    def subscribe(self, client: Any, channel: bytes) -> None:
        with self.lock:
            self.subs.setdefault(channel, {})[client] = None

    def unsubscribe(self, client: Any, channels: list[bytes] | set[bytes]) -> list[bytes]:
        """Forget `client` on `channels`; the ones no client listens on any more (to UNLISTEN)."""
        emptied = []
        with self.lock:
            for ch in channels:
                who = self.subs.get(ch)
                if who is None:
                    continue
                who.pop(client, None)
                if not who:
                    del self.subs[ch]
                    emptied.append(ch)
        return emptied

    def listened(self, channel: bytes) -> bool:
        with self.lock:
            return channel in self.subs

    def targets(self, channel: bytes) -> list[Any]:
        with self.lock:
            who = self.subs.get(channel)
            return list(who) if who else []

    def union(self) -> list[bytes]:
        with self.lock:
            return list(self.subs)

    def snapshot(self) -> dict[str, Any]:
        """For SHOW LISTENERS and the metrics: counts only."""
        with self.lock:
            channels = len(self.subs)
            clients = len({c for who in self.subs.values() for c in who})
        conn = self.conn
        return {
            "channels": channels, "clients": clients, "state": "up" if conn is not None and conn.up else "down",
            "server_pid": self.server_pid if conn is not None and conn.up else 0, "connects": self.connects,
            "failures": self.failures, "received": self.received, "delivered": self.delivered,
            "overflows": self.overflows,
        }
