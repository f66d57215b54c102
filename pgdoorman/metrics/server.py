"""The web listener: a stdlib ThreadingHTTPServer on `web.host:web.port`, in its own threads, so a
scrape never runs on a worker loop. `GET /metrics` (and HEAD) returns the exposition. Other paths go to
the optional `routes` hook the composition root plugs in (the JSON API of pgdoorman.web); what it does not
answer is 404. HTTP/1.1 with Content-Length, so scrapers may keep the connection open. Every request gets
one access log line on `pgdoorman.web.access` (logfmt; successful /metrics scrapes at DEBUG).

Behind a reverse proxy listed in `web.trusted_proxies` (CIDR networks), the client's address is taken from
`X-Forwarded-For` (or, without it, `Forwarded: for=`): the nearest address in the chain that is not itself
a trusted proxy. From any other peer those headers are ignored: a client cannot name its own address.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pgdoorman.metrics import webstats
from pgdoorman.metrics.collect import render_metrics
from pgdoorman.metrics.exposition import CONTENT_TYPE
from pgdoorman.observe import Observer

log = logging.getLogger("pgdoorman.metrics")
access_log = logging.getLogger("pgdoorman.web.access")

MAX_BODY = 64 * 1024  # request bodies the routes may get; the JSON API's POSTs need none


@dataclass
class HttpRequest:
    method: str
    path: str  # without the query string
    query: str
    headers: Message
    remote: str  # the client's address (the peer's, or from a trusted proxy's forwarding headers)
    body: bytes = b""
    forwarded_proto: str = ""  # "https"/"http" as a trusted proxy reports it; "" from any other peer


@dataclass
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    who: str = "-"  # the role/user the access log names


# The hook behind every path but /metrics: a response, or None for 404.
Routes = Callable[[HttpRequest], HttpResponse | None]
TEXT = "text/plain; charset=utf-8"


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def trusted_networks(entries: tuple[str, ...]) -> tuple[IpNetwork, ...]:
    """`web.trusted_proxies` parsed (the config loader has refused what does not parse)."""
    nets = []
    for e in entries:
        try:
            nets.append(ipaddress.ip_network(e.strip(), strict=False))
        except ValueError:
            log.warning("web.trusted_proxies: %r is not a network; ignored", e)
    return tuple(nets)


def _ip(text: str) -> IpAddress | None:
    """An address of a forwarding header or a peer: `1.2.3.4`, `1.2.3.4:80`, `[::1]:80`, `"[::1]"`, `::1`."""
    t = text.strip().strip('"')
    if t.startswith("["):
        t = t[1:t.find("]")] if "]" in t else t[1:]
    elif t.count(":") == 1:
        t = t.partition(":")[0]
    try:
        ip = ipaddress.ip_address(t)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _forwarded_chain(headers: Message) -> list[str]:
    """The addresses a request passed through, client first: X-Forwarded-For, else Forwarded's for=."""
    xff = headers.get_all("X-Forwarded-For") or []
    if xff:
        return [a.strip() for h in xff for a in h.split(",") if a.strip()]
    chain = []
    for h in headers.get_all("Forwarded") or []:
        for element in h.split(","):
            for pair in element.split(";"):
                k, _, v = pair.strip().partition("=")
                if k.strip().lower() == "for" and v.strip():
                    chain.append(v.strip())
    return chain


def _trusted(peer: str, trusted: tuple[str, ...]) -> bool:
    nets = trusted_networks(tuple(trusted)) if trusted else ()
    ip = _ip(peer)
    return bool(nets) and ip is not None and any(ip in n for n in nets)


def forwarded_proto(peer: str, headers: Message, trusted: tuple[str, ...]) -> str:
    """The scheme the client used, as a trusted proxy says (X-Forwarded-Proto, else Forwarded proto=);
    "" when the peer is not a trusted proxy or says nothing."""
    if not _trusted(peer, trusted):
        return ""
    xfp = (headers.get("X-Forwarded-Proto") or "").split(",")[0].strip().lower()
    if xfp:
        return xfp
    for h in headers.get_all("Forwarded") or []:
        for pair in h.split(",")[0].split(";"):
            k, _, v = pair.strip().partition("=")
            if k.strip().lower() == "proto":
                return v.strip().strip('"').lower()
    return ""


def client_address(peer: str, headers: Message, trusted: tuple[str, ...]) -> str:
    """The client's address: `peer`, unless `peer` is in a trusted proxy network; then the nearest address
    of the forwarding chain that is not (an address that does not parse ends the walk at the proxy)."""
    nets = trusted_networks(tuple(trusted)) if trusted else ()
    ip = _ip(peer)
    if not nets or ip is None or not any(ip in n for n in nets):
        return peer
    for hop in reversed(_forwarded_chain(headers)):
        addr = _ip(hop)
        if addr is None:
            return peer
        if not any(addr in n for n in nets):
            return str(addr)
    return peer


