"""The loaded configuration as frozen dataclasses: one attribute per setting of the field table, with
the table's defaults (see `fields.py`, or docs/reference/*.md for the values). Durations are integer
milliseconds, byte sizes integer bytes. Settings not implemented yet always hold their default."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pgdoorman.config.fields import attribute_default
from pgdoorman.config.values import FrozenMapping, HbaSource


def _g(key: str) -> Any:
    return attribute_default("general", key)


def _w(key: str) -> Any:
    return attribute_default("web", key)


def _t(key: str) -> Any:
    return attribute_default("talos", key)


def _p(key: str) -> Any:
    return attribute_default("pool", key)


def _u(key: str) -> Any:
    return attribute_default("user", key)


def _a(key: str) -> Any:
    return attribute_default("auth_query", key)


@dataclass(frozen=True)
class FallbackSettings:
    """A pool's effective Patroni-assisted fallback settings (Config.fallback_for), durations in seconds."""

    urls: tuple[str, ...]
    cooldown: float
    api_timeout: float
    connect_timeout: float
    lifetime: float


@dataclass(frozen=True)
class General:
    host: str = _g("host")
    port: int = _g("port")
    backlog: int = _g("backlog")
    unix_socket_dir: str | None = _g("unix_socket_dir")
    unix_socket_mode: int = _g("unix_socket_mode")
    unix_socket_buffer_size: int = _g("unix_socket_buffer_size")
    max_connections: int = _g("max_connections")
    connect_timeout: int = _g("connect_timeout")
    query_wait_timeout: int = _g("query_wait_timeout")
    query_timeout: int = _g("query_timeout")
    idle_timeout: int = _g("idle_timeout")
    server_lifetime: int = _g("server_lifetime")
    retain_connections_time: int = _g("retain_connections_time")
    retain_connections_max: int = _g("retain_connections_max")
    server_idle_check_timeout: int = _g("server_idle_check_timeout")
    shutdown_timeout: int = _g("shutdown_timeout")
    proxy_copy_data_timeout: int = _g("proxy_copy_data_timeout")
    tcp_keepalives_idle: int = _g("tcp_keepalives_idle")
    tcp_keepalives_interval: int = _g("tcp_keepalives_interval")
    tcp_keepalives_count: int = _g("tcp_keepalives_count")
    tcp_user_timeout: int = _g("tcp_user_timeout")
    tcp_so_linger: int = _g("tcp_so_linger")
    tcp_no_delay: bool = _g("tcp_no_delay")
    tcp_socket_buffer_size: int = _g("tcp_socket_buffer_size")
    max_memory_usage: int = _g("max_memory_usage")
    message_size_to_be_stream: int = _g("message_size_to_be_stream")
    worker_threads: int | None = _g("worker_threads")
    worker_cpu_affinity_pinning: bool = _g("worker_cpu_affinity_pinning")
    worker_placement: str = _g("worker_placement")
    worker_busy_percent: int = _g("worker_busy_percent")
    worker_spare_cpu_percent: int = _g("worker_spare_cpu_percent")
    worker_stack_size: int | None = _g("worker_stack_size")
    max_blocking_threads: int | None = _g("max_blocking_threads")
    tokio_global_queue_interval: int | None = _g("tokio_global_queue_interval")
    tokio_event_interval: int | None = _g("tokio_event_interval")
    log_client_connections: bool = _g("log_client_connections")
    log_client_disconnections: bool = _g("log_client_disconnections")
    syslog_prog_name: str | None = _g("syslog_prog_name")
    server_round_robin: bool = _g("server_round_robin")
    sync_server_parameters: bool = _g("sync_server_parameters")
    session_real_backend_key: bool = _g("session_real_backend_key")
    pooler_check_query: str = _g("pooler_check_query")
    startup_parameters: Mapping[str, str] = _g("startup_parameters")
    prepared_statements: bool = _g("prepared_statements")
    prepared_statements_cache_size: int = _g("prepared_statements_cache_size")
    server_prepared_statements_cache_size: int | None = _g("server_prepared_statements_cache_size")
    client_anonymous_prepared_cache_size: int | None = _g("client_anonymous_prepared_cache_size")
    query_interner_gc_interval_seconds: int = _g("query_interner_gc_interval_seconds")
    query_interner_anon_idle_ttl_seconds: int = _g("query_interner_anon_idle_ttl_seconds")
    patroni_api_urls: tuple[str, ...] | None = _g("patroni_api_urls")
    fallback_cooldown: int | None = _g("fallback_cooldown")
    patroni_api_timeout: int | None = _g("patroni_api_timeout")
    fallback_connect_timeout: int | None = _g("fallback_connect_timeout")
    fallback_lifetime: int | None = _g("fallback_lifetime")
    admin_username: str = _g("admin_username")
    admin_password: str = _g("admin_password")
    tls_certificate: str | None = _g("tls_certificate")
    tls_private_key: str | None = _g("tls_private_key")
    tls_ca_cert: str | None = _g("tls_ca_cert")
    tls_mode: str | None = _g("tls_mode")
    tls_rate_limit_per_second: int = _g("tls_rate_limit_per_second")
    server_tls_mode: str = _g("server_tls_mode")
    server_tls_ca_cert: str | None = _g("server_tls_ca_cert")
    server_tls_certificate: str | None = _g("server_tls_certificate")
    server_tls_private_key: str | None = _g("server_tls_private_key")
    daemon_pid_file: str = _g("daemon_pid_file")
    hba: tuple[str, ...] = _g("hba")
    pg_hba: HbaSource | None = _g("pg_hba")
    max_concurrent_creates: int = _g("max_concurrent_creates")
    scaling_warm_pool_ratio: int = _g("scaling_warm_pool_ratio")
    scaling_fast_retries: int = _g("scaling_fast_retries")
    scaling_max_parallel_creates: int = _g("scaling_max_parallel_creates")


