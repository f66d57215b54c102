#!/usr/bin/env python3
"""What an idle client costs pgdoorman, alone: `make bench`'s idle-client test (scripts/bench.py, Bench.idle_memory)
without the pgbench cells and the PgBouncers, for before/after comparisons of one change.

A throwaway PostgreSQL (scripts/pgcluster.py, an md5 role), then for each --python and each --src, a fresh
pgdoorman (transaction mode, pool_size 20, worker_threads as bench.py picks them: one per CPU when the
interpreter is free-threaded, else 1): VmRSS one second after it answers, then scripts/idle_clients.py logs
in -n clients (200 at a time) and holds them; VmRSS two seconds after the last login; KiB per idle client =
the difference / clients logged in. SELECT 1 on 20 of them proves they are alive. One JSON line per run.

    .venv/bin/python scripts/idle_memory.py --python .venv/bin/python --python .venv-ft/bin/python \\
        --src /tmp/pgd-before --src . --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

from bench import vm_kib  # noqa: E402
from pgcluster import PgCluster  # noqa: E402

HOST = "127.0.0.1"


def wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"pgdoorman exited with status {proc.returncode}")
        try:
            socket.create_connection((HOST, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"pgdoorman did not answer on port {port} within {timeout:.0f} s")


def free_threaded(python: str) -> bool:
    probe = "import sysconfig; print(bool(sysconfig.get_config_var('Py_GIL_DISABLED')))"
    return subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.strip() == "True"


def one_run(a: argparse.Namespace, tmp: Path, python: str, src: str, stored: str, password: str) -> dict[str, Any]:
    workers = (os.cpu_count() or 1) if free_threaded(python) else 1
    cfg = tmp / "pgdoorman.yaml"
    q = json.dumps
    cfg.write_text(
        f"general:\n  host: {q(HOST)}\n  port: {a.port}\n  admin_username: admin\n"
        f"  admin_password: {q(secrets.token_hex(8))}\n  worker_threads: {workers}\n  max_connections: {a.clients + 2000}\n"
        f"pools:\n  bench:\n    server_host: {q(HOST)}\n    server_port: {a.pg_port}\n    pool_mode: transaction\n"
        f"    users:\n      - username: bench\n        password: {q(stored)}\n        pool_size: 20\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    with open(tmp / "pgdoorman.log", "ab") as log:
        pooler = subprocess.Popen([python, "-m", "pgdoorman", str(cfg)], env=env, cwd=tmp, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_port(a.port, pooler)
        time.sleep(1.0)
        before = vm_kib(pooler.pid)["VmRSS"]
        holder = subprocess.Popen(
            [sys.executable, str(SCRIPTS / "idle_clients.py"), "--host", HOST, "--port", str(a.port), "--user",
             "bench", "--password", password, "--dbname", "bench", "-n", str(a.clients), "--concurrency", "200"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdin is not None and holder.stdout is not None
        ready = json.loads(holder.stdout.readline())
        time.sleep(2.0)
        after = vm_kib(pooler.pid)
        holder.stdin.close()
        alive = json.loads(holder.stdout.readline())
        holder.wait(60)
    finally:
        pooler.terminate()
        pooler.wait(30)
    commit = subprocess.run(["git", "-C", src, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {
        "src": src, "commit": commit or "?", "python": python, "workers": workers, "clients": ready["clients"],
        "failed": ready["failed"], "rss_before_kib": before, "rss_after_kib": after["VmRSS"],
        "kib_per_client": round((after["VmRSS"] - before) / max(1, ready["clients"]), 2),
        "alive": f"{alive['ok']}/{alive['checked']}",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", action="append", help="interpreter(s) running pgdoorman (default: this one)")
    ap.add_argument("--src", action="append", help="checkout(s) whose pgdoorman package runs (default: this one)")
    ap.add_argument("-n", "--clients", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=1, help="runs of every (python, src), interleaved")
    ap.add_argument("--port", type=int, default=26432, help="pgdoorman's port")
    ap.add_argument("--pg-port", type=int, default=25432, help="the throwaway PostgreSQL's port")
    a = ap.parse_args(argv)
    pythons = a.python or [sys.executable]
    srcs = a.src or [str(SCRIPTS.parent)]
    tmp = Path(tempfile.mkdtemp(prefix="pgdoorman-idle-"))
    tmp.chmod(0o755)  # the postgres OS user runs the cluster below it when we are root
    password = secrets.token_hex(12)
    cluster = PgCluster(str(tmp / "pg"), a.pg_port, host=HOST,
                        settings={"listen_addresses": f"'{HOST}'", "max_connections": "60", "fsync": "off"})
    cluster.init()
    cluster.start()
    try:
        cluster.create_role("bench", password, method="md5")
        cluster.create_database("bench", owner="bench")
        stored = cluster.stored_password("bench")
        for _ in range(a.repeat):
            for python in pythons:
                for src in srcs:
                    print(json.dumps(one_run(a, tmp, python, src, stored, password)), flush=True)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
