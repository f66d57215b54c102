"""What a client's SQL text may leave on its server beyond the transaction, recognised by keyword without
parsing SQL: state that cannot follow the client to another server (temporary objects, session-level
advisory locks) and settings changed by a function call rather than a SET statement (`set_config`).

Transaction mode hands a client's next transaction to whichever server is free, so a temporary table or a
session advisory lock it leaves behind would be seen by (or block) the next client of that server, and a
temporary table even shadows the next client's table of the same name (pg_temp comes first in every
search_path). A transaction whose text named one of them ends with a check on its server (session/client_base.py's session_check):
what remains pins the client to that server; settings are read back so that they follow the client.

The keywords: "temp" (TEMP, TEMPORARY, pg_temp), "advisory" (pg_advisory_lock and friends) and "set_config",
in any letter case. A false positive costs one housekeeping round trip at the end of that transaction; a
false negative is impossible for these spellings, since every statement that creates a temporary object,
takes a session advisory lock or calls set_config names one of them (a function that does so internally is
not seen: docs/transaction-mode.md), but for a CREATE under a search_path that puts pg_temp first: setting
that path names "temp", and the check then keeps the client on its server while the path is so
(core/txstate.py's `temp_path`).

Sequences (pool setting transaction_discard_sequences, ClientBase._link): "nextval" and "setval" leave values in
the session that currval() and lastval() read, which must not reach another client of that server; "currval"
and "lastval" mark a client that reads them.
"""

from __future__ import annotations

# Bits of what a text may leave (ClientConn.leaves, Statement.leaves).
PINS = 1  # temporary objects or advisory locks
SETTINGS = 2  # set_config(): session settings changed without a SET tag
# nextval()/setval(): the session now has sequence values for currval()/lastval() (ServerConn.seq_client)
SEQUENCES = 16
# currval()/lastval(): the client reads sequence values of its session (ClientBase.seq_reader)
READS_SEQUENCES = 32
# "listen" (LISTEN, UNLISTEN), or a prepared DISCARD ALL: the text is read for them (session/listening.py);
# nothing to clean or check.
LISTENS = 4
# A prepared statement's text names custom settings (Statement.settings, core/sqllex.py's setting_names): noted
# when it is bound; nothing to clean or check.
CUSTOM = 8
# A prepared `DEALLOCATE`: its Bind and Execute are answered for the client's own statements
# (RewriterBase.dealloc_bind); nothing to clean or check.
DEALLOC = 64
# A prepared statement's text returns a setting to its default (sqllex.resetting_steps): noted when it is bound
# (session/txresets.py); nothing to clean or check.
RESETS = 128
# The longest keyword is 10 bytes: a keyword split between two reads has at most 9 bytes in the first.
TAIL = 9
CLEANUP = "DISCARD TEMP; SELECT pg_catalog.pg_advisory_unlock_all()"
# What a client gets ahead of its first request on a server that may hold another client's sequence values.
DISCARD_SEQUENCES = "DISCARD SEQUENCES"
# Every keyword looked for. session/fastpath.py's _fast_query repeats them inline (a call less per simple
# query); tests/unit/test_leaks_keywords.py checks that both places look for exactly these.
KEYWORDS = (b"temp", b"advisory", b"set_config", b"listen", b"nextval", b"setval", b"currval", b"lastval")


def lowered_may_leave_state(low: bytes) -> int:
    """What `low` (already lower-cased) may leave: PINS | SETTINGS | LISTENS | SEQUENCES | READS_SEQUENCES bits, 0
    for nothing."""
    # find() rather than `in`: measurably faster on short queries (bytes.__contains__ searches differently).
    bits = PINS if low.find(b"temp") >= 0 or low.find(b"advisory") >= 0 else 0
    if low.find(b"set_config") >= 0:
        bits |= SETTINGS
    if low.find(b"listen") >= 0:
        bits |= LISTENS
    if low.find(b"nextval") >= 0 or low.find(b"setval") >= 0:
        bits |= SEQUENCES
    if low.find(b"currval") >= 0 or low.find(b"lastval") >= 0:
        bits |= READS_SEQUENCES
    return bits


def reads_sequences(request: bytes | bytearray | memoryview) -> bool:
    """The start of a request (8 kB) names currval or lastval."""
    low = bytes(request[:8192]).lower()
    return low.find(b"currval") >= 0 or low.find(b"lastval") >= 0


def may_leave_state(text: bytes | bytearray | memoryview) -> int:
    return lowered_may_leave_state(bytes(text).lower())