@dataclass(frozen=True)
class WebConfig:
    enabled: bool = _w("enabled")
    host: str = _w("host")
    port: int = _w("port")
    ui: bool = _w("ui")
    ui_anonymous: bool = _w("ui_anonymous")
    log_tap_max_entries: int = _w("log_tap_max_entries")
    trusted_proxies: tuple[str, ...] = _w("trusted_proxies")
    sso_enabled: bool = _w("sso_enabled")
    sso_proxy_url: str | None = _w("sso_proxy_url")
    sso_public_key_file: str | None = _w("sso_public_key_file")
    sso_audience: tuple[str, ...] = _w("sso_audience")
    sso_allowed_users: tuple[str, ...] = _w("sso_allowed_users")
    sso_groups_claim: str = _w("sso_groups_claim")
    sso_admin_groups: tuple[str, ...] = _w("sso_admin_groups")
    sso_require_https: bool = _w("sso_require_https")


@dataclass(frozen=True)
class TalosConfig:
    keys: tuple[str, ...] = _t("keys")
    databases: tuple[str, ...] = _t("databases")


@dataclass(frozen=True)
class UserConfig:
    username: str = _u("username")
    password: str = _u("password")
    pool_size: int = _u("pool_size")
    min_pool_size: int = _u("min_pool_size")
    pool_mode: str | None = _u("pool_mode")
    server_username: str | None = _u("server_username")
    server_password: str | None = _u("server_password")
    server_lifetime: int | None = _u("server_lifetime")
    auth_pam_service: str | None = _u("auth_pam_service")


@dataclass(frozen=True)
class AuthQueryConfig:
    query: str = _a("query")
    user: str = _a("user")
    password: str = _a("password")
    database: str | None = _a("database")
    workers: int = _a("workers")
    server_user: str | None = _a("server_user")
    server_password: str | None = _a("server_password")
    pool_size: int = _a("pool_size")
    min_pool_size: int = _a("min_pool_size")
    cache_ttl: int = _a("cache_ttl")
    cache_failure_ttl: int = _a("cache_failure_ttl")
    min_interval: int = _a("min_interval")


