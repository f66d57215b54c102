"""One selector loop per worker thread: readiness dispatch, monotonic timers and a thread-safe call queue.

Other threads (other workers, the signal-handling main thread) never touch a loop's selector or its
connections directly: they `call_soon_threadsafe`, which appends to a deque and writes one byte to a
socketpair the loop watches. Deadlines are absolute `time.monotonic()` values; the select timeout is the
nearest deadline, so an idle loop sleeps instead of polling.
"""

from __future__ import annotations

import heapq
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("pgdoorman.loop")

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE

# One receive buffer per loop, shared by every connection of the worker: data is forwarded (or copied
# into a per-connection buffer) before the next recv, so idle connections cost no buffer memory.
RECV_BUFFER_SIZE = 256 * 1024


class Handler(Protocol):
    def on_event(self, mask: int) -> None: ...


class Timer:
    __slots__ = ("when", "fn", "args", "cancelled")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: Timer) -> bool:
        return self.when < other.when


class Loop:
    def __init__(self, name: str = "loop") -> None:
        self.name = name
        self.sel = selectors.DefaultSelector()
        self.timers: list[Timer] = []
        self.calls: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self.rbuf = bytearray(RECV_BUFFER_SIZE)
        self.rview = memoryview(self.rbuf)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_pending = False
        self.sel.register(self._wake_r, EVENT_READ, self)
        self.running = False
        self.thread: threading.Thread | None = None
        self.now = time.monotonic()

    # -- the wake-up socket is itself a handler
    def on_event(self, mask: int) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        self._wake_pending = False

    def call_soon_threadsafe(self, fn: Callable[..., Any], *args: Any) -> None:
        self.calls.append((fn, args))
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self._wake_w.send(b"\0")
            except (BlockingIOError, OSError):
                pass

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn on the next iteration (from the loop's own thread)."""
        self.calls.append((fn, args))

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        t = Timer(time.monotonic() + delay, fn, args)
        heapq.heappush(self.timers, t)
        return t

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> Timer:
        t = Timer(when, fn, args)
        heapq.heappush(self.timers, t)
        return t

    def stop(self) -> None:
        self.running = False

    def run(self) -> None:
        self.running = True
        sel_select = self.sel.select
        calls = self.calls
        timers = self.timers
        while self.running:
            if calls:
                timeout: float | None = 0.0
            elif timers:
                timeout = max(0.0, timers[0].when - time.monotonic())
            else:
                timeout = None
            try:
                events = sel_select(timeout)
            except InterruptedError:
                events = []
            for key, mask in events:
                try:
                    key.data.on_event(mask)
                except Exception:
                    # A bug must cost one connection, not the worker: close it, or its fd (level-triggered)
                    # would fire again at once and spin the loop.
                    log.exception("unhandled error in %s handler %r; closing it", self.name, key.data)
                    close = getattr(key.data, "close", None)
                    if close is not None:
                        try:
                            close("internal error")
                        except Exception:
                            log.exception("closing %r failed", key.data)
            while calls:
                fn, args = calls.popleft()
                try:
                    fn(*args)
                except Exception:
                    log.exception("unhandled error in %s call %r", self.name, fn)
            if timers:
                now = self.now = time.monotonic()
                while timers and timers[0].when <= now:
                    t = heapq.heappop(timers)
                    if t.cancelled:
                        continue
                    try:
                        t.fn(*t.args)
                    except Exception:
                        log.exception("unhandled error in %s timer %r", self.name, t.fn)
                # Drop cancelled timers that pile up at the head (waiter timers cancelled on handoff).
                while timers and timers[0].cancelled:
                    heapq.heappop(timers)

    def close(self) -> None:
        try:
            self.sel.unregister(self._wake_r)
        except (KeyError, ValueError):
            pass
        self._wake_r.close()
        self._wake_w.close()
        self.sel.close()

    def start_thread(self, target: Callable[[], None] | None = None) -> threading.Thread:
        th = threading.Thread(target=target or self.run, name=self.name, daemon=True)
        self.thread = th
        th.start()
        return th
