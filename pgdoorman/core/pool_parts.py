"""A pool's per-worker counters (`PoolStats`), the protocols of the live objects it is built with
(`PoolLive`, `ServerTlsLike`) and of the clients and servers it queues and parks (`Waiter`, `Shard`,
`Pooled`); core/pool.py re-exports them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from pgdoorman.core.stats import STREAM_KINDS, Histogram

if TYPE_CHECKING:
    import ssl


class ServerTlsLike(Protocol):
    """What a pool's server connections read of its server TLS (pgdoorman.net.tls.ServerTls)."""

    @property
    def mode(self) -> str: ...
    @property
    def context(self) -> ssl.SSLContext | None: ...
    @property
    def first(self) -> bool: ...
    @property
    def required(self) -> bool: ...


class PoolLive(Protocol):
    """The live objects of one (pool, user), built once from the checked config by pgdoorman.resources
    (PoolResources): server TLS, and the JWT keys for clients' tokens and for ours to PostgreSQL."""

    @property
    def server_tls(self) -> ServerTlsLike: ...
    @property
    def jwt_key(self) -> Any: ...
    @property
    def jwt_server_key(self) -> Any: ...


class Shard(Protocol):
    """The worker a waiter lives on, as the pool sees it: which idle list to serve it from."""

    @property
    def id(self) -> int: ...


class Waiter(Protocol):
    """A client as the pool sees it (ClientConn): queued while it waits; `waiting` turns False when it gets
    a server or gives up, and the pool then skips it."""

    waiting: bool
    wait_start: float

    @property
    def worker(self) -> Shard: ...


class Pooled(Protocol):
    """A server as the pool sees it (ServerConn): parked idle, expired by age or idleness."""

    idle_since: float
    fallback_until: float  # a fallback host's connection: closed after this (0: not one)
    # When parked idle with server_idle_check_timeout on: the time after which it is probed before a client
    # uses it (0: no probe; the client that links it clears it).
    check_at: float

    @property
    def id(self) -> int: ...

    @property
    def created(self) -> float: ...


def expiry(s: Pooled, now: float, idle_timeout: float, lifetime: float) -> str | None:
    """Why idle server `s` is closed now: "idle_timeout" or "server_lifetime" (a fallback host's connection past
    its lifetime included), or None. +-20% jitter so servers opened together do not all expire together."""
    jit = 0.8 + 0.4 * ((s.id * 2654435761) % 1000) / 1000.0
    too_idle = idle_timeout > 0 and now - s.idle_since > idle_timeout * jit
    too_old = lifetime > 0 and now - s.created > lifetime * jit or 0 < s.fallback_until < now
    if too_idle:
        return "idle_timeout"
    return "server_lifetime" if too_old else None


class PoolStats:
    """Per-worker counters of one pool: only the owning worker writes them, readers sum the shards.

    Query, transaction and wait counts and time sums live in the histograms only: one write per event,
    so a reader on another thread (free-threaded CPython) never sees a count and its histogram disagree.
    """

    __slots__ = ("bytes_in", "bytes_out", "max_wait_us", "errors", "xact_hist", "query_hist", "wait_hist",
                 "errors_by_class", "pins", "refused", "query_timeouts", "check_cache", "check_backend", "streams",
                 "handed_local", "handed_moved", "on_streamed")

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0
        self.max_wait_us = 0
        self.errors = 0
        self.xact_hist = Histogram()
        self.query_hist = Histogram()
        self.wait_hist = Histogram()
        self.errors_by_class: dict[str, int] = {}  # SQLSTATE class (first two chars) -> count
        self.pins = 0  # transaction-mode clients pinned to their server (session/client_base.py session_check)
        self.refused = 0  # statements refused because they would pin (transaction_pinning: refuse)
        self.query_timeouts = 0  # requests cancelled by query_timeout
        self.check_cache = 0  # pooler_check_query answered from the kept answer
        self.check_backend = 0  # pooler_check_query sent to PostgreSQL (no answer kept yet)
        # Streamed messages (message_size_to_be_stream): by kind (STREAM_KINDS), ok count, error count, bytes.
        self.streams = [0] * 9
        self.handed_local = 0  # freed servers handed to a waiter of the same worker (worker.py Worker.hand)
        self.handed_moved = 0  # ... to a waiter of another worker: the server moved there
        # `streamed` bound once: every client's scanner holds this one (a bound method each costs 64 bytes).
        self.on_streamed = self.streamed

    def streamed(self, t: int, size: int, ok: bool) -> None:
        """A message of `size` bytes went through in pieces (ok), or its connection closed in its middle."""
        k = STREAM_KINDS.get(t)
        if k is not None:
            k *= 3
            self.streams[k + (0 if ok else 1)] += 1
            self.streams[k + 2] += size

    @property
    def xact_count(self) -> int:
        return self.xact_hist.n

    @property
    def xact_time_us(self) -> int:
        return self.xact_hist.total

    @property
    def query_count(self) -> int:
        return self.query_hist.n

    @property
    def query_time_us(self) -> int:
        return self.query_hist.total

    @property
    def wait_count(self) -> int:
        return self.wait_hist.n

    @property
    def wait_time_us(self) -> int:
        return self.wait_hist.total
