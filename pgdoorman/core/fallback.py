"""Patroni-assisted fallback (PgDoorman's `patroni_api_urls` and friends): when a pool's configured server
stops answering (connection refused, a socket error, 57P0x), it is avoided for `fallback_cooldown`; Patroni's
`GET /cluster` (pgdoorman/patroni_api.py) is read on a helper thread, never on a worker loop, and new server
connections go to a sync standby, else a replica, else the leader, each tried with `fallback_connect_timeout`
(a failed one is avoided with a doubling back-off, up to 60 s). The host that answered is kept for the
cooldown; its connections live `fallback_lifetime`; once the cooldown is over the configured server is tried
again, and its first successful connection ends the fallback.

One `PoolFallback` per configured pool (database), shared by its users' pools and every worker, kept across
RELOAD (`for_pool`). The worker asks it where to connect (`target`), and tells it how that went
(`connect_failed`, `connected`): see worker.py's spawn_server, server_ready and server_closed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from pgdoorman.config.model import FallbackSettings
from pgdoorman.patroni_api import USABLE_STATES, ClusterClient, Member, PatroniError, resolve
from pgdoorman.protocol import messages as m

log = logging.getLogger("pgdoorman.fallback")

# Waves in PgDoorman's order: sync standbys, then replicas and the leader (a standby leader last).
_ROLE_ORDER: Final = {"sync_standby": 0, "replica": 1, "leader": 2, "standby_leader": 3}
_EXCLUDING_TAGS: Final = frozenset({"noloadbalance", "nofailover", "archive"})
BACKOFF_CAP: Final = 60.0
# pg_doorman_patroni_api_duration_seconds' bucket bounds (seconds).
API_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Target:
    """A fallback server: the member's host as Patroni names it, the address connected to, its role."""

    host: str
    ip: str
    port: int
    role: str


class _Wait:
    def __repr__(self) -> str:
        return "WAIT"


# `target` answer: the cluster is being read; the worker is called back (`Wake`) when it has been.
WAIT: Final = _Wait()
# Called from the discovery thread: (ok, why not).
Wake = Callable[[bool, str], None]
# Event listeners: (kind, target, ok, detail), as observe's EventJournal.record takes them.
Listener = Callable[[str, str, bool, str], object]
_listeners: list[Listener] = []


def add_listener(fn: Listener) -> None:
    _listeners.append(fn)


def remove_listener(fn: Listener) -> None:
    if fn in _listeners:
        _listeners.remove(fn)


def _event(target: str, ok: bool, detail: str) -> None:
    for fn in list(_listeners):
        try:
            fn("fallback", target, ok, detail)
        except Exception:  # a listener's bug must not break server connections
            log.exception("fallback event listener failed")


def unavailable(error: bytes | None) -> bool:
    """Is a failed connection's ErrorResponse the server being unavailable (08xxx: refused, reset, timed
    out; 57P0x: shutting down, starting up), rather than a refusal (authentication, a missing database)?"""
    if not error or error[:1] != b"E":
        return True
    code = m.parse_fields(error[5:]).get("C", "")
    return code.startswith("08") or code.startswith("57P")


class _CountingClient(ClusterClient):
    def __init__(self, owner: PoolFallback, urls: tuple[str, ...], timeout: float) -> None:
        super().__init__(urls, timeout, user_agent="pg_doorman fallback (pgdoorman)")
        self.owner = owner

    def fetch_url(self, base_url: str) -> list[Member]:
        t0 = time.monotonic()
        try:
            return super().fetch_url(base_url)
        except PatroniError:
            self.owner.count("api_errors")
            raise
        finally:
            self.owner.count("api_requests", seconds=time.monotonic() - t0)


@dataclass
class Counters:
    api_requests: int = 0
    api_errors: int = 0
    api_seconds: float = 0.0
    api_buckets: list[int] = field(default_factory=lambda: [0] * len(API_BUCKETS))  # per bound, not cumulative
    connections: int = 0  # server connections opened to a fallback host
    cache_hits: int = 0  # server connections sent to the kept fallback host without reading Patroni
    failures: dict[str, int] = field(default_factory=dict)  # failed candidates by reason