@dataclass(frozen=True)
class PoolConfig:
    name: str
    server_host: str = _p("server_host")
    server_port: int = _p("server_port")
    # "" (the table default) means "the pool name"; __post_init__ fills it in.
    server_database: str = _p("server_database")
    pool_mode: str = _p("pool_mode")
    application_name: str | None = _p("application_name")
    cleanup_server_connections: bool = _p("cleanup_server_connections")
    log_client_parameter_status_changes: bool = _p("log_client_parameter_status_changes")
    transaction_pinning: str = _p("transaction_pinning")
    transaction_discard_sequences: bool = _p("transaction_discard_sequences")
    sync_server_parameters: bool | None = _p("sync_server_parameters")
    connect_timeout: int | None = _p("connect_timeout")
    idle_timeout: int | None = _p("idle_timeout")
    query_timeout: int | None = _p("query_timeout")
    server_lifetime: int | None = _p("server_lifetime")
    prepared_statements_cache_size: int | None = _p("prepared_statements_cache_size")
    server_prepared_statements_cache_size: int | None = _p("server_prepared_statements_cache_size")
    scaling_warm_pool_ratio: int | None = _p("scaling_warm_pool_ratio")
    scaling_fast_retries: int | None = _p("scaling_fast_retries")
    max_db_connections: int | None = _p("max_db_connections")
    min_connection_lifetime: int | None = _p("min_connection_lifetime")
    reserve_pool_size: int | None = _p("reserve_pool_size")
    reserve_pool_timeout: int | None = _p("reserve_pool_timeout")
    min_guaranteed_pool_size: int | None = _p("min_guaranteed_pool_size")
    patroni_api_urls: tuple[str, ...] | None = _p("patroni_api_urls")
    fallback_cooldown: int | None = _p("fallback_cooldown")
    patroni_api_timeout: int | None = _p("patroni_api_timeout")
    fallback_connect_timeout: int | None = _p("fallback_connect_timeout")
    fallback_lifetime: int | None = _p("fallback_lifetime")
    server_tls_mode: str | None = _p("server_tls_mode")
    server_tls_ca_cert: str | None = _p("server_tls_ca_cert")
    server_tls_certificate: str | None = _p("server_tls_certificate")
    server_tls_private_key: str | None = _p("server_tls_private_key")
    startup_parameters: Mapping[str, str] = _p("startup_parameters")
    # Users looked up in PostgreSQL at login (pgdoorman/auth_query/); None: only the static users.
    auth_query: AuthQueryConfig | None = _p("auth_query")
    users: tuple[UserConfig, ...] = _p("users")

    def __post_init__(self) -> None:
        if not self.server_database:
            object.__setattr__(self, "server_database", self.name)

    def user(self, name: str) -> UserConfig | None:
        for u in self.users:
            if u.username == name:
                return u
        return None


_TIMEOUT_KEYS = ("connect_timeout", "idle_timeout", "server_lifetime", "query_timeout")

# A key path as the loader walks it: ("general", "tls_certificate"), ("pools", "app", "users", 0, "password").
# A user is numbered by its place in PoolConfig.users, whatever the file called it.
KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Origin:
    """Where a table or key of the config came from (included files merge into one Config): the file, and
    the key path as messages show it (`pools.app.users[0].password`; a legacy TOML users map keeps its own
    numbers)."""

    file: str
    path: str


