"""max_memory_usage's accounting (net/budget.py) and the Scanner's use of it for messages read whole."""

from __future__ import annotations

import struct

import pytest

from pgdoorman.net.budget import Budget
from pgdoorman.protocol.framing import SMALL_LIMIT, OverBudget, Scanner, make_table


def msg(t: bytes, size: int) -> bytes:
    return t + struct.pack("!I", size + 4) + b"x" * size


def test_parts_sum_to_the_process_total() -> None:
    b = Budget(100)
    p, q = b.part(), b.part()
    assert p.take(60) and not q.take(41) and q.take(40)
    assert b.used == 100 and not p.over()
    q.used += 1  # a queued write counts even past the limit; the writer then stops its producer
    assert p.over() and q.refused == 1
    p.give(60)
    assert b.used == 41


def test_a_split_full_message_is_counted_while_assembled_then_released() -> None:
    b = Budget(1 << 20)
    part = b.part()
    seen: list[int] = []
    sc = Scanner(make_table(full=b"B"), on_message=lambda t, body: seen.append(len(body)), budget=part)
    data = msg(b"B", 100_000)
    sc.feed(memoryview(data[:50_000]))
    assert part.used == 100_005 and sc.held == 100_005
    sc.feed(memoryview(data[50_000:]))
    assert part.used == 0 and seen == [100_000]
    # Small ones (up to SMALL_LIMIT) and whole ones are never counted.
    small = msg(b"B", SMALL_LIMIT - 100)
    sc.feed(memoryview(small[:10]))
    assert part.used == 0
    sc.feed(memoryview(small[10:]))
    sc.feed(memoryview(msg(b"B", 200_000)))
    assert part.used == 0 and seen[-1] == 200_000


def test_a_message_past_the_limit_is_refused_and_reset_releases() -> None:
    b = Budget(300_000)
    part, other = b.part(), b.part()
    sc = Scanner(make_table(full=b"B"), budget=part)
    sc.feed(memoryview(msg(b"B", 200_000)[:1000]))
    assert b.used == 200_005
    sc2 = Scanner(make_table(full=b"B"), budget=other)
    with pytest.raises(OverBudget) as info:
        sc2.feed(memoryview(msg(b"B", 200_000)[:1000]))
    assert info.value.sqlstate == "53200" and other.used == 0
    sc.reset()  # its client left mid-message
    assert b.used == 0
    sc2.reset()
    sc2.feed(memoryview(msg(b"B", 200_000)[:1000]))
    assert other.used == 200_005


def test_streamed_messages_are_reported_once_whole_or_failed() -> None:
    seen: list[tuple[int, int, bool]] = []
    sc = Scanner(make_table())
    sc.stream_min = 1000
    sc.on_stream = lambda t, size, ok: seen.append((t, size, ok))
    big = msg(b"D", 5000)
    sc.feed(memoryview(big[:3]))  # the header split, then the body in pieces
    sc.feed(memoryview(big[3:700]))
    assert seen == []
    sc.feed(memoryview(big[700:4000]))
    sc.feed(memoryview(big[4000:] + msg(b"D", 10)))
    assert seen == [(68, 5005, True)]
    sc.feed(memoryview(msg(b"D", 999) + msg(b"C", 5)))  # whole in one read, or under the threshold: not counted
    sc.feed(memoryview(msg(b"d", 2000)[:100]))
    sc.reset()  # its connection closed in the middle
    assert seen == [(68, 5005, True), (100, 2005, False)]
    sc.feed(memoryview(msg(b"D", 1000)[:100]))
    sc.feed(memoryview(msg(b"D", 1000)[100:]))  # ends exactly at the end of a read
    assert seen[-1] == (68, 1005, True)
