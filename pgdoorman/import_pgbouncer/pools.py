"""[databases] and [users] -> pools: one pgdoorman pool per [databases] entry, with the userlist's users in
each, and the [pgbouncer] settings that apply per database (pool mode and size, reserve, reset, auth_query).

`databases()` is what the translation calls; the other functions each add one group of a pool's lines,
in the order they are written out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pgdoorman.import_pgbouncer.not_translated import NOT_TRANSLATED
from pgdoorman.import_pgbouncer.output import Line, PoolOut, UserOut, src_note
from pgdoorman.import_pgbouncer.reading import ImportFailed, Setting, UserEntry, parse_connstring
from pgdoorman.import_pgbouncer.translator import Translator
from pgdoorman.import_pgbouncer.values import is_hashed, millis, to_int

_DB_KEYS = {"dbname", "host", "port", "user", "password", "auth_user", "auth_dbname", "auth_query", "pool_size",
            "min_pool_size", "reserve_pool", "reserve_pool_size", "connect_query", "pool_mode",
            "max_db_connections", "client_encoding", "datestyle", "timezone", "application_name",
            "load_balance_hosts", "server_lifetime", "max_db_client_connections"}

# PgBouncer's own auth_query default (1.18..1.25 spell it slightly differently; this is the documented one).
PGBOUNCER_AUTH_QUERY = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END " \
                       "FROM pg_authid WHERE rolname=$1 AND rolcanlogin"


@dataclass
class _Db:
    name: str
    setting: Setting
    params: dict[str, str]
    src: str = ""  # how comments name the entry: `file:line [databases] name`, or the `*` entry it came from

    def __post_init__(self) -> None:
        self.src = self.src or f"{self.setting.where} [databases] {self.name}"


@dataclass
class _Defaults:
    """The [pgbouncer] settings every pool reads (looked up once: the lookup marks them translated)."""

    pool_mode_s: Setting | None
    default_mode: str
    default_size_s: Setting | None
    default_size: int
    min_size_s: Setting | None
    min_size: int
    reserve_s: Setting | None
    reserve_t: Setting | None
    maxdb_s: Setting | None
    reset_s: Setting | None
    reset_always: Setting | None
    auth_user_s: Setting | None
    auth_query_s: Setting | None
    auth_db_s: Setting | None


@dataclass
class _Sizes:
    """A pool's pool_size and min_pool_size, and where each came from."""

    size: int
    size_src: str
    min_here: int
    min_src: str


_UsersSection = dict[str, tuple[Setting, dict[str, str]]]


def databases(t: Translator) -> None:
    dbs = _read_databases(t)
    users_section = {s.key: (s, dict(parse_connstring(s))) for s in t.ini.sections.get("users", [])}
    if t.userlist is None:
        t.header.append("no userlist was read (no --userlist and no readable auth_file): the pools "
                        "have no users until you add them")
    elif not t.userlist:
        t.header.append(f"the userlist {t.userlist_path} lists no users: the pools have no users")
    d = _defaults(t)
    seen_users: set[str] = set()
    for db in dbs:
        t.pools.append(_pool(t, db, d, users_section, seen_users, db is dbs[0]))
    _leftovers(t, users_section, seen_users, bool(dbs))


def _read_databases(t: Translator) -> list[_Db]:
    dbs: list[_Db] = []
    fallback: Setting | None = None
    for s in t.ini.sections.get("databases", []):
        params = dict(parse_connstring(s))
        if s.key == "*":
            fallback = s
            continue
        dbs.append(_Db(s.key, s, params))
    if fallback is not None:
        dbs += _fallback(t, fallback, {d.name for d in dbs})
    elif t.fallback_databases:
        t.header.append(f"--fallback-databases {','.join(t.fallback_databases)}: not used: the source has no "
                        "`*` database entry to make their pools from")
    return dbs


