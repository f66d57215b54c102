"""[pgbouncer] settings -> pgdoorman's general section: listening, the admin console, limits and timeouts,
TCP, logging, TLS and prepared statements. Each function takes the Translator and appends to its output.
"""

from __future__ import annotations

import re
import secrets

from pgdoorman.import_pgbouncer.output import Line, src_note
from pgdoorman.import_pgbouncer.reading import ImportFailed, Setting
from pgdoorman.import_pgbouncer.translator import Translator
from pgdoorman.import_pgbouncer.values import duration, millis, to_bool, to_int


def listen(t: Translator) -> None:
    s = t.get("listen_addr")
    if s is None or not s.value.strip():
        t.gen("host", "127.0.0.1",
              "approximated: listen_addr is not set in the source, so PgBouncer listened on its Unix "
              "socket only; pgdoorman always listens on TCP too, here on 127.0.0.1 only")
    else:
        addrs = [a.strip() for a in s.value.split(",") if a.strip()]
        first = addrs[0]
        host = {"*": "0.0.0.0", "localhost": "127.0.0.1"}.get(first, first)
        notes = [f"{src_note(s)}: translated"]
        if first == "*":
            notes = [f"{src_note(s)}: approximated: * (every IPv4 and IPv6 address) becomes 0.0.0.0 (every IPv4 "
                     "address); use \"::\" for IPv6 as well where the system maps IPv4 onto IPv6 sockets"]
        elif first == "localhost":
            notes = [f"{src_note(s)}: approximated: localhost becomes 127.0.0.1 (pgdoorman binds one address)"]
        if len(addrs) > 1:
            notes.append(f"approximated: pgdoorman binds one address; {', '.join(addrs[1:])} not bound")
        t.gen("host", host, *notes)
    s = t.get("listen_port")
    if s is not None:
        t.gen("port", to_int(s, minimum=1), f"{src_note(s)}: translated")
    else:
        t.gen("port", 6432, t.default_note("listen_port", "6432"))
    s = t.get("unix_socket_dir")
    mode = t.get("unix_socket_mode")
    if s is not None and not s.value.strip():
        note = f"{s.where} unix_socket_dir is empty: no Unix socket (pgdoorman's default too)"
        t.general.append(Line(None, None, [note]))
        if mode is not None:
            t.general.append(Line(None, None, [f"{src_note(mode)}: not translated: no Unix socket"]))
        t.unix_dir = None
        return
    t.unix_dir = s.value.strip() if s is not None else "/tmp"
    t.gen("unix_socket_dir", t.unix_dir,
          f"{src_note(s)}: translated" if s is not None else t.default_note("unix_socket_dir", "/tmp"))
    if mode is not None:
        t.gen("unix_socket_mode", f"{int(mode.value.strip(), 8):04o}" if re.fullmatch(r"[0-7]+", mode.value.strip())
              else mode.value.strip(), f"{src_note(mode)}: translated")
    else:
        t.gen("unix_socket_mode", "0777", t.default_note("unix_socket_mode", "0777"))


def admin(t: Translator) -> None:
    s = t.get("admin_users")
    stats = t.get("stats_users")
    names = [n.strip() for n in s.value.split(",") if n.strip()] if s is not None else []
    if not names:
        t.gen("admin_username", "admin",
              "pgdoorman needs one admin console user; the source has no admin_users (PgBouncer let only "
              "the Unix user `pgbouncer` in over the socket), so this one is made up")
        t.gen("admin_password", secrets.token_urlsafe(18), "a random password: change it")
    else:
        assert s is not None
        notes = [f"{src_note(s)}: translated" if len(names) == 1 else
                 f"{src_note(s)}: approximated: pgdoorman has one admin user; {', '.join(names[1:])} get no "
                 "console access"]
        t.gen("admin_username", names[0], *notes)
        entry = t.user(names[0])
        if entry is not None and entry.secret and not entry.secret.startswith("md5"):
            t.gen("admin_password", entry.secret,
                  f"the password of {names[0]} from {entry.where} (a plain-text password or a SCRAM "
                  "verifier: both work for the admin console)")
        else:
            why = ("its userlist entry is an md5 hash, which the admin console cannot check against"
                   if entry is not None and entry.secret else "the userlist has no password for it")
            t.gen("admin_password", secrets.token_urlsafe(18),
                  f"a random password: {why}; put the plain-text password or its SCRAM verifier here")
    if stats is not None:
        _stats_users(t, stats, names)


