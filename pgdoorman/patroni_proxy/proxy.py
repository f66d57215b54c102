"""The running proxy: listening ports, their backends (eligible members, least connections), clusters
fed by poller threads, the small HTTP API, reload and shutdown. Everything here runs on the one proxy
loop; poller threads only hand results over through `Loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from pgdoorman.net.conn import Conn
from pgdoorman.net.loop import EVENT_READ, Loop
from pgdoorman.net.sockopts import tcp_listener
from pgdoorman.patroni_proxy.config import (
    Addr,
    ClusterConfig,
    ConfigError,
    PortConfig,
    ProxyConfig,
    format_addr,
)
from pgdoorman.patroni_proxy.config import load as load_config
from pgdoorman.patroni_proxy.patroni import (
    ClusterClient,
    Member,
    Poller,
    PollResult,
    eligible_members,
)
from pgdoorman.patroni_proxy.relay import Relay

log = logging.getLogger("pgdoorman.patroni_proxy")

ACCEPTS_PER_EVENT = 64  # bounded so one busy port cannot starve the others
ACCEPT_PAUSE = 0.5  # seconds a listener rests after EMFILE/ENFILE: retrying at once would spin the loop
NO_BACKEND_LOG_EVERY = 5.0  # seconds between "no backends" warnings per port
API_REQUEST_LIMIT = 16 * 1024
API_IDLE_TIMEOUT = 10.0


def bind(addr: Addr) -> socket.socket:
    # No SO_REUSEPORT: a second proxy (or a stale one) on the same address must fail to bind, not share it.
    return tcp_listener(addr[0], addr[1], socket.SOMAXCONN, reuse_port=False)


class Backend:
    """A member as one port sees it: host + the port's host_port, with the port's client count on it.
    Kept across topology updates while the member stays eligible, so its count survives."""

    __slots__ = ("host", "port", "member", "ip", "connections", "relays")

    def __init__(self, member: Member, port: int) -> None:
        self.host = member.host
        self.port = port
        self.member = member
        self.ip = member.ip
        self.connections = 0
        self.relays: set[Relay] = set()

    @property
    def key(self) -> tuple[str, int]:
        return self.host, self.port

    def label(self) -> str:
        return f"{format_addr((self.host, self.port))} ({self.member.name})"


class Port:
    """One `ports.<name>` entry: a listener and the backends its roles allow."""

    def __init__(self, proxy: Proxy, cluster: str, cfg: PortConfig) -> None:
        self.proxy = proxy
        self.loop = proxy.loop
        self.cluster = cluster
        self.cfg = cfg
        self.name = f"{cluster}:{cfg.name}"
        self.backends: dict[tuple[str, int], Backend] = {}
        self.listener: socket.socket | None = None
        self.registered = False
        self.stopped = False
        self.accepted = 0
        self.refused = 0  # accepted and closed: no eligible backend
        self._refused_logged = 0
        self._last_refused_log = 0.0

    def __repr__(self) -> str:
        return f"<Port {self.name} {format_addr(self.cfg.listen)}>"

    # ------------------------------------------------------------------ listener
    def bind(self) -> None:
        self.listener = bind(self.cfg.listen)
        self._watch()
        log.info("port '%s': listening on %s (roles %s, host_port %d%s)", self.name,
                 format_addr(self.cfg.listen), ",".join(sorted(self.cfg.roles)), self.cfg.host_port,
                 "" if self.cfg.max_lag_in_bytes is None else f", max_lag_in_bytes {self.cfg.max_lag_in_bytes}")

    def _watch(self) -> None:
        if self.listener is not None and not self.registered and not self.stopped:
            self.loop.sel.register(self.listener, EVENT_READ, self)
            self.registered = True

    def _rest(self) -> None:
        if self.registered and self.listener is not None:
            self.loop.sel.unregister(self.listener)
            self.registered = False
        self.loop.call_later(ACCEPT_PAUSE, self._watch)

    def on_event(self, mask: int) -> None:
        lst = self.listener
        if lst is None:
            return
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                sock, addr = lst.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                log.warning("port '%s': accept failed: %s; pausing accepts for %.1fs", self.name, e, ACCEPT_PAUSE)
                self._rest()
                return
            self.accepted += 1
            self._route(sock, addr)

    def close(self, reason: str = "") -> None:
        # The loop calls this if on_event raises: stop this port rather than spin on its listener.
        log.error("port '%s': stopped: %s", self.name, reason)
        self.stop(reason)

    # ------------------------------------------------------------------ routing
    def pick(self) -> Backend | None:
        """Least connections; ties go to the first in Patroni's member order."""
        best: Backend | None = None
        for b in self.backends.values():
            if b.ip is not None and (best is None or b.connections < best.connections):
                best = b
        return best

    def _route(self, sock: socket.socket, addr: Any) -> None:
        backend = self.pick()
        if backend is None:
            self.refused += 1
            now = time.monotonic()
            if now - self._last_refused_log >= NO_BACKEND_LOG_EVERY:
                extra = self.refused - self._refused_logged - 1
                log.warning("port '%s': no backends available, closing connection from %s%s", self.name,
                            format_addr((str(addr[0]), int(addr[1]))),
                            f" ({extra} more since the last warning)" if extra > 0 else "")
                self._last_refused_log = now
                self._refused_logged = self.refused
            sock.close()
            return
        assert backend.ip is not None
        family = socket.AF_INET6 if ":" in backend.ip else socket.AF_INET
        client = format_addr((str(addr[0]), int(addr[1])))
        relay = Relay(self.loop, sock, client, (backend.ip, backend.port), family, self._relay_closed, backend)
        backend.connections += 1
        backend.relays.add(relay)
        log.debug("port '%s': %s -> %s (connections: %d)", self.name, client, backend.label(),
                  backend.connections)
        relay.start(self.proxy.config.connect_timeout)

    def _relay_closed(self, relay: Relay) -> None:
        backend: Backend = relay.backend
        if relay in backend.relays:
            backend.relays.discard(relay)
            backend.connections -= 1
        if relay.connected:
            log.debug("port '%s': connection %s -> %s ended (%s); %d bytes to server, %d to client",
                      self.name, relay.client_addr, backend.label(), relay.reason, relay.bytes_to_server,
                      relay.bytes_to_client)
        else:
            log.warning("port '%s': client %s not connected to %s: %s", self.name, relay.client_addr,
                        backend.label(), relay.reason)

    # ------------------------------------------------------------------ topology
    def update(self, members: list[Member]) -> None:
        """New eligible set: reuse Backend objects (their counts), disconnect the clients of removed ones."""
        new: dict[tuple[str, int], Backend] = {}
        for m in eligible_members(members, self.cfg):
            key = (m.host, self.cfg.host_port)
            b = self.backends.get(key)
            if b is None:
                b = Backend(m, self.cfg.host_port)
                log.info("port '%s': backend %s added", self.name, b.label())
            else:
                b.member = m
                if m.ip is not None:  # a failed lookup keeps the last address
                    b.ip = m.ip
            new[key] = b
        removed = [b for k, b in self.backends.items() if k not in new]
        self.backends = new
        for b in removed:
            n = self._disconnect(b, "backend no longer eligible")
            log.info("port '%s': backend %s removed, disconnected %d clients", self.name, b.label(), n)

    def _disconnect(self, backend: Backend, reason: str) -> int:
        relays = list(backend.relays)
        for r in relays:
            r.close(reason)
        return len(relays)

    def clients(self) -> int:
        return sum(b.connections for b in self.backends.values())

    def stop(self, reason: str) -> int:
        """Stop accepting and disconnect every client of this port."""
        if self.stopped:
            return 0
        self.stopped = True
        if self.listener is not None:
            if self.registered:
                try:
                    self.loop.sel.unregister(self.listener)
                except (KeyError, ValueError):
                    pass
                self.registered = False
            self.listener.close()
            self.listener = None
        n = sum(self._disconnect(b, reason) for b in list(self.backends.values()))
        log.info("port '%s': stopped, terminated %d active connections", self.name, n)
        return n

    def status(self) -> dict[str, Any]:
        return {
            "listen": format_addr(self.cfg.listen),
            "roles": sorted(self.cfg.roles),
            "host_port": self.cfg.host_port,
            "max_lag_in_bytes": self.cfg.max_lag_in_bytes,
            "accepted": self.accepted,
            "refused_no_backend": self.refused,
            "clients": self.clients(),
            "backends": [
                {"host": b.host, "port": b.port, "ip": b.ip, "member": b.member.name, "role": b.member.role,
                 "connections": b.connections}
                for b in self.backends.values()
            ],
        }


