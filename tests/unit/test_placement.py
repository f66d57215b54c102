"""pgdoorman/placement.py: which worker a new client goes to, where a busy worker's idle clients go, and how
a worker measures itself (general.worker_placement; the integration side: test_worker_placement.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from pgdoorman import placement


@dataclass
class W:
    load: placement.Load = field(default_factory=placement.Load)


@dataclass
class G:
    worker_placement: str = "pack"
    worker_busy_percent: int = 70


def _workers(*busy: bool, share: float = 0.0) -> list[W]:
    ws = [W() for _ in busy]
    for w, b in zip(ws, busy, strict=True):
        w.load.busy, w.load.share = b, (0.9 if b else share)
    return ws


def test_pack_places_on_the_lowest_worker_that_is_not_busy() -> None:
    ws = _workers(False, False, False)
    assert placement.target(ws, ws[2], G()) is ws[0]
    ws = _workers(True, False, False)
    assert placement.target(ws, ws[2], G()) is ws[1]
    assert placement.target(ws, ws[0], G()) is ws[0]  # (the accepting worker is never passed over for a later one)
    ws = _workers(True, True, True)
    assert placement.target(ws, ws[1], G()) is ws[1]  # all busy: where the kernel put it


def test_spread_and_zero_percent_keep_the_accepting_worker() -> None:
    ws = _workers(False, False)
    assert placement.target(ws, ws[1], G(worker_placement="spread")) is ws[1]
    assert placement.target(ws, ws[1], G(worker_busy_percent=0)) is ws[1]


def test_spill_goes_to_a_worker_with_room() -> None:
    ws = _workers(True, False, False, share=0.0)
    assert placement.spill_target(ws, ws[0], 70) is ws[1]
    ws = _workers(True, False, False, share=0.6)  # not busy, but within 80 % of the threshold: no room
    assert placement.spill_target(ws, ws[0], 70) is None
    ws = _workers(True, True)
    assert placement.spill_target(ws, ws[0], 70) is None


def test_gather_goes_to_a_lower_worker_with_room_for_both_loads() -> None:
    ws = _workers(False, False, False, share=0.2)
    assert placement.gather_target(ws, ws[2], 70) is ws[0]
    assert placement.gather_target(ws, ws[0], 70) is None  # nobody before the first one
    ws = _workers(False, False, share=0.3)  # 0.3 + 0.3 is over 80 % of 70 %: worker 0 would spill them back
    assert placement.gather_target(ws, ws[1], 70) is None
    ws = _workers(True, False, share=0.0)
    assert placement.gather_target(ws, ws[1], 70) is None  # the busy one takes nothing
    ws = _workers(False, False)
    assert placement.gather_target(ws, ws[1], 0) is None  # 0 %: nobody moves


def test_batches_are_bounded() -> None:
    assert placement.batch(1) == 1
    assert placement.batch(40) == 10
    assert placement.batch(10_000) == placement.SPILL_BATCH


def test_a_worker_measures_its_own_thread_once_an_interval() -> None:
    load = placement.Load()
    t0 = time.monotonic()
    assert not placement.sample(load, t0, 70)  # the first reading only starts the interval
    assert not placement.sample(load, t0 + placement.INTERVAL / 2, 70)
    end = time.thread_time() + 0.05
    while time.thread_time() < end:  # CPU on this thread: its share is above 0 of the wall time that passed
        pass
    assert placement.sample(load, time.monotonic() + placement.INTERVAL, 0)
    assert load.share > 0 and load.busy  # at 0 % every worker is busy
    assert placement.sample(load, load.wall + placement.INTERVAL, 100)
    assert not load.busy  # no thread uses more than its CPU


def test_busy_only_while_the_machine_has_a_cpu_to_spare() -> None:
    """worker_spare_cpu_percent: over the thread threshold, a worker is busy only when the machine left that
    share of one CPU idle over the interval (/proc/stat ticks: idle, total)."""
    def run(idle_ticks: int, spare_percent: int) -> placement.Load:
        load = placement.Load()
        t0 = time.monotonic()
        assert not placement.sample(load, t0, 0, spare_percent, ticks=(1000, 10_000), ncpu=2)
        # 100 ticks of machine time later on 2 CPUs, `idle_ticks` of them idle; the thread used >= 0 % of a CPU.
        assert placement.sample(load, t0 + 1.5, 0, spare_percent, ticks=(1000 + idle_ticks, 10_100), ncpu=2)
        return load
    saturated = run(2, 50)  # 2 of 100 ticks idle: 0.04 CPUs to spare
    assert saturated.spare == pytest.approx(0.04) and not saturated.busy
    free = run(40, 50)  # 0.8 CPUs to spare
    assert free.spare == pytest.approx(0.8) and free.busy
    assert run(2, 0).busy  # 0: the machine is not looked at


def test_without_proc_stat_only_the_threads_share_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(placement, "machine_ticks", lambda: None)  # a system without /proc/stat
    load = placement.Load()
    assert not placement.sample(load, 1.0, 0, 50)
    assert not placement.sample(load, 1.5, 0, 50)  # within the interval: nothing measured
    assert placement.sample(load, 2.5, 0, 50) and load.spare < 0 and load.busy


def test_machine_ticks_reads_proc_stat() -> None:
    t = placement.machine_ticks()
    if t is None:
        pytest.skip("no /proc/stat on this system")
    idle, total = t
    assert 0 <= idle <= total and total > 0
