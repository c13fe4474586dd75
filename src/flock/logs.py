"""Logging for `flock serve` and `flock worker`: plain text, or one JSON object per line.

`--log-format json` (`FLOCK_LOG_FORMAT=json`) writes every record as
`{"time", "level", "logger", "message"}` plus `correlation_id`, `run_id` and `agent` where
they are known, and `exception` (the traceback) when the record carries one. Those three
come from the record's `extra` if given, else from the log context: the worker binds a run's
ids around its execution (`bind`), the HTTP middleware a request's correlation id.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT_FIELDS = ("correlation_id", "run_id", "agent")

# What the records logged in this context are about: a run's ids, or a request's state
# (whose `correlation_id` becomes the workflow's once the request has published).
_context: ContextVar[Mapping[str, Any] | None] = ContextVar("flock_log_context", default=None)


def bind(context: Mapping[str, Any]) -> Token[Mapping[str, Any] | None]:
    """Records logged from now on in this context (this task, the tasks it starts) carry
    the context's `correlation_id`, `run_id` and `agent`. A task's context is its own copy,
    so binding inside one leaks into no other task; `unbind(token)` ends it sooner."""
    return _context.set(context)


def unbind(token: Token[Mapping[str, Any] | None]) -> None:
    _context.reset(token)


def current() -> Mapping[str, Any]:
    """The bound context (empty when none)."""
    return _context.get() or {}


class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = current()
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None) or context.get(name)
            if value is not None:
                entry[name] = str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def parse_format(value: str) -> LogFormat:
    """`text` or `json` (any case); ValueError otherwise."""
    lowered = value.strip().lower()
    for known in LOG_FORMATS:
        if lowered == known:
            return known
    raise ValueError(f"--log-format must be text or json, not {value!r}")


_configured: list[tuple[LogFormat, logging.Handler]] = []  # what `configure` set, if it ran


def configured_format() -> LogFormat | None:
    """The format `configure` set in this process, None if it did not run."""
    return _configured[-1][0] if _configured else None


def configure(level: str, log_format: str = "text") -> LogFormat:
    """Send every record of `level` and above to stderr, in the given format; the format.

    Configuring again replaces the handler the last call added; handlers that something
    else put on the root logger (a test's log capture, say) stay.
    """
    chosen = parse_format(log_format)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if chosen == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for _, previous in _configured:
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(level.upper())
    _configured[:] = [(chosen, handler)]
    return chosen


def uvicorn_log_config(log_format: LogFormat) -> dict[str, Any] | None:
    """What `uvicorn.Config(log_config=...)` gets: its own text set-up, or (JSON) none, so
    its records reach the root handler and are written as JSON like every other."""
    if log_format == "json":
        return None
    from uvicorn.config import LOGGING_CONFIG

    return LOGGING_CONFIG


__all__ = [
    "CONTEXT_FIELDS",
    "LOG_FORMATS",
    "JSONFormatter",
    "LogFormat",
    "bind",
    "configure",
    "configured_format",
    "current",
    "parse_format",
    "unbind",
    "uvicorn_log_config",
]
