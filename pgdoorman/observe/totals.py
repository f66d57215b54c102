"""Per-pool counter totals summed over the workers' lock-free shards, the SHOW STATS averages, and the
sampler that keeps 15 seconds of totals for them."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pgdoorman.core.stats import merged
from pgdoorman.observe.interfaces import PoolKey, Source, copy_of, dict_copy
from pgdoorman.observe.snapshot import ServerInfo, live_servers, server_info

if TYPE_CHECKING:
    from pgdoorman.core.pool import Pool


# ------------------------------------------------------------------------------------------ counters
Merged = tuple[list[int], int, int]  # (bucket counts, n, sum of microseconds)


@dataclass
class Totals:
    """Counters of one pool since it was created, summed over the per-worker shards."""

    xact_count: int = 0
    query_count: int = 0
    bytes_in: int = 0  # received from clients
    bytes_out: int = 0  # sent to clients
    xact_time_us: int = 0
    query_time_us: int = 0
    wait_time_us: int = 0
    wait_count: int = 0
    errors: int = 0
    query_timeouts: int = 0  # requests cancelled for query_timeout
    max_wait_us: int = 0
    errors_by_class: dict[str, int] = field(default_factory=dict)
    pins: int = 0  # times a transaction-mode client was pinned to its server
    refused: int = 0  # statements refused because they would pin (transaction_pinning: refuse)
    check_cache: int = 0  # pooler_check_query answered from the kept answer
    check_backend: int = 0  # pooler_check_query sent to PostgreSQL
    streams: list[int] = field(default_factory=lambda: [0] * 9)  # streamed messages (core/stats.py STREAM_KINDS)
    handed_local: int = 0  # freed servers handed to a waiting client of the same worker
    handed_moved: int = 0  # ... of another worker (the server moved there)
    # (query, transaction, wait) histograms read in the same pass as the counts above, which come from them:
    # a scrape's totals and histogram counts agree even while workers keep counting.
    hists: tuple[Merged, Merged, Merged] = ((([], 0, 0)), (([], 0, 0)), (([], 0, 0)))


def pool_totals(pool: Pool) -> Totals:
    t = Totals()
    shards = copy_of(pool.stats)
    q, x, w = t.hists = (
        merged(s.query_hist for s in shards),
        merged(s.xact_hist for s in shards),
        merged(s.wait_hist for s in shards),
    )
    t.query_count, t.query_time_us = q[1], q[2]
    t.xact_count, t.xact_time_us = x[1], x[2]
    t.wait_count, t.wait_time_us = w[1], w[2]
    for st in shards:
        t.bytes_in += st.bytes_in
        t.bytes_out += st.bytes_out
        t.errors += st.errors
        t.query_timeouts += st.query_timeouts
        t.max_wait_us = max(t.max_wait_us, st.max_wait_us)
        t.pins += st.pins
        t.refused += st.refused
        t.check_cache += st.check_cache
        t.check_backend += st.check_backend
        t.streams = [a + b for a, b in zip(t.streams, copy_of(st.streams), strict=True)]
        t.handed_local += st.handed_local
        t.handed_moved += st.handed_moved
        for k, n in dict_copy(st.errors_by_class).items():
            t.errors_by_class[k] = t.errors_by_class.get(k, 0) + n
    return t


@dataclass
class Averages:
    """SHOW STATS averages over the sampler's window: rates per second, times in microseconds."""

    xact_count: int = 0
    query_count: int = 0
    recv: int = 0
    sent: int = 0
    errors: int = 0
    xact_time: int = 0
    query_time: int = 0
    wait_time: int = 0
    window: float = 0.0


def averages(now: Totals, base: Totals, seconds: float) -> Averages:
    secs = max(seconds, 1e-3)
    dx = now.xact_count - base.xact_count
    dq = now.query_count - base.query_count
    return Averages(
        xact_count=round(dx / secs),
        query_count=round(dq / secs),
        recv=round((now.bytes_in - base.bytes_in) / secs),
        sent=round((now.bytes_out - base.bytes_out) / secs),
        errors=round((now.errors - base.errors) / secs),
        xact_time=(now.xact_time_us - base.xact_time_us) // dx if dx > 0 else 0,
        query_time=(now.query_time_us - base.query_time_us) // dq if dq > 0 else 0,
        # As PgDoorman: the wait accumulated in the window spread over the window's transactions.
        wait_time=(now.wait_time_us - base.wait_time_us) // dx if dx > 0 else 0,
        window=seconds,
    )


