"""auth_query's pure parts: which column holds the password, what a result row means."""

from __future__ import annotations

import pytest

from pgdoorman.auth_query.executor import Row, pick
from pgdoorman.session.pgclient import PgError

MD5 = "md5" + "0" * 32


def test_password_column_choice() -> None:
    assert pick(["usename", "passwd"], [["u", MD5]]) == Row(MD5)
    assert pick(["usename", "password"], [["u", MD5]]) == Row(MD5)
    assert pick(["PASSWD", "password"], [[MD5, "other"]]) == Row(MD5)  # passwd first
    assert pick(["secret"], [[MD5]]) == Row(MD5)  # a single column
    with pytest.raises(PgError, match="no passwd or password column"):
        pick(["a", "b"], [["x", MD5]])


def test_unknown_user_and_bad_results() -> None:
    assert pick(["passwd"], []) == Row(None)  # no row
    assert pick(["passwd"], [[None]]) == Row(None)  # NULL
    assert pick(["passwd"], [[""]]) == Row(None)  # empty
    with pytest.raises(PgError, match="2 rows"):
        pick(["passwd"], [[MD5], [MD5]])


def test_startup_parameters_column() -> None:
    row = pick(["passwd", "startup_parameters"], [[MD5, '{"work_mem": "8MB"}']])
    assert row == Row(MD5, '{"work_mem": "8MB"}')


def test_cache_is_bounded() -> None:
    from pgdoorman.auth_query import service
    from pgdoorman.config import AuthQueryConfig, Config, PoolConfig

    aq = AuthQueryConfig(query="q", user="u")
    svc = service.AuthQueryService(Config(), PoolConfig(name="app"), aq)
    for i in range(service.CACHE_LIMIT + 1):  # what an executor thread does with each answer
        svc.inflight[f"u{i}"] = []
        svc._answer(f"u{i}", (service.Lookup(None), True))
    assert len(svc.cache) <= service.CACHE_LIMIT // 2 + 1
    assert "u0" not in svc.cache and f"u{service.CACHE_LIMIT}" in svc.cache
