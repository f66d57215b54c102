"""core/fallback.py on its own: which failures it takes over, the candidates it finds in Patroni's /cluster
(the fake Patroni REST server of patroni_proxy's tests, over real HTTP) and their order, the back-off of a
failed candidate, the kept host, the return to the configured server, and the events it reports. The
end-to-end behaviour against PostgreSQL is tests/integration/test_fallback.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pgdoorman.config.model import FallbackSettings
from pgdoorman.core import fallback
from pgdoorman.core.fallback import WAIT, PoolFallback, Target
from pgdoorman.protocol import messages as m
from tests.support.fake_patroni import FakePatroni, pmember

REFUSED = m.error_response("08006", "could not connect to server 127.0.0.1:5432: Connection refused", "FATAL")
TIMED_OUT = m.error_response("08006", "could not connect to server x: connect_timeout expired", "FATAL")
AUTH = m.error_response("28P01", 'password authentication failed for user "app"', "FATAL")
STARTING = m.error_response("57P03", "the database system is starting up", "FATAL")


@pytest.fixture
def patroni() -> Iterator[FakePatroni]:
    fake = FakePatroni([])
    yield fake
    fake.close()


@pytest.fixture
def events() -> Iterator[list[tuple[str, str, bool, str]]]:
    got: list[tuple[str, str, bool, str]] = []

    def listen(*ev: Any) -> None:
        got.append(ev)

    fallback.add_listener(listen)
    yield got
    fallback.remove_listener(listen)


def make(urls: list[str], cooldown: float = 30.0, connect_timeout: float = 5.0) -> PoolFallback:
    s = FallbackSettings(tuple(urls), cooldown, 2.0, connect_timeout, cooldown)
    return PoolFallback("app", s, "127.0.0.1", 5432)


def discover(fb: PoolFallback, now: float) -> tuple[bool, str]:
    """Ask for a target while the cluster is unknown: WAIT, then the discovery thread's wake-up."""
    done = threading.Event()
    result: list[tuple[bool, str]] = []

    def wake(ok: bool, why: str) -> None:
        result.append((ok, why))
        done.set()

    assert fb.target(now, 0, wake) is WAIT
    assert done.wait(10)
    return result[0]


def test_only_an_unavailable_server_is_taken_over() -> None:
    fb = make(["http://127.0.0.1:1"])
    assert fallback.unavailable(REFUSED) and fallback.unavailable(STARTING) and fallback.unavailable(None)
    assert not fallback.unavailable(AUTH)
    assert fb.connect_failed(None, AUTH, 100.0) is False
    assert fb.target(100.0, 0, lambda ok, why: None) is None  # no cooldown: the configured server
    assert fb.connect_failed(None, REFUSED, 100.0) is True
    assert fb.local_down_until == 130.0


def test_candidates_in_order_without_excluded_members(patroni: FakePatroni) -> None:
    patroni.members = [
        pmember("leader", "leader", "127.0.0.9", 5433),
        pmember("local", "replica", "127.0.0.1", 5432),  # the configured server itself
        pmember("r1", "replica", "127.0.0.3", 5434),
        pmember("s_nofail", "sync_standby", "127.0.0.4", 5432, tags={"nofailover": True}),
        pmember("r_arch", "replica", "127.0.0.5", 5432, tags={"archive": "true"}),
        pmember("r_nolb", "replica", "127.0.0.6", 5432, tags={"noloadbalance": True}),
        pmember("r_stopped", "replica", "127.0.0.7", 5432, state="stopped"),
        pmember("r2", "replica", "127.0.0.8", 5432, state="streaming"),
        pmember("sync", "sync_standby", "127.0.0.2", 5432),
    ]
    fb = make([patroni.url])
    fb.connect_failed(None, REFUSED, 100.0)
    assert discover(fb, 100.0) == (True, "")
    assert [(t.ip, t.port, t.role) for t in fb.candidates] == [
        ("127.0.0.2", 5432, "sync_standby"), ("127.0.0.3", 5434, "replica"), ("127.0.0.8", 5432, "replica"),
        ("127.0.0.9", 5433, "leader")]
    assert fb.counters.api_requests == 1 and fb.counters.api_errors == 0


