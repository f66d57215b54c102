"""Latency histograms and counters written by one worker without locks and summed only when read.

A histogram has 4 buckets per doubling of microseconds (each at most 25% wide), enough for p50/p95/p99 in
SHOW POOLS_EXTENDED and in metrics; recording one value is a few integer operations and an index increment.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

BUCKETS = 4 * 37  # up to 2**37 us (38 hours)


def bucket_of(us: int) -> int:
    """4 buckets per power of two, from integer bit twiddling (no float maths on the hot path)."""
    if us < 4:
        return us if us > 0 else 0
    e = us.bit_length() - 1  # 2**e <= us < 2**(e+1)
    b = 4 * e + ((us >> (e - 2)) & 3)
    return b if b < BUCKETS else BUCKETS - 1


def bucket_bounds_us(b: int) -> tuple[float, float]:
    """[lower, upper) of bucket b in microseconds (bucket 0 also holds 0)."""
    return (0.0 if b == 0 else bucket_upper_us(b - 1)), bucket_upper_us(b)


def bucket_upper_us(b: int) -> float:
    """Upper bound of bucket b in microseconds (exclusive)."""
    if b < 8:
        return float(b + 1) if b < 4 else float(2 ** (b // 4) + ((b % 4) + 1) * 2 ** (b // 4) // 4)
    e, q = divmod(b, 4)
    return float(2**e + (q + 1) * 2 ** (e - 2))


class Histogram:
    __slots__ = ("counts", "n", "total")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.n = 0
        self.total = 0

    def record(self, us: int) -> None:
        # bucket_of() inlined: this runs for every query and transaction.
        if us < 4:
            b = us if us > 0 else 0
        else:
            e = us.bit_length() - 1
            b = 4 * e + ((us >> (e - 2)) & 3)
            if b >= BUCKETS:
                b = BUCKETS - 1
        self.counts[b] += 1
        self.n += 1
        self.total += us


def merged(hists: Iterable[Histogram]) -> tuple[list[int], int, int]:
    """(bucket counts, count, sum of us) over shards that other threads keep writing: the count is the sum of
    the buckets read here, so it always agrees with them (the sum may be one sample apart)."""
    counts = [0] * BUCKETS
    total = 0
    for h in hists:
        c = h.counts
        for i in range(BUCKETS):
            counts[i] += c[i]
        total += h.total
    return counts, sum(counts), total


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


# The kinds of streamed messages PgDoorman counts (message_size_to_be_stream), by message type: DataRow,
# CopyData, FunctionCallResponse; PoolStats.streams holds ok, error and byte counts for each, in this order.
STREAM_KINDS = {68: 0, 100: 1, 86: 2}
STREAM_KIND_NAMES = ("data_row", "copy_data", "function_call_response")