def _fallback(t: Translator, fallback: Setting, listed: set[str]) -> list[_Db]:
    """The `*` entry: PgBouncer makes a pool for any other database a client asks for; pgdoorman's pools are
    listed, so the names given with --fallback-databases each get a pool from the entry's connection string
    (its dbname= if any, else the database of that name, as PgBouncer connects)."""
    params = dict(parse_connstring(fallback))
    names = [n for n in t.fallback_databases if n not in listed]
    for n in t.fallback_databases:
        if n in listed:
            t.header.append(f"--fallback-databases {n}: already a [databases] entry, which wins as in PgBouncer")
    if not names:
        t.header.append(
            f"{src_note(fallback)}: not translated: pgdoorman has no fallback (automatic) database; every "
            "database clients use must be a pool. Run the import again with --fallback-databases db1,db2,... "
            "(for example the output of psql -Atc \"SELECT string_agg(datname, ',') FROM pg_database WHERE "
            "datallowconn AND NOT datistemplate\" on that server) to get a pool for each from this entry")
        return []
    t.header.append(
        f"{src_note(fallback)}: translated for the databases given with --fallback-databases "
        f"({', '.join(names)}): one pool each from this entry; PgBouncer also served any other database "
        "name on demand, pgdoorman refuses a database that is not a pool (3D000)")
    return [_Db(n, fallback, params, f"{fallback.where} [databases] * (for {n})") for n in names]


def _defaults(t: Translator) -> _Defaults:
    pool_mode_s = t.get("pool_mode")
    default_size_s = t.get("default_pool_size")
    default_size = to_int(default_size_s, minimum=0) if default_size_s is not None else 20
    min_size_s = t.get("min_pool_size")
    min_size = to_int(min_size_s) if min_size_s is not None else 0
    d = _Defaults(
        pool_mode_s=pool_mode_s,
        default_mode=pool_mode_s.value.strip().lower() if pool_mode_s is not None else "session",
        default_size_s=default_size_s, default_size=default_size, min_size_s=min_size_s, min_size=min_size,
        reserve_s=t.get("reserve_pool_size"), reserve_t=t.get("reserve_pool_timeout"),
        maxdb_s=t.get("max_db_connections"), reset_s=t.get("server_reset_query"),
        reset_always=t.get("server_reset_query_always"), auth_user_s=t.get("auth_user"),
        auth_query_s=t.get("auth_query"), auth_db_s=t.get("auth_dbname"))
    ignore_s = t.get("ignore_startup_parameters")
    if ignore_s is not None:
        t.general.append(Line(None, None, [
            f"{src_note(ignore_s)}: not needed: pgdoorman accepts every startup parameter and applies it on "
            "whichever server the client gets (PostgreSQL itself refuses ones it does not know)"]))
    return d


def _pool(t: Translator, db: _Db, d: _Defaults, users_section: _UsersSection, seen_users: set[str],
          first: bool) -> PoolOut:
    """The pool of one [databases] entry (first: the first one, which carries the notes said once)."""
    pool = PoolOut(db.name)
    src = db.src
    _server(t, pool, db, src)
    _mode(pool, db, d, src)
    _server_parameters(pool, db, src)
    _limits(pool, db, d, src)
    _reset(pool, d)
    _auth_query(t, pool, db, d, src, first)
    sizes = _sizes(db, d, src)
    for u in t.userlist or []:
        seen_users.add(u.name)
        pool.users.append(_user(t, u, db, sizes, users_section, src))
    return pool


def _server(t: Translator, pool: PoolOut, db: _Db, src: str) -> None:
    """Unknown connection string keys, then host, port and dbname."""
    p = db.params
    for k in p:
        if k not in _DB_KEYS:
            pool.lines.append(Line(None, None, [f"{src}: {k}={p[k]}: not translated: unknown connection "
                                                "string parameter"]))
    host = p.get("host", "")
    if host:
        hosts = [h for h in host.split(",") if h]
        note = f"{src}: host={host}: translated"
        if len(hosts) > 1:
            note = f"{src}: host={host}: approximated: pgdoorman connects to one host, the first"
        pool.lines.append(Line("server_host", hosts[0], [note]))
    else:
        d = t.unix_dir or "/tmp"
        pool.lines.append(Line("server_host", d, [
            f"{src}: no host: PgBouncer connects to the Unix socket in unix_socket_dir ({d})"]))
    if "port" in p:
        pool.lines.append(Line("server_port", to_int(db.setting, p["port"], minimum=1),
                               [f"{src}: port={p['port']}: translated"]))
    if "dbname" in p and p["dbname"] != db.name:
        pool.lines.append(Line("server_database", p["dbname"], [f"{src}: dbname={p['dbname']}: translated"]))