class Cluster:
    """One `clusters.<name>` entry: its ports, its poller, and the last topology Patroni gave."""

    def __init__(self, proxy: Proxy, cfg: ClusterConfig) -> None:
        self.proxy = proxy
        self.cfg = cfg
        self.name = cfg.name
        self.ports: dict[str, Port] = {}
        self.members: list[Member] | None = None  # last known; None until the first successful poll
        self.source: str | None = None
        self.last_update: float | None = None
        self.last_error: str | None = None
        self.polls = 0
        self.failures = 0
        self.stopped = False
        self.poller = Poller(cfg.name, self._client(cfg), proxy.config.cluster_update_interval, self._deliver)

    def _client(self, cfg: ClusterConfig) -> ClusterClient:
        ctx = cfg.tls.context() if cfg.tls is not None else None
        return ClusterClient(cfg.hosts, self.proxy.config.patroni_api_timeout, ctx)

    def _deliver(self, result: PollResult, waiters: list[Callable[[], None]]) -> None:
        # Poller thread: everything else happens on the loop.
        self.proxy.loop.call_soon_threadsafe(self.apply, result, waiters)

    def start_ports(self) -> None:
        """Bind every port; on failure the ports bound so far are closed and the error propagates."""
        try:
            for pcfg in self.cfg.ports.values():
                port = Port(self.proxy, self.name, pcfg)
                port.bind()
                self.ports[pcfg.name] = port
        except OSError:
            for port in self.ports.values():
                port.stop("startup failed")
            raise

    def apply(self, result: PollResult, waiters: list[Callable[[], None]]) -> None:
        if not self.stopped and result.error != "stopped":
            self.polls += 1
            if result.members is None:
                self.failures += 1
                self.last_error = result.error
                # Clients keep their backends and new ones are routed by the last known topology.
                log.warning("cluster '%s': failed to fetch members: %s; keeping the last known topology",
                            self.name, result.error)
            else:
                if self.last_error is not None:
                    log.info("cluster '%s': Patroni answers again (%s)", self.name, result.source)
                self.last_error = None
                self.members = result.members
                self.source = result.source
                self.last_update = result.finished
                log.debug("cluster '%s': %d members from %s", self.name, len(result.members), result.source)
                for port in self.ports.values():
                    port.update(result.members)
        for done in waiters:
            done()

    def release(self, cfg: ClusterConfig) -> None:
        """Reload, first phase: stop the ports `cfg` drops or moves, so their addresses are free before
        any port binds."""
        for name, port in list(self.ports.items()):
            pcfg = cfg.ports.get(name)
            if pcfg is None:
                self.ports.pop(name).stop("port removed from the configuration")
            elif pcfg.listen != port.cfg.listen:
                self.ports.pop(name).stop("listen address changed")

    def reconfigure(self, cfg: ClusterConfig) -> None:
        """Reload, second phase (after `release`): new Patroni settings, changed ports, new ports."""
        old = self.cfg
        self.cfg = cfg
        if (old.hosts, old.tls) != (cfg.hosts, cfg.tls):
            log.info("cluster '%s': Patroni hosts %s -> %s", self.name, list(old.hosts), list(cfg.hosts))
        self.poller.reconfigure(self._client(cfg), self.proxy.config.cluster_update_interval)
        for name, pcfg in cfg.ports.items():
            port = self.ports.get(name)
            if port is not None and port.cfg == pcfg:
                continue
            if port is not None:
                # Same listener: keep it and its clients; only those whose backend is no longer
                # eligible under the new roles/lag/host_port are disconnected.
                log.info("port '%s': settings changed, re-evaluating its backends", port.name)
                port.cfg = pcfg
                port.update(self.members or [])
                continue
            new = Port(self.proxy, self.name, pcfg)
            try:
                new.bind()
            except OSError as e:
                log.error("port '%s': cannot listen on %s: %s", new.name, format_addr(pcfg.listen), e)
                continue
            self.ports[name] = new
            if self.members is not None:
                new.update(self.members)

    def stop(self, reason: str) -> None:
        self.stopped = True
        self.poller.stop()
        for port in self.ports.values():
            port.stop(reason)

    def status(self) -> dict[str, Any]:
        return {
            "hosts": list(self.cfg.hosts),
            "source": self.source,
            "last_update": self.last_update,
            "last_error": self.last_error,
            "polls": self.polls,
            "failures": self.failures,
            "members": None if self.members is None else [
                {"name": m.name, "role": m.patroni_role, "state": m.state, "host": m.host, "port": m.port,
                 "lag": m.lag, "noloadbalance": m.noloadbalance}
                for m in self.members
            ],
            "ports": {name: p.status() for name, p in self.ports.items()},
        }


