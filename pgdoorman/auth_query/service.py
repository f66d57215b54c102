"""The auth_query of one pool: the password cache, the coalescing of concurrent lookups, and the executor
threads (`workers` of them, one connection each) that run the query.

A worker loop never waits here: `lookup` answers at once from the cache (a hit, positive or negative) or
queues the user and returns None; the answer then comes from an executor thread through the callback
(the login hands it back to its loop). Concurrent lookups of the same user wait for the one query already
in flight. Executor failures are logged once per cause (again after a query succeeded), counted, and
answered as "no password", which the login turns into 28P01 like an unknown user.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pgdoorman.auth_query.executor import APPLICATION_NAME, Executor
from pgdoorman.config import AuthQueryConfig, Config, PoolConfig
from pgdoorman.protocol import auth
from pgdoorman.session.pgclient import PgClient, PgError

if TYPE_CHECKING:
    from pgdoorman.core.pool import ServerTlsLike

log = logging.getLogger("pgdoorman.auth_query")

# After a failure to connect, lookups fail at once for this long instead of each waiting for a timeout.
DOWN_BACKOFF = 1.0
DOWN_CAUSES = ("could not connect", "TLS failed", "login refused", "login failed")
# Past this many cached users (logins with ever new names fill the negative cache), expired entries are
# dropped, then the oldest.
CACHE_LIMIT = 10000


@dataclass(frozen=True)
class Lookup:
    """A lookup's answer: the stored password (md5 hash or SCRAM verifier; None: unknown user or an error),
    the raw `startup_parameters` column, and the error (for the log) when the executor failed."""

    password: str | None
    startup_parameters: str | None = None
    error: str | None = None


class Stats:
    """Counters of one pool's auth_query (SHOW AUTH_QUERY, pg_doorman_auth_query_*), under the service lock."""

    __slots__ = ("cache_hits", "cache_misses", "cache_refetches", "cache_rate_limited", "auth_success",
                 "auth_failure", "executor_queries", "executor_errors", "dynamic_pools_created",
                 "dynamic_pools_destroyed")

    def __init__(self) -> None:
        self.cache_hits = 0
        self.cache_misses = 0
        self.cache_refetches = 0  # a failed login let the next one fetch the password again
        self.cache_rate_limited = 0  # ... but the last fetch was less than min_interval ago
        self.auth_success = 0
        self.auth_failure = 0
        self.executor_queries = 0
        self.executor_errors = 0
        self.dynamic_pools_created = 0
        self.dynamic_pools_destroyed = 0

    def as_dict(self) -> dict[str, int]:
        return {k: int(getattr(self, k)) for k in self.__slots__}


class _Entry:
    __slots__ = ("lookup", "fetched", "expires")

    def __init__(self, lookup: Lookup, fetched: float, expires: float) -> None:
        self.lookup = lookup
        self.fetched = fetched
        self.expires = expires


Done = Callable[[Lookup], None]


