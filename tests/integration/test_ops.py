"""Operations end to end on real processes: binary upgrade (SIGUSR2, SIGINT without a terminal, the
console's UPGRADE) under pgbench and with idle, in-transaction, session-mode, prepared-statement and
cancel-key holding clients; SIGHUP and RELOAD under pgbench; broken configs on upgrade and reload;
SIGINT with a terminal; daemon mode with its pid file; systemd readiness over a test NOTIFY_SOCKET.

Which process answers is proven from /proc: the pooler-side socket of each client connection must belong
to the new process once the old one has exited."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.support.cluster import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    DBNAME,
    MD5_PASSWORD,
    MD5_USER,
    SCRAM_PASSWORD,
    SCRAM_USER,
)
from tests.support.pooler import ROOT, Pooler, free_port, wait_for

pytestmark = pytest.mark.timeout(240)

READY_RE = re.compile(r"new process (\d+) is ready")


# ------------------------------------------------------------------------------------------ helpers
def client(p: Any, user: str = SCRAM_USER, password: str = SCRAM_PASSWORD, db: str = DBNAME,
           **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(p.dsn(user, password, db), autocommit=kw.pop("autocommit", True), **kw)


def admin(p: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(p.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgdoorman"), autocommit=True, prepare_threshold=None)


def new_pids(p: Pooler) -> list[int]:
    return [int(x) for x in READY_RE.findall(p.log())]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def upgrade(p: Pooler, sig: int = signal.SIGUSR2, old_pid: int | None = None, timeout: float = 60) -> int:
    """Signal the serving process and wait until a new one reported ready; returns its pid."""
    before = len(new_pids(p))
    target = old_pid or current_pid(p)
    os.kill(target, sig)
    wait_for(lambda: len(new_pids(p)) > before, timeout, "the new process to be ready")
    return new_pids(p)[-1]


def current_pid(p: Pooler) -> int:
    pids = new_pids(p)
    assert p.proc is not None
    return pids[-1] if pids else p.proc.pid


def wait_exit(pid: int, p: Pooler | None = None, timeout: float = 60) -> None:
    if p is not None and p.proc is not None and p.proc.pid == pid:
        p.proc.wait(timeout)
        assert p.proc.returncode == 0, p.log_tail()
        return
    wait_for(lambda: not alive(pid), timeout, f"process {pid} to exit")


def stop_pid(pid: int, timeout: float = 20) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _socket_inodes(pid: int) -> set[int]:
    out: set[int] = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    out.add(int(target[8:-1]))
    except FileNotFoundError:
        pass
    return out


def owner_of(conn: psycopg.Connection[Any], pooler_port: int, pids: list[int]) -> list[int]:
    """Which of `pids` holds the pooler side of `conn`'s TCP connection."""
    fd = conn.pgconn.socket
    with socket.socket(fileno=os.dup(fd)) as s:
        local_port = s.getsockname()[1]
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            lport = int(parts[1].split(":")[1], 16)
            rport = int(parts[2].split(":")[1], 16)
            if lport == pooler_port and rport == local_port:
                inode = int(parts[9])
    assert inode is not None, "pooler side of the connection not found in /proc/net/tcp"
    return [pid for pid in pids if inode in _socket_inodes(pid)]


def pgbench_exe() -> str:
    exe = shutil.which("pgbench")
    if exe:
        return exe
    for cand in sorted(os.listdir("/usr/lib/postgresql"), reverse=True) if os.path.isdir("/usr/lib/postgresql") else []:
        path = f"/usr/lib/postgresql/{cand}/bin/pgbench"
        if os.access(path, os.X_OK):
            return path
    pytest.skip("pgbench is not installed (apt-get install postgresql-15)")


BENCH_SCRIPT = """\\set x random(1, 1000000)
BEGIN;
SELECT :x;
SELECT pg_sleep(0.001);
COMMIT;
SELECT :x + 1;
"""


