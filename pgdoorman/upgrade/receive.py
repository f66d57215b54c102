"""Binary upgrade, the new process's side: tell the old process we serve, then take over the clients (socket
and session state) and the pools' SCRAM ClientKeys it hands over, spreading the clients over the workers.

`restore_client` also serves the old process: a client whose handover failed is taken back there.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import TYPE_CHECKING, Any

from pgdoorman.upgrade.inherit import Inherited
from pgdoorman.upgrade.records import recv_record, unb64

if TYPE_CHECKING:
    from pgdoorman.app import App
    from pgdoorman.worker import Worker

log = logging.getLogger("pgdoorman.upgrade")


def child_ready(app: App, inh: Inherited) -> None:
    """The new process serves: start receiving clients, then tell the old process."""
    if inh.migration_fd is not None:
        sock = socket.socket(fileno=inh.migration_fd)
        sock.setblocking(True)
        th = threading.Thread(target=_receive_loop, args=(app, sock), name="handover-recv", daemon=True)
        th.start()
    if inh.ready_fd is not None:
        try:
            os.write(inh.ready_fd, f"READY {os.getpid()}\n".encode())
        except OSError as e:
            log.error("cannot report readiness to the old process: %s", e)
        os.close(inh.ready_fd)
        inh.ready_fd = None


def _receive_loop(app: App, sock: socket.socket) -> None:
    n = 0
    rr = 0
    try:
        while True:
            try:
                rec, fds = recv_record(sock)
            except (OSError, EOFError, ValueError) as e:
                log.error("handover channel failed: %s", e)
                break
            if rec is None:
                break
            kind = rec.get("kind")
            if kind == "client" and len(fds) == 1:
                workers = app.workers
                w = min(workers, key=lambda x: (len(x.clients), (x.id - rr) % len(workers)))
                rr += 1
                w.loop.call_soon_threadsafe(restore_client, app, w, fds[0], rec)
                n += 1
                continue
            for fd in fds:
                os.close(fd)
            if kind == "pool":
                _take_pool_key(app, rec)
            elif kind == "done":
                break
            else:
                log.warning("handover: unexpected record %r", kind)
    finally:
        sock.close()
        log.info("handover finished: %d client(s) taken over from the old process", n)


def _take_pool_key(app: App, rec: dict[str, Any]) -> None:
    pool = app.pools.get((str(rec["database"]), str(rec["user"])))
    if pool is not None:
        with pool.lock:
            if pool.scram_client_key is None:
                pool.scram_client_key = unb64(rec["scram_client_key"])


def restore_client(app: App, w: Worker, fd: int, st: dict[str, Any]) -> None:
    """On `w`'s thread: rebuild a ClientConn from a handed-over socket and its state (ClientConn.restore),
    ready for its next query. Used by the new process, and by the old one to take a client back if the
    handover fails."""
    from pgdoorman.session.client import ClientConn

    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        log.warning("handover: unusable client socket: %s", e)
        os.close(fd)
        return
    sock.setblocking(False)
    if not st["is_unix"]:
        w.apply_tcp(sock)
    with app.count_lock:
        # Admitted once already: max_connections does not apply again.
        app.n_clients += 1
    w.clients.add(ClientConn.restore(w, sock, st))
