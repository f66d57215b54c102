"""The event journal and RecordingControl: commands recorded after they ran, with their source and
outcome; a command that raised is not recorded; the journal is bounded and read by sequence."""

from __future__ import annotations

from typing import Any

import pytest

from pgdoorman.observe import UnknownDatabase
from pgdoorman.observe.events import EventJournal, RecordingControl


class Pooler:
    """A Control that does nothing but know one database and say how RELOAD went."""

    def __init__(self) -> None:
        self.reload_ok = True
        self.done: list[str] = []

    def _db(self, database: str | None) -> None:
        if database not in (None, "app"):
            raise UnknownDatabase(database)

    def reload(self) -> tuple[bool, str]:
        return (True, "reloaded") if self.reload_ok else (False, "c.yaml: general.port: not a port")

    def pause(self, database: str | None, here: Any) -> None:
        self._db(database)
        self.done.append("pause")

    def resume(self, database: str | None, here: Any) -> None:
        self._db(database)

    def reconnect(self, database: str | None) -> None:
        self._db(database)

    def kill(self, database: str | None) -> None:
        self._db(database)

    def set_log_level(self, spec: str) -> str:
        if spec == "nope":
            raise ValueError(spec)
        return spec

    def request_upgrade(self) -> bool:
        return False

    def request_shutdown(self) -> None:
        pass

    def reset_interner(self) -> int:
        return 0


def test_recording_control() -> None:
    journal = EventJournal()
    inner = Pooler()
    c = RecordingControl(inner, journal, "web API 10.0.0.1 (admin)")
    c.pause("app", None)
    with pytest.raises(UnknownDatabase):
        c.resume("other", None)
    c.resume(None, None)
    c.kill("app")
    with pytest.raises(ValueError):
        c.set_log_level("nope")
    inner.reload_ok = False
    assert c.reload() == (False, "c.yaml: general.port: not a port")
    assert c.request_upgrade() is False
    events, last = journal.read()
    assert [(e.kind, e.target, e.ok) for e in events] == [
        ("pause", "app", True), ("resume", "all pools", True), ("kill", "app", True), ("reload", "", False),
        ("upgrade", "", False)]
    assert last == 5 and [e.seq for e in events] == [1, 2, 3, 4, 5] and inner.done == ["pause"]
    assert events[3].detail == "c.yaml: general.port: not a port"
    assert {e.source for e in events} == {"web API 10.0.0.1 (admin)"}


def test_journal_is_bounded_and_read_by_sequence() -> None:
    journal = EventJournal(capacity=3)
    for i in range(5):
        journal.record("pause", str(i))
    events, last = journal.read()
    assert last == 5 and [e.target for e in events] == ["2", "3", "4"]
    assert [e.seq for e in journal.read(after=4)[0]] == [5]
    assert [e.seq for e in journal.read(limit=1)[0]] == [5]
    assert journal.read(after=5)[0] == []
