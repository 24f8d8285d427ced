"""Logging for the daemon: JSON lines for machines (journald, Kubernetes log shippers) or text for people.

:func:`configure_logging` installs one handler on the root logger; fields given with ``extra=`` become keys
of their own in either format. Whatever a record says, no URL credentials reach the output (httpx, for one,
logs each request's URL) and no control character reaches a terminal.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any, Literal

from autoscaler.core.redact import printable, redact_text

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging"]

LogFormat = Literal["text", "json"]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
_FIXED_KEYS = frozenset({"time", "level", "logger", "message", "exc_info", "stack_info"})
_HANDLER_MARK = "_raytide_handler"


def _timestamp(record: logging.LogRecord) -> str:
    dt = datetime.fromtimestamp(record.created, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: _redacted(v) for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")
    }


def _redacted(value: Any) -> Any:
    """``value`` with the credentials of every URL in its text masked (strings inside lists and dicts too)."""
    if isinstance(value, str):
        return redact_text(value)
    if type(value) in (list, tuple):
        return type(value)(_redacted(v) for v in value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact_text(str(value))


# JSON escapes C0 controls itself; C1 controls (8-bit terminal escapes) are escaped too, which keeps the line
# valid JSON since they can only occur inside its strings.
_C1_ESCAPES = {c: f"\\u{c:04x}" for c in range(0x80, 0xA0)}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, then the extra fields::

        {"time": "2025-01-02T03:04:05.678Z", "level": "INFO", "logger": "autoscaler.adapters.mqtt_events",
         "message": "mqtt: connected to broker:1883", "url": "..."}

    An extra field whose name clashes with a fixed key is prefixed with ``extra_``; an exception adds
    ``exc_info`` (the formatted traceback). Values JSON cannot hold are written as their ``str()``.
    """

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        for key, value in _extras(record).items():
            doc[f"extra_{key}" if key in _FIXED_KEYS else key] = value
        if record.exc_info:
            doc["exc_info"] = redact_text(self.formatException(record.exc_info))
        if record.stack_info:
            doc["stack_info"] = redact_text(self.formatStack(record.stack_info))
        return json.dumps(doc, default=str, ensure_ascii=False).translate(_C1_ESCAPES)


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message> key=value ...`` and the traceback, if any, below, e.g.
    ``2025-01-02T03:04:05.678Z INFO autoscaler.adapters.mqtt_events: message shape=gpu1``."""

    def format(self, record: logging.LogRecord) -> str:
        message = printable(redact_text(record.getMessage()), newlines=False)
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {message}"
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + printable(redact_text(self.formatException(record.exc_info)))
        if record.stack_info:
            line += "\n" + printable(redact_text(self.formatStack(record.stack_info)))
        return line


def _text_value(value: Any) -> str:
    text = printable(str(value), newlines=False)
    # Quoted when it would otherwise blur into the next key=value pair.
    return json.dumps(text, ensure_ascii=False) if (not text or any(c.isspace() for c in text)) else text


def configure_logging(
    fmt: LogFormat, level: int | str = logging.INFO, *, stream: IO[str] | None = None
) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr by default) in ``fmt``.

    ``level`` is a number or a name (``"DEBUG"``, ``"info"``, ...); an unknown name raises ``ValueError``.
    Calling it again replaces the handler it installed before (and only that one), so tests and a CLI that
    re-configures do not end up with duplicated lines.
    """
    if isinstance(level, str):
        numeric = logging.getLevelName(level.upper())
        if not isinstance(numeric, int):
            raise ValueError(f"unknown log level {level!r}")
        level = numeric
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
    elif fmt == "text":
        formatter = TextFormatter()
    else:
        raise ValueError(f"unknown log format {fmt!r}; expected 'text' or 'json'")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request at INFO: one line per query per tick would drown raytide's own lines. At DEBUG
    # they are wanted.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))
