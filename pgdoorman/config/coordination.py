"""Checks of the pool coordinator's settings across a pool and general (as PgDoorman checks them at load):
an error when the users' min_pool_size cannot fit under max_db_connections, warnings for limits that make
another setting moot."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from pgdoorman.config.model import PoolConfig

PathSeg = str | int


class _Origin(Protocol):
    @property
    def file(self) -> str: ...


class Reporter(Protocol):
    """The loader's context: where each key came from, and the error and warning lists."""

    @property
    def origins(self) -> Mapping[tuple[Any, ...], _Origin]: ...

    def error(self, file: str, path: list[PathSeg], message: str) -> None: ...
    def warn(self, file: str, path: list[PathSeg], message: str) -> None: ...


def check_coordinators(ctx: Reporter, general: Mapping[str, Any], pools: Mapping[str, PoolConfig]) -> None:
    qwt = general.get("query_wait_timeout", 5000)
    for name, pool in pools.items():
        cap = pool.max_db_connections or 0
        if cap <= 0:
            continue

        def file(key: str, name: str = name) -> str:
            o = ctx.origins.get(("pools", name, key)) or ctx.origins.get(("pools", name))
            return o.file if o is not None else ""

        where: list[PathSeg] = ["pools", name, "max_db_connections"]
        floor = sum(u.min_pool_size for u in pool.users)
        if floor > cap:
            ctx.error(file("max_db_connections"), where,
                      f"{cap} is less than the sum of the users' min_pool_size ({floor})")
        if (pool.reserve_pool_size or 0) > cap:
            ctx.warn(file("reserve_pool_size"), ["pools", name, "reserve_pool_size"],
                     f"{pool.reserve_pool_size} is more than max_db_connections ({cap})")
        for u in pool.users:
            if u.pool_size > cap:
                ctx.warn(file("users"), ["pools", name, "users"],
                         f"user {u.username!r}: pool_size {u.pool_size} is more than max_db_connections ({cap})")
        idle = pool.idle_timeout if pool.idle_timeout is not None else general.get("idle_timeout", 600000)
        life = pool.min_connection_lifetime if pool.min_connection_lifetime is not None else 30000
        if idle and life > idle:
            ctx.warn(file("min_connection_lifetime"), ["pools", name, "min_connection_lifetime"],
                     f"{life} ms is more than idle_timeout ({idle} ms): idle connections close before they "
                     "could be evicted")
        rpt = pool.reserve_pool_timeout if pool.reserve_pool_timeout is not None else 3000
        if rpt > qwt:
            ctx.warn(file("reserve_pool_timeout"), ["pools", name, "reserve_pool_timeout"],
                     f"{rpt} ms is more than query_wait_timeout ({qwt} ms): clients get the query_wait_timeout "
                     "error first, not the coordinator's")
