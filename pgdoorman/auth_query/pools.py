"""The process's auth_query side: one AuthQueryService per pool that has an `auth_query` section, and the
dynamic pools of the users it finds.

Passthrough mode (no `server_user`): one pool per user, keyed (database, user) like a static user's, that
logs in to PostgreSQL as that user with the looked-up md5 hash or SCRAM verifier (the passthrough static
users have). Dedicated mode: every looked-up user of the database shares one pool logging in as
`server_user`. Static users always win: a pool made here is marked `dynamic`, and the login treats it as
not configured.

Pools are made at the first login (by whichever thread answers the lookup) and added to the App's registry
copy-on-write under `lock` (readers on other threads see the old or the new dict and list, never one being
changed). `collect` (the App's main thread) removes the passthrough pools no client uses, whose servers
idle_timeout (or server_lifetime) closed, and that no login took for a while; not those with min_pool_size
> 0, nor paused ones.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from pgdoorman.auth_query.service import AuthQueryService, Lookup, Stats
from pgdoorman.config import AuthQueryConfig, Config, PoolConfig, UserConfig
from pgdoorman.core import startup_params
from pgdoorman.core.pool import Pool, PoolLive

log = logging.getLogger("pgdoorman.auth_query")

# A pool a login took this recently is never collected (the login attaches it right after taking it).
COLLECT_GRACE = 2.0


class _Resources(Protocol):
    def for_dynamic(self, pool: str) -> PoolLive: ...


class _Client(Protocol):
    @property
    def pool(self) -> Any: ...


class _Worker(Protocol):
    @property
    def clients(self) -> Iterable[_Client]: ...


class _Moving(Protocol):
    def clients(self) -> Iterable[_Client]: ...


class Host(Protocol):
    """What this needs of the App: its registry of pools and what to build a pool with."""

    config: Config
    pools: dict[tuple[str, str], Pool]
    pool_list: list[Pool]
    nworkers: int

    @property
    def resources(self) -> _Resources: ...

    @property
    def workers(self) -> Sequence[_Worker]: ...

    @property
    def transit(self) -> _Moving: ...  # clients moving between workers, in no worker's set meanwhile

    def _close_idle(self, pool: Pool) -> None: ...

    def pool_removed(self, pool: Pool) -> None: ...


def _live_clients(w: _Worker) -> list[_Client]:
    for _ in range(100):
        try:
            return list(w.clients)
        except RuntimeError:  # resized by its worker meanwhile
            continue
    return []


def _unused(p: Pool) -> bool:
    """No client waits for the pool and it has no server left (idle_timeout closed them)."""
    c = p.counts()
    return c["sv_total"] == 0 and not c["cl_waiting"]


class DynamicPools:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.lock = threading.Lock()  # registry changes: new pools, collection, RELOAD
        self.services: dict[str, AuthQueryService] = {}
        # Counters survive RELOAD (the metrics are counters): one Stats per database name.
        self.stats: dict[str, Stats] = {}
        self.start(host.config)

    # ------------------------------------------------------------------ config
    def start(self, config: Config) -> None:
        for name, pcfg in config.pools.items():
            if pcfg.auth_query is not None:
                self.services[name] = self._service(config, pcfg, pcfg.auth_query)

    def _service(self, config: Config, pcfg: PoolConfig, aq: AuthQueryConfig) -> AuthQueryService:
        return AuthQueryService(config, pcfg, aq, self.stats.setdefault(pcfg.name, Stats()),
                                self.host.resources.for_dynamic(pcfg.name).server_tls)

    def reload(self, old: Config, new: Config) -> None:
        """RELOAD (with `lock` held by the caller, after the static pools were rebuilt): every cache is
        dropped; a pool whose section or auth_query changed gets a new service and loses its dynamic pools;
        the others are re-applied with the new config."""
        host = self.host
        for name in list(self.services):
            svc = self.services[name]
            pcfg = new.pools.get(name)
            if pcfg is None or pcfg.auth_query is None or pcfg != old.pools.get(name):
                svc.stop()
                del self.services[name]
                self._drop_pools(name, "auth_query configuration changed")
            else:
                svc.drop_cache()
                svc.server_tls = host.resources.for_dynamic(name).server_tls  # general server_tls_* may change
        for name, pcfg in new.pools.items():
            if pcfg.auth_query is not None and name not in self.services:
                self.services[name] = self._service(new, pcfg, pcfg.auth_query)
        for pool in list(host.pool_list):
            if pool.dynamic and pool.database in self.services:
                pcfg = new.pools[pool.database]
                pool.apply(new, pcfg, pool.user_cfg, host.resources.for_dynamic(pool.database))

    def _drop_pools(self, database: str, reason: str) -> None:
        host = self.host
        gone = [p for p in host.pool_list if p.dynamic and p.database == database]
        if not gone:
            return
        pools = {k: p for k, p in host.pools.items() if not (p.dynamic and p.database == database)}
        self._publish(pools)
        for p in gone:
            with p.lock:
                p.epoch += 1
                p.paused = False
            host._close_idle(p)
            host.pool_removed(p)
            self.stats.setdefault(database, Stats()).dynamic_pools_destroyed += 1
        log.info("auth_query: %d dynamic pool(s) of %r dropped: %s", len(gone), database, reason)

    def _publish(self, pools: dict[tuple[str, str], Pool]) -> None:
        host = self.host
        host.pools = pools
        host.pool_list = list(pools.values())

    # ------------------------------------------------------------------ logins (any thread)
    def lookup(self, database: str, user: str, done: Callable[[Pool | None, str], None]) -> \
            tuple[Pool | None, str] | None:
        """The pool and stored password of `user` now (None, "": unknown, or the lookup failed), or None when
        the answer comes later through `done`, called from an executor thread."""
        svc = self.services.get(database)
        if svc is None:
            return None, ""

        def later(lk: Lookup) -> None:
            done(*self._resolve(svc, user, lk))

        found = svc.lookup(user, later)
        return None if found is None else self._resolve(svc, user, found)

    def verdict(self, database: str, user: str, ok: bool) -> None:
        svc = self.services.get(database)
        if svc is not None:
            svc.verdict(user, ok)

    def _resolve(self, svc: AuthQueryService, user: str, lk: Lookup) -> tuple[Pool | None, str]:
        if lk.password is None:
            return None, ""
        return self._pool_for(svc, user, lk.password, lk.startup_parameters), lk.password

    def _pool_for(self, svc: AuthQueryService, user: str, secret: str, row: str | None) -> Pool | None:
        """`row`: the raw startup_parameters column (the cascade's third level, passthrough mode only)."""
        host = self.host
        aq = svc.aq
        database = svc.name
        if aq.server_user:  # dedicated mode: one pool for every looked-up user of the database
            key = (database, aq.server_user)
            ucfg = UserConfig(username=aq.server_user, password="", pool_size=aq.pool_size, min_pool_size=0,
                              server_username=aq.server_user, server_password=aq.server_password)
        else:
            key = (database, user)
            ucfg = UserConfig(username=user, password=secret, pool_size=aq.pool_size,
                              min_pool_size=aq.min_pool_size)
        with self.lock:
            if self.services.get(database) is not svc:
                return None  # RELOAD replaced this auth_query meanwhile
            pool = host.pools.get(key)
            if pool is not None and not pool.dynamic:
                if aq.server_user:
                    # A static user named like server_user: the shared pool lives beside it under its own key.
                    key = (database, f"{aq.server_user} (auth_query)")
                    pool = host.pools.get(key)
                else:
                    return None  # a static user of that name appeared (RELOAD); the login uses it next time
            if pool is None:
                config = host.config
                pcfg = config.pools.get(database)
                if pcfg is None:
                    return None
                pool = Pool(config, pcfg, ucfg, host.nworkers, host.resources.for_dynamic(database))
                pool.dynamic = True
                if not aq.server_user:
                    pool.set_startup(row)  # the row's startup_parameters: the cascade's third level
                pools = dict(host.pools)
                pools[key] = pool
                self._publish(pools)
                svc.stats.dynamic_pools_created += 1
                log.info("auth_query: dynamic pool %s created (%s mode)", pool.name,
                         "dedicated" if aq.server_user else "passthrough")
            elif not aq.server_user and pool.user_cfg.password != secret:
                # The password changed in PostgreSQL: log in to it with the new hash from now on.
                pool.apply(host.config, pool.pool_cfg, ucfg, host.resources.for_dynamic(database))
                pool.scram_client_key = None
            if aq.server_user:
                if row:  # one pool serves every user: a row's own settings cannot apply
                    startup_params.count_dropped(pool.database, startup_params.cascade({}, {}, row, dedicated=True))
            elif row != pool.startup_row:
                pool.set_startup(row)  # the row's settings changed: servers with the old ones are replaced
                with pool.lock:
                    pool.epoch += 1
                host._close_idle(pool)
            pool.touched = time.monotonic()
        return pool  # min_pool_size is kept warm by the janitor's round on worker 0, as for static pools

    # ------------------------------------------------------------------ collection (main thread)
    def collect(self) -> int:
        """Remove the unused passthrough pools; how many."""
        host = self.host
        now = time.monotonic()
        candidates = [p for p in host.pool_list if p.dynamic and not p.min_pool_size and not p.paused
                      and now - p.touched > COLLECT_GRACE and self._collectable_mode(p) and _unused(p)]
        if not candidates:
            return 0
        used = {id(c.pool) for w in host.workers for c in _live_clients(w)}
        used.update(id(c.pool) for c in host.transit.clients())
        victims = [p for p in candidates if id(p) not in used]
        if not victims:
            return 0
        with self.lock:
            gone = [p for p in victims if now - p.touched > COLLECT_GRACE and not p.paused and _unused(p)]
            ids = {id(p) for p in gone}
            self._publish({k: p for k, p in host.pools.items() if id(p) not in ids})
            for p in gone:
                self.stats.setdefault(p.database, Stats()).dynamic_pools_destroyed += 1
        for p in gone:
            with p.lock:
                p.epoch += 1
            host._close_idle(p)
            host.pool_removed(p)
            log.info("auth_query: dynamic pool %s collected (unused)", p.name)
        return len(gone)

    def _collectable_mode(self, p: Pool) -> bool:
        svc = self.services.get(p.database)
        return svc is not None and not svc.aq.server_user

    # ------------------------------------------------------------------ reporting
    def rows(self) -> list[tuple[str, dict[str, int]]]:
        """(database, counters) of every auth_query, for SHOW AUTH_QUERY and the metrics."""
        current: dict[str, int] = {}
        for p in self.host.pool_list:
            if p.dynamic:
                current[p.database] = current.get(p.database, 0) + 1
        out = []
        for name in sorted(set(self.services) | set(self.stats)):
            st = self.stats.get(name)
            d = st.as_dict() if st is not None else Stats().as_dict()
            svc = self.services.get(name)
            d["cache_entries"] = svc.cache_entries() if svc is not None else 0
            d["dynamic_pools_current"] = current.get(name, 0)
            out.append((name, d))
        return out

    def stop(self) -> None:
        for svc in self.services.values():
            svc.stop()