def _mode(pool: PoolOut, db: _Db, d: _Defaults, src: str) -> None:
    p = db.params
    mode = p.get("pool_mode", "").lower() or d.default_mode
    mode_note = (f"{src}: pool_mode={p['pool_mode']}: translated" if "pool_mode" in p else
                 f"{src_note(d.pool_mode_s)}: translated" if d.pool_mode_s is not None else
                 "not set in the source: PgBouncer's default pool_mode = session")
    if mode == "statement":
        mode = "transaction"
        mode_note += "; approximated: statement mode does not exist in pgdoorman, transaction is closest " \
                     "(multi-statement transactions are allowed)"
    elif mode not in ("session", "transaction"):
        raise ImportFailed(f"{db.setting.file}:{db.setting.line}: pool_mode: unknown mode {mode!r}")
    pool.lines.append(Line("pool_mode", mode, [mode_note]))


def _server_parameters(pool: PoolOut, db: _Db, src: str) -> None:
    """application_name, server_lifetime, the server-side defaults, and the keys with no counterpart."""
    p = db.params
    if "application_name" in p:
        pool.lines.append(Line("application_name", p["application_name"],
                               [f"{src}: application_name: translated (clients' own application_name still "
                                "wins)"]))
    if "server_lifetime" in p:
        pool.lines.append(Line("server_lifetime", millis(db.setting, p["server_lifetime"]),
                               [f"{src}: server_lifetime={p['server_lifetime']}: translated (milliseconds)"]))
    # Server-side defaults -> startup_parameters.
    startup: dict[str, str] = {}
    for k, guc in (("client_encoding", "client_encoding"), ("datestyle", "DateStyle"), ("timezone", "TimeZone")):
        if k in p:
            startup[guc] = p[k]
    if startup:
        pool.lines.append(Line("startup_parameters", startup, [
            f"{src}: {', '.join(f'{k}={v}' for k, v in startup.items())}: translated into the startup "
            "parameters of the pool's server connections (docs/startup-parameters.md); a client's own "
            "settings still win, as in PgBouncer"]))
    if "connect_query" in p:
        pool.lines.append(Line(None, None, [f"{src}: connect_query: not translated: no counterpart"]))
    for k in ("load_balance_hosts", "max_db_client_connections"):
        if k in p:
            pool.lines.append(Line(None, None, [f"{src}: {k}: not translated: {NOT_TRANSLATED[k]}"]))


def _limits(pool: PoolOut, db: _Db, d: _Defaults, src: str) -> None:
    """max_db_connections / reserve pool (PgDoorman's pool coordinator, core/coordinator.py)."""
    p = db.params
    maxdb = to_int(db.setting, p["max_db_connections"]) if "max_db_connections" in p else (
        to_int(d.maxdb_s) if d.maxdb_s is not None else 0)
    if maxdb:
        where = (f"{src}: max_db_connections" if "max_db_connections" in p else
                 src_note(d.maxdb_s) if d.maxdb_s else "")
        pool.lines.append(Line("max_db_connections", maxdb, [
            f"{where}: translated (PgDoorman's pool coordinator; unlike PgBouncer, at the cap an idle "
            "connection of another user is closed for a waiting client)"]))
    reserve_raw = p.get("reserve_pool", p.get("reserve_pool_size"))
    reserve = to_int(db.setting, reserve_raw) if reserve_raw is not None else (
        to_int(d.reserve_s) if d.reserve_s is not None else 0)
    reserve_t = d.reserve_t
    if reserve:
        where = f"{src}: reserve_pool" if reserve_raw is not None else src_note(d.reserve_s) if d.reserve_s else ""
        if maxdb:
            pool.lines.append(Line("reserve_pool_size", reserve, [
                f"{where}: approximated: PgDoorman's reserve is per database and taken at once at the cap "
                "(PgBouncer's is per pool, after reserve_pool_timeout)"]))
            if reserve_t is not None:
                pool.lines.append(Line("reserve_pool_timeout", millis(reserve_t), [
                    f"{src_note(reserve_t)}: approximated (milliseconds): how long clients wait at the cap "
                    "before an error"]))
        else:
            pool.lines.append(Line(None, None, [
                f"{where}: not translated: PgDoorman's reserve is part of max_db_connections, which the "
                "source does not set; raise pool_size instead"]))
    elif reserve_t is not None and maxdb:
        pool.lines.append(Line(None, None, [f"{src_note(reserve_t)}: not translated: no reserve pool"]))


