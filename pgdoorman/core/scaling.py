"""Connection scaling's counters (SHOW POOL_SCALING) and its adaptive wait; the decisions are the pool's
(core/pool.py: Pool._want_spawn_locked)."""

from __future__ import annotations


class Scaling:
    """Counters of the connection scaling (SHOW POOL_SCALING), written under the pool's lock."""

    __slots__ = ("creates", "gate_waits", "gate_budget_ex", "antic_notify", "antic_timeout", "create_fallback",
                 "replenish_def")

    def __init__(self) -> None:
        self.creates = 0  # server connections started
        self.gate_waits = 0  # a new server was wanted, the burst gate was full
        self.gate_budget_ex = 0  # ... and the oldest waiter had waited past the gate budget
        self.antic_notify = 0  # waiters above the warm threshold served by a returned server
        self.antic_timeout = 0  # waiters whose anticipation budget ran out
        self.create_fallback = 0  # servers opened above the warm threshold (after an anticipation ran out)
        self.replenish_def = 0  # min_pool_size top-ups put off because the gate was full


def budget(p99_us: float, low_ms: float) -> float:
    """PgDoorman's adaptive wait: twice the transactions' p99 (100 ms before any), within [low, 500] ms."""
    ms = 100.0 if p99_us <= 0 else 2.0 * p99_us / 1000.0
    return min(500.0, max(low_ms, ms)) / 1000.0
