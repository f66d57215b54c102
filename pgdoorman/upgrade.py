"""Binary upgrade without downtime: validate with `-t`, start the new process with the same command line,
share the listening sockets with it, then hand every idle client over (socket and session state) through
an AF_UNIX socketpair with SCM_RIGHTS; clients in a transaction finish first, then move. Both sides live
here: the old process's `start_upgrade`/`Handoff`, the new process's `take_inherited`/`child_ready`.

Handover protocol (SOCK_SEQPACKET, one sender thread, one receiver thread): a record is a JSON object,
sent as a 4-byte length + the first chunk (carrying the client's fd, if any) and raw continuation chunks.
Kinds: "pool" (a SCRAM ClientKey a pool needs to log in to PostgreSQL in passthrough mode), "client"
(one fd + its state) and "done" (nothing more will come).
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import queue
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgdoorman import systemd
from pgdoorman.core.cancel import fake_pid

if TYPE_CHECKING:
    from pgdoorman.app import App
    from pgdoorman.session.client import ClientConn
    from pgdoorman.worker import Worker

log = logging.getLogger("pgdoorman.upgrade")

# Environment of the new process (names as in PgDoorman where it has the same thing).
ENV_READY_FD = "PG_DOORMAN_READY_FD"  # write end of the readiness pipe: "READY <pid>\n"
ENV_MIGRATION_FD = "PG_DOORMAN_MIGRATION_FD"  # our end of the handover socketpair
ENV_LISTEN_FDS = "PG_DOORMAN_LISTEN_FDS"  # "tcp:5,tcp:6,unix:7": listening sockets to keep using
ENV_CANCEL_PID_BASE = "PG_DOORMAN_CANCEL_PID_BASE"  # first cancel key pid to hand out
ENV_SHUTDOWN_ONLY = "PG_DOORMAN_CI_SHUTDOWN_ONLY"  # "1": SIGINT always means shutdown, never upgrade
_OUR_ENV = (ENV_READY_FD, ENV_MIGRATION_FD, ENV_LISTEN_FDS, ENV_CANCEL_PID_BASE)

VALIDATE_TIMEOUT = 30.0  # for `<new binary> -t`
READY_TIMEOUT = 15.0  # from spawning the new process to its readiness byte
TICK = 0.005  # how often each worker looks for clients that became idle and can move
TRIM_EVERY = 20  # ticks between closing idle servers the old process no longer needs
CHUNK = 32 * 1024
# Cancel keys of the new process start this far from the old one's counter so the two never collide while
# the old process is still logging clients in.
CANCEL_PID_GAP = 1_000_000

_HEAD = struct.Struct("!I")

# The directory the process was started from: the command line (relative config path included) is replayed
# from there even after a daemon chdir'ed to "/".
START_CWD = os.getcwd()


def remember_start_dir() -> None:
    global START_CWD
    START_CWD = os.getcwd()


# ------------------------------------------------------------------------------------------ command line
def upgrade_command() -> list[str]:
    """The command that started this process, to start the new binary at the same path with the same
    arguments: `python -m pgdoorman ...` again through this interpreter (which imports the package as it is
    installed now), or the `pg_doorman` script by its path (whose shebang picks the interpreter)."""
    orig = list(getattr(sys, "orig_argv", []) or [])
    argv = list(sys.argv)
    try:
        i = orig.index("-m", 1)
    except ValueError:
        i = -1
    if i > 0 and i + 1 < len(orig) and orig[i + 1].split(".")[0] == "pgdoorman":
        return [sys.executable, *orig[1:]]
    script = os.path.join(START_CWD, argv[0]) if argv and argv[0] else ""
    if script and os.path.isfile(script) and os.access(script, os.X_OK) and not script.endswith(".py"):
        return [os.path.abspath(script), *argv[1:]]
    if orig:
        return [sys.executable, *orig[1:]]
    return [sys.executable, "-m", "pgdoorman", *argv[1:]]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _OUR_ENV}


def sigint_means_shutdown() -> bool:
    """PgDoorman: SIGINT is a graceful shutdown for a foreground process with a terminal on stdin (Ctrl-C),
    and a binary upgrade otherwise (daemon, service manager, container)."""
    if os.environ.get(ENV_SHUTDOWN_ONLY) == "1":
        return True
    try:
        return os.isatty(0)
    except OSError:
        return False


# ------------------------------------------------------------------------------------------ record framing
def send_record(sock: socket.socket, obj: dict[str, Any], fds: list[int]) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    first = _HEAD.pack(len(data)) + data[:CHUNK]
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
    sock.sendmsg([first], anc)
    for i in range(CHUNK, len(data), CHUNK):
        sock.sendmsg([data[i : i + CHUNK]])


def recv_record(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """(record, fds); (None, []) at end of stream."""
    msg, fds, flags, _ = socket.recv_fds(sock, CHUNK + _HEAD.size, 4)
    if not msg:
        return None, list(fds)
    if flags & socket.MSG_CTRUNC:
        log.error("handover: file descriptors were dropped by the kernel (fd limit reached?)")
    (total,) = _HEAD.unpack_from(msg, 0)
    body = bytearray(msg[_HEAD.size :])
    out = list(fds)
    while len(body) < total:
        more, fds2, _, _ = socket.recv_fds(sock, CHUNK, 4)
        if not more:
            for fd in out:
                os.close(fd)
            raise EOFError("handover stream ended inside a record")
        body += more
        out += fds2
    return json.loads(bytes(body)), out


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode("ascii"))


# ------------------------------------------------------------------------------------------ client state
def movable(c: ClientConn) -> bool:
    """A client can move when it is logged in, holds no server, waits for none, and nothing of it is
    buffered here: not a byte withheld or half-scanned, no response owed, nothing unsent. (Bytes it already
    sent that sit in the kernel's socket buffer move with the socket.)"""
    from pgdoorman.session.client import READY

    return (
        c.state == READY and not c.closed and c.server is None and not c.waiting and not c.terminating
        and c.expect <= 0 and not c.unsynced and c.last_status == 73 and not c.pending and not c.inbuf
        and not c.out and not c.read_paused and not c.scanner.mid_message and not c.rq and not c.raw
        and not c.tls  # a TLS session cannot be handed to another process: it stays here until it leaves
    )


def client_state(c: ClientConn) -> dict[str, Any]:
    """Everything the new process needs to keep serving `c` as if nothing happened: who it is, the settings
    it asked for (replayed on whichever server it gets next), its cancel key, its counters and its prepared
    statements (the pool-owned names are re-resolved in the new process's cache)."""
    st: dict[str, Any] = {
        "kind": "client",
        "addr": c.addr,
        "is_unix": c.is_unix,
        "user": c.user,
        "database": c.database,
        "startup": c.startup,
        "application_name": c.application_name,
        "want": [[k, v] for k, v in c.want.items()],
        "pid": c.pid,
        "secret": c.secret,
        "connect_time": c.connect_time,
        "query_count": c.query_count,
        "xact_count": c.xact_count,
        "error_count": c.error_count,
        "ps": bool(c.ps),
        "planner_sig": list(c.planner_sig),
        "named": [[_b64(name), _b64(s.query), _b64(s.key[1])] for name, s in c.named.items()],
        "unnamed": None if c.unnamed is None else [_b64(c.unnamed.query), _b64(c.unnamed.key[1])],
    }
    return st


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
            c.named[_unb64(name)] = cache.get(_unb64(q), _unb64(types), c.planner_sig)
        un = st.get("unnamed")
        if un:
            c.unnamed = cache.get(_unb64(un[0]), _unb64(un[1]), c.planner_sig)
    elif st.get("named"):
        log.warning("client %s (%s@%s) had %d prepared statement(s); prepared_statements is off now: they are "
                    "gone", c.addr, c.user, c.database, len(st["named"]))
    c.state = READY
    _register_cancel_key(app, c, int(st["pid"]), int(st["secret"]))
    c._apply_mask()


def _register_cancel_key(app: App, c: ClientConn, pid: int, secret: int) -> None:
    reg = app.cancels
    with reg.lock:
        if pid and pid not in reg.by_pid:
            reg.by_pid[pid] = (secret, c)
            c.pid, c.secret = pid, secret
            return
    # Taken (cannot happen with the pid gap unless the counter wrapped): the client's old key is lost.
    c.pid, c.secret = reg.register(c)
    log.warning("client %s: cancel key %d already in use after the handover; its cancel requests will be "
                "ignored", c.addr, pid)


# ------------------------------------------------------------------------------------------ new process
@dataclass
class Inherited:
    """What an upgrading parent passed us (empty for an ordinary start)."""

    ready_fd: int | None = None
    migration_fd: int | None = None
    listeners: list[tuple[str, int]] = field(default_factory=list)
    cancel_pid_base: int | None = None

    @property
    def is_upgrade(self) -> bool:
        return self.ready_fd is not None


def _fd_env(name: str) -> int | None:
    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        fd = int(raw)
        os.fstat(fd)
    except (ValueError, OSError):
        log.warning("ignoring %s=%r: not an open file descriptor", name, raw)
        return None
    # Ours alone: a later upgrade passes exactly the descriptors it means to.
    os.set_inheritable(fd, False)
    return fd


def take_inherited() -> Inherited:
    """Read (and remove from the environment, so our own children never see stale values) what an upgrading
    parent passed."""
    inh = Inherited(ready_fd=_fd_env(ENV_READY_FD), migration_fd=_fd_env(ENV_MIGRATION_FD))
    for part in (os.environ.get(ENV_LISTEN_FDS) or "").split(","):
        kind, _, num = part.partition(":")
        if kind in ("tcp", "unix") and num.isdigit():
            try:
                os.fstat(int(num))
            except OSError:
                continue
            os.set_inheritable(int(num), False)
            inh.listeners.append((kind, int(num)))
    base = os.environ.get(ENV_CANCEL_PID_BASE, "")
    if base.isdigit():
        inh.cancel_pid_base = int(base)
    for k in _OUR_ENV:
        os.environ.pop(k, None)
    return inh


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
                pool = app.pools.get((str(rec["database"]), str(rec["user"])))
                if pool is not None:
                    with pool.lock:
                        if pool.scram_client_key is None:
                            pool.scram_client_key = _unb64(rec["scram_client_key"])
            elif kind == "done":
                break
            else:
                log.warning("handover: unexpected record %r", kind)
    finally:
        sock.close()
        log.info("handover finished: %d client(s) taken over from the old process", n)


# ------------------------------------------------------------------------------------------ old process
def _listener_fds(app: App) -> list[tuple[str, int]]:
    return [("unix" if lst.is_unix else "tcp", lst.sock.fileno()) for w in app.workers for lst in w.listeners]


def _abort(why: str, output: str = "") -> None:
    log.error("BINARY UPGRADE ABORTED: %s; still serving with this process (pid %d)%s", why, os.getpid(),
              f"\n{output.rstrip()}" if output.strip() else "")


def validate(cmd: list[str]) -> bool:
    """Run the new binary with `-t`; False (and the reason logged) if it refuses the configuration."""
    try:
        r = subprocess.run([*cmd, "-t"], cwd=START_CWD, env=clean_env(), stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=VALIDATE_TIMEOUT)
    except subprocess.TimeoutExpired:
        _abort(f"`{' '.join(cmd)} -t` did not finish within {VALIDATE_TIMEOUT:.0f}s")
        return False
    except OSError as e:
        if e.errno in (errno.EMFILE, errno.ENFILE):
            # Out of descriptors: the check cannot run; the new process still checks its config at start.
            log.warning("binary upgrade: cannot run the configuration check (%s); going ahead without it", e)
            return True
        _abort(f"cannot run `{' '.join(cmd)} -t`: {e}")
        return False
    out = (r.stdout + r.stderr).decode("utf-8", "replace")
    if r.returncode != 0:
        _abort(f"the configuration check `{' '.join(cmd)} -t` failed (exit status {r.returncode})", out)
        return False
    return True


def _wait_ready(rfd: int, proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The new process's pid once it reports ready; None if it exits, closes the pipe or times out."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        r, _, _ = select.select([rfd], [], [], min(left, 0.2))
        if r:
            chunk = os.read(rfd, 128)
            if not chunk:
                return None
            data += chunk
            if data.endswith(b"\n"):
                parts = data.split()
                if len(parts) == 2 and parts[0] == b"READY" and parts[1].isdigit():
                    return int(parts[1])
                return None
        elif proc.poll() not in (None, 0):
            # (0 is the parent of a daemon that detached: the daemon still holds the pipe.)
            return None


def start_upgrade(app: App) -> Handoff | None:
    """Validate, spawn the new process and wait for it; on success start handing clients over and return
    the handoff (the caller drains it). None when the upgrade was aborted: keep serving."""
    cmd = upgrade_command()
    log.info("binary upgrade: checking the configuration with `%s -t`", " ".join(cmd))
    if not validate(cmd):
        return None
    listeners = _listener_fds(app)
    rfd, wfd = os.pipe()
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = clean_env()
    env[ENV_READY_FD] = str(wfd)
    env[ENV_MIGRATION_FD] = str(child.fileno())
    env[ENV_LISTEN_FDS] = ",".join(f"{kind}:{fd}" for kind, fd in listeners)
    with app.cancels.lock:
        base = app.cancels.next_pid + CANCEL_PID_GAP
    env[ENV_CANCEL_PID_BASE] = str(fake_pid(base))
    try:
        # Same process group and session (a Ctrl-C reaches both; a supervisor's group kill too); stdio is
        # inherited, so both write to the same log.
        proc = subprocess.Popen(cmd, cwd=START_CWD, env=env, pass_fds=[wfd, child.fileno(), *(fd for _, fd in listeners)])
    except OSError as e:
        os.close(rfd)
        parent.close()
        _abort(f"cannot start `{' '.join(cmd)}`: {e}")
        return None
    finally:
        os.close(wfd)
        child.close()
    log.info("binary upgrade: started `%s` (pid %d); waiting for it to be ready", " ".join(cmd), proc.pid)
    try:
        pid = _wait_ready(rfd, proc, READY_TIMEOUT)
    finally:
        os.close(rfd)
    if pid is None:
        code = proc.poll()
        if code is None:
            proc.kill()
            proc.wait(5)
        parent.close()
        _abort("the new process did not become ready" + (f" (it exited with status {code})" if code else
                                                         f" within {READY_TIMEOUT:.0f}s (killed)"))
        return None
    log.info("binary upgrade: new process %d is ready; handing clients over", pid)
    systemd.main_pid(pid)
    h = Handoff(app, parent, pid, proc)
    h.start()
    return h


class Handoff:
    """The old process's side once the new one is ready: stop accepting, move idle clients as they become
    idle, close servers nobody here needs any more, and tell when nothing is left."""

    def __init__(self, app: App, sock: socket.socket, child_pid: int, proc: subprocess.Popen[bytes]) -> None:
        self.app = app
        self.sock = sock
        self.child_pid = child_pid
        self.proc = proc
        self.q: queue.SimpleQueue[tuple[int, dict[str, Any]] | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.inflight = 0
        self.sent_keys: dict[tuple[str, str], bytes] = {}
        self.left = [-1] * len(app.workers)  # clients still here, per worker (-1: not counted yet)
        self.ticks = [0] * len(app.workers)
        self.active = True
        self.failed = False
        self.moved = 0
        self.sender = threading.Thread(target=self._send_loop, name="handover-send", daemon=True)

    # -- control (main thread)
    def start(self) -> None:
        for pool in self.app.pool_list:
            if pool.scram_client_key is not None:
                self._queue_pool_key(pool)
        self.sender.start()
        for w in self.app.workers:
            w.loop.call_soon_threadsafe(self._begin_in, w)

    def child_alive(self) -> bool:
        if self.proc.pid == self.child_pid:
            return self.proc.poll() is None
        try:
            os.kill(self.child_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def drain(self) -> int | None:
        """Wait until every client has moved or left (at most shutdown_timeout), then stop; the exit code.
        None if the new process died meanwhile: this process took over again and keeps serving."""
        app = self.app
        timeout = app.config.general.shutdown_timeout / 1000.0
        deadline = time.monotonic() + timeout
        reported = -1
        while True:
            if not self.child_alive() or self.failed:
                self._resume()
                return None
            with self.lock:
                inflight = self.inflight
            left = sum(x for x in self.left if x > 0)
            if min(self.left) >= 0 and left == 0 and inflight == 0:
                log.info("binary upgrade: all clients handed over (%d); this process (pid %d) exits now",
                         self.moved, os.getpid())
                break
            if left != reported and min(self.left) >= 0:
                log.info("binary upgrade: %d client(s) still busy here; %d moved so far", left, self.moved)
                reported = left
            if app.shutdown_pending():
                log.warning("binary upgrade: shutdown requested while handing over; closing the %d client(s) "
                            "still here", left)
                break
            if time.monotonic() > deadline:
                log.warning("binary upgrade: shutdown_timeout (%.1fs) reached: closing the %d client(s) still "
                            "here", timeout, left)
                break
            app.wait_wakeup(0.05)
        self._finish()
        app.stop_workers("pooler is shut down now", unlink_unix=False)
        return 0

    def _finish(self) -> None:
        self.active = False
        self.q.put(None)
        self.sender.join(10)

    def _resume(self) -> None:
        """The new process is gone: accept again and keep serving here (clients already sent are lost)."""
        code = self.proc.poll()
        log.error("BINARY UPGRADE FAILED: the new process %d exited%s during the handover; this process (pid "
                  "%d) accepts connections again", self.child_pid, f" (status {code})" if code else "",
                  os.getpid())
        self.active = False
        self.q.put(None)
        self.sender.join(5)
        systemd.main_pid(os.getpid())
        for w in self.app.workers:
            w.loop.call_soon_threadsafe(self._resume_in, w)

    # -- per worker (worker threads)
    def _begin_in(self, w: Worker) -> None:
        # Stop accepting but keep the sockets open: they are shared with the new process, which accepts
        # from them now, and they are what we go back to if it dies.
        w.accepting = False
        for lst in w.listeners:
            try:
                w.loop.sel.unregister(lst.sock)
            except (KeyError, ValueError, OSError):
                pass
        self._tick(w)

    def _resume_in(self, w: Worker) -> None:
        w.accepting = True
        for lst in w.listeners:
            try:
                w.loop.sel.register(lst.sock, 1, lst)
            except (KeyError, ValueError, OSError):
                pass

    def _tick(self, w: Worker) -> None:
        if not self.active:
            return
        from pgdoorman.session.client import ADMIN

        busy = 0
        for c in list(w.clients):
            if c.closed or c.state == ADMIN:
                continue  # admin sessions stay until the end
            if movable(c):
                self._move(w, c)
            else:
                busy += 1
        self.left[w.id] = busy
        self.ticks[w.id] += 1
        if self.ticks[w.id] % TRIM_EVERY == 0:
            self._trim(w)
        w.loop.call_later(TICK, self._tick, w)

    def _move(self, w: Worker, c: ClientConn) -> None:
        try:
            st = client_state(c)
            fd = os.dup(c.sock.fileno())
        except OSError as e:
            log.warning("binary upgrade: cannot hand over client %s yet: %s", c.addr, e)
            return
        pool = c.pool
        if pool is not None and pool.scram_client_key is not None:
            self._queue_pool_key(pool)
        # Closing our descriptor leaves the connection open: the duplicate keeps it until it is sent.
        c.close("handed over to the new process")
        with self.lock:
            self.inflight += 1
        self.q.put((fd, st))

    def _queue_pool_key(self, pool: Any) -> None:
        key = pool.scram_client_key
        k = (pool.database, pool.username)
        with self.lock:
            if key is None or self.sent_keys.get(k) == key:
                return
            self.sent_keys[k] = key
            self.inflight += 1
        self.q.put((-1, {"kind": "pool", "database": pool.database, "user": pool.username,
                         "scram_client_key": _b64(key)}))

    def _trim(self, w: Worker) -> None:
        """Close this shard's idle servers of pools nobody here waits for: the new process has its own."""
        for pool in self.app.pool_list:
            for s in pool.drain_idle(w.id, unless_waited_for=True):
                s.retire("binary upgrade: not needed by the old process")

    # -- sender thread
    def _send_loop(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                try:
                    if not self.failed:
                        send_record(self.sock, {"kind": "done"}, [])
                except OSError:
                    pass
                self.sock.close()
                return
            fd, rec = item
            try:
                if not self.failed:
                    send_record(self.sock, rec, [fd] if fd >= 0 else [])
                    if fd >= 0:
                        self.moved += 1
                        os.close(fd)
                    fd = -1
            except OSError as e:
                if not self.failed:
                    log.error("binary upgrade: handing a client over failed: %s", e)
                self.failed = True
            finally:
                if fd >= 0:
                    # Not delivered: take the client back here rather than drop it.
                    w = self.app.workers[0]
                    w.loop.call_soon_threadsafe(restore_client, self.app, w, fd, rec)
                with self.lock:
                    self.inflight -= 1