def start_pgbench(p: Pooler, tmp_path: Path, clients: int, seconds: int, mode: str = "simple") -> subprocess.Popen[str]:
    script = tmp_path / "ops.sql"
    script.write_text(BENCH_SCRIPT)
    env = {**os.environ, "PGPASSWORD": SCRAM_PASSWORD, "PGSSLMODE": "disable"}
    cmd = [pgbench_exe(), "-n", "-h", p.host, "-p", str(p.port), "-U", SCRAM_USER, "-c", str(clients),
           "-j", "4", "-T", str(seconds), "-M", mode, "-f", str(script), DBNAME]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish_pgbench(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=120)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    done = re.search(r"number of transactions actually processed: (\d+)", out)
    assert proc.returncode == 0 and failed and failed.group(1) == "0" and "aborted" not in out, out
    assert done is not None, out
    return int(done.group(1)), out


def pgbench_clients_in(p: Pooler, n: int) -> Callable[[], bool]:
    def check() -> bool:
        with admin(p) as a:
            rows = a.execute("SHOW POOLS").fetchall()
            names = [d.name for d in a.execute("SHOW POOLS").description or []]
        total = 0
        for r in rows:
            d = dict(zip(names, r, strict=True))
            if d["user"] == SCRAM_USER and d["database"] == DBNAME:
                total += int(d["cl_active"]) + int(d["cl_idle"]) + int(d["cl_waiting"])
        return total >= n
    return check


@contextmanager
def idle_clients(p: Pooler, n: int) -> Iterator[list[psycopg.Connection[Any]]]:
    conns: list[psycopg.Connection[Any]] = []
    try:
        for i in range(n):
            user, pw = (SCRAM_USER, SCRAM_PASSWORD) if i % 2 == 0 else (MD5_USER, MD5_PASSWORD)
            c = client(p, user, pw)
            # A setting each must keep across the move (replayed on whichever server it gets next).
            c.execute(f"SET application_name = 'idle{i}'")
            assert c.execute("select 1").fetchone() == (1,)
            conns.append(c)
        yield conns
    finally:
        for c in conns:
            with suppress(Exception):
                c.close()


def check_idle(conns: list[psycopg.Connection[Any]], p: Pooler, owner: int, others: list[int]) -> None:
    for i, c in enumerate(conns):
        row = c.execute("select current_setting('application_name'), 40 + 2").fetchone()
        assert row == (f"idle{i}", 42), row
        assert owner_of(c, p.port, [owner, *others]) == [owner], f"client {i} is not served by {owner}"


def bench_pooler(pooler_factory: Any, **kw: Any) -> Pooler:
    general = {"shutdown_timeout": 30000, "worker_threads": 2, "query_wait_timeout": 30000, **kw.pop("general", {})}
    return pooler_factory(pool_size=kw.pop("pool_size", 20), general=general, **kw)


