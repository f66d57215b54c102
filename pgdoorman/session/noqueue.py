"""The expected-response queue of a client that has not needed one yet (Rewriter.rq): one shared empty deque
that refuses anything queued, until Rewriter._queue gives the client a queue of its own (prepared-statement
mode, or an extended-protocol window in the plain relay: session/tracking.py).

In a module of its own because scripts/build_mypyc.sh leaves it out: a deque subclass compiled by mypyc
crashes the interpreter when its module is imported.
"""

from __future__ import annotations

from collections import deque
from typing import Any


class _NoRequests(deque[tuple[int, Any]]):
    """Always empty, and loud if anything is queued."""

    def append(self, _: tuple[int, Any]) -> None:
        raise RuntimeError("response queued outside prepared-statement mode")

    appendleft = append

    def extend(self, _: Any) -> None:
        raise RuntimeError("response queued outside prepared-statement mode")

    extendleft = extend


NO_REQUESTS = _NoRequests()