@dataclass(frozen=True)
class Config:
    path: str = ""
    general: General = dataclasses.field(default_factory=General)
    web: WebConfig = dataclasses.field(default_factory=WebConfig)
    pools: Mapping[str, PoolConfig] = dataclasses.field(default_factory=FrozenMapping[str, PoolConfig])
    warnings: tuple[str, ...] = ()
    # Said once at info level when the config is loaded (settings that do not apply to pgdoorman).
    notes: tuple[str, ...] = ()
    talos: TalosConfig = dataclasses.field(default_factory=TalosConfig)
    # Every table and key given, in the order read: where it came from. Plain data for messages about the
    # config found after loading (pgdoorman.resources); not part of equality.
    origins: Mapping[KeyPath, Origin] = dataclasses.field(
        default_factory=FrozenMapping[KeyPath, Origin], compare=False, repr=False)

    def origin(self, *path: str | int) -> Origin | None:
        """Where the key (or table) at `path` was given; None when it was not (a default)."""
        return self.origins.get(path)

    def pool_mode_for(self, pool: PoolConfig, user: UserConfig) -> str:
        """The effective pool mode: the user's override, else the pool's."""
        return user.pool_mode if user.pool_mode is not None else pool.pool_mode

    def timeout_for(self, pool: PoolConfig, user: UserConfig | None, key: str) -> int:
        """Effective milliseconds for connect_timeout / idle_timeout / server_lifetime / query_timeout: the user's
        value (only server_lifetime exists per user), else the pool's, else general's."""
        if key not in _TIMEOUT_KEYS:
            raise ValueError(f"timeout_for: unknown key {key!r}; expected one of {', '.join(_TIMEOUT_KEYS)}")
        if user is not None and key == "server_lifetime" and user.server_lifetime is not None:
            return user.server_lifetime
        pool_value: int | None = getattr(pool, key)
        if pool_value is not None:
            return pool_value
        general_value: int = getattr(self.general, key)
        return general_value

    def fallback_for(self, pool: PoolConfig) -> FallbackSettings | None:
        """Patroni-assisted fallback of a pool (its own values, else general's, else PgDoorman's defaults),
        or None when no patroni_api_urls apply to it."""
        urls = pool.patroni_api_urls if pool.patroni_api_urls is not None else self.general.patroni_api_urls
        if not urls:
            return None

        def ms(key: str, default: int) -> int:
            for src in (pool, self.general):
                v: int | None = getattr(src, key)
                if v is not None:
                    return v
            return default

        cooldown = ms("fallback_cooldown", 30000)
        return FallbackSettings(urls, cooldown / 1000.0, ms("patroni_api_timeout", 5000) / 1000.0,
                                ms("fallback_connect_timeout", 5000) / 1000.0,
                                ms("fallback_lifetime", cooldown) / 1000.0)

    def prepared_cache_size_for(self, pool: PoolConfig) -> int:
        """The pool-level prepared statement cache size (pool override, else general)."""
        if pool.prepared_statements_cache_size is not None:
            return pool.prepared_statements_cache_size
        return self.general.prepared_statements_cache_size

    def server_tls_settings_for(self, pool: PoolConfig) -> dict[str, str | None]:
        """server_tls_mode / _ca_cert / _certificate / _private_key of a pool: its own value, else general's."""
        out: dict[str, str | None] = {}
        for key in ("server_tls_mode", "server_tls_ca_cert", "server_tls_certificate", "server_tls_private_key"):
            own = getattr(pool, key)
            out[key] = own if own is not None else getattr(self.general, key)
        return out

    def server_prepared_cache_size_for(self, pool: PoolConfig) -> int:
        """Per-server-connection prepared statement LRU size: pool override, else general, else the
        pool-level cache size."""
        if pool.server_prepared_statements_cache_size is not None:
            return pool.server_prepared_statements_cache_size
        if self.general.server_prepared_statements_cache_size is not None:
            return self.general.server_prepared_statements_cache_size
        return self.prepared_cache_size_for(pool)

    def client_anonymous_cache_size_for(self, pool: PoolConfig) -> int:
        """Per-client unnamed prepared statement LRU size (0 = unbounded): general, else the pool-level
        cache size."""
        if self.general.client_anonymous_prepared_cache_size is not None:
            return self.general.client_anonymous_prepared_cache_size
        return self.prepared_cache_size_for(pool)
