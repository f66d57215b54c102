"""patroni_proxy's running core, in process: the proxy loop in a thread, a fake Patroni REST server and
small TCP backends on 127.0.0.1 / 127.0.0.2 that say who they are and echo. Routing by role, least
connections, failover and lag disconnects, Patroni outages, connect failures, back-pressure, half-close,
the HTTP API and reload."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgdoorman.net.conn import HIGH_WATER
from pgdoorman.net.loop import RECV_BUFFER_SIZE
from pgdoorman.patroni_proxy.config import load
from pgdoorman.patroni_proxy.proxy import Proxy
from tests.support.fake_patroni import FakePatroni, pmember
from tests.support.pooler import free_port, wait_for
from tests.support.pooler import port_free_on_both as _port_free_on_both

HOST_A, HOST_B = "127.0.0.1", "127.0.0.2"


def port_free_on_both() -> int:
    return _port_free_on_both(HOST_A, HOST_B)



# ------------------------------------------------------------------------------------------- backends
class _Ident(socketserver.BaseRequestHandler):
    """Says the server's name, then echoes; `count` mode reads to EOF and answers with the byte count;
    `flood` mode sends `flood` bytes of a known pattern."""

    def handle(self) -> None:
        srv: IdentServer = self.server  # type: ignore[assignment]
        with srv.lock:
            srv.open += 1
            srv.total += 1
        try:
            if srv.mode == "count":
                n = 0
                while True:
                    d = self.request.recv(65536)
                    if not d:
                        break
                    n += len(d)
                self.request.sendall(f"{srv.name} got {n}\n".encode())
                return
            if srv.mode == "flood":
                chunk = bytes(range(256)) * 256
                left = srv.flood
                while left > 0:
                    self.request.sendall(chunk[: min(left, len(chunk))])
                    left -= len(chunk)
                return
            self.request.sendall(srv.name.encode() + b"\n")
            while True:
                d = self.request.recv(65536)
                if not d:
                    break
                self.request.sendall(d)
        except OSError:
            pass
        finally:
            with srv.lock:
                srv.open -= 1


class IdentServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, name: str, mode: str = "echo") -> None:
        super().__init__((host, port), _Ident)
        self.name = name
        self.mode = mode
        self.flood = 0
        self.lock = threading.Lock()
        self.open = 0
        self.total = 0
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


# --------------------------------------------------------------------------------------------- proxy
class RunningProxy:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.proxy = Proxy(load(str(path)))
        self.proxy.start()
        self.thread = self.proxy.loop.start_thread()
        host, port = self.proxy.config.listen_address
        self.api = f"http://{host}:{port}"

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the proxy loop and return its result."""
        box: list[Any] = []
        done = threading.Event()

        def run() -> None:
            try:
                box.append(fn())
            finally:
                done.set()

        self.proxy.loop.call_soon_threadsafe(run)
        assert done.wait(5), "proxy loop did not answer"
        return box[0] if box else None

    def get(self, path: str) -> tuple[int, str]:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(self.api + path, timeout=10) as r:
            return r.status, r.read().decode()

    def update(self) -> None:
        status, body = self.get("/update_clusters")
        assert status == 200 and body.startswith("Updated"), body

    def status(self) -> dict[str, Any]:
        return json.loads(self.get("/status")[1])  # type: ignore[no-any-return]

    def reload(self, config: dict[str, Any]) -> None:
        self.path.write_text(yaml.safe_dump(config))
        self.call(self.proxy.reload)

    def stop(self) -> None:
        self.proxy.loop.call_soon_threadsafe(self.proxy.shutdown)
        self.thread.join(5)
        self.proxy.loop.close()


