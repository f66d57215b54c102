"""Logging setup: `text` (human) or `structured` (one JSON object per line), to stderr or syslog; and the
runtime log filter behind `SET log_level` / `SHOW LOG_LEVEL`.

PgDoorman accepts RUST_LOG syntax for the filter: a default level and optional per-module overrides, comma
separated (`info`, `warn,pg_doorman::pool=debug`). Here a module is a Python logger name; `pg_doorman::x::y`
is accepted too and mapped to `pgdoorman.x.y`. `default` restores the level the process started with. The
root level goes through `set_level`; overrides set the named logger's level.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
import threading
import time

LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "warning": logging.WARNING, "info": logging.INFO,
          "debug": logging.DEBUG, "trace": logging.DEBUG, "off": logging.CRITICAL + 10}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "target": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        if record.exc_info:
            d["exception"] = self.formatException(record.exc_info)
        return json.dumps(d, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "text", syslog_name: str | None = None) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if syslog_name:
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.ident = f"{syslog_name}: "
    else:
        handler = logging.StreamHandler(sys.stderr)
    if fmt == "structured":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    lv = LEVELS.get(level.lower())
    if lv is None:
        raise ValueError(f"unknown log level {level!r} (use error, warn, info, debug, trace or off)")
    logging.getLogger().setLevel(lv)


def current_level() -> str:
    lv = logging.getLogger().level
    for k, v in LEVELS.items():
        if v == lv:
            return k
    return logging.getLevelName(lv).lower()


# ------------------------------------------------------------------ runtime filter (SET log_level)
FILTER_LEVELS = ("error", "warn", "info", "debug", "trace", "off")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:]*$")

_lock = threading.Lock()
_initial: str | None = None  # level at first use (the -l level): what 'default' restores
_current: str | None = None  # the filter string last set, as SHOW LOG_LEVEL reports it
_overridden: set[str] = set()  # logger names we gave a level (reset when the filter changes)


def remember_initial() -> None:
    """Record the startup level once (called when the first admin session opens)."""
    global _initial
    with _lock:
        if _initial is None:
            _initial = current_level()


def logger_name(module: str) -> str:
    name = module.replace("::", ".")
    if name == "pg_doorman" or name.startswith("pg_doorman."):
        name = "pgdoorman" + name[len("pg_doorman"):]
    return name


def parse_filter(value: str) -> tuple[str | None, list[tuple[str, str]]]:
    """('info', [('pgdoorman.pool', 'debug')]) from 'info,pg_doorman::pool=debug'. Raises ValueError."""
    default: str | None = None
    overrides: list[tuple[str, str]] = []
    items = [x.strip() for x in value.split(",")]
    if not any(items):
        raise ValueError("empty log level")
    for item in items:
        if not item:
            raise ValueError(f"invalid log filter {value!r}: empty item")
        if "=" in item:
            module, _, level = (p.strip() for p in item.partition("="))
            level = level.lower()
            if not _MODULE.match(module):
                raise ValueError(f"invalid module name {module!r} in log filter")
            if level not in FILTER_LEVELS:
                raise ValueError(f"unknown log level {level!r} for {module} (use {', '.join(FILTER_LEVELS)})")
            overrides.append((logger_name(module), level))
        else:
            level = item.lower()
            if level not in FILTER_LEVELS:
                raise ValueError(f"unknown log level {item!r} (use {', '.join(FILTER_LEVELS)} or default)")
            if default is not None:
                raise ValueError(f"invalid log filter {value!r}: more than one default level")
            default = level
    return default, overrides


def set_filter(value: str) -> str:
    """Apply a filter; returns the normalised filter string. Raises ValueError on bad syntax (42601)."""
    global _current
    remember_initial()
    v = value.strip()
    with _lock:
        if v.lower() == "default":
            default: str | None = _initial or "info"
            overrides: list[tuple[str, str]] = []
        else:
            default, overrides = parse_filter(v)
        for name in _overridden:
            logging.getLogger(name).setLevel(logging.NOTSET)
        _overridden.clear()
        if default is not None:
            set_level(default)
        for name, level in overrides:
            logging.getLogger(name).setLevel(LEVELS[level])
            _overridden.add(name)
        parts = [default or current_level()] + [f"{n}={lv}" for n, lv in overrides]
        _current = ",".join(parts)
        return _current


def current_filter() -> str:
    with _lock:
        if _current is not None:
            return _current
    return current_level()
