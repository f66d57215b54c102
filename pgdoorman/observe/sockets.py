"""The process's sockets by kind and state, read from /proc (Linux): SHOW SOCKETS and the
`pg_doorman_sockets{type}` gauge. The socket inodes of /proc/self/fd are looked up in /proc/self/net/tcp,
tcp6 and unix; a TCP socket is counted under its state (established, time_wait, listen, ...), a Unix stream
socket under its state (connected, ...), Unix datagram and seqpacket sockets by type, and what is in none of
the tables (UDP, netlink, ...) as unknown, as PgDoorman does.

The walk costs a readlink per open descriptor plus a read of the kernel tables, so readers take a cached
snapshot: the stats sampler refreshes it every 15 s for the metrics, and SHOW SOCKETS walks again when the
snapshot is more than a second old (a script polling the console in a loop costs one walk per second).
"""

from __future__ import annotations

import os
import threading
import time

# include/net/tcp_states.h, from 1 (TCP_ESTABLISHED) to 13 (TCP_BOUND_INACTIVE).
TCP_STATES = ("established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2", "time_wait", "close", "close_wait",
              "last_ack", "listen", "closing", "new_syn_recv", "bound_inactive")
# Unix stream socket states (SS_FREE .. SS_DISCONNECTING); anything else counts as free, as in PgDoorman.
UNIX_STATES = ("free", "unconnected", "connecting", "connected", "disconnecting")

# SHOW SOCKETS' columns, in PgDoorman's order. (PgDoorman 3.10.7 names the last two IPv6 columns
# tcp_new_syn_recv and tcp_bound_inactive, duplicating the IPv4 names; they are tcp6_* here.)
COLUMNS: tuple[str, ...] = (
    *(f"tcp_{s}" for s in TCP_STATES),
    *(f"tcp6_{s}" for s in TCP_STATES),
    *(f"unix_{s}" for s in UNIX_STATES),
    "unix_dgram", "unix_seq_packet", "unknown",
)

SHOW_MAX_AGE = 1.0  # seconds: how stale a snapshot SHOW SOCKETS may show

_lock = threading.Lock()
_cached: dict[str, int] | None = None
_cached_at = 0.0  # monotonic time of the walk; 0: never walked


def _socket_inodes(fd_dir: str) -> set[int] | None:
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return None
    inodes: set[int] = set()
    for name in names:
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:[") and target.endswith("]"):
            try:
                inodes.add(int(target[8:-1]))
            except ValueError:
                pass
    return inodes


def _rows(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            next(f, None)  # header
            return [line.split() for line in f]
    except OSError:
        return []  # no IPv6 in this namespace, say


def _fill_tcp(counts: dict[str, int], prefix: str, path: str, inodes: set[int]) -> None:
    for t in _rows(path):
        if len(t) < 10:
            continue
        try:
            ino, state = int(t[9]), int(t[3], 16)
        except ValueError:
            continue
        if ino in inodes and 1 <= state <= len(TCP_STATES):
            counts[f"{prefix}_{TCP_STATES[state - 1]}"] += 1
            inodes.discard(ino)


def _fill_unix(counts: dict[str, int], path: str, inodes: set[int]) -> None:
    for t in _rows(path):
        if len(t) < 7:
            continue
        try:
            ino, kind, state = int(t[6]), int(t[4], 16), int(t[5], 16)
        except ValueError:
            continue
        if ino not in inodes:
            continue
        if kind == 1:  # SOCK_STREAM
            counts[f"unix_{UNIX_STATES[state] if 0 <= state < len(UNIX_STATES) else 'free'}"] += 1
        elif kind == 2:
            counts["unix_dgram"] += 1
        elif kind == 5:
            counts["unix_seq_packet"] += 1
        else:
            continue
        inodes.discard(ino)


def socket_states(proc: str = "/proc/self") -> dict[str, int] | None:
    """Every column of COLUMNS with its count, for the process `proc` names; None off Linux."""
    inodes = _socket_inodes(os.path.join(proc, "fd"))
    if inodes is None:
        return None
    counts = dict.fromkeys(COLUMNS, 0)
    _fill_tcp(counts, "tcp", os.path.join(proc, "net", "tcp"), inodes)
    _fill_tcp(counts, "tcp6", os.path.join(proc, "net", "tcp6"), inodes)
    _fill_unix(counts, os.path.join(proc, "net", "unix"), inodes)
    counts["unknown"] = len(inodes)
    return counts


def by_type(states: dict[str, int]) -> dict[str, int]:
    """pg_doorman_sockets' types: tcp, tcp6, unix (stream sockets, as PgDoorman counts them) and unknown."""
    return {
        "tcp": sum(states[f"tcp_{s}"] for s in TCP_STATES),
        "tcp6": sum(states[f"tcp6_{s}"] for s in TCP_STATES),
        "unix": sum(states[f"unix_{s}"] for s in UNIX_STATES),
        "unknown": states["unknown"],
    }


def refresh() -> dict[str, int] | None:
    """Walk now and keep the result for the cached readers."""
    global _cached, _cached_at
    states = socket_states()
    with _lock:
        _cached = states
        _cached_at = time.monotonic()
    return states


def cached(max_age: float | None = None) -> dict[str, int] | None:
    """The last snapshot, walked anew if there is none yet or it is older than `max_age` seconds."""
    with _lock:
        if _cached_at and (max_age is None or time.monotonic() - _cached_at <= max_age):
            return _cached
    return refresh()