def _reset(pool: PoolOut, d: _Defaults) -> None:
    """server_reset_query -> cleanup_server_connections."""
    reset_s, reset_always = d.reset_s, d.reset_always
    if reset_s is not None and not reset_s.value.strip():
        pool.lines.append(Line("cleanup_server_connections", False, [
            f"{src_note(reset_s)}: translated: an empty reset query means no cleanup; open transactions are "
            "still rolled back"]))
    elif reset_s is not None or reset_always is not None:
        notes = []
        if reset_s is not None:
            notes.append(f"{src_note(reset_s)}: approximated: pgdoorman runs its own cleanup (RESET ALL, "
                         "DEALLOCATE ALL, CLOSE ALL, UNLISTEN *, as needed) when a client gave back a server "
                         "whose session state it changed, in both modes, instead of this query")
        if reset_always is not None:
            notes.append(f"{src_note(reset_always)}: approximated: pgdoorman's cleanup runs in every mode")
        pool.lines.append(Line("cleanup_server_connections", True, notes))


def _auth_query(t: Translator, pool: PoolOut, db: _Db, d: _Defaults, src: str, first: bool) -> None:
    """auth_user / auth_query / auth_dbname -> the pool's auth_query section (docs/auth-query.md)."""
    p = db.params
    auth_user_s, auth_query_s, auth_db_s = d.auth_user_s, d.auth_query_s, d.auth_db_s
    au = p.get("auth_user") or (auth_user_s.value.strip() if auth_user_s is not None else "")
    if not au:
        if auth_query_s is not None and first:
            pool.lines.append(Line(None, None, [f"{src_note(auth_query_s)}: not translated: no auth_user is set, "
                                                "so PgBouncer does not use it either"]))
        return
    aq_src = f"{src}: auth_user={au}" if "auth_user" in p else src_note(auth_user_s) if auth_user_s else ""
    query = p.get("auth_query") or (auth_query_s.value.strip() if auth_query_s is not None else
                                    PGBOUNCER_AUTH_QUERY)
    note = (f"{src_note(auth_query_s)}: translated" if auth_query_s is not None and "auth_query" not in p else
            "PgBouncer's default auth_query" if "auth_query" not in p else f"{src}: auth_query: translated")
    query, wrapped = _aq_columns(query)
    if wrapped:
        note += ("; wrapped so its two columns are named usename, passwd: PgBouncer reads the second column, "
                 "pgdoorman the one named passwd")
    pool.auth_query.append(Line("query", query, [note]))
    pool.auth_query.append(Line("user", au, [f"{aq_src}: translated"]))
    entry = t.user(au)
    if entry is not None and entry.secret and not is_hashed(entry.secret):
        pool.auth_query.append(Line("password", entry.secret, [f"its password, from {entry.where}"]))
    else:
        pool.auth_query.append(Line(None, None, [
            f"password of {au}: PgBouncer logs in as auth_user with its userlist secret (possibly a "
            "hash); pgdoorman wants it in plain text here: fill it in"]))
    adb = p.get("auth_dbname") or (auth_db_s.value.strip() if auth_db_s is not None else "")
    if adb:
        adb_src = (f"{src}: auth_dbname={adb}" if "auth_dbname" in p else
                   src_note(auth_db_s) if auth_db_s is not None else "auth_dbname")
        pool.auth_query.append(Line("database", adb, [f"{adb_src}: translated"]))
    else:
        pool.auth_query.append(Line(None, None, [
            "auth_dbname not set: the query runs in the pool's own database, as PgBouncer's does"]))
    _aq_pool(pool, db, d, src)
    pool.user_notes.append(
        "users not listed below are looked up with auth_query at login (as PgBouncer does for users not in "
        "its auth_file); listed users win")


