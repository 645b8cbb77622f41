"""The error raised for input that cannot be drawn."""

from __future__ import annotations

__all__ = ["RenderError"]


class RenderError(ValueError):
    """The input cannot be drawn: unknown format, malformed snapshot, unknown session key."""
