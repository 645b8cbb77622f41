"""The output formats: their names, which are written by default, and their file extensions."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

__all__ = ["DEFAULT_FORMATS", "EXTENSIONS", "FORMATS", "ImageFormat", "TextFormat"]

TextFormat = Literal["mermaid", "dot"]
ImageFormat = Literal["svg", "png"]

FORMATS: tuple[str, ...] = ("mermaid", "dot", "svg", "png")
"""Every format :func:`render_statechart` and the command accept."""

DEFAULT_FORMATS: tuple[str, ...] = ("mermaid", "dot", "svg")
"""What ``livekit-lifecycle render`` writes without ``--format`` (what ``statecharts/`` holds)."""

EXTENSIONS: Mapping[str, str] = MappingProxyType(
    {"mermaid": "mmd", "dot": "dot", "svg": "svg", "png": "png"}
)
"""File extension of each format."""
