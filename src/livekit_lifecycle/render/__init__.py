"""Diagrams of the participant statechart, drawn from :data:`~livekit_lifecycle.PARTICIPANT_CHART`.

Mermaid and DOT text are generated here, directly from the chart data: every
state, every :class:`~livekit_lifecycle.statechart.Edge` (one arrow each, in the
chart's order), its guards, whether it is automatic, delayed or internal, the
initial and the final state. Nothing reads the runtime ``transitions`` machine,
so rendering can neither change nor slow it. SVG and PNG are the DOT text laid
out by Graphviz's ``dot`` program.

Given a session (a manager and a key, a :class:`~livekit_lifecycle.Session`, or
a :meth:`~livekit_lifecycle.LifecycleManager.snapshot` loaded from JSON), the
diagram highlights the state the session is in and marks, with step numbers,
every transition of its recorded history.

The ``livekit-lifecycle render`` command is :mod:`._command`, reached through
:mod:`livekit_lifecycle.cli`. See ``docs/statecharts.md``.
"""

from __future__ import annotations

from ._api import output_name, render_statechart
from ._dot import to_dot
from ._errors import RenderError
from ._formats import DEFAULT_FORMATS, EXTENSIONS, FORMATS
from ._graphviz import (
    INSTALL_GRAPHVIZ,
    SVG_STAMP,
    GraphvizError,
    GraphvizNotFoundError,
    dot_digest,
    graphviz_version,
)
from ._highlight import Highlight, Source
from ._markdown import MARKDOWN_BEGIN, MARKDOWN_END, embed_in_markdown, markdown_block
from ._mermaid import to_mermaid

__all__ = [
    "DEFAULT_FORMATS",
    "EXTENSIONS",
    "FORMATS",
    "GraphvizError",
    "GraphvizNotFoundError",
    "Highlight",
    "INSTALL_GRAPHVIZ",
    "MARKDOWN_BEGIN",
    "MARKDOWN_END",
    "RenderError",
    "SVG_STAMP",
    "Source",
    "dot_digest",
    "embed_in_markdown",
    "graphviz_version",
    "markdown_block",
    "output_name",
    "render_statechart",
    "to_dot",
    "to_mermaid",
]
