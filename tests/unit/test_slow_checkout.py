"""The slow-checkout warning's throttle (session/slow_checkout.py): one line per pool per second, the next line
carrying how many were held back. Times are given, not measured."""

from __future__ import annotations

import threading

from pgdoorman.session.slow_checkout import Throttle


def test_one_event_per_key_per_interval_and_the_count_held_back() -> None:
    t = Throttle(1.0)
    assert t.allow("a@db", 100.0) == 0
    assert [t.allow("a@db", 100.0 + d) for d in (0.1, 0.5, 0.99)] == [None, None, None]
    assert t.allow("b@db", 100.2) == 0  # another pool has its own second
    assert t.allow("a@db", 101.0) == 3
    assert t.allow("a@db", 101.5) is None
    assert t.allow("a@db", 105.0) == 1
    assert t.allow("a@db", 106.5) == 0


def test_threads_lose_no_count() -> None:
    t = Throttle(1.0)
    assert t.allow("p", 0.0) == 0

    def hammer() -> None:
        for _ in range(1000):
            assert t.allow("p", 0.5) is None

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert t.allow("p", 2.0) == 4000
