"""Loading config files: formats, include files, the legacy users map, the `prometheus` alias,
warnings for unimplemented keys, and every category of error with its exact file and key path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pgdoorman.config import (
    Config,
    ConfigError,
    General,
    PoolConfig,
    UserConfig,
    WebConfig,
    config_from_dict,
    load_config,
)

MD5_BOB = "md5" + "0123456789abcdef" * 2

BASE_YAML = """\
general:
  admin_username: admin
  admin_password: secret
pools:
  app:
    users:
      - username: bob
        password: "hunter2"
        pool_size: 10
"""

BASE_TOML = """\
[general]
admin_username = "admin"
admin_password = "secret"

[pools.app]

[[pools.app.users]]
username = "bob"
password = "hunter2"
pool_size = 10
"""


def write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def errors_of(path: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


# --------------------------------------------------------------------------------------------- basics


@pytest.mark.parametrize(("name", "text"), [("c.yaml", BASE_YAML), ("c.yml", BASE_YAML), ("c.toml", BASE_TOML), ("c.conf", BASE_TOML)])
def test_minimal_config_loads_with_defaults(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path, name, text)
    config = load_config(path)
    assert config.path == path
    assert config.warnings == ()
    assert config.general == General(admin_username="admin", admin_password="secret")
    assert config.general.port == 5432
    assert config.general.connect_timeout == 3000
    assert config.general.worker_threads is None
    assert config.general.log_client_connections is True
    assert config.web == WebConfig()
    assert config.web.port == 9127
    pool = config.pools["app"]
    assert pool == PoolConfig(name="app", users=(UserConfig(username="bob", password="hunter2", pool_size=10),))
    assert pool.server_database == "app"
    assert pool.pool_mode == "transaction"
    assert pool.users[0].min_pool_size == 0
    # Configs are hashable values: equal files give equal, equally hashed configs.
    assert hash(config) == hash(load_config(path)) and config == load_config(path)


def test_durations_and_sizes_in_files(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        BASE_YAML.replace(
            "  admin_password: secret\n",
            "  admin_password: secret\n"
            "  idle_timeout: 5m\n"
            "  connect_timeout: 1500\n"
            "  server_lifetime: '1h'\n"
            "  max_memory_usage: 64MB\n"
            "  message_size_to_be_stream: 512k\n"
            "  unix_socket_mode: '0660'\n"
            "  worker_threads: 2\n",
        ).replace(
            "    users:\n",
            "    connect_timeout: 2s\n    idle_timeout: 700\n    users:\n",
        ),
    )
    config = load_config(path)
    g = config.general
    assert (g.idle_timeout, g.connect_timeout, g.server_lifetime) == (300_000, 1500, 3_600_000)
    # Sizes are parsed (the parser itself is checked in test_config_values.py).
    assert (g.max_memory_usage, g.message_size_to_be_stream) == (64 << 20, 512 << 10)
    assert g.unix_socket_mode == 0o660
    assert g.worker_threads == 2
    pool = config.pools["app"]
    # Strings are accepted in pool-level overrides too (PgDoorman itself only takes integers there).
    assert (pool.connect_timeout, pool.idle_timeout) == (2000, 700)


def test_yaml_uses_core_schema_scalars(tmp_path: Path) -> None:
    # YAML 1.1 would read `on` as a boolean and 0600 as octal 384; PgDoorman's reader does neither.
    path = write(
        tmp_path,
        "c.yaml",
        BASE_YAML.replace("username: bob", "username: on").replace("  admin_password: secret\n", "  admin_password: secret\n  unix_socket_mode: 0600\n"),
    )
    assert errors_of(path) == [
        f'{path}: general.unix_socket_mode: must be an octal permission string such as "0600" (quote it), got 600'
    ]
    fixed = write(tmp_path, "d.yaml", BASE_YAML.replace("username: bob", "username: on"))
    assert load_config(fixed).pools["app"].users[0].username == "on"


def test_null_means_unset(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        BASE_YAML.replace("  admin_password: secret\n", "  admin_password: secret\n  port:\n  unix_socket_dir: null\n"),
    )
    config = load_config(path)
    assert config.general.port == 5432
    assert config.general.unix_socket_dir is None


def test_config_helpers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        """\
        general:
          admin_username: admin
          admin_password: secret
          connect_timeout: 1s
          idle_timeout: 2s
          server_lifetime: 3s
        pools:
          app:
            server_database: realdb
            pool_mode: session
            idle_timeout: 20000
            server_lifetime: 30000
            users:
              - {username: alice, password: a, pool_size: 1, pool_mode: transaction, server_lifetime: 300}
              - {username: bob, password: b, pool_size: 2}
        """,
    )
    config = load_config(path)
    pool = config.pools["app"]
    alice, bob = pool.user("alice"), pool.user("bob")
    assert alice is not None and bob is not None and pool.user("carol") is None
    assert pool.server_database == "realdb"
    assert config.pool_mode_for(pool, alice) == "transaction"
    assert config.pool_mode_for(pool, bob) == "session"
    assert config.timeout_for(pool, alice, "server_lifetime") == 300
    assert config.timeout_for(pool, bob, "server_lifetime") == 30000
    assert config.timeout_for(pool, None, "idle_timeout") == 20000
    assert config.timeout_for(pool, alice, "connect_timeout") == 1000
    with pytest.raises(ValueError, match="unknown key"):
        config.timeout_for(pool, alice, "query_wait_timeout")
    assert config.prepared_cache_size_for(pool) == 8192
    assert config.server_prepared_cache_size_for(pool) == 8192
    assert config.client_anonymous_cache_size_for(pool) == 8192


def test_config_from_dict() -> None:
    config = config_from_dict(
        {
            "general": {"admin_username": "a", "admin_password": "b", "port": 6432},
            "pools": {"db": {"users": ({"username": "u", "password": "p", "pool_size": 3},)}},
        }
    )
    assert isinstance(config, Config)
    assert config.general.port == 6432
    assert config.pools["db"].users[0].pool_size == 3
    with pytest.raises(ConfigError) as info:
        config_from_dict({"general": {"admin_username": "a"}}, path="mem")
    assert info.value.errors == ["mem: general.admin_password: is required"]


def test_secrets_stay_out_of_repr(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "c.yaml", BASE_YAML))
    assert "hunter2" not in repr(config)
    assert "secret" not in repr(config.general)


# --------------------------------------------------------------------------------------------- users


def test_legacy_toml_users_map(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.toml",
        """\
        [general]
        admin_username = "admin"
        admin_password = "secret"

        [pools.app.users.10]
        username = "third"
        password = "p3"
        pool_size = 3

        [pools.app.users.0]
        username = "first"
        password = "p1"
        pool_size = 1

        [pools.app.users.2]
        username = "second"
        password = "p2"
        pool_size = 2
        """,
    )
    users = load_config(path).pools["app"].users
    assert [u.username for u in users] == ["first", "second", "third"]


def test_legacy_users_map_errors_use_its_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.toml",
        """\
        [general]
        admin_username = "admin"
        admin_password = "secret"

        [pools.app.users.0]
        username = "a"
        password = "p"
        pool_size = 0

        [pools.app.users.x]
        username = "b"
        password = "p"
        pool_size = 1
        """,
    )
    assert errors_of(path) == [
        f"{path}: pools.app.users.x: keys of the users map must be numbers",
        f"{path}: pools.app.users.0.pool_size: must be an integer >= 1, got 0",
    ]


def test_user_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        """\
        general:
          admin_username: admin
          admin_password: secret
        pools:
          app:
            users:
              - username: bob
                password: x
                pool_size: "ten"
              - username: bob
                password: x
                pool_size: 5
                min_pool_size: 6
                server_password: hidden
              - password: x
              - "carol"
              - username: dave
                password: "md5%s"
                pool_size: 1
              - username: erin
                password: "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA"
                pool_size: 1
        """
        % ("f" * 31),
    )
    assert errors_of(path) == [
        f'{path}: pools.app.users[0].pool_size: must be an integer >= 1, got "ten"',
        f'{path}: pools.app.users[1].username: duplicate username "bob" (also at pools.app.users[0])',
        f"{path}: pools.app.users[1].min_pool_size: must be <= pool_size (5), got 6",
        f"{path}: pools.app.users[1].server_password: requires server_username",
        f"{path}: pools.app.users[2].username: is required",
        f"{path}: pools.app.users[2].pool_size: is required",
        f'{path}: pools.app.users[3]: must be a table, got the value "carol"',
        f'{path}: pools.app.users[4].password: looks like an MD5 hash but is not "md5" followed by 32 hex digits',
        f"{path}: pools.app.users[5].password: is not a valid SCRAM-SHA-256 verifier: "
        "StoredKey and ServerKey must be 32 bytes each",
    ]


def test_secret_values_are_not_echoed(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", BASE_YAML.replace('password: "hunter2"', "password: 123456"))
    assert errors_of(path) == [f"{path}: pools.app.users[0].password: must be a string (quote it)"]


def test_users_must_be_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "general: {admin_username: a, admin_password: b}\npools:\n  app:\n    users: 5\n")
    assert errors_of(path) == [
        f"{path}: pools.app.users: must be a list of user tables (or a table with numeric keys), got the value 5"
    ]


def test_jwt_password_needs_its_key_and_server_credentials(tmp_path: Path) -> None:
    # The key is read by pgdoorman.resources (what `pg_doorman -t` and start-up load with), not the loader.
    from pgdoorman import resources

    path = write(tmp_path, "c.yaml", BASE_YAML.replace('password: "hunter2"', 'password: "jwt-pkey-fpath:/k.pem"'))
    with pytest.raises(ConfigError) as ei:
        resources.load(path)
    assert ei.value.errors == [
        f"{path}: pools.app.users[0].password: cannot read /k.pem: No such file or directory",
        f"{path}: pools.app.users[0].server_password: is required for a JWT user (PostgreSQL cannot be logged "
        "in to with the client's token)",
    ]


# --------------------------------------------------------------------------------------------- general and pools


def test_general_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        """\
        general:
          port: 70000
          host: 1
          tcp_no_delay: "yes"
          max_connections: 0
          prepared_statements_cache_size: 0
          admin_password: secret
        pools:
          app:
            server_port: 0
            pool_mode: statement
        """,
    )
    assert errors_of(path) == [
        f"{path}: general.port: must be an integer between 1 and 65535, got 70000",
        f"{path}: general.host: must be a string (quote it), got 1",
        f'{path}: general.tcp_no_delay: must be true or false, got "yes"',
        f"{path}: general.max_connections: must be an integer >= 1, got 0",
        f"{path}: general.admin_username: is required",
        f"{path}: general.prepared_statements_cache_size: must be >= 1 while prepared_statements is true, got 0",
        f"{path}: pools.app.server_port: must be an integer between 1 and 65535, got 0",
        f'{path}: pools.app.pool_mode: must be "transaction" or "session", got "statement"',
    ]


def test_cache_size_zero_is_fine_without_prepared_statements(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        BASE_YAML.replace(
            "  admin_password: secret\n",
            "  admin_password: secret\n  prepared_statements: false\n  prepared_statements_cache_size: 0\n",
        ),
    )
    assert load_config(path).general.prepared_statements_cache_size == 0


def test_missing_general_section(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", "[pools]\n")
    assert errors_of(path) == [
        f"{path}: general.admin_username: is required",
        f"{path}: general.admin_password: is required",
    ]


def test_sections_must_be_tables(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "general: 5\npools:\n  app: [1]\n")
    assert errors_of(path) == [
        f"{path}: general: must be a table, got the value 5",
        f"{path}: pools.app: must be a table, got a list",
    ]


def test_odd_pool_names_are_quoted(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", '[general]\nadmin_username="a"\nadmin_password="b"\n[pools."my db"]\nserver_port = "x"\n')
    assert errors_of(path) == [f'{path}: pools."my db".server_port: must be an integer between 1 and 65535, got "x"']


def test_unknown_keys_are_errors_with_suggestions(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        BASE_YAML.replace("  admin_password: secret\n", "  admin_password: secret\n  idle_timout: 5s\n  pool_size: 3\n  zzz: 1\n")
        .replace("        pool_size: 10\n", "        pool_size: 10\n        pool_sise: 10\n")
        + "poolz: {}\n",
    )
    assert errors_of(path) == [
        f'{path}: poolz: unknown key "poolz"; did you mean "pools"?',
        f'{path}: general.idle_timout: unknown key "idle_timout"; did you mean "idle_timeout"?',
        f'{path}: general.pool_size: unknown key "pool_size"; pool_size is a setting of pools.<name>.auth_query '
        "and pools.<name>.users[]",
        f'{path}: general.zzz: unknown key "zzz"',
        f'{path}: pools.app.users[0].pool_sise: unknown key "pool_sise"; did you mean "pool_size"?',
    ]


def test_all_errors_are_collected_into_one_exception(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "general:\n  port: x\n  backlog: -1\n  admin_username: a\n  admin_password: b\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.errors) == 2
    assert str(info.value).splitlines() == info.value.errors


# --------------------------------------------------------------------------------------------- warnings


def test_every_key_is_implemented_and_tokio_keys_get_a_note(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        """\
        general:
          admin_username: admin
          admin_password: secret
          worker_stack_size: 8MB
          query_interner_anon_idle_ttl_seconds: 0
          query_interner_gc_interval_seconds: 7
        talos:
          keys: [/k.pem]
        pools:
          a:
            auth_query:
              query: SELECT 1
              user: x
            users: [{username: u, password: p, pool_size: 1}]
        """,
    )
    config = load_config(path)
    assert config.warnings == ()  # (the last keys that loaded with "not implemented by pgdoorman yet")
    # tokio settings have no meaning here: one info line, no warning.
    assert config.notes == (f"{path}: general.worker_stack_size: do not apply to pgdoorman (settings of PgDoorman's "
                            "tokio runtime; pgdoorman's workers are threads with one event loop each, see "
                            "general.worker_threads): checked and ignored",)
    assert config.general.query_interner_gc_interval_seconds == 7
    assert config.general.query_interner_anon_idle_ttl_seconds == 0
    assert config.pools["a"].auth_query is not None and config.pools["a"].auth_query.query == "SELECT 1"


def test_sync_server_parameters_false_is_said_to_be_ignored(tmp_path: Path) -> None:
    """pgdoorman always syncs a client's settings: `false` (general or a pool's) loads with a warning saying so,
    `true` and leaving it out load silently."""
    path = write(tmp_path, "c.yaml", """\
        general: {admin_username: admin, admin_password: secret, sync_server_parameters: false}
        pools:
          a: {sync_server_parameters: false, users: [{username: u, password: p, pool_size: 1}]}
          b: {sync_server_parameters: true, users: [{username: u, password: p, pool_size: 1}]}
          c: {users: [{username: u, password: p, pool_size: 1}]}
        """)
    config = load_config(path)
    why = ("false is not honoured: pgdoorman always gives each server connection the settings of the client using it "
           "(its startup settings and what it SETs), so that no client sees another's settings; it behaves as true")
    assert config.warnings == (f"{path}: general.sync_server_parameters: {why}",
                               f"{path}: pools.a.sync_server_parameters: {why}")
    assert config.general.sync_server_parameters is False and config.pools["b"].sync_server_parameters is True


def test_unknown_key_inside_auth_query_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", BASE_YAML + "    auth_query:\n      usr: x\n")
    assert errors_of(path) == [f'{path}: pools.app.auth_query.usr: unknown key "usr"; did you mean "user"?',
                               f"{path}: pools.app.auth_query.query: is required",
                               f"{path}: pools.app.auth_query.user: is required"]


def test_auth_query_section(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", BASE_YAML + "    auth_query:\n      query: SELECT passwd FROM f($1)\n"
                 "      user: lookup\n      cache_ttl: 5m\n      server_password: x\n")
    assert errors_of(path) == [f"{path}: pools.app.auth_query.server_password: requires server_user"]
    path = write(tmp_path, "d.yaml", BASE_YAML + "    auth_query:\n      query: SELECT passwd FROM f($1)\n"
                 "      user: lookup\n      cache_ttl: 5m\n")
    aq = load_config(path).pools["app"].auth_query
    assert aq is not None and aq.user == "lookup" and aq.cache_ttl == 300_000 and aq.workers == 2
    assert aq.cache_failure_ttl == 30_000 and aq.min_interval == 1000 and aq.pool_size == 40


def test_deprecated_alias_warns_and_is_used(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        BASE_YAML.replace("  admin_password: secret\n", "  admin_password: secret\n  client_prepared_statements_cache_size: 64\n"),
    )
    config = load_config(path)
    # the alias is recognised (and warned about), and its value is the setting's
    assert config.warnings == (
        f'{path}: general.client_prepared_statements_cache_size: deprecated name; use "client_anonymous_prepared_cache_size"',
    )
    assert config.general.client_anonymous_prepared_cache_size == 64
    assert config.client_anonymous_cache_size_for(next(iter(config.pools.values()))) == 64
    both = write(
        tmp_path,
        "d.yaml",
        BASE_YAML.replace(
            "  admin_password: secret\n",
            "  admin_password: secret\n  client_anonymous_prepared_cache_size: 1\n  client_prepared_statements_cache_size: 2\n",
        ),
    )
    assert errors_of(both) == [
        f'{both}: general.client_prepared_statements_cache_size: given twice: also as "client_anonymous_prepared_cache_size"'
    ]


@pytest.mark.parametrize("pools", ["", "[pools]\n"])
def test_no_pools_warns(tmp_path: Path, pools: str) -> None:
    path = write(tmp_path, "c.toml", '[general]\nadmin_username="a"\nadmin_password="b"\n' + pools)
    config = load_config(path)
    assert config.pools == {}
    assert config.warnings == (f"{path}: pools: no pools configured; only the admin console can be reached",)


def test_section_put_inside_general_gets_a_hint(tmp_path: Path) -> None:
    # PgDoorman's docs once showed `general.talos`; the section is top-level.
    path = write(tmp_path, "c.yaml", BASE_YAML.replace("general:\n", "general:\n  talos: {keys: []}\n"))
    assert errors_of(path) == [f'{path}: general.talos: unknown key "talos"; talos is a top-level section']


def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        """\
        general: {admin_username: admin, admin_password: secret}
        pools:
          app:
            users:
              - &defaults {username: alice, password: p, pool_size: 7, pool_mode: session}
              - <<: *defaults
                username: bob
        """,
    )
    users = load_config(path).pools["app"].users
    assert [(u.username, u.pool_size, u.pool_mode) for u in users] == [("alice", 7, "session"), ("bob", 7, "session")]


# --------------------------------------------------------------------------------------------- web / prometheus


def test_prometheus_is_an_alias_of_web(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", BASE_TOML + "\n[prometheus]\nenabled = true\nport = 9999\n")
    config = load_config(path)
    assert config.web == WebConfig(enabled=True, port=9999)
    assert config.warnings == ()
    bad = write(tmp_path, "d.toml", BASE_TOML + '\n[prometheus]\nport = "x"\n')
    assert errors_of(bad) == [f'{bad}: prometheus.port: must be an integer between 1 and 65535, got "x"']


def test_web_and_prometheus_together_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", BASE_YAML + "web: {enabled: true}\nprometheus: {enabled: true}\n")
    assert errors_of(path) == [f'{path}: prometheus: both "web" and its old name "prometheus" are given; keep only "web"']


# --------------------------------------------------------------------------------------------- files and syntax


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    assert errors_of(path) == [f"{path}: cannot read config file: No such file or directory"]


def test_yaml_syntax_error_has_line_number(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "general:\n  host: [1\n  port: 5\n")
    (error,) = errors_of(path)
    assert error.startswith(f"{path}: line 3, column 7: YAML syntax error: ")


def test_yaml_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "general:\n  port: 1\n  port: 2\n")
    assert errors_of(path) == [
        f"{path}: line 3, column 3: YAML syntax error: found duplicate key 'port' (while constructing a mapping)"
    ]


def test_toml_syntax_error_has_line_number(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", "[general]\nhost = \n")
    (error,) = errors_of(path)
    assert error.startswith(f"{path}: TOML syntax error: ")
    assert "line 2" in error


def test_top_level_must_be_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "- 1\n- 2\n")
    assert errors_of(path) == [f"{path}: the top level must be a table of sections, got a list"]


# --------------------------------------------------------------------------------------------- include files


def test_yaml_includes_toml_relative_to_the_including_file(tmp_path: Path) -> None:
    main = write(tmp_path, "main.yaml", BASE_YAML.replace("general:\n", "include:\n  files: [conf.d/extra.toml]\ngeneral:\n"))
    write(
        tmp_path,
        "conf.d/extra.toml",
        """\
        [general]
        port = 6432

        [[pools.app.users]]
        username = "carol"
        password = "p"
        pool_size = 4

        [pools.other]
        server_host = "10.0.0.1"

        [[pools.other.users]]
        username = "dave"
        password = "p"
        pool_size = 1
        """,
    )
    config = load_config(main)
    assert config.general.port == 6432
    assert config.general.admin_password == "secret"
    # Lists are concatenated, as PgDoorman's merge does: users can be spread over files.
    assert [u.username for u in config.pools["app"].users] == ["bob", "carol"]
    assert config.pools["other"].server_host == "10.0.0.1"


def test_toml_includes_yaml_later_files_win_and_nest(tmp_path: Path) -> None:
    main = write(tmp_path, "main.toml", 'include = { files = ["one.yaml", "sub/two.yml"] }\n' + BASE_TOML)
    write(tmp_path, "one.yaml", "general:\n  port: 7000\n  idle_timeout: 1m\n")
    write(tmp_path, "sub/two.yml", "include:\n  files: [three.toml]\ngeneral:\n  port: 7001\n")
    write(tmp_path, "sub/three.toml", "[general]\nport = 7002\nhost = \"127.0.0.1\"\n")
    config = load_config(main)
    # Order: main, one.yaml, then two.yml with its own include three.toml merged over it.
    assert config.general.port == 7002
    assert config.general.host == "127.0.0.1"
    assert config.general.idle_timeout == 60_000


def test_errors_name_the_included_file(tmp_path: Path) -> None:
    main = write(tmp_path, "main.yaml", "include:\n  files: [bad.toml]\n" + BASE_YAML)
    bad = str(tmp_path / "bad.toml")
    write(tmp_path, "bad.toml", '[general]\nport = "x"\n\n[[pools.app.users]]\nusername = "bob"\npassword = "p"\npool_size = 1\n')
    assert errors_of(main) == [
        f'{bad}: general.port: must be an integer between 1 and 65535, got "x"',
        f'{bad}: pools.app.users[1].username: duplicate username "bob" (also at pools.app.users[0])',
    ]


def test_missing_include_file(tmp_path: Path) -> None:
    main = write(tmp_path, "main.yaml", "include:\n  files: [gone.toml]\n" + BASE_YAML)
    gone = str(tmp_path / "gone.toml")
    assert errors_of(main) == [f"{gone}: cannot read config file (included from {main}): No such file or directory"]


def test_include_cycle(tmp_path: Path) -> None:
    main = write(tmp_path, "main.yaml", "include:\n  files: [a.toml]\n" + BASE_YAML)
    a = write(tmp_path, "a.toml", 'include = { files = ["b.yaml"] }\n')
    b = write(tmp_path, "b.yaml", "include:\n  files: [a.toml]\n")
    assert errors_of(main) == [f"{b}: include.files[0]: include cycle: {main} -> {a} -> {b} -> {a}"]


def test_include_section_errors(tmp_path: Path) -> None:
    main = write(tmp_path, "main.yaml", "include:\n  files: x.toml\n  file: []\n" + BASE_YAML)
    assert errors_of(main) == [
        f'{main}: include.files: must be a list of strings, got "x.toml"',
        f'{main}: include.file: unknown key "file"; did you mean "files"?',
    ]


def test_merging_a_table_over_a_value_is_an_error(tmp_path: Path) -> None:
    main = write(tmp_path, "main.yaml", "include:\n  files: [x.toml]\n" + BASE_YAML)
    x = write(tmp_path, "x.toml", "[general.port]\nvalue = 1\n")
    # The main file does not set port: the included table simply lands there and fails validation.
    assert errors_of(main) == [f"{x}: general.port: must be an integer between 1 and 65535, got a table"]
    main2 = write(tmp_path, "main2.yaml", "include:\n  files: [x.toml]\n" + BASE_YAML.replace("general:\n", "general:\n  port: 1\n"))
    assert errors_of(main2) == [f"{x}: general.port: cannot merge a table over the value 1 from {main2}"]
