"""Structured logging via structlog, with secrets redacted before anything is written: JSON lines
for machines (not a terminal, or LOG_FORMAT=json), coloured console lines for people on a terminal.
The event names and fields are the same in both."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

_SECRET_KEY = re.compile(r"secret|token|api[_-]?key|authorization|password|signature", re.I)
_URL_QUERY = re.compile(r"(\b(?:https?|wss?)://[^\s?\"']+)\?[^\s\"']*")
REDACTED = "[REDACTED]"
_level = logging.INFO  # set by configure()


class Redactor:
    """Scrubs configured secret values, secret-looking keys and URL query strings (signed URLs and
    callback URLs carry credentials there) from every event."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = tuple(s for s in secrets if len(s) >= 4)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                value = value.replace(secret, REDACTED)
            return _URL_QUERY.sub(r"\1?" + REDACTED, value)
        if isinstance(value, dict):
            return {k: REDACTED if _SECRET_KEY.search(str(k)) else self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        return value

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for k, v in list(event.items()):
            event[k] = REDACTED if _SECRET_KEY.search(k) else self.scrub(v)
        return event


def wants_console(log_format: str = "auto", stream: Any = None) -> bool:
    """Console lines for LOG_FORMAT=console, or for auto when the output is a terminal."""
    if log_format == "auto":
        stream = sys.stdout if stream is None else stream
        isatty = getattr(stream, "isatty", None)
        return bool(isatty and isatty())
    return log_format == "console"


def configure(level: str = "info", secrets: Iterable[str] = (), log_format: str = "auto") -> None:
    """Configure structlog (and route stdlib logging through the same output)."""
    global _level
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    _level = numeric
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=True, sort_keys=False)
        if wants_console(log_format)
        else structlog.processors.JSONRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Exceptions are rendered to text before redaction: their messages can carry secrets too.
    render: list[Any] = [structlog.processors.format_exc_info, Redactor(secrets), renderer]
    structlog.configure(
        processors=[*shared, *render],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line (PrintLogger writes the newline separately): with several workers on one
        # stdout, lines would otherwise interleave mid-line.
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(numeric, logging.WARNING))


class EventLogger:
    """The service's logger: structlog underneath, with a level check first.

    structlog's module-level proxies build a bound logger on every call, even for events the level
    filters out; on the hot path at LOG_LEVEL=warning that was most of the logging cost. Checking
    the level configured last keeps `configure()` effective at any time (tests reconfigure)."""

    def debug(self, event: str, **fields: Any) -> None:
        if _level <= logging.DEBUG:
            structlog.get_logger("elevenlabs_agent").debug(event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        if _level <= logging.INFO:
            structlog.get_logger("elevenlabs_agent").info(event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        if _level <= logging.WARNING:
            structlog.get_logger("elevenlabs_agent").warning(event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        structlog.get_logger("elevenlabs_agent").error(event, **fields)


def get_logger() -> EventLogger:
    return EventLogger()
