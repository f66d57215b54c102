"""Making a server connection: the host name resolved off the loop (net/resolve.py), each of its addresses
tried in order while they refuse (as libpq does), the non-blocking connect, and server TLS (SSLRequest,
handshake, server_tls_mode allow's second attempt).

While the name is being resolved the connection exists in state CONNECTING with a socket not yet connected
(nor registered on the loop): the pool counts it as connecting and its connect_timeout runs, as for a TCP
connect. A name that does not resolve fails it as a refused connect does, with libpq's wording.

`ServerDial` is the part of `ServerConn` (server.py) kept in its own file; its fields are created by
ServerConn.__init__ (`_init_dial`).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
from typing import TYPE_CHECKING, Any

from pgdoorman.net import resolve
from pgdoorman.net.conn import Conn
from pgdoorman.net.tls import end_point_of, ssl_reason
from pgdoorman.protocol import messages as m
from pgdoorman.session.server_login import BackendLogin
from pgdoorman.session.states import CONNECTING, INTERNAL, LOGIN

if TYPE_CHECKING:
    from pgdoorman.core.fallback import Target
    from pgdoorman.core.pool import Pool
    from pgdoorman.net.loop import Timer
    from pgdoorman.session.host import Host

log = logging.getLogger("pgdoorman.server")


class ServerDial(Conn):
    __slots__ = ("target", "addrs", "port", "tls", "tls_phase", "tls_retried", "connect_error", "state", "login",
                 "inbuf", "params")
    target: str | tuple[Any, ...]  # the unix socket path or the sockaddr connected to ("" while resolving)
    addrs: list[resolve.Address]  # the host's addresses not tried yet
    port: int
    tls: bool  # the socket is an ssl.SSLSocket, handshake done
    tls_phase: int  # 1: SSLRequest sent, waiting for S/N; 2: handshaking
    tls_retried: bool  # server_tls_mode allow: the plain attempt was refused, this is the TLS one
    connect_error: bytes | None  # the ErrorResponse for whoever waits, if it fails
    # ServerConn's, assigned here too (the TLS retry starts the login again).
    state: int
    login: BackendLogin | None
    inbuf: bytearray
    params: dict[str, str]

    # Fields of ServerConn this part uses (plain annotations, not under TYPE_CHECKING: see server_prepared.py).
    worker: Host
    pool: Pool
    addr: str
    timer: Timer
    fallback: Target | None

    def _init_dial(self) -> None:
        self.target = ""
        self.addrs = []
        self.port = 0
        self.tls = False
        self.tls_phase = 0
        self.tls_retried = False
        self.connect_error = None

    def _startup_packet(self) -> bytes:
        assert self.login is not None
        cfg = self.pool.pool_cfg
        return self.login.startup_packet(cfg.server_database, cfg.application_name or "pg_doorman",
                                         self.pool.startup_parameters)

    def dial(self, host: str, port: int) -> None:
        """Start connecting to `host` (a name, an IP literal or a unix socket directory) and `port`."""
        if host.startswith("/"):
            self.target = self.addr  # the socket's path
            self._connect(False)
            return
        self.port = port
        resolve.RESOLVER.resolve(host, self.loop, self._resolved)

    def _resolved(self, addrs: list[resolve.Address], err: str) -> None:
        if self.closed:
            return  # timed out, or closed by RECONNECT or shutdown, while the name was being resolved
        if not addrs:
            host = self.addr.rpartition(":")[0]
            self.connect_error = m.error_response("08006", resolve.failure_text(host, err), "FATAL")
            # Later: open() may not have returned yet, and its caller has still to register the connection.
            self.loop.call_soon(self.close, f"could not resolve {host}: {err}")
            return
        self.addrs = list(addrs)
        self._next_address(later=True)

    def _next_address(self, later: bool) -> None:
        family, sockaddr = self.addrs.pop(0)
        self.target = resolve.with_port((family, sockaddr), self.port)
        if self.sock.family != family:
            try:
                self._new_socket(family)
            except OSError as e:
                self._fail(f"could not create socket: {e}", later)
                return
        self._connect(self.pool.server_tls.first, later)

    def _new_socket(self, family: int) -> None:
        """A new, unconnected socket in place of self.sock (another address, or the TLS attempt)."""
        self.detach()
        try:
            self.sock.close()
        except OSError:
            pass
        self.sock = _socket(family)
        self.fd = self.sock.fileno()

    def _connect(self, tls: bool, later: bool = True) -> None:
        """Start connecting self.sock; the first bytes (SSLRequest or the startup packet) go out once it is
        writable."""
        self.worker.apply_tcp(self.sock)
        err = self.sock.connect_ex(self.target)
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            self.connect_failed(err, later)
            return
        if tls:
            self.tls_phase = 1
            self.first_out(m.I32.pack(8) + m.I32.pack(m.SSL_REQUEST))
        else:
            self.first_out(self._startup_packet())

    def connect_failed(self, err: int, later: bool) -> None:
        """The connect to the current address failed: the next address, else the connection fails
        (`later`: closed on the next loop iteration rather than now)."""
        why = os.strerror(err)
        if self.addrs:
            log.info("server %s (%s) for %s: %s; trying the next address", self.addr, self.target[0],
                     self.pool.name, why)
            try:
                self._new_socket(self.sock.family)
            except OSError as e:
                self._fail(f"could not create socket: {e}", later)
                return
            self._next_address(later)
            return
        self._fail(why, later)

    def _fail(self, why: str, later: bool) -> None:
        self.connect_error = m.error_response("08006", f"could not connect to server {self.addr}: {why}", "FATAL")
        if later:
            self.loop.call_soon(self.close, f"connect failed: {why}")
        else:
            self.close(f"connect failed: {why}")

    def _retry_with_tls(self) -> None:
        """server_tls_mode allow: PostgreSQL refused the plain connection (a hostssl rule): once more, on a
        new socket, with TLS (libpq's sslmode=allow does the same)."""
        self._new_socket(self.sock.family)
        self.inbuf = bytearray()
        self.params = {}
        self.login = BackendLogin(self.pool)
        self.connect_error = None
        self.tls_retried = True
        self.state = CONNECTING
        self.addrs = []  # this address answered: the TLS attempt goes to it again
        self._connect(True)

    def _tls_answer(self, answer: int) -> None:
        """PostgreSQL's one-byte answer to our SSLRequest."""
        st = self.pool.server_tls
        if answer == 83:  # 'S'
            assert st.context is not None
            host = self.fallback.host if self.fallback else self.pool.pool_cfg.server_host  # the name to verify
            try:
                self.detach()
                self.sock = st.context.wrap_socket(self.sock, server_side=False, do_handshake_on_connect=False,
                                                   server_hostname=host if st.context.check_hostname else None)
            except (OSError, ValueError) as e:
                self._tls_failed(f"TLS setup failed: {e}")
                return
            self.tls_phase = 2
            self._apply_mask()
            self._tls_handshake()
            return
        if answer == 78 and not st.required:  # 'N' under prefer (or allow's retry): go on in plain text
            self.tls_phase = 0
            self.write(self._startup_packet())
            return
        why = ("server does not support SSL, but SSL was required" if answer == 78
               else f"unexpected answer {bytes([answer])!r} to SSLRequest")
        self._tls_failed(why)

    def _tls_handshake(self) -> None:
        try:
            if not self.tls_handshake_step():
                return
        except (ssl.SSLError, OSError) as e:
            self._tls_failed(f"TLS handshake failed: {ssl_reason(e)}")
            return
        self.tls_phase = 0
        self.tls = True
        sock = self.sock
        if self.login is not None and isinstance(sock, ssl.SSLSocket):
            self.login.end_point = end_point_of(sock.getpeercert(binary_form=True))
        self._apply_mask()
        self.write(self._startup_packet())

    def _tls_failed(self, why: str) -> None:
        self.connect_error = m.error_response("08006", f"could not connect to server {self.addr}: {why}", "FATAL")
        log.warning("server %s for %s: %s", self.addr, self.pool.name, why)
        self.close(why)

    def _connect_timed_out(self) -> None:
        # (INTERNAL: the login's read of search_path, server.py, the server's slot counted as connected: its close
        # frees the slot and opens another for the waiters, worker.server_closed; the timer stops once logged in)
        if self.state in (CONNECTING, LOGIN, INTERNAL):
            self.connect_error = m.error_response(
                "08006", f"could not connect to server {self.addr}: connect_timeout expired", "FATAL")
            self.close("connect timeout")


def dial_socket(host: str) -> socket.socket:
    """The socket to start with: for a name, the first address's family is known once it is resolved (the
    socket is replaced if it differs)."""
    return _socket(socket.AF_UNIX if host.startswith("/") else socket.AF_INET)


def _socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock
