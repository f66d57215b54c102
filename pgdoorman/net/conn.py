"""A non-blocking socket registered on one loop: write now and queue the rest, watch for writability only
while something is queued, and pause/resume reading for back-pressure. `OSError` stops here: subclasses
get `on_close(reason)` exactly once.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from pgdoorman.net.loop import EVENT_READ, EVENT_WRITE, Loop
from pgdoorman.net.sockopts import linger_off

# Back-pressure: stop reading the producer once this much is queued for a slow consumer, resume when the
# queue has drained. 1 MiB bounds per-connection memory while letting big results flow at full speed.
HIGH_WATER = 1 << 20

# close_orderly: at most this many reads of what the peer sent and nobody read (closing over unread bytes
# makes the kernel send a reset instead of an end of file).
DRAIN_READS = 4

# "Nothing to do now, try again on the next event": a plain non-blocking socket raises the first two, a TLS
# socket the last two (its record layer needs more bytes in, or room out).
AGAIN = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class Conn:
    __slots__ = ("sock", "loop", "mask", "out", "closed", "read_paused", "fd", "__weakref__")

    def __init__(self, sock: socket.socket, loop: Loop) -> None:
        self.sock = sock
        self.loop = loop
        self.mask = 0
        self.out: bytearray | None = None
        self.closed = False
        self.read_paused = False
        self.fd = sock.fileno()

    # ------------------------------------------------------------------ selector registration
    def _apply_mask(self) -> None:
        want = (0 if self.read_paused else EVENT_READ) | (EVENT_WRITE if self.out else 0)
        if want == self.mask or self.closed:
            return
        sel = self.loop.sel
        try:
            if self.mask == 0:
                sel.register(self.sock, want, self)
            elif want == 0:
                sel.unregister(self.sock)
            else:
                sel.modify(self.sock, want, self)
        except (KeyError, ValueError, OSError):
            # The fd may have been closed underneath us; the read path will notice.
            return
        self.mask = want

    def attach(self, loop: Loop) -> None:
        """Register on `loop` (called from that loop's thread)."""
        self.loop = loop
        self.mask = 0
        self._apply_mask()

    def detach(self) -> None:
        """Unregister from the current loop so another loop can adopt the socket."""
        if self.mask:
            try:
                self.loop.sel.unregister(self.sock)
            except (KeyError, ValueError, OSError):
                pass
        self.mask = 0

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self._apply_mask()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self._apply_mask()

    def tls_handshake_step(self) -> bool:
        """One step of the TLS handshake on self.sock (an ssl.SSLSocket): True when it is done, False to wait
        for the next event (with write interest while OpenSSL has bytes to send). ssl.SSLError and OSError
        propagate: the handshake failed."""
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLWantWriteError:
            try:
                self.loop.sel.modify(sock, EVENT_READ | EVENT_WRITE, self)
                self.mask = EVENT_READ | EVENT_WRITE
            except (KeyError, ValueError, OSError):
                pass
            return False
        return True

    # ------------------------------------------------------------------ I/O
    def on_event(self, mask: int) -> None:
        if mask & EVENT_WRITE:
            self._flush()
            if self.closed:
                return
        if mask & EVENT_READ:
            self.on_readable()

    def on_readable(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def recv_or_close(self, size: int, eof_reason: str) -> bytes | None:
        """recv() for the slow paths (login, housekeeping): the bytes, or None when there is nothing to
        read yet or the connection was closed (EOF or error)."""
        try:
            data = self.sock.recv(size)
        except AGAIN:
            return None
        except OSError as e:
            self.close(f"read failed: {e}")
            return None
        if not data:
            self.close(eof_reason)
            return None
        return data

    def write(self, data: Any) -> None:
        if self.closed:
            return
        out = self.out
        if out:
            out += data
            mem = self.loop.mem
            if mem is not None:
                mem.used += len(data)
                if mem.over():  # past max_memory_usage: the producer waits until this queue has drained
                    self.on_backlog()
                    return
            if len(out) > HIGH_WATER:
                self.on_backlog()
            return
        try:
            sent = self.sock.send(data)
        except AGAIN:
            sent = 0
        except OSError as e:
            self.close(f"write failed: {e}")
            return
        if sent < len(data):
            self.out = out = bytearray(data[sent:])
            self._apply_mask()
            mem = self.loop.mem
            if mem is not None:
                mem.used += len(out)
                if mem.over():
                    self.on_backlog()
                    return
            if len(out) > HIGH_WATER:
                self.on_backlog()

    def first_out(self, data: bytes) -> None:
        """`data` is all there is to send, once the socket is writable (a connection being made or made
        again: whatever was queued for an earlier socket is dropped)."""
        mem = self.loop.mem
        if mem is not None:
            mem.used += len(data) - (len(self.out) if self.out else 0)
        self.out = bytearray(data)
        self._apply_mask()

    def _flush(self) -> None:
        out = self.out
        if not out:
            return
        try:
            sent = self.sock.send(out)
        except AGAIN:
            return
        except OSError as e:
            self.close(f"write failed: {e}")
            return
        mem = self.loop.mem
        if mem is not None:
            mem.used -= sent
        if sent == len(out):
            self.out = None
            self._apply_mask()
            self.on_drained()
        else:
            del out[:sent]

    @property
    def backlog(self) -> int:
        return len(self.out) if self.out else 0

    def on_backlog(self) -> None:
        """Queued output passed HIGH_WATER (or the process's queues passed max_memory_usage): the producer
        feeding this connection should pause."""

    def on_drained(self) -> None:
        """Everything queued has been sent: a paused producer may resume."""

    def close(self, reason: str = "") -> None:
        if self.closed:
            return
        self.detach()
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
        mem = self.loop.mem
        if mem is not None and self.out:
            mem.used -= len(self.out)
        self.out = None
        self.on_close(reason)

    def close_orderly(self, reason: str) -> None:
        """Close after the pooler's last word to the peer (a FATAL ErrorResponse just written), so that the
        peer reads it: an end of file after it, as PostgreSQL closes after its own FATAL, whatever
        tcp_so_linger says. With SO_LINGER 0 the close is a reset, and a reset can reach the peer before it
        has read the error: psycopg then reports "connection socket closed" instead of the error (its wait
        treats POLLERR/POLLHUP as a dead socket). What the peer sent and nobody read is drained first, since
        closing over unread bytes is a reset too. Output still queued here (the peer not reading) is lost. Over TLS
        the end is OpenSSL's close_notify, as PostgreSQL's: libpq 17's encrypted cancel request takes an end of
        file without it for a failure ("SSL error: unexpected eof while reading")."""
        if self.closed:
            return
        sock = self.sock
        linger_off(sock)
        try:
            for _ in range(DRAIN_READS):
                if not sock.recv(65536):
                    break
        except (OSError, ValueError):  # nothing more to read now (AGAIN), or the connection is gone already
            pass
        if isinstance(sock, ssl.SSLSocket):
            try:
                sock.unwrap()  # sends close_notify (PostgreSQL's last word over TLS); raises rather than wait
            except (OSError, ValueError):
                pass
        self.close(reason)

    def on_close(self, reason: str) -> None:
        """Called once after the socket is closed."""
