"""Sockets end to end, the pooler as a subprocess on a real PostgreSQL: tcp_so_linger, tcp_socket_buffer_size
and unix_socket_buffer_size read back from the pooler's own client and server sockets (TCP and Unix), the
reset a client that ends its session sees by default and the end of file after a FATAL, an accept loop that neither spins nor floods its log when the
descriptor limit is reached and accepts again once descriptors free up, tls_rate_limit_per_second with real
TLS handshakes, and SHOW SOCKETS."""

from __future__ import annotations

import ctypes
import os
import resource
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgdoorman.observe import sockets as proc_sockets
from tests.integration.test_admin import admin, client, rows
from tests.support.certs import Certs, make_certs
from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER, SUPERUSER, PgCluster
from tests.support.pooler import Pooler, wait_for
from tests.support.wire import WireClient, cancel_request, parse_fields, query, startup_message, terminate

pytestmark = pytest.mark.timeout(120)

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture


def pooler_sockets(pid: int) -> Iterator[socket.socket]:
    """Duplicates of the pooler's sockets (pidfd_getfd: the test is its parent), to read their options."""
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                err = ctypes.get_errno()
                if err == 1:  # EPERM: ptrace is not allowed here
                    pytest.skip("pidfd_getfd not permitted (ptrace restrictions)")
                continue
            yield socket.socket(fileno=fd)
    finally:
        os.close(pidfd)


def linger(s: socket.socket) -> tuple[int, int]:
    on, secs = struct.unpack("ii", s.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
    return on, secs


def peer_of(s: socket.socket) -> Any:
    try:
        return s.getpeername()
    except OSError:
        return None  # a listener


def test_socket_options_on_client_and_server_connections(pooler_factory: Any, pg: PgCluster,
                                                         tmp_path: Path) -> None:
    sockdir = tmp_path / "sock"
    sockdir.mkdir()
    unix_pool = {"server_host": pg.sockdir, "server_port": pg.port, "server_database": DBNAME,
                 "users": [{"username": SCRAM_USER, "password": pg.stored_password(SCRAM_USER), "pool_size": 1}]}
    p = pooler_factory(general={"tcp_so_linger": 3, "tcp_socket_buffer_size": "192KB",
                                "unix_socket_buffer_size": "160KB", "unix_socket_dir": str(sockdir)},
                       pools={"viaunix": unix_pool}, pool_size=1)
    pg_unix = os.path.join(pg.sockdir, f".s.PGSQL.{pg.port}")
    my_unix = str(sockdir / f".s.PGSQL.{p.port}")
    # A TCP client on the TCP pool, a Unix-socket client on the pool that reaches PostgreSQL by its socket.
    with client(p) as tcp_c, psycopg.connect(host=str(sockdir), port=p.port, user=SCRAM_USER,
                                             password=SCRAM_PASSWORD, dbname="viaunix", autocommit=True) as unix_c:
        assert tcp_c.execute("select 1").fetchone() == (1,)
        assert unix_c.execute("select 2").fetchone() == (2,)
        seen: dict[str, socket.socket] = {}
        for s in pooler_sockets(p.proc.pid):
            peer = peer_of(s)
            if s.family == socket.AF_UNIX:
                if peer == pg_unix:
                    seen["unix server"] = s
                elif peer is not None and s.getsockname() == my_unix:
                    seen["unix client"] = s
            elif peer is not None and peer[1] == pg.port:
                seen["tcp server"] = s
            elif peer is not None and s.getsockname()[1] == p.port:
                seen["tcp client"] = s
        assert set(seen) == {"tcp client", "tcp server", "unix client", "unix server"}
        for kind, s in seen.items():
            assert linger(s) == (1, 3), kind
            # Linux doubles what was asked for.
            want = 2 * (192 if kind.startswith("tcp") else 160) * 1024
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == want, kind
            if kind.startswith("tcp"):
                assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == want, kind
        for s in seen.values():
            s.close()


POLL_DEAD = select.POLLERR | select.POLLHUP  # what psycopg's wait takes for a dead socket, even with data


def last_word(s: socket.socket) -> tuple[int, bytes, bool]:
    """Once the peer has spoken and a reset would have arrived: the poll events a client waiting to read
    sees (psycopg's C wait raises "connection socket closed" on POLLERR or POLLHUP), everything readable,
    and whether it ended in an end of file (not a reset)."""
    assert select.select([s], [], [], 10)[0], "the peer said nothing"
    time.sleep(0.3)
    poller = select.poll()
    poller.register(s, select.POLLIN)
    events = poller.poll(1000)[0][1]
    data = b""
    s.settimeout(5)
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        return events, data, False
    return events, data, True


def first_error(data: bytes) -> dict[str, str]:
    """The fields of the first ErrorResponse in these messages."""
    while data:
        size = int.from_bytes(data[1:5], "big")
        if data[:1] == b"E":
            return parse_fields(data[5:1 + size])
        data = data[1 + size:]
    raise AssertionError("no ErrorResponse")


def error_code(data: bytes) -> str:
    return first_error(data)["C"]


def test_a_fatal_error_closes_in_order_as_postgresql_does(pooler_factory: Any, pg: PgCluster) -> None:
    """tcp_so_linger 0 (the default) makes a close a reset, and a reset can reach a client before it reads
    the FATAL that came before it: psycopg then reports "connection socket closed" instead of the error (CI
    saw it on query_wait_timeout's 53300). PostgreSQL closes after its FATAL with an end of file, and so does
    the pooler after its own: at login, on query_wait_timeout and on an admin KILL."""
    p = pooler_factory(pool_size=1, general={"query_wait_timeout": 500})
    said = []
    for host, port, user in ((pg.host, pg.port, SUPERUSER), (p.host, p.port, SCRAM_USER)):  # (trust on PG)
        with WireClient(host, port) as w:
            w.send(startup_message({"user": user, "database": "no_such_db"}))
            events, data, eof = last_word(w.sock)
            f = first_error(data)
            said.append((f["S"], f["C"], f["M"]))
            assert eof and not events & POLL_DEAD, (port, events)
    assert said[1] == said[0] == ("FATAL", "3D000", 'database "no_such_db" does not exist')
    with WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD) as holder, \
            WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD) as waiter:
        holder.query_rows("begin")
        holder.query_rows("select 1")  # (a lone BEGIN takes no server yet)
        waiter.send(query("select 1"))  # waits for the one server, past query_wait_timeout
        events, data, eof = last_word(waiter.sock)
        assert error_code(data) == "53300", data
        assert eof and not events & POLL_DEAD, events
        holder.query_rows("commit")
    with WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD) as idle, admin(p) as a:
        a.execute(f"KILL {DBNAME}")
        events, data, eof = last_word(idle.sock)
        assert error_code(data) == "57P01", data
        assert eof and not events & POLL_DEAD, events


