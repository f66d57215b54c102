"""What a server connection sees of the client it serves (ClientPeer), declared as a protocol so that the
server's modules do not import the client's: ClientConn satisfies it, and mypy checks that where a client
links itself to a server (ServerConn.link)."""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from pgdoorman.core.prepared import Statement


class ClientPeer(Protocol):
    # Connection state the server reads (net/conn.py).
    closed: bool
    read_paused: bool
    # The client's side of its requests in flight and of its prepared statements, which the server's relay
    # reads and, for a stale statement, replaces (server_prepared.py).
    waiting: bool
    xact_start: float  # monotonic start of its transaction, 0.0 outside one
    rq: deque[tuple[int, Any]]
    named: dict[bytes, Statement]
    unnamed: Statement | None
    synth_head: bytes | None
    fast_bind: tuple[Statement, bytes] | None
    fast_redo: tuple[bytes, int, int, bytes] | None
    held_error: bytes | None

    def write(self, data: Any) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def ready(self, status: int, completed: int) -> bool: ...

    def copy_in_started(self) -> None: ...

    def on_server_error(self, body: memoryview) -> None: ...

    def hold_error(self, body: memoryview) -> None: ...

    def param_changed(self, k: str, v: str) -> None: ...

    def param_synced(self, k: str, v: str) -> None: ...

    def redo_fast_batch(self, status: int) -> bytes | None: ...

    def skipped(self, kind: int, data: Any) -> None: ...

    def forget_statements(self) -> None: ...
