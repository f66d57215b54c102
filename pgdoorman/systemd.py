"""systemd `Type=notify` support without libsystemd: one datagram per state change (READY=1, RELOADING=1,
STOPPING=1, MAINPID=<pid>, STATUS=...) sent to the AF_UNIX socket named by $NOTIFY_SOCKET.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("pgdoorman.systemd")

ENV = "NOTIFY_SOCKET"


def notify_address(value: str | None = None) -> str | None:
    """The socket address from $NOTIFY_SOCKET: a path, or an abstract name written with a leading '@'."""
    addr = os.environ.get(ENV) if value is None else value
    if not addr:
        return None
    if addr.startswith("@"):
        return "\0" + addr[1:]  # Linux abstract namespace: the kernel name starts with a NUL byte
    if addr.startswith("/"):
        return addr
    # vsock:CID:PORT (systemd >= 254 for VMs) needs AF_VSOCK; nothing else is defined.
    log.warning("%s=%r is not a Unix socket address; systemd notifications are disabled", ENV, addr)
    return None


def notify(state: str, value: str | None = None) -> bool:
    """Send `state` (newline-separated KEY=VALUE assignments). False when not under systemd or on error;
    a notification that cannot be delivered never stops the pooler."""
    addr = notify_address(value)
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as e:
        log.warning("cannot notify systemd (%s) of %r: %s", os.environ.get(ENV), state, e)
        return False
    log.debug("systemd notified: %s", state.replace("\n", " "))
    return True


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd wants it next to RELOADING=1."""
    return int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1_000_000)


def ready(status: str = "") -> bool:
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def reloading() -> bool:
    return notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}")


def stopping() -> bool:
    return notify("STOPPING=1")


def main_pid(pid: int) -> bool:
    return notify(f"MAINPID={pid}")
