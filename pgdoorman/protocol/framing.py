"""Streaming message framing: walk the 5-byte headers of a byte stream fed in arbitrary chunks, forward
bodies untouched, and hand only the messages the pooler must look at to a handler.

One `Scanner` per direction per connection. Each message type has a mode in a 256-entry table:

* PASS (0): forwarded, never looked at (DataRow, CopyData, ...). Bodies stream through even when a single
  message is larger than any buffer (a 100 MB DataRow is never held in memory).
* NOTIFY (1): `on_header(type, length)` is called as soon as the header is known; the body streams.
* FULL (2): the whole message is assembled (only a split one is copied) and `on_message(type, body)` is
  called; it returns None to forward the message unchanged or bytes to forward instead (b"" drops it).
  Bytes of an incomplete FULL message are withheld until it is complete, so a replacement is possible.
* INVALID (3): raises ProtocolViolation (a frontend type the client may not send now).
* SMALL (4): FULL when the message is at most SMALL_LIMIT bytes, NOTIFY otherwise (a simple query is
  worth reading when it might be `DEALLOCATE x`, never when it is a 100 MB INSERT).

`feed(view)` returns what to forward: the input view itself in the common case (zero copy), a sub-view,
a bytearray when something was replaced or carried across chunks, or None when everything was withheld.
Incomplete headers (< 5 bytes) are always withheld: at most 4 bytes of delay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pgdoorman.protocol.messages import MAX_MESSAGE_LEN, U32, ProtocolViolation

PASS = 0
NOTIFY = 1
FULL = 2
INVALID = 3
SMALL = 4
SMALL_LIMIT = 8192

_unpack = U32.unpack_from

Body = memoryview
OnHeader = Callable[[int, int], None]
OnMessage = Callable[[int, Body], "bytes | None"]
OnStream = Callable[[int, int, bool], None]


def make_table(
    notify: bytes = b"", full: bytes = b"", invalid: bytes = b"", default: int = PASS
) -> bytes:
    t = bytearray([default]) * 256
    for c in notify:
        t[c] = NOTIFY
    for c in full:
        t[c] = FULL
    for c in invalid:
        t[c] = INVALID
    return bytes(t)


def _noop_header(t: int, ln: int) -> None:
    return None


def _noop_message(t: int, body: Body) -> bytes | None:
    return None


class MemoryBudget(Protocol):
    """What a Scanner needs of max_memory_usage's accounting (pgdoorman.net.budget.BudgetPart)."""

    used: int

    def take(self, n: int) -> bool: ...

    def give(self, n: int) -> None: ...


class UnknownType(ProtocolViolation):
    """A message type the table does not know. A client is told PostgreSQL's words for it."""

    def __init__(self, t: int) -> None:
        super().__init__(f"invalid message type {chr(t)!r}" if 32 < t < 127 else f"invalid message type {t}")
        self.t = t


class OverBudget(ProtocolViolation):
    """A FULL message too large for the memory left under the budget (answered with 53200, not 08P01)."""

    sqlstate = "53200"

    def __init__(self, length: int) -> None:
        super().__init__(f"a message of {length} bytes would take the pooler's buffered memory past "
                         "max_memory_usage")
        self.length = length


# What on_message returns to stop the scan before the message it was given (see Scanner.rest). A bytes object of
# its own, compared by identity.
HOLD: bytes = bytes(bytearray(b"hold"))
# What on_message returns when it changed the scanner's table: the message passes as it is, and the messages
# after it in the same data are scanned with the new table.
RETABLE: bytes = bytes(bytearray(b"retable"))