class Env:
    """Backends A (127.0.0.1) and B (127.0.0.2) on one port, a fake Patroni, and a proxy factory."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.host_port = port_free_on_both()
        self.a = IdentServer(HOST_A, self.host_port, "A")
        self.b = IdentServer(HOST_B, self.host_port, "B")
        self.patroni = FakePatroni([pmember("node_a", "leader", HOST_A), pmember("node_b", "replica", HOST_B)])
        self.proxies: list[RunningProxy] = []
        self.listen: dict[str, int] = {}

    def config(self, ports: dict[str, dict[str, Any]], **top: Any) -> dict[str, Any]:
        out_ports = {}
        for name, p in ports.items():
            if name not in self.listen:
                self.listen[name] = free_port()
            out_ports[name] = {"listen": f"127.0.0.1:{self.listen[name]}", "host_port": self.host_port, **p}
        cfg: dict[str, Any] = {"cluster_update_interval": 60, "listen_address": f"127.0.0.1:{free_port()}",
                               "clusters": {"main": {"hosts": [self.patroni.url], "ports": out_ports}}}
        cfg.update(top)
        return cfg

    def start(self, config: dict[str, Any], wait: bool = True) -> RunningProxy:
        path = self.tmp_path / "patroni_proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        rp = RunningProxy(path)
        self.proxies.append(rp)
        if wait:
            wait_for(lambda: rp.status()["clusters"]["main"]["polls"] >= 1, what="the first poll")
        return rp

    def connect(self, port: str) -> Client:
        return Client(self.listen[port])

    def close(self) -> None:
        for rp in self.proxies:
            rp.stop()
        self.a.close()
        self.b.close()
        self.patroni.close()


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.f = self.sock.makefile("rb")

    def who(self) -> str:
        return self.f.readline().decode().strip()

    def alive(self) -> bool:
        try:
            self.sock.sendall(b"ping\n")
            return self.f.readline() == b"ping\n"
        except OSError:
            return False

    def closed(self, timeout: float = 3.0) -> bool:
        """True if the proxy closed this connection (EOF or reset) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            return self.f.read(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.f.close()
        self.sock.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.close()


ROLE_PORTS = {"master": {"roles": ["leader"]}, "replicas": {"roles": ["sync", "async"]}, "all": {"roles": ["any"]}}


def backends(rp: RunningProxy, port: str) -> list[tuple[str, int]]:
    ports = rp.status()["clusters"]["main"]["ports"]
    return [(b["member"], b["connections"]) for b in ports[port]["backends"]]


# ----------------------------------------------------------------------------------------------- tests
def test_routes_by_role(env: Env) -> None:
    rp = env.start(env.config(ROLE_PORTS))
    m, r = env.connect("master"), env.connect("replicas")
    assert (m.who(), r.who()) == ("A", "B")
    assert m.alive() and r.alive()
    assert backends(rp, "master") == [("node_a", 1)]
    assert backends(rp, "replicas") == [("node_b", 1)]
    assert backends(rp, "all") == [("node_a", 0), ("node_b", 0)]


def test_least_connections(env: Env) -> None:
    env.patroni.members = [pmember("node_a", "replica", HOST_A), pmember("node_b", "sync_standby", HOST_B)]
    rp = env.start(env.config(ROLE_PORTS))
    clients = [env.connect("replicas") for _ in range(4)]
    assert [c.who() for c in clients] == ["A", "B", "A", "B"]  # ties go to the first in Patroni's order
    for c in clients[0], clients[2]:
        c.close()
    wait_for(lambda: backends(rp, "replicas") == [("node_a", 0), ("node_b", 2)], what="A's clients to go")
    assert [env.connect("replicas").who() for _ in range(2)] == ["A", "A"]


def test_failover_moves_new_clients_and_disconnects_only_the_changed_members(env: Env) -> None:
    rp = env.start(env.config(ROLE_PORTS))
    on_master, on_replica = env.connect("master"), env.connect("replicas")
    any_a, any_b = env.connect("all"), env.connect("all")
    assert [c.who() for c in (on_master, on_replica, any_a, any_b)] == ["A", "B", "A", "B"]

    env.patroni.members = [pmember("node_a", "replica", HOST_A), pmember("node_b", "leader", HOST_B)]
    rp.update()
    assert on_master.closed(), "a client of the demoted leader must be disconnected"
    assert on_replica.closed(), "a client of the promoted replica must leave the replicas port"
    assert any_a.alive() and any_b.alive(), "clients of members still eligible stay connected"
    assert env.connect("master").who() == "B"
    assert env.connect("replicas").who() == "A"
    assert backends(rp, "all") == [("node_a", 1), ("node_b", 1)]  # counts survive the update


def test_lag_over_the_limit_disconnects_that_replica(env: Env) -> None:
    env.patroni.members = [pmember("node_a", "replica", HOST_A), pmember("node_b", "replica", HOST_B)]
    rp = env.start(env.config({"replicas": {"roles": ["async"], "max_lag_in_bytes": 1000}}))
    c1 = env.connect("replicas")
    assert c1.who() == "A"
    env.patroni.members[0]["lag"] = 999999
    rp.update()
    assert c1.closed()
    assert backends(rp, "replicas") == [("node_b", 0)]
    c2 = env.connect("replicas")
    assert c2.who() == "B"
    env.patroni.members[0]["lag"] = "unknown"  # unknown lag passes, as in PgDoorman
    rp.update()
    assert env.connect("replicas").who() == "A"
    assert c2.alive()


@pytest.mark.parametrize("state, tags", [("starting", None), ("stopped", None), ("running", {"noloadbalance": True})])
def test_member_unusable_state_or_tag(env: Env, state: str, tags: dict[str, Any] | None) -> None:
    rp = env.start(env.config(ROLE_PORTS))
    c = env.connect("replicas")
    assert c.who() == "B"
    env.patroni.members[1] = pmember("node_b", "replica", HOST_B, state=state, tags=tags)
    rp.update()
    assert c.closed()
    assert env.connect("replicas").closed(1), "no backend left: accepted and closed"
    env.patroni.members[1] = pmember("node_b", "replica", HOST_B, state="streaming")
    rp.update()
    assert env.connect("replicas").who() == "B"


def test_patroni_unreachable_keeps_the_last_topology(env: Env) -> None:
    rp = env.start(env.config(ROLE_PORTS, cluster_update_interval=0.1))
    m = env.connect("master")
    assert m.who() == "A"
    env.patroni.status = 503
    seen = rp.status()["clusters"]["main"]["failures"]
    wait_for(lambda: rp.status()["clusters"]["main"]["failures"] >= seen + 3, what="three failed polls")
    st = rp.status()["clusters"]["main"]
    assert "HTTP 503" in st["last_error"]
    assert [x["name"] for x in st["members"]] == ["node_a", "node_b"]
    assert m.alive()
    assert env.connect("master").who() == "A"
    assert env.connect("replicas").who() == "B"
    # Down entirely (connection refused), then back with a new topology.
    env.patroni.down()
    failures = rp.status()["clusters"]["main"]["failures"]
    wait_for(lambda: rp.status()["clusters"]["main"]["failures"] >= failures + 2, what="refused polls")
    assert "refused" in rp.status()["clusters"]["main"]["last_error"]
    assert m.alive()
    env.patroni.members = [pmember("node_a", "replica", HOST_A), pmember("node_b", "leader", HOST_B)]
    env.patroni.status = 200
    env.patroni.up()
    wait_for(lambda: rp.status()["clusters"]["main"]["last_error"] is None, what="Patroni to answer again")
    assert m.closed()
    assert env.connect("master").who() == "B"


def test_second_patroni_host_answers_when_the_first_is_down(env: Env) -> None:
    cfg = env.config(ROLE_PORTS)
    dead = f"http://127.0.0.1:{free_port()}"
    cfg["clusters"]["main"]["hosts"] = [dead, env.patroni.url]
    rp = env.start(cfg)
    st = rp.status()["clusters"]["main"]
    assert st["source"] == env.patroni.url and st["last_error"] is None
    assert env.connect("master").who() == "A"


def test_before_the_first_poll_and_without_eligible_members_clients_are_closed(env: Env) -> None:
    env.patroni.status = 500
    rp = env.start(env.config({"sync": {"roles": ["sync"]}}), wait=False)
    c = env.connect("sync")
    assert c.closed(2)
    env.patroni.status = 200
    rp.update()
    assert env.connect("sync").closed(2), "no sync standby in the cluster"
    assert rp.status()["clusters"]["main"]["ports"]["sync"]["refused_no_backend"] == 2


def test_backend_refusing_connections_closes_the_client(env: Env) -> None:
    env.patroni.members = [pmember("node_c", "leader", "127.0.0.3")]  # nothing listens there
    rp = env.start(env.config(ROLE_PORTS))
    c = env.connect("master")
    assert c.closed(2)
    wait_for(lambda: backends(rp, "master") == [("node_c", 0)], what="the count to drop")


def test_connect_timeout(env: Env) -> None:
    # A listener whose backlog is full drops further SYNs: connecting to it hangs.
    hole = socket.socket()
    hole.bind(("127.0.0.3", 0))
    hole.listen(0)
    filler = socket.create_connection(hole.getsockname())
    try:
        env.patroni.members = [pmember("node_c", "leader", "127.0.0.3")]
        cfg = env.config({"master": {"roles": ["leader"]}}, connect_timeout=0.3)
        cfg["clusters"]["main"]["ports"]["master"]["host_port"] = hole.getsockname()[1]
        rp = env.start(cfg)
        c = env.connect("master")
        t0 = time.monotonic()
        assert c.closed(3)
        assert 0.25 <= time.monotonic() - t0 < 2
        wait_for(lambda: backends(rp, "master") == [("node_c", 0)], what="the count to drop")
    finally:
        filler.close()
        hole.close()


def test_back_pressure_bounds_what_the_proxy_queues(env: Env) -> None:
    env.a.mode = "flood"
    env.a.flood = total = 64 << 20
    rp = env.start(env.config({"master": {"roles": ["leader"]}}))
    c = env.connect("master")
    time.sleep(1.0)  # the client reads nothing: the proxy must stop reading the backend

    def relay_state() -> tuple[bool, int]:
        port = rp.proxy.clusters["main"].ports["master"]
        (relay,) = [r for b in port.backends.values() for r in b.relays]
        assert relay.server is not None and relay.client is not None
        return relay.server.read_paused, relay.client.backlog

    paused, queued = rp.call(relay_state)
    assert paused, "the backend side must be paused while the client does not read"
    assert 0 < queued <= HIGH_WATER + RECV_BUFFER_SIZE
    chunk = bytes(range(256)) * 256
    got = 0
    c.sock.settimeout(10)
    buf = bytearray()
    while True:
        d = c.sock.recv(1 << 20)
        if not d:
            break
        buf += d
        while len(buf) >= len(chunk):
            assert buf[: len(chunk)] == chunk, f"corrupted stream at {got}"
            del buf[: len(chunk)]
            got += len(chunk)
    assert got + len(buf) == total


def test_half_close_is_passed_through(env: Env) -> None:
    env.a.mode = "count"
    env.start(env.config({"master": {"roles": ["leader"]}}))
    c = env.connect("master")
    payload = b"x" * 3_000_000
    c.sock.sendall(payload)
    c.sock.shutdown(socket.SHUT_WR)  # the backend answers only after it sees EOF
    assert c.f.readline() == f"A got {len(payload)}\n".encode()
    assert c.closed(2)


def test_http_api(env: Env) -> None:
    rp = env.start(env.config(ROLE_PORTS))
    assert rp.get("/") == (200, "OK")
    assert rp.get("/anything") == (200, "OK")  # every other path is the health check, as in PgDoorman
    before = env.patroni.requests
    assert rp.get("/update_clusters") == (200, "Updated 1 cluster(s)\n")
    assert env.patroni.requests == before + 1
    st = rp.status()
    assert st["clusters"]["main"]["ports"]["master"]["listen"] == f"127.0.0.1:{env.listen['master']}"
    host, port = rp.proxy.config.listen_address
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"nonsense\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400 ")


