"""How the server logs: structlog onto the standard-library logger ``livekit_loopback``.

Nothing is configured on import; any stdlib handler receives the records, with
the structured fields as ``extra`` attributes.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

LOGGER_NAME = "livekit_loopback"


def get_logger() -> Any:
    """A structlog logger writing to the stdlib logger ``livekit_loopback``."""
    return structlog.wrap_logger(
        logging.getLogger(LOGGER_NAME),
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.render_to_log_kwargs,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def describe(fn: object) -> str:
    """A readable name for a callback in logs."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        return type(fn).__qualname__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module else str(name)
