"""The in-memory log tap behind `GET /api/logs` (Admin only): the last `web.log_tap_max_entries` log
records of the process (0 turns it off), each with a sequence number so a page can ask for what came
after the last one it has. A logging.Handler on the root logger, so it sees what the log shows at the
current level (SET log_level applies); the listener's lines about /api/logs requests are left out, or
a page tailing the log would fill it with its own polling.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

MAX_MESSAGE = 4096  # characters of one entry's message (a traceback is cut there)
QUIET = ("pgdoorman.web.access", "pgdoorman.metrics")  # their lines about /api/logs requests stay out


class LogTap(logging.Handler):
    def __init__(self, capacity: Callable[[], int]) -> None:
        super().__init__(logging.NOTSET)
        self.capacity = capacity  # read at every record: RELOAD may change web.log_tap_max_entries
        self.entries: deque[dict[str, Any]] = deque(maxlen=max(1, capacity()))
        self.seq = 0
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.name in QUIET and "/api/logs" in record.getMessage():
                return
            cap = self.capacity()
            if cap <= 0:
                return
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            entry = {"time": record.created, "level": record.levelname.lower(), "logger": record.name,
                     "thread": record.threadName, "message": text[:MAX_MESSAGE]}
            with self._guard:
                if self.entries.maxlen != cap:
                    self.entries = deque(self.entries, maxlen=cap)
                self.seq += 1
                entry["seq"] = self.seq
                self.entries.append(entry)
        except Exception:  # a log handler must never raise into the code that logged
            self.handleError(record)

    def read(self, after: int = 0, limit: int = 1000, level: int = logging.NOTSET) -> dict[str, Any]:
        """Entries with seq > after (the newest `limit` of them) at `level` or above; `last` is the
        newest seq so far (the next `after`), `dropped` how many after `after` the ring no longer holds."""
        with self._guard:
            entries = list(self.entries)
            last = self.seq
        first_held = entries[0]["seq"] if entries else last + 1
        picked = [e for e in entries if e["seq"] > after and logging.getLevelName(e["level"].upper()) >= level]
        return {"entries": picked[-limit:] if limit else [], "last": last,
                "dropped": max(0, first_held - after - 1) if after < last else 0,
                "capacity": self.capacity()}


def install(capacity: Callable[[], int]) -> LogTap:
    tap = LogTap(capacity)
    logging.getLogger().addHandler(tap)
    return tap
