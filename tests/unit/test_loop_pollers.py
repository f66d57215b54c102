"""Both readiness backends of the worker loop (epoll used directly on Linux, selectors elsewhere) behave the
same through the loop: handlers get EVENT_READ/EVENT_WRITE masks, registrations can be changed and dropped,
and a socket closed under its registration can still be unregistered."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pgdoorman.net.loop import EVENT_READ, EVENT_WRITE, EpollPoller, Loop, SelectorPoller

POLLERS = [SelectorPoller] + ([EpollPoller] if hasattr(select, "epoll") else [])


class Recorder:
    def __init__(self, loop: Loop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        self.masks: list[int] = []

    def on_event(self, mask: int) -> None:
        self.masks.append(mask)
        if mask & EVENT_READ:
            self.sock.recv(4096)
        self.loop.stop()


@pytest.mark.parametrize("poller", POLLERS, ids=lambda p: p.__name__)
def test_loop_dispatches_masks(poller: Any) -> None:
    loop = Loop("t")
    loop.sel.close()
    loop.sel = poller()
    loop.sel.register(loop._wake_r, EVENT_READ, loop)
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        rec = Recorder(loop, a)
        loop.sel.register(a, EVENT_READ, rec)
        b.send(b"x")
        loop.run()
        assert rec.masks == [EVENT_READ]
        loop.sel.modify(a, EVENT_READ | EVENT_WRITE, rec)  # writable at once, nothing to read
        loop.run()
        assert rec.masks[-1] == EVENT_WRITE
        b.send(b"y")
        loop.run()
        assert rec.masks[-1] == EVENT_READ | EVENT_WRITE
        loop.sel.unregister(a)
        assert a.fileno() not in loop.sel.handlers
        with pytest.raises(KeyError):
            loop.sel.unregister(a)
        # A call from another thread wakes the loop (the wake-up socket is registered like any handler).
        done: list[bool] = []

        def finish() -> None:
            done.append(True)
            loop.stop()

        threading.Timer(0.05, loop.call_soon_threadsafe, (finish,)).start()
        loop.run()
        assert done == [True]
    finally:
        a.close()
        b.close()
        loop.close()


@pytest.fixture(params=POLLERS, ids=lambda p: p.__name__)
def poller_and_pair(request: pytest.FixtureRequest) -> Iterator[tuple[Any, socket.socket, socket.socket]]:
    """A poller of each kind and a connected socket pair, all closed afterwards (closing twice is harmless)."""
    p = request.param()
    a, b = socket.socketpair()
    try:
        yield p, a, b
    finally:
        a.close()
        b.close()
        p.close()


def test_closed_socket_can_be_unregistered(poller_and_pair: Any) -> None:
    p, a, _ = poller_and_pair
    p.register(a, EVENT_READ, object())
    with pytest.raises(KeyError):
        p.register(a, EVENT_READ, object())
    fd = a.fileno()
    a.close()
    p.unregister(a)  # fileno() is -1 now: found by identity
    assert fd not in p.handlers


def test_hang_up_wakes_a_reader(poller_and_pair: Any) -> None:
    p, a, b = poller_and_pair
    p.register(a, EVENT_READ, object())
    b.close()
    events = p.poll(1.0)
    assert [fd for fd, _ in events] == [a.fileno()]
    fd, native = events[0]
    assert (1 if native == 1 else p.to_mask(fd, native)) == EVENT_READ


class Closer:
    """On its first event, closes its partner's socket and opens a new one that may take over its fd."""

    def __init__(self, loop: Loop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        self.partner: Closer | None = None
        self.calls = 0
        self.closed = False
        self.reborn: list[socket.socket] = []

    def on_event(self, mask: int) -> None:
        self.calls += 1
        self.loop.stop()
        other = self.partner
        assert other is not None
        if other.closed or self.closed:
            return
        fd = other.sock.fileno()
        self.loop.sel.unregister(other.sock)
        other.sock.close()
        other.closed = True
        new, peer = socket.socketpair()
        new.setblocking(False)
        self.reborn += [new, peer]
        if new.fileno() == fd:
            self.loop.sel.register(new, EVENT_WRITE, Recorder(self.loop, new))


@pytest.mark.parametrize("poller", POLLERS, ids=lambda p: p.__name__)
def test_stale_event_of_an_unregistered_fd_is_not_dispatched(poller: Any) -> None:
    """Two sockets readable in one batch; whichever handler runs first closes the other (whose fd a new
    socket may take at once): the stale event reaches neither the closed handler nor the new one."""
    loop = Loop("t")
    loop.sel.close()
    loop.sel = poller()
    a, a_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    ha, hb = Closer(loop, a), Closer(loop, b)
    ha.partner, hb.partner = hb, ha
    try:
        loop.sel.register(a, EVENT_READ, ha)
        loop.sel.register(b, EVENT_READ, hb)
        a_peer.send(b"x")
        b_peer.send(b"y")
        loop.run()
        assert ha.calls + hb.calls == 1
        for s in ha.reborn + hb.reborn:
            h = loop.sel.handlers.get(s.fileno())
            assert h is None or h.masks == []
    finally:
        for s in [a, a_peer, b, b_peer, *ha.reborn, *hb.reborn]:
            s.close()
        loop.close()


def test_cross_thread_calls_queued_before_the_loop_runs_share_one_wake_up() -> None:
    """Servers handed to another worker arrive through call_soon_threadsafe: the calls queued while the loop
    has not yet drained its wake-up socket cost one wake-up byte (one recv, one epoll event), not one each."""
    loop = Loop("t")
    ran: list[int] = []
    try:
        for i in range(5):
            loop.call_soon_threadsafe(ran.append, i)
        loop._wake_r.setblocking(False)
        assert loop._wake_r.recv(64) == b"\0"  # one byte for the five calls
        with pytest.raises(BlockingIOError):
            loop._wake_r.recv(64)
        loop._wake_w.send(b"\0")  # put it back for the loop to drain
        loop.call_soon(loop.stop)
        loop.run()
        assert ran == [0, 1, 2, 3, 4]
        loop.call_soon_threadsafe(ran.append, 5)  # drained: the next call wakes the loop again
        assert loop._wake_r.recv(64) == b"\0"
    finally:
        loop.close()
