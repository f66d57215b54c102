"""One selector loop per worker thread: readiness dispatch, monotonic timers and a thread-safe call queue.

Other threads (other workers, the signal-handling main thread) never touch a loop's selector or its
connections directly: they `call_soon_threadsafe`, which appends to a deque and writes one byte to a
socketpair the loop watches. Deadlines are absolute `time.monotonic()` values; the select timeout is the
nearest deadline, so an idle loop sleeps instead of polling.

Readiness comes from `select.epoll` on Linux, used directly: `EpollPoller` keeps the part of the
`selectors` API the code uses (register/modify/unregister with a handler per socket) and the loop
dispatches straight from epoll's (fd, events) pairs. `selectors.EpollSelector` would build a SelectorKey
list in Python for every wake-up, a cost paid twice per pooled transaction. Elsewhere `SelectorPoller`
wraps `selectors.DefaultSelector` behind the same interface.
"""

from __future__ import annotations

import heapq
import logging
import select
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from pgdoorman.net.budget import BudgetPart

log = logging.getLogger("pgdoorman.loop")

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE

# One receive buffer per loop, shared by every connection of the worker: data is forwarded (or copied
# into a per-connection buffer) before the next recv, so idle connections cost no buffer memory.
RECV_BUFFER_SIZE = 256 * 1024


class Handler(Protocol):
    def on_event(self, mask: int) -> None: ...


def _fileno(fileobj: Any) -> int:
    fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
    if fd < 0:
        raise ValueError(f"invalid file descriptor {fd} for {fileobj!r}")
    return int(fd)


class _PollerBase:
    """Handlers by fd plus the events each is registered for; `poll(timeout)` -> [(fd, native events)]
    and `to_mask(fd, native)` -> EVENT_READ/EVENT_WRITE bits (the loop calls it only when native != 1)."""

    def __init__(self) -> None:
        self.handlers: dict[int, Any] = {}
        self.events: dict[int, int] = {}
        self.fileobjs: dict[int, Any] = {}
        # fds unregistered since the last poll: their events in the current batch are stale (the fd may
        # already belong to a new socket, registered for other events).
        self.dropped: set[int] = set()

    def _lookup(self, fileobj: Any) -> int:
        try:
            return _fileno(fileobj)
        except ValueError:
            # Closed underneath us (fileno() is -1): find it by identity, as selectors does.
            for fd, obj in self.fileobjs.items():
                if obj is fileobj:
                    return fd
            raise KeyError(f"{fileobj!r} is not registered") from None

    def _store(self, fd: int, fileobj: Any, events: int, data: Any) -> None:
        self.handlers[fd] = data
        self.events[fd] = events
        self.fileobjs[fd] = fileobj

    def _forget(self, fileobj: Any) -> int:
        fd = self._lookup(fileobj)
        if fd not in self.handlers:
            raise KeyError(f"{fileobj!r} is not registered")
        del self.handlers[fd], self.events[fd], self.fileobjs[fd]
        self.dropped.add(fd)
        return fd

    def close(self) -> None:
        self.handlers.clear()
        self.events.clear()
        self.fileobjs.clear()


class EpollPoller(_PollerBase):
    def __init__(self) -> None:
        super().__init__()
        self._ep = select.epoll()
        self.poll = self._ep.poll

    @staticmethod
    def _native(events: int) -> int:
        return (select.EPOLLIN if events & EVENT_READ else 0) | (select.EPOLLOUT if events & EVENT_WRITE else 0)

    def register(self, fileobj: Any, events: int, data: Any) -> None:
        fd = _fileno(fileobj)
        if fd in self.handlers:
            raise KeyError(f"{fileobj!r} (fd {fd}) is already registered")
        self._ep.register(fd, self._native(events))
        self._store(fd, fileobj, events, data)

    def modify(self, fileobj: Any, events: int, data: Any) -> None:
        fd = self._lookup(fileobj)
        if fd not in self.handlers:
            raise KeyError(f"{fileobj!r} is not registered")
        if events != self.events[fd]:
            self._ep.modify(fd, self._native(events))
        self._store(fd, fileobj, events, data)

    def unregister(self, fileobj: Any) -> None:
        fd = self._forget(fileobj)
        try:
            self._ep.unregister(fd)
        except OSError:
            pass  # already closed: the kernel dropped it from the epoll set

    def to_mask(self, fd: int, native: int) -> int:
        # selectors' rule: error/hang-up bits wake both directions, limited to what is registered.
        mask = (EVENT_WRITE if native & ~select.EPOLLIN else 0) | (EVENT_READ if native & ~select.EPOLLOUT else 0)
        return mask & self.events.get(fd, 0)

    def close(self) -> None:
        self._ep.close()
        super().close()


class SelectorPoller(_PollerBase):
    """The same interface over selectors.DefaultSelector, for platforms without epoll."""

    def __init__(self) -> None:
        super().__init__()
        self._sel = selectors.DefaultSelector()

    def register(self, fileobj: Any, events: int, data: Any) -> None:
        key = self._sel.register(fileobj, events, data)
        self._store(key.fd, fileobj, events, data)

    def modify(self, fileobj: Any, events: int, data: Any) -> None:
        key = self._sel.modify(fileobj, events, data)
        self._store(key.fd, fileobj, events, data)

    def unregister(self, fileobj: Any) -> None:
        self._forget(fileobj)
        self._sel.unregister(fileobj)

    def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
        # EVENT_WRITE is reported as 4 so that a plain "readable" is 1 for both pollers.
        return [(key.fd, 1 if mask == EVENT_READ else mask | 4) for key, mask in self._sel.select(timeout)]

    def to_mask(self, fd: int, native: int) -> int:
        return native & EVENT_READ | (EVENT_WRITE if native & 4 else 0)

    def close(self) -> None:
        self._sel.close()
        super().close()