class ApiConn(Conn):
    """One HTTP/1.x request, one answer, then close. GET /update_clusters polls every cluster now and
    answers once all polls are applied; GET /status is the proxy's state as JSON (a pgdoorman extension);
    any other path answers 200 "OK" (the health check), as in PgDoorman."""

    __slots__ = ("api", "buf", "answered", "timer")

    def __init__(self, sock: socket.socket, api: Api) -> None:
        super().__init__(sock, api.proxy.loop)
        self.api = api
        self.buf = bytearray()
        self.answered = False
        self.timer = self.loop.call_later(API_IDLE_TIMEOUT, self.close, "idle")

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.close(str(e))
            return
        if not data:
            self.close("client closed")
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            end = self.buf.find(b"\n\n")
        if end < 0:
            if len(self.buf) > API_REQUEST_LIMIT:
                self.pause_reading()
                self.answer(431, "request header too large\n")
            return
        self.pause_reading()
        line = bytes(self.buf[: self.buf.find(b"\n")]).decode("latin-1").strip()
        parts = line.split()
        if len(parts) < 2:
            self.answer(400, "bad request\n")
            return
        path = parts[1].split("?", 1)[0]
        log.debug("HTTP API: %s", line)
        self.api.handle(self, path)

    def answer(self, status: int, body: str, content_type: str = "text/plain") -> None:
        if self.closed or self.answered:
            return
        self.answered = True
        reason = {200: "OK", 400: "Bad Request", 431: "Request Header Fields Too Large"}.get(status, "OK")
        payload = body.encode()
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode()
        self.write(head + payload)
        if not self.out:
            self.close("answered")

    def on_drained(self) -> None:
        if self.answered:
            self.close("answered")

    def on_close(self, reason: str) -> None:
        self.timer.cancel()