def _stats_users(t: Translator, stats: Setting, admins: list[str]) -> None:
    """stats_users (read-only SHOW on the console) -> the web listener's /metrics, which needs no login."""
    users = [n.strip() for n in stats.value.split(",") if n.strip()]
    if not users:
        t.general.append(Line(None, None, [f"{src_note(stats)}: translated: no stats users, nothing to do"]))
        return
    t.web.append(Line("enabled", True, [
        f"{src_note(stats)}: approximated: pgdoorman has no read-only console users; what they read with "
        "SHOW POOLS/STATS/SERVERS/CLIENTS is served as Prometheus metrics at http://127.0.0.1:9127/metrics "
        "(docs/metrics.md), which needs no login, so the listener is bound to 127.0.0.1 only: set host to "
        "open it to the monitoring host. The console itself (SHOW) is for admin_username only" + (
            f"; {', '.join(u for u in users if u not in admins[:1])} cannot log in to it"
            if any(u not in admins[:1] for u in users) else "")]))
    t.web.append(Line("host", "127.0.0.1", ["loopback only: /metrics has no password"]))
    t.web.append(Line("port", 9127, ["PgDoorman's metrics port"]))


def timeouts(t: Translator) -> None:
    s = t.get("max_client_conn")
    if s is not None:
        t.gen("max_connections", to_int(s, minimum=1), f"{src_note(s)}: translated")
    else:
        t.gen("max_connections", 100, t.default_note("max_client_conn", "100"))
    for pgb, ours, default in (("server_connect_timeout", "connect_timeout", 15),
                               ("query_wait_timeout", "query_wait_timeout", 120),
                               ("server_idle_timeout", "idle_timeout", 600),
                               ("server_lifetime", "server_lifetime", 3600)):
        s = t.get(pgb)
        ms = millis(s) if s is not None else default * 1000
        note = f"{src_note(s)}: translated" if s is not None else t.default_note(pgb, str(default))
        if ms == 0:
            if ours == "query_wait_timeout":
                t.gen(ours, "7d", f"{src_note(s) if s else pgb}: approximated: 0 (wait forever) becomes 7 days "
                      "(0 means no waiting at all in pgdoorman)")
                continue
            if ours == "connect_timeout":
                t.gen(ours, "1h", f"{src_note(s) if s else pgb}: approximated: 0 (no limit) becomes 1 hour")
                continue
            note += " (0 disables it in both)"
        t.gen(ours, duration(ms), note)
    s = t.get("query_timeout")
    if s is not None and millis(s) > 0:
        t.gen("query_timeout", duration(millis(s)), f"{src_note(s)}: approximated: a query past it is cancelled "
              "(the client gets 57014) and the server connection kept; PgBouncer closes the connection")
    elif s is not None:
        t.gen("query_timeout", "0s", f"{src_note(s)}: translated (0 disables it in both)")
    s = t.get("listen_backlog")
    if s is not None:
        t.gen("backlog", to_int(s), f"{src_note(s)}: translated")
    s = t.get("pidfile")
    if s is not None and s.value.strip():
        t.gen("daemon_pid_file", s.value.strip(), f"{src_note(s)}: translated (used with -d)")
    s = t.get("server_round_robin")
    if s is not None:
        t.gen("server_round_robin", to_bool(s), f"{src_note(s)}: translated")


