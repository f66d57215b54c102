"""Throwaway PostgreSQL clusters for tests, `make run` and the benchmark: initdb, configure, start,
stop, run SQL as the superuser. Importable (``PgCluster``, ``find_bindir``) and a small CLI:

    python scripts/pgcluster.py start DIR PORT | stop DIR [PORT] | status DIR [PORT]

PostgreSQL refuses to run as root, so when we are root every server-side command runs as the
``postgres`` OS user via runuser and the cluster directory is chowned to it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_OS_USER = "postgres"  # the OS account that owns the cluster when we run as root
SUPERUSER = "postgres"  # the database superuser initdb creates (-U), trusted over 127.0.0.1


def _has_server_tools(bindir: str) -> bool:
    return all(os.access(os.path.join(bindir, tool), os.X_OK) for tool in ("initdb", "pg_ctl"))


def _pg_config_bindir() -> str | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def _newest_debian_bindir() -> str | None:
    def major(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return -1.0

    candidates = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if _has_server_tools(d)]
    return max(candidates, key=major) if candidates else None


def find_bindir() -> str:
    """Directory holding initdb/pg_ctl/postgres/psql: PGDOORMAN_PG_BINDIR when set (another version's, from
    scripts/fetch_postgres.py), else pg_config's or the newest Debian one; installs Debian's postgresql if none
    is found."""
    chosen = os.environ.get("PGDOORMAN_PG_BINDIR")
    if chosen:
        if not _has_server_tools(chosen):
            raise RuntimeError(f"PGDOORMAN_PG_BINDIR={chosen}: no initdb and pg_ctl there")
        return chosen
    for attempt in range(2):
        bindir = _pg_config_bindir()
        if bindir and _has_server_tools(bindir):
            return bindir
        bindir = _newest_debian_bindir()
        if bindir:
            return bindir
        if attempt == 0:
            subprocess.run([str(_HERE / "ensure_deps.sh"), "postgres"], check=True)
    raise RuntimeError("no PostgreSQL server binaries found (initdb, pg_ctl), even after ensure_deps.sh")


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PgCluster:
    """One PostgreSQL data directory under ``basedir`` (data/, sock/, postgres.log) on host:port."""

    def __init__(
        self, basedir: str, port: int, host: str = "127.0.0.1", settings: dict[str, str] | None = None
    ) -> None:
        self.basedir = os.path.abspath(basedir)
        self.port = port
        self.host = host
        self.settings = dict(settings or {})
        self.datadir = os.path.join(self.basedir, "data")
        self.sockdir = os.path.join(self.basedir, "sock")
        self.logfile = os.path.join(self.basedir, "postgres.log")
        self.bindir = find_bindir()
        self._as_os_user = os.geteuid() == 0

    # -- process helpers -------------------------------------------------------------------

    def _server_cmd(self, tool: str, *args: str) -> list[str]:
        cmd = [os.path.join(self.bindir, tool), *args]
        return ["runuser", "-u", _OS_USER, "--", *cmd] if self._as_os_user else cmd

    def _run(
        self, cmd: list[str], check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        # cwd=basedir: runuser keeps our cwd, and pg_ctl fails if the postgres user cannot read it.
        proc = subprocess.run(cmd, cwd=self.basedir, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}{proc.stderr}{self._log_tail()}"
            )
        return proc

    def _log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.logfile, encoding="utf-8", errors="replace") as f:
                tail = f.readlines()[-lines:]
        except OSError:
            return ""
        return "--- postgres.log (tail) ---\n" + "".join(tail)

    # -- lifecycle -------------------------------------------------------------------------

    def init(self) -> None:
        """initdb into basedir/data and write postgresql.conf + pg_hba.conf; basedir must not hold a cluster."""
        if os.path.exists(os.path.join(self.datadir, "PG_VERSION")):
            raise RuntimeError(f"{self.datadir} already holds a cluster")
        os.makedirs(self.sockdir, exist_ok=True)
        if self._as_os_user:
            pw = pwd.getpwnam(_OS_USER)
            for path in (self.basedir, self.sockdir):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            check = subprocess.run(["runuser", "-u", _OS_USER, "--", "test", "-w", self.basedir])
            if check.returncode != 0:
                raise RuntimeError(
                    f"user {_OS_USER} cannot reach {self.basedir}: is a parent directory private?"
                )
        self._run(
            self._server_cmd(
                "initdb",
                "-D",
                self.datadir,
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
        )
        conf = {
            "listen_addresses": _quote_literal(self.host),
            "port": str(self.port),
            "unix_socket_directories": _quote_literal(self.sockdir),
            "max_connections": "300",
            "fsync": "off",
            "shared_buffers": "256MB",
        }
        conf.update(self.settings)
        with open(os.path.join(self.datadir, "postgresql.conf"), "a", encoding="utf-8") as f:
            f.write("\n# written by scripts/pgcluster.py\n")
            for key, value in conf.items():
                f.write(f"{key} = {value}\n")
        # "md5" lets PostgreSQL pick per role: SCRAM for roles stored as SCRAM, md5 for roles stored md5.
        hba = f"local all all trust\nhost all {SUPERUSER} 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 md5\n"
        with open(os.path.join(self.datadir, "pg_hba.conf"), "w", encoding="utf-8") as f:
            f.write(hba)

    def start(self) -> None:
        self._run(
            self._server_cmd("pg_ctl", "-D", self.datadir, "-l", self.logfile, "-w", "-t", "60", "start")
        )

    def stop(self, mode: str = "fast") -> None:
        if not self.running():
            return
        self._run(self._server_cmd("pg_ctl", "-D", self.datadir, "-m", mode, "-w", "-t", "60", "stop"))

    def restart(self) -> None:
        self.stop()
        self.start()

    def running(self) -> bool:
        if not os.path.exists(os.path.join(self.datadir, "PG_VERSION")):
            return False
        # pg_ctl status: 0 = running, 3 = not running, 4 = no accessible data directory.
        return (
            self._run(self._server_cmd("pg_ctl", "-D", self.datadir, "status"), check=False).returncode == 0
        )

    # -- SQL -------------------------------------------------------------------------------

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL as the superuser over the Unix socket; returns unaligned, tuples-only output."""
        cmd = [
            os.path.join(self.bindir, "psql"),
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.sockdir,
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            dbname,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        proc = subprocess.run(cmd, input=sql, capture_output=True, text=True, env=env, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed ({proc.returncode}): {proc.stderr.strip()}\nSQL: {sql}")
        return proc.stdout.rstrip("\n")

    def create_role(
        self, name: str, password: str, method: str = "scram-sha-256", superuser: bool = False
    ) -> None:
        if method not in ("scram-sha-256", "md5"):
            raise ValueError(f"method must be scram-sha-256 or md5, not {method!r}")
        attrs = "LOGIN SUPERUSER" if superuser else "LOGIN"
        self.psql(
            f"SET password_encryption = {_quote_literal(method)};\n"
            f"CREATE ROLE {_quote_ident(name)} {attrs} PASSWORD {_quote_literal(password)};"
        )

    def create_database(self, name: str, owner: str | None = None) -> None:
        owner_clause = f" OWNER {_quote_ident(owner)}" if owner else ""
        self.psql(f"CREATE DATABASE {_quote_ident(name)}{owner_clause};")

    def stored_password(self, role: str) -> str:
        """rolpassword from pg_authid: 'md5<hex>' or 'SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>'."""
        out = self.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = {_quote_literal(role)};")
        if not out:
            raise KeyError(f"role {role!r} has no stored password")
        return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # PORT matters only to start (stop and status find the server through its data directory).
    if not (args and args[0] in ("start", "stop", "status") and len(args) in (2, 3)) or (
        args[0] == "start" and len(args) != 3
    ):
        print("usage: pgcluster.py start DIR PORT | stop DIR [PORT] | status DIR [PORT]", file=sys.stderr)
        return 2
    action, basedir = args[0], args[1]
    cluster = PgCluster(basedir, int(args[2]) if len(args) == 3 else 0)
    if action == "start":
        os.makedirs(basedir, exist_ok=True)
        if not os.path.exists(os.path.join(cluster.datadir, "PG_VERSION")):
            cluster.init()
        if not cluster.running():
            cluster.start()
        print(f"PostgreSQL running on {cluster.host}:{cluster.port} (socket dir {cluster.sockdir})")
    elif action == "stop":
        cluster.stop()
    else:
        running = cluster.running()
        print("running" if running else "stopped")
        return 0 if running else 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
