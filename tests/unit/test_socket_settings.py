"""Socket settings without a pooler: the TLS handshake limiter's schedule, the options net/sockopts.py sets
on real sockets (read back with getsockopt), the /proc walk behind SHOW SOCKETS on sockets this test opens,
and the config checks of tls_rate_limit_per_second and tcp_socket_buffer_size."""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path

import pytest

from pgdoorman.config import ConfigError, load_config
from pgdoorman.net.ratelimit import HandshakeLimiter
from pgdoorman.net.sockopts import TcpOptions, apply_socket
from pgdoorman.observe import sockets
from tests.support.sockstates import settled

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux socket options and /proc")


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_limiter_off_never_waits() -> None:
    lim = HandshakeLimiter(0)
    assert not lim.enabled
    assert all(lim.delay() == 0.0 for _ in range(10_000))


def test_limiter_lets_a_burst_through_then_spaces_at_the_rate() -> None:
    clock = FakeClock()
    lim = HandshakeLimiter(300, clock)  # 3 per 10 ms, then one every 1/300 s
    delays = [lim.delay() for _ in range(9)]
    assert delays[:3] == [0.0, 0.0, 0.0]
    # The rest queue up at the rate: the 4th starts 1/300 s later, the 9th 6/300 s later.
    assert delays[3:] == pytest.approx([k / 300 for k in range(1, 7)])
    assert lim.waited == 6
    # Once the schedule is in the past, a new burst goes through at once.
    clock.t += 1.0
    assert [lim.delay() for _ in range(3)] == [0.0, 0.0, 0.0]


def test_limiter_holds_any_second_to_rate_plus_burst() -> None:
    clock = FakeClock()
    lim = HandshakeLimiter(100, clock)
    starts = []
    for i in range(1000):
        clock.t = 1000.0 + i * 0.001  # 1000 handshakes asked for in one second
        starts.append(clock.t + lim.delay())
    first = min(starts)
    assert sum(1 for s in starts if s < first + 1.0) <= 100 + 1
    assert max(starts) - first == pytest.approx(999 / 100, abs=0.02)  # none refused, all scheduled


def _linger(s: socket.socket) -> tuple[int, int]:
    on, secs = struct.unpack("ii", s.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
    return on, secs


@linux_only
def test_options_on_tcp_and_unix_sockets() -> None:
    opts = TcpOptions(so_linger=0, buffer_size=128 * 1024, unix_buffer_size=96 * 1024)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        apply_socket(t, opts)
        assert _linger(t) == (1, 0)
        # Linux doubles the value (and caps it at [rw]mem_max, well above this on any default system).
        assert t.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * 128 * 1024
        assert t.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 128 * 1024
        assert t.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        apply_socket(a, opts)
        assert _linger(a) == (1, 0)
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 96 * 1024
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        apply_socket(t, TcpOptions(so_linger=7))
        assert _linger(t) == (1, 7)
        default_rcvbuf = t.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        apply_socket(t, TcpOptions())  # None / 0: the kernel's defaults stay
        assert _linger(t)[0] == 0
        assert t.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == default_rcvbuf


def _settled_states() -> dict[str, int]:
    return settled(sockets.socket_states)


@linux_only
def test_socket_states_count_this_process_by_state(tmp_path: Path) -> None:
    before = _settled_states()
    assert before is not None and list(before) == list(sockets.COLUMNS)
    opened: list[socket.socket] = []
    try:
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.bind(("127.0.0.1", 0))
        lst.listen()
        peer = socket.create_connection(lst.getsockname())
        accepted, _ = lst.accept()
        opened += [lst, peer, accepted]
        ulst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ulst.bind(str(tmp_path / "s"))
        ulst.listen()
        a, b = socket.socketpair(socket.AF_UNIX)
        d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        opened += [ulst, a, b, d, udp]
        # One side closed: the other is in CLOSE_WAIT until this process closes it.
        peer2 = socket.create_connection(lst.getsockname())
        accepted2, _ = lst.accept()
        peer2.close()
        opened.append(accepted2)
        after = _settled_states()
        diff = {k: after[k] - before[k] for k in after if after[k] != before[k]}
        assert diff == {"tcp_listen": 1, "tcp_established": 2, "tcp_close_wait": 1, "unix_unconnected": 1,
                        "unix_connected": 2, "unix_dgram": 1, "unknown": 1}
        assert sockets.by_type(after)["tcp"] - sockets.by_type(before)["tcp"] == 4
    finally:
        for s in opened:
            s.close()


@linux_only
def test_cached_snapshot_ages() -> None:
    first = sockets.refresh()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM):
        assert sockets.cached() is first  # no age limit: the snapshot taken
        assert sockets.cached(max_age=0.0) != first  # too old: walked again, one more unknown socket


BASE = """\
general:
  admin_username: admin
  admin_password: secret
{extra}
pools:
  app:
    users: [{{username: bob, password: hunter2, pool_size: 1}}]
"""


@pytest.mark.parametrize("rate", [50, 150, 1001])
def test_tls_rate_must_be_a_multiple_of_100(tmp_path: Path, rate: int) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(BASE.format(extra=f"  tls_rate_limit_per_second: {rate}"))
    with pytest.raises(ConfigError) as info:
        load_config(str(p))
    assert info.value.errors == [f"{p}: general.tls_rate_limit_per_second: must be 0 or a multiple of 100 "
                                 f"(100, 200, ...), got {rate}"]


def test_socket_settings_load_without_warnings(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(BASE.format(extra="  tls_rate_limit_per_second: 200\n  tcp_so_linger: 3\n"
                                   "  tcp_socket_buffer_size: 1MB\n  unix_socket_buffer_size: 256KB"))
    cfg = load_config(str(p))
    assert cfg.warnings == ()
    g = cfg.general
    assert (g.tls_rate_limit_per_second, g.tcp_so_linger, g.tcp_socket_buffer_size,
            g.unix_socket_buffer_size) == (200, 3, 1 << 20, 256 << 10)


def test_small_tcp_buffer_warns(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(BASE.format(extra="  tcp_socket_buffer_size: 4096"))
    (warning,) = load_config(str(p)).warnings
    assert warning.startswith(f"{p}: general.tcp_socket_buffer_size: 4096 bytes turns TCP buffer autotuning off")