def test_reload(env: Env) -> None:
    cfg = env.config({"master": {"roles": ["leader"]}, "all": {"roles": ["any"]}})
    rp = env.start(cfg)
    on_master = env.connect("master")
    any_a, any_b = env.connect("all"), env.connect("all")
    assert [c.who() for c in (on_master, any_a, any_b)] == ["A", "A", "B"]

    # Add a port; narrow the roles of `all` in place: only its client on the leader goes.
    cfg2 = env.config({"master": {"roles": ["leader"]}, "all": {"roles": ["async"]}, "replicas": {"roles": ["async"]}})
    cfg2["listen_address"] = cfg["listen_address"]
    rp.reload(cfg2)
    assert env.connect("replicas").who() == "B"
    assert any_a.closed(), "the leader is no longer eligible for `all`"
    assert any_b.alive() and on_master.alive()

    # An invalid file is refused and nothing changes.
    rp.path.write_text("clusters: {main: {hosts: []}}\n")
    rp.call(rp.proxy.reload)
    assert on_master.alive() and env.connect("master").who() == "A"

    # Remove a port: its clients are disconnected and it stops listening.
    del cfg2["clusters"]["main"]["ports"]["master"]
    rp.reload(cfg2)
    assert on_master.closed()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", env.listen["master"]), timeout=2)
    assert any_b.alive()
    assert rp.status()["reloads"] == 2


