"""Cancel keys: the BackendKeyData the pooler gives each client, and the routing of a CancelRequest to the
server that client holds at that moment. A server that was sent a cancel is closed instead of reused, so a
cancel that reaches PostgreSQL late can never hit another client's query.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import TYPE_CHECKING

from pgdoorman.protocol import messages as m

if TYPE_CHECKING:
    from pgdoorman.client import ClientConn

log = logging.getLogger("pgdoorman.cancel")


class CancelRegistry:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_pid: dict[int, tuple[int, ClientConn]] = {}
        self.next_pid = int.from_bytes(os.urandom(2), "big") + 1000
        self.requests = 0

    def register(self, client: ClientConn) -> tuple[int, int]:
        secret = int.from_bytes(os.urandom(4), "big", signed=True)
        with self.lock:
            pid = self.next_pid
            self.next_pid = pid + 1 if pid < 0x7FFFFFF0 else 1000
            self.by_pid[pid] = (secret, client)
        return pid, secret

    def unregister(self, pid: int) -> None:
        with self.lock:
            self.by_pid.pop(pid, None)

    def cancel(self, pid: int, secret: int) -> None:
        with self.lock:
            self.requests += 1
            entry = self.by_pid.get(pid)
        if entry is None or entry[0] != secret:
            log.info("cancel request for unknown key (pid %d) ignored", pid)
            return
        client = entry[1]
        server = client.server
        if server is None or server.closed or not server.pid:
            log.debug("cancel request for %r: no query running", client)
            return
        server.cancelled = True
        target = server.addr
        spid, ssecret = server.pid, server.secret
        # Connecting to PostgreSQL can block: do it off the worker loop.
        threading.Thread(target=_send_cancel, args=(target, spid, ssecret), daemon=True).start()


def _send_cancel(target: str, pid: int, secret: int) -> None:
    try:
        if target.startswith("/"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(target)
        else:
            host, _, port = target.rpartition(":")
            s = socket.create_connection((host, int(port)), timeout=5)
        with s:
            s.sendall(m.cancel_request(pid, secret))
            try:
                s.recv(1)  # PostgreSQL closes the connection once it has processed the request
            except OSError:
                pass
    except OSError as e:
        log.warning("could not send cancel request to %s: %s", target, e)
