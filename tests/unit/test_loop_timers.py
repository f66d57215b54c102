"""Timers of the worker loop release what they hold: a cancelled timer drops its callback (and so the
connection it is bound to) at once, the heap does not grow under create/cancel churn, a fired timer lets go
of its callback, and live timers still fire in deadline order through all of it."""

from __future__ import annotations

import gc
import socket
import time
import weakref
from collections.abc import Iterator

import pytest

from pgdoorman.net.conn import Conn
from pgdoorman.net.loop import COMPACT_MIN, Loop, Timer


class Owner:
    """Stands for a ClientConn: holds its own timer, whose callback is a bound method (a cycle)."""

    def __init__(self, loop: Loop, delay: float = 60.0) -> None:
        self.payload = bytearray(2048)
        self.fired = False
        self.timer: Timer = loop.call_later(delay, self.on_timeout)

    def on_timeout(self) -> None:
        self.fired = True


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop("t")
    try:
        yield lp
    finally:
        lp.close()


def run_once(loop: Loop) -> None:
    """One iteration of the loop: a call_soon that stops it makes poll() return at once."""
    loop.call_soon(loop.stop)
    loop.run()


def test_cancelled_timer_releases_its_callback_target_at_once(loop: Loop) -> None:
    gc.disable()  # only reference counting may free it: "at once", not at the next collection
    try:
        owner = Owner(loop)
        ref = weakref.ref(owner)
        owner.timer.cancel()
        del owner
        assert ref() is None
        assert len(loop.timers) == 1  # the empty shell may stay until the loop runs
    finally:
        gc.enable()


def test_cancelled_timer_releases_its_arguments(loop: Loop) -> None:
    class Arg:
        pass

    arg = Arg()
    ref = weakref.ref(arg)
    t = loop.call_later(60.0, print, arg)
    del arg
    assert ref() is not None
    t.cancel()
    assert ref() is None
    t.cancel()  # twice is harmless
    assert loop.n_cancelled == 1


def test_fired_timer_lets_go_of_its_callback(loop: Loop) -> None:
    gc.disable()
    try:
        owner = Owner(loop, delay=0.0)
        ref = weakref.ref(owner)
        run_once(loop)
        assert owner.fired
        owner.timer.cancel()  # after it fired: nothing to count, nothing to drop
        assert loop.n_cancelled == 0
        del owner
        assert ref() is None
    finally:
        gc.enable()


def test_heap_stays_bounded_under_create_cancel_churn(loop: Loop) -> None:
    keep = loop.call_later(3600.0, print)  # one live timer in front of nothing: the head never pops
    peak = 0
    for _ in range(200):
        for _ in range(100):
            loop.call_later(60.0, print).cancel()
        run_once(loop)
        peak = max(peak, len(loop.timers))
    assert peak <= 2 * COMPACT_MIN + 200
    assert len(loop.timers) <= 2 * COMPACT_MIN + 1
    assert keep in loop.timers and not keep.cancelled
    assert loop.n_cancelled == sum(t.cancelled for t in loop.timers)


def test_compaction_keeps_live_timers_firing_in_order(loop: Loop) -> None:
    fired: list[int] = []
    base = time.monotonic()
    live = [loop.call_at(base + 0.001 * i, fired.append, i) for i in range(50)]
    dead = [loop.call_at(base + 0.0005 + 0.001 * i, fired.append, -i) for i in range(3 * COMPACT_MIN)]
    for t in dead:
        t.cancel()
    assert loop.n_cancelled == len(dead)
    loop._compact()
    assert len(loop.timers) == len(live) and loop.n_cancelled == 0
    assert all(t.loop is None for t in dead)
    deadline = time.monotonic() + 5
    while len(fired) < len(live) and time.monotonic() < deadline:
        run_once(loop)
    assert fired == list(range(50))
    assert loop.timers == [] and loop.n_cancelled == 0


def test_cancelled_count_stays_exact_through_head_pops(loop: Loop) -> None:
    fired: list[int] = []
    soon = [loop.call_later(0.0, fired.append, i) for i in range(10)]
    later = [loop.call_later(3600.0 + i, fired.append, i) for i in range(10)]
    for t in soon[:5] + later[5:]:
        t.cancel()
    # The five live soon timers fire, the cancelled ones among them are dropped as they pop: only the five
    # cancelled far timers (behind live ones) remain, counted.
    run_once(loop)
    assert fired == [5, 6, 7, 8, 9]
    assert loop.n_cancelled == 5 == sum(t.cancelled for t in loop.timers)
    assert len(loop.timers) == 10


def test_thousands_of_cancelled_login_timers_free_their_owners(loop: Loop) -> None:
    gc.disable()
    try:
        refs = []
        for _ in range(5000):
            o = Owner(loop)
            refs.append(weakref.ref(o))
            o.timer.cancel()
        del o
        assert all(r() is None for r in refs)
        run_once(loop)
        assert len(loop.timers) <= COMPACT_MIN
    finally:
        gc.enable()


class Sink(Conn):
    def on_readable(self) -> None:
        pass


def test_closed_conn_frees_its_output_queue_and_itself(loop: Loop) -> None:
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        c = Sink(a, loop)
        c.attach(loop)
        chunk = b"x" * (1 << 16)
        while c.out is None:  # fill the socket buffer until the rest is queued
            c.write(chunk)
        c.write(chunk)
        assert c.backlog > 0
        gc.disable()
        try:
            ref = weakref.ref(c)
            c.close("test")
            assert c.out is None and c.backlog == 0
            assert a.fileno() == -1
            assert c.fd not in loop.sel.handlers
            c.write(chunk)  # writes after close are dropped, not queued
            assert c.out is None
            del c
            assert ref() is None
        finally:
            gc.enable()
    finally:
        a.close()
        b.close()