def _aq_columns(query: str) -> tuple[str, bool]:
    """PgBouncer's query returns (name, secret) by position; pgdoorman reads the `passwd` (or `password`)
    column: a query with neither name is wrapped to give its two columns those names."""
    q = query.strip().rstrip(";").strip()
    if re.search(r"\b(passwd|password)\b", q, re.IGNORECASE):
        return q, False
    return f"SELECT usename, passwd FROM ({q}) AS pgbouncer_auth_query(usename, passwd)", True


def _aq_pool(pool: PoolOut, db: _Db, d: _Defaults, src: str) -> None:
    """The looked-up users' pools: sizes like the pool's; a forced user= makes them share one (dedicated)."""
    p = db.params
    size = int(p.get("pool_size") or d.default_size or 1)
    pool.auth_query.append(Line("pool_size", size, ["the pool size of looked-up users, like the pool's"]))
    min_size = int(p.get("min_pool_size") or d.min_size or 0)
    if min_size:
        pool.auth_query.append(Line("min_pool_size", min(min_size, size), ["like the pool's min_pool_size"]))
    if p.get("user") and p.get("password") is not None:
        pool.auth_query.append(Line("server_user", p["user"], [
            f"{src}: user={p['user']}: translated: looked-up users also log in to PostgreSQL as this role "
            "(dedicated mode: one shared pool)"]))
        pool.auth_query.append(Line("server_password", p["password"], [f"{src}: password=***: translated"]))
    elif p.get("user"):
        pool.auth_query.append(Line(None, None, [
            f"{src}: user={p['user']}: not translated for looked-up users: pgdoorman's dedicated mode needs "
            "server_user and server_password (plain text) here; without them each logs in as itself"]))


def _sizes(db: _Db, d: _Defaults, src: str) -> _Sizes:
    p = db.params
    size_src = (f"{src}: pool_size" if "pool_size" in p else
                src_note(d.default_size_s) if d.default_size_s is not None else "PgBouncer's default_pool_size = 20")
    size = to_int(db.setting, p["pool_size"]) if "pool_size" in p else d.default_size
    min_here = to_int(db.setting, p["min_pool_size"]) if "min_pool_size" in p else d.min_size
    min_src = f"{src}: min_pool_size" if "min_pool_size" in p else src_note(d.min_size_s) if d.min_size_s else ""
    return _Sizes(size, size_src, min_here, min_src)


def _user(t: Translator, u: UserEntry, db: _Db, sizes: _Sizes, users_section: _UsersSection,
          src: str) -> UserOut:
    """One userlist user in one pool: its secret, its pool size and mode, and the pool's forced user."""
    out = UserOut()
    out.lines.append(Line("username", u.name, [f"from {u.where}"]))
    kind = ("SCRAM verifier" if u.secret.startswith("SCRAM-SHA-256$") else
            "md5 hash" if is_hashed(u.secret) else "plain-text password" if u.secret else "empty password")
    pw_note = f"its {kind} from the userlist"
    if kind == "md5 hash":
        pw_note += " (passthrough: works as long as PostgreSQL stores the same md5 hash)"
    elif kind == "SCRAM verifier":
        pw_note += " (passthrough: works as long as PostgreSQL stores the same verifier)"
    out.lines.append(Line("password", u.secret, [pw_note]))
    _user_pool(out, u, sizes, users_section.get(u.name))
    _forced_user(t, out, db, src)
    return out


