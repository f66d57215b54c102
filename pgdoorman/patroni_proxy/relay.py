"""One proxied TCP connection: a non-blocking connect to the chosen backend, then bytes copied both ways
on the proxy loop (write now, queue the rest, stop reading a side whose peer has too much queued), with
half-close passed through (EOF from one side becomes shutdown(SHUT_WR) on the other once its queue is
sent). No protocol is parsed.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from pgdoorman.net.conn import Conn
from pgdoorman.net.loop import EVENT_WRITE, Loop, Timer

log = logging.getLogger("pgdoorman.patroni_proxy.relay")

_CONNECTING = (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY, errno.EINTR)


def _nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        pass


class Side(Conn):
    """One socket of a relay; what it reads is written to `peer`."""

    __slots__ = ("relay", "peer", "label", "eof", "wr_shut", "shut_pending", "received")

    def __init__(self, sock: socket.socket, loop: Loop, relay: Relay, label: str) -> None:
        super().__init__(sock, loop)
        self.relay = relay
        self.peer: Side | None = None
        self.label = label
        self.eof = False  # we read EOF from this socket
        self.wr_shut = False  # we sent FIN on this socket
        self.shut_pending = False  # send FIN once the queue drains
        self.received = 0

    def on_readable(self) -> None:
        view = self.loop.rview
        try:
            n = self.sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.relay.close(f"{self.label} read failed: {e}")
            return
        peer = self.peer
        assert peer is not None
        if n == 0:
            self.eof = True
            self.pause_reading()
            peer.shutdown_write()
            self.relay.check_done()
            return
        self.received += n
        peer.write(view[:n])

    def shutdown_write(self) -> None:
        if self.closed or self.wr_shut:
            return
        if self.out:
            self.shut_pending = True
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.relay.close(f"{self.label} shutdown failed: {e}")
            return
        self.wr_shut = True

    # Back-pressure: this side's queue is full -> stop reading the side that feeds it.
    def on_backlog(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def on_drained(self) -> None:
        if self.shut_pending:
            self.shut_pending = False
            self.shutdown_write()
            self.relay.check_done()
            return
        if self.peer is not None and not self.peer.eof:
            self.peer.resume_reading()

    def on_close(self, reason: str) -> None:
        self.relay.close(reason or f"{self.label} closed")


class _Connecting:
    """Selector handler for the backend socket until its non-blocking connect completes."""

    __slots__ = ("relay",)

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def on_event(self, mask: int) -> None:
        self.relay.connect_finished()

    def close(self, reason: str = "") -> None:
        self.relay.close(reason)


class Relay:
    """client <-> backend. `on_closed(relay)` is called exactly once, whatever ends it."""

    __slots__ = ("loop", "client_sock", "client_addr", "backend_addr", "family", "server_sock", "client",
                 "server", "closed", "connected", "on_closed", "_timer", "reason", "backend")

    def __init__(self, loop: Loop, client_sock: socket.socket, client_addr: Any, backend_addr: tuple[Any, ...],
                 family: int, on_closed: Callable[[Relay], None], backend: Any = None) -> None:
        self.loop = loop
        self.client_sock = client_sock
        self.client_addr = client_addr
        self.backend_addr = backend_addr
        self.family = family
        self.server_sock: socket.socket | None = None
        self.client: Side | None = None
        self.server: Side | None = None
        self.closed = False
        self.connected = False
        self.on_closed = on_closed
        self._timer: Timer | None = None
        self.reason = ""
        self.backend = backend  # whoever created the relay keeps its bookkeeping here

    def start(self, connect_timeout: float) -> None:
        """Begin the non-blocking connect; the client is not read until the backend is connected."""
        self.client_sock.setblocking(False)
        _nodelay(self.client_sock)
        try:
            s = socket.socket(self.family, socket.SOCK_STREAM)
        except OSError as e:
            self.close(f"cannot create a socket: {e}")
            return
        self.server_sock = s
        s.setblocking(False)
        _nodelay(s)
        err = s.connect_ex(self.backend_addr)
        if err == 0:
            self._established()
            return
        if err not in _CONNECTING:
            self.close(f"connect to {self._backend_str()} failed: {os.strerror(err)}")
            return
        try:
            self.loop.sel.register(s, EVENT_WRITE, _Connecting(self))
        except (OSError, ValueError) as e:
            self.close(f"cannot watch the backend socket: {e}")
            return
        self._timer = self.loop.call_later(connect_timeout, self._connect_timeout)

    def _backend_str(self) -> str:
        host, port = self.backend_addr[0], self.backend_addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    def _connect_timeout(self) -> None:
        self._timer = None
        if not self.connected:
            self.close(f"connect to {self._backend_str()} timed out")

    def connect_finished(self) -> None:
        s = self.server_sock
        if self.closed or s is None:
            return
        try:
            self.loop.sel.unregister(s)
        except (KeyError, ValueError):
            pass
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.close(f"connect to {self._backend_str()} failed: {os.strerror(err)}")
            return
        self._established()

    def _established(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        assert self.server_sock is not None
        self.connected = True
        client = Side(self.client_sock, self.loop, self, "client")
        server = Side(self.server_sock, self.loop, self, "server")
        client.peer, server.peer = server, client
        self.client, self.server = client, server
        client.attach(self.loop)
        server.attach(self.loop)

    def check_done(self) -> None:
        """Both directions finished (EOF read and FIN passed on): the relay is over."""
        c, s = self.client, self.server
        if c is not None and s is not None and c.eof and s.eof and c.wr_shut and s.wr_shut:
            self.close("closed by both sides")

    @property
    def bytes_to_server(self) -> int:
        return self.client.received if self.client is not None else 0

    @property
    def bytes_to_client(self) -> int:
        return self.server.received if self.server is not None else 0

    def close(self, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for side in (self.client, self.server):
            if side is not None:
                side.close(reason)  # re-enters close(), which is already a no-op
        if self.client is None:
            self.client_sock.close()
        if self.server is None and self.server_sock is not None:
            try:
                self.loop.sel.unregister(self.server_sock)
            except (KeyError, ValueError):
                pass
            self.server_sock.close()
        self.on_closed(self)
