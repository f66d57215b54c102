"""The `/metrics` HTTP listener: a stdlib ThreadingHTTPServer on `web.host:web.port`, in its own threads,
so a scrape never runs on a worker loop. `GET /metrics` (and HEAD) returns the exposition; anything else
is 404 (405 for other methods). HTTP/1.1 with Content-Length, so scrapers may keep the connection open.
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pgdoorman.metrics.collect import render_metrics
from pgdoorman.metrics.exposition import CONTENT_TYPE
from pgdoorman.observe import Observer

log = logging.getLogger("pgdoorman.metrics")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pgdoorman"
    sys_version = ""
    timeout = 30  # a scraper that stalls mid-request does not pin a thread forever

    def _respond(self, status: int, body: bytes, content_type: str, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _serve(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/metrics":
            self._respond(404, b"not found; metrics are at /metrics\n", "text/plain; charset=utf-8", head)
            return
        obs: Observer = self.server.obs  # type: ignore[attr-defined]
        try:
            body = render_metrics(obs).encode("utf-8")
        except Exception:
            log.exception("rendering /metrics failed")
            self._respond(500, b"internal error while collecting metrics\n", "text/plain; charset=utf-8", head)
            return
        self._respond(200, body, CONTENT_TYPE, head)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)

    def _not_allowed(self) -> None:
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], obs: Observer, family: int) -> None:
        self.address_family = family
        self.obs = obs
        super().__init__(addr, _Handler)


class MetricsServer:
    """Handle of a running listener: `address` is the bound (host, port); `stop()` closes it."""

    def __init__(self, obs: Observer, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.httpd = _Server((host, port), obs, family)
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


def start_metrics_server(obs: Observer) -> MetricsServer:
    """Bind `web.host:web.port` and serve /metrics from a background thread. Raises OSError if the port
    cannot be bound. The caller checks `config.web.enabled`."""
    web = obs.config.web
    host = web.host or "0.0.0.0"
    if host in ("*", ""):
        host = "0.0.0.0"
    obs.start_sampler()  # averages (and socket counts) start accumulating from now
    return MetricsServer(obs, host, int(web.port)).start()
