"""Socket options for client, server and listening sockets (TCP_NODELAY, keepalives, TCP_USER_TIMEOUT,
SO_LINGER, SO_REUSEPORT), applied from the `general` settings. Unix sockets get none of the TCP ones.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class TcpOptions:
    no_delay: bool = True
    keepalives_idle: int = 5
    keepalives_interval: int = 5
    keepalives_count: int = 5
    user_timeout: int = 60  # seconds; 0 disables
    so_linger: int | None = None  # seconds; None leaves the kernel default


def apply_tcp(sock: socket.socket, opts: TcpOptions) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        if opts.no_delay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if opts.keepalives_idle > 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if hasattr(socket, "TCP_KEEPIDLE"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, opts.keepalives_idle)
            if hasattr(socket, "TCP_KEEPINTVL") and opts.keepalives_interval > 0:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, opts.keepalives_interval)
            if hasattr(socket, "TCP_KEEPCNT") and opts.keepalives_count > 0:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, opts.keepalives_count)
        if opts.user_timeout > 0 and hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, opts.user_timeout * 1000)
        if opts.so_linger is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, opts.so_linger))
    except OSError:
        # Options are best effort: a socket the peer already reset must not take the worker down.
        pass


def tcp_listener(host: str, port: int, backlog: int, reuse_port: bool = True) -> socket.socket:
    infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(addr)
        s.listen(backlog)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def unix_listener(directory: str, port: int, mode: int, backlog: int) -> tuple[socket.socket, str]:
    path = os.path.join(directory, f".s.PGSQL.{port}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(path)
        os.chmod(path, mode)
        s.listen(backlog)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s, path
