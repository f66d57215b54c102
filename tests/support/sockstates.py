"""Reading this process's sockets from /proc so that other processes do not disturb the count.

/proc/net/tcp, tcp6 and unix list the whole machine's sockets, and a read of them is not atomic: while other
processes (PostgreSQL, poolers, the other test worker) open and close theirs, one of this process's can be
skipped. A skipped socket is then counted "unknown" (its descriptor is there, its line was not seen), never
twice, so a read is right or has too many "unknown"s."""

from __future__ import annotations

from collections.abc import Callable


def settled(read: Callable[[], dict[str, int] | None], tries: int = 50) -> dict[str, int]:
    """`read()` (socket_states, socket_counts...) repeated until two reads in a row agree; if they never do in
    `tries` reads, the one with the fewest "unknown"s (the fewest sockets skipped)."""
    last = read()
    assert last is not None
    best = last
    for _ in range(tries):
        now = read()
        assert now is not None
        if now == last:
            return now
        if now["unknown"] < best["unknown"]:
            best = now
        last = now
    return best
