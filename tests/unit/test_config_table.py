"""The field table, the dataclasses, the reference config and docs/reference/*.md must agree: these
tests fail when one of them is changed without the others (regenerate the docs with
`python scripts/gen_reference_docs.py`)."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import pytest

from pgdoorman.config import (
    AuthQueryConfig,
    General,
    PoolConfig,
    TalosConfig,
    UserConfig,
    WebConfig,
    load_config,
    render_docs,
    render_reference,
)
from pgdoorman.config.fields import FIELDS, REQUIRED, SECTIONS, Field, fields_of
from pgdoorman.config.values import Invalid, Subsection
from tests.support.certs import make_certs

ROOT = Path(__file__).resolve().parents[2]

DATACLASSES: list[tuple[str, type[Any], tuple[str, ...]]] = [
    ("general", General, ()),
    ("web", WebConfig, ()),
    ("talos", TalosConfig, ()),
    ("pool", PoolConfig, ("name",)),  # the pool name is the section's key, not a setting
    ("user", UserConfig, ()),
    ("auth_query", AuthQueryConfig, ()),
]

SUBSECTION_TYPES = {"users": tuple[UserConfig, ...], "auth_query": AuthQueryConfig | None}

# The settings pgdoorman implements today. Flipping `implemented` in the table must come with an
# update here, so a flag cannot change by accident.
IMPLEMENTED = {
    "include": {"files"},
    "general": {
        "host", "port", "max_connections", "connect_timeout", "query_wait_timeout", "query_timeout", "idle_timeout",
        "server_lifetime", "retain_connections_time", "retain_connections_max", "shutdown_timeout",
        "admin_username", "admin_password", "worker_threads", "worker_cpu_affinity_pinning", "unix_socket_dir",
        "worker_placement", "worker_busy_percent", "worker_spare_cpu_percent", "startup_parameters", "max_memory_usage", "proxy_copy_data_timeout", "message_size_to_be_stream",
        # parsing only (fields.applies False): they load with one info line
        "worker_stack_size", "max_blocking_threads", "tokio_global_queue_interval", "tokio_event_interval",
        "unix_socket_mode", "tcp_no_delay", "tcp_keepalives_idle", "tcp_keepalives_interval",
        "tcp_keepalives_count", "tcp_user_timeout", "backlog", "log_client_connections",
        "tcp_so_linger", "tcp_socket_buffer_size", "unix_socket_buffer_size", "tls_rate_limit_per_second",
        "log_client_disconnections", "prepared_statements", "prepared_statements_cache_size",
        "server_prepared_statements_cache_size", "client_anonymous_prepared_cache_size",
        "query_interner_gc_interval_seconds", "query_interner_anon_idle_ttl_seconds",
        "daemon_pid_file", "syslog_prog_name", "tls_certificate", "tls_private_key", "tls_ca_cert", "tls_mode",
        "server_tls_mode", "server_tls_ca_cert", "server_tls_certificate", "server_tls_private_key", "hba", "pg_hba",
        "session_real_backend_key", "server_idle_check_timeout", "server_round_robin", "pooler_check_query",
        "sync_server_parameters", "patroni_api_urls", "fallback_cooldown", "patroni_api_timeout",
        "fallback_connect_timeout", "fallback_lifetime",
        "max_concurrent_creates", "scaling_warm_pool_ratio", "scaling_fast_retries", "scaling_max_parallel_creates",
    },
    "web": {"enabled", "host", "port", "ui", "ui_anonymous", "log_tap_max_entries", "trusted_proxies",
            "sso_enabled", "sso_proxy_url", "sso_public_key_file", "sso_audience", "sso_allowed_users",
            "sso_groups_claim", "sso_admin_groups", "sso_require_https"},
    "talos": {"keys", "databases"},
    "pool": {
        "server_host", "server_port", "server_database", "pool_mode", "application_name",
        "cleanup_server_connections", "connect_timeout", "idle_timeout", "query_timeout", "server_lifetime",
        "prepared_statements_cache_size", "server_prepared_statements_cache_size", "users",
        "server_tls_mode", "server_tls_ca_cert", "server_tls_certificate", "server_tls_private_key", "auth_query",
        "startup_parameters", "log_client_parameter_status_changes", "transaction_pinning", "transaction_discard_sequences",
        "sync_server_parameters", "patroni_api_urls", "fallback_cooldown", "patroni_api_timeout",
        "fallback_connect_timeout", "fallback_lifetime",
        "scaling_warm_pool_ratio", "scaling_fast_retries", "max_db_connections", "min_connection_lifetime",
        "reserve_pool_size", "reserve_pool_timeout", "min_guaranteed_pool_size",
    },
    "user": {
        "username", "password", "pool_size", "min_pool_size", "pool_mode", "server_username",
        "server_password", "server_lifetime", "auth_pam_service",
    },
    "auth_query": {
        "query", "user", "password", "database", "workers", "server_user", "server_password", "pool_size",
        "min_pool_size", "cache_ttl", "cache_failure_ttl", "min_interval",
    },
}  # fmt: skip

# Every PgDoorman key of the reference study (sections 2.1-2.6), so that any PgDoorman config loads.
PGDOORMAN_KEYS = {
    "general": {
        "host", "port", "backlog", "unix_socket_dir", "unix_socket_mode", "unix_socket_buffer_size",
        "max_connections", "connect_timeout", "query_wait_timeout", "idle_timeout", "server_lifetime",
        "retain_connections_time", "retain_connections_max", "server_idle_check_timeout", "shutdown_timeout",
        "proxy_copy_data_timeout", "tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count",
        "tcp_so_linger", "tcp_no_delay", "tcp_user_timeout", "tcp_socket_buffer_size", "max_concurrent_creates",
        "scaling_warm_pool_ratio", "scaling_fast_retries", "scaling_max_parallel_creates", "max_memory_usage",
        "message_size_to_be_stream", "worker_threads", "worker_cpu_affinity_pinning", "worker_stack_size",
        "max_blocking_threads", "tokio_global_queue_interval", "tokio_event_interval", "log_client_connections",
        "log_client_disconnections", "syslog_prog_name", "server_round_robin", "sync_server_parameters",
        "pooler_check_query", "startup_parameters", "prepared_statements", "prepared_statements_cache_size",
        "server_prepared_statements_cache_size", "client_anonymous_prepared_cache_size",
        "client_prepared_statements_cache_size", "query_interner_gc_interval_seconds",
        "query_interner_anon_idle_ttl_seconds", "patroni_api_urls", "fallback_cooldown", "patroni_api_timeout",
        "fallback_connect_timeout", "fallback_lifetime", "admin_username", "admin_password", "tls_certificate",
        "tls_private_key", "tls_ca_cert", "tls_mode", "tls_rate_limit_per_second", "server_tls_mode",
        "server_tls_ca_cert", "server_tls_certificate", "server_tls_private_key", "daemon_pid_file", "hba",
        "pg_hba",
    },
    "web": {
        "enabled", "host", "port", "ui", "ui_anonymous", "log_tap_max_entries", "sso_enabled", "sso_proxy_url",
        "sso_public_key_file", "sso_audience", "sso_allowed_users", "trusted_proxies", "sso_groups_claim",
        "sso_admin_groups", "sso_require_https",
    },
    "talos": {"keys", "databases"},
    "pool": {
        "server_host", "server_port", "server_database", "pool_mode", "connect_timeout", "idle_timeout",
        "server_lifetime", "cleanup_server_connections", "log_client_parameter_status_changes",
        "application_name", "prepared_statements_cache_size", "server_prepared_statements_cache_size",
        "scaling_warm_pool_ratio", "scaling_fast_retries", "max_db_connections", "min_connection_lifetime",
        "reserve_pool_size", "reserve_pool_timeout", "min_guaranteed_pool_size", "patroni_api_urls",
        "fallback_cooldown", "patroni_api_timeout", "fallback_connect_timeout", "fallback_lifetime",
        "server_tls_mode", "server_tls_ca_cert", "server_tls_certificate", "server_tls_private_key",
        "startup_parameters", "auth_query", "users", "sync_server_parameters",
    },
    "user": {
        "username", "password", "pool_size", "min_pool_size", "pool_mode", "server_lifetime", "server_username",
        "server_password", "auth_pam_service",
    },
    "auth_query": {
        "query", "user", "password", "database", "workers", "server_user", "server_password", "pool_size",
        "min_pool_size", "cache_ttl", "cache_failure_ttl", "min_interval",
    },
}  # fmt: skip


def _attr_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return REQUIRED


@pytest.mark.parametrize(("section", "cls", "extra"), DATACLASSES, ids=[d[0] for d in DATACLASSES])
def test_dataclass_matches_table(section: str, cls: type[Any], extra: tuple[str, ...]) -> None:
    table = fields_of(section)
    attrs = [f for f in dataclasses.fields(cls) if f.name not in extra]
    assert [a.name for a in attrs] == [f.key for f in table], "attribute names/order differ from the table"
    hints = typing.get_type_hints(cls)
    for attr, f in zip(attrs, table, strict=True):
        expected = SUBSECTION_TYPES[f.key] if isinstance(f.type, Subsection) else f.annotation
        assert hints[attr.name] == expected, f"{section}.{f.key}: annotation {hints[attr.name]} != {expected}"
        assert _attr_default(attr) == f.default, f"{section}.{f.key}: dataclass default differs from the table"
        assert attr.repr is not f.secret, f"{section}.{f.key}: secrets must be left out of repr()"


# Settings of ours that PgDoorman does not have (each documented as such in its text).
OUR_KEYS = {"general": {"session_real_backend_key", "query_timeout", "worker_placement", "worker_busy_percent", "worker_spare_cpu_percent"}, "pool": {"query_timeout", "transaction_pinning", "transaction_discard_sequences"}}


def test_every_pgdoorman_key_is_in_the_table() -> None:
    for section, keys in PGDOORMAN_KEYS.items():
        names = {name for f in fields_of(section) for name in (f.key, *f.aliases)}
        keys = keys | OUR_KEYS.get(section, set())
        assert names == keys, f"{section}: missing {keys - names}, unexpected {names - keys}"
    for section, ours in OUR_KEYS.items():
        for f in fields_of(section):
            if f.key in ours:
                assert "not PgDoorman's" in f.doc, f"{section}.{f.key}: say in its text that it is ours"


def test_implemented_flags() -> None:
    for section in SECTIONS:
        done = {f.key for f in fields_of(section) if f.implemented}
        assert done == IMPLEMENTED[section], f"{section}: implemented flags changed"


@pytest.mark.parametrize("f", [f for f in FIELDS if not isinstance(f.type, Subsection)], ids=lambda f: f.path)
def test_field_entry_is_sound(f: Field) -> None:
    assert f.doc.strip() and f.doc.endswith((".", ")")), "every setting needs a sentence of description"
    if f.optional:
        assert f.default is None, "optional settings have no default value"
    if f.default is not None and f.default is not REQUIRED and not (f.default == "" and f.default_doc):
        # The default survives a trip through the config-file form.
        assert f.type.parse(f.type.to_config(f.default)) == f.default
    if f.example is not None:
        try:
            f.type.parse(f.example)
        except Invalid as e:  # pragma: no cover - the assertion below reports it
            pytest.fail(f"{f.path}: example {f.example!r} does not parse: {e}")
    if f.secret:
        assert "password" in f.key


# --------------------------------------------------------------------------------------------- reference


@pytest.mark.parametrize("fmt", ["yaml", "toml"])
def test_reference_loads_back_to_the_defaults(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"pg_doorman.{fmt}"
    path.write_text(render_reference(fmt))
    config = load_config(str(path))
    assert config.warnings == ()
    assert config.general == General()
    assert config.web == WebConfig()
    assert config.talos == TalosConfig()
    assert list(config.pools) == ["exampledb"]
    pool = config.pools["exampledb"]
    user = pool.users[0]
    assert pool == PoolConfig(name="exampledb", users=(user,))
    assert (user.username, user.pool_size) == ("app_user", 40)
    assert user == UserConfig(username="app_user", password=user.password, pool_size=40)


@pytest.mark.parametrize("fmt", ["yaml", "toml"])
def test_reference_lists_every_setting(fmt: str) -> None:
    text = render_reference(fmt)
    sep = ":" if fmt == "yaml" else " ="
    for f in FIELDS:
        if isinstance(f.type, Subsection):
            continue
        live = re.search(rf"^ *(?:- )?{f.key}{sep} ", text, re.M)
        commented = re.search(rf"^ *# (?:- )?{f.key}{sep} ", text, re.M)
        assert live or commented, f"{f.path} is missing from the {fmt} reference"
        if not f.implemented:
            assert commented, f"{f.path} is not implemented and must be commented out"
        assert f.doc.split()[0].replace("`", "") in text


@pytest.mark.parametrize("fmt", ["yaml", "toml"])
def test_unimplemented_settings_uncommented_only_warn(tmp_path: Path, fmt: str) -> None:
    # Uncommenting everything in the reference gives a config that loads, warning once per setting
    # that is not implemented or whose default pgdoorman does not follow (sync_server_parameters).
    text = render_reference(fmt)
    keys = "|".join(sorted({f.key for f in FIELDS}))
    sep = ":" if fmt == "yaml" else " ="
    uncommented = re.sub(rf"^( *)# ((?:- )?(?:{keys}){sep} )", r"\1\2", text, flags=re.M)
    for header in ("auth_query:", "talos:", "[talos]", "[pools.exampledb.auth_query]"):
        uncommented = uncommented.replace(f"# {header}", header)
    # TLS files are loaded: point the examples at real ones.
    certs = make_certs(tmp_path / "certs", "someone")
    for example, real in (("/etc/pg_doorman/server.crt", certs.server_cert),
                          ("/etc/pg_doorman/server.key", certs.server_key), ("/etc/pg_doorman/ca.crt", certs.ca),
                          ("/etc/pg_doorman/pg-ca.crt", certs.ca), ("/etc/pg_doorman/client.crt", certs.client_cert),
                          ("/etc/pg_doorman/client.key", certs.client_key)):
        assert example in uncommented
        uncommented = uncommented.replace(example, real)
    path = tmp_path / f"all.{fmt}"
    path.write_text(uncommented)
    config = load_config(str(path))
    warned = {w.split(": ")[1] for w in config.warnings}
    expected = {
        f"{'pools.exampledb' if f.section == 'pool' else 'pools.exampledb.users[0]' if f.section == 'user' else 'pools.exampledb.auth_query' if f.section == 'auth_query' else f.section}.{f.key}"
        for f in FIELDS
        if (not f.implemented or f.unhonoured is not None and f.default == f.unhonoured[0])
        and not isinstance(f.type, Subsection)
    }
    assert warned == expected
    assert len(config.warnings) == len(expected)


# --------------------------------------------------------------------------------------------- docs


def test_docs_reference_is_up_to_date() -> None:
    docs = render_docs()
    directory = ROOT / "docs" / "reference"
    on_disk = {p.name: p.read_text() for p in directory.glob("*.md")}
    hint = "docs/reference is stale: run `python scripts/gen_reference_docs.py` and commit the result"
    assert sorted(on_disk) == sorted(docs), hint
    for name, text in docs.items():
        assert on_disk[name] == text, f"{name}: {hint}"


def test_docs_cover_every_setting() -> None:
    docs = render_docs()
    for f in FIELDS:
        page = docs[SECTIONS[f.section].doc_file]
        assert f"### `{f.key}`" in page or f.section == "include" and f.key in page, f.path


def test_inapplicable_settings_load_with_one_info_line(tmp_path: Any) -> None:
    from pgdoorman.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("general:\n  admin_username: a\n  admin_password: b\n  worker_stack_size: 8MB\n"
                    "  tokio_event_interval: 61\n"
                    "pools:\n  app:\n    users: [{username: u, password: p, pool_size: 1}]\n")
    config = load_config(str(path))
    assert config.warnings == ()
    (note,) = config.notes
    assert note.startswith(f"{path}: general.worker_stack_size, {path}: general.tokio_event_interval: do not apply")
    assert config.general.worker_stack_size == 8 << 20
    bad = tmp_path / "d.yaml"
    bad.write_text("general:\n  max_blocking_threads: 0\n")
    with pytest.raises(Exception, match="max_blocking_threads"):
        load_config(str(bad))
