#!/usr/bin/env python3
"""Runs pgdoorman (`python scripts/pgdoorman_counters.py CONFIG`) with counters wrapped around its worker
hand-off, wake-up and pool-lock paths, and a low-rate sampler of the worker threads' Python frames.

A profiling aid for scripts/profile_workers.py, not part of the pooler: pgdoorman's code is not changed, its
classes are wrapped from outside before the App is built. The wrappers cost CPU themselves, so the CPU per
transaction of a run under this shim is not the pooler's figure (profile_workers.py measures that in a plain
run); the counts are exact per call (one counter dict per thread, so no lost updates).

Every `--every` seconds one JSON line goes to $PGDOORMAN_COUNTERS (default pgdoorman-counters.jsonl):
{"t": CLOCK_MONOTONIC seconds, "threads": {thread name: {counter: n}}, "samples": {thread name:
{"function (file:line)": n}}}, cumulative since start, so a window is the difference of two lines.
py-spy cannot read free-threaded 3.13t processes yet (benfred/py-spy#711); the sampler stands in for it:
sys._current_frames() at $PGDOORMAN_SAMPLE_HZ (default 97; 0 turns it off), the innermost Python frame of
each worker thread that is on a CPU (state R in /proc) counted: "self" time at Python level, where time in a
C call or a system call is charged to the Python function that made it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

_counters: dict[int, Counter[str]] = {}
_samples: dict[int, Counter[str]] = {}


def _mine() -> Counter[str]:
    ident = threading.get_ident()
    c = _counters.get(ident)
    if c is None:
        c = _counters[ident] = Counter()
    return c


class CountingLock:
    """threading.Lock with counts: acquisitions, the ones that found it held (a wait), and the wait time."""

    __slots__ = ("_lock", "_name")

    def __init__(self, name: str) -> None:
        self._lock = threading.Lock()
        self._name = name

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        c = _mine()
        c[self._name + ".acquire"] += 1
        if self._lock.acquire(False):
            return True
        if not blocking:
            return False
        c[self._name + ".wait"] += 1
        t0 = time.perf_counter_ns()
        ok = self._lock.acquire(True, timeout)
        c[self._name + ".wait_ns"] += time.perf_counter_ns() - t0
        return ok

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def install() -> None:
    from pgdoorman import worker as wmod
    from pgdoorman.core import pool as pmod
    from pgdoorman.core import prepared as prep
    from pgdoorman.net import loop as lmod

    W, L, P = wmod.Worker, lmod.Loop, pmod.Pool

    orig_hand = W.hand

    def hand(self: Any, s: Any, c: Any) -> None:
        k = _mine()
        if s.worker is self:
            k["hand.local" if c.worker is self else "hand.to_client_worker"] += 1
        else:
            k["hand.via_server_owner"] += 1
        orig_hand(self, s, c)

    W.hand = hand  # type: ignore[method-assign]

    def count_calls(cls: Any, name: str, key: str) -> None:
        orig = getattr(cls, name)

        def wrapper(*a: Any, **kw: Any) -> Any:
            _mine()[key] += 1
            return orig(*a, **kw)

        wrapper.__name__ = name
        wrapper.__qualname__ = f"{cls.__name__}.{name}"
        setattr(cls, name, wrapper)

    count_calls(W, "hand_over", "hand_over")
    count_calls(W, "adopt", "adopt")
    count_calls(W, "retry_checkout", "retry_checkout")
    count_calls(L, "on_event", "wake.received")

    orig_cst = L.call_soon_threadsafe

    def call_soon_threadsafe(self: Any, fn: Any, *args: Any) -> None:
        k = _mine()
        k["call_soon_threadsafe"] += 1
        if not self._wake_pending:
            k["wake.sent"] += 1
        orig_cst(self, fn, *args)

    L.call_soon_threadsafe = call_soon_threadsafe  # type: ignore[method-assign]

    orig_acquire = P.acquire

    def acquire(self: Any, client: Any, wid: int, now: float) -> Any:
        r = orig_acquire(self, client, wid, now)
        k = _mine()
        if r is None or type(r) is tuple:
            k["pool.acquire.queued"] += 1
        else:
            k["pool.acquire.local_idle"] += 1
        return r

    P.acquire = acquire  # type: ignore[method-assign]

    orig_release = P.release

    def release(self: Any, server: Any, wid: int, now: float) -> Any:
        c = orig_release(self, server, wid, now)
        k = _mine()
        if c is None:
            k["pool.release.parked"] += 1
        elif c.worker.id == wid:
            k["pool.release.to_waiter_same_worker"] += 1
        else:
            k["pool.release.to_waiter_other_worker"] += 1
        return c

    P.release = release  # type: ignore[method-assign]

    orig_pool_init = P.__init__

    def pool_init(self: Any, *a: Any, **kw: Any) -> None:
        orig_pool_init(self, *a, **kw)
        self.lock = CountingLock("pool_lock")

    P.__init__ = pool_init  # type: ignore[method-assign]

    orig_cache_init = prep.PoolCache.__init__

    def cache_init(self: Any, *a: Any, **kw: Any) -> None:
        orig_cache_init(self, *a, **kw)
        self.lock = CountingLock("prepared_cache_lock")

    prep.PoolCache.__init__ = cache_init  # type: ignore[method-assign]

    orig_ep_init = lmod.EpollPoller.__init__

    def ep_init(self: Any) -> None:
        orig_ep_init(self)
        raw = self.poll

        def poll(timeout: float | None = None) -> Any:
            events = raw(timeout)
            k = _mine()
            k["epoll.wait"] += 1
            k["epoll.events"] += len(events)
            if not events:
                k["epoll.empty"] += 1
            return events

        self.poll = poll

    lmod.EpollPoller.__init__ = ep_init  # type: ignore[method-assign]


def _names() -> dict[int, str]:
    global natives
    natives = {t.ident: t.native_id for t in threading.enumerate() if t.ident is not None}
    return {t.ident: t.name for t in threading.enumerate() if t.ident is not None}


natives: dict[int, int | None] = {}


def _running(tid: int | None) -> bool:
    if tid is None:
        return True
    try:
        with open(f"/proc/self/task/{tid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] == b"R"


def _mine_for(ident: int) -> Counter[str]:
    """The sampler's own counters about thread `ident` (kept apart from that thread's counters)."""
    c = _sampler_counts.get(ident)
    if c is None:
        c = _sampler_counts[ident] = Counter()
    return c


_sampler_counts: dict[int, Counter[str]] = {}


def reporter(path: str, every: float, hz: float) -> None:
    import pgdoorman  # whichever copy PYTHONPATH chose: file names are shown relative to its parent

    base = Path(pgdoorman.__file__).resolve().parent.parent
    me = threading.get_ident()
    period = 1.0 / hz if hz > 0 else every
    next_report = time.monotonic()
    with open(path, "a") as out:
        while True:
            now = time.monotonic()
            if hz > 0:
                names = _names()
                for ident, frame in sys._current_frames().items():
                    if ident == me or not names.get(ident, "").startswith("worker-"):
                        continue
                    # On-CPU samples only: a thread asleep in epoll_wait (or waiting for a lock) is not
                    # spending CPU. Its kernel state is read from /proc; "R" is running or runnable.
                    if not _running(natives.get(ident)):
                        _mine_for(ident)["sample.off_cpu"] += 1
                        continue
                    _mine_for(ident)["sample.on_cpu"] += 1
                    code = frame.f_code
                    key = f"{code.co_qualname} ({os.path.relpath(code.co_filename, base)}:{code.co_firstlineno})"
                    bucket = _samples.get(ident)
                    if bucket is None:
                        bucket = _samples[ident] = Counter()
                    bucket[key] += 1
            if now >= next_report:
                next_report += every
                names = _names()
                line = {
                    "t": now,
                    "threads": {names.get(i, str(i)): dict(c) for i, c in list(_counters.items())},
                    "samples": {names.get(i, str(i)): dict(c) for i, c in list(_samples.items())},
                    "sampler": {names.get(i, str(i)): dict(c) for i, c in list(_sampler_counts.items())},
                }
                out.write(json.dumps(line) + "\n")
                out.flush()
            time.sleep(period)


def main() -> int:
    install()
    path = os.environ.get("PGDOORMAN_COUNTERS", "pgdoorman-counters.jsonl")
    hz = float(os.environ.get("PGDOORMAN_SAMPLE_HZ", "97"))
    every = float(os.environ.get("PGDOORMAN_COUNTERS_EVERY", "1"))
    threading.Thread(target=reporter, args=(path, every, hz), name="counters", daemon=True).start()
    from pgdoorman.cli import main as cli_main

    return int(cli_main() or 0)


if __name__ == "__main__":
    sys.exit(main())