class Scanner:
    __slots__ = ("table", "on_header", "on_message", "skip", "carry", "max_len", "budget", "held", "stream_min",
                 "streaming", "stream_len", "on_stream", "rest")

    def __init__(
        self,
        table: bytes,
        on_header: OnHeader = _noop_header,
        on_message: OnMessage = _noop_message,
        max_len: int = MAX_MESSAGE_LEN,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.table = table
        self.on_header = on_header
        self.on_message = on_message
        self.skip = 0  # body bytes of a PASS/NOTIFY message still to stream through
        self.carry: bytearray | None = None  # withheld incomplete header or FULL message
        self.max_len = max_len
        # A FULL message larger than SMALL_LIMIT that spans reads is counted in `budget` while it is
        # assembled (`held` bytes): one that would pass the limit raises OverBudget.
        self.budget = budget
        self.held = 0
        # A PASS/NOTIFY message of at least `stream_min` bytes that spans reads is a streamed one: when it has
        # gone through (or its connection closed in its middle: reset), on_stream(type, size, ok) is told.
        self.stream_min = MAX_MESSAGE_LEN + 1
        self.streaming = 0  # the type of the streamed message in progress, 0 for none
        self.stream_len = 0
        self.on_stream: OnStream | None = None
        # on_message returned HOLD: the scan stopped before that message; it and what followed it in the data
        # are here, unscanned, for the caller to feed again later.
        self.rest: bytes | None = None

    @property
    def mid_message(self) -> bool:
        """True when the stream is not at a message boundary (a cut here would corrupt the peer)."""
        return bool(self.skip) or bool(self.carry)

    def reset(self) -> None:
        if self.streaming:
            self._streamed(False)
        self.skip = 0
        self.carry = None
        if self.held:
            self._release()

    def _hold(self, total: int) -> None:
        """A FULL message of `total` bytes will be assembled across reads: count it, or refuse it."""
        budget = self.budget
        if budget is not None and not self.held:
            if not budget.take(total):
                raise OverBudget(total)
            self.held = total

    def _streamed(self, ok: bool) -> None:
        t = self.streaming
        self.streaming = 0
        cb = self.on_stream
        if cb is not None:
            cb(t, self.stream_len + 1, ok)

    def _release(self) -> None:
        budget = self.budget
        if budget is not None:
            budget.give(self.held)
        self.held = 0

    def _check(self, t: int, ln: int) -> int:
        mode = self.table[t]
        if mode == INVALID:
            raise UnknownType(t)
        if ln < 4 or ln > self.max_len:
            raise ProtocolViolation(f"invalid message length {ln}")
        if mode == SMALL:
            return FULL if ln <= SMALL_LIMIT else NOTIFY
        return mode

    def feed(self, data: memoryview) -> memoryview | bytearray | None:
        # Exempt from the size rule (functions of at most about 60 lines, tests/unit/test_sizes.py): this is
        # the scanner's hot loop, run for every message header of every connection; splitting it into helpers
        # would add a function call per message on the hot path, so it stays one function.
        n = len(data)
        pos = 0
        out: bytearray | None = None
        emit = 0  # start of the raw range of `data` not yet emitted

        skip = self.skip
        if skip:
            if skip > n:
                self.skip = skip - n
                return data
            pos = skip
            self.skip = 0
            if self.streaming:
                self._streamed(True)

        carry = self.carry
        if carry is not None:
            self.carry = None
            if len(carry) < 5:
                take = 5 - len(carry)
                if take > n:
                    carry += data
                    self.carry = carry
                    return None
                carry += data[:take]
                pos = take
            t = carry[0]
            (ln,) = _unpack(carry, 1)
            mode = self._check(t, ln)
            total = ln + 1
            if mode == FULL:
                take = total - len(carry)
                if take > n - pos:
                    if total > SMALL_LIMIT:
                        self._hold(total)
                    carry += data[pos:]
                    self.carry = carry
                    return None
                carry += data[pos : pos + take]
                pos += take
                if self.held:
                    self._release()
                rep = self.on_message(t, memoryview(carry)[5:])
                if rep is HOLD:
                    self.rest = bytes(carry) + bytes(data[pos:])
                    return None
                out = carry if rep is None or rep is RETABLE else bytearray(rep)  # (the table is read below)
                emit = pos
            else:
                if mode == 1:
                    self.on_header(t, ln)
                out = carry
                rem = total - len(carry)  # body bytes left, all of them in `data` from pos on
                if rem > n - pos:
                    self.skip = rem - (n - pos)
                    if ln >= self.stream_min:
                        self.streaming, self.stream_len = t, ln
                    out += data[pos:]
                    return out
                emit = pos
                pos += rem

        table = self.table
        max_len = self.max_len
        small_max = SMALL_LIMIT if SMALL_LIMIT <= max_len else max_len
        end = n
        last = n - 5  # a header starting after `last` is not whole: carried (the while's else)
        while pos <= last:
            t = data[pos]
            (ln,) = _unpack(data, pos + 1)
            mode = table[t]
            if mode > 2 or ln < 4 or ln > max_len:
                mode = FULL if mode == SMALL and 4 <= ln <= small_max else self._check(t, ln)
            nxt = pos + 1 + ln
            if mode == FULL:
                if nxt > n:
                    if ln >= SMALL_LIMIT:
                        self._hold(ln + 1)
                    self.carry = bytearray(data[pos:])
                    end = pos
                    break
                rep = self.on_message(t, data[pos + 5 : nxt])
                if rep is not None:
                    if rep is HOLD:
                        self.rest = bytes(data[pos:])
                        end = pos
                        break
                    if rep is RETABLE:
                        table = self.table
                    else:
                        if out is None:
                            out = bytearray(data[emit:pos])
                        else:
                            out += data[emit:pos]
                        out += rep
                        emit = nxt
            else:
                if mode == NOTIFY:
                    self.on_header(t, ln)
                if nxt > n:
                    self.skip = nxt - n
                    if ln >= self.stream_min:
                        self.streaming, self.stream_len = t, ln
                    break
            pos = nxt
        else:
            if pos < n:
                self.carry = bytearray(data[pos:])
                end = pos

        if out is None:
            if emit == 0 and end == n:
                return data
            if emit == end:
                return None
            return data[emit:end]
        if emit < end:
            out += data[emit:end]
        return out