class PoolFallback:
    def __init__(self, name: str, settings: FallbackSettings, local_host: str, local_port: int) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.counters = Counters()
        self.local_down_until = 0.0
        self.host: Target | None = None  # the fallback host that answered, kept until host_until
        self.host_until = 0.0
        self.candidates: list[Target] = []  # discovered, not failed yet, in the order they are tried
        self.avoid: dict[tuple[str, int], tuple[float, float]] = {}  # (ip, port) -> (until, next back-off)
        self.discovering = False
        self.discover_at = 0.0  # the loop time that asked for it: failed candidates' back-off is against it
        self.waiting: dict[int, Wake] = {}
        self.configure(settings, local_host, local_port)

    def configure(self, settings: FallbackSettings, local_host: str, local_port: int) -> None:
        with self.lock:
            self.settings = settings
            self.local = (local_host, local_port)
            self.client = _CountingClient(self, settings.urls, settings.api_timeout)

    def count(self, what: str, seconds: float = 0.0) -> None:
        with self.lock:
            c = self.counters
            setattr(c, what, getattr(c, what) + 1)
            if what == "api_requests":
                c.api_seconds += seconds
                i = next((i for i, b in enumerate(API_BUCKETS) if seconds <= b), None)
                if i is not None:
                    c.api_buckets[i] += 1

    def active(self, now: float) -> bool:
        """New server connections go to a fallback host (SHOW POOLS fallback_active)."""
        return now < self.local_down_until and self.host is not None and now < self.host_until

    # ------------------------------------------------------------------ the worker's questions
    def target(self, now: float, wid: int, wake: Wake) -> Target | None | _Wait:
        """Where a new server connection goes: None (the configured server), a fallback host, or WAIT (the
        cluster is being read; `wake` is called from another thread when it has been)."""
        with self.lock:
            if now >= self.local_down_until:
                return None
            if self.host is not None and now < self.host_until:
                self.counters.cache_hits += 1
                return self.host
            if self.candidates:
                return self.candidates[0]
            self.waiting[wid] = wake
            if not self.discovering:
                self.discovering, self.discover_at = True, now
                threading.Thread(target=self._discover, name=f"fallback-{self.name}", daemon=True).start()
            return WAIT

    def connect_failed(self, target: Target | None, error: bytes | None, now: float) -> bool:
        """A server connection to `target` (None: the configured server) failed with `error`. True: the
        fallback takes it over (open another server connection: it goes elsewhere, or waits for Patroni);
        False: the waiter gets the error as without fallback."""
        if not unavailable(error):
            return False
        why = m.parse_fields(error[5:]).get("M", "connection failed") if error else "connection failed"
        with self.lock:
            if target is None:
                first = now >= self.local_down_until
                self.local_down_until = now + self.settings.cooldown
                if first and not (self.host is not None and now < self.host_until):
                    self.candidates = []  # a new episode: Patroni is read again, not an old answer trusted
            else:
                reason = "timeout" if "timeout" in why else "connect_error"
                self.counters.failures[reason] = self.counters.failures.get(reason, 0) + 1
                key = (target.ip, target.port)
                backoff = self.avoid.get(key, (0.0, self.settings.connect_timeout))[1]
                self.avoid[key] = (now + backoff, min(backoff * 2, BACKOFF_CAP))
                if target in self.candidates:
                    self.candidates.remove(target)
                was_kept = self.host == target
                if was_kept:
                    self.host = None  # the kept host failed: Patroni is read again
                more = bool(self.candidates) or was_kept
        if target is None:
            if first:
                log.warning("pool %s: server %s:%s unavailable (%s): avoided for %.1f s, asking Patroni",
                            self.name, *self.local, why, self.settings.cooldown)
                _event(self.name, False, f"server {self.local[0]}:{self.local[1]} unavailable ({why}): "
                                         "falling back through Patroni")
            return True
        log.warning("pool %s: fallback candidate %s:%d (%s) failed: %s", self.name, target.host, target.port,
                    target.role, why)
        return more

    def connected(self, target: Target | None, now: float) -> None:
        """A server connection to `target` (None: the configured server) logged in."""
        with self.lock:
            if target is None:
                if self.host is None or now < self.local_down_until:
                    return
                old, self.host = self.host, None
                self.candidates = []
            else:
                self.counters.connections += 1
                if self.host == target and now < self.host_until:
                    return
                old, self.host, self.host_until = None, target, now + self.settings.cooldown
        if target is None:
            log.warning("pool %s: server %s:%s is back; fallback to %s:%d ended", self.name, *self.local,
                        old.host if old else "", old.port if old else 0)
            _event(self.name, True, f"server {self.local[0]}:{self.local[1]} is back: fallback ended")
        else:
            log.warning("pool %s: falling back to %s:%d (%s) for %.1f s", self.name, target.host, target.port,
                        target.role, self.settings.cooldown)
            _event(self.name, True, f"fallback to {target.host}:{target.port} ({target.role})")

    # ------------------------------------------------------------------ the discovery thread
    def _discover(self) -> None:
        ok, why = True, ""
        try:
            members, _ = self.client.fetch_members()
            found = self._candidates(members)
        except PatroniError as e:
            ok, why, found = False, f"Patroni API unavailable: {e}", []
        except Exception as e:  # a bug must not leave the waiters hanging
            log.exception("pool %s: reading Patroni failed", self.name)
            ok, why, found = False, f"internal error: {e}", []
        if ok and not found:
            ok, why = False, "no usable cluster member in Patroni's answer"
        with self.lock:
            self.candidates = found
            self.discovering = False
            waiting, self.waiting = list(self.waiting.values()), {}
        if not ok:
            log.warning("pool %s: fallback impossible: %s", self.name, why)
            _event(self.name, False, f"fallback impossible: {why}")
        for wake in waiting:
            wake(ok, why)

    def _candidates(self, members: list[Member]) -> list[Target]:
        now = self.discover_at
        local_ip = self.local[0] if self.local[0].startswith("/") else resolve(self.local[0])
        out: list[Target] = []
        for mem in sorted(members, key=lambda x: _ROLE_ORDER.get(x.patroni_role, 9)):
            if mem.patroni_role not in _ROLE_ORDER or mem.state not in USABLE_STATES or \
                    mem.flags & _EXCLUDING_TAGS:
                continue
            port = mem.port or self.local[1]
            ip = resolve(mem.host)
            if ip is None or (ip, port) == (local_ip, self.local[1]):
                continue
            with self.lock:
                until = self.avoid.get((ip, port), (0.0, 0.0))[0]
            if until <= now:
                out.append(Target(mem.host, ip, port, mem.patroni_role))
        return out


_registry: dict[str, PoolFallback] = {}
_registry_lock = threading.Lock()


def for_pool(name: str, settings: FallbackSettings | None, local_host: str, local_port: int) -> PoolFallback | None:
    """The fallback state of configured pool `name` (created or reconfigured), or None without settings."""
    with _registry_lock:
        fb = _registry.get(name)
        if settings is None:
            _registry.pop(name, None)
            return None
        if fb is None:
            fb = _registry[name] = PoolFallback(name, settings, local_host, local_port)
        elif (fb.settings, fb.local) != (settings, (local_host, local_port)):
            fb.configure(settings, local_host, local_port)
        return fb


def states() -> list[PoolFallback]:
    with _registry_lock:
        return list(_registry.values())
