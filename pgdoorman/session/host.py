"""What a connection may ask of the worker that owns it (Host) and of the process (Registry), declared as
protocols so that nothing in session/ imports the worker or the app: `Worker` and `App` satisfy them.

A connection's upward calls are few: give a server back, report that a connection closed or a server
logged in, apply the listener's TCP options. The registry is the process-wide, read-mostly half: config,
pools, cancel keys, client TLS, pg_hba rules, the admin console, the rejection counters and the auth_query
lookups.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

# A connection as its host's methods take it: Any, because the connection classes import this module (a
# protocol naming them would make an import cycle, even a type-only one). The worker's own signatures name
# the real classes.
Client = Any  # a ClientConn
Server = Any  # a ServerConn

if TYPE_CHECKING:
    from pgdoorman import hba
    from pgdoorman.config import Config
    from pgdoorman.core.cancel import CancelRegistry
    from pgdoorman.core.pool import Pool
    from pgdoorman.net.loop import Loop
    from pgdoorman.net.ratelimit import HandshakeLimiter
    from pgdoorman.net.tls import ClientTls
    from pgdoorman.protocol import auth


class Registry(Protocol):
    """The process-wide state connections read (implemented by App)."""

    @property
    def config(self) -> Config: ...

    @property
    def pools(self) -> dict[tuple[str, str], Pool]: ...

    @property
    def cancels(self) -> CancelRegistry: ...

    @property
    def client_tls(self) -> ClientTls: ...

    @property
    def tls_limiter(self) -> HandshakeLimiter: ...  # general.tls_rate_limit_per_second

    @property
    def hba_rules(self) -> tuple[hba.Rule, ...] | None: ...

    @property
    def hba_networks(self) -> tuple[hba.Network, ...]: ...

    def count_rejection(self, reason: str) -> None: ...

    def count_tls(self) -> None: ...

    def admin_verifier(self) -> auth.ScramVerifier: ...

    def make_admin(self, client: Client) -> Any: ...

    # auth_query (pgdoorman/auth_query/): a user of the database not among its static users.
    def auth_query_lookup(self, database: str, user: str,
                          done: Callable[[Pool | None, str], None]) -> tuple[Pool | None, str] | None: ...

    def auth_query_verdict(self, database: str, user: str, ok: bool) -> None: ...

    # Talos: the pool a token opens, its user and application_name (raises talos.TalosRefused).
    def talos_login(self, database: str, token: str) -> tuple[Pool, str, str]: ...


class Host(Protocol):
    """The worker thread that owns a connection (implemented by Worker). Every call runs on its loop, except
    where a worker hands a server or a retry to another worker's loop (`hand_over`, `adopt`,
    `retry_checkout`)."""

    @property
    def id(self) -> int: ...

    @property
    def loop(self) -> Loop: ...

    @property
    def app(self) -> Registry: ...

    def checkout(self, pool: Pool, c: Client) -> Server: ...

    def carry_out(self, pool: Pool, pairs: Any, spawn: bool, antic: float = 0.0) -> None: ...

    def evict_for(self, pool: Pool) -> None: ...

    def release_server(self, s: Server, client_gone: bool = False, client: Any = None) -> None: ...

    def release_done(self, s: Server) -> None: ...

    def client_closed(self, c: Client, reason: str) -> None: ...

    def server_closed(self, s: Server, prev_state: int, reason: str) -> None: ...

    def server_ready(self, s: Server) -> None: ...

    def apply_tcp(self, sock: socket.socket) -> None: ...

    # Worker to worker, reached through a connection's host: a server moving to the client's worker.
    def hand_over(self, s: Server, c: Client) -> None: ...

    def adopt(self, s: Server, c: Client) -> None: ...

    def retry_checkout(self, c: Client) -> None: ...
