"""structlog set-up: JSON lines off a terminal, readable lines on one, secrets masked everywhere."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from autoscaler.common.secrets import mask_secrets, masked, register_secret

__all__ = ["configure_logging", "mask_secrets", "register_secret"]

_PER_CALL_LOGGERS = ("apscheduler", "httpx", "httpcore", "nats")
# Libraries whose every error the daemon already reports in its own words (a failed read is one
# `demand_unknown` line a cycle): pika logs each refused connection at ERROR, with tracebacks.
_REPORTED_ELSEWHERE = ("pika",)


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = mask_secrets(value)
        elif not isinstance(value, int | float | bool | type(None)):
            text = str(value)
            hidden = mask_secrets(text)
            if hidden != text:
                event_dict[key] = hidden
    return event_dict


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time, so a swapped stream (tests, reloads) is honoured."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure_logging(level: str = "INFO", json_lines: bool | None = None, stream: TextIO | None = None) -> None:
    """Route structlog and the standard library (httpx, APScheduler) through one masked pipeline."""
    out: Any = masked(stream if stream is not None else _CurrentStderr())  # type: ignore[arg-type]
    as_json = json_lines if json_lines is not None else not out.isatty()
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING or ERROR")
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for chatty in _PER_CALL_LOGGERS:  # a line per request or job run: DEBUG only, their warnings stay
        logging.getLogger(chatty).setLevel(numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING))
    for repeated in _REPORTED_ELSEWHERE:
        logging.getLogger(repeated).setLevel(numeric if numeric <= logging.DEBUG else logging.CRITICAL)
