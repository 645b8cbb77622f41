"""The Python entry point, :func:`render_statechart`, and the names of the files it writes."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import overload

from livekit_lifecycle.statechart import PARTICIPANT_CHART, Statechart

from ._dot import to_dot
from ._errors import RenderError
from ._formats import EXTENSIONS, FORMATS, ImageFormat, TextFormat
from ._graphviz import _graphviz
from ._highlight import Highlight, Source
from ._mermaid import to_mermaid

__all__ = ["output_name", "render_statechart"]


@overload
def render_statechart(
    source: Source | None = None,
    *,
    key: str | None = None,
    format: TextFormat = "mermaid",
    out: str | os.PathLike[str] | None = None,
    chart: Statechart = PARTICIPANT_CHART,
) -> str: ...


@overload
def render_statechart(
    source: Source | None = None,
    *,
    key: str | None = None,
    format: ImageFormat,
    out: str | os.PathLike[str],
    chart: Statechart = PARTICIPANT_CHART,
) -> Path: ...


@overload
def render_statechart(
    source: Source | None = None,
    *,
    key: str | None = None,
    format: str,
    out: str | os.PathLike[str] | None = None,
    chart: Statechart = PARTICIPANT_CHART,
) -> str | Path: ...


def render_statechart(
    source: Source | None = None,
    *,
    key: str | None = None,
    format: str = "mermaid",
    out: str | os.PathLike[str] | None = None,
    chart: Statechart = PARTICIPANT_CHART,
) -> str | Path:
    """Draw the participant statechart, optionally with one session's state and path.

    Args:
        source: ``None`` for the plain chart; otherwise a
            :class:`~livekit_lifecycle.LifecycleManager`, a
            :class:`~livekit_lifecycle.Session`, a ``manager.snapshot()`` or one
            ``session.as_dict()``. Only the chosen session is read, once; the
            runtime machine is never touched.
        key: The session to highlight; may be left out when ``source`` holds
            exactly one session.
        format: ``"mermaid"`` or ``"dot"`` return the text (and also write it
            to ``out`` when given); ``"svg"`` or ``"png"`` write ``out`` with
            Graphviz's ``dot`` and return its path.
        out: A file path, or an existing directory to write
            ``<chart>[-<key>].<ext>`` into. Required for svg and png.
        chart: The chart to draw (the participant chart unless you test another).

    Raises:
        RenderError: unknown format, malformed snapshot, unknown or ambiguous key,
            a session history the chart cannot produce, or ``out`` missing for
            an image.
        GraphvizNotFoundError: svg/png asked for and ``dot`` is not installed.
        GraphvizError: ``dot`` failed.
        OSError: ``out`` cannot be written.

    Laying out svg/png runs a subprocess (tens of milliseconds); from the event
    loop, take the data there and lay it out in a thread::

        snapshot = manager.snapshot()
        await asyncio.to_thread(render_statechart, snapshot, key="alice", format="svg", out="a.svg")
    """
    if format not in FORMATS:
        raise RenderError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    if key is not None and source is None:
        raise RenderError(f"key {key!r} given without a manager, session or snapshot to read")
    highlight = None if source is None else Highlight.of(source, key)
    if format == "mermaid" or format == "dot":
        text = to_mermaid(chart, highlight) if format == "mermaid" else to_dot(chart, highlight)
        if out is not None:
            _write(_target(out, chart, highlight, format), text.encode("utf-8"))
        return text
    if out is None:
        raise RenderError(f"{format} is written to a file: pass out=PATH or out=DIRECTORY")
    data = _graphviz(to_dot(chart, highlight), "svg" if format == "svg" else "png")
    path = _target(out, chart, highlight, format)
    _write(path, data)
    return path


def output_name(chart: Statechart, highlight: Highlight | None, fmt: str) -> str:
    """``participant.svg``, or ``participant-<key>.svg`` for a highlighted session."""
    stem = chart.name
    if highlight is not None and highlight.key:
        stem += "-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", highlight.key).strip("._") or "session")
    return f"{stem}.{EXTENSIONS[fmt]}"


def _target(out: str | os.PathLike[str], chart: Statechart, hl: Highlight | None, fmt: str) -> Path:
    path = Path(out)
    return path / output_name(chart, hl, fmt) if path.is_dir() else path


def _write(path: Path, data: bytes) -> None:
    # Bytes, not text: no newline translation, so files match on every OS.
    path.write_bytes(data)
