"""The Prometheus text renderer: golden output (HELP/TYPE, escaping, histogram lines), validation of
names and bucket shapes, the parse-back through prometheus_client's parser, and the conversion of the
pooler's latency histograms (4 buckets per doubling) into Prometheus buckets."""

from __future__ import annotations

import math
import random
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgdoorman.core.stats import BUCKETS, Histogram, bucket_of
from pgdoorman.metrics.exposition import (
    Family,
    cumulative_at,
    escape_help,
    escape_label_value,
    format_value,
    log_bucket_bounds_us,
    render,
)

GOLDEN = """\
# HELP demo_requests_total Requests by path.\\nSecond line with a \\\\ backslash.
# TYPE demo_requests_total counter
demo_requests_total{path="/a",user="x\\"y"} 3
demo_requests_total{path="/b\\\\c",user="line\\nbreak"} 0
# HELP demo_temperature Plain gauge without labels.
# TYPE demo_temperature gauge
demo_temperature 21.5
# HELP demo_latency_seconds Latency.
# TYPE demo_latency_seconds histogram
demo_latency_seconds_bucket{db="app",le="0.001"} 1
demo_latency_seconds_bucket{db="app",le="0.01"} 4
demo_latency_seconds_bucket{db="app",le="1"} 5
demo_latency_seconds_bucket{db="app",le="+Inf"} 6
demo_latency_seconds_sum{db="app"} 12.25
demo_latency_seconds_count{db="app"} 6
"""


def demo() -> list[Family]:
    c = Family("demo_requests_total", "counter", "Requests by path.\nSecond line with a \\ backslash.")
    c.add(3, {"path": "/a", "user": 'x"y'}).add(0, [("path", "/b\\c"), ("user", "line\nbreak")])
    g = Family("demo_temperature", "gauge", "Plain gauge without labels.").add(21.5)
    h = Family("demo_latency_seconds", "histogram", "Latency.")
    h.add_histogram({"db": "app"}, [(0.001, 1), (0.01, 4), (1.0, 5)], 12.25, 6)
    return [c, g, h]


def test_golden_text() -> None:
    assert render(demo()) == GOLDEN


def test_parses_with_prometheus_client() -> None:
    fams = {f.name: f for f in text_string_to_metric_families(render(demo()))}
    assert fams["demo_requests"].type == "counter"
    assert fams["demo_requests"].documentation == "Requests by path.\nSecond line with a \\ backslash."
    samples = {tuple(sorted(s.labels.items())): s.value for s in fams["demo_requests"].samples}
    assert samples[(("path", "/a"), ("user", 'x"y'))] == 3
    assert samples[(("path", "/b\\c"), ("user", "line\nbreak"))] == 0
    hist = fams["demo_latency_seconds"]
    assert hist.type == "histogram"
    buckets = [(s.labels["le"], s.value) for s in hist.samples if s.name.endswith("_bucket")]
    assert buckets == [("0.001", 1), ("0.01", 4), ("1", 5), ("+Inf", 6)]


def test_escaping_and_numbers() -> None:
    assert escape_help('a\\b\nc"') == 'a\\\\b\\nc"'
    assert escape_label_value('a\\b\nc"') == 'a\\\\b\\nc\\"'
    assert [format_value(v) for v in (0, 12, 1.0, 0.25, 1e-05, math.inf, -math.inf, math.nan, True)] == [
        "0", "12", "1", "0.25", "1e-05", "+Inf", "-Inf", "NaN", "1"]


def test_validation() -> None:
    with pytest.raises(ValueError):
        Family("bad-name", "gauge", "x")
    with pytest.raises(ValueError):
        Family("requests", "counter", "counters end in _total")
    with pytest.raises(ValueError):
        Family("x", "summary", "unsupported type")
    with pytest.raises(ValueError):
        Family("x", "gauge", "x").add(1, {"bad-label": "v"})
    with pytest.raises(ValueError):
        Family("x", "gauge", "x").add(1, {"__reserved": "v"})
    h = Family("h", "histogram", "x")
    with pytest.raises(ValueError):
        h.add(1)
    with pytest.raises(ValueError):
        h.add_histogram({}, [(1.0, 2), (0.5, 3)], 0, 3)  # bounds must increase
    with pytest.raises(ValueError):
        h.add_histogram({}, [(0.5, 3), (1.0, 2)], 0, 3)  # counts must be cumulative
    with pytest.raises(ValueError):
        h.add_histogram({}, [(0.5, 4)], 0, 3)  # a bucket cannot exceed the count
    with pytest.raises(ValueError):
        h.add_histogram({"le": "1"}, [], 0, 0)
    with pytest.raises(ValueError):
        render([Family("dup", "gauge", "x"), Family("dup", "gauge", "y")])


def test_empty_render() -> None:
    assert render([]) == ""
    assert render([Family("only_help", "gauge", "no samples")]) == (
        "# HELP only_help no samples\n# TYPE only_help gauge\n")


