"""Socket options for client, server and listening sockets, applied from the `general` settings as PgDoorman
applies them: TCP client and server sockets get SO_LINGER (`tcp_so_linger`), TCP_NODELAY, SO_SNDBUF/SO_RCVBUF
(`tcp_socket_buffer_size`, when not 0), keepalives and TCP_USER_TIMEOUT; Unix-socket clients and servers get
SO_LINGER and SO_SNDBUF/SO_RCVBUF (`unix_socket_buffer_size`). Listening sockets: SO_REUSEADDR, SO_REUSEPORT.
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
    # SO_LINGER on, with this many seconds: 0 (PgDoorman's default) makes close() reset the connection at once
    # (RST) instead of leaving it in TIME_WAIT. None leaves the kernel default (linger off).
    so_linger: int | None = None
    buffer_size: int = 0  # SO_SNDBUF and SO_RCVBUF of TCP sockets; 0 leaves them to the kernel's autotuning
    unix_buffer_size: int = 0  # SO_SNDBUF and SO_RCVBUF of Unix sockets; 0 leaves the kernel default


def apply_socket(sock: socket.socket, opts: TcpOptions) -> None:
    """The options of a client or server connection: TCP or Unix by the socket's family."""
    if sock.family == socket.AF_UNIX:
        apply_unix(sock, opts)
    else:
        apply_tcp(sock, opts)


def _linger_and_buffers(sock: socket.socket, linger: int | None, size: int) -> None:
    if linger is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, linger))
    if size > 0:
        # Linux doubles the value and caps it at net.core.wmem_max / rmem_max; a fixed size turns TCP's
        # receive-buffer autotuning off for the socket. Set before connect() where we connect, so that the
        # window scale offered in the SYN fits.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def linger_off(sock: socket.socket) -> None:
    """An orderly close (FIN) for this socket whatever tcp_so_linger says: PgDoorman's choice for the
    connections that carry a cancel request, whose sender waits for the end of file."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 0, 0))
    except OSError:
        pass


def apply_unix(sock: socket.socket, opts: TcpOptions) -> None:
    try:
        _linger_and_buffers(sock, opts.so_linger, opts.unix_buffer_size)
    except OSError:
        pass


def apply_tcp(sock: socket.socket, opts: TcpOptions) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        _linger_and_buffers(sock, opts.so_linger, opts.buffer_size)
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
