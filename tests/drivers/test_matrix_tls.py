"""The driver compatibility matrix over TLS (DRV_SSL=require): every driver program directly against a
PostgreSQL that takes TCP connections only with TLS ("direct-tls") and through a pgdoorman in transaction
mode with `tls_mode: require` towards the clients and `server_tls_mode: require` towards that PostgreSQL
("transaction-tls"): the pooler's TLS relay and login (SCRAM with channel binding where the driver binds:
libpq's, tokio-postgres's) under each driver's own TLS code. Same body as test_matrix.py (matrix_case.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from matrix_case import check_driver, matrix_for  # noqa: E402
from run_matrix import DRIVERS, MODES, TLS_SUFFIX, Driver, Matrix  # noqa: E402

CASES = [(mode, d) for mode in MODES if mode.endswith(TLS_SUFFIX) for d in DRIVERS]


@pytest.fixture(scope="module")
def matrix() -> Iterator[Matrix]:
    """A Matrix of its own: it starts only the TLS PostgreSQL (the plain one is never asked for)."""
    yield from matrix_for()


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("mode", "driver"), CASES, ids=[f"{d.name}-{mode}" for mode, d in CASES])
def test_driver(matrix: Matrix, mode: str, driver: Driver, request: pytest.FixtureRequest) -> None:
    check_driver(matrix, mode, driver, request)
