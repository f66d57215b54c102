"""The startup_parameters cascade without a server: levels, what an auth_query row may add, what is dropped
and why, and the packet limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgdoorman.config import ConfigError, load_config
from pgdoorman.core import startup_params as sp


def test_levels_override_key_by_key() -> None:
    c = sp.cascade({"work_mem": "8MB", "lock_timeout": "1s"}, {"work_mem": "16MB"},
                   json.dumps({"lock_timeout": 5, "jit": False}))
    assert c.params == {"work_mem": "16MB", "lock_timeout": "5", "jit": "off"}
    assert c.source == {"work_mem": "pool", "lock_timeout": "auth_query", "jit": "auth_query"}
    assert c.dropped == []


@pytest.mark.parametrize(("row", "reason"), [
    ("{nope", sp.AQ_INVALID_JSON),
    ("[1]", sp.AQ_INVALID_SHAPE),
    ('{"a": {"b": 1}}', sp.AQ_BAD_TYPE),
    ('{"user": "x"}', sp.AQ_INVALID_ENTRY),
    ('{"bad name": "x"}', sp.AQ_INVALID_ENTRY),
    ('{"_pq_.x": "1"}', sp.AQ_INVALID_ENTRY),
    ('{"a": "x\\u0000y"}', sp.AQ_INVALID_ENTRY),
    (json.dumps({"a": "x" * 9600}), sp.AQ_OVERLAY_OVERSIZE),
    ("x" * (sp.RAW_LIMIT + 1), sp.AQ_OVERSIZE),
])
def test_row_settings_dropped(row: str, reason: str) -> None:
    c = sp.cascade({}, {"work_mem": "16MB"}, row)
    assert c.params == {"work_mem": "16MB"}
    assert [d[3] for d in c.dropped] == [reason]


def test_cascade_budget_and_dedicated_mode() -> None:
    big = {"a": "x" * 5000}
    c = sp.cascade(big, {}, json.dumps({"b": "y" * 5000}))
    assert c.params == big and c.reasons() == {sp.CASCADE_BUDGET: 1}
    c = sp.cascade({}, {"work_mem": "1MB"}, json.dumps({"work_mem": "2MB", "jit": "on"}), dedicated=True)
    assert c.params == {"work_mem": "1MB"} and c.reasons() == {sp.DEDICATED: 2}


def test_packet_size_is_the_wire_size() -> None:
    from pgdoorman.protocol import messages as m

    base = {"user": "u", "database": "d", "application_name": "pg_doorman"}
    params = {"work_mem": "16MB"}
    assert sp.packet_size(base, params) == len(m.startup_message({**base, **params}))
    assert sp.fits(base, params) and not sp.fits(base, {"a": "x" * 10000})


def _write(tmp_path: Path, general: str, pool: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(f"general:\n  admin_username: a\n  admin_password: b\n{general}"
                    f"pools:\n  app:\n{pool}    users: [{{username: u, password: p, pool_size: 1}}]\n")
    return str(path)


def test_config_limits(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='reserved parameter "role"'):
        load_config(_write(tmp_path, "  startup_parameters: {role: x}\n", ""))
    with pytest.raises(ConfigError, match="more than the 9488 one level may"):
        load_config(_write(tmp_path, f"  startup_parameters: {{a: {'x' * 9500}}}\n", ""))
    with pytest.raises(ConfigError, match="PostgreSQL refuses more than 10000"):
        load_config(_write(tmp_path, f"  startup_parameters: {{a: {'x' * 5000}}}\n",
                           f"    startup_parameters: {{b: {'y' * 5000}}}\n"))
    config = load_config(_write(tmp_path, "  startup_parameters: {work_mem: 8MB, jit: false}\n",
                                "    startup_parameters: {work_mem: 16MB}\n"))
    assert dict(config.general.startup_parameters) == {"work_mem": "8MB", "jit": "off"}
    assert dict(config.pools["app"].startup_parameters) == {"work_mem": "16MB"}
