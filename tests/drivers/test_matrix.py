"""pytest entry point of the driver compatibility matrix in plain text: one test per driver x mode (direct,
session, transaction), each running that driver's program through tests/drivers/run_matrix.py's Matrix
(matrix_case.py). The TLS modes are test_matrix_tls.py, a file of their own so that pytest-xdist's
--dist loadfile can run the two on different workers. The driver x scenario x mode table is printed at the
end of the session."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from matrix_case import check_driver, matrix_for  # noqa: E402
from run_matrix import DRIVERS, MODES, TLS_SUFFIX, Driver, Matrix  # noqa: E402

from tests.support.cluster import PgCluster  # noqa: E402

# Mode-major order: all drivers run against one pooler before the next mode's pooler starts.
CASES = [(mode, d) for mode in MODES if not mode.endswith(TLS_SUFFIX) for d in DRIVERS]


@pytest.fixture(scope="module")
def matrix(pg: PgCluster) -> Iterator[Matrix]:
    yield from matrix_for(pg=pg)


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("mode", "driver"), CASES, ids=[f"{d.name}-{mode}" for mode, d in CASES])
def test_driver(matrix: Matrix, mode: str, driver: Driver, request: pytest.FixtureRequest) -> None:
    check_driver(matrix, mode, driver, request)
