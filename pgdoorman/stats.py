"""Latency histograms and counters written by one worker without locks and summed only when read.

A histogram has 4 buckets per doubling of microseconds (each about 19% wide), enough for p50/p95/p99 in
SHOW POOLS_EXTENDED and in metrics; recording one value is a log2 and an index increment.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

BUCKETS = 4 * 36  # up to 2**36 us (19 hours)


def bucket_of(us: int) -> int:
    if us <= 1:
        return 0
    b = int(math.log2(us) * 4)
    return b if b < BUCKETS else BUCKETS - 1


def bucket_upper_us(b: int) -> float:
    """Upper bound of bucket b in microseconds."""
    return float(2 ** ((b + 1) / 4))


class Histogram:
    __slots__ = ("counts", "n", "total")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.n = 0
        self.total = 0

    def record(self, us: int) -> None:
        self.counts[bucket_of(us)] += 1
        self.n += 1
        self.total += us


def merged(hists: Iterable[Histogram]) -> tuple[list[int], int, int]:
    counts = [0] * BUCKETS
    n = total = 0
    for h in hists:
        c = h.counts
        for i in range(BUCKETS):
            counts[i] += c[i]
        n += h.n
        total += h.total
    return counts, n, total


def percentile(counts: Sequence[int], n: int, q: float) -> float:
    """Value in microseconds below which a fraction q of the samples fall (bucket upper bound)."""
    if n == 0:
        return 0.0
    rank = q * n
    acc = 0
    for i, c in enumerate(counts):
        acc += c
        if acc >= rank and c:
            return bucket_upper_us(i)
    return bucket_upper_us(len(counts) - 1)
