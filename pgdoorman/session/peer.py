"""What a server connection sees of the client it serves (ClientPeer), declared as a protocol so that the
server's modules do not import the client's: ClientConn satisfies it, and mypy checks that where a client
links itself to a server (ServerConn.link)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

from pgdoorman.session.rewrite import Rewriter


class HeldNotifications(Protocol):
    """What the server's relay uses of a listening client's state (listening.ListenState): the notifications
    waiting for its next ReadyForQuery."""

    @property
    def queue(self) -> Collection[tuple[bytes, bytes]]: ...

    @property
    def notified(self) -> bool: ...

    def before_ready(self, c: Any, z: bytes) -> bytes: ...


class ClientPeer(Protocol):
    """Read-only fields (properties here, so mypy refuses a write through this protocol) and the calls through
    which the server reports to its client: the server writes nothing of the client's."""

    @property
    def closed(self) -> bool: ...

    @property
    def read_paused(self) -> bool: ...

    @property
    def waiting(self) -> bool: ...

    @property
    def transaction_mode(self) -> bool: ...

    @property
    def settings(self) -> dict[str, str]: ...  # its startup packet's settings (params.startup_settings)

    @property
    def want(self) -> dict[str, str]: ...  # the settings its session holds, reported ones as it was told them

    @property
    def want_base(self) -> dict[str, str]: ...  # `want` at login: what a RESET returns to

    @property
    def resets(self) -> tuple[int, list[tuple[str, int]]] | None: ...  # what its request resets (txresets.py)

    @property
    def lsn(self) -> HeldNotifications | None: ...  # transaction mode LISTEN state, once it used LISTEN

    @property
    def xact_start(self) -> float: ...  # monotonic start of its transaction, 0.0 outside one

    @property
    def pending(self) -> bytes | bytearray: ...  # what it sent, scanned, waiting for a server

    @property
    def raw(self) -> bytes | bytearray: ...  # what it sent, not yet scanned (waiting for a server)

    @property
    def copy_confused(self) -> bool: ...  # it keeps its server until it leaves (ClientBase.on_server_error)

    @property
    def in_flight(self) -> bool: ...  # something it sent is unanswered (see ClientBase.in_flight)

    # The client's prepared-statement rewriter (rewrite.py): the server hands it each response in
    # prepared-statement mode, and asks it about the fast batch in flight.
    @property
    def rw(self) -> Rewriter: ...

    def write(self, data: Any) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def ready(self, status: int, completed: int) -> bool: ...

    def copy_in_started(self) -> None: ...

    def on_server_error(self, body: memoryview) -> None: ...

    def param_changed(self, k: str, v: str) -> None: ...

    def param_synced(self, k: str, v: str) -> None: ...