# ------------------------------------------------------------------------------------------ upgrade
@pytest.mark.concurrency
@pytest.mark.parametrize("mode", ["simple", "prepared"])
def test_upgrade_under_pgbench_keeps_every_client(pooler_factory: Any, tmp_path: Path, mode: str) -> None:
    p = bench_pooler(pooler_factory)
    old = current_pid(p)
    with idle_clients(p, 20) as idle:
        # Held open across the signal: they move once they commit.
        in_tx = [client(p) for _ in range(3)]
        for c in in_tx:
            c.execute("BEGIN")
            c.execute("SELECT 1")
        # Named prepared statements (psycopg prepares at once with prepare_threshold=0) must keep working.
        prep = client(p, prepare_threshold=0)
        for i in range(3):
            assert prep.execute("select %s::int * 2", (i,)).fetchone() == (2 * i,)
        if mode == "prepared":
            # pgbench prepares each statement synchronously (PQprepare) the first time a client runs it. For
            # the statement after COMMIT no client holds a server, so the pooler needs one to answer the
            # Parse unless its pool cache already knows the statement; with 100 clients on 4 threads the
            # threads blocked there can hold every server in an open transaction: a deadlock that has
            # nothing to do with the upgrade (reported to the core). One client per thread fills the cache.
            finish_pgbench(start_pgbench(p, tmp_path, clients=4, seconds=1, mode=mode))
        bench = start_pgbench(p, tmp_path, clients=100, seconds=14, mode=mode)
        try:
            wait_for(pgbench_clients_in(p, 100), 30, "pgbench's 100 clients")
            time.sleep(2)
            new = upgrade(p, signal.SIGUSR2)
            assert new != old
            time.sleep(1)
            assert alive(old), "the old process must wait for its clients in a transaction"
            for c in in_tx:
                assert c.execute("SELECT 2").fetchone() == (2,)
                c.execute("COMMIT")
            wait_exit(old, p)
        finally:
            done, out = finish_pgbench(bench)
        assert done > 0
        assert "handed over to the new process" in p.log()
        check_idle(idle, p, new, [old])
        for c in in_tx:
            assert c.execute("select 3").fetchone() == (3,)
            assert owner_of(c, p.port, [new, old]) == [new]
        for i in range(3, 6):
            assert prep.execute("select %s::int * 2", (i,)).fetchone() == (2 * i,)
        assert owner_of(prep, p.port, [new, old]) == [new]
        with admin(p) as a:
            assert a.execute("SHOW VERSION").fetchone()
            assert owner_of(a, p.port, [new, old]) == [new]
        for c in [*in_tx, prep]:
            c.close()
    stop_pid(new)


def test_cancel_key_and_settings_survive_the_move(pooler_factory: Any) -> None:
    p = pooler_factory(pool_size=3)
    old = current_pid(p)
    c = client(p)
    # A reported setting (transaction mode replays those on every server the client gets).
    c.execute("SET DateStyle = 'German, DMY'")
    c.execute("SET myapp.moved = 'yes'")  # a custom (placeholder) setting follows it too
    key = (c.pgconn.backend_pid,)
    new = upgrade(p)
    wait_exit(old, p)
    assert c.pgconn.backend_pid == key[0]
    assert c.execute("show DateStyle").fetchone() == ("German, DMY",)
    assert c.execute("show myapp.moved").fetchone() == ("yes",)
    result: list[BaseException | None] = []

    def sleeper() -> None:
        try:
            c.execute("select pg_sleep(20)")
            result.append(None)
        except BaseException as e:  # noqa: BLE001
            result.append(e)

    th = threading.Thread(target=sleeper)
    th.start()
    with client(p) as watcher:
        wait_for(lambda: watcher.execute(
            "select count(*) from pg_stat_activity where query = 'select pg_sleep(20)' and state = 'active'"
        ).fetchone() == (1,), what="the sleeper's query to run")
    t0 = time.monotonic()
    c.cancel()  # the cancel key handed out by the old process reaches the new one
    th.join(15)
    assert result and isinstance(result[0], errors.QueryCanceled), result
    assert time.monotonic() - t0 < 5
    assert c.execute("select 1").fetchone() == (1,)
    c.close()
    stop_pid(new)


def test_session_mode_client_stays_on_old_process_until_it_leaves(pooler_factory: Any) -> None:
    p = pooler_factory(start=False, pool_size=3, general={"shutdown_timeout": 30000})
    p.config["pools"]["app_session"] = {**p.config["pools"][DBNAME], "pool_mode": "session", "server_database": DBNAME}
    p.start()
    old = current_pid(p)
    sess = client(p, db="app_session")
    sess.execute("CREATE TEMP TABLE t(x int)")
    tx = client(p)
    new = upgrade(p)
    time.sleep(1.5)
    assert alive(old)
    # The session keeps its server (temp table and all) on the old process.
    sess.execute("INSERT INTO t VALUES (1)")
    assert sess.execute("select count(*) from t").fetchone() == (1,)
    assert owner_of(sess, p.port, [old, new]) == [old]
    assert owner_of(tx, p.port, [old, new]) == [new]
    sess.close()
    wait_exit(old, p, timeout=20)
    with client(p, db="app_session") as s2:
        assert s2.execute("select 1").fetchone() == (1,)
        assert owner_of(s2, p.port, [new]) == [new]
    tx.close()
    stop_pid(new)


