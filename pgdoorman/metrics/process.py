"""Process-level facts for metrics, read from /proc on Linux: resident memory, and the process's sockets
counted by type (tcp, tcp6, unix, unknown; observe/sockets.py walks them). Walking /proc/self/fd is O(open
files), so socket counts are refreshed by the stats sampler every 15 s (as PgDoorman does) and a scrape only
reads the cached value.
"""

from __future__ import annotations

from pgdoorman.observe import sockets


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


def socket_counts() -> dict[str, int] | None:
    """{'tcp': n, 'tcp6': n, 'unix': n, 'unknown': n} for this process, or None off Linux."""
    states = sockets.socket_states()
    return None if states is None else sockets.by_type(states)


def refresh_socket_counts() -> None:
    sockets.refresh()


def cached_socket_counts() -> dict[str, int] | None:
    """The last refreshed counts (computed now if nothing refreshed them yet)."""
    states = sockets.cached()
    return None if states is None else sockets.by_type(states)