def test_default_linger_resets_a_client_that_ends_its_session(pooler_factory: Any) -> None:
    """tcp_so_linger 0 still applies where nothing is left to tell: a client's Terminate is answered by a
    reset, which leaves no TIME_WAIT on either side. A cancel request's connection is closed in order (as
    PgDoorman): its sender waits for an end of file."""
    p = pooler_factory()
    with WireClient.connect(p.host, p.port, SCRAM_USER, DBNAME, SCRAM_PASSWORD) as w:
        local = w.sock.getsockname()
        w.send(terminate())
        time.sleep(0.3)
        poller = select.poll()
        poller.register(w.sock, select.POLLIN)
        assert poller.poll(5000)[0][1] & POLL_DEAD
        with pytest.raises(ConnectionResetError):
            w.sock.recv(1)
    ports = {f"{local[1]:04X}", f"{p.port:04X}"}
    with open("/proc/net/tcp", encoding="ascii") as f:
        time_wait = [ln.split() for ln in f if ln.split()[3:4] == ["06"]]
    assert not [t for t in time_wait if {t[1].split(":")[1], t[2].split(":")[1]} == ports]
    with socket.create_connection((p.host, p.port), timeout=5) as s:
        s.sendall(cancel_request(12345, 678))
        assert s.recv(1) == b""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_accept_backs_off_when_descriptors_run_out_and_recovers(pooler_factory: Any) -> None:
    p: Pooler = pooler_factory(pool_size=1)
    pid = p.proc.pid
    with client(p) as kept:
        assert kept.execute("select 1").fetchone() == (1,)  # the pool's server is open and idle now
        in_use = len(os.listdir(f"/proc/{pid}/fd"))
        _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 8, hard))
        flood: list[socket.socket] = []
        try:
            # The kernel completes these handshakes from the listen queue; the pooler runs out after ~8.
            for _ in range(40):
                flood.append(socket.create_connection((p.host, p.port), timeout=5))
            assert wait_for(lambda: "accept failed" in p.log(), timeout=10, what="EMFILE on accept")
            # Flooded: the listener stays readable, yet the pooler must not spin on it.
            before, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(2.0)
            used = (cpu_seconds(pid) - before) / (time.monotonic() - t0)
            assert used < 0.2, f"the pooler used {used:.0%} of a core while out of descriptors"
            # Clients already in keep being served (their server is in the pool).
            assert kept.execute("select 2").fetchone() == (2,)
        finally:
            for s in flood:
                s.close()
        # Descriptors come back as the pooler closes the flood's connections; the queue drains.
        assert wait_for(lambda: "accepting connections again" in p.log(), timeout=10, what="accepting again")
        with client(p) as fresh:
            assert fresh.execute("select 3").fetchone() == (3,)
        log = p.log()
        assert log.count("accept failed") == 1, "one log line per burst, not one per attempt"
        assert log.count("accepting connections again") == 1


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Certs]:
    yield make_certs(tmp_path_factory.mktemp("certs"), SCRAM_USER)


