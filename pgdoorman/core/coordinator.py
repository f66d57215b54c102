"""The pool coordinator: one per database with `max_db_connections`, a cap on the server connections of all
its user pools together (PgDoorman's Pool Coordinator).

A user pool that wants a new server asks `take` under its own lock (lock order: pool, then coordinator).
Below the cap the slot is granted; at the cap the reserve (`reserve_pool_size`) is used first; past that
the pool is queued as blocked and its worker, outside every lock, asks `evict_for`: one idle server of
another user of the database, older than `min_connection_lifetime`, from the user with the largest surplus
above its guarantee (max of `min_pool_size` and `min_guaranteed_pool_size`; ties: the slower p95
transaction time donates), is taken out of its pool and retired. A slot freed anywhere in the database
(that retirement, or any server closing) lets the worker retry the blocked pools, oldest first. A client
that waited `reserve_pool_timeout` in a pool still refused gets PgDoorman's error (`exhausted_error`).

`current` counts the servers (connected or connecting) of the member pools: each pool's `total` is added
when it joins (`Coordinators.refresh`, under its lock) and every later change of it passes here.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pgdoorman.core.stats import Histogram, merged, percentile

if TYPE_CHECKING:
    from pgdoorman.config import Config, PoolConfig


class _Stats(Protocol):
    @property
    def xact_hist(self) -> Histogram: ...


class Pool(Protocol):
    """A user pool as the coordinator sees it (core/pool.py's Pool)."""

    coord: Coordinator | None
    total: int
    min_pool_size: int

    @property
    def idle_count(self) -> int: ...
    @property
    def database(self) -> str: ...
    @property
    def stats(self) -> Sequence[_Stats]: ...

    def take_oldest_idle(self, created_before: float, keep: int) -> Any: ...
    def join(self, coord: Coordinator | None) -> None: ...
    def retry_for_waiters(self) -> bool: ...

MIN_LIFETIME_MS = 30_000  # PgDoorman's defaults of the unset pool settings
RESERVE_TIMEOUT_MS = 3_000


class Coordinator:
    def __init__(self, database: str) -> None:
        self.lock = threading.Lock()
        self.database = database
        self.max_db = 0
        self.reserve_size = 0
        self.reserve_timeout = RESERVE_TIMEOUT_MS / 1000.0
        self.min_lifetime = MIN_LIFETIME_MS / 1000.0
        self.min_guaranteed = 0
        self.current = 0
        self.evictions = 0
        self.reserve_acq = 0
        self.exhaustions = 0
        self.members: list[Pool] = []
        self.blocked: deque[Pool] = deque()  # pools refused a slot while clients wait, oldest first
        self.evicting = 0  # evicted servers not yet closed

    def configure(self, pcfg: PoolConfig) -> None:
        self.max_db = pcfg.max_db_connections or 0
        self.reserve_size = pcfg.reserve_pool_size or 0
        rt = pcfg.reserve_pool_timeout
        self.reserve_timeout = (RESERVE_TIMEOUT_MS if rt is None else rt) / 1000.0
        ml = pcfg.min_connection_lifetime
        self.min_lifetime = (MIN_LIFETIME_MS if ml is None else ml) / 1000.0
        self.min_guaranteed = pcfg.min_guaranteed_pool_size or 0

    @property
    def reserve_used(self) -> int:
        return max(0, min(self.current - self.max_db, self.reserve_size))

    # ------------------------------------------------------------------ slots (called under a pool's lock)
    def take(self, pool: Pool, main_only: bool = False) -> bool:
        """A slot for a new server of `pool`: under the cap, else from the reserve (not with `main_only`:
        min_pool_size), else False and `pool` is queued as blocked (its worker then tries `evict_for`)."""
        with self.lock:
            if self.current < self.max_db:
                self.current += 1
            elif not main_only and self.current < self.max_db + self.reserve_size:
                self.current += 1
                self.reserve_acq += 1
            else:
                if not main_only and pool not in self.blocked:
                    self.blocked.append(pool)
                return False
            if self.blocked and pool in self.blocked:
                self.blocked.remove(pool)
            return True

    def joined(self, n: int) -> None:
        with self.lock:
            self.current += n

    def give_back(self, n: int = 1) -> None:
        """Servers of a member pool closed (or failed to connect): their slots are free."""
        with self.lock:
            self.current -= n
            if self.evicting:
                self.evicting -= 1

    def take_blocked(self) -> list[Pool]:
        """The blocked pools, to retry now that a slot may be free (one refused again queues itself again)."""
        with self.lock:
            if self.current >= self.max_db + self.reserve_size:
                return []
            out = list(self.blocked)
            self.blocked.clear()
            return out

    def unblock(self, pool: Pool) -> None:
        with self.lock:
            try:
                self.blocked.remove(pool)
            except ValueError:
                pass

    def is_blocked(self, pool: Pool) -> bool:
        with self.lock:
            return pool in self.blocked

    def exhausted(self) -> None:
        with self.lock:
            self.exhaustions += 1

    def exhausted_error(self, user: str) -> str:
        """PgDoorman's message for a client its pool could not get a slot for within reserve_pool_timeout."""
        if self.reserve_size:
            detail = (f"all server connections to database '{self.database}' are in use (max={self.max_db}, "
                      f"reserve={self.reserve_used}/{self.reserve_size}, user='{user}')")
        else:
            detail = (f"all server connections to database '{self.database}' are in use (max={self.max_db}, "
                      f"user='{user}')")
        return ("Could not get a database connection from the pool. All servers may be busy or down. "
                f"Error details: {detail}. Please try again later.")

    # ------------------------------------------------------------------ eviction (no pool lock held)
    def evict_for(self, pool: Pool, now: float) -> Any:
        """Take one idle server of another user out of its pool for `pool`, which was refused a slot; the
        caller retires it (on its worker). None when no user has one to give, or an eviction is under way
        for every blocked pool already."""
        with self.lock:
            if self.evicting >= max(1, len(self.blocked)):
                return None
        cands = []
        for p in list(self.members):
            if p is pool or p.coord is not self:
                continue
            spare = p.total - max(p.min_pool_size, self.min_guaranteed)
            if spare > 0 and p.idle_count:
                cands.append((spare, _p95(p), p))
        cands.sort(key=lambda t: (t[0], t[1]), reverse=True)
        for _, _, p in cands:
            s = p.take_oldest_idle(now - self.min_lifetime, max(p.min_pool_size, self.min_guaranteed))
            if s is not None:
                with self.lock:
                    self.evictions += 1
                    self.evicting += 1
                return s
        return None


def _p95(pool: Pool) -> float:
    counts, n, _ = merged(st.xact_hist for st in pool.stats)
    return percentile(counts, n, 0.95)


class Coordinators:
    """The coordinators of a process, by database; `refresh` follows the pool list (start, RELOAD,
    auth_query's pools coming and going)."""

    def __init__(self) -> None:
        self.by_db: dict[str, Coordinator] = {}
        self.lock = threading.Lock()
        self.joined: list[Pool] = []

    def refresh(self, config: Config, pools: Sequence[Pool]) -> None:
        with self.lock:
            members: dict[str, list[Pool]] = {}
            for p in pools:
                pcfg = config.pools.get(p.database)
                if pcfg is not None and (pcfg.max_db_connections or 0) > 0:
                    c = self.by_db.get(p.database)
                    if c is None:
                        c = self.by_db[p.database] = Coordinator(p.database)
                    c.configure(pcfg)
                    members.setdefault(p.database, []).append(p)
            for db in list(self.by_db):
                if db not in members:
                    del self.by_db[db]
            wanted = {id(p): self.by_db[p.database] for ps in members.values() for p in ps}
            for p in self.joined:  # pools gone from the list (RELOAD, auth_query) leave their coordinator
                if id(p) not in wanted:
                    p.join(None)
            for p in pools:
                p.join(wanted.get(id(p)))
            self.joined = [p for ps in members.values() for p in ps]
            for db, ps in members.items():
                self.by_db[db].members = ps

    def rows(self) -> list[tuple[str, int, int, int, int, int, int, int]]:
        """SHOW POOL_COORDINATOR: (database, max_db_conn, current, reserve_size, reserve_used, evictions,
        reserve_acq, exhaustions), by database."""
        out = []
        for db, c in sorted(dict(self.by_db).items()):
            out.append((db, c.max_db, c.current, c.reserve_size, c.reserve_used, c.evictions, c.reserve_acq,
                        c.exhaustions))
        return out
