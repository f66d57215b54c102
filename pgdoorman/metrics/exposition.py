"""A hand-written renderer for the Prometheus text exposition format 0.0.4.

A `Family` is one metric family (name, type, help) with its samples; `render` writes `# HELP` / `# TYPE`
lines and one line per sample, escaping HELP text (backslash, newline) and label values (backslash,
double quote, newline). Histograms are rendered from cumulative bucket counts as `_bucket{le}` lines
(ending with `le="+Inf"` equal to `_count`), `_sum` and `_count`. Names are validated when a family or
sample is created, so a typo fails in tests rather than in a scrape.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pgdoorman.core.stats import bucket_bounds_us

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TYPES = ("counter", "gauge", "histogram", "untyped")
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

Labels = tuple[tuple[str, str], ...]
Number = int | float


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(v: Number) -> str:
    """Go-client style numbers: integers without a decimal point, +Inf/-Inf/NaN spelled out."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _labels(labels: Mapping[str, str] | Sequence[tuple[str, str]]) -> Labels:
    items = tuple(labels.items()) if isinstance(labels, Mapping) else tuple(labels)
    for k, _ in items:
        if not _LABEL_NAME.match(k) or k.startswith("__"):
            raise ValueError(f"invalid label name {k!r}")
    return tuple((k, str(v)) for k, v in items)


@dataclass(frozen=True)
class Sample:
    suffix: str  # "" or _bucket/_sum/_count for histograms
    labels: Labels
    value: Number


@dataclass
class Family:
    name: str
    type: str
    help: str
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _METRIC_NAME.match(self.name):
            raise ValueError(f"invalid metric name {self.name!r}")
        if self.type not in TYPES:
            raise ValueError(f"invalid metric type {self.type!r}")
        if self.type == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name!r} must end with _total")

    def add(self, value: Number, labels: Mapping[str, str] | Sequence[tuple[str, str]] = ()) -> Family:
        if self.type == "histogram":
            raise ValueError("use add_histogram for histogram families")
        self.samples.append(Sample("", _labels(labels), value))
        return self

    def add_histogram(
        self,
        labels: Mapping[str, str] | Sequence[tuple[str, str]],
        buckets: Sequence[tuple[float, Number]],
        total: Number,
        count: int,
    ) -> Family:
        """`buckets`: (upper bound, cumulative count) in increasing bound order, without +Inf."""
        if self.type != "histogram":
            raise ValueError(f"{self.name} is not a histogram")
        base = _labels(labels)
        if any(k == "le" for k, _ in base):
            raise ValueError("histogram labels must not contain 'le'")
        prev_le = -math.inf
        prev_n: Number = 0
        for le, n in buckets:
            if le <= prev_le:
                raise ValueError(f"{self.name}: bucket bounds must increase")
            if n < prev_n or n > count:
                raise ValueError(f"{self.name}: bucket counts must be cumulative and at most the count")
            self.samples.append(Sample("_bucket", base + (("le", format_value(float(le))),), n))
            prev_le, prev_n = le, n
        self.samples.append(Sample("_bucket", base + (("le", "+Inf"),), count))
        self.samples.append(Sample("_sum", base, total))
        self.samples.append(Sample("_count", base, count))
        return self


def render(families: Iterable[Family]) -> str:
    lines: list[str] = []
    seen: set[str] = set()
    for fam in families:
        if fam.name in seen:
            raise ValueError(f"metric family {fam.name!r} rendered twice")
        seen.add(fam.name)
        lines.append(f"# HELP {fam.name} {escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        for s in fam.samples:
            if s.labels:
                lbl = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in s.labels)
                lines.append(f"{fam.name}{s.suffix}{{{lbl}}} {format_value(s.value)}")
            else:
                lines.append(f"{fam.name}{s.suffix} {format_value(s.value)}")
    return "\n".join(lines) + "\n" if lines else ""


# ------------------------------------------------------------------------------------------ histograms
def log_bucket_bounds_us(b: int) -> tuple[float, float]:
    """[lower, upper) of bucket b of pgdoorman.core.stats.Histogram, in microseconds (4 buckets per doubling)."""
    return bucket_bounds_us(b)


def cumulative_at(counts: Sequence[int], bounds_us: Sequence[float]) -> list[int]:
    """Cumulative sample counts at each upper bound (µs), read from the pooler's histogram buckets.

    Samples are whole microseconds; a bucket [lo, hi) holds the integers lo..hi-1, four buckets per
    doubling, each splitting its power of two linearly. Buckets entirely at or below a bound count
    fully; the one bucket a bound falls into counts the share of its integers that are <= the bound, as
    if its samples were spread evenly. So each value is exact up to the samples of one internal bucket
    (at most 25% of the value wide), never decreases as samples arrive, and never decreases as the bound
    grows.
    """
    out: list[int] = []
    nb = len(counts)
    for bound in bounds_us:
        acc = 0.0
        top = math.floor(bound)  # the largest whole microsecond <= bound
        for b in range(nb):
            c = counts[b]
            if not c:
                continue
            lo, hi = log_bucket_bounds_us(b)
            if b == nb - 1:
                hi = math.inf  # the last bucket also collects everything larger
            if hi - 1 <= top:
                acc += c
            elif lo <= top:
                acc += c * min(1.0, (top - lo + 1) / (hi - lo)) if not math.isinf(hi) else 0.0
        out.append(int(acc + 1e-9))
    return out