def test_pinned_transaction_client_moves_once_unpinned(pooler_factory: Any) -> None:
    """A transaction-mode client pinned to its server (a temporary table) stays on the old process with it,
    and moves to the new one once it drops the table (docs/transaction-mode.md)."""
    p = pooler_factory(pool_size=3, general={"shutdown_timeout": 30000})
    old = current_pid(p)
    pinned = client(p)
    pinned.execute("CREATE TEMP TABLE pin_t(x int)")
    new = upgrade(p)
    time.sleep(1.5)
    assert alive(old)
    pinned.execute("INSERT INTO pin_t VALUES (1)")
    assert pinned.execute("select count(*) from pin_t").fetchone() == (1,)
    assert owner_of(pinned, p.port, [old, new]) == [old]
    pinned.execute("DROP TABLE pin_t")
    wait_exit(old, p, timeout=20)  # it moved: nothing keeps the old process
    assert pinned.execute("select to_regclass('pin_t') is null").fetchone() == (True,)
    assert owner_of(pinned, p.port, [new]) == [new]
    pinned.close()
    stop_pid(new)


def test_session_client_is_closed_at_shutdown_timeout(pooler_factory: Any) -> None:
    p = pooler_factory(pool_mode="session", pool_size=2, general={"shutdown_timeout": 2000})
    old = current_pid(p)
    sess = client(p)
    new = upgrade(p)
    t0 = time.monotonic()
    wait_exit(old, p, timeout=20)
    assert time.monotonic() - t0 < 10
    with pytest.raises(psycopg.OperationalError) as ei:
        sess.execute("select 1")
    assert "shut down" in str(ei.value) or "closed" in str(ei.value).lower()
    with client(p) as c2:
        assert c2.execute("select 1").fetchone() == (1,)
    stop_pid(new)


def test_two_upgrades_in_a_row_and_sigint_without_terminal(pooler_factory: Any) -> None:
    p = pooler_factory(pool_size=3)
    first = current_pid(p)
    with idle_clients(p, 6) as idle:
        second = upgrade(p, signal.SIGUSR2)
        wait_exit(first, p)
        check_idle(idle, p, second, [first])
        # stdin is /dev/null here, so SIGINT means "upgrade", as for PgDoorman under a service manager.
        third = upgrade(p, signal.SIGINT, old_pid=second)
        wait_exit(second)
        check_idle(idle, p, third, [second])
        assert len({first, second, third}) == 3
    stop_pid(third)


def test_broken_config_aborts_upgrade_and_reload_and_old_process_serves(pooler_factory: Any) -> None:
    p = pooler_factory(pool_size=3)
    pid = current_pid(p)
    with idle_clients(p, 4) as idle:
        good = Path(p.config_path).read_text()
        Path(p.config_path).write_text(good + "\ngeneral:\n  port: not-a-port\n")
        os.kill(pid, signal.SIGUSR2)
        assert p.wait_for_log("BINARY UPGRADE ABORTED", 30), p.log_tail()
        os.kill(pid, signal.SIGHUP)
        assert p.wait_for_log("RELOAD failed, keeping the running configuration", 10), p.log_tail()
        time.sleep(0.5)
        assert new_pids(p) == [] and p.running()
        check_idle(idle, p, pid, [])
        with client(p, MD5_USER, MD5_PASSWORD) as c:
            assert c.execute("select 5").fetchone() == (5,)
        # Fixed: the next upgrade goes through.
        Path(p.config_path).write_text(good)
        new = upgrade(p)
        wait_exit(pid, p)
        check_idle(idle, p, new, [pid])
    stop_pid(new)


