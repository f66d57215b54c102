"""`make run`: a throwaway PostgreSQL under .run/ with database ``demo`` and roles ``app`` (SCRAM,
password ``app``) and ``app_md5`` (md5, password ``app_md5``), and pgdoorman in the foreground on
127.0.0.1:6432 in front of it, with its web listener on 127.0.0.1:9127 (/metrics, the JSON API and the
web console, signed in as ``admin`` / ``ADMIN_PASSWORD``: web.ui refuses the default ``admin``).
PostgreSQL is stopped when the pooler exits or on Ctrl-C.

Usage: .venv/bin/python scripts/run_demo.py [extra pgdoorman args, e.g. -l debug]
Env:   PGDOORMAN_DEMO_PORT (default 6432), PGDOORMAN_DEMO_PG_PORT (default: a free port),
       PGDOORMAN_DEMO_WEB_PORT (default 9127, or a free port when 9127 is taken)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from pgcluster import PgCluster  # scripts/ is on sys.path when this file runs as a script

ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = ROOT / ".run"
HOST = "127.0.0.1"
DB = "demo"
USERS = {"app": ("app", "scram-sha-256"), "app_md5": ("app_md5", "md5")}  # name -> (password, method)
ADMIN_PASSWORD = "doorman-demo"  # the demo's admin console and web console password (not the default "admin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def fresh_cluster(pg_port: int) -> PgCluster:
    basedir = RUN_DIR / "pg"
    if basedir.exists():
        # A previous run that was killed may have left its server behind: stop it before wiping.
        PgCluster(str(basedir), pg_port).stop("immediate")
        shutil.rmtree(basedir)
    basedir.mkdir(parents=True)
    cluster = PgCluster(str(basedir), pg_port, host=HOST)
    cluster.init()
    cluster.start()
    for name, (password, method) in USERS.items():
        cluster.create_role(name, password, method=method)
    cluster.create_database(DB, owner="app")
    cluster.psql(f"GRANT ALL ON DATABASE {DB} TO app_md5;")
    cluster.psql("GRANT ALL ON SCHEMA public TO app_md5;", dbname=DB)
    return cluster


def write_config(cluster: PgCluster, port: int, web_port: int) -> Path:
    # Users carry the verifiers PostgreSQL stored, as PgDoorman configs copy them from pg_shadow;
    # that is what lets the pooler log in to PostgreSQL as the client (passthrough).
    config: dict[str, Any] = {
        "general": {
            "host": HOST,
            "port": port,
            "admin_username": "admin",
            "admin_password": ADMIN_PASSWORD,
            "worker_threads": 1,
        },
        "web": {"enabled": True, "host": HOST, "port": web_port, "ui": True},
        "pools": {
            DB: {
                "server_host": cluster.host,
                "server_port": cluster.port,
                "pool_mode": "transaction",
                "users": [
                    {"username": name, "password": cluster.stored_password(name), "pool_size": 10}
                    for name in USERS
                ],
            }
        },
    }
    path = RUN_DIR / "pg_doorman.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if port_in_use(port):
            return True
        time.sleep(0.1)
    return False


def stop_pooler(proc: subprocess.Popen[bytes]) -> int:
    # SIGTERM is PgDoorman's immediate exit (SIGINT without a TTY would mean "binary upgrade").
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def main(argv: list[str]) -> int:
    port = int(os.environ.get("PGDOORMAN_DEMO_PORT", "6432"))
    if port_in_use(port):
        print(f"run_demo: {HOST}:{port} is already in use; stop whatever listens there or set PGDOORMAN_DEMO_PORT")
        return 1
    pg_port = int(os.environ.get("PGDOORMAN_DEMO_PG_PORT") or free_port())
    web_port = int(os.environ.get("PGDOORMAN_DEMO_WEB_PORT") or 9127)
    if port_in_use(web_port):
        if os.environ.get("PGDOORMAN_DEMO_WEB_PORT"):
            print(f"run_demo: {HOST}:{web_port} (PGDOORMAN_DEMO_WEB_PORT) is already in use")
            return 1
        web_port = free_port()
    RUN_DIR.mkdir(exist_ok=True)

    # SIGTERM (e.g. from a process manager) unwinds like Ctrl-C so the finally blocks run.
    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    cluster = fresh_cluster(pg_port)
    try:
        config = write_config(cluster, port, web_port)
        print(f"PostgreSQL {cluster.bindir} on {HOST}:{pg_port} (log {cluster.logfile})")
        print(f"pgdoorman config: {config}")
        # Its own session: Ctrl-C (or a SIGINT sent to the whole group, as `timeout -s INT` sends it) is ours to
        # handle. Reaching the pooler without a terminal, SIGINT is PgDoorman's binary upgrade: a new pooler
        # process took over and outlived this script and its PostgreSQL.
        proc = subprocess.Popen([sys.executable, "-m", "pgdoorman", str(config), *argv], cwd=ROOT,
                                start_new_session=True)
        try:
            if wait_listening(proc, port):
                psql = shutil.which("psql") or os.path.join(cluster.bindir, "psql")
                print("\npgdoorman is listening. Connect with:")
                print(f'  {psql} "host={HOST} port={port} dbname={DB} user=app password=app sslmode=disable"')
                print(f'  {psql} "host={HOST} port={port} dbname={DB} user=app_md5 password=app_md5 sslmode=disable"')
                print(f'  {psql} "host={HOST} port={port} dbname=pgdoorman user=admin password={ADMIN_PASSWORD} sslmode=disable"')
                print(f"Web console: http://{HOST}:{web_port}/ (user admin, password {ADMIN_PASSWORD}); "
                      f"metrics: http://{HOST}:{web_port}/metrics")
                print("Press Ctrl-C to stop the pooler and PostgreSQL.\n", flush=True)
            elif proc.poll() is None:
                print(f"run_demo: pgdoorman is running but not listening on {HOST}:{port} after 15s", flush=True)
            code = proc.wait()
            print(f"run_demo: pgdoorman exited with {code}")
            return code
        except KeyboardInterrupt:
            return 0
        finally:
            stop_pooler(proc)
    except KeyboardInterrupt:
        return 130
    finally:
        # A second Ctrl-C must not leave PostgreSQL running behind us.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cluster.stop()
        print("run_demo: PostgreSQL stopped")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
