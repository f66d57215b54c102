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
    """On `w`'s thread: rebuild a ClientConn from a handed-over socket and its state, ready for its next
    query. Used by the new process, and by the old one to take a client back if the handover fails."""
    from pgdoorman.core import prepared as ps
    from pgdoorman.session.client import READY, ClientConn

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
    c = ClientConn(sock, w, str(st["addr"]), bool(st["is_unix"]))
    c.login_timer.cancel()
    c.user = str(st["user"])
    c.database = str(st["database"])
    c.startup = {str(k): str(v) for k, v in st["startup"].items()}
    c.application_name = str(st["application_name"])
    c.connect_time = float(st["connect_time"])
    c.query_count = int(st["query_count"])
    c.xact_count = int(st["xact_count"])
    c.error_count = int(st["error_count"])
    w.clients.add(c)
    pool = app.pools.get((c.database, c.user))
    if pool is None:
        c.state = READY
        c.fatal("3D000", f'pool for user "{c.user}" and database "{c.database}" no longer exists after the '
                         "binary upgrade")
        return
    c.pool = pool
    c.transaction_mode = pool.transaction_mode
    c.want = {str(k): str(v) for k, v in st["want"]}
    c.want_key = tuple(c.want.items())
    c.last_status = 73
    c.ps = c.transaction_mode and app.config.general.prepared_statements
    if c.ps:
        c.use_ps_scanner()
        if st.get("ps"):
            c.planner_sig = tuple(str(x) for x in st["planner_sig"])
        else:
            c.planner_sig = tuple(c.want.get(k, "") for k in ps.PLANNER_PARAMS)
        cache = pool.ps_cache
        for name, q, types in st.get("named") or []:
            c.named[unb64(name)] = cache.get(unb64(q), unb64(types), c.planner_sig)
        un = st.get("unnamed")
        if un:
            c.unnamed = cache.get(unb64(un[0]), unb64(un[1]), c.planner_sig)
    elif st.get("named"):
        log.warning("client %s (%s@%s) had %d prepared statement(s); prepared_statements is off now: they are "
                    "gone", c.addr, c.user, c.database, len(st["named"]))
    c.state = READY
    pid = int(st["pid"])
    c.pid, c.secret = app.cancels.adopt(pid, int(st["secret"]), c)
    if c.pid != pid:
        log.warning("client %s: cancel key %d already in use after the handover; its cancel requests will be "
                    "ignored", c.addr, pid)
    c._apply_mask()
