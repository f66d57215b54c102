"""Shared fixtures: a session-wide throwaway PostgreSQL (``pg``), pooler subprocesses built on it
(``pooler_factory``), the ``concurrency`` marker, and pooler logs attached to failing test reports.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Tests import their helpers as ``tests.support.*`` whatever directory pytest was started from.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# PGDOORMAN_SRC=DIR: test the pgdoorman package in DIR (the compiled tree of scripts/build_mypyc.sh) instead
# of this checkout's, in this process and in the poolers it starts (tests/support/pooler.py).
if os.environ.get("PGDOORMAN_SRC"):
    sys.path.insert(0, os.environ["PGDOORMAN_SRC"])

from tests.support.cluster import PgCluster, pooler_config, throwaway_cluster  # noqa: E402
from tests.support.pooler import Pooler  # noqa: E402

_POOLERS = pytest.StashKey[list[Pooler]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "concurrency: multi-threaded tests, also run under free-threaded CPython 3.13t by `make test`",
    )


def pytest_report_header(config: pytest.Config) -> str:
    import pgdoorman

    pkg = Path(pgdoorman.__file__).parent
    compiled = sum(1 for _ in pkg.rglob("*.so"))
    header = f"pgdoorman: {pkg}" + (f" ({compiled} compiled modules)" if compiled else "")
    bindir = os.environ.get("PGDOORMAN_PG_BINDIR")
    return header + (f"\nPostgreSQL: {bindir} (PGDOORMAN_PG_BINDIR)" if bindir else "")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # With exactly `-m concurrency` (the free-threaded run), a test module that never mentions the
    # marker cannot contribute a test; not importing it spares .venv-ft the packages that do not
    # build for 3.13t (greenlet for SQLAlchemy's asyncio, hypothesis, ...).
    if config.getoption("markexpr", "") != "concurrency":
        return None
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        if "concurrency" not in collection_path.read_text(encoding="utf-8", errors="replace"):
            return True
    return None


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_sessionstart(session: pytest.Session) -> None:
    # `timeout`, CI and process managers stop a run with SIGTERM, whose default action skips fixture
    # teardown and leaves PostgreSQL and poolers running. As KeyboardInterrupt, pytest still tears
    # the session down.
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    # A failing test shows the tail of every pooler it started, and of every pooler a fixture of wider scope
    # gave it (test_state_random's, say), next to its traceback.
    if report.failed:
        started: list[Pooler] = item.stash.get(_POOLERS, [])
        funcargs = getattr(item, "funcargs", {})
        poolers = started + [v for v in funcargs.values() if isinstance(v, Pooler) and v not in started]
        for pooler in poolers:
            report.sections.append((f"pooler log (port {pooler.port})", pooler.log_tail()))
    return report


# Runs of the driver matrix (tests/drivers/test_matrix.py and test_matrix_tls.py record each as a user
# property), gathered from every test report: in this process, or the controller's when pytest-xdist workers
# ran the tests.
_driver_runs: list[dict[str, Any]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _driver_runs.extend(v for k, v in report.user_properties if k == "driver_matrix_run")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _driver_runs:
        return
    drivers = str(ROOT / "tests" / "drivers")
    if drivers not in sys.path:
        sys.path.insert(0, drivers)
    from run_matrix import render_recorded

    terminalreporter.section("driver compatibility matrix")
    terminalreporter.write_line(render_recorded(_driver_runs))


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """A started PostgreSQL with database ``app``, roles app_scram (SCRAM) / app_md5 (md5), superuser postgres."""
    with throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture
def pooler_factory(
    pg: PgCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Pooler]]:
    """Call with pooler_config() keyword overrides (general=, pool=, users=, pools=, pool_mode=,
    pool_size=) plus start= (default True), python= and env=; returns a Pooler. All are stopped at
    teardown."""
    poolers: list[Pooler] = []
    request.node.stash[_POOLERS] = poolers

    def make(
        *,
        start: bool = True,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        **overrides: Any,
    ) -> Pooler:
        workdir = tmp_path / f"pooler{len(poolers)}"
        workdir.mkdir()
        pooler = Pooler(pooler_config(pg, **overrides), str(workdir), python=python, env=env)
        poolers.append(pooler)
        return pooler.start() if start else pooler

    yield make
    for pooler in poolers:
        pooler.stop()
