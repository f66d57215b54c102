"""Logging setup: `text` (human) or `structured` (one JSON object per line), to stderr or syslog."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
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
