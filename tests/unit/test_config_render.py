"""render_config (a config dict written as commented YAML or TOML) and diff_configs (what changed
between two configs, for RELOAD)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from pgdoorman.config import config_from_dict, diff_configs, load_config, render_config, restart_required

MD5 = "md5" + "0123456789abcdef" * 2

DATA: dict[str, Any] = {
    "general": {
        "host": "127.0.0.1",
        "port": 6432,
        "admin_username": "admin",
        "admin_password": 'quote " and backslash \\ and tab \t',
        "idle_timeout": "5m",
        "max_memory_usage": "64MB",
        "unix_socket_mode": "0660",
        "worker_threads": "auto",
        "pooler_check_query": "/* ping ü 😀 */ ;",
        "prepared_statements_cache_size": 100,
    },
    "web": {"enabled": True, "port": 9999},
    "pools": {
        "db.one": {
            "server_host": "10.1.2.3",
            "pool_mode": "session",
            "application_name": "line\nbreak \x01 sep\u2028 end",
            "connect_timeout": 2500,
            "users": [
                {"username": "naïve user", "password": MD5, "pool_size": 5, "min_pool_size": 1},
                {"username": "svc", "password": "plain", "pool_size": 2, "server_username": "owner", "server_password": "pw"},
            ],
        },
        "true": {"users": {"1": {"username": "b", "password": "p", "pool_size": 1}, "0": {"username": "a", "password": "p", "pool_size": 1}}},
        "empty": {},
    },
}


@pytest.mark.parametrize("fmt", ["yaml", "toml"])
@pytest.mark.parametrize("comments", [True, False])
def test_render_config_round_trips(tmp_path: Path, fmt: str, comments: bool) -> None:
    text = render_config(DATA, fmt, comments=comments)
    path = tmp_path / f"out.{fmt}"
    path.write_text(text)
    loaded = load_config(str(path))
    expected = config_from_dict(DATA)
    assert loaded.general == expected.general
    assert loaded.web == expected.web
    assert loaded.pools == expected.pools
    # The legacy numbered users map comes out as a list in key order.
    assert [u.username for u in loaded.pools["true"].users] == ["a", "b"]
    assert ("# " in text) is comments


def test_render_config_comments_come_from_the_table() -> None:
    text = render_config({"general": {"idle_timeout": 1000, "made_up_key": 1}}, "yaml")
    assert "# Server connections that have served at least one client" in text
    assert "idle_timeout: 1000" in text
    # Keys the table does not know are written as given, without a comment.
    assert "\n  made_up_key: 1\n" in text


def test_render_config_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown config format"):
        render_config({}, "json")


def test_render_config_toml_puts_top_level_values_first() -> None:
    text = render_config({"pools": {"db": {}}, "zz": 1}, "toml", comments=False)
    assert text.index("zz = 1") < text.index("[pools]")


def test_render_config_leaves_out_nulls() -> None:
    assert "unix_socket_dir" not in render_config({"general": {"unix_socket_dir": None}}, "toml")


# --------------------------------------------------------------------------------------------- diff


BASE: dict[str, Any] = {
    "general": {"admin_username": "admin", "admin_password": "one"},
    "pools": {
        "app": {"users": [{"username": "alice", "password": "a", "pool_size": 5}, {"username": "bob", "password": "b", "pool_size": 5}]},
        "old": {"users": []},
    },
}


def test_no_changes() -> None:
    assert diff_configs(config_from_dict(BASE), config_from_dict(copy.deepcopy(BASE))) == []


def test_diff_lists_changed_paths() -> None:
    new = copy.deepcopy(BASE)
    new["general"].update(idle_timeout="5m", port=6432, admin_password="two")
    new["web"] = {"enabled": True}
    app = new["pools"]["app"]
    app["pool_mode"] = "session"
    app["connect_timeout"] = 1000
    app["users"] = [
        {"username": "bob", "password": "changed", "pool_size": 7},
        {"username": "carol", "password": "c", "pool_size": 1},
    ]
    del new["pools"]["old"]
    new["pools"]["fresh"] = {"users": []}
    changes = diff_configs(config_from_dict(BASE), config_from_dict(new))
    assert changes == [
        "general.port: 5432 -> 6432 (requires restart)",
        'general.idle_timeout: "10m" -> "5m"',
        "general.admin_password: (secret) -> (changed secret)",
        "web.enabled: false -> true (requires restart)",
        'pools.app.pool_mode: "transaction" -> "session"',
        "pools.app.connect_timeout: unset -> 1000",
        "pools.app.users.alice: present -> removed",
        "pools.app.users.bob.password: (secret) -> (changed secret)",
        "pools.app.users.bob.pool_size: 5 -> 7",
        "pools.app.users.carol: absent -> added",
        "pools.old: present -> removed",
        "pools.fresh: absent -> added",
    ]
    assert all("one" not in c and "two" not in c and "changed\"" not in c for c in changes)
    assert restart_required(config_from_dict(BASE), config_from_dict(new)) == ["general.port", "web.enabled"]


def test_user_order_is_not_a_change() -> None:
    new = copy.deepcopy(BASE)
    new["pools"]["app"]["users"].reverse()
    assert diff_configs(config_from_dict(BASE), config_from_dict(new)) == []
