"""Patroni's side of patroni_proxy: parse `GET /cluster`, decide which members a port may use, fetch the
topology from a cluster's REST URLs (failing URLs blacklisted for a while and tried last), and the poller
thread that does this every `cluster_update_interval` or on demand. Nothing here touches client sockets:
results go back to the proxy loop through a callback.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pgdoorman.patroni_api import (
    BLACKLIST_SECONDS,
    MAX_RESPONSE_BYTES,
    ROLE_MAP,
    USABLE_STATES,
    Blacklist,
    ClusterClient,
    Fetch,
    Member,
    PatroniError,
    parse_cluster,
    resolve,
)
from pgdoorman.patroni_proxy.config import PortConfig

# Reading /cluster is pgdoorman/patroni_api.py's (shared with the pooler's fallback); its names stay here too.
__all__ = ["BLACKLIST_SECONDS", "MAX_RESPONSE_BYTES", "ROLE_MAP", "USABLE_STATES", "Blacklist", "ClusterClient",
           "Fetch", "Member", "PatroniError", "parse_cluster", "resolve", "is_eligible", "eligible_members",
           "Poller", "PollResult", "Deliver"]

log = logging.getLogger("pgdoorman.patroni_proxy.patroni")


def is_eligible(member: Member, port: PortConfig) -> bool:
    """May `port` send new clients to `member` (and keep the ones it has)?"""
    if member.state not in USABLE_STATES or member.noloadbalance:
        return False
    role = member.role
    if role is None:
        return False
    if "any" not in port.roles and role not in port.roles:
        return False
    # The leader has no lag; a replica whose lag is unknown passes, as in PgDoorman.
    if port.max_lag_in_bytes is not None and role != "leader" and member.lag is not None:
        return member.lag <= port.max_lag_in_bytes
    return True


def eligible_members(members: Iterable[Member], port: PortConfig) -> list[Member]:
    """Eligible members in Patroni's order, one per host (a backend is host + the port's host_port)."""
    out: list[Member] = []
    seen: set[str] = set()
    for m in members:
        if m.host not in seen and is_eligible(m, port):
            seen.add(m.host)
            out.append(m)
    return out


@dataclass
class PollResult:
    members: list[Member] | None  # None: the poll failed
    source: str | None = None
    error: str | None = None
    finished: float = 0.0  # time.time()


Deliver = Callable[[PollResult, list[Callable[[], None]]], None]


class Poller:
    """One thread per cluster: poll now, then every `interval` seconds or when asked (`request_poll`).
    `deliver(result, waiters)` runs in the poller thread and must hand both to the proxy loop."""

    def __init__(self, name: str, client: ClusterClient, interval: float, deliver: Deliver) -> None:
        self.name = name
        self.client = client
        self.interval = interval
        self.deliver = deliver
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._waiters: list[Callable[[], None]] = []
        self._stopped = False
        self.thread = threading.Thread(target=self._run, name=f"patroni-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def reconfigure(self, client: ClusterClient | None = None, interval: float | None = None) -> None:
        with self._lock:
            if client is not None:
                self.client = client
            if interval is not None:
                self.interval = interval

    def request_poll(self, done: Callable[[], None]) -> None:
        """Poll as soon as possible; `done` is delivered with the result of a poll that started after
        this call."""
        with self._lock:
            if self._stopped:
                stopped = True
            else:
                stopped = False
                self._waiters.append(done)
                self._wake.set()
        if stopped:
            self.deliver(PollResult(None, error="stopped", finished=time.time()), [done])

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            waiters, self._waiters = self._waiters, []
            self._wake.set()
        if waiters:
            self.deliver(PollResult(None, error="stopped", finished=time.time()), waiters)

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stopped:
                    return
                waiters, self._waiters = self._waiters, []
                self._wake.clear()
                client, interval = self.client, self.interval
            result = self._poll(client)
            with self._lock:
                stopped = self._stopped
            if stopped:
                result = PollResult(None, error="stopped", finished=time.time())
            self.deliver(result, waiters)
            if stopped:
                return
            self._wake.wait(interval)

    def _poll(self, client: ClusterClient) -> PollResult:
        try:
            members, source = client.fetch_members()
        except PatroniError as e:
            return PollResult(None, error=str(e), finished=time.time())
        except Exception as e:  # a bug must not end the thread: the cluster would silently freeze
            log.exception("cluster %r: polling Patroni failed", self.name)
            return PollResult(None, error=f"internal error: {e}", finished=time.time())
        cache: dict[str, str | None] = {}
        resolved = []
        for m in members:
            if m.host not in cache:
                cache[m.host] = resolve(m.host)
            resolved.append(dataclasses.replace(m, ip=cache[m.host]))
        return PollResult(resolved, source=source, finished=time.time())
