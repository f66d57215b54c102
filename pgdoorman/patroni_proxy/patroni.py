"""Patroni's side of patroni_proxy: parse `GET /cluster`, decide which members a port may use, fetch the
topology from a cluster's REST URLs (failing URLs blacklisted for a while and tried last), and the poller
thread that does this every `cluster_update_interval` or on demand. Nothing here touches client sockets:
results go back to the proxy loop through a callback.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pgdoorman.patroni_proxy.config import PortConfig

log = logging.getLogger("pgdoorman.patroni_proxy.patroni")

# Patroni role -> the port role it satisfies. Other roles (standby_leader, quorum_standby, ...) are ignored,
# as PgDoorman ignores them.
ROLE_MAP = {"leader": "leader", "sync_standby": "sync", "replica": "async"}
# PgDoorman accepts only "running". Patroni 3.0+ reports a streaming replica as "streaming" in /cluster,
# so "running" alone would never route to a replica of a current Patroni: both are usable here.
USABLE_STATES = frozenset({"running", "streaming"})
BLACKLIST_SECONDS = 10.0
MAX_RESPONSE_BYTES = 4 << 20


class PatroniError(Exception):
    pass


@dataclass(frozen=True)
class Member:
    name: str
    patroni_role: str
    state: str
    host: str
    port: int | None = None  # the member's own PostgreSQL port; routing uses the proxy port's host_port
    lag: int | None = None  # None: absent or not a number ("unknown"), which passes any lag limit
    noloadbalance: bool = False
    ip: str | None = None  # `host` resolved by the poller (None: not resolvable)

    @property
    def role(self) -> str | None:
        return ROLE_MAP.get(self.patroni_role)


def _lag(value: Any) -> int | None:
    # Patroni reports lag as a number, or a string such as "unknown".
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float):
        return int(value) if value >= 0 else None
    if isinstance(value, str):
        try:
            n = int(value.strip())
        except ValueError:
            return None
        return n if n >= 0 else None
    return None


def _flag(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "on", "yes", "1"))


def parse_cluster(data: bytes | str) -> list[Member]:
    """Members of a `/cluster` answer. Raises PatroniError if it is not a JSON object with a `members` list.
    A member without a usable `host` is skipped (it cannot be routed to); PgDoorman rejects the whole answer."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise PatroniError(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("members"), list):
        raise PatroniError("not a Patroni /cluster answer (no `members` list)")
    members: list[Member] = []
    for i, m in enumerate(doc["members"]):
        if not isinstance(m, dict):
            raise PatroniError(f"members[{i}] is not an object")
        host = m.get("host")
        if not isinstance(host, str) or not host:
            log.debug("/cluster member %r has no host; skipped", m.get("name"))
            continue
        port = m.get("port")
        tags = m.get("tags")
        members.append(Member(
            name=str(m.get("name", host)),
            patroni_role=str(m.get("role", "")),
            state=str(m.get("state", "")),
            host=host,
            port=port if isinstance(port, int) and not isinstance(port, bool) else None,
            lag=_lag(m.get("lag")),
            noloadbalance=isinstance(tags, dict) and _flag(tags.get("noloadbalance")),
        ))
    return members


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


def resolve(host: str) -> str | None:
    """An IP for `host`: literals as they are, names through the resolver (this runs in the poller
    thread, never in the proxy loop)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except OSError as e:
        log.warning("cannot resolve member host %r: %s", host, e)
        return None
    return str(infos[0][4][0]) if infos else None


class Blacklist:
    """URLs that failed recently; they are tried after the others for BLACKLIST_SECONDS."""

    def __init__(self, seconds: float = BLACKLIST_SECONDS) -> None:
        self.seconds = seconds
        self._since: dict[str, float] = {}

    def add(self, url: str, now: float) -> None:
        self._since[url] = now

    def remove(self, url: str) -> None:
        self._since.pop(url, None)

    def contains(self, url: str, now: float) -> bool:
        t = self._since.get(url)
        return t is not None and now - t < self.seconds

    def order(self, urls: Sequence[str], now: float) -> list[str]:
        """Fresh URLs first (config order), then blacklisted ones (config order)."""
        for url, t in list(self._since.items()):
            if now - t >= self.seconds:
                del self._since[url]
        fresh = [u for u in urls if not self.contains(u, now)]
        return fresh + [u for u in urls if self.contains(u, now)]


Fetch = Callable[[str], list[Member]]


class ClusterClient:
    """Fetches one cluster's members from the first of its Patroni URLs that answers."""

    def __init__(self, hosts: Sequence[str], timeout: float, ssl_context: ssl.SSLContext | None = None,
                 fetch: Fetch | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.hosts = list(hosts)
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.blacklist = Blacklist()
        self._fetch = fetch or self.fetch_url
        self._clock = clock
        # Environment proxies (http_proxy) are not for a cluster's own REST API.
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=ssl_context))
        self._opener = urllib.request.build_opener(*handlers)

    def fetch_url(self, base_url: str) -> list[Member]:
        url = base_url.rstrip("/") + "/cluster"
        req = urllib.request.Request(url, headers={"Accept": "application/json",
                                                   "User-Agent": "patroni_proxy (pgdoorman)"})
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                body = resp.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as e:
            raise PatroniError(f"HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            raise PatroniError(str(e.reason)) from None
        except (OSError, ValueError) as e:  # timeouts, resets, malformed responses
            raise PatroniError(str(e) or type(e).__name__) from None
        if len(body) > MAX_RESPONSE_BYTES:
            raise PatroniError(f"answer larger than {MAX_RESPONSE_BYTES} bytes")
        return parse_cluster(body)

    def fetch_members(self) -> tuple[list[Member], str]:
        """(members, the URL that answered); PatroniError if none did."""
        problems: list[str] = []
        for url in self.blacklist.order(self.hosts, self._clock()):
            try:
                members = self._fetch(url)
            except PatroniError as e:
                log.warning("failed to fetch the cluster from %s: %s", url, e)
                problems.append(f"{url}: {e}")
                self.blacklist.add(url, self._clock())
                continue
            self.blacklist.remove(url)
            return members, url
        raise PatroniError("all hosts unavailable (" + "; ".join(problems) + ")")


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
            resolved.append(Member(m.name, m.patroni_role, m.state, m.host, m.port, m.lag,
                                   m.noloadbalance, cache[m.host]))
        return PollResult(resolved, source=source, finished=time.time())
