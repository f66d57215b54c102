"""A CancelRequest runs on the thread that owns its client (core/cancel.py's deliver): posted to the loop of
the worker the client had when the request came, it follows the client to its new worker when
general.worker_placement moved it meanwhile, and runs at once when it is already there. Two real worker
loops, each on its own thread; the client is a stand-in that records which thread ran its cancel."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from pgdoorman.core.cancel import CancelRegistry, deliver
from pgdoorman.net.loop import Loop


class Client:
    def __init__(self, loop: Loop) -> None:
        self.worker = SimpleNamespace(loop=loop)
        self.secret = 0
        self.ran_on: list[str] = []
        self.done = threading.Event()

    def cancel_requested(self) -> None:
        self.ran_on.append(threading.current_thread().name)
        self.done.set()


@pytest.fixture
def loops() -> Iterator[tuple[Loop, Loop]]:
    a, b = Loop("worker-a"), Loop("worker-b")
    threads = [a.start_thread(), b.start_thread()]
    yield a, b
    for lp, th in zip((a, b), threads, strict=True):
        lp.call_soon_threadsafe(lp.stop)
        th.join(5)
        lp.close()


def test_cancel_follows_a_client_that_moved_to_another_worker(loops: tuple[Loop, Loop]) -> None:
    a, b = loops
    c = Client(b)  # its worker is b now ...
    a.call_soon_threadsafe(deliver, c)  # ... the request was posted to a, its worker when the request came
    assert c.done.wait(5)
    assert c.ran_on == ["worker-b"]


def test_cancel_runs_at_once_on_the_clients_own_loop(loops: tuple[Loop, Loop]) -> None:
    a, _ = loops
    c = Client(a)
    reg = CancelRegistry()
    pid, secret = reg.register(c)
    reg.cancel(pid, secret)  # before the client has its key (the caller sets it): nobody's request
    reg.cancel(pid, secret + 1)
    c.secret = secret
    reg.cancel(pid, secret)
    assert c.done.wait(5)
    assert c.ran_on == ["worker-a"]
    reg.cancel(pid, secret + 1)  # a wrong key reaches nobody
    reg.cancel(pid, secret)
    assert c.done.wait(5)
    deadline = threading.Event()
    a.call_soon_threadsafe(deadline.set)  # behind anything posted before it on a
    assert deadline.wait(5)
    assert c.ran_on == ["worker-a", "worker-a"]
