"""patroni_proxy end to end: the installed `patroni_proxy` command in front of two real PostgreSQL
clusters (node_a on 127.0.0.1, node_b on 127.0.0.2, same port, since a backend is member host +
host_port), steered by a fake Patroni REST server whose /cluster answer the tests change. psycopg
clients ask `SHOW cluster_name` to see where they landed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.support.cluster import PgCluster
from tests.support.fake_patroni import FakePatroni, pmember
from tests.support.pooler import free_port, wait_for
from tests.support.pooler import port_free_on_both as _port_free_on_both

HOST_A, HOST_B = "127.0.0.1", "127.0.0.2"


def port_free_on_both() -> int:
    return _port_free_on_both(HOST_A, HOST_B)



@pytest.fixture(scope="module")
def nodes() -> Iterator[dict[str, PgCluster]]:
    """Two started clusters: cluster_name node_a on 127.0.0.1 and node_b on 127.0.0.2, one port."""
    # Not pytest's tmp_path: the postgres OS user cannot enter it.
    basedir = tempfile.mkdtemp(prefix="pgdoorman-patroni-proxy-")
    os.chmod(basedir, 0o755)
    port = port_free_on_both()
    started: dict[str, PgCluster] = {}
    try:
        for name, host in (("node_a", HOST_A), ("node_b", HOST_B)):
            pg = PgCluster(os.path.join(basedir, name), port, host=host, settings={"cluster_name": f"'{name}'"})
            pg.init()
            pg.start()
            started[name] = pg
        yield started
    finally:
        for pg in started.values():
            pg.stop("immediate")
        shutil.rmtree(basedir, ignore_errors=True)


def _command() -> list[str]:
    # The console script pyproject.toml declares, as users run it.
    script = Path(sys.executable).parent / "patroni_proxy"
    assert script.exists(), f"{script} missing: is the package installed (pip install -e .)?"
    return [str(script)]


class ProxyProcess:
    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.config = config
        self.path = workdir / "patroni_proxy.yaml"
        self.logpath = workdir / "patroni_proxy.log"
        self.write(config)
        host, port = config["listen_address"].rsplit(":", 1)
        self.api = f"http://{host}:{port}"
        self.log = open(self.logpath, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen([*_command(), str(self.path), "-l", "debug"], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: self._api_up(), what="the HTTP API")
        except AssertionError:
            self.stop()
            raise AssertionError(f"patroni_proxy did not start:\n{self.log_text()}") from None

    def write(self, config: dict[str, Any]) -> None:
        self.config = config
        self.path.write_text(yaml.safe_dump(config))

    def _api_up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"patroni_proxy exited {self.proc.returncode}:\n{self.log_text()}")
        try:
            return self.get("/")[1] == "OK"
        except OSError:
            return False

    def get(self, path: str) -> tuple[int, str]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(self.api + path, timeout=10) as r:
            return r.status, r.read().decode()

    def status(self) -> dict[str, Any]:
        return json.loads(self.get("/status")[1])["clusters"]["main"]  # type: ignore[no-any-return]

    def update(self) -> None:
        assert self.get("/update_clusters") == (200, "Updated 1 cluster(s)\n")

    def log_text(self) -> str:
        # The child writes to the file itself: nothing of ours is buffered.
        return self.logpath.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode


class Env:
    def __init__(self, nodes: dict[str, PgCluster], workdir: Path) -> None:
        self.nodes = nodes
        self.workdir = workdir
        self.pg_port = nodes["node_a"].port
        self.patroni = FakePatroni(self.topology(leader="node_a"), scope="demo")
        self.listen = {name: free_port() for name in ("master", "replicas", "all", "extra")}
        self.proxy: ProxyProcess | None = None

    def topology(self, leader: str, replica_role: str = "replica") -> list[dict[str, Any]]:
        hosts = {"node_a": HOST_A, "node_b": HOST_B}
        return [pmember(name, "leader" if name == leader else replica_role, host, self.pg_port)
                for name, host in hosts.items()]

    def config(self, **ports: dict[str, Any]) -> dict[str, Any]:
        if not ports:
            ports = {"master": {"roles": ["leader"]}, "replicas": {"roles": ["sync", "async"]},
                     "all": {"roles": ["any"]}}
        return {
            "cluster_update_interval": 0.5,
            "listen_address": f"127.0.0.1:{free_port()}" if self.proxy is None else self.proxy.config["listen_address"],
            "clusters": {"main": {
                "hosts": [self.patroni.url],
                "ports": {name: {"listen": f"127.0.0.1:{self.listen[name]}", "host_port": self.pg_port, **p}
                          for name, p in ports.items()},
            }},
        }

    def start(self, config: dict[str, Any] | None = None) -> ProxyProcess:
        self.proxy = ProxyProcess(config or self.config(), self.workdir)
        proxy = self.proxy
        wait_for(lambda: proxy.status()["last_update"] is not None, what="the first topology")
        return proxy

    def connect(self, port: str) -> psycopg.Connection[Any]:
        return psycopg.connect(host="127.0.0.1", port=self.listen[port], user="postgres", dbname="postgres",
                               connect_timeout=5, autocommit=True)


def where(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SHOW cluster_name").fetchone()
    assert row is not None
    return str(row[0])


def disconnected(conn: psycopg.Connection[Any]) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


@pytest.fixture
def env(nodes: dict[str, PgCluster], tmp_path: Path) -> Iterator[Env]:
    e = Env(nodes, tmp_path)
    yield e
    if e.proxy is not None:
        rc = e.proxy.stop()
        # Captured output: pytest shows it with a failing test's report.
        print(f"--- patroni_proxy log (exit {rc}) ---\n{e.proxy.log_text()}")
    e.patroni.down()


def test_leader_port_reaches_the_leader_and_replica_port_a_replica(env: Env) -> None:
    env.start()
    with env.connect("master") as m, env.connect("replicas") as r:
        assert where(m) == "node_a"
        assert where(r) == "node_b"
        # A real workload through the relay: a result far larger than the relay's buffers.
        rows = m.execute("SELECT repeat('x', 1000) FROM generate_series(1, 20000)").fetchall()
        assert len(rows) == 20000 and rows[-1][0] == "x" * 1000


def test_least_connections_with_two_replicas(env: Env) -> None:
    env.patroni.members = env.topology(leader="nobody", replica_role="sync_standby")
    proxy = env.start()
    conns = [env.connect("replicas") for _ in range(4)]
    try:
        assert sorted(where(c) for c in conns) == ["node_a", "node_a", "node_b", "node_b"]
        backends = proxy.status()["ports"]["replicas"]["backends"]
        assert [(b["member"], b["connections"]) for b in backends] == [("node_a", 2), ("node_b", 2)]
    finally:
        for c in conns:
            c.close()
    # No leader in the cluster: the master port accepts and closes at once.
    with pytest.raises(psycopg.OperationalError):
        env.connect("master")


def test_failover_moves_new_clients_and_disconnects_the_demoted_members_clients(env: Env) -> None:
    proxy = env.start()
    m, r, any_a, any_b = (env.connect(p) for p in ("master", "replicas", "all", "all"))
    try:
        assert [where(c) for c in (m, r, any_a, any_b)] == ["node_a", "node_b", "node_a", "node_b"]
        m.execute("CREATE TEMP TABLE t(x int)")  # session state that a failover loses

        env.patroni.members = env.topology(leader="node_b")
        proxy.update()
        assert disconnected(m), "the client of the demoted leader must be disconnected"
        assert disconnected(r), "the promoted member is no longer a replica"
        assert where(any_a) == "node_a" and where(any_b) == "node_b", "members still eligible keep clients"
        with env.connect("master") as m2, env.connect("replicas") as r2:
            assert where(m2) == "node_b"
            assert where(r2) == "node_a"
        assert "backend 127.0.0.1" in proxy.log_text() and "removed, disconnected 1 clients" in proxy.log_text()
    finally:
        for c in (m, r, any_a, any_b):
            c.close()


def test_failover_is_seen_by_the_periodic_poll_too(env: Env) -> None:
    env.start()
    with env.connect("master") as m:
        assert where(m) == "node_a"
        env.patroni.members = env.topology(leader="node_b")
        wait_for(lambda: disconnected(m), what="the poll to drop the demoted leader's client")
    with env.connect("master") as m2:
        assert where(m2) == "node_b"


def test_patroni_unreachable_keeps_the_last_known_topology(env: Env) -> None:
    # PgDoorman logs the failed fetch and leaves every port as it was; so does this proxy.
    proxy = env.start()
    m = env.connect("master")
    try:
        assert where(m) == "node_a"
        env.patroni.down()
        failures = proxy.status()["failures"]
        wait_for(lambda: proxy.status()["failures"] >= failures + 2, what="two failed polls")
        st = proxy.status()
        assert "all hosts unavailable" in st["last_error"]
        assert where(m) == "node_a", "an established session survives the outage"
        with env.connect("master") as m2, env.connect("replicas") as r2:
            assert (where(m2), where(r2)) == ("node_a", "node_b"), "new clients use the last topology"
        # Patroni comes back after a failover that happened meanwhile.
        env.patroni.members = env.topology(leader="node_b")
        env.patroni.up()
        wait_for(lambda: proxy.status()["last_error"] is None, what="Patroni to answer again")
        assert disconnected(m)
        with env.connect("master") as m3:
            assert where(m3) == "node_b"
        assert "keeping the last known topology" in proxy.log_text()
    finally:
        m.close()


def test_sighup_reload_adds_a_port_and_keeps_running_on_a_bad_file(env: Env) -> None:
    proxy = env.start(env.config(master={"roles": ["leader"]}))
    m = env.connect("master")
    try:
        new = env.config(master={"roles": ["leader"]}, extra={"roles": ["async"]})
        proxy.write(new)
        proxy.signal(signal.SIGHUP)
        wait_for(lambda: "extra" in proxy.status()["ports"], what="the reload")
        with env.connect("extra") as e:
            assert where(e) == "node_b"
        assert where(m) == "node_a", "a reload leaves unchanged ports' clients alone"

        proxy.path.write_text("clusters: [oops\n")
        proxy.signal(signal.SIGHUP)
        wait_for(lambda: "keeping the previous one" in proxy.log_text(), what="the refused reload")
        assert proxy.proc.poll() is None
        assert where(m) == "node_a"
        with env.connect("extra") as e:
            assert where(e) == "node_b"
    finally:
        m.close()
    assert proxy.stop() == 0
    assert "stopped" in proxy.log_text()


def test_sigterm_disconnects_clients_and_exits_0(env: Env) -> None:
    proxy = env.start()
    m = env.connect("master")
    assert where(m) == "node_a"
    proxy.signal(signal.SIGTERM)
    assert proxy.proc.wait(10) == 0
    assert disconnected(m)
    m.close()
    assert "port 'main:master': stopped, terminated 1 active connections" in proxy.log_text()


def test_bad_configs(env: Env, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    cfg = env.config()
    cfg["clusters"]["main"]["ports"]["master"]["roles"] = ["primary"]
    cfg["clusters"]["main"]["hosts"] = ["patroni1:8008"]
    bad.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([*_command(), "-t", str(bad)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"{bad}: clusters.main.hosts[0]: 'patroni1:8008': only http:// and https:// URLs are allowed" in r.stderr
    assert f"{bad}: clusters.main.ports.master.roles[0]: invalid role 'primary'" in r.stderr

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(env.config()))
    r = subprocess.run([*_command(), "-t", str(good)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "test is successful" in r.stdout, r.stderr

    # Valid, but a port is taken: the proxy says so and exits 1.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", env.listen["replicas"]))
        taken.listen()
        r = subprocess.run([*_command(), str(good)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "cannot start" in r.stderr and "Address already in use" in r.stderr
