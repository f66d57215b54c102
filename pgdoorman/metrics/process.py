"""Process-level facts for metrics and the web API's /api/process, read from /proc on Linux: resident
memory, CPU time, threads and descriptors, and the process's sockets counted by type (tcp, tcp6, unix,
unknown; observe/sockets.py walks them). Walking /proc/self/fd is O(open
files), so socket counts are refreshed by the stats sampler every 15 s (as PgDoorman does) and a scrape only
reads the cached value.
"""

from __future__ import annotations

import os
import resource
import socket
import threading
from typing import Any

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


def _proc_stat_fields(path: str) -> tuple[str, list[str]] | None:
    """(comm, the fields after it) of a /proc/<pid>[/task/<tid>]/stat file; comm may hold spaces and ')'."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            raw = f.read()
    except OSError:
        return None
    lp, rp = raw.find("("), raw.rfind(")")
    if lp < 0 or rp <= lp:
        return None
    return raw[lp + 1:rp], raw[rp + 1:].split()


def _status_kib(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) > 1 and parts[1].isdigit() else 0
    return 0


def process_facts(proc: str = "/proc/self") -> dict[str, Any]:
    """The process's resources for /api/process: pid, host name, resident and virtual memory, threads, open
    descriptors and their limit, CPU time (user and system, microseconds since start), CPU count, and per
    thread its name (the Python thread's name where one runs on it, else the kernel's) and CPU time. Off
    Linux what /proc would give is 0 and the threads list is empty."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    us = 1_000_000 // max(1, tick)
    t = os.times()
    try:
        with open(f"{proc}/status", encoding="ascii", errors="replace") as f:
            status = f.read()
        fd_open = len(os.listdir(f"{proc}/fd"))
    except OSError:
        status, fd_open = "", 0
    names = {th.native_id: th.name for th in threading.enumerate() if th.native_id is not None}
    threads: list[dict[str, Any]] = []
    try:
        tids = sorted(int(name) for name in os.listdir(f"{proc}/task") if name.isdigit())
    except OSError:
        tids = []
    for tid in tids:
        st = _proc_stat_fields(f"{proc}/task/{tid}/stat")
        if st is None or len(st[1]) < 13:
            continue
        comm, rest = st
        threads.append({"tid": tid, "name": names.get(tid, comm), "cpu_user_us": int(rest[11]) * us,
                        "cpu_system_us": int(rest[12]) * us})
    threads.sort(key=lambda d: -(d["cpu_user_us"] + d["cpu_system_us"]))
    return {
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "rss_bytes": memory_bytes(f"{proc}/status"),
        "vm_size_bytes": _status_kib(status, "VmSize:"),
        "threads": len(tids) or threading.active_count(),
        "fd_open": fd_open,
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "cpu_user_us": int(t.user * 1_000_000),
        "cpu_system_us": int(t.system * 1_000_000),
        "cpu_cores": os.cpu_count() or 1,
        "threads_breakdown": threads,
    }