def new_poller() -> EpollPoller | SelectorPoller:
    return EpollPoller() if hasattr(select, "epoll") else SelectorPoller()


def _cancelled_fn(*args: Any) -> None:
    """What a cancelled (or fired) Timer points at instead of its callback."""


class Timer:
    """One call_later/call_at entry. `cancel()` drops the callback and its arguments at once, so whatever
    they reference (a closed connection, typically) is freed now, not when the deadline would have come;
    the loop then removes the empty shell from its heap (at the head as it goes, all at once when cancelled
    entries are the majority, see Loop._compact). A timer that fired lets go of its callback the same way.
    Cancelling is for the loop's own thread; cancelling twice, or after it fired, does nothing."""

    __slots__ = ("when", "fn", "args", "cancelled", "loop")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple[Any, ...], loop: Loop | None = None) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False
        self.loop = loop  # set while the timer is in that loop's heap

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        self.fn = _cancelled_fn
        self.args = ()
        loop = self.loop
        if loop is not None:
            loop.n_cancelled += 1

    def __lt__(self, other: Timer) -> bool:
        return self.when < other.when


# The heap is rebuilt without its cancelled entries once they are more than this many and more than half
# of it: amortised O(1) per cancel, and the heap never holds more than about twice its live timers.
COMPACT_MIN = 256


class Loop:
    def __init__(self, name: str = "loop") -> None:
        self.name = name
        self.sel = new_poller()
        self.timers: list[Timer] = []
        self.n_cancelled = 0  # cancelled timers still in self.timers
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
        self.mem: BudgetPart | None = None  # max_memory_usage accounting (net/budget.py), set by the owner

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
        t = Timer(time.monotonic() + delay, fn, args, self)
        heapq.heappush(self.timers, t)
        return t

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> Timer:
        t = Timer(when, fn, args, self)
        heapq.heappush(self.timers, t)
        return t

    def _compact(self) -> None:
        """Rebuild the heap without its cancelled entries (in place: run() holds the list)."""
        timers = self.timers
        live = [t for t in timers if not t.cancelled]
        for t in timers:
            if t.cancelled:
                t.loop = None
        timers[:] = live
        heapq.heapify(timers)
        self.n_cancelled = 0

    def stop(self) -> None:
        self.running = False

    def run(self) -> None:
        # Exempt from the size rule (functions of at most about 60 lines, tests/unit/test_sizes.py): this is
        # the event loop's hot loop, run once per wake-up and per event; splitting it into helpers would add a
        # function call per event on the hot path, so it stays one function, with the lookups bound to locals.
        self.running = True
        poll = self.sel.poll
        handlers = self.sel.handlers
        to_mask = self.sel.to_mask
        dropped = self.sel.dropped
        calls = self.calls
        timers = self.timers
        monotonic = time.monotonic
        while self.running:
            if calls:
                timeout: float | None = 0.0
            elif timers:
                timeout = max(0.0, timers[0].when - time.monotonic())
            else:
                timeout = None
            try:
                events = poll(timeout)
            except InterruptedError:
                events = []
            # One clock reading per wake-up, for everything this iteration stamps (query, transaction and
            # wait times, idle_since): cheaper than a reading per event, and PgBouncer's way as well.
            self.now = monotonic()
            if dropped:
                dropped.clear()
            for fd, ev in events:
                # Skip what an earlier handler of this batch unregistered: its event is stale, and the fd
                # may already belong to a new socket.
                if dropped and fd in dropped:
                    continue
                try:
                    h = handlers[fd]  # (not .get(): a C call less per event; the try costs nothing when it holds)
                except KeyError:
                    continue
                try:
                    h.on_event(1 if ev == 1 else to_mask(fd, ev))
                except Exception:
                    # A bug must cost one connection, not the worker: close it, or its fd (level-triggered)
                    # would fire again at once and spin the loop.
                    log.exception("unhandled error in %s handler %r; closing it", self.name, h)
                    close = getattr(h, "close", None)
                    if close is not None:
                        try:
                            close("internal error")
                        except Exception:
                            log.exception("closing %r failed", h)
            while calls:
                fn, args = calls.popleft()
                try:
                    fn(*args)
                except Exception:
                    log.exception("unhandled error in %s call %r", self.name, fn)
            if timers:
                now = monotonic()
                while timers and timers[0].when <= now:
                    t = heapq.heappop(timers)
                    t.loop = None
                    if t.cancelled:
                        self.n_cancelled -= 1
                        continue
                    fn = t.fn
                    args = t.args
                    # Let go of the callback before running it: a fired timer kept by its owner (a
                    # connection's login timer, say) must not keep the owner alive through a cycle.
                    t.fn = _cancelled_fn
                    t.args = ()
                    try:
                        fn(*args)
                    except Exception:
                        log.exception("unhandled error in %s timer %r", self.name, fn)
                    del fn, args
                # Drop cancelled timers that pile up at the head (waiter timers cancelled on handoff).
                while timers and timers[0].cancelled:
                    heapq.heappop(timers).loop = None
                    self.n_cancelled -= 1
                # ... and the ones behind live timers when they are the bulk of the heap (a login timer
                # per refused connection, cancelled long before its deadline).
                if self.n_cancelled > COMPACT_MIN and 2 * self.n_cancelled > len(timers):
                    self._compact()

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
