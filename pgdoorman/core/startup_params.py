"""The startup-parameter cascade (PgDoorman's `startup_parameters`): the settings a pool's server connections
send in their StartupMessage, from three levels, each overriding the one before key by key:
`general.startup_parameters`, the pool's `startup_parameters`, and (auth_query users in passthrough mode)
the optional `startup_parameters` column of the user's auth_query row, a JSON object.

The first two are checked when the config loads (config/values.py, config/loader.py). The row's are
checked here, at run time: a value that cannot be used is dropped with a reason (the
`pg_doorman_startup_parameters_dropped_total{reason}` label) and the rest applies. Sizes are counted as
the StartupMessage counts them (name, NUL, value, NUL) against PostgreSQL's 10,000-byte packet limit.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from pgdoorman.config.values import startup_parameter_problem

MAX_STARTUP_PACKET = 10000  # PostgreSQL's MAX_STARTUP_PACKET_LENGTH
LEVEL_BUDGET = MAX_STARTUP_PACKET - 512  # one level's share; the rest is for user, database, application_name
# Reasons a setting is dropped (the metric's label values).
CASCADE_BUDGET = "cascade_budget_exceeded"
PACKET_CAP = "packet_cap_exceeded"
AQ_OVERSIZE = "auth_query_oversize"
AQ_OVERLAY_OVERSIZE = "auth_query_overlay_oversize"
AQ_BAD_TYPE = "auth_query_bad_type"
AQ_INVALID_JSON = "auth_query_invalid_json"
AQ_INVALID_SHAPE = "auth_query_invalid_shape"
AQ_INVALID_ENTRY = "auth_query_invalid_entry"
DEDICATED = "dedicated_mode"
REASONS = (CASCADE_BUDGET, PACKET_CAP, AQ_OVERSIZE, AQ_OVERLAY_OVERSIZE, AQ_BAD_TYPE, AQ_INVALID_JSON,
           AQ_INVALID_SHAPE, AQ_INVALID_ENTRY, DEDICATED)
BUDGET_REASONS = (CASCADE_BUDGET, PACKET_CAP, AQ_OVERSIZE, AQ_OVERLAY_OVERSIZE)  # SHOW's dropped_due_to_budget
RAW_LIMIT = 64 * 1024  # a row's column longer than this is not even parsed


def encoded_size(params: Mapping[str, str]) -> int:
    """Bytes the settings take in a StartupMessage."""
    return sum(len(k.encode()) + len(v.encode()) + 2 for k, v in params.items())


def packet_size(base: Mapping[str, str], params: Mapping[str, str]) -> int:
    """The whole StartupMessage: length, protocol version, `base` (user, database, application_name), the
    settings, the final NUL."""
    return 8 + encoded_size(base) + encoded_size(params) + 1


@dataclass
class Cascade:
    """What a pool sends: `params` (name -> value) with the level each came from (`source`: general, pool or
    auth_query), and what was dropped: (name, value, source, reason)."""

    params: dict[str, str] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)
    dropped: list[tuple[str, str, str, str]] = field(default_factory=list)

    def reasons(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for *_, reason in self.dropped:
            out[reason] = out.get(reason, 0) + 1
        return out


def cascade(general: Mapping[str, str], pool: Mapping[str, str], row: str | None = None,
            dedicated: bool = False) -> Cascade:
    """The settings of a pool: general's, the pool's over them, then an auth_query row's (raw JSON text of
    its `startup_parameters` column; None: no such column or NULL). In dedicated mode a row's settings are
    dropped (one pool serves many users)."""
    out = Cascade()
    for level, params in (("general", general), ("pool", pool)):
        for k, v in params.items():
            out.params[k] = v
            out.source[k] = level
    if row is None or row == "":
        return out
    overlay = _overlay(row, out)
    if dedicated:
        out.dropped += [(k, v, "auth_query", DEDICATED) for k, v in overlay.items()]
        return out
    if encoded_size(overlay) > LEVEL_BUDGET:
        out.dropped += [(k, v, "auth_query", AQ_OVERLAY_OVERSIZE) for k, v in overlay.items()]
        return out
    merged = {**out.params, **overlay}
    if encoded_size(merged) > LEVEL_BUDGET:
        out.dropped += [(k, v, "auth_query", CASCADE_BUDGET) for k, v in overlay.items()]
        return out
    for k, v in overlay.items():
        out.params[k] = v
        out.source[k] = "auth_query"
    return out


def _overlay(raw: str, out: Cascade) -> dict[str, str]:
    """A row's settings that pass the same checks as the config's; the others go to `out.dropped`."""
    if len(raw) > RAW_LIMIT:
        out.dropped.append(("*", f"{len(raw)} bytes", "auth_query", AQ_OVERSIZE))
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        out.dropped.append(("*", raw[:64], "auth_query", AQ_INVALID_JSON))
        return {}
    if not isinstance(value, dict):
        out.dropped.append(("*", raw[:64], "auth_query", AQ_INVALID_SHAPE))
        return {}
    overlay: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(v, bool):
            text = "on" if v else "off"
        elif isinstance(v, str | int | float):
            text = str(v)
        else:
            out.dropped.append((str(k), json.dumps(v)[:64], "auth_query", AQ_BAD_TYPE))
            continue
        if startup_parameter_problem(k, text) is not None:
            out.dropped.append((str(k), text[:64], "auth_query", AQ_INVALID_ENTRY))
            continue
        overlay[k] = text
    return overlay


_lock = threading.Lock()
_dropped: dict[tuple[str, str], int] = {}  # (pool, i.e. database, reason) -> settings dropped, since start


def count_dropped(pool: str, sc: Cascade) -> None:
    """Count what a cascade dropped (pg_doorman_startup_parameters_dropped_total{pool,reason})."""
    if not sc.dropped:
        return
    with _lock:
        for reason, n in sc.reasons().items():
            _dropped[(pool, reason)] = _dropped.get((pool, reason), 0) + n


def dropped_counts() -> dict[tuple[str, str], int]:
    with _lock:
        return dict(_dropped)


def fits(base: Mapping[str, str], params: Mapping[str, str]) -> bool:
    """Whether a StartupMessage with `base` and `params` stays within PostgreSQL's limit (else 53400)."""
    return packet_size(base, params) <= MAX_STARTUP_PACKET