def test_new_process_that_fails_to_start_leaves_old_serving(pooler_factory: Any, tmp_path: Path) -> None:
    # `-t` accepts the config, but the new process cannot create its Unix socket (no such directory):
    # it exits before reporting ready, and the old process keeps its listeners and clients.
    p = pooler_factory(pool_size=2)
    pid = current_pid(p)
    with idle_clients(p, 3) as idle:
        p.config["general"]["unix_socket_dir"] = str(tmp_path / "no" / "such" / "dir")
        p.write_config()
        os.kill(pid, signal.SIGUSR2)
        assert p.wait_for_log("BINARY UPGRADE ABORTED: the new process did not become ready", 40), p.log_tail()
        assert new_pids(p) == [] and p.running()
        check_idle(idle, p, pid, [])
        with client(p) as c:
            assert c.execute("select 1").fetchone() == (1,)


def test_old_process_takes_over_again_when_the_new_one_dies(pooler_factory: Any) -> None:
    # A session-mode client keeps the old process draining; the new process is killed meanwhile: the old
    # one must accept connections again (on the very sockets it shared) instead of leaving the port dead.
    p = pooler_factory(pool_mode="session", pool_size=3, general={"shutdown_timeout": 60000})
    old = current_pid(p)
    sess = client(p)
    new = upgrade(p)
    with client(p) as c:
        assert owner_of(c, p.port, [old, new]) == [new]
    os.kill(new, signal.SIGKILL)
    assert p.wait_for_log("BINARY UPGRADE FAILED", 20), p.log_tail()
    with client(p) as c:
        assert c.execute("select 1").fetchone() == (1,)
        assert owner_of(c, p.port, [old]) == [old]
    assert sess.execute("select 2").fetchone() == (2,)
    sess.close()
    # And a later upgrade works from there.
    newer = upgrade(p, old_pid=old)
    wait_exit(old, p)
    with client(p) as c:
        assert owner_of(c, p.port, [newer]) == [newer]
    stop_pid(newer)


def test_console_upgrade_command(pooler_factory: Any) -> None:
    p = pooler_factory(pool_size=2)
    old = current_pid(p)
    c = client(p)
    with admin(p) as a:
        try:
            row = a.execute("UPGRADE").fetchone()
        except psycopg.Error as e:
            pytest.skip(f"the admin console has no UPGRADE command yet ({e}); it should call app.request_upgrade()")
        assert row is not None and row[0] in (True, "t")
        new = wait_for(lambda: new_pids(p), 30, "the new process")[-1]
        # Admin sessions never move: this one is closed when the old process exits, once clients are gone.
        wait_exit(old, p)
    assert c.execute("select 1").fetchone() == (1,)
    assert owner_of(c, p.port, [new, old]) == [new]
    c.close()
    stop_pid(new)


# ------------------------------------------------------------------------------------------ reload
@pytest.mark.concurrency
def test_sighup_and_reload_under_pgbench_drop_nobody(pooler_factory: Any, tmp_path: Path) -> None:
    p = bench_pooler(pooler_factory, start=False)
    p.config["pools"]["app_gone"] = {**p.config["pools"][DBNAME], "server_database": DBNAME}
    p.start()
    pid = current_pid(p)
    with idle_clients(p, 10) as idle:
        on_removed_pool = client(p, db="app_gone")
        bench = start_pgbench(p, tmp_path, clients=100, seconds=10)
        try:
            wait_for(pgbench_clients_in(p, 100), 30, "pgbench's 100 clients")
            time.sleep(1)
            cfg = p.config
            cfg["pools"][DBNAME]["users"][0]["pool_size"] = 10  # app_scram: 20 -> 10
            cfg["pools"][DBNAME]["idle_timeout"] = 120000
            cfg["general"]["query_wait_timeout"] = 25000
            cfg["pools"]["app_new"] = {**{k: cfg["pools"][DBNAME][k] for k in ("server_host", "server_port")},
                                       "server_database": DBNAME,
                                       "users": [dict(cfg["pools"][DBNAME]["users"][1])]}
            del cfg["pools"]["app_gone"]
            p.write_config()
            os.kill(pid, signal.SIGHUP)
            assert p.wait_for_log("configuration reloaded", 10)
            time.sleep(1.5)
            with admin(p) as a:
                rows = a.execute("SHOW POOLS").fetchall()
                names = [d.name for d in a.execute("SHOW POOLS").description or []]
                pools = {(d["database"], d["user"]): d for d in (dict(zip(names, r, strict=True)) for r in rows)}
                assert int(pools[(DBNAME, SCRAM_USER)]["pool_size"]) == 10
                assert ("app_new", MD5_USER) in pools
                cfg["pools"][DBNAME]["users"][0]["pool_size"] = 15
                p.write_config()
                a.execute("RELOAD")
                rows = a.execute("SHOW POOLS").fetchall()
                pools = {(d["database"], d["user"]): d for d in (dict(zip(names, r, strict=True)) for r in rows)}
                assert int(pools[(DBNAME, SCRAM_USER)]["pool_size"]) == 15
            time.sleep(1)
        finally:
            done, _ = finish_pgbench(bench)
        assert done > 0
        check_idle(idle, p, pid, [])
        with client(p, MD5_USER, MD5_PASSWORD, db="app_new") as c:
            assert c.execute("select current_database()").fetchone() == (DBNAME,)
        # A removed pool takes no new logins; clients already in it go on.
        with pytest.raises(psycopg.OperationalError):
            client(p, db="app_gone")
        assert on_removed_pool.execute("select 7").fetchone() == (7,)
        on_removed_pool.close()
    assert new_pids(p) == []


