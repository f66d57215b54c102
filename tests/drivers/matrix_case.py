"""The body of one driver matrix test (tests/drivers/test_matrix.py, test_matrix_tls.py, test_matrix_ft.py):
runs one driver program in one mode through run_matrix.py's Matrix and fails with every failed scenario's
detail. A driver whose toolchain is missing fails under CI=true (CI must run scripts/install_drivers.sh) and
is skipped with its reason otherwise. Their fixtures yield the module's Matrix from `matrix_for`."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from run_matrix import MATRIX_PROPERTY, SCENARIOS, Driver, Matrix, run_to_dict

from tests.support.cluster import PgCluster


def matrix_for(pg: PgCluster | None = None, workers: int | None = None,
               pooler_python: str | None = None) -> Iterator[Matrix]:
    """A module's Matrix (its fixture yields from this), closed at the end: on `pg` (else one of its own, started
    when a mode needs it), with `workers` worker threads (default PGDOORMAN_DRIVER_WORKERS, else the test
    config's), its poolers on `pooler_python` (default this interpreter)."""
    env = os.environ.get("PGDOORMAN_DRIVER_WORKERS")
    m = Matrix(pg=pg, workers=workers if workers is not None else int(env) if env else None,
               pooler_python=pooler_python)
    try:
        yield m
    finally:
        m.close()


def check_driver(
    matrix: Matrix, mode: str, driver: Driver, request: pytest.FixtureRequest, label: str | None = None
) -> None:
    """`label`: the mode's name in the table printed at the end of the session (default `mode`)."""
    missing = driver.missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(
                f"{driver.name}: toolchain missing in CI ({missing}); CI must run scripts/install_drivers.sh"
            )
        pytest.skip(f"{driver.name}: toolchain missing ({missing}); run scripts/install_drivers.sh as root")
    run = matrix.run(driver, mode)
    # The driver x scenario x mode table is printed at the end of the session from these (tests/conftest.py's
    # pytest_terminal_summary), also when the test ran in a pytest-xdist worker.
    # (user_properties, not the record_property fixture, which warns under --junitxml's default xunit2)
    request.node.user_properties.append((MATRIX_PROPERTY, {**run_to_dict(run), "mode": label or mode}))
    failures = run.failures()
    lines = [f"{s}: {detail}" for s, detail in failures] + [f"note: {n}" for n in run.notes]
    if failures and run.pooler_excerpt:
        lines += ["--- pooler warnings/errors during this run ---", *run.pooler_excerpt]
    assert not failures, f"{driver.name} in {mode} mode: {len(failures)} failing scenarios\n" + "\n".join(
        lines
    )
    # Every scenario must have been reported; "na" is allowed only with a reason.
    assert set(run.cells) == set(SCENARIOS)
    for s, c in run.cells.items():
        assert c.status in ("pass", "na"), f"{s}: {c.status} {c.detail}"
        assert c.status != "na" or c.detail, f"{s}: n/a without a reason"
