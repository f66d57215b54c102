"""The PgBouncer settings pgdoorman has no counterpart for, each with the reason the output gives for not
translating it (a setting not listed here gets a generic reason).
"""

from __future__ import annotations

# PgBouncer settings with no counterpart, and why (anything else unknown gets a generic reason).
NOT_TRANSLATED: dict[str, str] = {
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
    "server_check_query": "pgdoorman's idle check always sends PgDoorman's empty query (;), to servers idle "
                          "longer than general.server_idle_check_timeout (default 60s)",
    "server_check_delay": "see server_check_query; the nearest setting is general.server_idle_check_timeout",
    "server_fast_close": "pgdoorman closes servers of removed or changed pools when they are given back",
    "server_login_retry": "pgdoorman retries a failed server login at the next client request",
    "client_login_timeout": "pgdoorman allows a fixed time for a client to log in",
    "autodb_idle_timeout": "no automatically created databases (the * entry is not translated)",
    "dns_max_ttl": "pgdoorman caches server host names for a fixed 15 s, failures too (not configurable)",
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
    "query_timeout": "pgdoorman's query_timeout is general or per pool, not per user",
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
