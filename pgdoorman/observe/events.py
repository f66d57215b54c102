"""The event journal: what was done to the pooler and by whom (reloads and their outcome, pauses,
resumes, reconnects, kills, log level changes, binary upgrades, shutdown requests) and what happened to it
(Patroni-assisted fallbacks: a pool's server lost, a fallback host taken, the server back), newest last, bounded.
The web console shows it (`/api/events`). `RecordingControl` wraps the `Control` the admin console and
the web API are handed, so each command is recorded where it is carried out, with its source; the
composition root records what does not pass through a console (start, SIGHUP reloads, upgrades).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from pgdoorman.observe.interfaces import Control

CAPACITY = 1000


@dataclass(frozen=True)
class Event:
    seq: int
    time: float  # wall clock
    kind: str  # start, reload, pause, resume, reconnect, kill, log_level, upgrade, shutdown, fallback, reset_interner
    target: str  # the database, "all pools", the log filter, ... ("" when none)
    source: str  # "admin console 127.0.0.1:5544 (admin)", "web API 10.0.0.7 (admin)", "SIGHUP", ...
    ok: bool
    detail: str  # why it failed, or what came of it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventJournal:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self._events: deque[Event] = deque(maxlen=capacity)
        self._seq = 0
        self._lock = threading.Lock()

    def record(self, kind: str, target: str = "", source: str = "", ok: bool = True, detail: str = "") -> Event:
        with self._lock:
            self._seq += 1
            ev = Event(self._seq, time.time(), kind, target, source, ok, detail[:2000])
            self._events.append(ev)
            return ev

    def read(self, after: int = 0, limit: int = CAPACITY) -> tuple[list[Event], int]:
        """Events with seq > after (the newest `limit`), and the newest seq so far."""
        with self._lock:
            events = [e for e in self._events if e.seq > after]
            return events[-limit:] if limit else [], self._seq


def _where(database: str | None) -> str:
    return "all pools" if database is None else database


class RecordingControl:
    """A `Control` that records each command it forwards (after it ran; one that raised, e.g. an unknown
    database, changed nothing and is not recorded)."""

    def __init__(self, inner: Control, journal: EventJournal, source: str) -> None:
        self.inner = inner
        self.journal = journal
        self.source = source

    def reload(self) -> tuple[bool, str]:
        ok, message = self.inner.reload()
        self.journal.record("reload", "", self.source, ok, "" if ok else message)
        return ok, message

    def pause(self, database: str | None, here: Any) -> None:
        self.inner.pause(database, here)
        self.journal.record("pause", _where(database), self.source)

    def resume(self, database: str | None, here: Any) -> None:
        self.inner.resume(database, here)
        self.journal.record("resume", _where(database), self.source)

    def reconnect(self, database: str | None) -> None:
        self.inner.reconnect(database)
        self.journal.record("reconnect", _where(database), self.source)

    def kill(self, database: str | None) -> None:
        self.inner.kill(database)
        self.journal.record("kill", _where(database), self.source)

    def set_log_level(self, spec: str) -> str:
        result = self.inner.set_log_level(spec)
        self.journal.record("log_level", result, self.source)
        return result

    def request_upgrade(self) -> bool:
        started = self.inner.request_upgrade()
        self.journal.record("upgrade", "", self.source, started,
                            "requested" if started else "refused: this process already handed over")
        return started

    def request_shutdown(self) -> None:
        self.inner.request_shutdown()
        self.journal.record("shutdown", "", self.source)

    def reset_interner(self) -> int:
        n = self.inner.reset_interner()
        self.journal.record("reset_interner", "", self.source, True, f"{n} statements dropped")
        return n
