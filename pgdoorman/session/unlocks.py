"""A departed client's session advisory locks are released before another client looks for them.

On PostgreSQL a session's advisory locks go when its backend exits, which is done before a client that connects
afterwards has logged in (a fork, authentication, the backend's start): reconnect at once and
`pg_try_advisory_lock` finds the lock free. Through a pool the new login is immediate and an idle server is
there, while the departed client's server is still running the cleanup that releases them
(`pg_advisory_unlock_all()`, or DISCARD ALL): a request sent then could find the lock still held, by a server
nobody uses any more. So while such a cleanup is in flight (`begin` .. `end`, called by the worker):

- transaction mode: a request that takes a server and names advisory locks in its first read (`advisory`:
  `pg_try_advisory_lock`, `pg_advisory_lock`, a look at pg_locks' 'advisory' rows) waits until the cleanups that
  were in flight when it came have ended (`hold`); other requests go on at once;
- session mode, where a client takes its server at login, before any text: a login waits the same way
  (`hold_login`).

The wait is bounded by LIMIT seconds (a cleanup on a server that stopped answering): then the request goes on
and finds the lock held, as it would on PostgreSQL while the old backend had not exited. A client that waits is
`waiting` (SHOW CLIENTS), with its bytes held as for a server; it is not in the pool's queue, and gets a
server by the usual checkout when its wait ends. A server that closes ends its cleanup (its backend's exit
releases the locks). The relay's path pays one test (`pool.unlocking` is None unless a cleanup of this kind
is in flight; about 3 bytecodes a transaction). Not looked at: a Bind of a statement parsed in an earlier
request (its text is not in the request; a client that reconnects parses again), and text past the first read.

Functions take the ClientConn and ServerConn as `Any` (a type import would be a cycle).
"""

from __future__ import annotations

from math import inf
from typing import Any

from pgdoorman.core import leaks

LIMIT = 1.0  # seconds a request or login waits for the cleanups at most
_RELEASES = (leaks.CLEANUP, "DISCARD ALL")  # (ServerConn.cleanup_queries' parts that release advisory locks)


class Unlocks:
    """A pool's cleanups in flight that release advisory locks (`pool.unlocking` while there are any), by
    server, each with its sequence number; and the clients waiting for them, each with the last number it
    waits for. Changed under the pool's lock."""

    __slots__ = ("servers", "seq", "waiters")

    def __init__(self) -> None:
        self.servers: dict[Any, int] = {}
        self.seq = 0
        self.waiters: list[tuple[Any, int]] = []


def begin(s: Any, queries: list[str] | None = None) -> None:
    """Server `s` runs the cleanup `queries` (its client left, or is done with it): note it if they release
    advisory locks (None: its client left while our query runs, and the cleanup after it may)."""
    if queries is not None and not any(r in q for q in queries for r in _RELEASES):
        return
    pool = s.pool
    with pool.lock:
        u = pool.unlocking
        if u is None:
            pool.unlocking = u = Unlocks()
        u.seq += 1
        u.servers[s] = u.seq


def end(s: Any, worker: Any) -> None:
    """`s`'s cleanup ended (or `s` closed), on `worker`: the clients that waited for it and nothing older go
    on, each on its own worker."""
    pool = s.pool
    if pool.unlocking is None:
        return
    with pool.lock:
        u = pool.unlocking
        if u is None or u.servers.pop(s, None) is None:
            return
        low = min(u.servers.values(), default=inf)
        ready = [c for c, seq in u.waiters if seq < low]
        if ready:
            u.waiters = [(c, seq) for c, seq in u.waiters if seq >= low]
        if not u.servers:
            pool.unlocking = None
    for c in ready:
        if c.worker is worker:
            _resume(c)
        else:
            c.worker.loop.call_soon_threadsafe(_resume, c)


def hold(c: Any, pool: Any, view: memoryview) -> bool:
    """Transaction mode, client `c` is about to take a server for a request whose first read is `view`: True
    when it waits instead (the caller keeps the bytes as for a queued client)."""
    if bytes(view).lower().find(b"advisory") < 0:
        return False
    return _wait(c, pool)


def hold_login(c: Any, pool: Any) -> bool:
    """Session mode, client `c` logged in and is about to take its server: True when it waits instead."""
    return _wait(c, pool)


def _wait(c: Any, pool: Any) -> bool:
    with pool.lock:
        u = pool.unlocking
        if u is None:
            return False
        u.waiters.append((c, u.seq))
    c.waiting = True
    c.wait_start = c.loop.now
    c.loop.call_later(LIMIT, _expired, c, pool)
    return True


def _expired(c: Any, pool: Any) -> None:
    """LIMIT passed: `c` goes on if it still waits for a cleanup."""
    with pool.lock:
        u = pool.unlocking
        if u is None:
            return
        n = len(u.waiters)
        u.waiters = [w for w in u.waiters if w[0] is not c]
        if len(u.waiters) == n:
            return
    _resume(c)


def _resume(c: Any) -> None:
    """On `c`'s worker: its wait is over, it takes a server."""
    if c.closed or not c.waiting:
        return  # it left (or its wait was answered otherwise, e.g. a cancel)
    c.need_server()
