"""Session state that outlives a transaction but cannot follow its client to another server: temporary
objects and session-level advisory locks.

Transaction mode hands a client's next transaction to whichever server is free, so a temporary table or a
session advisory lock it leaves behind would be seen by (or block) the next client of that server, and a
temporary table even shadows the next client's table of the same name (pg_temp comes first in every
search_path). Until such state can pin its client to its server, a server that may carry it is cleaned with
`DISCARD TEMP` and `pg_advisory_unlock_all()` before anyone else gets it.

What may leave such state is recognised by keyword, without parsing SQL: any text the client sends that
contains "temp" (TEMP, TEMPORARY, pg_temp) or "advisory" (pg_advisory_lock and friends), in any letter case.
A false positive costs one cleanup round trip at the end of that transaction; a false negative is impossible
for these spellings, since every statement that creates a temporary object or takes a session advisory lock
names one of them.
"""

from __future__ import annotations

# The longest keyword is 8 bytes: a keyword split between two reads has at most 7 bytes in the first.
TAIL = 7
CLEANUP = "DISCARD TEMP; SELECT pg_catalog.pg_advisory_unlock_all()"


def lowered_may_leave_state(low: bytes) -> bool:
    """`low` (already lower-cased) names something that may leave temp objects or advisory locks."""
    return low.find(b"temp") >= 0 or low.find(b"advisory") >= 0


def may_leave_state(text: bytes | bytearray | memoryview) -> bool:
    return lowered_may_leave_state(bytes(text).lower())