class Api:
    def __init__(self, proxy: Proxy, addr: Addr) -> None:
        self.proxy = proxy
        self.addr = addr
        self.listener: socket.socket | None = None

    def bind(self) -> None:
        self.listener = bind(self.addr)
        self.proxy.loop.sel.register(self.listener, EVENT_READ, self)
        log.info("HTTP API listening on %s", format_addr(self.addr))

    def on_event(self, mask: int) -> None:
        assert self.listener is not None
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("HTTP API: accept failed: %s", e)
                return
            sock.setblocking(False)
            ApiConn(sock, self).attach(self.proxy.loop)

    def close(self, reason: str = "") -> None:
        if self.listener is not None:
            try:
                self.proxy.loop.sel.unregister(self.listener)
            except (KeyError, ValueError):
                pass
            self.listener.close()
            self.listener = None

    def handle(self, conn: ApiConn, path: str) -> None:
        if path == "/update_clusters":
            clusters = list(self.proxy.clusters.values())
            log.info("HTTP API: update of %d cluster(s) requested", len(clusters))
            message = f"Updated {len(clusters)} cluster(s)\n"
            if not clusters:
                conn.answer(200, message)
                return
            remaining = [len(clusters)]

            def one_done() -> None:
                remaining[0] -= 1
                if remaining[0] == 0:
                    conn.answer(200, message)

            for c in clusters:
                c.poller.request_poll(one_done)
        elif path == "/status":
            conn.answer(200, json.dumps(self.proxy.status(), indent=1) + "\n", "application/json")
        else:
            conn.answer(200, "OK")