class AuthQueryService:
    def __init__(self, config: Config, pool_cfg: PoolConfig, aq: AuthQueryConfig,
                 stats: Stats | None = None, server_tls: ServerTlsLike | None = None) -> None:
        self.name = pool_cfg.name
        # The pool's server TLS (server_tls_*): executor connections use it as the pool's servers do; RELOAD
        # sets it again, and each new executor connection reads it.
        self.server_tls = server_tls
        self.pool_cfg = pool_cfg
        self.aq = aq
        self.lock = threading.Lock()
        self.cache: dict[str, _Entry] = {}
        self.inflight: dict[str, list[Done]] = {}
        self.stats = stats if stats is not None else Stats()
        self.queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.logged: set[str] = set()  # causes already logged (cleared when a query succeeds)
        self.down_until = 0.0
        self.down_cause = ""
        self.stopped = False
        connect_timeout = config.timeout_for(pool_cfg, None, "connect_timeout") / 1000.0
        query_timeout = max(connect_timeout, config.general.query_wait_timeout / 1000.0)
        self._timeouts = (connect_timeout, query_timeout)

    # ------------------------------------------------------------------ lookups (any thread)
    def lookup(self, user: str, done: Done) -> Lookup | None:
        """The cached answer now, or None: `done` is called later, from an executor thread."""
        now = time.monotonic()
        with self.lock:
            e = self.cache.get(user)
            if e is not None:
                if e.expires > now:
                    self.stats.cache_hits += 1
                    return e.lookup
                del self.cache[user]
            self.stats.cache_misses += 1
            waiting = self.inflight.get(user)
            if waiting is not None:
                waiting.append(done)  # coalesced: the query in flight answers this one too
                return None
            self.inflight[user] = [done]
            if self.stopped:
                self.inflight.pop(user)
                return Lookup(None, error="auth_query reconfigured")
            self._start_locked()
        self.queue.put(user)
        return None

    def verdict(self, user: str, ok: bool) -> None:
        """How a login with the looked-up password ended. A failure lets the next login fetch the password
        again (a password changed in PostgreSQL), at most once per min_interval per user."""
        now = time.monotonic()
        with self.lock:
            if ok:
                self.stats.auth_success += 1
                return
            self.stats.auth_failure += 1
            e = self.cache.get(user)
            if e is None:
                return
            if now - e.fetched >= self.aq.min_interval / 1000.0:
                del self.cache[user]
                self.stats.cache_refetches += 1
            else:
                self.stats.cache_rate_limited += 1

    def cache_entries(self) -> int:
        return len(self.cache)

    def drop_cache(self) -> None:
        with self.lock:
            self.cache.clear()

    def stop(self) -> None:
        """Stop the executor threads (RELOAD removed or changed this auth_query); lookups queued meanwhile
        are answered with an error."""
        with self.lock:
            self.stopped = True
            n = len(self.threads)
        for _ in range(n):
            self.queue.put(None)

    # ------------------------------------------------------------------ executor threads
    def _start_locked(self) -> None:
        if self.threads:
            return
        for i in range(self.aq.workers):
            th = threading.Thread(target=self._serve, name=f"auth-query-{self.name}-{i}", daemon=True)
            self.threads.append(th)
            th.start()

    def _serve(self) -> None:
        pcfg, aq = self.pool_cfg, self.aq
        connect_timeout, query_timeout = self._timeouts
        ex = Executor(PgClient(pcfg.server_host, pcfg.server_port, aq.user, aq.password, aq.database or pcfg.name,
                               timeout=connect_timeout, query_timeout=query_timeout,
                               application_name=APPLICATION_NAME), aq.query)
        try:
            while True:
                user = self.queue.get()
                if user is None:
                    return
                ex.client.tls = self.server_tls
                self._answer(user, self._fetch(ex, user))
        finally:
            ex.close()

    def _fetch(self, ex: Executor, user: str) -> tuple[Lookup, bool]:
        """The answer for `user` and whether to cache it."""
        if self.stopped:
            return Lookup(None, error="auth_query reconfigured"), False
        now = time.monotonic()
        if now < self.down_until:
            with self.lock:
                self.stats.executor_errors += 1
            return Lookup(None, error=self.down_cause), False
        try:
            row = ex.fetch(user)
        except PgError as e:
            with self.lock:
                self.stats.executor_errors += 1
                if e.cause in DOWN_CAUSES:
                    self.down_until = time.monotonic() + DOWN_BACKOFF
                    self.down_cause = str(e)
            self._log_once(e.cause, f"auth_query of pool {self.name!r}: {e} (clients get 28P01)")
            return Lookup(None, error=str(e)), False
        with self.lock:
            self.stats.executor_queries += 1
            self.logged.clear()
        pw = row.password
        if pw is not None and not (auth.is_md5_hash(pw) or auth.is_scram_verifier(pw)):
            self._log_once("password format", f"auth_query of pool {self.name!r}: the password of a user is "
                           "neither an md5 hash nor a SCRAM-SHA-256 verifier (clients get 28P01)")
            return Lookup(None, error="unsupported password format"), False
        return Lookup(pw, row.startup_parameters), True

    def _answer(self, user: str, result: tuple[Lookup, bool]) -> None:
        lookup, keep = result
        now = time.monotonic()
        with self.lock:
            if keep and not self.stopped:
                ttl = self.aq.cache_ttl if lookup.password is not None else self.aq.cache_failure_ttl
                if ttl > 0:
                    self.cache[user] = _Entry(lookup, now, now + ttl / 1000.0)
                    if len(self.cache) > CACHE_LIMIT:
                        self._trim_locked(now)
            waiting = self.inflight.pop(user, [])
        for done in waiting:
            try:
                done(lookup)
            except Exception:
                log.exception("auth_query callback failed")

    def _trim_locked(self, now: float) -> None:
        cache = self.cache
        for k in [k for k, e in cache.items() if e.expires <= now]:
            del cache[k]
        if len(cache) > CACHE_LIMIT:
            for k in sorted(cache, key=lambda k: cache[k].fetched)[: len(cache) - CACHE_LIMIT // 2]:
                del cache[k]

    def _log_once(self, cause: str, line: str) -> None:
        with self.lock:
            if cause in self.logged:
                return
            self.logged.add(cause)
        log.warning("%s", line)
