"""The settings table, part two: `pools.<name>`, `pools.<name>.users[]` and `pools.<name>.auth_query`
(part one, and the lookups over the whole table, are in `fields.py`)."""

from __future__ import annotations

from typing import Final

from pgdoorman.config.field import (
    _ANY_TLS_MODE,
    _INT_MS_NOTE,
    _POOL_MODE,
    REQUIRED,
    SYNC_OFF,
    Field,
    _aq,
    _pool,
    _user,
)
from pgdoorman.config.values import (
    Bool,
    Choice,
    Duration,
    FrozenMapping,
    HttpUrlList,
    Int,
    Password,
    Port,
    PositiveDuration,
    StartupParameters,
    Str,
    Subsection,
)

POOL_FIELDS: Final[tuple[Field, ...]] = (
    # ------------------------------------------------------------------ pools.<name>
    _pool("Server", "server_host", Str(nonempty=True), "127.0.0.1", True,
          "PostgreSQL host name or IP address, or a directory holding its Unix socket."),
    _pool("Server", "server_port", Port(), 5432, True, "PostgreSQL port."),
    _pool("Server", "server_database", Str(nonempty=True), "", True,
          "Database to connect to on the server.", default_doc="the pool name", example="postgres"),
    _pool("Behaviour", "pool_mode", _POOL_MODE, "transaction", True,
          "transaction: a server connection is held only for the length of a transaction; session: for the "
          "whole client session. Users may override it."),
    _pool("Behaviour", "application_name", Str(), None, True,
          "application_name sent to PostgreSQL by this pool's server connections.", optional=True,
          default_doc='unset (the server sees `"pg_doorman"`)', example="pg_doorman"),
    _pool("Behaviour", "cleanup_server_connections", Bool(), True, True,
          "Reset session state (RESET ALL, DEALLOCATE ALL, CLOSE ALL, as needed) when a client gives back a "
          "server connection it changed. Open transactions are always rolled back."),
    _pool("Behaviour", "log_client_parameter_status_changes", Bool(), False, True,
          "Log (info) each reported setting (TimeZone, application_name, ...) a client of this pool SETs."),
    _pool("Behaviour", "transaction_pinning", Choice("allow", "refuse"), "allow", True,
          "Transaction mode (a pgdoorman setting, not PgDoorman's): session state that cannot move between "
          "servers (temporary tables, session advisory locks, WITH HOLD cursors, SQL PREPARE). allow: the client "
          "keeps its server (is pinned) until it releases that state, as on a dedicated session; refuse: a "
          "simple query or a prepared statement that creates it is refused with 0A000 before it reaches "
          "PostgreSQL, and such state created otherwise (inside a function) is cleaned at the end of the "
          "transaction. See docs/transaction-mode.md."),
    _pool("Behaviour", "transaction_discard_sequences", Bool(), True, True,
          "Transaction mode (a pgdoorman setting, not PgDoorman's): a server on which a client's transaction may "
          "have drawn a sequence value (its CommandComplete was INSERT, COPY or MERGE, or its text names "
          "nextval or setval) gets DISCARD SEQUENCES before another client that reads sequence values (its SQL "
          "names currval or lastval) runs anything there, with no extra round trip, so that currval() and "
          "lastval() never return another client's value: they fail with 55000 as in a session that has not "
          "called nextval(). false: as PgBouncer and PgDoorman, the next client can read them. See "
          "docs/transaction-mode.md."),
    _pool("Behaviour", "sync_server_parameters", Bool(), None, True,
          "Per-pool `general.sync_server_parameters` (added by a PgDoorman release after 3.10.7). As there, "
          "pgdoorman always syncs: `false` loads with a warning saying it is not honoured.", optional=True,
          unhonoured=(False, SYNC_OFF),
          default_doc="`general.sync_server_parameters`", example=True),
    _pool("Timeouts", "connect_timeout", Duration(int_only_upstream=True), None, True,
          "Overrides `general.connect_timeout` for this pool." + _INT_MS_NOTE, optional=True,
          default_doc="`general.connect_timeout`", example=3000),
    _pool("Timeouts", "idle_timeout", Duration(int_only_upstream=True), None, True,
          "Overrides `general.idle_timeout` for this pool." + _INT_MS_NOTE, optional=True,
          default_doc="`general.idle_timeout`", example=600000),
    _pool("Timeouts", "query_timeout", Duration(), None, True,
          "Overrides `general.query_timeout` for this pool (0 disables it here); not PgDoorman's.", optional=True,
          default_doc="`general.query_timeout`", example="30s"),
    _pool("Timeouts", "server_lifetime", Duration(int_only_upstream=True), None, True,
          "Overrides `general.server_lifetime` for this pool." + _INT_MS_NOTE, optional=True,
          default_doc="`general.server_lifetime`", example=1200000),
    _pool("Prepared statements", "prepared_statements_cache_size", Int(1), None, True,
          "Overrides `general.prepared_statements_cache_size` for this pool.", optional=True,
          default_doc="`general.prepared_statements_cache_size`", example=8192),
    _pool("Prepared statements", "server_prepared_statements_cache_size", Int(1), None, True,
          "Overrides `general.server_prepared_statements_cache_size` for this pool.", optional=True,
          default_doc="`general.server_prepared_statements_cache_size`", example=1024),
    _pool("Connection scaling", "scaling_warm_pool_ratio", Int(0, 100), None, True,
          "Overrides `general.scaling_warm_pool_ratio`.", optional=True,
          default_doc="`general.scaling_warm_pool_ratio`", example=20),
    _pool("Connection scaling", "scaling_fast_retries", Int(0), None, True,
          "Overrides `general.scaling_fast_retries` (accepted; pgdoorman needs no re-checks).", optional=True,
          default_doc="`general.scaling_fast_retries`", example=10),
    _pool("Pool coordinator", "max_db_connections", Int(0), None, True,
          "Cap on server connections to this database summed over all its users (the pool coordinator, "
          "docs/operations.md); 0 or unset disables it. At the cap a user that needs a new connection takes "
          "one from the reserve, else an idle connection of the user with the largest surplus is closed for it, "
          "else it waits up to `reserve_pool_timeout` and its clients get SQLSTATE 53300.", optional=True,
          example=100),
    _pool("Pool coordinator", "min_connection_lifetime", Duration(int_only_upstream=True), None, True,
          "Connections younger than this are not evicted to make room for another user, and reserve "
          "connections are closed once idle this long." + _INT_MS_NOTE,
          optional=True, default_doc="`30000` ms", example=30000),
    _pool("Pool coordinator", "reserve_pool_size", Int(0), None, True,
          "Extra connections allowed above `max_db_connections`, taken before evicting anyone.", optional=True,
          default_doc="`0`", example=5),
    _pool("Pool coordinator", "reserve_pool_timeout", Duration(int_only_upstream=True), None, True,
          "How long clients wait at the cap (for a connection to close, or one to evict) before they get "
          "SQLSTATE 53300." + _INT_MS_NOTE, optional=True,
          default_doc="`3000` ms", example=3000),
    _pool("Pool coordinator", "min_guaranteed_pool_size", Int(0), None, True,
          "Connections per user that are never evicted for another user (a user's `min_pool_size` counts "
          "too).", optional=True, default_doc="`0`", example=2),
    _pool("Patroni-assisted fallback", "patroni_api_urls", HttpUrlList(), None, True,
          "Overrides `general.patroni_api_urls`.", optional=True, default_doc="`general.patroni_api_urls`",
          example=["http://10.0.0.1:8008"]),
    _pool("Patroni-assisted fallback", "fallback_cooldown", PositiveDuration(), None, True,
          "Overrides `general.fallback_cooldown`; must be above 0.", optional=True, default_doc="`30s`",
          example="30s"),
    _pool("Patroni-assisted fallback", "patroni_api_timeout", PositiveDuration(), None, True,
          "Overrides `general.patroni_api_timeout`.", optional=True, default_doc="`5s`", example="5s"),
    _pool("Patroni-assisted fallback", "fallback_connect_timeout", PositiveDuration(), None, True,
          "Overrides `general.fallback_connect_timeout`.", optional=True, default_doc="`5s`", example="5s"),
    _pool("Patroni-assisted fallback", "fallback_lifetime", PositiveDuration(), None, True,
          "Overrides `general.fallback_lifetime`.", optional=True, default_doc="`fallback_cooldown`",
          example="30s"),
    _pool("Server TLS", "server_tls_mode", _ANY_TLS_MODE, None, True, "Overrides `general.server_tls_mode`.",
          optional=True, default_doc="`general.server_tls_mode`", example="prefer"),
    _pool("Server TLS", "server_tls_ca_cert", Str(nonempty=True), None, True,
          "Overrides `general.server_tls_ca_cert`.", optional=True, example="/etc/pg_doorman/pg-ca.crt"),
    _pool("Server TLS", "server_tls_certificate", Str(nonempty=True), None, True,
          "Overrides `general.server_tls_certificate`.", optional=True, example="/etc/pg_doorman/client.crt"),
    _pool("Server TLS", "server_tls_private_key", Str(nonempty=True), None, True,
          "Overrides `general.server_tls_private_key`.", optional=True, example="/etc/pg_doorman/client.key"),
    _pool("Startup parameters", "startup_parameters", StartupParameters(), FrozenMapping[str, str](), True,
          "Startup parameters for this pool's server connections, overriding `general.startup_parameters` key "
          "by key (an auth_query row's `startup_parameters` JSON overrides both; docs/startup-parameters.md)."),
    _pool("Dynamic users", "auth_query", Subsection("auth_query", many=False), None, True,
          "Look users up in PostgreSQL at login time (see the auth_query reference).", optional=True),
    _pool("Users", "users", Subsection("user", many=True), (), True, "The users of this pool (see the users reference)."),
    # ------------------------------------------------------------------ pools.<name>.users[]
    _user("username", Str(nonempty=True), REQUIRED, True, "Name the client logs in with.", required=True),
    _user("password", Password(), REQUIRED, True,
          'Password the client must present: `"md5"` + 32 hex digits (md5 of password + username), a SCRAM '
          "verifier `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, or plain text. With no "
          "`server_username` the same credentials are used towards PostgreSQL. Or "
          '`"jwt-pkey-fpath:<pem>"`: the client presents an RS256 token signed by that public key as its '
          "password (needs the `jwt` extra and `server_username`/`server_password`).",
          required=True, secret=True),
    _user("pool_size", Int(1), REQUIRED, True,
          "Most server connections this user may hold in this pool. Required (PgDoorman documents 40 but "
          "requires the key).", required=True),
    _user("min_pool_size", Int(0), 0, True,
          "Server connections opened in advance and kept open; at most `pool_size`."),
    _user("pool_mode", _POOL_MODE, None, True, "Overrides the pool's `pool_mode` for this user.", optional=True,
          default_doc="the pool's `pool_mode`", example="session"),
    _user("server_username", Str(nonempty=True), None, True,
          "Role used on the server instead of the client's user name and credentials.", optional=True,
          example="app_owner"),
    _user("server_password", Str(), None, True,
          "Plain-text password of `server_username` (requires it), or `\"jwt-priv-key-fpath:<pem>\"`: answer "
          "PostgreSQL's clear-text password request with an RS256 token signed by that private key.",
          optional=True, secret=True,
          example="owner-secret"),
    _user("server_lifetime", Duration(int_only_upstream=True), None, True,
          "Overrides the pool's `server_lifetime` for this user's server connections." + _INT_MS_NOTE,
          optional=True, default_doc="the pool's `server_lifetime`", example=1200000),
    _user("auth_pam_service", Str(nonempty=True), None, True,
          "Authenticate this user through this PAM service (a clear-text password checked by PAM; needs the "
          "`pam` extra and `server_username`/`server_password`).", optional=True, example="pg_doorman"),
    # ------------------------------------------------------------------ pools.<name>.auth_query
    _aq("query", Str(nonempty=True), REQUIRED,
        "Query returning the password hash of user $1 (a `passwd` or `password` column, or a single column).",
        required=True, example="SELECT usename, passwd FROM pg_shadow WHERE usename = $1"),
    _aq("user", Str(nonempty=True), REQUIRED, "Role that runs the query, on the pool's server with its "
        "server TLS settings (`server_tls_*`, as the pool's own server connections).", required=True,
        example="doorman_auth"),
    _aq("password", Str(), "", "Plain-text password of `user`.", secret=True),
    _aq("database", Str(nonempty=True), None, "Database the query runs in.", optional=True,
        default_doc="the pool name", example="postgres"),
    _aq("workers", Int(1), 2, "Connections used to run the query."),
    _aq("server_user", Str(nonempty=True), None,
        "When set, all looked-up users share one pool connecting as this role; unset, each user gets its own "
        "pool using its own credentials.", optional=True, example="app_owner"),
    _aq("server_password", Str(), None, "Password of `server_user`.", optional=True, secret=True,
        example="owner-secret"),
    _aq("pool_size", Int(1), 40, "Pool size of each dynamically created pool."),
    _aq("min_pool_size", Int(0), 0, "Connections kept open per dynamic pool (one pool per user only)."),
    _aq("cache_ttl", Duration(), 3_600_000, "How long a looked-up password is cached."),
    _aq("cache_failure_ttl", Duration(), 30_000, "How long an unknown user is remembered as unknown."),
    _aq("min_interval", Duration(), 1000, "Minimum time between re-fetches of a user after a failed login."),
)

