"""Server host names resolved off the worker loops, with a cache.

`getaddrinfo` blocks: with a slow or dead DNS server (5 s timeouts, several attempts) a call on a worker's
loop would freeze every client of that worker. Here each lookup runs on a short-lived daemon thread and its
answer reaches the worker that asked through `Loop.call_soon_threadsafe`. Answers are cached for the whole
process, as PgBouncer does with its `dns_max_ttl` (addresses, 15 s) and `dns_nxdomain_ttl` (failures, 15 s);
PgDoorman has no settings for this, so both are fixed. Only one lookup per name is in flight: whoever asks
meanwhile waits for the same answer. IP literals are converted at once (AI_NUMERICHOST never asks DNS) and
never cached; unix-socket directories never come here.

Test-only hook, off by default: the environment variable PGDOORMAN_TEST_RESOLVER, a JSON object read at each
lookup, maps a name to {"delay": seconds, "addresses": [IP literals]}: the lookup of that name sleeps `delay`
seconds on its thread first and, with `addresses`, answers those instead of asking the system (the
integration tests use it to make a lookup slow, and to give a name two addresses, without touching DNS).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pgdoorman.net.loop import Loop

log = logging.getLogger("pgdoorman.dns")

POSITIVE_TTL = 15.0  # seconds an answer is reused (PgBouncer's dns_max_ttl default)
NEGATIVE_TTL = 15.0  # seconds a failure is reused (PgBouncer's dns_nxdomain_ttl default)
TEST_HOOK = "PGDOORMAN_TEST_RESOLVER"

# An address to connect to: the socket family and the sockaddr (its port is the caller's business).
Address = tuple[int, tuple[Any, ...]]
# done(addresses, error): addresses in getaddrinfo's order, or an empty list and libpq's wording of the failure.
Done = Callable[[list[Address], str], None]


def numeric(host: str) -> list[Address] | None:
    """The address of an IP literal, None for a name (no DNS is asked)."""
    try:
        infos = socket.getaddrinfo(host, 0, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        return None
    return _addresses(infos)


def _addresses(infos: list[Any]) -> list[Address]:
    out: list[Address] = []
    for family, _, _, _, sockaddr in infos:
        a = (int(family), tuple(sockaddr))
        if a not in out:
            out.append(a)
    return out


def with_port(addr: Address, port: int) -> tuple[Any, ...]:
    """The sockaddr to connect to."""
    sa = addr[1]
    return (sa[0], port, *sa[2:])


def failure_text(host: str, reason: str) -> str:
    """libpq's message for a name that does not resolve."""
    return f'could not translate host name "{host}" to address: {reason}'


class Resolver:
    """The process's cache of server host names (shared by the workers; its lock guards its dicts)."""

    def __init__(self, ttl: float = POSITIVE_TTL, negative_ttl: float = NEGATIVE_TTL) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.lock = threading.Lock()
        self.cache: dict[str, tuple[float, list[Address], str]] = {}  # name: (expires, addresses, error)
        self.pending: dict[str, list[tuple[Loop, Done]]] = {}  # names being looked up: who waits
        self.lookups = 0  # lookups started (threads)

    def resolve(self, host: str, loop: Loop, done: Done) -> bool:
        """Addresses for `host`: from the cache or an IP literal, `done` is called now and True returned;
        else `done` is called later on `loop`'s thread (False)."""
        lit = numeric(host)
        if lit is not None:
            done(lit, "")
            return True
        now = time.monotonic()
        with self.lock:
            hit = self.cache.get(host)
            if hit is None or hit[0] <= now:
                waiters = self.pending.get(host)
                if waiters is not None:
                    waiters.append((loop, done))
                    return False
                self.pending[host] = [(loop, done)]
                self.lookups += 1
        if hit is None or hit[0] <= now:
            try:
                threading.Thread(target=self._lookup, args=(host,), name=f"dns {host}", daemon=True).start()
            except RuntimeError as e:  # no thread to be had: this time's askers fail, nothing is cached
                with self.lock:
                    waiters = self.pending.pop(host, [])
                for w_loop, w_done in waiters:
                    w_loop.call_soon_threadsafe(w_done, [], f"cannot start a resolver thread: {e}")
            return False
        done(hit[1], hit[2])
        return True

    def _lookup(self, host: str) -> None:
        started = time.monotonic()
        try:
            addrs, err = _getaddrinfo(host), ""
            if not addrs:
                err = "no address"
        except socket.gaierror as e:
            addrs, err = [], str(e.strerror or e)
        except (OSError, UnicodeError, ValueError) as e:
            addrs, err = [], str(e)
        took = time.monotonic() - started
        if took > 1.0:
            log.warning("resolving %s took %.1f s", host, took)
        if err:
            log.warning("lookup of %s failed: %s", host, err)
        with self.lock:
            self.cache[host] = (time.monotonic() + (self.ttl if addrs else self.negative_ttl), addrs, err)
            waiters = self.pending.pop(host, [])
        for loop, done in waiters:
            loop.call_soon_threadsafe(done, addrs, err)

    def counts(self) -> dict[str, int]:
        """SHOW LISTS' dns rows: names cached (expired ones dropped now) and lookups in flight."""
        now = time.monotonic()
        with self.lock:
            for k in [k for k, v in self.cache.items() if v[0] <= now]:
                del self.cache[k]
            return {"names": len(self.cache), "queries": len(self.pending)}


def _getaddrinfo(host: str) -> list[Address]:
    hook = _test_hook(host)
    if hook is not None:
        time.sleep(float(hook.get("delay", 0)))
        fixed = hook.get("addresses")
        if fixed is not None:
            return [a for ip in fixed for a in (numeric(str(ip)) or [])]
    return _addresses(socket.getaddrinfo(host, 0, socket.AF_UNSPEC, socket.SOCK_STREAM))


def _test_hook(host: str) -> dict[str, Any] | None:
    raw = os.environ.get(TEST_HOOK)
    if not raw:
        return None
    try:
        entry = json.loads(raw).get(host)
    except (ValueError, AttributeError):
        return None
    return entry if isinstance(entry, dict) else None


RESOLVER = Resolver()
