"""A fake Patroni REST API for patroni_proxy's tests: `GET /cluster` answers the members the test sets,
with the HTTP status it sets; `down()` closes the listening socket (connection refused), `up()` listens on
the same port again."""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any


def pmember(name: str, role: str, host: str, port: int = 5432, state: str = "running", lag: Any = 0,
            tags: dict[str, Any] | None = None) -> dict[str, Any]:
    """One member of a /cluster answer, as Patroni writes it."""
    m: dict[str, Any] = {"name": name, "role": role, "state": state, "host": host, "port": port,
                         "api_url": f"http://{host}:8008/patroni", "timeline": 1}
    if role != "leader":
        m["lag"] = lag
    if tags:
        m["tags"] = tags
    return m


class FakePatroni:
    def __init__(self, members: list[dict[str, Any]], scope: str = "test") -> None:
        self.members = members
        self.scope = scope
        self.status = 200  # what GET /cluster answers; other paths get 404
        self.requests = 0
        self.server: http.server.ThreadingHTTPServer | None = None
        self.port = 0
        self.up()
        self.url = f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests += 1
                body = json.dumps({"scope": fake.scope, "members": fake.members}).encode()
                self.send_response(fake.status if self.path == "/cluster" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    close = down
