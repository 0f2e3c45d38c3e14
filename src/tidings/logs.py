"""Logging for ``tidings serve``: text for people, JSON lines for log pipelines.

What Tidings logs names clients, users, channels and codes — never tokens and
never message bodies; tokens never travel in URLs, so access logs hold none.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

# Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def log_config(level: str, fmt: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for Tidings and uvicorn (what uvicorn's log_config takes)."""
    formatter: dict[str, Any] = (
        {"()": JSONFormatter}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"}
    )
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "default",
        "stream": "ext://sys.stderr",
    }
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        # Everything propagates to one root handler, so embedding apps and
        # test harnesses that watch the root logger see Tidings' records too.
        "root": {"handlers": ["default"], "level": upper},
        "loggers": {
            name: {"level": upper, "handlers": [], "propagate": True}
            for name in ("tidings", "uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
