"""A binary upgrade's old process exits once every worker reports no client left (upgrade/handoff.py). A client
that general.worker_placement was moving between two workers when they stopped moving clients is in neither
worker's count until the other adopts it (placement.Transit): `Settle` holds the drain back until every worker
has counted again after the last such client arrived, so the old process never exits with a client in it."""

from __future__ import annotations

from pgdoorman.upgrade.handoff import Settle


def test_nothing_moving_from_the_start_is_settled() -> None:
    assert Settle(2).check(False, [0, 0])


def test_a_moving_client_holds_the_drain_until_every_worker_ticked_after_it_arrived() -> None:
    s = Settle(2)
    assert not s.check(True, [3, 5])  # a client between two workers
    assert not s.check(True, [4, 6])
    assert not s.check(False, [4, 6])  # it arrived: the counts read so far may predate it
    assert not s.check(False, [5, 6])  # one worker counted again, the other not yet
    assert s.check(False, [5, 7])
    assert s.check(False, [6, 8])
    assert not s.check(True, [6, 8])  # another one
    assert not s.check(False, [6, 8])
    assert s.check(False, [7, 9])
