"""structlog set-up: one key-value event per phase, JSON when not on a terminal (or when asked).

At ``info`` a deploy logs ``deploy_started``, one line per phase (with its ``duration_ms``) and how
it ended; details (git commands, the reload's token, preparation statistics, pruned releases) are
at ``debug``. A field whose value is None is left out of the line (call sites use :func:`present`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["configure_logging", "present"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def present(**fields: Any) -> dict[str, Any]:
    """``fields`` without those that are None: ``log.info("swap", **present(release=None))`` logs no
    ``release=None``."""
    return {k: v for k, v in fields.items() if v is not None}


def _drop_none(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """A processor: no ``key=None`` in any line, whatever the call site passed."""
    return {k: v for k, v in event.items() if v is not None}


def configure_logging(fmt: str = "auto", level: str = "info", stream: Any = None) -> None:
    """Configure structlog for the process. ``fmt`` is auto, json or console."""
    out = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _drop_none,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