# ------------------------------------------------------------------------------------------ log buckets
def test_log_bucket_bounds_match_recording() -> None:
    for us in [0, 1, 2, 3, 7, 100, 499, 500, 501, 999, 1000, 123456, 5_000_000]:
        lo, hi = log_bucket_bounds_us(bucket_of(us))
        assert lo <= us < hi, us


def test_record_table_matches_bucket_of() -> None:
    """Histogram.record looks buckets up in tables below 2**26 us and computes them above: all must put
    every value where bucket_of() says, count it and add it to the sum, negatives (clock steps) in bucket 0."""
    values = [-5, 0, 1, 3, 4, 5, 7, 8, 1000, 65535, 65536, 65537, 2**26 - 1, 2**26, 10**9, 2**40]
    values += list(range(0, 1 << 16, 7)) + list(range(1 << 16, 1 << 26, 4099)) + [(i << 14) - 1 for i in range(5, 4096, 3)]
    h = Histogram()
    want = [0] * BUCKETS
    for us in values:
        h.record(us)
        want[bucket_of(us)] += 1
    assert h.counts == want
    assert h.n == len(values)
    assert h.total == sum(values)
    # record_with (a one-statement transaction: one time for the query and the transaction) records the same
    # in both histograms as record() in each would.
    q, x = Histogram(), Histogram()
    x.record(12)  # what the other histogram held already stays
    for us in values:
        q.record_with(x, us)
    assert q.counts == want and q.total == sum(values)
    want[bucket_of(12)] += 1
    assert x.counts == want and x.total == sum(values) + 12


def hist_of(values: list[int]) -> Histogram:
    h = Histogram()
    for v in values:
        h.record(v)
    return h


def test_cumulative_exact_away_from_boundaries() -> None:
    # Values far from the bounds are counted exactly.
    h = hist_of([10] * 5 + [300] * 7 + [40_000] * 2 + [9_000_000])
    assert cumulative_at(h.counts, [100, 1000, 100_000, 1e9]) == [5, 12, 14, 15]
    assert cumulative_at(h.counts, [1]) == [0]


def test_cumulative_exact_at_internal_bucket_edges() -> None:
    # 448..511 and 512..639 are internal buckets: a bound on a bucket's last integer counts it whole.
    h = hist_of([447, 448, 511, 512, 639, 640])
    assert cumulative_at(h.counts, [447, 511, 639, 1e6]) == [1, 3, 5, 6]
    # Inside a bucket, its samples count in proportion to the integers at or below the bound.
    h = hist_of([448] * 64)
    assert cumulative_at(h.counts, [448, 479, 500]) == [1, 32, 53]


def test_cumulative_is_monotonic_and_bounded() -> None:
    rnd = random.Random(7)
    h = Histogram()
    bounds = [100.0, 500.0, 5000.0, 50_000.0, 500_000.0, 5e6]
    prev = [0] * len(bounds)
    for _ in range(50):
        for _ in range(rnd.randint(1, 40)):
            h.record(int(rnd.lognormvariate(8, 2)))
        cur = cumulative_at(h.counts, bounds)
        assert cur == sorted(cur) and cur[-1] <= h.n  # never decreases with the bound
        assert all(c >= p for c, p in zip(cur, prev, strict=True))  # never decreases over time
        prev = cur
    assert len(h.counts) == BUCKETS


def test_cumulative_error_is_within_one_internal_bucket() -> None:
    rnd = random.Random(11)
    values = [int(rnd.uniform(1, 20_000)) for _ in range(5000)]
    h = hist_of(values)
    for bound in (500.0, 1000.0, 5000.0, 10_000.0):
        exact = sum(1 for v in values if v <= bound)
        # Samples in the internal bucket that holds the bound are the only ones that can be misplaced.
        lo, hi = log_bucket_bounds_us(bucket_of(int(bound)))
        slack = sum(1 for v in values if lo <= v < hi)
        assert abs(cumulative_at(h.counts, [bound])[0] - exact) <= slack


# ------------------------------------------------------------------------------------------ promtool
def promtool_check(text: str) -> None:
    exe = shutil.which("promtool")
    if exe is None:
        print("\npromtool not found (apt-get install prometheus): skipping `promtool check metrics`")
        return
    res = subprocess.run([exe, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    # Exit 1 is a parse error; exit 3 is lint findings only. The findings allowed are about names PgDoorman
    # dashboards depend on (gauges ending in _count, non-base units), nothing else.
    assert res.returncode in (0, 3), res.stderr
    assert "error while linting" not in res.stderr, res.stderr
    for line in res.stderr.splitlines():
        assert line.split()[0] in LINT_ACCEPTED, line


LINT_ACCEPTED = {
    "pg_doorman_async_clients_count", "pg_doorman_connection_count", "pg_doorman_pools_queries_count",
    "pg_doorman_pools_transactions_count", "pg_doorman_pools_maxwait_microseconds",
    "pg_doorman_pools_oldest_active_age_ms",
}


def test_promtool_accepts_golden_text() -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool not found (apt-get install prometheus)")
    promtool_check(render(demo()))
    with pytest.raises(AssertionError):  # and it does catch a broken exposition
        promtool_check('# TYPE x gauge\nx{a="b} 1\n')