def tcp(t: Translator) -> None:
    ka = t.get("tcp_keepalive")
    if ka is not None and not to_bool(ka):
        t.gen("tcp_keepalives_idle", 0, f"{src_note(ka)}: translated: 0 turns keepalives off")
        for k in ("tcp_keepidle", "tcp_keepintvl", "tcp_keepcnt"):
            s = t.get(k)
            if s is not None:
                t.general.append(Line(None, None, [f"{src_note(s)}: not translated: keepalives are off"]))
    else:
        note0 = f"{src_note(ka)}: translated (on); " if ka is not None else ""
        for pgb, ours, linux in (("tcp_keepidle", "tcp_keepalives_idle", 7200),
                                 ("tcp_keepintvl", "tcp_keepalives_interval", 75),
                                 ("tcp_keepcnt", "tcp_keepalives_count", 9)):
            s = t.get(pgb)
            value = to_int(s) if s is not None else 0
            if value == 0:
                why = f"{src_note(s)}: 0" if s is not None else f"not set in the source: PgBouncer's default {pgb} = 0"
                t.gen(ours, linux, note0 + f"{why} (the kernel's default) becomes Linux's default, "
                      f"{linux}, written out")
            else:
                assert s is not None
                t.gen(ours, value, note0 + f"{src_note(s)}: translated")
            note0 = ""
    s = t.get("tcp_user_timeout")
    if s is not None:
        ms = millis(s, unit_ms=1)
        secs = (ms + 999) // 1000
        note = f"{src_note(s)}: translated" if ms % 1000 == 0 else \
            f"{src_note(s)}: approximated: milliseconds rounded up to whole seconds"
        t.gen("tcp_user_timeout", secs, note)
    else:
        t.gen("tcp_user_timeout", 0, t.default_note("tcp_user_timeout", "0 (the kernel's default)"))
    s = t.get("tcp_socket_buffer")
    if s is not None:
        t.gen("tcp_socket_buffer_size", to_int(s), f"{src_note(s)}: translated")


def log_settings(t: Translator) -> None:
    for pgb, ours in (("log_connections", "log_client_connections"),
                      ("log_disconnections", "log_client_disconnections")):
        s = t.get(pgb)
        if s is not None:
            t.gen(ours, to_bool(s), f"{src_note(s)}: translated (client side; pgdoorman logs server "
                  "connections at debug level)")
    s = t.get("syslog")
    ident = t.pg.get("syslog_ident")
    if s is not None and to_bool(s):
        t.used.add("syslog_ident")
        name = ident.value.strip() if ident is not None and ident.value.strip() else "pgbouncer"
        notes = [f"{src_note(s)}: translated"]
        notes.append(f"{src_note(ident)}: translated" if ident is not None else
                     "PgBouncer's default syslog_ident = pgbouncer")
        t.gen("syslog_prog_name", name, *notes)
    elif s is not None:
        t.general.append(Line(None, None, [f"{src_note(s)}: translated: no syslog (pgdoorman's default)"]))


def tls(t: Translator) -> None:
    mode = t.get("client_tls_sslmode")
    key = t.get("client_tls_key_file")
    cert = t.get("client_tls_cert_file")
    ca = t.get("client_tls_ca_file")
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
        note = (f"{src_note(mode)}: " if mode is not None else "client_tls_sslmode not set: ") + \
               (f"approximated: {why}" if why else "translated")
        t.gen("tls_mode", ours, note)
    else:
        t.gen("tls_mode", "disable", t.default_note("client_tls_sslmode", "disable"))
    for s, ours in ((cert, "tls_certificate"), (key, "tls_private_key"), (ca, "tls_ca_cert")):
        if s is not None and s.value.strip():
            t.gen(ours, s.value.strip(), f"{src_note(s)}: translated")
    smode = t.get("server_tls_sslmode")
    sm = smode.value.strip().lower() if smode is not None else "prefer"
    if sm not in ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"):
        assert smode is not None
        raise ImportFailed(f"{smode.file}:{smode.line}: server_tls_sslmode: unknown mode {sm!r}")
    t.gen("server_tls_mode", sm, f"{src_note(smode)}: translated" if smode is not None
          else t.default_note("server_tls_sslmode", "prefer"))
    for pgb, ours in (("server_tls_ca_file", "server_tls_ca_cert"), ("server_tls_cert_file", "server_tls_certificate"),
                      ("server_tls_key_file", "server_tls_private_key")):
        s = t.get(pgb)
        if s is not None and s.value.strip():
            t.gen(ours, s.value.strip(), f"{src_note(s)}: translated")


def prepared(t: Translator) -> None:
    s = t.get("max_prepared_statements")
    if s is None:
        t.general.append(Line(None, None, [
            "max_prepared_statements not set in the source (PgBouncer 1.21-1.23: 0, off; 1.24 and later: 200): "
            "pgdoorman keeps prepared statement support on (its default), which only matters to clients that "
            "use protocol-level prepared statements, and makes them work in transaction mode"]))
        return
    n = to_int(s)
    if n == 0:
        t.gen("prepared_statements", False, f"{src_note(s)}: translated: 0 turns the support off")
    else:
        t.gen("prepared_statements", True, f"{src_note(s)}: translated")
        t.gen("server_prepared_statements_cache_size", n,
              f"{src_note(s)}: translated: the same per-server-connection LRU limit")
