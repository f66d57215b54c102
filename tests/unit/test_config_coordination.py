"""The pool coordinator's settings checked across a pool and general at load (config/coordination.py), as
PgDoorman checks them: users' min_pool_size that cannot fit under max_db_connections is an error; limits
that make another setting moot are warnings; nothing is said without max_db_connections."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgdoorman.config import ConfigError, load_config
from tests.unit.test_config_loader import write

HEAD = """\
general:
  admin_username: admin
  admin_password: secret
  query_wait_timeout: 2000
pools:
  app:
"""


def test_min_pool_sizes_over_the_cap_are_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", HEAD + """\
    max_db_connections: 3
    users:
      - {username: a, password: p, pool_size: 2, min_pool_size: 2}
      - {username: b, password: p, pool_size: 2, min_pool_size: 2}
""")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}: pools.app.max_db_connections: 3 is less than the sum of the users' min_pool_size (4)" in str(
        info.value)


def test_limits_that_make_another_setting_moot_are_warned_about(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", HEAD + """\
    max_db_connections: 2
    reserve_pool_size: 3
    idle_timeout: 10000
    min_connection_lifetime: 20000
    users:
      - {username: a, password: p, pool_size: 5}
""")
    warnings = load_config(path).warnings
    assert warnings == (
        f"{path}: pools.app.reserve_pool_size: 3 is more than max_db_connections (2)",
        f"{path}: pools.app.users: user 'a': pool_size 5 is more than max_db_connections (2)",
        f"{path}: pools.app.min_connection_lifetime: 20000 ms is more than idle_timeout (10000 ms): idle "
        "connections close before they could be evicted",
        f"{path}: pools.app.reserve_pool_timeout: 3000 ms is more than query_wait_timeout (2000 ms): clients get "
        "the query_wait_timeout error first, not the coordinator's",
    )


def test_nothing_is_checked_without_max_db_connections(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", HEAD + """\
    reserve_pool_size: 3
    users:
      - {username: a, password: p, pool_size: 5, min_pool_size: 5}
""")
    assert load_config(path).warnings == ()
