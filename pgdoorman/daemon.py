"""Daemon mode (`-d`): double fork and setsid to leave the terminal and the caller's session, stdio pointed
at /dev/null (a log file the caller redirected to is kept), and the pid file `daemon_pid_file`. The command
that started the daemon waits until the daemon reports that it serves (exit 0) or why it could not (exit 1),
so `pg_doorman -d` in a script fails when the daemon does.
"""

from __future__ import annotations

import os
import select
import stat
import sys
import time

# How long the starting command waits for the daemon to report (config is already loaded; binding and
# starting the workers is quick).
REPORT_TIMEOUT = 60.0


class DaemonError(Exception):
    pass


def read_pid_file(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _looks_like_us(pid: int) -> bool:
    """A live process that is a pgdoorman (so a stale pid file naming a recycled pid does not block)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return True  # no /proc: trust the pid file
    return b"pgdoorman" in cmd or b"pg_doorman" in cmd


def check_not_running(path: str) -> None:
    pid = read_pid_file(path)
    if pid is not None and pid != os.getpid() and _looks_like_us(pid):
        raise DaemonError(f"pid file {path} names process {pid}, a running pgdoorman: stop it first "
                          "(or remove the pid file if it is not one)")


def write_pid_file(path: str, pid: int) -> None:
    tmp = f"{path}.{pid}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, f"{pid}\n".encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)  # atomic: readers never see a half-written file


def remove_pid_file(path: str, pid: int | None = None) -> bool:
    """Remove the pid file if it still names us (after a binary upgrade it names the new process)."""
    pid = os.getpid() if pid is None else pid
    if read_pid_file(path) != pid:
        return False
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


class Daemon:
    """Handle held by the daemon process: report success or failure to the waiting command, and clean up
    the pid file at exit."""

    def __init__(self, pid_file: str, report_fd: int | None) -> None:
        self.pid_file = pid_file
        self.report_fd = report_fd

    def _report(self, text: str) -> None:
        fd = self.report_fd
        if fd is None:
            return
        self.report_fd = None
        try:
            os.write(fd, text.encode("utf-8", "replace"))
        except OSError:
            pass
        os.close(fd)

    def ready(self) -> None:
        self._report(f"OK {os.getpid()}\n")

    def failed(self, why: str) -> None:
        # The pid file goes first: whoever waits for our report may look for it as soon as it has one.
        self.cleanup()
        self._report(f"ERROR {why}\n")

    def cleanup(self) -> None:
        remove_pid_file(self.pid_file)


def _redirect_stdio() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    for fd in (1, 2):
        try:
            keep = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            keep = False
        # A regular file is a log the caller chose (`pg_doorman -d cfg 2>>log`); a terminal or a pipe would
        # tie the daemon to the caller.
        if not keep:
            os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)


def _wait_for_report(rfd: int, pid: int) -> int:
    deadline = time.monotonic() + REPORT_TIMEOUT
    data = b""
    while time.monotonic() < deadline:
        r, _, _ = select.select([rfd], [], [], 0.5)
        if not r:
            continue
        chunk = os.read(rfd, 4096)
        if not chunk:
            break
        data += chunk
    text = data.decode("utf-8", "replace").strip()
    try:
        os.waitpid(pid, 0)  # the intermediate child: it exits right after the second fork
    except ChildProcessError:
        pass
    if text.startswith("OK "):
        print(f"pg_doorman: running as a daemon, pid {text[3:]}", file=sys.stderr)
        return 0
    if text.startswith("ERROR "):
        print(f"pg_doorman: the daemon failed to start: {text[6:]}", file=sys.stderr)
    elif not text and time.monotonic() >= deadline:
        print(f"pg_doorman: the daemon did not report within {REPORT_TIMEOUT:.0f}s", file=sys.stderr)
    else:
        print("pg_doorman: the daemon exited before it was ready (see its log)", file=sys.stderr)
    return 1


def daemonize(pid_file: str, check_running: bool = True) -> Daemon:
    """Detach. Returns only in the daemon; the calling process exits with the daemon's startup result.
    Must run before any thread is started (fork keeps only the calling thread)."""
    if check_running:
        check_not_running(pid_file)
    sys.stdout.flush()
    sys.stderr.flush()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(wfd)
        code = _wait_for_report(rfd, pid)
        sys.stderr.flush()
        os._exit(code)
    os.close(rfd)
    os.setsid()  # new session: no controlling terminal, out of the caller's process group
    if os.fork() > 0:
        os._exit(0)  # the session leader exits, so the daemon can never reacquire a terminal
    os.chdir("/")
    _redirect_stdio()
    d = Daemon(pid_file, wfd)
    try:
        write_pid_file(pid_file, os.getpid())
    except OSError as e:
        d.failed(f"cannot write the pid file {pid_file}: {e}")
        os._exit(1)
    return d
