"""The JSON API's parts without a pooler: `web.ui` refused with a weak admin password, the cross-site
check of POSTs, SHOW results as typed JSON, and the snapshot cache's window."""

from __future__ import annotations

from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from pgdoorman.admin.resultset import INT4, NUMERIC, TEXT, ResultSet
from pgdoorman.config import ConfigError, load_config
from pgdoorman.metrics.server import HttpRequest
from pgdoorman.web.api import SnapshotCache, cross_site_reason, table_json
from tests.unit.test_config_loader import write


@pytest.mark.parametrize(("general", "what"), [
    ("general:\n  admin_username: admin\n", 'the default "admin"'),
    ("general:\n  admin_username: admin\n  admin_password: admin\n", 'the default "admin"'),
    ("general:\n  admin_username: admin\n  admin_password: ''\n", "empty"),
])
def test_ui_needs_a_real_admin_password(tmp_path: Path, general: str, what: str) -> None:
    path = write(tmp_path, "c.yaml", general + "web:\n  enabled: true\n  ui: true\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (err,) = [e for e in info.value.errors if "web.ui" in e]
    assert err.startswith(f"{path}: web.ui: cannot be turned on while general.admin_password is {what}")


def test_ui_with_a_password_and_sso(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "general:\n  admin_username: admin\n  admin_password: pw\nweb:\n  ui: true\n  ui_anonymous: true\n"
                 "  sso_enabled: true\n  sso_public_key_file: /etc/sso.pub\n  sso_admin_groups: [ops]\n")
    config = load_config(path)
    assert config.web.ui and config.web.ui_anonymous and config.web.sso_enabled
    assert config.web.sso_admin_groups == ("ops",)
    assert not [w for w in config.warnings if "not implemented" in w]
    # SSO on needs the key that signs the tokens.
    path = write(tmp_path, "d.yaml", "general:\n  admin_username: admin\n  admin_password: pw\nweb:\n  sso_enabled: true\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}: web.sso_enabled: needs web.sso_public_key_file" in str(info.value)


def req(**headers: str) -> HttpRequest:
    msg = Message()
    msg["Host"] = "pooler:9127"
    for k, v in headers.items():
        msg[k.replace("_", "-")] = v
    return HttpRequest("POST", "/api/admin/pause", "", msg, "127.0.0.1")


def test_cross_site_posts_are_refused() -> None:
    assert cross_site_reason(req()) is not None  # a plain form POST
    assert cross_site_reason(req(X_Requested_With="x")) is None
    assert cross_site_reason(req(Origin="http://pooler:9127")) is None
    assert cross_site_reason(req(Sec_Fetch_Site="same-origin")) is None
    assert cross_site_reason(req(Origin="http://evil.example", X_Requested_With="x")) is not None
    assert cross_site_reason(req(Origin="null", X_Requested_With="x")) is not None
    assert cross_site_reason(req(Sec_Fetch_Site="cross-site", X_Requested_With="x")) is not None
    assert cross_site_reason(req(Sec_Fetch_Site="same-site")) is not None
    assert cross_site_reason(req(Sec_Fetch_Site="none")) is not None


def test_table_json_keeps_columns_and_types_values() -> None:
    rs = ResultSet([("name", TEXT), ("port", TEXT), ("tls", TEXT), ("n", NUMERIC), ("avg", NUMERIC),
                    ("size", INT4)], [["a", "5432", "true", 3, float("nan"), 7], ["b", "5433", "false", 0, 0.5, 0]])
    got = table_json("databases", rs)
    assert [c["name"] for c in got["columns"]] == ["name", "port", "tls", "n", "avg", "size"]
    assert [c["type"] for c in got["columns"]] == ["string", "number", "boolean", "number", "number", "number"]
    assert got["rows"] == [
        {"name": "a", "port": 5432, "tls": True, "n": 3, "avg": None, "size": 7},
        {"name": "b", "port": 5433, "tls": False, "n": 0, "avg": 0.5, "size": 0},
    ]


class FakeObserver:
    def __init__(self) -> None:
        self.snapshots = 0

    def snapshot(self) -> Any:
        self.snapshots += 1
        return self.snapshots


def test_snapshot_cache_window() -> None:
    now = [100.0]
    obs = FakeObserver()
    cache = SnapshotCache(obs, ttl=1.0, clock=lambda: now[0])  # type: ignore[arg-type]
    builds: list[str] = []

    def build(name: str) -> Any:
        def run(ctx: Any) -> Any:
            builds.append(name)
            return ctx.snap
        return run

    assert cache.get("a", build("a"))[0] == 1
    now[0] += 0.5
    assert cache.get("a", build("a"))[0] == 1  # built once
    assert cache.get("b", build("b"))[0] == 1  # same snapshot for another view
    assert builds == ["a", "b"] and obs.snapshots == 1
    now[0] += 0.6
    data, _, generation = cache.get("a", build("a"))
    assert (data, generation) == (2, 2)
    cache.invalidate()
    assert cache.get("a", build("a"))[0] == 3


def test_top_list_parameters() -> None:
    from pgdoorman.web import views

    clients = views.DERIVED["top/clients"][1]
    assert clients({}) == {"sort": ["-qps"], "limit": ["20"]}
    assert clients({"n": ["0"], "by": ["errors"]}) == {"sort": ["-errors_total"], "limit": ["20"]}
    assert clients({"n": ["100000"], "by": ["age"], "pool": ["u@db"]}) == {
        "sort": ["-age_seconds"], "limit": ["200"], "pool": ["u@db"]}
    assert views.DERIVED["apps"][1]({"sort": ["errors"], "order": ["asc"]}) == {"sort": ["errors_total"]}
    for name, params in (("top/clients", {"by": ["nope"]}), ("top/clients", {"n": ["-1"]}),
                         ("top/prepared", {"by": ["hits"]}), ("top/queries", {"by": ["duration"]}),
                         ("apps", {"sort": ["x"]}), ("apps", {"order": ["up"]})):
        with pytest.raises(views.BadRequest):
            views.DERIVED[name][1](params)
    assert views.parse_hash("255") == views.parse_hash("0xff") == views.parse_hash("0XFF") == 255
    assert views.parse_hash(str((1 << 64) - 1)) == (1 << 64) - 1
    for bad in ("", "x", "0x", "0xzz", "-1", str(1 << 64), "²"):
        with pytest.raises(views.BadRequest):
            views.parse_hash(bad)
    table = {"columns": [], "rows": [{"user": "u", "database": "db"}, {"user": "v", "database": "db"},
                                     {"user": "u@x", "database": "db"}]}
    assert views.only_pool(table, "u@x@db")["rows"] == [{"user": "u@x", "database": "db"}]
