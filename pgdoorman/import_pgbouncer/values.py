"""Values in PgBouncer's spelling read as Python values (booleans, integers, times) and written back in
pgdoorman's (durations); a value that does not parse raises ImportFailed naming its file and line.
"""

from __future__ import annotations

import ipaddress
import re

from pgdoorman.import_pgbouncer.reading import ImportFailed, Setting

_TRUE = {"1", "on", "yes", "true"}
_FALSE = {"0", "off", "no", "false"}


def to_bool(s: Setting, value: str | None = None) -> bool:
    v = (s.value if value is None else value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ImportFailed(f"{s.file}:{s.line}: {s.key}: expected a boolean (0/1, on/off, yes/no), got {v!r}")


def to_int(s: Setting, value: str | None = None, minimum: int = 0) -> int:
    v = (s.value if value is None else value).strip()
    try:
        n = int(v)
    except ValueError:
        raise ImportFailed(f"{s.file}:{s.line}: {s.key}: expected an integer, got {v!r}") from None
    if n < minimum:
        raise ImportFailed(f"{s.file}:{s.line}: {s.key}: must be at least {minimum}, got {n}")
    return n


_TIME_UNITS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


def millis(s: Setting, value: str | None = None, unit_ms: float = 1000) -> int:
    """A PgBouncer time: a number in its default unit (seconds for most settings, milliseconds for
    tcp_user_timeout), or with a unit suffix (us, ms, s, min, h, d) as newer PgBouncers accept."""
    v = (s.value if value is None else value).strip().lower()
    m = re.match(r"^([0-9]+(?:\.[0-9]*)?)\s*([a-z]*)$", v)
    if not m or (m.group(2) and m.group(2) not in _TIME_UNITS):
        raise ImportFailed(f"{s.file}:{s.line}: {s.key}: expected a time (a number of seconds), got {v!r}")
    factor = _TIME_UNITS[m.group(2)] if m.group(2) else unit_ms
    return round(float(m.group(1)) * factor)


def duration(ms: int) -> str:
    """pgdoorman's duration string for a number of milliseconds."""
    if ms % 86_400_000 == 0 and ms:
        return f"{ms // 86_400_000}d"
    if ms % 3_600_000 == 0 and ms:
        return f"{ms // 3_600_000}h"
    if ms % 60_000 == 0 and ms:
        return f"{ms // 60_000}m"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


def is_mask(word: str) -> bool:
    try:
        ipaddress.ip_network(f"0.0.0.0/{word}" if "." in word else f"::/{word}")
    except ValueError:
        return False
    return "." in word or ":" in word


def is_hashed(secret: str) -> bool:
    return secret.startswith("SCRAM-SHA-256$") or bool(re.fullmatch(r"md5[0-9a-f]{32}", secret))
