"""Binary upgrade, the new process's side: tell the old process we serve, then take over the clients (socket
and session state) and the pools' SCRAM ClientKeys it hands over, spreading the clients over the workers.

A client the old process let in through auth_query (its record says `"auth_query": true`) has no pool here
yet: its user is looked up again through this process's own auth_query first, and the client is restored
into the pool that lookup gives (made now if needed), with the ClientKey the old process handed over if it
still matches the verifier found. A user the lookup does not find (role dropped, no password, lookup failed,
auth_query gone from the config, or a static user of that name now) is told with a FATAL 28000 and
closed: a client is never let in here by anything weaker than the lookup it passed in the old process.

`adopt` and `restore_client` also serve the old process: a client whose handover failed is taken back there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from typing import TYPE_CHECKING, Any

from pgdoorman.net.sockopts import linger_off
from pgdoorman.protocol import auth
from pgdoorman.protocol import messages as m
from pgdoorman.upgrade.inherit import Inherited
from pgdoorman.upgrade.records import recv_record, unb64

if TYPE_CHECKING:
    from pgdoorman.app import App
    from pgdoorman.core.pool import Pool
    from pgdoorman.worker import Worker

# SCRAM ClientKeys handed over for pools this process does not have (yet): auth_query users' pools, made
# when their clients' lookups answer. Keyed (database, user) like the pools.
Keys = dict[tuple[str, str], bytes]

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
    keys: Keys = {}
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
                adopt(app, w, fds[0], rec, keys)
                n += 1
                continue
            for fd in fds:
                os.close(fd)
            if kind == "pool":
                _take_pool_key(app, rec, keys)
            elif kind == "done":
                break
            else:
                log.warning("handover: unexpected record %r", kind)
    finally:
        sock.close()
        log.info("handover finished: %d client(s) taken over from the old process", n)


def _take_pool_key(app: App, rec: dict[str, Any], keys: Keys) -> None:
    k = (str(rec["database"]), str(rec["user"]))
    key = unb64(rec["scram_client_key"])
    pool = app.pools.get(k)
    if pool is None or pool.dynamic:
        keys[k] = key  # an auth_query user's: its pool comes with its first client's lookup
    if pool is not None:
        _give_key(pool, key)


def _give_key(pool: Pool, key: bytes) -> None:
    """The pool's SCRAM ClientKey, unless it has one or the key does not belong to the pool's verifier
    (the password changed meanwhile): a wrong key could only fail at PostgreSQL."""
    secret = pool.user_cfg.password
    if auth.is_scram_verifier(secret) and hashlib.sha256(key).digest() != auth.ScramVerifier.parse(secret).stored_key:
        log.warning("handover: the SCRAM key of pool %s does not match the password found now: not used", pool.name)
        return
    with pool.lock:
        if pool.scram_client_key is None:
            pool.scram_client_key = key


def adopt(app: App, w: Worker, fd: int, st: dict[str, Any], keys: Keys | None = None) -> None:
    """Restore a handed-over client on `w`'s thread; an auth_query client once this process's lookup of its
    user has answered (from the cache now, or later from an executor thread)."""
    if not st.get("auth_query"):
        w.loop.call_soon_threadsafe(restore_client, app, w, fd, st)
        return
    database, user = str(st["database"]), str(st["user"])

    def found(pool: Pool | None, stored: str) -> None:
        if pool is not None and keys:
            key = keys.get((pool.database, pool.username))
            if key is not None:
                _give_key(pool, key)
        w.loop.call_soon_threadsafe(restore_client, app, w, fd, st, pool, pool is None)

    now = app.auth_query_lookup(database, user, found)
    if now is not None:
        found(*now)


def restore_client(app: App, w: Worker, fd: int, st: dict[str, Any], pool: Pool | None = None,
                   refused: bool = False) -> None:
    """On `w`'s thread: rebuild a ClientConn from a handed-over socket and its state (ClientConn.restore),
    ready for its next query, in `pool` (an auth_query user's) or its static pool. `refused`: an auth_query
    user the lookup did not find: told so and closed."""
    from pgdoorman.session.client import ClientConn

    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        log.warning("handover: unusable client socket: %s", e)
        os.close(fd)
        return
    if refused:
        _refuse(sock, st)
        return
    sock.setblocking(False)
    if not st["is_unix"]:
        w.apply_tcp(sock)
    with app.count_lock:
        # Admitted once already: max_connections does not apply again.
        app.n_clients += 1
    w.clients.add(ClientConn.restore(w, sock, st, pool))


def _refuse(sock: socket.socket, st: dict[str, Any]) -> None:
    user, database = st["user"], st["database"]
    log.warning("handover: client %s (%s@%s) closed: auth_query does not find the user in this process",
                st["addr"], user, database)
    try:
        sock.settimeout(1.0)
        sock.sendall(m.error_response("28000", f'user "{user}" of database "{database}" is not found by auth_query '
                                               "after the binary upgrade", "FATAL"))
    except OSError:
        pass
    linger_off(sock)  # an end of file after the error, not a reset the client could see first (Conn.close_orderly)
    sock.close()
