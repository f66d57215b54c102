"""Process facts for /metrics read from /proc: resident memory, and the process's sockets by type.
The counts are checked as differences around sockets this test opens, so other sockets of the test
process (pytest's, the interpreter's) do not matter, each count read until it is settled (a read of
/proc/net can skip one of them while other processes open and close sockets: tests/support/sockstates.py)."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from pgdoorman.metrics.process import memory_bytes, socket_counts
from tests.support.sockstates import settled

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux only)")


def test_memory_bytes_is_resident_size() -> None:
    assert memory_bytes() > 1_000_000
    assert memory_bytes("/nonexistent/status") == 0


def test_socket_counts_by_type(tmp_path: os.PathLike[str]) -> None:
    before = settled(socket_counts)
    opened: list[socket.socket] = []
    try:
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        peer = socket.create_connection(tcp.getsockname())
        accepted, _ = tcp.accept()
        opened += [tcp, peer, accepted]
        a, b = socket.socketpair(socket.AF_UNIX)
        opened += [a, b]
        want_tcp6 = 0
        if socket.has_ipv6:
            try:
                t6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                t6.bind(("::1", 0))
                t6.listen()
                opened.append(t6)
                want_tcp6 = 1
            except OSError:
                pass  # no IPv6 loopback on this machine: the tcp6 count is only checked when it exists
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # neither tcp nor unix: "unknown"
        opened.append(udp)
        after = settled(socket_counts)
        diff = {k: after[k] - before[k] for k in after}
        assert diff == {"tcp": 3, "tcp6": want_tcp6, "unix": 2, "unknown": 1}
    finally:
        for s in opened:
            s.close()
    assert settled(socket_counts) == before