def _logfmt(value: str) -> str:
    if value and all(33 <= ord(ch) < 127 and ch not in '"=\\' for ch in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pgdoorman"
    sys_version = ""
    timeout = 30  # a scraper that stalls mid-request does not pin a thread forever

    def _respond(self, status: int, body: bytes, content_type: str, head: bool = False,
                 headers: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in headers or ():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _access(self, method: str, path: str, status: int, size: int, who: str, started: float,
                client: str) -> None:
        level = logging.DEBUG if path == "/metrics" and status == 200 else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        ms = (time.monotonic() - started) * 1000
        peer = self.client_address[0] if self.client_address else "-"
        proxy = f" proxy={_logfmt(peer)}" if client != peer else ""
        access_log.log(level, "remote=%s%s method=%s path=%s status=%d bytes=%d who=%s ms=%.1f",
                       _logfmt(client), proxy, _logfmt(method), _logfmt(path), status, size, _logfmt(who), ms)

    def _serve(self, method: str) -> None:
        started = time.monotonic()
        head = method == "HEAD"
        peer = self.client_address[0] if self.client_address else ""
        obs: Observer = self.server.obs  # type: ignore[attr-defined]
        trusted = obs.config.web.trusted_proxies
        self.client = client_address(peer, self.headers, trusted) if peer else "-"
        self.proto = forwarded_proto(peer, self.headers, trusted) if peer else ""
        path, _, query = self.path.partition("?")
        resp = self._route(method, path, query)
        self._respond(resp.status, resp.body, resp.content_type, head, resp.headers)
        self._access(method, path, resp.status, len(resp.body), resp.who, started, self.client)
        webstats.count_request(resp.status, resp.who)

    def _route(self, method: str, path: str, query: str) -> HttpResponse:
        if path == "/metrics":
            if method not in ("GET", "HEAD"):
                return HttpResponse(405, b"", TEXT, [("Allow", "GET, HEAD")])
            obs: Observer = self.server.obs  # type: ignore[attr-defined]
            try:
                return HttpResponse(200, render_metrics(obs).encode("utf-8"), CONTENT_TYPE)
            except Exception:
                log.exception("rendering /metrics failed")
                return HttpResponse(500, b"internal error while collecting metrics\n", TEXT)
        routes: Routes | None = self.server.routes  # type: ignore[attr-defined]
        if routes is not None:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                return HttpResponse(411, b"send a Content-Length, not a chunked body\n", TEXT)
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                self.close_connection = True
                return HttpResponse(413, b"request body too large or Content-Length invalid\n", TEXT)
            body = self.rfile.read(length) if length else b""
            req = HttpRequest(method, path, query, self.headers, self.client, body, self.proto)
            try:
                resp = routes(req)
            except Exception:
                log.exception("web request %s %s failed", method, path)
                resp = HttpResponse(500, b'{"error":"internal","message":"internal error"}')
            if resp is not None:
                return resp
        if method not in ("GET", "HEAD"):
            return HttpResponse(405, b"", TEXT, [("Allow", "GET, HEAD")])
        return HttpResponse(404, b"not found; metrics are at /metrics\n", TEXT)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def do_OPTIONS(self) -> None:  # noqa: N802 (no CORS: a cross-origin preflight gets no permission)
        self._serve("OPTIONS")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], obs: Observer, family: int, routes: Routes | None) -> None:
        self.address_family = family
        self.obs = obs
        self.routes = routes
        super().__init__(addr, _Handler)


class MetricsServer:
    """Handle of a running listener: `address` is the bound (host, port); `stop()` closes it."""

    def __init__(self, obs: Observer, host: str, port: int, routes: Routes | None = None) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.httpd = _Server((host, port), obs, family, routes)
        self.address: tuple[str, int] = self.httpd.server_address[:2]  # type: ignore[assignment]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                       name="metrics-http", daemon=True)

    def start(self) -> MetricsServer:
        self.thread.start()
        log.info("metrics listening on http://%s:%d/metrics", self.address[0], self.address[1])
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def start_metrics_server(obs: Observer, routes: Routes | None = None) -> MetricsServer:
    """Bind `web.host:web.port` and serve /metrics (and `routes`) from a background thread. Raises OSError
    if the port cannot be bound. The caller checks `config.web.enabled`."""
    web = obs.config.web
    host = web.host or "0.0.0.0"
    if host in ("*", ""):
        host = "0.0.0.0"
    obs.start_sampler()  # averages (and socket counts) start accumulating from now
    return MetricsServer(obs, host, int(web.port), routes).start()
