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


# bucket_of() for every value below 2**16 us (65 ms: nearly every query, transaction and wait), one byte each
# (BUCKETS < 256): Histogram.record looks the bucket up instead of computing it (and in _HIGH up to 67 s).
_TABLE_N = 1 << 16


def _bucket_table() -> bytes:
    """bucket_of(us) for 0 <= us < _TABLE_N, filled a bucket's range at a time (a call per value costs
    10 ms at import)."""
    table = bytearray(_TABLE_N)
    lo = 0
    for b in range(BUCKETS):
        hi = min(int(bucket_upper_us(b)), _TABLE_N)
        if hi > lo:
            table[lo:hi] = bytes((b,)) * (hi - lo)
            lo = hi
        if lo >= _TABLE_N:
            break
    return bytes(table)


_TABLE = _bucket_table()
# Above 2**16 us a bucket spans at least 2**14 us, so up to 2**26 us (67 s) it is bucket_of(us >> 14 << 14).
_HIGH_SHIFT = 14
_HIGH_N = 1 << 26
_HIGH = bytes(bucket_of(i << _HIGH_SHIFT) for i in range(_HIGH_N >> _HIGH_SHIFT))


class Histogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.total = 0

    @property
    def n(self) -> int:
        """Values recorded: the sum of the buckets (read by admin and metrics only; record() keeps no count)."""
        return sum(self.counts)

    def record(self, us: int) -> None:
        # Runs for every query and transaction: table look-ups below 67 s, bucket_of() above.
        if us < _TABLE_N:
            self.counts[_TABLE[us] if us >= 0 else 0] += 1
        elif us < _HIGH_N:
            self.counts[_HIGH[us >> _HIGH_SHIFT]] += 1
        else:
            self.counts[bucket_of(us)] += 1
        self.total += us

    def record_with(self, other: Histogram, us: int) -> None:
        """record(us) here and in `other`, the bucket found once: a one-statement transaction, whose query time
        is its transaction time (ClientBase.ready: a call less per transaction)."""
        if us < _TABLE_N:
            b = _TABLE[us] if us >= 0 else 0
        elif us < _HIGH_N:
            b = _HIGH[us >> _HIGH_SHIFT]
        else:
            b = bucket_of(us)
        self.counts[b] += 1
        other.counts[b] += 1
        self.total += us
        other.total += us


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