class Proxy:
    def __init__(self, config: ProxyConfig, loop: Loop | None = None) -> None:
        self.config = config
        self.loop = loop or Loop("patroni_proxy")
        self.clusters: dict[str, Cluster] = {}
        self.api: Api | None = None
        self.started = time.time()
        self.reloads = 0

    def start(self) -> None:
        """Bind the API and every port, then start polling. OSError (a bind failure) leaves nothing open."""
        try:
            self.api = Api(self, self.config.listen_address)
            self.api.bind()
            for ccfg in self.config.clusters.values():
                cluster = Cluster(self, ccfg)
                self.clusters[ccfg.name] = cluster
                log.info("cluster '%s': %d Patroni hosts, %d ports", ccfg.name, len(ccfg.hosts), len(ccfg.ports))
                cluster.start_ports()
        except OSError:
            self.stop_all("startup failed")
            raise
        for cluster in self.clusters.values():
            cluster.poller.start()

    def reload(self) -> None:
        """Re-read the config file; keep running on the old one if the new one is invalid."""
        path = self.config.path
        try:
            new = load_config(path)
        except ConfigError as e:
            log.error("reload: the configuration is invalid, keeping the previous one:\n%s", e)
            return
        for w in new.warnings:
            log.warning("%s", w)
        self.reloads += 1
        old = self.config
        if new == old:
            log.info("reload: configuration unchanged")
            return
        self.config = new
        for name in [n for n in self.clusters if n not in new.clusters]:
            log.info("reload: cluster '%s' removed", name)
            self.clusters.pop(name).stop("cluster removed from the configuration")
        for name, kept in self.clusters.items():
            kept.release(new.clusters[name])
        if new.listen_address != old.listen_address:
            api = Api(self, new.listen_address)
            try:
                api.bind()
            except OSError as e:
                log.error("reload: HTTP API cannot listen on %s: %s; keeping %s",
                          format_addr(new.listen_address), e, format_addr(old.listen_address))
            else:
                if self.api is not None:
                    self.api.close()
                self.api = api
        for name, ccfg in new.clusters.items():
            cluster = self.clusters.get(name)
            if cluster is None:
                log.info("reload: cluster '%s' added", name)
                cluster = Cluster(self, ccfg)
                try:
                    cluster.start_ports()
                except OSError as e:
                    log.error("reload: cluster '%s' not started: %s", name, e)
                    continue
                self.clusters[name] = cluster
                cluster.poller.start()
            elif cluster.cfg != ccfg or new.cluster_update_interval != old.cluster_update_interval \
                    or new.patroni_api_timeout != old.patroni_api_timeout:
                cluster.reconfigure(ccfg)
        log.info("reload: configuration applied")

    def stop_all(self, reason: str) -> None:
        for cluster in self.clusters.values():
            cluster.stop(reason)
        self.clusters.clear()
        if self.api is not None:
            self.api.close()
            self.api = None

    def shutdown(self) -> None:
        log.info("shutting down")
        self.stop_all("shutdown")
        self.loop.stop()

    def status(self) -> dict[str, Any]:
        return {
            "config": self.config.path,
            "started": self.started,
            "reloads": self.reloads,
            "clusters": {name: c.status() for name, c in self.clusters.items()},
        }
