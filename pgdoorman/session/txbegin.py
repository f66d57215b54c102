"""Deferred BEGIN (transaction mode): which simple queries the pooler may answer for PostgreSQL without a server.

A client that opens a transaction and then thinks would hold a server all that time. A lone `BEGIN` that
cannot fail on any server is therefore answered here (`CommandComplete` + `ReadyForQuery 'T'`) and sent,
byte for byte, ahead of the client's next request to whichever server that request gets (ClientConn._link,
ServerConn.send_ahead); its answer there is swallowed. A `COMMIT` or `ROLLBACK` that follows it directly
ends the empty transaction here too, with PostgreSQL's tags.

Only what can be replayed exactly is deferred: `BEGIN`, `BEGIN WORK|TRANSACTION` and `START TRANSACTION`,
optionally with `ISOLATION LEVEL READ COMMITTED|READ UNCOMMITTED|REPEATABLE READ`, `READ ONLY` and
`[NOT] DEFERRABLE`, each at most once, and one optional `;`. `SERIALIZABLE` and `READ WRITE` are not
deferred: a hot standby refuses them at BEGIN (0A000, 25006), and the error must come at BEGIN. Anything
else (a typo, comments, leading blanks, a second statement) goes to PostgreSQL as it is and gets its answer.
"""

from __future__ import annotations

import re

from pgdoorman.protocol import messages as m

# The longest Query message (type, length, text, NUL) a lone BEGIN with every option can be.
BEGIN_MAX = 160
_W = rb"[ \t\r\n]+"
_ITEM = (rb"(isolation" + _W + rb"level" + _W + rb"(?:read" + _W + rb"committed|read" + _W + rb"uncommitted|repeatable"
         + _W + rb"read)|read" + _W + rb"only|(?:not" + _W + rb")?deferrable)")
# Keywords are case-insensitive; PostgreSQL's grammar separates the first option by blanks and the others
# by blanks or a comma.
_BEGIN = re.compile(
    rb"(begin(?:" + _W + rb"(?:work|transaction))?|start" + _W + rb"transaction)"
    rb"(?:" + _W + _ITEM + rb"(?:(?:" + _W + rb"|[ \t\r\n]*,[ \t\r\n]*)" + _ITEM + rb")*)?"
    rb"[ \t\r\n]*;?[ \t\r\n]*\x00",
    re.I,
)
_ITEMS = re.compile(_ITEM, re.I)
_KIND = {b"isol": b"isol", b"read": b"read"}  # else [not] deferrable
_END = re.compile(
    rb"(commit|end|rollback|abort)(?:" + _W + rb"(?:work|transaction))?[ \t\r\n]*;?[ \t\r\n]*\x00", re.I)

BEGIN_DONE = m.command_complete("BEGIN") + m.ready_for_query(b"T")
START_DONE = m.command_complete("START TRANSACTION") + m.ready_for_query(b"T")
# What makes a server's transaction fail as the client's did (a request of it cancelled while it waited for a
# server, after a deferred BEGIN): its error is swallowed like the BEGIN's answer.
ABORT_QUERY = m.query(
    "DO $pgdoorman$ BEGIN RAISE EXCEPTION USING ERRCODE = '57014', MESSAGE = 'pgdoorman: a statement of this "
    "transaction was cancelled while it waited for a server'; END $pgdoorman$")


def lone_begin(body: bytes) -> bytes | None:
    """The answer to the Query text `body` (with its NUL) if it is a BEGIN that may be deferred, else None."""
    mt = _BEGIN.fullmatch(body)
    if mt is None:
        return None
    kinds = [_KIND.get(i.group(1)[:4].lower(), b"defe") for i in _ITEMS.finditer(body, mt.end(1))]
    if len(kinds) != len(set(kinds)):  # an option twice (or two isolation levels): PostgreSQL decides
        return None
    return START_DONE if mt.group(1)[:1] in b"sS" else BEGIN_DONE


def lone_end(body: bytes) -> bool | None:
    """For the Query text `body`: True if it is a lone COMMIT (or END), False for ROLLBACK (or ABORT), None
    otherwise."""
    mt = _END.fullmatch(body)
    if mt is None:
        return None
    return mt.group(1)[:1] in b"cCeE"


def end_answer(commit: bool, aborted: bool) -> bytes:
    """PostgreSQL's answer to COMMIT (`commit`) or ROLLBACK of an empty transaction; a COMMIT of a failed one
    rolls it back and says so."""
    return m.command_complete("COMMIT" if commit and not aborted else "ROLLBACK") + m.RFQ_IDLE
