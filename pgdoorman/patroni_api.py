"""Reading Patroni's REST API: parse `GET /cluster`, fetch it from the first of a cluster's URLs that
answers (failing URLs blacklisted for a while and tried last), resolve member hosts. Blocking calls: they run
on a helper thread (patroni_proxy's poller, the pool fallback's discovery thread), never on a worker loop.
One implementation for patroni_proxy and the pooler's Patroni-assisted fallback (core/fallback.py).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("pgdoorman.patroni")

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
    flags: frozenset[str] = frozenset()  # the tags set to true (noloadbalance, nofailover, archive, ...)

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
            flags=frozenset(str(k) for k, v in tags.items() if _flag(v)) if isinstance(tags, dict) else frozenset(),
        ))
    return members


def resolve(host: str) -> str | None:
    """An IP for `host`: literals as they are, names through the resolver (this runs in a helper
    thread, never in an event loop)."""
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
                 fetch: Fetch | None = None, clock: Callable[[], float] = time.monotonic,
                 user_agent: str = "patroni_proxy (pgdoorman)") -> None:
        self.user_agent = user_agent
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
                                                   "User-Agent": self.user_agent})
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
