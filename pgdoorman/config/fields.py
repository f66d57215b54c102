"""The one table of configuration settings (every PgDoorman key of `include`, `general`, `web`,
`talos`, `pools.<name>`, `users[]` and `auth_query`; the last three sections' rows are in
`fields_pool.py`). The loader's validation, the config dataclasses' defaults, the annotated reference
config and the Markdown reference are all derived from it. To implement a setting: flip
`implemented=True` in its row and use the dataclass attribute."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from pgdoorman.config.field import (
    _ANY_TLS_MODE,
    _NI_WARNING,
    REQUIRED,
    SECTIONS,
    SYNC_OFF,
    Field,
    MiB,
    SectionInfo,
    _general,
    _tokio,
    _web,
)
from pgdoorman.config.fields_pool import POOL_FIELDS
from pgdoorman.config.values import (
    Bool,
    ByteSize,
    Choice,
    Duration,
    FrozenMapping,
    HbaSource,
    HttpUrlList,
    Int,
    OctalMode,
    PgHbaRules,
    Port,
    PositiveDuration,
    Seconds,
    StartupParameters,
    Str,
    StrList,
    WorkerThreads,
)

FIELDS: Final[tuple[Field, ...]] = (
    # ------------------------------------------------------------------ include
    Field(
        "include",
        "files",
        StrList(),
        (),
        "Config files merged over this one, in order; later files win for single values, tables are "
        "merged key by key and lists are concatenated. Relative paths are relative to the file that "
        "names them. Formats may be mixed (YAML by extension .yaml/.yml, TOML otherwise) and included "
        "files may include further files.",
        True,
    ),
    # ------------------------------------------------------------------ general: network
    _general("Network", "host", Str(nonempty=True), "0.0.0.0", True,
             'Address the client listener binds to ("0.0.0.0": every IPv4 address, "::": every IPv6 address).',
             reloadable=False),
    _general("Network", "port", Port(), 5432, True,
             "TCP port of the client listener. The Unix socket, if any, is named `.s.PGSQL.<port>`.",
             reloadable=False),
    _general("Network", "backlog", Int(0), 0, True,
             "Length of the listen() queue of pending connections; 0 means use `max_connections`.",
             reloadable=False),
    _general("Network", "unix_socket_dir", Str(nonempty=True), None, True,
             "Directory in which to listen on a Unix socket `.s.PGSQL.<port>` as well; unset means no Unix socket.",
             optional=True, reloadable=False, example="/var/run/pg_doorman"),
    _general("Network", "unix_socket_mode", OctalMode(), 0o600, True,
             'Permissions given to the Unix socket file after it is created, as an octal string such as "0660". '
             "Only permission bits within 0777 are allowed.",
             reloadable=False),
    _general("Network", "unix_socket_buffer_size", ByteSize(), MiB, True,
             "SO_SNDBUF and SO_RCVBUF of Unix-socket connections, client and server side. Linux doubles the "
             "value and caps it at net.core.wmem_max / rmem_max. A reload applies it to new connections only."),
    _general("Network", "max_connections", Int(1), 8192, True,
             "Maximum number of client connections at once; further clients are refused with SQLSTATE 53300 "
             "(too many clients)."),
    # ------------------------------------------------------------------ general: timeouts
    _general("Timeouts", "connect_timeout", Duration(), 3000, True,
             "Time allowed to open a server connection: the TCP connect plus the startup and authentication "
             "exchange. Pools may override it."),
    _general("Timeouts", "query_wait_timeout", Duration(), 5000, True,
             "How long a client may wait for a server connection from its pool before it gets an error."),
    _general("Timeouts", "query_timeout", Duration(), 0, True,
             "A request (a simple query, or an extended-protocol batch up to its Sync) still unanswered on its "
             "server after this long is cancelled: the pooler sends PostgreSQL a CancelRequest, the client gets "
             "PostgreSQL's own error (57014, canceling statement due to user request) and the server connection "
             "stays in the pool. 0 disables. Checked every 100 ms, so a cancel comes up to that much late. Ours, "
             "not PgDoorman's (PgBouncer's of this name closes the server connection instead). Pools may "
             "override it."),
    _general("Timeouts", "idle_timeout", Duration(), 600_000, True,
             "Server connections that have served at least one client and then stayed idle this long are closed. "
             "0 disables. A random jitter of up to 20% keeps connections from expiring together. Pools may "
             "override it."),
    _general("Timeouts", "server_lifetime", Duration(), 1_200_000, True,
             "Server connections older than this are closed when they next become idle. 0 disables. Jittered by "
             "up to 20%. Pools and users may override it."),
    _general("Timeouts", "retain_connections_time", Duration(), 30_000, True,
             "Period of the maintenance pass that closes idle and expired server connections and tops pools up "
             "to their `min_pool_size`."),
    _general("Timeouts", "retain_connections_max", Int(0), 3, True,
             "Most server connections closed by one maintenance pass (oldest first); 0 means no limit."),
    _general("Timeouts", "server_idle_check_timeout", Duration(), 60_000, True,
             "A server connection idle for longer than this is checked with an empty query (`;`) before a client "
             "gets it: one that does not answer within `connect_timeout`, or is gone, is closed and the client "
             "gets another, so connections that died silently while idle (a firewall or NAT that forgot them, a "
             "killed backend whose goodbye never arrived) are not handed out. Connections in use, or idle for "
             "less than this, are not checked. 0 disables the check."),
    _general("Timeouts", "shutdown_timeout", Duration(), 10_000, True,
             "On graceful shutdown or binary upgrade, how long clients get to finish before they are disconnected."),
    _general("Timeouts", "proxy_copy_data_timeout", Duration(), 15_000, True,
             "How long a server connection may take none of the data queued for it (a client's COPY data or "
             "large messages, once more than 1 MiB waits or max_memory_usage is reached and the client is no "
             "longer read) before it is closed and its client gets FATAL 58006 (\"pooler is shut down now "
             "(flush timeout ...)\") instead of waiting for good. 0 disables it."),
    # ------------------------------------------------------------------ general: TCP
    _general("TCP", "tcp_keepalives_idle", Seconds(), 5, True,
             "TCP keepalive: seconds of idleness before the first probe (client and server sockets)."),
    _general("TCP", "tcp_keepalives_interval", Seconds(), 5, True,
             "TCP keepalive: seconds between probes."),
    _general("TCP", "tcp_keepalives_count", Int(0), 5, True,
             "TCP keepalive: unanswered probes before the connection is declared dead."),
    _general("TCP", "tcp_user_timeout", Seconds(), 60, True,
             "TCP_USER_TIMEOUT (Linux): a connection whose sent data stays unacknowledged this many seconds is "
             "dropped. 0 keeps the operating system default."),
    _general("TCP", "tcp_so_linger", Seconds(), 0, True,
             "SO_LINGER seconds set on client and server connections (TCP and Unix): how long closing a socket "
             "may wait for unsent data to be delivered. 0 resets the connection (RST) at once instead, so closed "
             "connections leave no TIME_WAIT behind. Not after a FATAL error a client gets (the pooler's own, or "
             "PostgreSQL's when the client's server ends its session): that close is orderly whatever this says, "
             "as PostgreSQL's, since a reset can reach the client before it reads the error. A reload applies it "
             "to new connections only."),
    _general("TCP", "tcp_no_delay", Bool(), True, True,
             "Set TCP_NODELAY so small protocol messages are sent without Nagle's delay."),
    _general("TCP", "tcp_socket_buffer_size", ByteSize(), 0, True,
             "When not 0, sets SO_RCVBUF and SO_SNDBUF on TCP client and server connections (server ones before "
             "connecting), which turns Linux's buffer autotuning off for them; 0 leaves buffer sizing to the "
             "kernel. Linux doubles the value and caps it at net.core.wmem_max / rmem_max. Values below 64 KiB "
             "are warned about: they slow large results and COPY. A reload applies it to new connections only. "
             "(PgDoorman also sets it on the web listener's connections; pgdoorman does not.)"),
    # ------------------------------------------------------------------ general: limits
    _general("Limits", "max_memory_usage", ByteSize(), 256 * MiB, True,
             "Budget for the bytes the pooler holds in memory across all connections: output queued for a "
             "socket that does not take it fast enough, and client messages that must be read whole (Parse "
             "and Bind in prepared-statement mode, larger than 8 KiB and split across reads). Past it, a "
             "connection whose queue grows stops its producer until the queue has drained (results to a slow "
             "client wait, nothing fails), and a client message that would pass it closes that client with "
             "FATAL 53200. Streamed bytes (rows, COPY data, large simple queries) never count. Reloadable."),
    _general("Limits", "message_size_to_be_stream", ByteSize(), MiB, True,
             "DataRow, CopyData and FunctionCallResponse messages of at least this size that arrive in pieces are "
             "counted as streamed (`pg_doorman_streaming_events_total`, `pg_doorman_streaming_bytes_total`). "
             "pgdoorman relays every message in pieces as it arrives, whatever its size (PgDoorman buffers the "
             "smaller ones whole), so this setting only decides what the metrics count."),
    # ------------------------------------------------------------------ general: workers
    _general("Workers", "worker_threads", WorkerThreads(), None, True,
             'Number of worker threads, each running its own event loop. "auto" means one per CPU on '
             "free-threaded CPython and 1 when the GIL is enabled (PgDoorman's default is 4).",
             reloadable=False, default_doc='`"auto"`'),
    _general("Workers", "worker_cpu_affinity_pinning", Bool(), False, True,
             "Pin each worker thread to a CPU of its own.", reloadable=False),
    _general("Workers", "worker_placement", Choice("pack", "spread"), "pack", True,
             "Which worker thread serves a client (a pgdoorman setting, not PgDoorman's). `spread`: the one whose listener "
             "accepted it (the kernel spreads new clients evenly over the workers). `pack`: the lowest-numbered "
             "worker that is not busy (see `worker_busy_percent`), and a worker that stays busy moves some of its "
             "idle clients (logged in, between transactions, holding no bytes) to one that is not, a batch a "
             "second; they come back to a lower worker once it has room for them. Fewer, fuller worker loops cost less CPU per transaction than many half-idle ones (on "
             "free-threaded CPython each extra runnable thread pays its own wake-ups, preemptions and sharing; "
             "docs/performance.md). Reloadable; clients already placed stay where they are."),
    _general("Workers", "worker_busy_percent", Int(0, 100), 70, True,
             "With `worker_placement: pack` (a pgdoorman setting, not PgDoorman's): a worker whose thread used at least this share of one CPU over the "
             "last second is busy: new clients go to the next worker, and it moves idle clients away. 0 makes "
             "every worker busy (new clients stay where the kernel put them, nobody moves). Reloadable."),
    _general("Workers", "worker_spare_cpu_percent", Int(0, 100), 50, True,
             "With `worker_placement: pack` (a pgdoorman setting, not PgDoorman's): a worker over "
             "`worker_busy_percent` counts as busy only while the machine left at least this share of one CPU "
             "idle over the same second (/proc/stat). Spreading clients over more worker threads costs CPU per "
             "transaction and pays only when another CPU is free: on a machine that PostgreSQL or the clients "
             "keep busy, the clients stay on one worker. 0: do not look at the machine. Reloadable."),
    _tokio("worker_stack_size", ByteSize(), "Stack size of PgDoorman's tokio worker threads.", "8MB"),
    _tokio("max_blocking_threads", Int(1), "Upper bound on PgDoorman's tokio blocking-thread pool.", 512),
    _tokio("tokio_global_queue_interval", Int(1), "Tokio scheduler tuning knob of PgDoorman (global queue interval).",
           61),
    _tokio("tokio_event_interval", Int(1), "Tokio scheduler tuning knob of PgDoorman (event interval).", 61),
    # ------------------------------------------------------------------ general: logging
    _general("Logging", "log_client_connections", Bool(), True, True,
             "Log each accepted client connection. (PgDoorman documents true but reads a missing key as false; "
             "pgdoorman uses the documented default.)"),
    _general("Logging", "log_client_disconnections", Bool(), True, True,
             "Log each client disconnection. (Same default note as `log_client_connections`.)"),
    _general("Logging", "syslog_prog_name", Str(nonempty=True), None, True,
             "Send the log to syslog under this program name instead of stderr.", optional=True,
             reloadable=False, example="pg_doorman"),
    # ------------------------------------------------------------------ general: pool behaviour
    _general("Pool behaviour", "server_round_robin", Bool(), False, True,
             "Hand out idle server connections in rotation (the one idle longest first) instead of "
             "most-recently-used first. The default keeps a small hot set busy and lets the rest reach "
             "`idle_timeout`. With several worker threads the rotation is per worker's share of the pool."),
    _general("Pool behaviour", "sync_server_parameters", Bool(), False, True,
             "PgDoorman: in transaction mode, make each server connection match the client's session parameters "
             "(client_encoding, DateStyle, IntervalStyle, TimeZone, standard_conforming_strings, application_name "
             "and safe startup parameters) with SET/RESET when it is checked out. pgdoorman always does this, and "
             "more (settings the client SETs are read back and follow it too, see docs/transaction-mode.md), in "
             "both pool modes, with one round trip only when the server differs: `true` changes nothing, and "
             "`false` is not honoured (it would let a client see another's settings): it loads with a warning "
             "saying so.", unhonoured=(False, SYNC_OFF)),
    _general("Pool behaviour", "session_real_backend_key", Bool(), True, True,
             "Session mode only (a pgdoorman setting, not PgDoorman's): give each client, in its BackendKeyData, "
             "the process ID of the server connection it holds for its whole session, so that "
             "`pg_backend_pid()`, `pg_terminate_backend()`, NOTIFY's sender PID, `pg_stat_activity` and cancel "
             "requests behave as on a direct connection. The secret key is the client's own, so that the key "
             "dies with the session as on PostgreSQL. Off: a pooler-made key, as in transaction mode."),
    _general("Pool behaviour", "pooler_check_query", Str(nonempty=True), ";", True,
             "A simple query byte-for-byte equal to this, sent outside a transaction, is a health check: it is "
             "answered with PostgreSQL's answer to it, kept per pool, without using a server connection. Until "
             "an answer is kept (after start, RELOAD changing the text, or an answer that was an error or left a "
             "transaction open) it goes to PostgreSQL as any query, and the pooler fetches the answer to keep on "
             "an idle server. The query must always give the same answer and change nothing."),
    _general("Pool behaviour", "startup_parameters", StartupParameters(), FrozenMapping[str, str](), True,
             "Parameters (GUCs) sent in the startup packet of every server connection; pools override them "
             "key by key. Reserved names (user, database, options, role, ...) are refused."),
    # ------------------------------------------------------------------ general: prepared statements
    _general("Prepared statements", "prepared_statements", Bool(), True, True,
             "Support prepared statements in transaction mode: statements are renamed to shared server-side "
             "names and prepared again on whichever server connection the client gets."),
    _general("Prepared statements", "prepared_statements_cache_size", Int(0), 8192, True,
             "Size of each pool's cache of prepared statements (distinct statements). Must be at least 1 when "
             "`prepared_statements` is on. Pools may override it."),
    _general("Prepared statements", "server_prepared_statements_cache_size", Int(1), None, True,
             "How many prepared statements each server connection keeps (least recently used are closed). "
             "Unset: the pool-level cache size.", optional=True, example=1024,
             default_doc="`prepared_statements_cache_size`"),
    _general("Prepared statements", "client_anonymous_prepared_cache_size", Int(0), None, True,
             "How many of its recent unnamed prepared statements each client keeps (least recently used are "
             "dropped); 0 means no limit (warned about). Unset: the pool's cache size. A client alternating "
             "between several unnamed queries (psycopg, asyncpg) finds each again here, without the pool's "
             "lock and also after the pool's cache evicted it, so a server that holds it is not sent its Parse "
             "again. A Bind of the unnamed statement always runs the client's latest unnamed Parse, as on "
             "PostgreSQL. Dropping an entry only drops the client's reference. The old name "
             "`client_prepared_statements_cache_size` is accepted with a warning.",
             optional=True, aliases=("client_prepared_statements_cache_size",), example=256,
             default_doc="`prepared_statements_cache_size`"),
    _general("Prepared statements", "query_interner_gc_interval_seconds", Seconds(1), 60, True,
             "PgDoorman's query-text interner is, here, the pools' statement caches: each text is one object "
             "held by its cache entry, which clients and servers refer to (freed with the last reference). "
             "A quarter of this interval is how often the entries only ever prepared unnamed are checked "
             "against `query_interner_anon_idle_ttl_seconds`. `SHOW INTERNER` and `RESET INTERNER` in the "
             "admin console.", reloadable=False),
    _general("Prepared statements", "query_interner_anon_idle_ttl_seconds", Seconds(), 60, True,
             "A statement of a pool's cache that no client prepared under a name and that no Parse used for "
             "this long leaves the cache, with its text once no client or server holds it any more (those that "
             "do keep using it; the next Parse of that text makes a new entry, parsed again on each server). "
             "0 keeps them until the cache's own LRU evicts them."),
    # ------------------------------------------------------------------ general: Patroni
    _general("Patroni-assisted fallback", "patroni_api_urls", HttpUrlList(), None, True,
             "Patroni REST API URLs (http or https). When set, a failed local server connection falls back to "
             "another cluster member found through Patroni (sync standby first). Pools inherit it.",
             optional=True, example=["http://10.0.0.1:8008", "http://10.0.0.2:8008"]),
    _general("Patroni-assisted fallback", "fallback_cooldown", PositiveDuration(), None, True,
             "How long the local server is avoided after a failure.", optional=True, default_doc="`30s`",
             example="30s"),
    _general("Patroni-assisted fallback", "patroni_api_timeout", PositiveDuration(), None, True,
             "HTTP timeout of Patroni API requests.", optional=True, default_doc="`5s`", example="5s"),
    _general("Patroni-assisted fallback", "fallback_connect_timeout", PositiveDuration(), None, True,
             "Connect timeout for each fallback candidate.", optional=True, default_doc="`5s`", example="5s"),
    _general("Patroni-assisted fallback", "fallback_lifetime", PositiveDuration(), None, True,
             "Lifetime of server connections opened to a fallback host.", optional=True,
             default_doc="`fallback_cooldown`", example="30s"),
    # ------------------------------------------------------------------ general: admin
    _general("Admin console", "admin_username", Str(nonempty=True), "admin", True,
             'User name for the admin console (database "pgdoorman" or "pgbouncer"). Required.',
             required=True),
    _general("Admin console", "admin_password", Str(), "admin", True,
             "Plain-text password of the admin console user. Required.", required=True, secret=True),
    # ------------------------------------------------------------------ general: client TLS
    _general("Client TLS", "tls_certificate", Str(nonempty=True), None, True,
             "PEM certificate presented to clients; set together with `tls_private_key`.", optional=True,
             reloadable=False, example="/etc/pg_doorman/server.crt"),
    _general("Client TLS", "tls_private_key", Str(nonempty=True), None, True,
             "PEM private key of `tls_certificate`.", optional=True, reloadable=False,
             example="/etc/pg_doorman/server.key"),
    _general("Client TLS", "tls_ca_cert", Str(nonempty=True), None, True,
             "CA bundle used to verify client certificates (needed by `verify-full`).", optional=True,
             reloadable=False, example="/etc/pg_doorman/ca.crt"),
    _general("Client TLS", "tls_mode", Choice("disable", "allow", "require", "verify-full"), None, True,
             "Client TLS policy: disable, allow (TLS if the client asks), require (TCP clients must use TLS), "
             "verify-full (also verify the client certificate).", optional=True, reloadable=False,
             default_doc='behaves as `"allow"`', example="allow"),
    _general("Client TLS", "tls_rate_limit_per_second", Int(0), 0, True,
             "Most client TLS handshakes started per second by the process; 0 means no limit, otherwise a "
             "multiple of 100. Handshakes over the rate are not refused: they wait their turn (rate/100 may "
             "start at once, then one every 1/rate seconds). Protects the CPU from a reconnect storm of TLS "
             "clients.", reloadable=False),
    # ------------------------------------------------------------------ general: server TLS
    _general("Server TLS", "server_tls_mode", _ANY_TLS_MODE, "allow", True,
             "TLS policy towards PostgreSQL: disable, allow (plain first, TLS if refused), prefer, require, "
             "verify-ca, verify-full. Pools may override it."),
    _general("Server TLS", "server_tls_ca_cert", Str(nonempty=True), None, True,
             "CA bundle for verifying the server (needed by verify-ca and verify-full).", optional=True,
             example="/etc/pg_doorman/pg-ca.crt"),
    _general("Server TLS", "server_tls_certificate", Str(nonempty=True), None, True,
             "Client certificate presented to PostgreSQL (mutual TLS); needs `server_tls_private_key`.",
             optional=True, example="/etc/pg_doorman/client.crt"),
    _general("Server TLS", "server_tls_private_key", Str(nonempty=True), None, True,
             "Private key of `server_tls_certificate`.", optional=True, example="/etc/pg_doorman/client.key"),
    # ------------------------------------------------------------------ general: daemon
    _general("Daemon", "daemon_pid_file", Str(nonempty=True), "/tmp/pg_doorman.pid", True,
             "PID file written when running as a daemon (`-d`).", reloadable=False),
    # ------------------------------------------------------------------ general: access control
    _general("Access control", "hba", StrList(), (), True,
             "Legacy allow-list of client networks in CIDR notation, for TCP clients only; empty allows all. "
             "Cannot be combined with `pg_hba`."),
    _general("Access control", "pg_hba", PgHbaRules(), None, True,
             "pg_hba.conf-style rules (`local`/`host`/`hostssl`/`hostnossl`; trust, md5, scram-sha-256, "
             "reject): inline text, `{path = \"...\"}` or `{content = \"...\"}`.", optional=True,
             example="host all all 127.0.0.1/32 md5"),
    # ------------------------------------------------------------------ general: connection scaling
    _general("Connection scaling", "max_concurrent_creates", Int(1), 4, True,
             "Most server connections one pool (database and user) opens at once, min_pool_size top-ups "
             "included; with `scaling_max_parallel_creates` the lower of the two applies."),
    _general("Connection scaling", "scaling_warm_pool_ratio", Int(0, 100), 20, True,
             "Percentage of a pool's `pool_size` (at least 1 connection) below which a client that finds no idle "
             "server gets a new one opened at once. Above it the client first waits for a returned server "
             "for twice the pool's p99 transaction time (100 ms before any transaction, within 5-500 ms and "
             "`query_wait_timeout` less 500 ms), then one is opened for it (docs/operations.md)."),
    _general("Connection scaling", "scaling_fast_retries", Int(0), 10, True,
             "PgDoorman's quick re-checks for a returned server before the anticipation wait. Checked and "
             "accepted; pgdoorman needs no re-checks: a server returned on any worker goes at once to the "
             "oldest waiting client."),
    _general("Connection scaling", "scaling_max_parallel_creates", Int(1), 2, True,
             "Most server connections one pool (database and user) opens at once for its waiting clients (the "
             "burst gate): a burst of clients waits for these or for returned servers instead of opening one "
             "each."),
    # ------------------------------------------------------------------ web
    _web("Listener", "enabled", Bool(), False, True,
         "Start the HTTP listener serving Prometheus metrics at `/metrics`.", reloadable=False),
    _web("Listener", "host", Str(nonempty=True), "0.0.0.0", True, "Address of the HTTP listener.",
         reloadable=False),
    _web("Listener", "port", Port(), 9127, True, "Port of the HTTP listener.", reloadable=False),
    _web("Web UI", "ui", Bool(), False, True,
         "Serve the web console (`/`, docs/web-console.md) and the JSON API (`/api/*`, docs/web-api.md) on "
         "the web listener as well. Refused while "
         "`general.admin_password` is empty or the default `admin`: the API's Admin role uses it."),
    _web("Web UI", "ui_anonymous", Bool(), False, True,
         "Allow read-only API access without authentication (never to client addresses or SQL text, "
         "never to the admin commands)."),
    _web("Web UI", "log_tap_max_entries", Int(0), 8192, True,
         "Log lines kept in memory for the web console's log tail (`/api/logs`, admin only); 0 disables."),
    _web("Web UI", "trusted_proxies", StrList(), (), True,
         "Networks (CIDR) whose X-Forwarded-For / Forwarded headers are believed: behind such a reverse "
         "proxy the web listener's access log and API see the client's address, not the proxy's."),
    _web("SSO", "sso_enabled", Bool(), False, True,
         "Accept single-sign-on JWTs (RS256) for the web console and API, from `Authorization: Bearer`, the "
         "cookie `sso_access_token` or `?token=` (docs/web-console.md); needs the `jwt` extra."),
    _web("SSO", "sso_proxy_url", Str(), None, True, "Where the sign-in page links to log in.", optional=True,
         example="https://sso.example.com/login"),
    _web("SSO", "sso_public_key_file", Str(), None, True, "RSA public key (PEM) verifying SSO tokens (RS256).",
         optional=True, example="/etc/pg_doorman/sso.pub"),
    _web("SSO", "sso_audience", StrList(), (), True, "Accepted `aud` claims; empty accepts any."),
    _web("SSO", "sso_allowed_users", StrList(), ("*",), True, 'Users allowed in; "*" allows every user.'),
    _web("SSO", "sso_groups_claim", Str(), "groups", True, "Token claim holding the user's groups."),
    _web("SSO", "sso_admin_groups", StrList(), (), True, "Groups granted the admin role (others: read-only)."),
    _web("SSO", "sso_require_https", Bool(), False, True,
         "Require that a trusted proxy reports the request came over HTTPS."),
    # ------------------------------------------------------------------ talos
    Field("talos", "keys", StrList(), (), "PEM public keys; each file's name without extension is the JWT `kid`.",
          True),
    Field("talos", "databases", StrList(), (), "Databases Talos tokens may grant access to.", True),
    *POOL_FIELDS,
)

def fields_of(section: str) -> tuple[Field, ...]:
    return tuple(f for f in FIELDS if f.section == section)


_BY_KEY: Final[Mapping[tuple[str, str], Field]] = MappingProxyType(
    {(f.section, name): f for f in FIELDS for name in (f.key, *f.aliases)}
)


def lookup(section: str, key: str) -> Field | None:
    """The field for `key` in `section`, also when `key` is a deprecated alias."""
    return _BY_KEY.get((section, key))


def field(section: str, key: str) -> Field:
    """The field for a canonical key; KeyError if there is none."""
    f = _BY_KEY[(section, key)]
    if f.key != key:
        raise KeyError(key)
    return f


def attribute_default(section: str, key: str) -> Any:
    """The dataclass default of a setting: its table default, with mappings made per-instance."""
    import dataclasses

    f = field(section, key)
    # Secrets stay out of repr() so a logged config object cannot leak them.
    show = not f.secret
    if f.default is REQUIRED:
        return dataclasses.field(repr=show)
    if isinstance(f.default, Mapping):
        # dataclasses refuse mapping defaults (they look mutable); a factory returns the shared
        # read-only default instead.
        default = f.default
        return dataclasses.field(default_factory=lambda: default, repr=show)
    return dataclasses.field(default=f.default, repr=show)


NOT_IMPLEMENTED_WARNING: Final = _NI_WARNING

__all__ = [
    "FIELDS",
    "REQUIRED",
    "SECTIONS",
    "Field",
    "HbaSource",
    "NOT_IMPLEMENTED_WARNING",
    "SectionInfo",
    "attribute_default",
    "field",
    "fields_of",
    "lookup",
]
