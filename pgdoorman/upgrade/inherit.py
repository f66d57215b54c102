"""Binary upgrade, the environment contract between the old and the new process: the variables the old one
sets, how the new one reads them (`take_inherited`) and turns inherited descriptors into listening sockets.

The new process gets the write end of a readiness pipe, its end of the handover socketpair, the listening
sockets to keep using (same accept queues: nothing is refused while both run) and the first cancel key pid
it may hand out. It removes the variables from its environment so its own children never see stale values.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field

log = logging.getLogger("pgdoorman.upgrade")

# Environment of the new process (names as in PgDoorman where it has the same thing).
ENV_READY_FD = "PG_DOORMAN_READY_FD"  # write end of the readiness pipe: "READY <pid>\n"
ENV_MIGRATION_FD = "PG_DOORMAN_MIGRATION_FD"  # our end of the handover socketpair
ENV_LISTEN_FDS = "PG_DOORMAN_LISTEN_FDS"  # "tcp:5,tcp:6,unix:7": listening sockets to keep using
ENV_CANCEL_PID_BASE = "PG_DOORMAN_CANCEL_PID_BASE"  # first cancel key pid to hand out
ENV_SHUTDOWN_ONLY = "PG_DOORMAN_CI_SHUTDOWN_ONLY"  # "1": SIGINT always means shutdown, never upgrade
_OUR_ENV = (ENV_READY_FD, ENV_MIGRATION_FD, ENV_LISTEN_FDS, ENV_CANCEL_PID_BASE)

# The directory the process was started from: the command line (relative config path included) is replayed
# from there even after a daemon chdir'ed to "/". Read it as `inherit.START_CWD` (remember_start_dir rebinds it).
START_CWD = os.getcwd()


def remember_start_dir() -> None:
    global START_CWD
    START_CWD = os.getcwd()


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _OUR_ENV}


def sigint_means_shutdown() -> bool:
    """PgDoorman: SIGINT is a graceful shutdown for a foreground process with a terminal on stdin (Ctrl-C),
    and a binary upgrade otherwise (daemon, service manager, container)."""
    if os.environ.get(ENV_SHUTDOWN_ONLY) == "1":
        return True
    try:
        return os.isatty(0)
    except OSError:
        return False


@dataclass
class Inherited:
    """What an upgrading parent passed us (empty for an ordinary start)."""

    ready_fd: int | None = None
    migration_fd: int | None = None
    listeners: list[tuple[str, int]] = field(default_factory=list)
    cancel_pid_base: int | None = None

    @property
    def is_upgrade(self) -> bool:
        return self.ready_fd is not None


def _fd_env(name: str) -> int | None:
    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        fd = int(raw)
        os.fstat(fd)
    except (ValueError, OSError):
        log.warning("ignoring %s=%r: not an open file descriptor", name, raw)
        return None
    # Ours alone: a later upgrade passes exactly the descriptors it means to.
    os.set_inheritable(fd, False)
    return fd


def take_inherited() -> Inherited:
    """Read (and remove from the environment, so our own children never see stale values) what an upgrading
    parent passed."""
    inh = Inherited(ready_fd=_fd_env(ENV_READY_FD), migration_fd=_fd_env(ENV_MIGRATION_FD))
    for part in (os.environ.get(ENV_LISTEN_FDS) or "").split(","):
        kind, _, num = part.partition(":")
        if kind in ("tcp", "unix") and num.isdigit():
            try:
                os.fstat(int(num))
            except OSError:
                continue
            os.set_inheritable(int(num), False)
            inh.listeners.append((kind, int(num)))
    base = os.environ.get(ENV_CANCEL_PID_BASE, "")
    if base.isdigit():
        inh.cancel_pid_base = int(base)
    for k in _OUR_ENV:
        os.environ.pop(k, None)
    return inh


def inherited_listeners(
    inherited: Inherited | None, host: str, port: int, unix_socket_dir: str | None
) -> tuple[list[socket.socket], socket.socket | None]:
    """The old process's listening sockets this process keeps using: TCP ones bound to the configured
    address, the Unix one at the configured path. Those the configuration moved away from are closed."""
    if inherited is None or not inherited.listeners:
        return [], None
    want: set[tuple[object, ...]] = set()
    try:
        for info in socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                       socket.AI_PASSIVE):
            want.add(tuple(info[4][:2]))
    except OSError:
        pass
    unix_path = os.path.join(unix_socket_dir, f".s.PGSQL.{port}") if unix_socket_dir else None
    tcp: list[socket.socket] = []
    unix: socket.socket | None = None
    for kind, fd in inherited.listeners:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        try:
            name = sock.getsockname()
        except OSError:
            sock.close()
            continue
        if kind == "tcp" and tuple(name[:2]) in want:
            tcp.append(sock)
        elif kind == "unix" and unix is None and name == unix_path:
            unix = sock
        else:
            # The address changed in the config: the old process's sockets are not ours to serve.
            log.info("not reusing the old process's listener %s: the configuration moved to another address",
                     name)
            sock.close()
    if tcp:
        log.info("took over %d listening socket(s) from the old process", len(tcp) + (unix is not None))
    return tcp, unix
