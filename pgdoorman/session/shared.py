"""What logged-in clients share instead of holding a copy each, so that an idle client costs little memory
(docs/performance.md, "What an idle client costs"): an empty buffer and a spent login timer, the parse of a startup packet that many clients send
byte for byte the same, and the settings a client wants (`want`, its key and the planner signature of its
prepared statements), one object for every client of the worker thread with the same contents.

Everything handed out here is shared: nobody may change it in place. A client that changes a setting makes
its own copy first (ClientBase.param_changed); `want` of a client is replaced, never updated.

The tables are per worker thread (a client's login and its relay run on its worker's thread), so that on
free-threaded CPython no two threads touch the reference counts of the same objects, and bounded: past
CACHE_MAX distinct entries (unique application names, say) a table starts over.
"""

from __future__ import annotations

import sys
import threading
from typing import TypeVar

from pgdoorman.net.loop import Timer

CACHE_MAX = 1024

# The empty buffer every client holds while it has nothing buffered (inbuf after login, pending, raw): bytes,
# so that nothing can grow it in place; a client gets a bytearray of its own when it buffers (fastpath.py).
EMPTY = b""
# The login timer of a client that logged in (or was restored logged in): nothing left to cancel.
NO_TIMER = Timer(0.0, lambda: None, ())
NO_TIMER.cancel()

Params = dict[str, str]
WantKey = tuple[tuple[str, str], ...]
K = TypeVar("K")
V = TypeVar("V")


class _Tables(threading.local):
    def __init__(self) -> None:
        # Startup packet body -> (its parameters, the settings they ask for): both shared.
        self.startups: dict[bytes, tuple[Params, Params]] = {}
        # want_key -> (want, want_key): the one dict and tuple every client wanting these settings holds.
        self.wants: dict[WantKey, tuple[Params, WantKey]] = {}
        self.tuples: dict[tuple[str, ...], tuple[str, ...]] = {}


_tables = _Tables()


def startup(body: bytes) -> tuple[Params, Params] | None:
    """The parameters and settings of a startup packet body seen before on this thread (shared), or None."""
    return _tables.startups.get(body)


def keep_startup(body: bytes, params: Params, settings: Params) -> tuple[Params, Params]:
    """Remember a startup packet's parse for the next client that sends the same bytes; the pair to use
    from now on (its names interned: clients whose packets differ still share them)."""
    kept = ({sys.intern(k): v for k, v in params.items()}, {sys.intern(k): v for k, v in settings.items()})
    return _keep(_tables.startups, body, kept)


def params(values: Params) -> tuple[Params, WantKey]:
    """The shared dict equal to `values` (a client's `want`, or a restored client's startup parameters) and
    its key, the tuple of its items (`want_key`): one of each per distinct contents. `values` itself becomes
    the shared one when nothing equal is kept: the caller lets go of it."""
    key = tuple(values.items())
    table = _tables.wants
    hit = table.get(key)
    return hit if hit is not None else _keep(table, key, (values, key))


def same(t: tuple[str, ...]) -> tuple[str, ...]:
    """The shared tuple equal to `t` (the planner signature of a client's prepared statements)."""
    table = _tables.tuples
    hit = table.get(t)
    return hit if hit is not None else _keep(table, t, t)


def _keep(table: dict[K, V], key: K, value: V) -> V:
    """Keep `value` under `key` in one of this thread's tables, which starts over past CACHE_MAX entries."""
    if len(table) >= CACHE_MAX:
        table.clear()
    table[key] = value
    return value
