"""patroni_proxy's Patroni side: /cluster parsing, which members a port may use, the URL blacklist,
fetching over HTTP (errors, timeouts), and the poller's on-demand polls."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from pgdoorman.patroni_proxy.config import PortConfig
from pgdoorman.patroni_proxy.patroni import (
    Blacklist,
    ClusterClient,
    Member,
    PatroniError,
    Poller,
    PollResult,
    eligible_members,
    is_eligible,
    parse_cluster,
    resolve,
)

# The /cluster example of Patroni's REST API documentation (Patroni 4: a replica is "streaming").
PATRONI_DOC = {
    "members": [
        {"name": "patroni1", "role": "leader", "state": "running", "api_url": "http://10.89.0.4:8008/patroni",
         "host": "10.89.0.4", "port": 5432, "timeline": 5, "tags": {"clonefrom": True}},
        {"name": "patroni2", "role": "replica", "state": "streaming", "api_url": "http://10.89.0.6:8008/patroni",
         "host": "10.89.0.6", "port": 5433, "timeline": 5, "tags": {"clonefrom": True},
         "receive_lag": 0, "receive_lsn": "0/4000060", "replay_lag": 0, "replay_lsn": "0/4000060", "lag": 0,
         "lsn": "0/4000060"},
    ],
    "scope": "demo",
    "scheduled_switchover": {"at": "2023-09-24T10:36:00+02:00", "from": "patroni1", "to": "patroni3"},
}


def port(*roles: str, lag: int | None = None) -> PortConfig:
    return PortConfig("p", ("127.0.0.1", 6432), frozenset(roles), 5432, lag)


def member(name: str = "m", role: str = "replica", state: str = "running", lag: int | None = 0,
           noloadbalance: bool = False, host: str | None = None) -> Member:
    return Member(name, role, state, host or f"10.0.0.{abs(hash(name)) % 200 + 1}", 5432, lag, noloadbalance)


def test_parse_patroni_documentation_example() -> None:
    members = parse_cluster(json.dumps(PATRONI_DOC).encode())
    assert [(m.name, m.role, m.state, m.host, m.port, m.lag) for m in members] == [
        ("patroni1", "leader", "running", "10.89.0.4", 5432, None),
        ("patroni2", "async", "streaming", "10.89.0.6", 5433, 0),
    ]


@pytest.mark.parametrize("patroni_role, role", [
    ("leader", "leader"), ("sync_standby", "sync"), ("replica", "async"),
    ("standby_leader", None), ("quorum_standby", None), ("master", None), ("", None),
])
def test_role_mapping(patroni_role: str, role: str | None) -> None:
    assert member(role=patroni_role).role == role


@pytest.mark.parametrize("raw, lag", [
    (0, 0), (123, 123), ("456", 456), (" 7 ", 7), ("unknown", None), (-1, None), (True, None), (None, None),
    (12.9, 12), ([1], None),
])
def test_lag_values(raw: object, lag: int | None) -> None:
    doc = {"members": [{"name": "r", "role": "replica", "state": "running", "host": "h", "lag": raw}]}
    assert parse_cluster(json.dumps(doc))[0].lag == lag


@pytest.mark.parametrize("tags, flag", [
    (None, False), ({}, False), ({"noloadbalance": True}, True), ({"noloadbalance": False}, False),
    ({"noloadbalance": "true"}, True), ({"nofailover": True}, False), ("junk", False),
])
def test_noloadbalance_tag(tags: object, flag: bool) -> None:
    m: dict[str, object] = {"name": "r", "role": "replica", "state": "running", "host": "h"}
    if tags is not None:
        m["tags"] = tags
    assert parse_cluster(json.dumps({"members": [m]}))[0].noloadbalance is flag


def test_member_without_host_is_skipped() -> None:
    doc = {"members": [{"name": "a", "role": "replica", "state": "stopped"},
                       {"name": "b", "role": "leader", "state": "running", "host": "10.0.0.2"}]}
    assert [m.name for m in parse_cluster(json.dumps(doc))] == ["b"]


@pytest.mark.parametrize("body, why", [
    (b"<html>", "not JSON"),
    (b"[]", "no `members` list"),
    (b'{"members": {}}', "no `members` list"),
    (b'{"members": [1]}', "members[0] is not an object"),
    (b"\xff\xfe", "not JSON"),
])
def test_parse_errors(body: bytes, why: str) -> None:
    with pytest.raises(PatroniError) as ei:
        parse_cluster(body)
    assert why in str(ei.value)


@pytest.mark.parametrize("roles, patroni_role, eligible", [
    (("leader",), "leader", True),
    (("leader",), "sync_standby", False),
    (("leader",), "replica", False),
    (("sync",), "sync_standby", True),
    (("sync",), "replica", False),
    (("async",), "replica", True),
    (("async",), "sync_standby", False),
    (("sync", "async"), "sync_standby", True),
    (("sync", "async"), "replica", True),
    (("sync", "async"), "leader", False),
    (("any",), "leader", True),
    (("any",), "sync_standby", True),
    (("any",), "replica", True),
    (("any",), "standby_leader", False),
    (("any",), "quorum_standby", False),
])
def test_role_eligibility(roles: tuple[str, ...], patroni_role: str, eligible: bool) -> None:
    assert is_eligible(member(role=patroni_role), port(*roles)) is eligible


@pytest.mark.parametrize("state, eligible", [
    ("running", True), ("streaming", True), ("starting", False), ("stopped", False), ("crashed", False),
    ("in archive recovery", False), ("", False),
])
def test_state_eligibility(state: str, eligible: bool) -> None:
    assert is_eligible(member(state=state), port("any")) is eligible


def test_noloadbalance_is_never_eligible() -> None:
    assert not is_eligible(member(role="leader", noloadbalance=True), port("leader"))
    assert not is_eligible(member(noloadbalance=True), port("any"))


@pytest.mark.parametrize("patroni_role, lag, limit, eligible", [
    ("replica", 100, 100, True),
    ("replica", 101, 100, False),
    ("sync_standby", 101, 100, False),
    ("replica", None, 100, True),  # unknown lag passes, as in PgDoorman
    ("replica", 10**12, None, True),  # no limit configured
    ("leader", 10**12, 100, True),  # the leader has no lag
])
def test_lag_limit(patroni_role: str, lag: int | None, limit: int | None, eligible: bool) -> None:
    assert is_eligible(member(role=patroni_role, lag=lag), port("any", lag=limit)) is eligible


def test_eligible_members_keep_patroni_order_and_one_per_host() -> None:
    ms = [member("a", host="10.0.0.1"), member("b", role="leader", host="10.0.0.2"),
          member("c", host="10.0.0.3"), member("d", host="10.0.0.1"), member("e", state="stopped", host="10.0.0.4")]
    assert [m.name for m in eligible_members(ms, port("async"))] == ["a", "c"]
    assert [m.name for m in eligible_members(ms, port("any"))] == ["a", "b", "c"]


def test_resolve() -> None:
    assert resolve("10.1.2.3") == "10.1.2.3"
    assert resolve("::1") == "::1"
    assert resolve("localhost") in ("127.0.0.1", "::1")
    assert resolve("no-such-host.invalid") is None


def test_blacklist_orders_and_expires() -> None:
    bl = Blacklist(10)
    urls = ["a", "b", "c"]
    assert bl.order(urls, 0) == ["a", "b", "c"]
    bl.add("a", 0)
    assert bl.order(urls, 1) == ["b", "c", "a"]
    bl.add("b", 5)
    assert bl.order(urls, 6) == ["c", "a", "b"]
    assert bl.order(urls, 10.5) == ["a", "c", "b"]  # a's 10 seconds are over, b's are not
    assert not bl.contains("a", 10.5) and bl.contains("b", 10.5)
    bl.remove("b")
    assert bl.order(urls, 11) == ["a", "b", "c"]


class FakeFetch:
    def __init__(self, ok: set[str]) -> None:
        self.ok = ok
        self.calls: list[str] = []

    def __call__(self, url: str) -> list[Member]:
        self.calls.append(url)
        if url not in self.ok:
            raise PatroniError("connection refused")
        return [member("leader", role="leader", host="10.0.0.9")]


def test_client_tries_hosts_in_order_and_blacklists_failures() -> None:
    now = [100.0]
    fetch = FakeFetch({"http://b"})
    client = ClusterClient(["http://a", "http://b", "http://c"], 5, fetch=fetch, clock=lambda: now[0])
    members, source = client.fetch_members()
    assert source == "http://b" and [m.name for m in members] == ["leader"]
    assert fetch.calls == ["http://a", "http://b"]
    # a is blacklisted: b (fresh) is asked first and answers.
    fetch.calls.clear()
    now[0] += 1
    client.fetch_members()
    assert fetch.calls == ["http://b"]
    # b goes down: c (fresh), then the blacklisted a, all fail.
    fetch.ok = set()
    fetch.calls.clear()
    with pytest.raises(PatroniError, match="all hosts unavailable"):
        client.fetch_members()
    assert fetch.calls == ["http://b", "http://c", "http://a"]
    # Everything blacklisted: all are tried, in configuration order.
    fetch.calls.clear()
    now[0] += 1
    with pytest.raises(PatroniError):
        client.fetch_members()
    assert fetch.calls == ["http://a", "http://b", "http://c"]
    # After the blacklist time, a is fresh again and first.
    fetch.ok = {"http://a"}
    fetch.calls.clear()
    now[0] += 11
    client.fetch_members()
    assert fetch.calls == ["http://a"]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        srv = self.server
        srv.paths.append(self.path)  # type: ignore[attr-defined]
        status, body, delay = srv.reply  # type: ignore[attr-defined]
        time.sleep(delay)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[http.server.ThreadingHTTPServer]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.paths = []  # type: ignore[attr-defined]
    srv.reply = (200, json.dumps(PATRONI_DOC).encode(), 0.0)  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_fetch_url_over_http(http_server: http.server.ThreadingHTTPServer) -> None:
    url = f"http://127.0.0.1:{http_server.server_address[1]}/"
    client = ClusterClient([url], 2)
    members, source = client.fetch_members()
    assert source == url and [m.name for m in members] == ["patroni1", "patroni2"]
    assert http_server.paths == ["/cluster"]  # type: ignore[attr-defined]

    http_server.reply = (503, b"{}", 0.0)  # type: ignore[attr-defined]
    with pytest.raises(PatroniError, match="HTTP 503"):
        client.fetch_url(url)
    http_server.reply = (200, b"not json", 0.0)  # type: ignore[attr-defined]
    with pytest.raises(PatroniError, match="not JSON"):
        client.fetch_url(url)


def test_fetch_url_times_out(http_server: http.server.ThreadingHTTPServer) -> None:
    http_server.reply = (200, b"{}", 3.0)  # type: ignore[attr-defined]
    client = ClusterClient([f"http://127.0.0.1:{http_server.server_address[1]}"], 0.3)
    t0 = time.monotonic()
    with pytest.raises(PatroniError, match="timed out"):
        client.fetch_members()
    assert time.monotonic() - t0 < 2.5


def test_fetch_url_refused() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with pytest.raises(PatroniError, match="refused"):
        ClusterClient([], 1).fetch_url(f"http://127.0.0.1:{dead}")


def test_fetch_ignores_http_proxy_environment(http_server: http.server.ThreadingHTTPServer,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    members, _ = ClusterClient([f"http://127.0.0.1:{http_server.server_address[1]}"], 2).fetch_members()
    assert len(members) == 2


class Collector:
    def __init__(self) -> None:
        self.results: list[PollResult] = []
        self.cond = threading.Condition()

    def deliver(self, result: PollResult, waiters: list[Callable[[], None]]) -> None:
        with self.cond:
            self.results.append(result)
            for w in waiters:
                w()
            self.cond.notify_all()

    def wait(self, pred: Callable[[], bool], timeout: float = 5) -> None:
        with self.cond:
            assert self.cond.wait_for(pred, timeout), self.results


def test_poller_polls_at_once_then_on_request() -> None:
    fetch = FakeFetch({"http://a"})
    col = Collector()
    poller = Poller("c", ClusterClient(["http://a"], 1, fetch=fetch), 3600, col.deliver)
    poller.start()
    try:
        col.wait(lambda: len(col.results) == 1)
        first = col.results[0]
        assert first.members is not None and first.source == "http://a" and first.error is None
        assert first.members[0].ip == "10.0.0.9"  # resolved by the poller
        done = threading.Event()
        poller.request_poll(done.set)
        assert done.wait(5)
        assert len(col.results) == 2
        fetch.ok = set()
        done.clear()
        poller.request_poll(done.set)
        assert done.wait(5)
        assert col.results[-1].members is None and "all hosts unavailable" in (col.results[-1].error or "")
    finally:
        poller.stop()
    poller.thread.join(5)
    assert not poller.thread.is_alive()


def test_poller_stop_releases_waiters() -> None:
    gate = threading.Event()

    def slow(url: str) -> list[Member]:
        gate.wait(5)
        return []

    col = Collector()
    poller = Poller("c", ClusterClient(["http://a"], 1, fetch=slow), 3600, col.deliver)
    poller.start()
    done = threading.Event()
    poller.request_poll(done.set)
    poller.stop()
    assert done.wait(5)  # not left hanging behind a poll that will never come
    gate.set()
    poller.thread.join(5)
    late = threading.Event()
    poller.request_poll(late.set)  # after stop: answered at once
    assert late.wait(1)
