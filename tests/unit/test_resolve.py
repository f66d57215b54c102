"""net/resolve.py: IP literals answered at once and never cached, one lookup in flight per name (everyone
asking meanwhile gets its answer, on their own loop), answers and failures cached for their TTL. Lookups are
real getaddrinfo calls (localhost through /etc/hosts, a .invalid name that never resolves); the test hook
(PGDOORMAN_TEST_RESOLVER) only delays one."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, cast

import pytest

from pgdoorman.net import resolve
from pgdoorman.net.loop import Loop


class Posted:
    """Stands in for a worker's Loop: records what the resolver thread posts with call_soon_threadsafe."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.event = threading.Event()

    def call_soon_threadsafe(self, fn: Any, *args: Any) -> None:
        self.calls.append((fn, args))
        self.event.set()

    def run(self) -> None:
        for fn, args in self.calls:
            fn(*args)
        self.calls.clear()


def _answers() -> tuple[list[Any], Any]:
    got: list[Any] = []
    return got, lambda addrs, err: got.append((addrs, err))


def test_literals_are_answered_now_and_not_cached() -> None:
    r = resolve.Resolver()
    got, done = _answers()
    assert r.resolve("127.0.0.1", cast(Loop, Posted()), done) is True
    assert r.resolve("::1", cast(Loop, Posted()), done) is True
    assert got == [([(socket.AF_INET, ("127.0.0.1", 0))], ""), ([(socket.AF_INET6, ("::1", 0, 0, 0))], "")]
    assert r.counts() == {"names": 0, "queries": 0} and r.lookups == 0
    assert resolve.with_port(got[1][0][0], 5432) == ("::1", 5432, 0, 0)


def test_one_lookup_in_flight_per_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(resolve.TEST_HOOK, json.dumps({"localhost": {"delay": 0.5}}))
    r = resolve.Resolver()
    loops = [Posted(), Posted()]
    got, done = _answers()
    assert r.resolve("localhost", cast(Loop, loops[0]), done) is False
    assert r.resolve("localhost", cast(Loop, loops[1]), done) is False
    assert r.counts() == {"names": 0, "queries": 1} and r.lookups == 1
    for p in loops:
        assert p.event.wait(10)
    assert got == []  # delivered on each asker's loop, not on the resolver's thread
    for p in loops:
        p.run()
    assert got[0] == got[1] and got[0][1] == "" and (socket.AF_INET, ("127.0.0.1", 0)) in got[0][0]
    assert r.counts() == {"names": 1, "queries": 0}
    # Cached: answered now, no new lookup.
    t0 = time.monotonic()
    assert r.resolve("localhost", cast(Loop, loops[0]), done) is True
    assert time.monotonic() - t0 < 0.1 and r.lookups == 1 and got[2] == got[0]


def test_failures_are_cached_then_expire() -> None:
    r = resolve.Resolver(ttl=15, negative_ttl=0.3)
    p = Posted()
    got, done = _answers()
    assert r.resolve("nonexistent.invalid", cast(Loop, p), done) is False
    assert p.event.wait(30)
    p.run()
    assert got[0][0] == [] and got[0][1]  # the resolver's reason (gai_strerror)
    assert resolve.failure_text("x", got[0][1]) == f'could not translate host name "x" to address: {got[0][1]}'
    assert r.resolve("nonexistent.invalid", cast(Loop, p), done) is True and got[1] == got[0] and r.lookups == 1
    time.sleep(0.35)
    assert r.counts()["names"] == 0  # expired, dropped
    p.event.clear()
    assert r.resolve("nonexistent.invalid", cast(Loop, p), done) is False and r.lookups == 2
    assert p.event.wait(30)
