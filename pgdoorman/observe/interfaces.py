"""The interfaces of the observation API: `Source` (what the observer reads; `App` satisfies it), `Control`
(what the admin console may ask the pooler to do; `App` satisfies it too), and copying containers that
worker threads may resize while they are read."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from pgdoorman.config import Config
    from pgdoorman.core.pool import Pool
    from pgdoorman.placement import Transit
    from pgdoorman.session.client import ClientConn
    from pgdoorman.session.server import ServerConn

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

PoolKey = tuple[str, str]  # (database, user)


# ------------------------------------------------------------------------------------------ interfaces
class WorkerView(Protocol):
    @property
    def clients(self) -> Collection[ClientConn]: ...
    @property
    def servers(self) -> Collection[ServerConn]: ...


class CancelCounts(Protocol):
    @property
    def requests(self) -> int: ...


class Source(Protocol):
    """What the observer reads from the running pooler (`App` satisfies it)."""

    @property
    def config(self) -> Config: ...
    @property
    def started(self) -> float: ...  # wall clock
    @property
    def workers(self) -> Sequence[WorkerView]: ...
    @property
    def transit(self) -> Transit: ...  # clients moving between workers, in no worker's set meanwhile
    @property
    def pool_list(self) -> Sequence[Pool]: ...
    @property
    def total_accepted(self) -> int: ...
    @property
    def tls_connections(self) -> int: ...
    @property
    def connection_errors(self) -> int: ...
    @property
    def listener_rejections(self) -> dict[str, int]: ...
    @property
    def cancels(self) -> CancelCounts: ...


class UnknownDatabase(LookupError):
    """A control command named a database no pool serves (the console answers 3D000)."""

    def __init__(self, database: str) -> None:
        super().__init__(database)
        self.database = database


class Control(Protocol):
    """What the admin console may ask the pooler to do (`App` satisfies it). `database=None` means every
    pool; an unknown database raises UnknownDatabase before anything is changed. `here` is the worker the
    caller runs on (work a resumed pool hands out starts there); the console passes it through unread."""

    def reload(self) -> tuple[bool, str]: ...
    def pause(self, database: str | None, here: Any) -> None: ...
    def resume(self, database: str | None, here: Any) -> None: ...
    def reconnect(self, database: str | None) -> None: ...
    def kill(self, database: str | None) -> None: ...
    def set_log_level(self, spec: str) -> str: ...
    def request_upgrade(self) -> bool: ...
    def request_shutdown(self) -> None: ...
    def reset_interner(self) -> int: ...  # RESET INTERNER: statements dropped from the pools' caches


# ------------------------------------------------------------------------------------------ copying
def copy_of(container: Iterable[T]) -> list[T]:
    """`list(container)` for a set/dict/deque another thread may resize: retried until it succeeds."""
    for _ in range(100):
        try:
            return list(container)
        except RuntimeError:  # "changed size during iteration"
            continue
    return []


def dict_copy(d: dict[K, V]) -> dict[K, V]:
    for _ in range(100):
        try:
            return dict(d)
        except RuntimeError:
            continue
    return {}
