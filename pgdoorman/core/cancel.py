"""Cancel keys: the BackendKeyData each client gets, and the routing of a CancelRequest to that client.

A transaction-mode client gets a key made here; its PID lies above any Linux process ID (`FAKE_PID_MIN`), so it
can never equal the PID of a real backend. A session-mode client may get the real PID of the server it holds
for its whole session (`register_pid`), with a secret of its own: the server's secret would outlive the
session, and the next client of that server would get it too, so that a client long gone could cancel that
one's queries (on PostgreSQL a key dies with its session). The server's real key is used only for the cancel
request sent to PostgreSQL. Either way a CancelRequest is handed to the client's own worker loop
(`ClientConn.cancel_requested`), which cancels what that client is doing at that moment: a request still
waiting for a server is answered there with 57014; a running one is cancelled on its server, and nothing more
is sent to that server until PostgreSQL has closed the cancel connection (session/server_wrap.py), so a cancel
that reaches PostgreSQL late can never hit a later query, of that client or another, and the server is kept.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pgdoorman.protocol import messages as m

if TYPE_CHECKING:
    from pgdoorman.net.loop import Loop

log = logging.getLogger("pgdoorman.cancel")

# Linux PIDs stay below 2^22 (the largest pid_max): pooler-made keys live above it.
FAKE_PID_MIN = 1 << 22
_FAKE_PID_MAX = 0x7FFFFFF0


def fake_pid(n: int) -> int:
    """`n` folded into the range of pooler-made PIDs."""
    return FAKE_PID_MIN + (n - FAKE_PID_MIN) % (_FAKE_PID_MAX - FAKE_PID_MIN)


class _Owner(Protocol):
    @property
    def loop(self) -> Loop: ...


class Cancellable(Protocol):
    """A client as the registry sees it (ClientConn): a cancel request runs on its worker's loop. Its
    `secret` is the one its key was registered with: the caller of `register`, `register_pid` or `adopt`
    sets it (before it tells the client the key, so that no request can carry it earlier)."""

    @property
    def worker(self) -> _Owner: ...

    @property
    def secret(self) -> int: ...

    def cancel_requested(self) -> None: ...


class CancelRegistry:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        # The client of each PID (its secret is the client's own: no tuple per client, issue 15 item 4).
        self.by_pid: dict[int, Cancellable] = {}
        self.next_pid = fake_pid(FAKE_PID_MIN + int.from_bytes(os.urandom(3), "big"))
        self.requests = 0

    def register(self, client: Cancellable) -> tuple[int, int]:
        """A new pooler-made key for `client`."""
        secret = new_secret()
        with self.lock:
            pid = self.next_pid
            while pid in self.by_pid:
                pid = fake_pid(pid + 1)
            self.next_pid = fake_pid(pid + 1)
            self.by_pid[pid] = client
        return pid, secret

    def register_pid(self, client: Cancellable, pid: int) -> int | None:
        """Route cancel requests carrying a real server's PID to `client`: the secret of its key, new for its
        session; None when another client of ours already has that PID (a server of another PostgreSQL with
        the same PID)."""
        secret = new_secret()
        with self.lock:
            if pid in self.by_pid:
                return None
            self.by_pid[pid] = client
            return secret

    def adopt(self, pid: int, secret: int, client: Cancellable) -> tuple[int, int]:
        """Keep the key a client handed over by a binary upgrade already had; the key `client` has now. Only
        if that pid is taken (cannot happen with the upgrade's pid gap unless the counter wrapped) does it get
        a new one: its old key is then lost, and the caller says so."""
        with self.lock:
            if pid and pid not in self.by_pid:
                self.by_pid[pid] = client
                return pid, secret
        return self.register(client)

    def unregister(self, pid: int, client: Cancellable | None = None) -> None:
        with self.lock:
            entry = self.by_pid.get(pid)
            if entry is not None and (client is None or entry is client):
                del self.by_pid[pid]

    def cancel(self, pid: int, secret: int) -> None:
        with self.lock:
            self.requests += 1
            client = self.by_pid.get(pid)
        if client is None or client.secret != secret:
            log.info("cancel request for unknown key (pid %d) ignored", pid)
            return
        # Whatever the client is doing is decided on its own loop, where its state is consistent.
        client.worker.loop.call_soon_threadsafe(deliver, client)


def new_secret() -> int:
    return int.from_bytes(os.urandom(4), "big", signed=True)


def deliver(client: Cancellable) -> None:
    """On a worker loop: `client.cancel_requested`, run by the thread that owns the client now. With
    general.worker_placement `pack` an idle client may have moved to another worker after the request was
    posted here (placement.py): then the request follows it there, so that only the client's own thread ever
    touches it, and a cancel meant for an idle client cannot run beside the next query on the other thread."""
    loop = client.worker.loop
    if loop.thread is not None and loop.thread is not threading.current_thread():
        loop.call_soon_threadsafe(deliver, client)
        return
    client.cancel_requested()


# Outcomes of a CancelRequest (send_cancel's `done`): PostgreSQL closed the cancel connection after it had
# signalled the backend; the request was sent but that close was not seen; it was never sent.
CANCEL_DELIVERED, CANCEL_UNSURE, CANCEL_NOT_SENT = range(3)


def send_cancel(target: str, pid: int, secret: int, done: Callable[[int], None] | None = None) -> None:
    """Send a CancelRequest to a server, off the worker loop (connecting to PostgreSQL can block); `done` is
    called on that thread with the outcome (CANCEL_*)."""
    threading.Thread(target=_send_cancel, args=(target, pid, secret, done), daemon=True).start()


def _send_cancel(target: str, pid: int, secret: int, done: Callable[[int], None] | None = None) -> None:
    outcome = _deliver(target, pid, secret)
    if done is not None:
        done(outcome)


def _deliver(target: str, pid: int, secret: int) -> int:
    sent = False
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
            sent = True
            # PostgreSQL closes the connection once it has processed the request (signalled the backend).
            return CANCEL_DELIVERED if s.recv(1) == b"" else CANCEL_UNSURE
    except OSError as e:
        log.warning("could not send cancel request to %s: %s", target, e)
    return CANCEL_UNSURE if sent else CANCEL_NOT_SENT
