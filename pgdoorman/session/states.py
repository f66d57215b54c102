"""The connections' states: the client's and the frontend message tables its scanner uses in each mode
(shared by the parts of ClientConn), the server's lifecycle enum and the session-state bits it cleans."""

from __future__ import annotations

import re
from enum import IntEnum

from pgdoorman.protocol import messages as m
from pgdoorman.protocol.framing import FULL, INVALID, NOTIFY, PASS, SMALL

# AUTH: password messages go to the ClientAuth exchange; AUTH_WAIT: a PAM thread checks a clear-text password.
STARTUP, AUTH, AUTH_WAIT, LOGIN_WAIT, READY, ADMIN = range(6)

# Frontend message types after login. Password messages ('p') are only valid during authentication.
_t = bytearray([INVALID]) * 256
for _c in b"Hd":
    _t[_c] = PASS
for _c in b"QSFcfBCDEP":
    _t[_c] = NOTIFY
_t[ord("X")] = FULL
CLIENT_SESSION_TABLE = bytes(_t)
# Transaction mode reads small simple queries to refuse LISTEN (see refuse_listen), and small Parse
# messages to see whether they name a statement (which must then be deallocated at checkin).
_t[ord("Q")] = SMALL
_t[ord("P")] = SMALL
CLIENT_TABLE = bytes(_t)
# With transparent prepared statements every extended-protocol message is read (and maybe rewritten);
# a simple query is read when small enough to be a DEALLOCATE.
for _c in b"PBDCESHX":
    _t[_c] = FULL
_t[ord("Q")] = SMALL
CLIENT_PS_TABLE = bytes(_t)
del _t, _c
LISTEN_START = re.compile(rb"^\s*listen\b", re.I)
# LISTEN cannot work in transaction mode (notifications arrive on whichever server the client had): the
# statement is replaced by one that makes PostgreSQL itself raise 0A000, so the error, the aborted
# transaction and ReadyForQuery's status are exactly what the client would get from a refusal there.
LISTEN_REFUSAL = (
    b"DO $pgdoorman$ BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', "
    b"MESSAGE = 'LISTEN is not supported in transaction pooling mode', "
    b"HINT = 'Use a pool with pool_mode = session for LISTEN/NOTIFY.'; END $pgdoorman$"
)


def refuse_listen(body: memoryview) -> bytes | None:
    """The replacement for a small simple query that is a LISTEN (transaction mode), else None."""
    b0 = body[0] | 32
    if (b0 == 108 or body[0] in b" \t\r\n") and LISTEN_START.match(body):
        return m.query(LISTEN_REFUSAL.decode())
    return None


class ServerState(IntEnum):
    """Where a server connection is in its life. Only server.py assigns `ServerConn.state` (other modules
    move a server through `link`, `park` and `retire`; tests/unit/test_state_owners.py checks it)."""

    CONNECTING = 0
    LOGIN = 1
    IDLE = 2
    ACTIVE = 3
    INTERNAL = 4  # our own housekeeping query runs
    CLOSED = 5


CONNECTING, LOGIN, IDLE, ACTIVE, INTERNAL, CLOSED = ServerState
STATE_NAMES = ("login", "login", "idle", "active", "used", "closed")

# CommandComplete tags that leave session state behind on the server (reset at checkin).
DIRTY_SET = 1
DIRTY_PREPARE = 2
DIRTY_CURSOR = 4
DIRTY_LISTEN = 8
DIRTY_SESSION = 16  # a session-mode client left: reset everything (DISCARD ALL), as PgBouncer does
DIRTY_TEMP = 32  # temp objects or session advisory locks may be left (leaks.py)