def tls_handshakes(host: str, port: int, n: int) -> tuple[float, list[float]]:
    """n TLS clients at once (SSLRequest answered first, then every handshake started together): the time just
    before the first SSLRequest was sent and when each handshake finished, each ended in PostgreSQL's
    authentication request."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    socks = []
    first_sent = 0.0
    for i in range(n):
        s = socket.create_connection((host, port), timeout=20)
        if i == 0:
            first_sent = time.monotonic()
        s.sendall(struct.pack("!ii", 8, 80877103))
        assert s.recv(1) == b"S"
        socks.append(s)
    done: list[float] = []
    errors: list[BaseException] = []
    go = threading.Barrier(n)

    def one(s: socket.socket) -> None:
        try:
            go.wait()
            with ctx.wrap_socket(s) as t:
                done.append(time.monotonic())
                t.sendall(startup_message({"user": SCRAM_USER, "database": DBNAME}))
                assert t.recv(1) == b"R"
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(s,)) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return first_sent, sorted(done)


def test_tls_rate_limit_spreads_handshakes_without_refusing(pooler_factory: Any, certs: Certs) -> None:
    rate = 100  # one slot every 10 ms, no burst (rate / 100 = 1)
    p = pooler_factory(general={"tls_certificate": certs.server_cert, "tls_private_key": certs.server_key,
                                "tls_rate_limit_per_second": rate})
    n = 40
    first_sent, done = tls_handshakes(p.host, p.port, n)
    assert len(done) == n  # none refused
    # The pooler books a handshake's slot when its SSLRequest arrives, after `first_sent`, and starts it no
    # earlier than the slot (its timers never fire early): the k-th slot is at least k/rate after the first
    # booking, and a handshake cannot finish before the pooler starts its part. So the k-th handshake to
    # finish does so at least k/rate after `first_sent`, whatever the load: a bound by causality, not a
    # sample of the client threads' clocks (which, under load, lost the margin of a 0.3 s spread bound).
    # Without the limit the 40 finish within a few tens of milliseconds of each other.
    early = [(k, round(t - first_sent, 4)) for k, t in enumerate(done) if t - first_sent < k / rate - 1e-6]
    assert not early, f"handshakes finished before their slot (k, seconds after the first SSLRequest): {early}"


def test_show_sockets(pooler_factory: Any, tmp_path: Path) -> None:
    p = pooler_factory(general={"unix_socket_dir": str(tmp_path)}, pool_size=2)
    with client(p) as c1, client(p) as c2, psycopg.connect(host=str(tmp_path), port=p.port, user=SCRAM_USER,
                                                          password=SCRAM_PASSWORD, dbname=DBNAME) as u, admin(p) as a:
        for c in (c1, c2):
            c.execute("select 1")
        u.execute("select 1")
        (row,) = rows(a, "SOCKETS")
        assert list(row) == list(proc_sockets.COLUMNS)
        got = {k: int(v) for k, v in row.items()}
        # Seen from outside the same moment: the same listeners; the connections of this test at least
        # (three TCP clients with the console, the pool's TCP servers) established.
        outside = proc_sockets.socket_states(f"/proc/{p.proc.pid}")
        assert outside is not None
        assert got["tcp_listen"] == outside["tcp_listen"] >= 1
        assert got["unix_unconnected"] == outside["unix_unconnected"] >= 1  # the Unix listener
        assert got["unix_connected"] >= 1
        assert got["tcp_established"] >= 3 + 1
        assert got["tcp_time_wait"] == 0  # sockets in TIME_WAIT belong to no process
