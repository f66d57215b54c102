"""Binary upgrade, the old process's side: validate the new binary with `-t`, start it with the same command
line, share the listening sockets with it, then hand every idle client over as it becomes idle.

Clients go (socket and session state) through an AF_UNIX socketpair with SCM_RIGHTS (records.py); clients in
a transaction finish first, then move. The new process's side is receive.py; the environment contract
between the two is inherit.py.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pgdoorman import systemd
from pgdoorman.core.cancel import fake_pid
from pgdoorman.upgrade import inherit
from pgdoorman.upgrade.inherit import (
    ENV_CANCEL_PID_BASE,
    ENV_LISTEN_FDS,
    ENV_MIGRATION_FD,
    ENV_READY_FD,
    clean_env,
)
from pgdoorman.upgrade.receive import adopt
from pgdoorman.upgrade.records import b64, send_record

if TYPE_CHECKING:
    from pgdoorman.app import App
    from pgdoorman.session.client import ClientConn
    from pgdoorman.worker import Worker

log = logging.getLogger("pgdoorman.upgrade")

VALIDATE_TIMEOUT = 30.0  # for `<new binary> -t`
READY_TIMEOUT = 15.0  # from spawning the new process to its readiness byte
TICK = 0.005  # how often each worker looks for clients that became idle and can move
TRIM_EVERY = 20  # ticks between closing idle servers the old process no longer needs
# Cancel keys of the new process start this far from the old one's counter so the two never collide while
# the old process is still logging clients in.
CANCEL_PID_GAP = 1_000_000

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
    script = os.path.join(inherit.START_CWD, argv[0]) if argv and argv[0] else ""
    if script and os.path.isfile(script) and os.access(script, os.X_OK) and not script.endswith(".py"):
        return [os.path.abspath(script), *argv[1:]]
    if orig:
        return [sys.executable, *orig[1:]]
    return [sys.executable, "-m", "pgdoorman", *argv[1:]]


# ------------------------------------------------------------------------------------------ client state
# ------------------------------------------------------------------------------------------ old process
def _listener_fds(app: App) -> list[tuple[str, int]]:
    return [("unix" if lst.is_unix else "tcp", lst.sock.fileno()) for w in app.workers for lst in w.listeners]


def _abort(why: str, output: str = "") -> None:
    log.error("BINARY UPGRADE ABORTED: %s; still serving with this process (pid %d)%s", why, os.getpid(),
              f"\n{output.rstrip()}" if output.strip() else "")


def validate(cmd: list[str]) -> bool:
    """Run the new binary with `-t`; False (and the reason logged) if it refuses the configuration."""
    try:
        r = subprocess.run([*cmd, "-t"], cwd=inherit.START_CWD, env=clean_env(), stdin=subprocess.DEVNULL,
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


class Settle:
    """Whether every worker has counted its clients since the last one moving between two workers arrived.
    A client Janitor.place was moving when the workers stopped moving clients (placement.Transit) is in
    neither worker's count until the other adopts it, and counted or handed over on that one's next tick:
    until then `Handoff.drain` must not take the counts' zeros for "nobody left"."""

    __slots__ = ("since",)

    def __init__(self, nworkers: int) -> None:
        self.since: list[int] | None = [-1] * nworkers  # each worker's tick count when nothing was moving

    def check(self, moving: bool, ticks: Sequence[int]) -> bool:
        if moving:
            self.since = None
            return False
        if self.since is None:
            self.since = list(ticks)
        return all(t > s for t, s in zip(ticks, self.since, strict=True))


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
        proc = subprocess.Popen(cmd, cwd=inherit.START_CWD, env=env, pass_fds=[wfd, child.fileno(), *(fd for _, fd in listeners)])
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


def run_upgrade(app: App) -> int | None:
    """A binary upgrade, run on the main thread when one is requested (the App's upgrade hook, wired by
    serve.py): the exit code once clients are handed over, None if this process keeps serving."""
    if app.handed_over:
        log.warning("binary upgrade already in progress: request ignored")
        return None
    handoff = start_upgrade(app)
    if handoff is None:
        return None
    app.handed_over = True
    if app.metrics is not None:
        # The new process binds the metrics port as soon as we let go of it.
        app.metrics.stop()
        app.metrics = None
    code = handoff.drain()
    if code is None:
        app.handed_over = False
        app.start_metrics(retry=True)
    return code


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
        settle = Settle(len(self.ticks))
        while True:
            if not self.child_alive() or self.failed:
                self._resume()
                return None
            with self.lock:
                inflight = self.inflight
            left = sum(x for x in self.left if x > 0)
            settled = settle.check(bool(app.transit.moving), self.ticks)
            if min(self.left) >= 0 and left == 0 and inflight == 0 and settled:
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
        w.pause_accepting()
        self._tick(w)

    def _resume_in(self, w: Worker) -> None:
        w.resume_accepting()

    def _tick(self, w: Worker) -> None:
        if not self.active:
            return
        from pgdoorman.session.client import ADMIN

        busy = 0
        for c in list(w.clients):
            if c.closed or c.state == ADMIN:
                continue  # admin sessions stay until the end
            if c.movable:
                self._move(w, c)
            else:
                busy += 1
        self.left[w.id] = busy
        self.ticks[w.id] += 1
        if self.ticks[w.id] % TRIM_EVERY == 0:
            self.app.janitors[w.id].trim()  # idle servers nobody here needs: the new process has its own
        w.loop.call_later(TICK, self._tick, w)

    def _move(self, w: Worker, c: ClientConn) -> None:
        try:
            st = c.export_state()
            fd = os.dup(c.sock.fileno())
        except OSError as e:
            log.warning("binary upgrade: cannot hand over client %s yet: %s", c.addr, e)
            return
        pool = c.pool
        if pool is not None and pool.dynamic:
            st["auth_query"] = True  # the new process looks its user up again before taking it (receive.py)
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
                         "scram_client_key": b64(key)}))

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
                    adopt(self.app, self.app.workers[0], fd, rec)
                with self.lock:
                    self.inflight -= 1

