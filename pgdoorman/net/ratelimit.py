"""`tls_rate_limit_per_second`: how many client TLS handshakes may start per second in the process. A
handshake over the rate is not refused: it starts later (the client, which sent its SSLRequest and got 'S',
simply waits for the server's part of the handshake).

PgDoorman lets `rate / 100` handshakes through per 10 ms. The same shape here, as a virtual schedule (the
generic cell rate algorithm): handshake n may start at `start + n / rate`, and up to `rate / 100` may start
ahead of that schedule, so a burst of that size goes through at once and the rest follow at the rate. Over
any second at most `rate + rate / 100` start. Thread-safe: every worker asks the one limiter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class HandshakeLimiter:
    """`delay()` says how long a handshake must wait before it starts; it books the slot at once, so a
    caller must start its handshake after that delay (or give the slot up by not starting at all)."""

    __slots__ = ("rate", "interval", "tolerance", "_tat", "_lock", "_clock", "waited")

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.interval = 1.0 / rate if rate > 0 else 0.0
        burst = max(1, rate // 100)
        # A slot may be taken this long before its place in the schedule: `burst` slots at once.
        self.tolerance = (burst - 1) * self.interval
        self._tat = 0.0  # theoretical arrival time of the next slot
        self._lock = threading.Lock()
        self._clock = clock
        self.waited = 0  # handshakes that had to wait (for logs and tests)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def delay(self) -> float:
        """Seconds until this handshake may start (0.0: now)."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        with self._lock:
            tat = self._tat if self._tat > now else now
            start = tat - self.tolerance
            self._tat = tat + self.interval
            if start <= now:
                return 0.0
            self.waited += 1
            return start - now