class StatsSampler:
    """Samples every pool's totals once per `tick` seconds and keeps `period` seconds of history, so SHOW
    STATS can report averages over the last period without touching the workers' hot path. Until a full
    period has passed, the window starts at process start (when every counter was zero). `extra` runs
    every 15 ticks on the sampler's thread (the composition root passes the socket-count refresh)."""

    def __init__(self, src: Source, period: float = 15.0, tick: float = 1.0,
                 extra: Callable[[], None] | None = None) -> None:
        self.src = src
        self.period = period
        self.tick = tick
        self.extra = extra
        self.lock = threading.Lock()
        self.samples: deque[tuple[float, dict[PoolKey, Totals]]] = deque()
        # Process start on the monotonic clock: the implicit all-zero first sample.
        self.origin = time.monotonic() - max(0.0, time.time() - src.started)
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None
        # Servers' prepared statement hits/misses die with the server: accumulate their increases per
        # pool so the *_total counters stay monotonic (a server closing between two samples loses at
        # most one tick of increases).
        self.ps_last: dict[int, tuple[int, int]] = {}
        self.ps_totals: dict[PoolKey, list[int]] = {}

    def start(self) -> StatsSampler:
        self.thread = threading.Thread(target=self._run, name="stats-sampler", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.thread is not None:
            self.thread.join(5)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                self.sample()
                if self.extra is not None and n % 15 == 0:
                    self.extra()
            except Exception:  # a sampler must never die: the next tick tries again
                logging.getLogger("pgdoorman.admin").exception("stats sampler failed")
            n += 1
            self._stop.wait(self.tick)

    def track_prepared(self, servers: Iterable[ServerInfo]) -> None:
        with self.lock:
            last = self.ps_last
            seen: dict[int, tuple[int, int]] = {}
            for s in servers:
                hits, misses = s.ps_hits, s.ps_misses
                ph, pm = last.get(s.id, (0, 0))
                tot = self.ps_totals.setdefault(s.pool, [0, 0])
                tot[0] += max(0, hits - ph)
                tot[1] += max(0, misses - pm)
                seen[s.id] = (hits, misses)
            self.ps_last = seen

    def prepared_totals(self, key: PoolKey) -> tuple[int, int]:
        with self.lock:
            h, m = self.ps_totals.get(key, (0, 0))
            return h, m

    def sample(self) -> None:
        now = time.monotonic()
        totals = {(p.database, p.username): pool_totals(p) for p in copy_of(self.src.pool_list)}
        self.track_prepared(server_info(s) for s in live_servers(self.src))
        with self.lock:
            self.samples.append((now, totals))
            # Keep the newest sample that is at least `period` old: it is the base of the window.
            while len(self.samples) >= 2 and self.samples[1][0] <= now - self.period:
                self.samples.popleft()

    def base(self, now: float) -> tuple[float, dict[PoolKey, Totals]]:
        """The sample the averaging window starts at: the newest one at least `period` old; if there is
        none yet, process start when the process is younger than `period`, else the oldest sample (a
        shorter but recent window), else process start."""
        with self.lock:
            best: tuple[float, dict[PoolKey, Totals]] | None = None
            for t, tot in self.samples:
                if t <= now - self.period:
                    best = (t, tot)
                else:
                    break
            if best is not None:
                return best
            if self.origin > now - self.period:
                return (self.origin, {})
            if self.samples and now - self.samples[0][0] >= 1.0:
                return self.samples[0]
            return (self.origin, {})

    def averages_for(self, key: PoolKey, current: Totals, now: float | None = None) -> Averages:
        now = time.monotonic() if now is None else now
        t0, base = self.base(now)
        return averages(current, base.get(key, Totals()), now - t0)


