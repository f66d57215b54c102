"""PgDoorman's slow-checkout warning (a client waited SLOW_CHECKOUT_US or more for a server), at most one line
per pool per second, the next line saying how many were left out. Under a queue of thousands of clients nearly
every checkout is slow, and a line for each, with the pool's counts (a walk over all its waiters), cost more
than the transactions: make bench-tls's 10,000-client cell ran at 210 tps and 2,150 µs of pooler CPU per
transaction with a line per checkout, at 1,660 tps and 99 µs without the walk."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgdoorman.core.pool import Pool

log = logging.getLogger("pgdoorman.client")

SLOW_CHECKOUT_US = 500_000  # a client that waited this long for a server is logged (PgDoorman's threshold)
INTERVAL_S = 1.0


class Throttle:
    """At most one event per key every `interval` seconds (any worker thread), and how many were held back."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.lock = threading.Lock()
        self.last: dict[str, tuple[float, int]] = {}  # key -> (when one was let through, held back since)

    def allow(self, key: str, now: float) -> int | None:
        """None: hold this event back; else let it through: the number held back since the last one."""
        with self.lock:
            seen = self.last.get(key)
            if seen is not None and now - seen[0] < self.interval:
                self.last[key] = (seen[0], seen[1] + 1)
                return None
            self.last[key] = (now, 0)
            return seen[1] if seen is not None else 0


THROTTLE = Throttle(INTERVAL_S)


def log_slow_checkout(addr: str, pool: Pool, pid: int, waited_us: int, now: float) -> None:
    """The warning for a client at `addr` that waited `waited_us` for server `pid` of `pool` (monotonic `now`)."""
    held = THROTTLE.allow(pool.name, now)
    if held is None:
        return
    n = pool.counts()
    log.warning("slow checkout: client %s (%s) waited %d ms for a server (pid %d): pool size %d/%d, idle %d, "
                "connecting %d, clients waiting %d%s%s", addr, pool.name, waited_us // 1000, pid, n["sv_total"],
                pool.pool_size, n["sv_idle"], n["sv_login"], n["cl_waiting"], ", paused" if pool.paused else "",
                f"; {held} more slow checkouts of this pool not logged since the last line" if held else "")
