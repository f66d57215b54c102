"""An App for unit tests that drive connections by hand: one worker, one pool `app` for user `u`, no sockets
listening and the worker's loop not running."""

from __future__ import annotations

from typing import Any

from pgdoorman.app import App
from pgdoorman.config import config_from_dict


def one_pool_app(pool_size: int, **pool: Any) -> App:
    return App(config_from_dict({
        "general": {"admin_username": "admin", "admin_password": "admin", "worker_threads": 1},
        "pools": {"app": {"server_host": "127.0.0.1", "server_port": 5432, **pool,
                          "users": [{"username": "u", "password": "p", "pool_size": pool_size}]}},
    }, "test.yaml"))