def test_bind_failure_at_start_leaves_nothing_open(env: Env, tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        cfg = env.config(ROLE_PORTS)
        cfg["clusters"]["main"]["ports"]["replicas"]["listen"] = f"127.0.0.1:{taken.getsockname()[1]}"
        path = tmp_path / "pp.yaml"
        path.write_text(yaml.safe_dump(cfg))
        proxy = Proxy(load(str(path)))
        with pytest.raises(OSError):
            proxy.start()
        proxy.loop.close()
        api_host, api_port = proxy.config.listen_address
        with socket.socket() as s:
            s.bind((api_host, api_port))  # released
        with socket.socket() as s:
            s.bind(("127.0.0.1", env.listen["master"]))
    finally:
        taken.close()


def test_reload_can_swap_listen_addresses_and_move_a_port_to_another_cluster(env: Env) -> None:
    cfg = env.config({"master": {"roles": ["leader"]}, "replicas": {"roles": ["async"]}})
    rp = env.start(cfg)
    l1, l2 = env.listen["master"], env.listen["replicas"]
    assert (Client(l1).who(), Client(l2).who()) == ("A", "B")
    ports = cfg["clusters"]["main"]["ports"]
    ports["master"]["listen"], ports["replicas"]["listen"] = f"127.0.0.1:{l2}", f"127.0.0.1:{l1}"
    rp.reload(cfg)
    assert (Client(l1).who(), Client(l2).who()) == ("B", "A")
    # `replicas` leaves cluster main for a new cluster (same Patroni) on the same address.
    moved = ports.pop("replicas")
    cfg["clusters"]["second"] = {"hosts": [env.patroni.url], "ports": {"ro": moved}}
    rp.reload(cfg)
    wait_for(lambda: rp.status()["clusters"]["second"]["polls"] >= 1, what="the new cluster's first poll")
    assert Client(l1).who() == "B"
    assert sorted(rp.status()["clusters"]) == ["main", "second"]
