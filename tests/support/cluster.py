"""The test suite's PostgreSQL: one throwaway cluster per session with fixed roles and a database,
and the pooler config that points at it. Names and passwords live here so tests share one source.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))

from pgcluster import PgCluster  # noqa: E402  (scripts/ is not a package)

__all__ = [
    "ADMIN_PASSWORD", "ADMIN_USER", "DBNAME", "MD5_PASSWORD", "MD5_USER", "SCRAM_PASSWORD", "SCRAM_USER",
    "SUPERUSER", "PgCluster", "deep_merge", "pooler_config", "start_test_cluster", "throwaway_cluster",
]

DBNAME = "app"
SCRAM_USER = "app_scram"
SCRAM_PASSWORD = "scram_pw"
MD5_USER = "app_md5"
MD5_PASSWORD = "md5_pw"
SUPERUSER = "postgres"  # trusted over 127.0.0.1 and the Unix socket
ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin"


def start_test_cluster(basedir: str, port: int, settings: dict[str, str] | None = None,
                       before_start: Callable[[PgCluster], None] | None = None) -> PgCluster:
    """initdb + start, then roles app_scram (SCRAM) and app_md5 (md5) and database app they can use.
    `settings` go to postgresql.conf; `before_start` may put files in the data directory (certificates,
    pg_hba.conf) between initdb and the first start."""
    pg = PgCluster(basedir, port, settings=settings)
    pg.init()
    if before_start is not None:
        before_start(pg)
    pg.start()
    try:
        pg.create_role(SCRAM_USER, SCRAM_PASSWORD, "scram-sha-256")
        pg.create_role(MD5_USER, MD5_PASSWORD, "md5")
        pg.create_database(DBNAME, owner=SCRAM_USER)
        # PostgreSQL 15 no longer lets PUBLIC create in schema public: grant it to the md5 role too.
        pg.psql(f"GRANT ALL ON DATABASE {DBNAME} TO {MD5_USER};")
        pg.psql(f"GRANT ALL ON SCHEMA public TO {MD5_USER};", dbname=DBNAME)
    except BaseException:
        pg.stop("immediate")
        raise
    return pg


@contextmanager
def throwaway_cluster(prefix: str = "pgdoorman-test-pg-", settings: dict[str, str] | None = None,
                      before_start: Callable[[PgCluster], None] | None = None,
                      stop_mode: str = "fast") -> Iterator[PgCluster]:
    """start_test_cluster() in a fresh directory on a free port, stopped and removed afterwards (kept, and
    its path printed, with PGDOORMAN_KEEP_PG=1)."""
    from tests.support.pooler import free_port

    # Not pytest's tmp_path: it lives under a 0700 root directory the postgres OS user cannot enter.
    basedir = tempfile.mkdtemp(prefix=prefix)
    os.chmod(basedir, 0o755)
    try:
        cluster = start_test_cluster(basedir, free_port(), settings=settings, before_start=before_start)
    except BaseException:
        shutil.rmtree(basedir, ignore_errors=True)
        raise
    try:
        yield cluster
    finally:
        cluster.stop(stop_mode)
        if os.environ.get("PGDOORMAN_KEEP_PG"):
            print(f"\nkept test cluster in {basedir}")
        else:
            shutil.rmtree(basedir, ignore_errors=True)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``override`` merged in: nested dicts merge, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def pooler_config(
    pg: PgCluster,
    general: dict[str, Any] | None = None,
    pool: dict[str, Any] | None = None,
    users: list[dict[str, Any]] | None = None,
    pools: dict[str, Any] | None = None,
    pool_mode: str = "transaction",
    pool_size: int = 5,
) -> dict[str, Any]:
    """PgDoorman config with one pool ``app`` on ``pg`` for both test roles.

    Users carry the verifiers PostgreSQL stores (as PgDoorman users copy pg_shadow), so SCRAM and md5
    passthrough to the server work. ``general`` and ``pool`` merge into the defaults, ``users``
    replaces the user list, ``pools`` merges at the top of ``pools`` (extra pools, or overrides).
    """
    if users is None:
        users = [
            {"username": SCRAM_USER, "password": pg.stored_password(SCRAM_USER), "pool_size": pool_size},
            {"username": MD5_USER, "password": pg.stored_password(MD5_USER), "pool_size": pool_size},
        ]
    app_pool: dict[str, Any] = {
        "server_host": pg.host,
        "server_port": pg.port,
        "pool_mode": pool_mode,
        "users": users,
    }
    config: dict[str, Any] = {
        "general": {
            "host": "127.0.0.1",
            "admin_username": ADMIN_USER,
            "admin_password": ADMIN_PASSWORD,
            "worker_threads": 1,
            # Tests that run several workers are about what happens between them (servers handed across,
            # waiters on every worker): keep each client where the kernel put it. The default, `pack`, would
            # gather an idle test's clients on worker 0 (test_worker_placement.py tests it).
            "worker_placement": "spread",
        },
        "pools": {DBNAME: deep_merge(app_pool, pool or {})},
    }
    config["general"] = deep_merge(config["general"], general or {})
    config["pools"] = deep_merge(config["pools"], pools or {})
    return config