def _user_pool(out: UserOut, u: UserEntry, sizes: _Sizes, u_sect: tuple[Setting, dict[str, str]] | None) -> None:
    """The user's pool_size and min_pool_size (its [users] entry's, else the pool's) and pool_mode."""
    u_params = u_sect[1] if u_sect is not None else {}
    u_size = sizes.size
    u_size_src = sizes.size_src
    if "pool_size" in u_params:
        assert u_sect is not None
        u_size = to_int(u_sect[0], u_params["pool_size"])
        u_size_src = f"{u_sect[0].where} [users] {u.name} pool_size"
    if u_size == 0:
        out.lines.append(Line("pool_size", 1, [f"{u_size_src} = 0: approximated: pgdoorman needs at "
                                               "least 1"]))
        u_size = 1
    else:
        out.lines.append(Line("pool_size", u_size, [f"{u_size_src}: translated"]))
    min_here = sizes.min_here
    if min_here:
        m = min(min_here, u_size)
        out.lines.append(Line("min_pool_size", m, [f"{sizes.min_src}: translated" + (
            "" if m == min_here else f" (capped at pool_size {u_size})")]))
    if "pool_mode" in u_params:
        assert u_sect is not None
        um = u_params["pool_mode"].lower()
        note = f"{u_sect[0].where} [users] {u.name} pool_mode: translated"
        if um == "statement":
            um = "transaction"
            note += "; approximated: statement mode becomes transaction"
        out.lines.append(Line("pool_mode", um, [note]))


def _forced_user(t: Translator, out: UserOut, db: _Db, src: str) -> None:
    """user= (and password=) in the connection string: every client logs in to the server as that role."""
    forced_user = db.params.get("user")
    forced_pw = db.params.get("password")
    if forced_user:
        out.lines.append(Line("server_username", forced_user, [f"{src}: user={forced_user}: translated: "
                                                               "every client uses this role on the server"]))
        pw = forced_pw
        pw_src = f"{src}: password=***: translated"
        if pw is None:
            fe = t.user(forced_user)
            if fe is not None and fe.secret and not is_hashed(fe.secret):
                pw = fe.secret
                pw_src = f"the password of {forced_user} from {fe.where}"
        if pw is not None:
            out.lines.append(Line("server_password", pw, [pw_src]))
        else:
            out.lines.append(Line(None, None, [
                f"server_password: not translated: the userlist holds no plain-text password for "
                f"{forced_user} (pgdoorman needs one here): fill it in"]))
    elif forced_pw is not None:
        out.lines.append(Line(None, None, [f"{src}: password without user: not translated (PgBouncer "
                                           "uses it for every user; pgdoorman passes the user's own "
                                           "secret through)"]))


def _leftovers(t: Translator, users_section: _UsersSection, seen_users: set[str], any_db: bool) -> None:
    """[users] settings and users with no pool to go to, and pool settings with no database."""
    for name, (s, params) in users_section.items():
        handled = {"pool_mode", "pool_size"}
        for k, v in params.items():
            if k not in handled:
                reason = NOT_TRANSLATED.get(k, "no per-user counterpart")
                t.trailing.append(f"{s.where} [users] {name} {k}={v}: not translated: {reason}")
        if t.userlist is not None and name not in seen_users:
            t.trailing.append(f"{s.where} [users] {name}: not translated: the user is not in the userlist")
    if not any_db:
        for u in t.userlist or []:
            t.trailing.append(f"{u.where} user {u.name}: not translated: there are no pools to list it in")
        t.header.append("the source has no [databases] entries: the output has no pools (only the admin "
                        "console can be reached); add them under `pools:`")
    for key in ("reserve_pool_size", "reserve_pool_timeout", "max_db_connections", "server_reset_query",
                "server_reset_query_always", "auth_user", "auth_query", "auth_dbname", "min_pool_size",
                "default_pool_size", "pool_mode"):
        ps = t.pg.get(key)
        if ps is not None and not any_db:
            t.trailing.append(f"{src_note(ps)}: not translated: there are no databases to apply it to")
