"""Process-level facts for metrics, read from /proc on Linux: resident memory, and the process's sockets
counted by type (tcp, tcp6, unix, unknown). Walking /proc/self/fd is O(open files), so socket counts are
refreshed by the stats sampler every 15 s (as PgDoorman does) and a scrape only reads the cached value.
"""

from __future__ import annotations

import os
import re
import threading
import time

_SOCKET = re.compile(r"^socket:\[(\d+)\]$")
_cache_lock = threading.Lock()
_socket_counts: dict[str, int] | None = None
_socket_counts_at = 0.0


def memory_bytes(status_path: str = "/proc/self/status") -> int:
    """Resident set size (VmRSS) in bytes; 0 where /proc is not available."""
    try:
        with open(status_path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    parts = line.split()
                    value = int(parts[1])
                    unit = parts[2].lower() if len(parts) > 2 else "kb"
                    return value * {"kb": 1024, "mb": 1 << 20, "gb": 1 << 30}.get(unit, 1)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _inodes(path: str, column: int) -> set[str]:
    out: set[str] = set()
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            next(f, None)  # header
            for line in f:
                parts = line.split()
                if len(parts) > column:
                    out.add(parts[column])
    except OSError:
        pass
    return out


def socket_counts() -> dict[str, int] | None:
    """{'tcp': n, 'tcp6': n, 'unix': n, 'unknown': n} for this process, or None off Linux."""
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        return None
    mine: list[str] = []
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return None
    for name in names:
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue
        mt = _SOCKET.match(target)
        if mt:
            mine.append(mt.group(1))
    # The inode is column 9 in /proc/net/tcp{,6} and column 6 in /proc/net/unix.
    tcp = _inodes("/proc/self/net/tcp", 9)
    tcp6 = _inodes("/proc/self/net/tcp6", 9)
    unix = _inodes("/proc/self/net/unix", 6)
    counts = {"tcp": 0, "tcp6": 0, "unix": 0, "unknown": 0}
    for ino in mine:
        if ino in tcp:
            counts["tcp"] += 1
        elif ino in tcp6:
            counts["tcp6"] += 1
        elif ino in unix:
            counts["unix"] += 1
        else:
            counts["unknown"] += 1
    return counts


def refresh_socket_counts() -> None:
    global _socket_counts, _socket_counts_at
    counts = socket_counts()
    with _cache_lock:
        _socket_counts = counts
        _socket_counts_at = time.monotonic()


def cached_socket_counts() -> dict[str, int] | None:
    """The last refreshed counts (computed now if nothing refreshed them yet)."""
    with _cache_lock:
        if _socket_counts_at:
            return _socket_counts
    refresh_socket_counts()
    with _cache_lock:
        return _socket_counts
