"""The connections' states: the client's and the frontend message tables its scanner uses in each mode
(shared by the parts of ClientConn), the server's lifecycle enum and the session-state bits it cleans."""

from __future__ import annotations

import re
from enum import IntEnum

from pgdoorman.protocol.framing import FULL, INVALID, NOTIFY, PASS, SMALL

# AUTH: password messages go to the ClientAuth exchange; AUTH_WAIT: a PAM thread checks a clear-text password.
STARTUP, AUTH, AUTH_WAIT, LOGIN_WAIT, READY, ADMIN = range(6)

# Frontend message types after login. Password messages ('p') are only valid during authentication.
_t = bytearray([INVALID]) * 256
_t[ord("H")] = PASS
# CopyData's header is seen (its body streams): a Sync that comes after data inside a COPY may or may not be
# ignored by PostgreSQL when that COPY fails (session/tracking.py).
for _c in b"QSFcfBCDEPd":
    _t[_c] = NOTIFY
_t[ord("X")] = FULL
CLIENT_SESSION_TABLE = bytes(_t)
# Session mode, for a client with startup settings (other than application_name): small simple queries and
# Parse messages are read for what they reset (session/txresets.py).
_t[ord("Q")] = _t[ord("P")] = SMALL
CLIENT_SESSION_READ_TABLE = bytes(_t)
# ... and, once it parsed a statement that resets a setting, small Bind and Close messages (txresets.bound).
_t[ord("B")] = _t[ord("C")] = SMALL
CLIENT_SESSION_BIND_TABLE = bytes(_t)
_t[ord("B")] = _t[ord("C")] = NOTIFY
_t[ord("Q")] = _t[ord("P")] = NOTIFY
# Transaction mode reads small simple queries for LISTEN/UNLISTEN (session/listening.py), and small Parse
# messages to see whether they name a statement (which must then be deallocated at checkin) or LISTEN.
_t[ord("Q")] = SMALL
_t[ord("P")] = SMALL
CLIENT_TABLE = bytes(_t)
_t[ord("B")] = _t[ord("C")] = SMALL  # (as CLIENT_SESSION_BIND_TABLE, for prepared_statements off)
CLIENT_BIND_TABLE = bytes(_t)
_t[ord("B")] = _t[ord("C")] = NOTIFY
# The table that also reads Binds, for each table that reads Parses without keeping statements.
READS_BINDS = {CLIENT_SESSION_READ_TABLE: CLIENT_SESSION_BIND_TABLE, CLIENT_TABLE: CLIENT_BIND_TABLE}
# With transparent prepared statements every extended-protocol message is read (and maybe rewritten);
# a simple query is read when small enough to be a DEALLOCATE.
for _c in b"PBDCESHX":
    _t[_c] = FULL
_t[ord("Q")] = SMALL
CLIENT_PS_TABLE = bytes(_t)
del _t, _c
# Parse texts the batch fast path leaves to the general one (session/listening.py reads LISTEN).
LISTEN_START = re.compile(rb"^\s*listen\b", re.I)


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
DIRTY_RESTORE = 64  # session mode: a RESET ran; the startup settings it took are set again (resets.py)