# ------------------------------------------------------------------------------------------ SIGINT with a terminal
def _spawn_with_tty(config_path: str, log_path: str, env_extra: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    master, slave = os.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pgdoorman", config_path, "-l", "debug"], stdin=slave,
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    os.close(slave)
    return proc, master


@pytest.mark.parametrize("how", ["terminal", "env"])
def test_sigint_is_a_shutdown_with_a_terminal_or_shutdown_only_env(pooler_factory: Any, how: str) -> None:
    p = pooler_factory(start=False, pool_size=2, general={"shutdown_timeout": 3000})
    p.port = free_port()
    p.config["general"]["port"] = p.port
    p.write_config()
    if how == "terminal":
        proc, master = _spawn_with_tty(p.config_path, p.log_path)
    else:
        with open(p.log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "pgdoorman", p.config_path, "-l", "debug"],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONPATH": str(ROOT), "PG_DOORMAN_CI_SHUTDOWN_ONLY": "1"},
                                    start_new_session=True)
        master = -1
    try:
        wait_for(lambda: _port_open(p.port), 15, "the pooler to listen")
        with client(p) as c:
            assert c.execute("select 1").fetchone() == (1,)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        assert "shutting down" in p.log() and not new_pids(p)
        assert not _port_open(p.port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if master >= 0:
            os.close(master)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------ daemon
def test_daemon_mode_pid_file_upgrade_and_stop(pooler_factory: Any, tmp_path: Path) -> None:
    pid_file = tmp_path / "pgd.pid"
    p = pooler_factory(start=False, pool_size=2, general={"daemon_pid_file": str(pid_file)})
    p.port = free_port()
    p.config["general"]["port"] = p.port
    p.write_config()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pgdoorman", p.config_path, "-d", "-l", "debug"]
    daemon_pids: list[int] = []
    try:
        with open(p.log_path, "ab") as log:
            r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env,
                               cwd=tmp_path, timeout=60)
        assert r.returncode == 0, p.log_tail()
        first = int(pid_file.read_text())
        daemon_pids.append(first)
        # Detached: a session of its own, of which it is not the leader (so it can never get a terminal).
        assert alive(first) and os.getsid(first) not in (os.getsid(0), first)
        with client(p) as c:
            assert c.execute("select 1").fetchone() == (1,)
            # A second daemon is refused while the first runs.
            r2 = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=env, cwd=tmp_path,
                                timeout=60)
            assert r2.returncode == 1 and b"running pgdoorman" in r2.stderr, r2.stderr
            # Upgrade of a daemon: the new process daemonizes too, takes the pid file and the clients.
            os.kill(first, signal.SIGUSR2)
            second = wait_for(lambda: new_pids(p), 30, "the new daemon")[-1]
            daemon_pids.append(second)
            wait_exit(first)
            assert int(pid_file.read_text()) == second
            assert c.execute("select 2").fetchone() == (2,)
            assert owner_of(c, p.port, [second, first]) == [second]
        os.kill(second, signal.SIGTERM)
        wait_exit(second)
        assert not pid_file.exists()
    finally:
        for pid in daemon_pids:
            if alive(pid):
                stop_pid(pid)


