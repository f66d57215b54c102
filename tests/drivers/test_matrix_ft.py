"""The driver matrix with the poolers on free-threaded CPython 3.13t (the build the design is for) and two
worker threads placed `spread` (the test config's), so that a client's transactions run on servers of either
thread: eight of the driver programs (SUBSET) through pgdoorman in transaction mode, in plain text and over TLS
(`transaction-ft`, `transaction-tls-ft` in the table; the same runs as test_matrix.py's and
test_matrix_tls.py's, whose direct legs prove the scenarios). The driver programs themselves run as there.

`make test-ft` runs this file with PGDOORMAN_FT_PYTHON set to the build's interpreter (a missing one fails);
without it (the suite's main run, which test-ft follows) the file is skipped, saying so."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from matrix_case import check_driver, matrix_for  # noqa: E402
from run_matrix import DRIVERS, ROOT, TLS_SUFFIX, Driver, Matrix  # noqa: E402

MODES = ("transaction", "transaction" + TLS_SUFFIX)
# Not all sixteen (the suite's time): one of each way of driving the protocol. psycopg (libpq's pipeline mode,
# prepared statements after 5 runs), its asyncio side, asyncpg (every query prepared), node-postgres, postgres.js
# (pipelined transactions), pgx (its batch), pgjdbc (its own protocol code, prepareThreshold), tokio-postgres
# (concurrent futures pipelined on one connection).
SUBSET = ("psycopg3", "psycopg3-async", "asyncpg", "node-pg", "postgres.js", "pgx-v4", "pgjdbc", "tokio-postgres")
CASES = [(mode, d) for mode in MODES for d in DRIVERS if d.name in SUBSET]
WORKERS = 2


FT_PYTHON = os.environ.get("PGDOORMAN_FT_PYTHON")
if not FT_PYTHON:
    pytest.skip("the poolers' free-threaded interpreter is PGDOORMAN_FT_PYTHON's: `make test-ft` sets it "
                f"({ROOT / '.venv-ft' / 'bin' / 'python'}) and runs this file", allow_module_level=True)


def _ft_python() -> str:
    path = Path(FT_PYTHON or "")
    if not path.exists():
        pytest.fail(f"PGDOORMAN_FT_PYTHON={FT_PYTHON} does not exist (make ft-python builds it)")
    gil = subprocess.run([str(path), "-c", "import sysconfig; print(sysconfig.get_config_var('Py_GIL_DISABLED'))"],
                         capture_output=True, text=True, timeout=60).stdout.strip()
    assert gil == "1", f"{path} is not a free-threaded build (Py_GIL_DISABLED={gil})"
    return str(path)


@pytest.fixture(scope="module")
def matrix() -> Iterator[Matrix]:
    yield from matrix_for(workers=WORKERS, pooler_python=_ft_python())


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("mode", "driver"), CASES, ids=[f"{d.name}-{mode}-ft" for mode, d in CASES])
def test_driver(matrix: Matrix, mode: str, driver: Driver, request: pytest.FixtureRequest) -> None:
    check_driver(matrix, mode, driver, request, label=f"{mode}-ft")
