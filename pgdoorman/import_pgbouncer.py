"""`pg_doorman import-pgbouncer pgbouncer.ini [--userlist userlist.txt] [-o pg_doorman.yaml]`: translate a
PgBouncer configuration into a pgdoorman YAML config.

Every PgBouncer setting read ends up in the output: as a pgdoorman setting with a comment naming its source
line ("translated"), as a close pgdoorman setting with the difference explained ("approximated"), or as a
comment saying why it has no counterpart ("not translated"). PgBouncer defaults that differ from
pgdoorman's are written out explicitly so the translated pooler behaves like the source one. The result is
loaded with the real loader before it is written (a config that does not load is a bug, reported as such).
Malformed input (a line that is neither a section, a setting nor an %include, a bad connection string, an
unreadable or malformed userlist) exits with status 1 and `file:line: why`.

Docs: docs/migrating-from-pgbouncer.md (the translation table).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import secrets
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pgdoorman.config.render import _yaml_key, _yaml_value


class ImportFailed(Exception):
    """Malformed input: the message starts with `file:line:` when a line is to blame."""


# ------------------------------------------------------------------------------------------- reading
@dataclass
class Setting:
    key: str
    value: str
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{os.path.basename(self.file)}:{self.line}"


@dataclass
class Ini:
    # Section name (lower case) -> settings in file order; [databases] and [users] keys keep their case.
    sections: dict[str, list[Setting]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


_SECTION_RE = re.compile(r"^\[\s*([^\]]+?)\s*\]$")
_KEY_RE = re.compile(r"^([^=]+?)\s*=\s*(.*)$")


def read_ini(path: str, ini: Ini | None = None, section: str | None = None, depth: int = 0) -> Ini:
    """PgBouncer's ini syntax: `[section]`, `key = value`, comment lines starting with ; or #, and
    `%include file` (a relative name is taken relative to the current directory first, as PgBouncer does,
    then relative to the including file)."""
    ini = ini if ini is not None else Ini()
    if depth > 10:
        raise ImportFailed(f"{path}: %include nested more than 10 deep (a loop?)")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ImportFailed(f"{path}: cannot read: {e}") from None
    ini.files.append(path)
    current = section
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        where = f"{path}:{n}"
        if line.startswith("%"):
            word, _, arg = line.partition(" ")
            if word.lower() != "%include" or not arg.strip():
                raise ImportFailed(f"{where}: unknown directive {line!r} (only %include <file> exists)")
            name = arg.strip()
            target = name
            if not os.path.isabs(name) and not os.path.exists(name):
                target = os.path.join(os.path.dirname(os.path.abspath(path)), name)
            if not os.path.exists(target):
                raise ImportFailed(f"{where}: %include {name}: no such file")
            read_ini(target, ini, current, depth + 1)
            continue
        m = _SECTION_RE.match(line)
        if m:
            current = m.group(1).lower()
            ini.sections.setdefault(current, [])
            continue
        if line.startswith("["):
            raise ImportFailed(f"{where}: malformed section header {line!r}")
        m = _KEY_RE.match(line)
        if not m:
            raise ImportFailed(f"{where}: expected `key = value`, a [section] or %include, got {line!r}")
        if current is None:
            raise ImportFailed(f"{where}: setting {m.group(1)!r} outside any [section]")
        key = m.group(1).strip()
        if current not in ("databases", "users"):
            key = key.lower()
        ini.sections[current].append(Setting(key, _unquote_ini(m.group(2).strip()), path, n))
    return ini


def _unquote_ini(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse_connstring(s: Setting) -> list[tuple[str, str]]:
    """A [databases] / [users] value: `key=value` pairs separated by spaces; a value may be
    single-quoted ('' or \\' for a quote inside)."""
    text = s.value
    out: list[tuple[str, str]] = []
    i = 0
    n = len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return out
        start = i
        while i < n and text[i] != "=" and not text[i].isspace():
            i += 1
        key = text[start:i]
        while i < n and text[i].isspace():
            i += 1
        if i >= n or text[i] != "=" or not key:
            raise ImportFailed(f"{s.file}:{s.line}: {s.key}: expected key=value in {text!r} near {text[start:]!r}")
        i += 1
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == "'":
            i += 1
            buf: list[str] = []
            while True:
                if i >= n:
                    raise ImportFailed(f"{s.file}:{s.line}: {s.key}: unterminated quoted value for {key}")
                c = text[i]
                if c == "\\" and i + 1 < n:
                    buf.append(text[i + 1])
                    i += 2
                elif c == "'" and i + 1 < n and text[i + 1] == "'":
                    buf.append("'")
                    i += 2
                elif c == "'":
                    i += 1
                    break
                else:
                    buf.append(c)
                    i += 1
            value = "".join(buf)
        else:
            start = i
            while i < n and not text[i].isspace():
                i += 1
            value = text[start:i]
        out.append((key.lower(), value))


@dataclass
class UserEntry:
    name: str
    secret: str
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{os.path.basename(self.file)}:{self.line}"


def read_userlist(path: str) -> list[UserEntry]:
    """PgBouncer's auth_file: `"user" "secret" ...` per line (a doubled "" is a quote inside a field; the
    rest of the line is ignored). Empty lines and lines starting with ; or # are comments."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ImportFailed(f"{path}: cannot read the userlist: {e}") from None
    users: list[UserEntry] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        fields: list[str] = []
        i = 0
        while len(fields) < 2:
            while i < len(line) and line[i].isspace():
                i += 1
            if i >= len(line) or line[i] != '"':
                raise ImportFailed(f'{path}:{n}: expected "user" "password" (two double-quoted fields), got {raw!r}')
            i += 1
            buf: list[str] = []
            while True:
                if i >= len(line):
                    raise ImportFailed(f"{path}:{n}: unterminated double quote")
                if line[i] == '"':
                    if i + 1 < len(line) and line[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(line[i])
                i += 1
            fields.append("".join(buf))
        name, secret = fields
        if not name:
            raise ImportFailed(f"{path}:{n}: empty user name")
        if name in seen:
            # PgBouncer keeps the last one; say so rather than guess silently.
            users = [u for u in users if u.name != name]
        seen[name] = n
        users.append(UserEntry(name, secret, path, n))
    return users


# ------------------------------------------------------------------------------------------- values
_TRUE = {"1", "on", "yes", "true"}
_FALSE = {"0", "off", "no", "false"}


def _bool(s: Setting, value: str | None = None) -> bool:
    v = (s.value if value is None else value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ImportFailed(f"{s.file}:{s.line}: {s.key}: expected a boolean (0/1, on/off, yes/no), got {v!r}")


def _int(s: Setting, value: str | None = None, minimum: int = 0) -> int:
    v = (s.value if value is None else value).strip()
    try:
        n = int(v)
    except ValueError:
        raise ImportFailed(f"{s.file}:{s.line}: {s.key}: expected an integer, got {v!r}") from None
    if n < minimum:
        raise ImportFailed(f"{s.file}:{s.line}: {s.key}: must be at least {minimum}, got {n}")
    return n


_TIME_UNITS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


def _millis(s: Setting, value: str | None = None, unit_ms: float = 1000) -> int:
    """A PgBouncer time: a number in its default unit (seconds for most settings, milliseconds for
    tcp_user_timeout), or with a unit suffix (us, ms, s, min, h, d) as newer PgBouncers accept."""
    v = (s.value if value is None else value).strip().lower()
    m = re.match(r"^([0-9]+(?:\.[0-9]*)?)\s*([a-z]*)$", v)
    if not m or (m.group(2) and m.group(2) not in _TIME_UNITS):
        raise ImportFailed(f"{s.file}:{s.line}: {s.key}: expected a time (a number of seconds), got {v!r}")
    factor = _TIME_UNITS[m.group(2)] if m.group(2) else unit_ms
    return round(float(m.group(1)) * factor)


def _duration(ms: int) -> str:
    """pgdoorman's duration string for a number of milliseconds."""
    if ms % 86_400_000 == 0 and ms:
        return f"{ms // 86_400_000}d"
    if ms % 3_600_000 == 0 and ms:
        return f"{ms // 3_600_000}h"
    if ms % 60_000 == 0 and ms:
        return f"{ms // 60_000}m"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


def _is_mask(word: str) -> bool:
    try:
        ipaddress.ip_network(f"0.0.0.0/{word}" if "." in word else f"::/{word}")
    except ValueError:
        return False
    return "." in word or ":" in word


def _is_hashed(secret: str) -> bool:
    return secret.startswith("SCRAM-SHA-256$") or bool(re.fullmatch(r"md5[0-9a-f]{32}", secret))


# ------------------------------------------------------------------------------------------- output model
@dataclass
class Line:
    """One setting of the output (key=None: a comment only), with the comment written above it."""

    key: str | None
    value: Any = None
    notes: list[str] = field(default_factory=list)
    block: bool = False  # write a multi-line string as a YAML literal block


@dataclass
class UserOut:
    lines: list[Line] = field(default_factory=list)


@dataclass
class PoolOut:
    name: str
    lines: list[Line] = field(default_factory=list)
    auth_query: list[Line] = field(default_factory=list)
    users: list[UserOut] = field(default_factory=list)
    user_notes: list[str] = field(default_factory=list)


def _src(s: Setting, secret: bool = False) -> str:
    value = "***" if secret else s.value
    return f"{s.where} {s.key} = {value}"


_SECRET_KEYS = {"password"}

# PgBouncer settings with no counterpart, and why (anything else unknown gets a generic reason).
_NOT_TRANSLATED: dict[str, str] = {
    "logfile": "pgdoorman logs to stderr (the journal under systemd, or `2>>file` with -d) or to syslog "
               "(general.syslog_prog_name); the Debian package's logrotate rule covers /var/log/pg_doorman/*.log",
    "user": "run pgdoorman as the user you want (the Debian package's unit runs it as pg_doorman)",
    "unix_socket_group": "no counterpart; set the group of the socket directory instead (unix_socket_mode applies)",
    "syslog_facility": "pgdoorman logs to syslog with the default facility (user)",
    "log_pooler_errors": "pgdoorman always logs the errors it sends to clients at info level or above",
    "log_stats": "no periodic stats lines in the log; use SHOW STATS on the admin console or /metrics",
    "stats_period": "pgdoorman's SHOW STATS averages and /metrics have their own fixed periods",
    "verbose": "use `pg_doorman -l debug` (or LOG_LEVEL=debug) for more log output",
    "max_user_connections": "pgdoorman limits server connections per user and pool (pool_size), not per user "
                            "across pools",
    "max_db_client_connections": "pgdoorman has no per-database client limit (general.max_connections is global)",
    "max_user_client_connections": "pgdoorman has no per-user client limit (general.max_connections is global)",
    "server_check_query": "pgdoorman's idle check (general.server_idle_check_timeout, PgDoorman's empty query) "
                          "is not implemented yet; broken servers are replaced when they fail",
    "server_check_delay": "see server_check_query",
    "server_fast_close": "pgdoorman closes servers of removed or changed pools when they are given back",
    "server_login_retry": "pgdoorman retries a failed server login at the next client request",
    "client_login_timeout": "pgdoorman allows a fixed time for a client to log in",
    "autodb_idle_timeout": "no automatically created databases (the * entry is not translated)",
    "dns_max_ttl": "pgdoorman resolves server host names with the system resolver on each connect",
    "dns_nxdomain_ttl": "see dns_max_ttl",
    "dns_zone_check_period": "see dns_max_ttl",
    "resolv_conf": "see dns_max_ttl",
    "pkt_buf": "pgdoorman sizes its buffers itself",
    "max_packet_size": "no counterpart",
    "sbuf_loopcnt": "no counterpart",
    "so_reuseport": "pgdoorman always binds with SO_REUSEPORT, one listener per worker thread "
                    "(general.worker_threads); run one pgdoorman rather than several processes",
    "tcp_defer_accept": "no counterpart",
    "suspend_timeout": "no SUSPEND / online reboot (-R): pgdoorman's binary upgrade (SIGUSR2) replaces it",
    "query_timeout": "no counterpart; use PostgreSQL's statement_timeout",
    "client_idle_timeout": "no counterpart",
    "idle_transaction_timeout": "no counterpart; use PostgreSQL's idle_in_transaction_session_timeout",
    "transaction_timeout": "no counterpart; use PostgreSQL's transaction_timeout (PostgreSQL 17)",
    "query_wait_notify": "pgdoorman sends no NOTICE while a client waits",
    "application_name_add_host": "no counterpart",
    "disable_pqexec": "no counterpart",
    "conffile": "pgdoorman re-reads the file it was started with",
    "service_name": "Windows only",
    "job_name": "Windows only",
    "track_extra_parameters": "pgdoorman already follows every setting a client makes (SET or startup packet) "
                              "to whichever server it gets",
    "peer_id": "no peering: pgdoorman is one multi-threaded process, cancel requests reach it whatever "
               "thread got them",
    "auth_ident_file": "no ident maps",
    "auth_ldap_options": "no LDAP",
    "scram_iterations": "pgdoorman keeps the iteration count of each stored verifier",
    "client_tls_protocols": "pgdoorman accepts TLS 1.2 and later (Python's ssl defaults)",
    "client_tls_ciphers": "pgdoorman uses Python's ssl default ciphers",
    "client_tls13_ciphers": "pgdoorman uses Python's ssl default ciphers",
    "client_tls_ecdhcurve": "pgdoorman uses Python's ssl defaults",
    "client_tls_dheparams": "pgdoorman uses Python's ssl defaults",
    "server_tls_protocols": "pgdoorman uses Python's ssl defaults (TLS 1.2 and later)",
    "server_tls_ciphers": "pgdoorman uses Python's ssl default ciphers",
    "server_tls13_ciphers": "pgdoorman uses Python's ssl default ciphers",
    "syslog_ident": "see syslog",
    "server_reset_query_always": "see server_reset_query",
    "pool_idle_timeout": "no counterpart",
    "load_balance_hosts": "one server host per pool (use patroni_proxy or DNS for several)",
    "max_prepared_statements": "",
    "listen_backlog": "",
}

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


class Translator:
    def __init__(self, ini: Ini, userlist: list[UserEntry] | None, userlist_path: str | None) -> None:
        self.ini = ini
        self.general: list[Line] = []
        self.trailing: list[str] = []  # comments for [pgbouncer] settings with no counterpart
        self.pools: list[PoolOut] = []
        self.header: list[str] = []
        self.pg = {s.key: s for s in ini.sections.get("pgbouncer", [])}
        self.used: set[str] = set()
        self.userlist = userlist
        self.userlist_path = userlist_path

    # ---- helpers
    def _get(self, key: str) -> Setting | None:
        s = self.pg.get(key)
        if s is not None:
            self.used.add(key)
        return s

    def _gen(self, key: str, value: Any, *notes: str, block: bool = False) -> None:
        self.general.append(Line(key, value, list(notes), block))

    def _default_note(self, key: str, default: str) -> str:
        return f"not set in the source: PgBouncer's default {key} = {default}, written out"

    # ---- [pgbouncer]
    def translate(self) -> None:
        self._listen()
        self._admin()
        self._timeouts()
        self._tcp()
        self._logging()
        self._tls()
        self._prepared()
        self._auth_rules()
        self._databases()
        for s in self.ini.sections.get("pgbouncer", []):
            if s.key in self.used:
                continue
            reason = _NOT_TRANSLATED.get(s.key)
            if not reason:
                reason = "not a setting pgdoorman has a counterpart for (or not a PgBouncer setting)"
            secret = "password" in s.key
            self.trailing.append(f"{_src(s, secret)}: not translated: {reason}")
        for name, settings in self.ini.sections.items():
            if name in ("pgbouncer", "databases", "users"):
                continue
            for s in settings:
                why = ("no peering: pgdoorman is one process" if name == "peers"
                       else f"unknown section [{name}]")
                self.trailing.append(f"{_src(s)}: not translated: {why}")

    def _listen(self) -> None:
        s = self._get("listen_addr")
        if s is None or not s.value.strip():
            self._gen("host", "127.0.0.1",
                      "approximated: listen_addr is not set in the source, so PgBouncer listened on its Unix "
                      "socket only; pgdoorman always listens on TCP too, here on 127.0.0.1 only")
        else:
            addrs = [a.strip() for a in s.value.split(",") if a.strip()]
            first = addrs[0]
            host = {"*": "0.0.0.0", "localhost": "127.0.0.1"}.get(first, first)
            notes = [f"{_src(s)}: translated"]
            if first == "*":
                notes = [f"{_src(s)}: approximated: * (every IPv4 and IPv6 address) becomes 0.0.0.0 (every IPv4 "
                         "address); use \"::\" for IPv6 as well where the system maps IPv4 onto IPv6 sockets"]
            elif first == "localhost":
                notes = [f"{_src(s)}: approximated: localhost becomes 127.0.0.1 (pgdoorman binds one address)"]
            if len(addrs) > 1:
                notes.append(f"approximated: pgdoorman binds one address; {', '.join(addrs[1:])} not bound")
            self._gen("host", host, *notes)
        s = self._get("listen_port")
        if s is not None:
            self._gen("port", _int(s, minimum=1), f"{_src(s)}: translated")
        else:
            self._gen("port", 6432, self._default_note("listen_port", "6432"))
        s = self._get("unix_socket_dir")
        mode = self._get("unix_socket_mode")
        if s is not None and not s.value.strip():
            note = f"{s.where} unix_socket_dir is empty: no Unix socket (pgdoorman's default too)"
            self.general.append(Line(None, None, [note]))
            if mode is not None:
                self.general.append(Line(None, None, [f"{_src(mode)}: not translated: no Unix socket"]))
            self.unix_dir: str | None = None
            return
        self.unix_dir = s.value.strip() if s is not None else "/tmp"
        self._gen("unix_socket_dir", self.unix_dir,
                  f"{_src(s)}: translated" if s is not None else self._default_note("unix_socket_dir", "/tmp"))
        if mode is not None:
            self._gen("unix_socket_mode", f"{int(mode.value.strip(), 8):04o}" if re.fullmatch(r"[0-7]+", mode.value.strip())
                      else mode.value.strip(), f"{_src(mode)}: translated")
        else:
            self._gen("unix_socket_mode", "0777", self._default_note("unix_socket_mode", "0777"))

    def _admin(self) -> None:
        s = self._get("admin_users")
        stats = self._get("stats_users")
        names = [n.strip() for n in s.value.split(",") if n.strip()] if s is not None else []
        if not names:
            self._gen("admin_username", "admin",
                      "pgdoorman needs one admin console user; the source has no admin_users (PgBouncer let only "
                      "the Unix user `pgbouncer` in over the socket), so this one is made up")
            self._gen("admin_password", secrets.token_urlsafe(18), "a random password: change it")
        else:
            assert s is not None
            notes = [f"{_src(s)}: translated" if len(names) == 1 else
                     f"{_src(s)}: approximated: pgdoorman has one admin user; {', '.join(names[1:])} get no "
                     "console access"]
            self._gen("admin_username", names[0], *notes)
            entry = self._user(names[0])
            if entry is not None and entry.secret and not entry.secret.startswith("md5"):
                self._gen("admin_password", entry.secret,
                          f"the password of {names[0]} from {entry.where} (a plain-text password or a SCRAM "
                          "verifier: both work for the admin console)")
            else:
                why = ("its userlist entry is an md5 hash, which the admin console cannot check against"
                       if entry is not None and entry.secret else "the userlist has no password for it")
                self._gen("admin_password", secrets.token_urlsafe(18),
                          f"a random password: {why}; put the plain-text password or its SCRAM verifier here")
        if stats is not None:
            self.general.append(Line(None, None, [
                f"{_src(stats)}: not translated: pgdoorman has no read-only console users (SHOW is open to the "
                "admin user; /metrics (section web) serves the same numbers without a login)"]))

    def _user(self, name: str) -> UserEntry | None:
        for u in self.userlist or []:
            if u.name == name:
                return u
        return None

    def _timeouts(self) -> None:
        s = self._get("max_client_conn")
        if s is not None:
            self._gen("max_connections", _int(s, minimum=1), f"{_src(s)}: translated")
        else:
            self._gen("max_connections", 100, self._default_note("max_client_conn", "100"))
        for pgb, ours, default in (("server_connect_timeout", "connect_timeout", 15),
                                   ("query_wait_timeout", "query_wait_timeout", 120),
                                   ("server_idle_timeout", "idle_timeout", 600),
                                   ("server_lifetime", "server_lifetime", 3600)):
            s = self._get(pgb)
            ms = _millis(s) if s is not None else default * 1000
            note = f"{_src(s)}: translated" if s is not None else self._default_note(pgb, str(default))
            if ms == 0:
                if ours == "query_wait_timeout":
                    self._gen(ours, "7d", f"{_src(s) if s else pgb}: approximated: 0 (wait forever) becomes 7 days "
                              "(0 means no waiting at all in pgdoorman)")
                    continue
                if ours == "connect_timeout":
                    self._gen(ours, "1h", f"{_src(s) if s else pgb}: approximated: 0 (no limit) becomes 1 hour")
                    continue
                note += " (0 disables it in both)"
            self._gen(ours, _duration(ms), note)
        s = self._get("listen_backlog")
        if s is not None:
            self._gen("backlog", _int(s), f"{_src(s)}: translated")
        s = self._get("pidfile")
        if s is not None and s.value.strip():
            self._gen("daemon_pid_file", s.value.strip(), f"{_src(s)}: translated (used with -d)")
        s = self._get("server_round_robin")
        if s is not None:
            self._gen("server_round_robin", _bool(s), f"{_src(s)}: translated; pgdoorman does not implement it "
                      "yet (-t warns) and hands out the most recently used server first")

    def _tcp(self) -> None:
        ka = self._get("tcp_keepalive")
        if ka is not None and not _bool(ka):
            self._gen("tcp_keepalives_idle", 0, f"{_src(ka)}: translated: 0 turns keepalives off")
            for k in ("tcp_keepidle", "tcp_keepintvl", "tcp_keepcnt"):
                s = self._get(k)
                if s is not None:
                    self.general.append(Line(None, None, [f"{_src(s)}: not translated: keepalives are off"]))
        else:
            note0 = f"{_src(ka)}: translated (on); " if ka is not None else ""
            for pgb, ours, linux in (("tcp_keepidle", "tcp_keepalives_idle", 7200),
                                     ("tcp_keepintvl", "tcp_keepalives_interval", 75),
                                     ("tcp_keepcnt", "tcp_keepalives_count", 9)):
                s = self._get(pgb)
                value = _int(s) if s is not None else 0
                if value == 0:
                    why = f"{_src(s)}: 0" if s is not None else f"not set in the source: PgBouncer's default {pgb} = 0"
                    self._gen(ours, linux, note0 + f"{why} (the kernel's default) becomes Linux's default, "
                              f"{linux}, written out")
                else:
                    assert s is not None
                    self._gen(ours, value, note0 + f"{_src(s)}: translated")
                note0 = ""
        s = self._get("tcp_user_timeout")
        if s is not None:
            ms = _millis(s, unit_ms=1)
            secs = (ms + 999) // 1000
            note = f"{_src(s)}: translated" if ms % 1000 == 0 else \
                f"{_src(s)}: approximated: milliseconds rounded up to whole seconds"
            self._gen("tcp_user_timeout", secs, note)
        else:
            self._gen("tcp_user_timeout", 0, self._default_note("tcp_user_timeout", "0 (the kernel's default)"))
        s = self._get("tcp_socket_buffer")
        if s is not None:
            self._gen("tcp_socket_buffer_size", _int(s), f"{_src(s)}: translated; pgdoorman does not implement it "
                      "yet (-t warns)")

    def _logging(self) -> None:
        for pgb, ours in (("log_connections", "log_client_connections"),
                          ("log_disconnections", "log_client_disconnections")):
            s = self._get(pgb)
            if s is not None:
                self._gen(ours, _bool(s), f"{_src(s)}: translated (client side; pgdoorman logs server "
                          "connections at debug level)")
        s = self._get("syslog")
        ident = self.pg.get("syslog_ident")
        if s is not None and _bool(s):
            self.used.add("syslog_ident")
            name = ident.value.strip() if ident is not None and ident.value.strip() else "pgbouncer"
            notes = [f"{_src(s)}: translated"]
            notes.append(f"{_src(ident)}: translated" if ident is not None else
                         "PgBouncer's default syslog_ident = pgbouncer")
            self._gen("syslog_prog_name", name, *notes)
        elif s is not None:
            self.general.append(Line(None, None, [f"{_src(s)}: translated: no syslog (pgdoorman's default)"]))

    def _tls(self) -> None:
        mode = self._get("client_tls_sslmode")
        key = self._get("client_tls_key_file")
        cert = self._get("client_tls_cert_file")
        ca = self._get("client_tls_ca_file")
        m = mode.value.strip().lower() if mode is not None else "disable"
        mapping = {"disable": ("disable", ""), "allow": ("allow", ""),
                   "prefer": ("allow", "prefer and allow are the same for a listener: TLS if the client asks"),
                   "require": ("require", ""),
                   "verify-ca": ("verify-full", "pgdoorman's verify-full checks the client certificate against "
                                 "tls_ca_cert, as verify-ca does"),
                   "verify-full": ("verify-full", "")}
        if m not in mapping:
            raise ImportFailed(f"{mode.file}:{mode.line}: client_tls_sslmode: unknown mode {m!r}" if mode else m)
        ours, why = mapping[m]
        if mode is not None or cert is not None:
            note = (f"{_src(mode)}: " if mode is not None else "client_tls_sslmode not set: ") + \
                   (f"approximated: {why}" if why else "translated")
            self._gen("tls_mode", ours, note)
        else:
            self._gen("tls_mode", "disable", self._default_note("client_tls_sslmode", "disable"))
        for s, ours in ((cert, "tls_certificate"), (key, "tls_private_key"), (ca, "tls_ca_cert")):
            if s is not None and s.value.strip():
                self._gen(ours, s.value.strip(), f"{_src(s)}: translated")
        smode = self._get("server_tls_sslmode")
        sm = smode.value.strip().lower() if smode is not None else "prefer"
        if sm not in ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"):
            assert smode is not None
            raise ImportFailed(f"{smode.file}:{smode.line}: server_tls_sslmode: unknown mode {sm!r}")
        self._gen("server_tls_mode", sm, f"{_src(smode)}: translated" if smode is not None
                  else self._default_note("server_tls_sslmode", "prefer"))
        for pgb, ours in (("server_tls_ca_file", "server_tls_ca_cert"), ("server_tls_cert_file", "server_tls_certificate"),
                          ("server_tls_key_file", "server_tls_private_key")):
            s = self._get(pgb)
            if s is not None and s.value.strip():
                self._gen(ours, s.value.strip(), f"{_src(s)}: translated")

    def _prepared(self) -> None:
        s = self._get("max_prepared_statements")
        if s is None:
            self.general.append(Line(None, None, [
                "max_prepared_statements not set in the source (PgBouncer 1.21-1.23: 0, off; 1.24 and later: 200): "
                "pgdoorman keeps prepared statement support on (its default), which only matters to clients that "
                "use protocol-level prepared statements, and makes them work in transaction mode"]))
            return
        n = _int(s)
        if n == 0:
            self._gen("prepared_statements", False, f"{_src(s)}: translated: 0 turns the support off")
        else:
            self._gen("prepared_statements", True, f"{_src(s)}: translated")
            self._gen("server_prepared_statements_cache_size", n,
                      f"{_src(s)}: translated: the same per-server-connection LRU limit")

    # ---- authentication: auth_type, auth_hba_file -> pg_hba
    def _auth_rules(self) -> None:
        s = self._get("auth_type")
        kind = s.value.strip().lower() if s is not None else "md5"
        where = _src(s) if s is not None else "auth_type not set (PgBouncer's default md5)"
        self.auth_kind = kind
        hba_file = self._get("auth_hba_file")
        if kind in ("md5", "plain"):
            extra = "" if kind == "md5" else "; plain (clear-text password exchange) is approximated by md5/SCRAM"
            self.general.append(Line(None, None, [
                f"{where}: translated: with no pg_hba rules pgdoorman asks each client for the kind of secret "
                "stored for it (md5 hash: md5, SCRAM verifier or plain text: SCRAM), as PgBouncer's md5 "
                "does for md5 hashes and SCRAM verifiers" + extra]))
        elif kind == "scram-sha-256":
            self._gen("pg_hba", "local all all scram-sha-256\nhost all all 0.0.0.0/0 scram-sha-256\n"
                      "host all all ::/0 scram-sha-256\n", f"{where}: translated: SCRAM for every client", block=True)
        elif kind in ("trust", "any"):
            note = f"{where}: translated: every client is let in without a password"
            if kind == "any":
                note = (f"{where}: approximated: like trust; PgBouncer's `any` also ignored the user name, "
                        "pgdoorman lets in only users listed in the pool")
            self._gen("pg_hba", "local all all trust\nhost all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n",
                      note, block=True)
        elif kind == "hba":
            if hba_file is None or not hba_file.value.strip():
                raise ImportFailed(f"{s.file}:{s.line}: auth_type = hba needs auth_hba_file" if s else "hba")
            self._hba(hba_file, where)
            return
        elif kind in ("cert", "pam", "ldap"):
            reason = {"cert": "pgdoorman has no certificate login (tls_mode verify-full checks client "
                              "certificates but still asks for a password)",
                      "pam": "pgdoorman's PAM is per user (users[].auth_pam_service) and needs "
                             "server_username/server_password: set those by hand",
                      "ldap": "pgdoorman has no LDAP login"}[kind]
            self.general.append(Line(None, None, [
                f"{where}: not translated: {reason}; clients log in with md5/SCRAM against the stored secrets"]))
        else:
            raise ImportFailed(f"{s.file}:{s.line}: auth_type: unknown method {kind!r}" if s else kind)
        if hba_file is not None:
            self.general.append(Line(None, None, [f"{_src(hba_file)}: not translated: only used with auth_type = hba"]))

    def _hba(self, s: Setting, where: str) -> None:
        path = s.value.strip()
        if not os.path.isabs(path) and not os.path.exists(path):
            path = os.path.join(os.path.dirname(os.path.abspath(s.file)), path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ImportFailed(f"{s.file}:{s.line}: auth_hba_file {s.value.strip()}: {e}") from None
        kept: list[str] = []
        notes = [f"{where} with {_src(s)}: translated rule by rule into pg_hba (inline); each md5 rule becomes a "
                 "scram-sha-256 + md5 pair, as PgBouncer's md5 runs SCRAM for SCRAM secrets and pgdoorman reads "
                 "the rules per password method (docs/pg_hba.md)"]
        methods = {"trust": "trust", "reject": "reject", "md5": "md5", "scram-sha-256": "scram-sha-256",
                   "password": "md5"}
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            words = line.split()
            tag = f"{os.path.basename(path)}:{n}"
            if words[0] not in ("local", "host", "hostssl", "hostnossl"):
                notes.append(f"{tag} {line!r}: not translated: unknown connection type {words[0]!r}")
                continue
            mi = 3 if words[0] == "local" else 4
            if len(words) <= mi:
                raise ImportFailed(f"{path}:{n}: too few fields in {line!r}")
            if words[0] != "local" and "/" not in words[3] and len(words) > 5 and _is_mask(words[4]):
                # PostgreSQL's address + netmask form: written as CIDR.
                prefix = ipaddress.ip_network(f"0.0.0.0/{words[4]}" if "." in words[4] else f"::/{words[4]}").prefixlen
                words = [*words[:3], f"{words[3]}/{prefix}", *words[5:]]
            if words[0] != "local" and words[3] in ("samehost", "samenet"):
                notes.append(f"{tag} {line!r}: not translated: {words[3]} is not supported; write the network out")
                continue
            method = words[mi]
            if any("@" in w for w in words[1:3]):
                notes.append(f"{tag} {line!r}: not translated: @file lists are not supported; write the names out")
                continue
            if method not in methods:
                notes.append(f"{tag} {line!r}: not translated: method {method} is not supported by pgdoorman "
                             "(trust, reject, md5, scram-sha-256); a client matching no rule is refused")
                continue
            rest = words[mi + 1:]
            if rest:
                notes.append(f"{tag}: options {' '.join(rest)} dropped")
            if method == "password":
                notes.append(f"{tag}: approximated: method password becomes md5")
            if methods[method] == "md5":
                # PgBouncer's md5 runs SCRAM for users whose secret is a SCRAM verifier; pgdoorman reads the
                # rules per password method (docs/pg_hba.md), so the pair keeps both kinds of user in here.
                kept.append(" ".join(words[:mi] + ["scram-sha-256"]))
            kept.append(" ".join(words[:mi] + [methods[method]]))
        if not kept:
            kept.append("host all all 0.0.0.0/0 reject")
            notes.append("no rule could be translated: everything is refused until you write pg_hba rules")
        self._gen("pg_hba", "\n".join(kept) + "\n", *notes, block=True)

    # ---- [databases] and [users]
    def _databases(self) -> None:
        dbs: list[_Db] = []
        fallback: Setting | None = None
        for s in self.ini.sections.get("databases", []):
            params = dict(parse_connstring(s))
            if s.key == "*":
                fallback = s
                continue
            dbs.append(_Db(s.key, s, params))
        if fallback is not None:
            self.header.append(
                f"{_src(fallback)}: not translated: pgdoorman has no fallback (automatic) database; every "
                "database clients use must be a pool. `pg_doorman generate --host <server>` lists a server's "
                "databases and roles as pools")
        users_section = {s.key: (s, dict(parse_connstring(s))) for s in self.ini.sections.get("users", [])}
        if self.userlist is None:
            self.header.append("no userlist was read (no --userlist and no readable auth_file): the pools "
                               "have no users until you add them")
        elif not self.userlist:
            self.header.append(f"the userlist {self.userlist_path} lists no users: the pools have no users")
        pool_mode_s = self._get("pool_mode")
        default_mode = pool_mode_s.value.strip().lower() if pool_mode_s is not None else "session"
        default_size_s = self._get("default_pool_size")
        default_size = _int(default_size_s, minimum=0) if default_size_s is not None else 20
        min_size_s = self._get("min_pool_size")
        min_size = _int(min_size_s) if min_size_s is not None else 0
        reserve_s = self._get("reserve_pool_size")
        reserve_t = self._get("reserve_pool_timeout")
        maxdb_s = self._get("max_db_connections")
        reset_s = self._get("server_reset_query")
        reset_always = self._get("server_reset_query_always")
        ignore_s = self._get("ignore_startup_parameters")
        auth_user_s = self._get("auth_user")
        auth_query_s = self._get("auth_query")
        auth_db_s = self._get("auth_dbname")
        if ignore_s is not None:
            self.general.append(Line(None, None, [
                f"{_src(ignore_s)}: not needed: pgdoorman accepts every startup parameter and applies it on whichever "
                "server the client gets (PostgreSQL itself refuses ones it does not know)"]))
        seen_users = set()
        for db in dbs:
            pool = PoolOut(db.name)
            p = db.params
            src = f"{db.setting.where} [databases] {db.name}"
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
                d = self.unix_dir or "/tmp"
                pool.lines.append(Line("server_host", d, [
                    f"{src}: no host: PgBouncer connects to the Unix socket in unix_socket_dir ({d})"]))
            if "port" in p:
                pool.lines.append(Line("server_port", _int(db.setting, p["port"], minimum=1),
                                       [f"{src}: port={p['port']}: translated"]))
            if "dbname" in p and p["dbname"] != db.name:
                pool.lines.append(Line("server_database", p["dbname"], [f"{src}: dbname={p['dbname']}: translated"]))
            mode = p.get("pool_mode", "").lower() or default_mode
            mode_note = (f"{src}: pool_mode={p['pool_mode']}: translated" if "pool_mode" in p else
                         f"{_src(pool_mode_s)}: translated" if pool_mode_s is not None else
                         "not set in the source: PgBouncer's default pool_mode = session")
            if mode == "statement":
                mode = "transaction"
                mode_note += "; approximated: statement mode does not exist in pgdoorman, transaction is closest " \
                             "(multi-statement transactions are allowed)"
            elif mode not in ("session", "transaction"):
                raise ImportFailed(f"{db.setting.file}:{db.setting.line}: pool_mode: unknown mode {mode!r}")
            pool.lines.append(Line("pool_mode", mode, [mode_note]))
            if "application_name" in p:
                pool.lines.append(Line("application_name", p["application_name"],
                                       [f"{src}: application_name: translated (clients' own application_name still "
                                        "wins)"]))
            if "server_lifetime" in p:
                pool.lines.append(Line("server_lifetime", _millis(db.setting, p["server_lifetime"]),
                                       [f"{src}: server_lifetime={p['server_lifetime']}: translated (milliseconds)"]))
            # Server-side defaults -> startup_parameters.
            startup: dict[str, str] = {}
            for k, guc in (("client_encoding", "client_encoding"), ("datestyle", "DateStyle"), ("timezone", "TimeZone")):
                if k in p:
                    startup[guc] = p[k]
            if startup:
                pool.lines.append(Line("startup_parameters", startup, [
                    f"{src}: {', '.join(f'{k}={v}' for k, v in startup.items())}: translated into the startup "
                    "parameters of the pool's server connections; pgdoorman does not implement them yet (-t warns): "
                    "until it does, servers start with PostgreSQL's defaults and clients' own settings still follow "
                    "them"]))
            if "connect_query" in p:
                pool.lines.append(Line(None, None, [f"{src}: connect_query: not translated: no counterpart"]))
            for k in ("load_balance_hosts", "max_db_client_connections"):
                if k in p:
                    pool.lines.append(Line(None, None, [f"{src}: {k}: not translated: {_NOT_TRANSLATED[k]}"]))
            # max_db_connections / reserve pool (PgDoorman's coordinator; not implemented by pgdoorman yet).
            maxdb = _int(db.setting, p["max_db_connections"]) if "max_db_connections" in p else (
                _int(maxdb_s) if maxdb_s is not None else 0)
            if maxdb:
                where = f"{src}: max_db_connections" if "max_db_connections" in p else _src(maxdb_s) if maxdb_s else ""
                pool.lines.append(Line("max_db_connections", maxdb, [
                    f"{where}: translated (PgDoorman's pool coordinator); pgdoorman does not implement it yet "
                    "(-t warns): until it does, only each user's pool_size limits server connections"]))
            reserve_raw = p.get("reserve_pool", p.get("reserve_pool_size"))
            reserve = _int(db.setting, reserve_raw) if reserve_raw is not None else (
                _int(reserve_s) if reserve_s is not None else 0)
            if reserve:
                where = f"{src}: reserve_pool" if reserve_raw is not None else _src(reserve_s) if reserve_s else ""
                if maxdb:
                    pool.lines.append(Line("reserve_pool_size", reserve, [
                        f"{where}: translated; pgdoorman does not implement it yet (-t warns)"]))
                    if reserve_t is not None:
                        pool.lines.append(Line("reserve_pool_timeout", _millis(reserve_t), [
                            f"{_src(reserve_t)}: translated (milliseconds); not implemented by pgdoorman yet"]))
                else:
                    pool.lines.append(Line(None, None, [
                        f"{where}: not translated: PgDoorman's reserve is part of max_db_connections, which the "
                        "source does not set; raise pool_size instead"]))
            elif reserve_t is not None and maxdb:
                pool.lines.append(Line(None, None, [f"{_src(reserve_t)}: not translated: no reserve pool"]))
            # server_reset_query -> cleanup_server_connections
            if reset_s is not None and not reset_s.value.strip():
                pool.lines.append(Line("cleanup_server_connections", False, [
                    f"{_src(reset_s)}: translated: an empty reset query means no cleanup; open transactions are "
                    "still rolled back"]))
            elif reset_s is not None or reset_always is not None:
                notes = []
                if reset_s is not None:
                    notes.append(f"{_src(reset_s)}: approximated: pgdoorman runs its own cleanup (RESET ALL, "
                                 "DEALLOCATE ALL, CLOSE ALL, UNLISTEN *, as needed) when a client gave back a server "
                                 "whose session state it changed, in both modes, instead of this query")
                if reset_always is not None:
                    notes.append(f"{_src(reset_always)}: approximated: pgdoorman's cleanup runs in every mode")
                pool.lines.append(Line("cleanup_server_connections", True, notes))
            # auth_user / auth_query -> auth_query (not implemented by pgdoorman yet)
            au = p.get("auth_user") or (auth_user_s.value.strip() if auth_user_s is not None else "")
            if au:
                aq_src = f"{src}: auth_user={au}" if "auth_user" in p else _src(auth_user_s) if auth_user_s else ""
                query = p.get("auth_query") or (auth_query_s.value.strip() if auth_query_s is not None else
                                                PGBOUNCER_AUTH_QUERY)
                pool.auth_query.append(Line("query", query, [
                    f"{_src(auth_query_s)}: translated" if auth_query_s is not None and "auth_query" not in p else
                    "PgBouncer's default auth_query" if "auth_query" not in p else f"{src}: auth_query: translated"]))
                pool.auth_query.append(Line("user", au, [f"{aq_src}: translated"]))
                entry = self._user(au)
                if entry is not None and entry.secret and not _is_hashed(entry.secret):
                    pool.auth_query.append(Line("password", entry.secret, [f"its password, from {entry.where}"]))
                else:
                    pool.auth_query.append(Line(None, None, [
                        f"password of {au}: PgBouncer logs in as auth_user with its userlist secret (possibly a "
                        "hash); pgdoorman wants it in plain text here: fill it in"]))
                adb = p.get("auth_dbname") or (auth_db_s.value.strip() if auth_db_s is not None else "")
                if adb:
                    adb_src = (f"{src}: auth_dbname={adb}" if "auth_dbname" in p else
                               _src(auth_db_s) if auth_db_s is not None else "auth_dbname")
                    pool.auth_query.append(Line("database", adb, [f"{adb_src}: translated"]))
                pool.auth_query.append(Line("pool_size", int(p.get("pool_size") or default_size or 1), [
                    "the pool size of looked-up users, like the pool's"]))
                pool.user_notes.append(
                    "auth_query is not implemented by pgdoorman yet (-t warns): only the users listed below can "
                    "log in; add the others (their pg_authid secret as password) until it is")
            elif auth_query_s is not None and db is dbs[0]:
                pool.lines.append(Line(None, None, [f"{_src(auth_query_s)}: not translated: no auth_user is set, "
                                                    "so PgBouncer does not use it either"]))
            # users
            size_src = (f"{src}: pool_size" if "pool_size" in p else
                        _src(default_size_s) if default_size_s is not None else "PgBouncer's default_pool_size = 20")
            size = _int(db.setting, p["pool_size"]) if "pool_size" in p else default_size
            min_here = _int(db.setting, p["min_pool_size"]) if "min_pool_size" in p else min_size
            min_src = f"{src}: min_pool_size" if "min_pool_size" in p else _src(min_size_s) if min_size_s else ""
            forced_user = p.get("user")
            forced_pw = p.get("password")
            for u in self.userlist or []:
                seen_users.add(u.name)
                out = UserOut()
                out.lines.append(Line("username", u.name, [f"from {u.where}"]))
                kind = ("SCRAM verifier" if u.secret.startswith("SCRAM-SHA-256$") else
                        "md5 hash" if _is_hashed(u.secret) else "plain-text password" if u.secret else "empty password")
                pw_note = f"its {kind} from the userlist"
                if kind == "md5 hash":
                    pw_note += " (passthrough: works as long as PostgreSQL stores the same md5 hash)"
                elif kind == "SCRAM verifier":
                    pw_note += " (passthrough: works as long as PostgreSQL stores the same verifier)"
                out.lines.append(Line("password", u.secret, [pw_note]))
                u_sect = users_section.get(u.name)
                u_params = u_sect[1] if u_sect is not None else {}
                u_size = size
                u_size_src = size_src
                if "pool_size" in u_params:
                    assert u_sect is not None
                    u_size = _int(u_sect[0], u_params["pool_size"])
                    u_size_src = f"{u_sect[0].where} [users] {u.name} pool_size"
                if u_size == 0:
                    out.lines.append(Line("pool_size", 1, [f"{u_size_src} = 0: approximated: pgdoorman needs at "
                                                           "least 1"]))
                    u_size = 1
                else:
                    out.lines.append(Line("pool_size", u_size, [f"{u_size_src}: translated"]))
                if min_here:
                    m = min(min_here, u_size)
                    out.lines.append(Line("min_pool_size", m, [f"{min_src}: translated" + (
                        "" if m == min_here else f" (capped at pool_size {u_size})")]))
                if "pool_mode" in u_params:
                    assert u_sect is not None
                    um = u_params["pool_mode"].lower()
                    note = f"{u_sect[0].where} [users] {u.name} pool_mode: translated"
                    if um == "statement":
                        um = "transaction"
                        note += "; approximated: statement mode becomes transaction"
                    out.lines.append(Line("pool_mode", um, [note]))
                if forced_user:
                    out.lines.append(Line("server_username", forced_user, [f"{src}: user={forced_user}: translated: "
                                                                           "every client uses this role on the server"]))
                    pw = forced_pw
                    pw_src = f"{src}: password=***: translated"
                    if pw is None:
                        fe = self._user(forced_user)
                        if fe is not None and fe.secret and not _is_hashed(fe.secret):
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
                pool.users.append(out)
            self.pools.append(pool)
        for name, (s, params) in users_section.items():
            handled = {"pool_mode", "pool_size"}
            for k, v in params.items():
                if k not in handled:
                    reason = _NOT_TRANSLATED.get(k, "no per-user counterpart")
                    self.trailing.append(f"{s.where} [users] {name} {k}={v}: not translated: {reason}")
            if self.userlist is not None and name not in seen_users:
                self.trailing.append(f"{s.where} [users] {name}: not translated: the user is not in the userlist")
        if not dbs:
            for u in self.userlist or []:
                self.trailing.append(f"{u.where} user {u.name}: not translated: there are no pools to list it in")
            self.header.append("the source has no [databases] entries: the output has no pools (only the admin "
                               "console can be reached); add them under `pools:`")
        for key in ("reserve_pool_size", "reserve_pool_timeout", "max_db_connections", "server_reset_query",
                    "server_reset_query_always", "auth_user", "auth_query", "auth_dbname", "min_pool_size",
                    "default_pool_size", "pool_mode"):
            ps = self.pg.get(key)
            if ps is not None and not dbs:
                self.trailing.append(f"{_src(ps)}: not translated: there are no databases to apply it to")


# ------------------------------------------------------------------------------------------- writing
_WIDTH = 100


def _comments(pad: str, notes: list[str]) -> list[str]:
    out: list[str] = []
    for note in notes:
        for i, line in enumerate(textwrap.wrap(note, _WIDTH - len(pad) - 2, break_on_hyphens=False,
                                               break_long_words=False)):
            out.append(f"{pad}# {'  ' if i else ''}{line}")
    return out


def _emit(lines: list[Line], pad: str) -> list[str]:
    out: list[str] = []
    for ln in lines:
        out += _comments(pad, ln.notes)
        if ln.key is None:
            continue
        if ln.block and isinstance(ln.value, str) and "\n" in ln.value:
            out.append(f"{pad}{_yaml_key(ln.key)}: |")
            out += [f"{pad}  {x}" for x in ln.value.rstrip("\n").split("\n")]
        else:
            out.append(f"{pad}{_yaml_key(ln.key)}: {_yaml_value(ln.value)}")
    return out


def render(t: Translator, sources: list[str]) -> str:
    out = [
        "# pgdoorman configuration translated by `pg_doorman import-pgbouncer` from",
        *[f"#   {p}" for p in sources],
        "# Each setting says where it came from and whether it was translated, approximated or not",
        "# translated. Check it with `pg_doorman -t <file>`; docs/migrating-from-pgbouncer.md explains the",
        "# differences. Keep this file private: it holds passwords and password hashes.",
    ]
    out += _comments("", t.header)
    out += ["", "general:"]
    out += _emit(t.general, "  ")
    if t.trailing:
        out.append("")
        out.append("  # Source settings with no pgdoorman counterpart:")
        out += _comments("  ", t.trailing)
    out.append("")
    if not t.pools:
        out.append("pools: {}")
    else:
        out.append("pools:")
        for pool in t.pools:
            out.append(f"  {_yaml_key(pool.name)}:")
            out += _emit(pool.lines, "    ")
            if pool.auth_query:
                out += _comments("    ", ["auth_user/auth_query -> auth_query: pgdoorman does not implement it yet "
                                          "(-t warns)"])
                out.append("    auth_query:")
                out += _emit(pool.auth_query, "      ")
            out += _comments("    ", pool.user_notes)
            if not pool.users:
                out.append("    users: []")
                continue
            out.append("    users:")
            for user in pool.users:
                body = _emit(user.lines, "        ")
                # The first key line carries the "- ".
                for i, line in enumerate(body):
                    if not line.lstrip().startswith("#"):
                        body[i] = "      - " + line[8:]
                        break
                out += body
    return "\n".join(out) + "\n"


def translate(ini_path: str, userlist_path: str | None) -> tuple[str, list[str]]:
    """The YAML text and the files read."""
    ini = read_ini(ini_path)
    sources = list(ini.files)
    userlist: list[UserEntry] | None = None
    used_path = userlist_path
    if userlist_path is None:
        auth_file = next((s for s in ini.sections.get("pgbouncer", []) if s.key == "auth_file"), None)
        if auth_file is not None and auth_file.value.strip():
            path = auth_file.value.strip()
            if not os.path.isabs(path) and not os.path.exists(path):
                path = os.path.join(os.path.dirname(os.path.abspath(auth_file.file)), path)
            if os.path.exists(path):
                used_path = path
    if used_path is not None:
        userlist = read_userlist(used_path)
        sources.append(used_path)
    t = Translator(ini, userlist, used_path)
    auth_file = t._get("auth_file")
    if auth_file is not None:
        if userlist_path is not None:
            t.header.append(f"{_src(auth_file)}: users read from --userlist {userlist_path} instead")
        elif used_path is not None:
            t.header.append(f"{_src(auth_file)}: translated: its users are the users of every pool")
        else:
            t.header.append(f"{_src(auth_file)}: not readable here: pass --userlist")
    t.translate()
    return render(t, sources), sources


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pg_doorman import-pgbouncer",
        description="Translate a PgBouncer configuration (pgbouncer.ini and its userlist) into a pgdoorman "
                    "YAML config, with a comment on every setting: translated, approximated or not translated.",
    )
    p.add_argument("ini", help="pgbouncer.ini (%%include files are followed)")
    p.add_argument("--userlist", default=None,
                   help="PgBouncer's auth_file (default: the auth_file the ini names, if readable)")
    p.add_argument("-o", "--output", default=None, help="YAML file to write, mode 0600 (default stdout)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from pgdoorman.generate import check_loads, write_output

    args = build_parser().parse_args(list(sys.argv[2:] if argv is None else argv))
    err = sys.stderr
    if args.output and args.output != "-" and not args.output.endswith((".yaml", ".yml")):
        print("pg_doorman import-pgbouncer: --output must end in .yaml or .yml (the loader picks the format "
              "from the name)", file=err)
        return 2
    try:
        text, _ = translate(args.ini, args.userlist)
    except ImportFailed as e:
        print(f"pg_doorman import-pgbouncer: {e}", file=err)
        return 1
    from pgdoorman.config import ConfigError

    shown = args.output if args.output and args.output != "-" else "the output"
    problem = None
    warnings: list[str] = []
    try:
        warnings = check_loads(text, "yaml")
    except ConfigError as e:
        problem = re.sub(r"\S*/pg_doorman-generate-[^/\s]+/pg_doorman\.yaml", shown, str(e))
    for w in warnings:
        w = re.sub(r"\S*/pg_doorman-generate-[^/\s]+/pg_doorman\.yaml", shown, w)
        print(f"pg_doorman import-pgbouncer: warning: {w}", file=err)
    try:
        write_output(text, args.output)
    except OSError as e:
        print(f"pg_doorman import-pgbouncer: cannot write {args.output}: {e}", file=err)
        return 1
    if problem is not None:
        # Typically a TLS file the source names that does not exist on this machine: the translation is
        # written so it can be fixed, but the exit status says it does not pass -t here.
        print(f"pg_doorman import-pgbouncer: written, but it does not pass `pg_doorman -t` on this machine:\n"
              f"{problem}", file=err)
        return 1
    if args.output and args.output != "-":
        print(f"pg_doorman import-pgbouncer: wrote {args.output}", file=err)
    return 0