def test_daemon_reports_startup_failure(pooler_factory: Any, tmp_path: Path) -> None:
    p = pooler_factory(start=False, pool_size=2, general={"daemon_pid_file": str(tmp_path / "x.pid")})
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    p.config["general"]["port"] = blocker.getsockname()[1]  # taken without SO_REUSEPORT: bind fails
    p.write_config()
    try:
        r = subprocess.run([sys.executable, "-m", "pgdoorman", p.config_path, "-d"], stdin=subprocess.DEVNULL,
                           capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
        assert r.returncode == 1
        assert b"the daemon failed to start: cannot listen" in r.stderr, r.stderr
        assert not (tmp_path / "x.pid").exists()
    finally:
        blocker.close()


# ------------------------------------------------------------------------------------------ systemd
@contextmanager
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    s.bind(path)
    s.settimeout(30)
    try:
        yield s, path
    finally:
        s.close()


def recv_until(s: socket.socket, want: str, seen: list[str]) -> str:
    while True:
        msg = s.recv(4096).decode()
        seen.append(msg)
        if want in msg:
            return msg


def test_sd_notify_ready_reload_mainpid_stopping(pooler_factory: Any, tmp_path: Path) -> None:
    with notify_socket(tmp_path) as (s, path):
        p = pooler_factory(pool_size=2, env={"NOTIFY_SOCKET": path})
        seen: list[str] = []
        assert recv_until(s, "READY=1", seen).startswith("READY=1")
        old = current_pid(p)
        os.kill(old, signal.SIGHUP)
        recv_until(s, "RELOADING=1", seen)
        assert "MONOTONIC_USEC=" in seen[-1]
        recv_until(s, "READY=1", seen)
        new = upgrade(p)
        msg = recv_until(s, "MAINPID=", seen)
        assert msg == f"MAINPID={new}"
        wait_exit(old, p)
        assert not any("STOPPING" in m for m in seen), seen  # the old process is not the service stopping
        os.kill(new, signal.SIGTERM)
        recv_until(s, "STOPPING=1", seen)
        wait_exit(new)


def test_unit_file_is_type_notify_and_reloads_by_upgrade() -> None:
    unit = (ROOT / "contrib" / "pg_doorman.service").read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -SIGUSR2 $MAINPID", "KillMode=mixed"):
        assert line in unit, line
    assert "-d" not in unit.split("ExecStart=")[1].splitlines()[0].split()


# ------------------------------------------------------------------------------------------ metrics across an upgrade
def test_metrics_listener_moves_to_the_new_process(pooler_factory: Any) -> None:
    import urllib.request

    port = free_port()
    p = pooler_factory(start=False, pool_size=2)
    p.config["web"] = {"enabled": True, "host": "127.0.0.1", "port": port}
    p.start()
    old = current_pid(p)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    assert "pg_doorman" in wait_for(lambda: _try(scrape), 15, "metrics")
    new = upgrade(p)
    wait_exit(old, p)

    def served_by_new() -> bool:
        text = _try(scrape)
        return bool(text) and any(port == lp for lp in _listening_ports(new))

    wait_for(served_by_new, 30, "the new process to serve /metrics")
    stop_pid(new)


def _try(fn: Callable[[], str]) -> str:
    try:
        return fn()
    except OSError:
        return ""


def _listening_ports(pid: int) -> list[int]:
    inodes = _socket_inodes(pid)
    ports = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and int(parts[9]) in inodes:
                ports.append(int(parts[1].split(":")[1], 16))
    return ports