def test_failed_candidates_back_off_and_the_kept_host(patroni: FakePatroni, events: list[Any]) -> None:
    patroni.members = [pmember("sync", "sync_standby", "127.0.0.2"), pmember("r", "replica", "127.0.0.3")]
    fb = make([patroni.url], cooldown=30.0, connect_timeout=2.0)
    assert fb.connect_failed(None, REFUSED, 100.0)
    assert events[-1][:3] == ("fallback", "app", False)
    discover(fb, 100.0)
    wake = lambda ok, why: None  # noqa: E731
    sync = fb.target(100.0, 0, wake)
    assert isinstance(sync, Target) and sync.role == "sync_standby"
    # The sync standby fails: avoided for connect_timeout, the replica is next.
    assert fb.connect_failed(sync, TIMED_OUT, 101.0) is True
    assert fb.avoid[("127.0.0.2", 5432)] == (103.0, 4.0) and fb.counters.failures == {"timeout": 1}
    replica = fb.target(101.0, 0, wake)
    assert isinstance(replica, Target) and replica.role == "replica"
    assert not fb.active(101.0)
    fb.connected(replica, 102.0)
    assert fb.active(102.0) and fb.host == replica and fb.counters.connections == 1
    assert events[-1] == ("fallback", "app", True, "fallback to 127.0.0.3:5432 (replica)")
    assert fb.target(110.0, 0, wake) == replica and fb.counters.cache_hits == 1
    # The kept host fails: Patroni is read again; the sync standby is out of its back-off by then.
    assert fb.connect_failed(replica, REFUSED, 110.0) is True
    assert fb.host is None and not fb.active(110.0)
    assert discover(fb, 110.0) == (True, "")
    assert [t.role for t in fb.candidates] == ["sync_standby"]  # the replica is avoided until 112
    # The sync standby fails again: its back-off doubled.
    assert fb.connect_failed(fb.candidates[0], REFUSED, 111.0) is False  # nothing left: the waiter gets it
    assert fb.avoid[("127.0.0.2", 5432)] == (115.0, 8.0)


def test_back_to_the_configured_server(patroni: FakePatroni, events: list[Any]) -> None:
    patroni.members = [pmember("r", "replica", "127.0.0.3")]
    fb = make([patroni.url], cooldown=30.0)
    fb.connect_failed(None, REFUSED, 100.0)
    discover(fb, 100.0)
    r = fb.target(100.0, 0, lambda ok, why: None)
    assert isinstance(r, Target)
    fb.connected(r, 100.5)
    assert fb.target(129.0, 0, lambda ok, why: None) == r
    assert fb.target(130.0, 0, lambda ok, why: None) is None  # the cooldown is over: the configured server
    fb.connected(None, 130.2)
    assert fb.host is None and not fb.active(130.2)
    assert events[-1] == ("fallback", "app", True, "server 127.0.0.1:5432 is back: fallback ended")
    # It fails again later: a new episode reads Patroni again (the topology may have changed meanwhile).
    patroni.members = [pmember("r2", "sync_standby", "127.0.0.4")]
    assert fb.connect_failed(None, REFUSED, 200.0)
    assert discover(fb, 200.0) == (True, "")
    r2 = fb.target(200.0, 0, lambda ok, why: None)
    assert isinstance(r2, Target) and r2.ip == "127.0.0.4"


def test_patroni_unreachable_or_useless(patroni: FakePatroni, events: list[Any]) -> None:
    patroni.members = [pmember("local", "leader", "127.0.0.1", 5432)]
    fb = make([patroni.url])
    fb.connect_failed(None, REFUSED, 100.0)
    assert discover(fb, 100.0) == (False, "no usable cluster member in Patroni's answer")
    patroni.status = 503
    ok, why = discover(fb, 100.0)
    assert not ok and why.startswith("Patroni API unavailable") and "503" in why
    assert fb.counters.api_requests == 2 and fb.counters.api_errors == 1
    assert sum(fb.counters.api_buckets) == 2
    assert events[-1][2] is False and "fallback impossible" in events[-1][3]


def test_for_pool_keeps_one_state_per_configured_pool() -> None:
    s = FallbackSettings(("http://127.0.0.1:1",), 30.0, 5.0, 5.0, 30.0)
    a = fallback.for_pool("fb_test_pool", s, "127.0.0.1", 5432)
    assert a is not None and fallback.for_pool("fb_test_pool", s, "127.0.0.1", 5432) is a
    s2 = FallbackSettings(("http://127.0.0.1:2",), 10.0, 5.0, 5.0, 10.0)
    assert fallback.for_pool("fb_test_pool", s2, "127.0.0.1", 5432) is a and a.settings == s2
    assert fallback.for_pool("fb_test_pool", None, "127.0.0.1", 5432) is None
    assert a not in fallback.states()


def test_a_new_episode_reads_patroni_again(patroni: FakePatroni) -> None:
    """The server failed, Patroni was read, and nothing connected before the cooldown ended; it fails again:
    the old answer is not trusted, Patroni is read again."""
    patroni.members = [pmember("r", "replica", "127.0.0.3")]
    fb = make([patroni.url], cooldown=30.0)
    fb.connect_failed(None, REFUSED, 100.0)
    discover(fb, 100.0)
    assert fb.target(131.0, 0, lambda ok, why: None) is None  # the cooldown is over
    patroni.members = [pmember("s", "sync_standby", "127.0.0.4")]
    assert fb.connect_failed(None, REFUSED, 131.0)
    assert discover(fb, 131.0) == (True, "")
    s = fb.target(131.0, 0, lambda ok, why: None)
    assert isinstance(s, Target) and s.ip == "127.0.0.4"
