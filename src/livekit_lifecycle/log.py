"""Structured logging: how the library logs, and an opt-in helper to see it.

The library logs through structlog onto the standard-library logger
``livekit_lifecycle``. Every record carries the structured fields as
``extra`` attributes (``category``, ``room``, ``key``, ``identity``, ``sid``,
``state``, ``trigger``...), so any stdlib handler, livekit-agents' JSON log
formatter included, receives them. Importing the library configures nothing;
call :func:`configure_logging` if you want output in a script or in dev.

Event names are stable (``session.transition``, ``event.ignored``,
``cleanup.failed``...): search for them, not for message wording. The
``category`` field keeps the seed's prefixes searchable: ``connect``,
``disconnect``, ``cleanup``, ``track``, ``session``, ``shutdown``, ``handlers``.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["LOGGER_NAME", "configure_logging", "get_logger"]

LOGGER_NAME = "livekit_lifecycle"
_HANDLER_MARK = "_livekit_lifecycle_handler"


def get_logger(name: str = LOGGER_NAME) -> Any:
    """A structlog logger writing to the stdlib logger ``name`` (no global structlog config)."""
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.render_to_log_kwargs,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def configure_logging(
    *, json: bool = False, level: int | str = logging.INFO, name: str = LOGGER_NAME
) -> logging.Handler:
    """Send the library's logs to stderr, as console lines (dev) or JSON lines (production).

    Opt-in and idempotent: a second call replaces the handler the first one
    installed. Returns the handler so it can be removed again. Applications
    that already route stdlib logging (livekit-agents does) need not call this.
    """
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=True)
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        processor=renderer,
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
        ],
    )
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    logger = logging.getLogger(name)
    for old in [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
