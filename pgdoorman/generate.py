"""`pg_doorman generate`: read databases and login roles (with their md5 / SCRAM secrets) from a running
PostgreSQL and write a commented config that starts as is; `--reference` writes the annotated reference
config instead. Talks to PostgreSQL through the pooler's own blocking client (session/pgclient.py: the server
login and server TLS the pools use), so it needs nothing beyond the runtime dependencies.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pgdoorman import resources
from pgdoorman.config import ConfigError, config_format_for, render_config, render_reference
from pgdoorman.net.tls import server_tls
from pgdoorman.protocol import auth
from pgdoorman.session.pgclient import PgClient, PgError

# What a user whose secret could not be read gets as `password`. An empty password can never log in
# (pgdoorman answers with a SCRAM exchange that always fails), so the config is safe to start as is; the
# role works once its pg_authid.rolpassword (or server_username/server_password) is filled in.
PLACEHOLDER_PASSWORD = ""

DEFAULT_POOL_SIZE = 40
LISTEN_PORT = 6432
APPLICATION_NAME = "pg_doorman generate"

_SQL_DATABASES = (
    "SELECT datname FROM pg_catalog.pg_database WHERE NOT datistemplate AND datallowconn ORDER BY datname"
)
_SQL_AUTHID = "SELECT rolname, rolpassword FROM pg_catalog.pg_authid WHERE rolcanlogin ORDER BY rolname"
_SQL_ROLES = "SELECT rolname FROM pg_catalog.pg_roles WHERE rolcanlogin ORDER BY rolname"


# ------------------------------------------------------------------------------------------- introspection
@dataclass
class Inventory:
    """What the server told us: databases, login roles with their secrets (None = could not be read),
    and notes for stderr about what is missing and why."""

    databases: list[str] = field(default_factory=list)
    users: list[tuple[str, str | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def own_secret(conn: PgClient) -> str | None:
    """The connecting role's stored secret, rebuilt from the password we logged in with and how the server
    asked for it: md5 → md5(password + user); SCRAM → the verifier with the server's salt and iteration
    count (byte for byte what pg_authid holds). None when the login did not reveal the stored form."""
    pw = conn.password
    if pw is None:
        return None
    if conn.auth_method == "md5":
        return auth.md5_stored(conn.user, pw)
    if conn.auth_method == "scram-sha-256" and conn.scram_salt is not None and conn.scram_iterations:
        return str(auth.ScramVerifier.from_password(pw, conn.scram_salt, conn.scram_iterations))
    return None


def introspect(conn: PgClient) -> Inventory:
    inv = Inventory()
    inv.databases = [str(r[0]) for r in conn.query(_SQL_DATABASES)]
    try:
        rows = conn.query(_SQL_AUTHID)
        secrets_readable = True
    except PgError as e:
        if e.sqlstate != "42501":  # insufficient_privilege
            raise
        secrets_readable = False
        rows = [(r[0], None) for r in conn.query(_SQL_ROLES)]
        inv.notes.append(
            f"cannot read pg_catalog.pg_authid as {conn.user!r} ({e.fields.get('M', e)}): password hashes "
            "need a superuser. Users are written with an empty password (nobody can log in as them "
            "through pgdoorman) until you paste each role's pg_authid.rolpassword (SELECT rolpassword FROM "
            "pg_authid WHERE rolname = '...', as a superuser) or set server_username/server_password."
        )
    mine = own_secret(conn)
    for name, secret in rows:
        assert name is not None
        if not secrets_readable:
            if name == conn.user and mine is not None:
                inv.notes.append(f"user {name!r}: secret rebuilt from the password used to connect "
                                 f"({conn.auth_method})")
                inv.users.append((name, mine))
            else:
                inv.users.append((name, None))
            continue
        if secret is None or secret == "":
            inv.notes.append(
                f"role {name!r} has no password in pg_authid (it can only log in with trust/peer/ident, which "
                "pgdoorman cannot pass through): left out; add it by hand with server_username/server_password"
            )
            continue
        if not (auth.is_md5_hash(secret) or auth.is_scram_verifier(secret)):
            inv.notes.append(f"role {name!r}: unrecognised password format in pg_authid: left out")
            continue
        inv.users.append((name, secret))
    return inv


def build_config(inv: Inventory, server_host: str, server_port: int, pool_size: int, session_mode: bool,
                 admin_password: str | None = None, server_tls: bool = False) -> dict[str, object]:
    """The config as a dict for render_config: one pool per database, every user in every pool, each
    user's password being the server's stored secret (passthrough: clients log in with their own passwords
    and pgdoorman logs in to PostgreSQL with the same secret). `server_tls` (generate --ssl) writes
    `server_tls_mode: require`, as PgDoorman does."""
    users = [
        {"username": name, "password": PLACEHOLDER_PASSWORD if secret is None else secret, "pool_size": pool_size}
        for name, secret in inv.users
    ]
    pools: dict[str, object] = {}
    for db in inv.databases:
        pools[db] = {
            "server_host": server_host,
            "server_port": server_port,
            "server_database": db,
            "pool_mode": "session" if session_mode else "transaction",
            "users": [dict(u) for u in users],
        }
    return {
        "general": {
            "host": "0.0.0.0",
            "port": LISTEN_PORT,
            "admin_username": "admin",
            # A fresh random secret: a generated config must not ship the well-known "admin".
            "admin_password": admin_password or secrets.token_urlsafe(18),
            **({"server_tls_mode": "require"} if server_tls else {}),
        },
        "pools": pools,
    }


# ------------------------------------------------------------------------------------------- output
def _header(source: str, fmt: str, inv: Inventory | None) -> str:
    lines = [
        f"pgdoorman configuration generated by `pg_doorman generate` from {source} on "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
        "Users are in passthrough mode: each `password` is the role's secret as PostgreSQL stores it",
        "(md5 hash or SCRAM verifier), so clients log in with their usual passwords and pgdoorman logs in",
        "to PostgreSQL on their behalf. Keep this file private (it holds password hashes).",
        "Check it with `pg_doorman -t <file>`; every setting is explained by `pg_doorman generate --reference`.",
    ]
    if inv is not None and any(s is None for _, s in inv.users):
        lines.append("Users with an empty password could not be read (not a superuser): nobody can log in as "
                     "them until it is filled in.")
    return "".join(f"# {x}\n" for x in lines) + "\n"


def check_loads(text: str, fmt: str) -> list[str]:
    """Load `text` as `pg_doorman -t` does, the files it names too (through a temporary file with the right
    extension); return its warnings, raise ConfigError if it does not load."""
    d = tempfile.mkdtemp(prefix="pg_doorman-generate-")
    path = os.path.join(d, "pg_doorman." + ("yaml" if fmt == "yaml" else "toml"))
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return list(resources.load(path).warnings)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
        os.rmdir(d)


def write_output(text: str, output: str | None) -> None:
    if output is None or output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    # 0600: the file holds password hashes and the admin password.
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


# ------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="pg_doorman generate",
        description="Write a pgdoorman config for the databases and users of a running PostgreSQL "
                    "(connection defaults from the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, "
                    "PGDATABASE).",
    )
    p.add_argument("--host", default=env.get("PGHOST") or "localhost",
                   help="PostgreSQL host name, address or Unix socket directory; env PGHOST (default localhost)")
    p.add_argument("-p", "--port", type=int, default=int(env.get("PGPORT") or 5432),
                   help="PostgreSQL port; env PGPORT (default 5432)")
    p.add_argument("-u", "--user", default=env.get("PGUSER") or "postgres",
                   help="role to connect as (a superuser can read password hashes); env PGUSER (default postgres)")
    p.add_argument("--password", default=env.get("PGPASSWORD"), help="its password; env PGPASSWORD")
    p.add_argument("-d", "--database", default=env.get("PGDATABASE") or "postgres",
                   help="database to connect to; env PGDATABASE (default postgres)")
    p.add_argument("--ssl", action="store_true",
                   help="connect with TLS (encrypted, certificate not verified, like sslmode=require)")
    p.add_argument("--pool-size", type=int, default=DEFAULT_POOL_SIZE,
                   help=f"pool_size written for every user (default {DEFAULT_POOL_SIZE})")
    p.add_argument("-s", "--session-pool-mode", action="store_true",
                   help="write pool_mode = session (default transaction)")
    p.add_argument("--server-host", default=None,
                   help="server_host written in the pools (default: --host)")
    p.add_argument("-o", "--output", default=None,
                   help="file to write (default stdout); its extension picks the format (.yaml/.yml = YAML, "
                        "anything else = TOML)")
    p.add_argument("-f", "--format", choices=["yaml", "toml"], default=None,
                   help="output format (default: from the --output extension, YAML on stdout)")
    p.add_argument("--no-comments", action="store_true", help="write the settings without explanations")
    p.add_argument("--reference", action="store_true",
                   help="write the annotated reference config (every setting, default and meaning) without "
                        "connecting to PostgreSQL")
    return p


def pick_format(fmt: str | None, output: str | None) -> str:
    """-f wins; else the extension of -o; else YAML. A format the loader would not pick for that file name
    is refused (it could not be loaded back)."""
    from_ext = config_format_for(output) if output and output != "-" else None
    if fmt is None:
        return from_ext or "yaml"
    if from_ext is not None and from_ext != fmt:
        raise ValueError(f"--format {fmt} does not match {output!r}: the loader reads that file as {from_ext} "
                         f"(use a .yaml/.yml name for YAML, any other for TOML)")
    return fmt


def _read_server(conn: PgClient) -> Inventory | None:
    """Connect and introspect (--ssl: libpq's sslmode=require, encrypted, certificate not checked, as
    server_tls_mode require); None once the error is printed."""
    try:
        conn.connect()
        return introspect(conn)
    except PgError as e:
        hint = ": give --password or PGPASSWORD" if e.cause == "no password" else ""
        print(f"pg_doorman generate: {e}{hint}", file=sys.stderr)
        return None
    finally:
        conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[2:] if argv is None else argv))
    err = sys.stderr
    try:
        fmt = pick_format(args.format, args.output)
    except ValueError as e:
        print(f"pg_doorman generate: {e}", file=err)
        return 2
    if args.pool_size < 1:
        print("pg_doorman generate: --pool-size must be at least 1", file=err)
        return 2

    if args.reference:
        text = render_reference(fmt)
        source = None
        inv: Inventory | None = None
    else:
        conn = PgClient(args.host, args.port, args.user, args.password, args.database,
                        tls=server_tls("require", None, None, None) if args.ssl else None,
                        timeout=float(os.environ.get("PGCONNECT_TIMEOUT") or 10), application_name=APPLICATION_NAME)
        inv = _read_server(conn)
        if inv is None:
            return 1
        for note in inv.notes:
            print(f"pg_doorman generate: note: {note}", file=err)
        if not inv.databases:
            print("pg_doorman generate: the server lists no database that accepts connections", file=err)
            return 1
        if not inv.users:
            print("pg_doorman generate: note: no login role could be written: the pools have no users", file=err)
        server_host = args.server_host or args.host
        data = build_config(inv, server_host, args.port, args.pool_size, args.session_pool_mode,
                            server_tls=args.ssl)
        text = render_config(data, fmt, comments=not args.no_comments)
        source = conn.where()
    if not args.no_comments and source is not None:
        text = _header(source, fmt, inv) + text
    try:
        warnings = check_loads(text, fmt)
    except ConfigError as e:
        print(f"pg_doorman generate: the generated configuration does not load (a bug):\n{e}", file=err)
        return 1
    for w in warnings:
        print(f"pg_doorman generate: warning: {w}", file=err)
    try:
        write_output(text, args.output)
    except OSError as e:
        print(f"pg_doorman generate: cannot write {args.output}: {e}", file=err)
        return 1
    if args.output and args.output != "-":
        what = "reference configuration" if args.reference else (
            f"configuration for {len(inv.databases) if inv else 0} database(s) and "
            f"{len(inv.users) if inv else 0} user(s)")
        print(f"pg_doorman generate: wrote the {what} to {args.output} ({fmt})", file=err)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
