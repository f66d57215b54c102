"""tests/support/pooler.py's port picking under pytest-xdist: each worker hands out ports from its own share of
the range only, blocks of consecutive ports included (a block that started at the top of one worker's share
would take ports the other worker may hand out)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tests.support import pooler


@pytest.fixture()
def gw0(monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """This process as the first of two xdist workers; its share of the port range."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    return pooler._worker_range(12000, pooler._ephemeral_low() - 1)


def test_the_two_workers_shares_do_not_overlap(gw0: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    low1, high1 = pooler._worker_range(12000, pooler._ephemeral_low() - 1)
    assert gw0[0] == 12000 and gw0[1] < low1 and high1 < pooler._ephemeral_low()


def test_a_block_stays_in_this_workers_share(gw0: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    low, high = gw0
    # free_port's first pick is the top of the share (then lower ones): a block of 4 must not start there.
    picks = itertools.chain([high, high - 1], itertools.count(low + 100, 7))

    def randint(a: int, b: int) -> Any:
        assert (a, b) == (low, high)
        return next(picks)

    monkeypatch.setattr(pooler.random, "randint", randint)
    monkeypatch.setattr(pooler, "_handed_out", set())
    base = pooler.free_port_block(4)
    assert low <= base and base + 3 <= high
