"""The chart as Mermaid ``stateDiagram-v2`` text."""

from __future__ import annotations

import re
from types import MappingProxyType

from livekit_lifecycle.statechart import PARTICIPANT_CHART, State, Statechart

from ._common import (
    _CURRENT_FILL,
    _CURRENT_LINE,
    _GENERATED,
    _ID,
    _PATH,
    _VISITED_FILL,
    _edge_text,
    _marks,
    _steps_text,
    _title,
)
from ._highlight import Highlight

__all__ = ["to_mermaid"]

_MERMAID_KEYWORDS = frozenset({"state", "note", "direction", "class", "classdef", "end", "style"})
_MERMAID_ENTITIES = MappingProxyType(
    {"#": "#35;", ";": "#59;", "<": "#lt;", ">": "#gt;", "\n": " "}
)
_MERMAID_UNSAFE = re.compile("[#;<>\n]")


def to_mermaid(chart: Statechart = PARTICIPANT_CHART, highlight: Highlight | None = None) -> str:
    """The chart as a Mermaid ``stateDiagram-v2`` (what GitHub renders in Markdown).

    States and edges come out in the chart's order, so the same chart gives
    byte-identical text. Mermaid state diagrams cannot style single arrows,
    so automatic, delayed and internal edges say so in their labels, and a
    highlighted session's steps are numbered in the labels of the arrows it
    took; its current state is coloured (class ``current``) and noted.

    Raises:
        RenderError: when ``highlight`` does not fit ``chart``.
    """
    marks = _marks(chart, highlight)
    ids = {state: _mermaid_id(state) for state in chart.states}
    lines = [
        "stateDiagram-v2",
        f"    %% {_GENERATED} ({chart.name}).",
        "    %% Do not edit by hand: change the chart and run the command again.",
    ]
    if highlight is not None:
        lines.append(f"    %% {_mermaid_text(_title(chart, highlight))}")
    for state in chart.states:
        if ids[state] != state.value:
            lines.append(f'    state "{_mermaid_text(state.value)}" as {ids[state]}')
    lines.append(f"    [*] --> {ids[chart.initial]}")
    for index, edge in enumerate(chart.edges):
        if edge.internal:
            continue
        text = _edge_text(edge, chart)
        if marks.on_path(index):
            text += " " + _steps_text(marks.steps[index])
        lines.append(f"    {ids[edge.source]} --> {ids[edge.target]} : {_mermaid_text(text)}")
    for state in chart.states:
        if state in chart.final:
            lines.append(f"    {ids[state]} --> [*]")
    for state in chart.states:
        activity = chart.activity(state)
        if activity is not None:  # UML's do-activity: runs while the session is here
            lines.append(f"    {ids[state]} : {_mermaid_text('do / ' + activity.name)}")
        for edge in chart.edges_from(state):
            if edge.internal:
                lines.append(f"    {ids[state]} : {_mermaid_text(_edge_text(edge, chart))}")
    if highlight is not None and marks.current is not None:
        lines += [
            f"    classDef visited fill:{_VISITED_FILL},stroke:{_PATH},color:#000",
            f"    classDef current fill:{_CURRENT_FILL},stroke:{_CURRENT_LINE},"
            "stroke-width:3px,color:#000,font-weight:bold",
        ]
        visited = [ids[s] for s in chart.states if s in marks.visited and s is not marks.current]
        if visited:
            lines.append(f"    class {','.join(visited)} visited")
        lines.append(f"    class {ids[marks.current]} current")
        note = f"{highlight.key} is here" if highlight.key else "the session is here"
        lines.append(f"    note right of {ids[marks.current]} : {_mermaid_text(note)}")
    return "\n".join(lines) + "\n"


def _mermaid_id(state: State) -> str:
    name = state.value
    if _ID.fullmatch(name) and name.lower() not in _MERMAID_KEYWORDS:
        return name
    return "s_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def _mermaid_text(text: str) -> str:
    # Mermaid ends a statement at ";" and reads "#...;" as an entity; "<"/">"
    # would be taken as HTML. Its own entity codes keep them as text.
    return _MERMAID_UNSAFE.sub(lambda m: _MERMAID_ENTITIES[m[0]], text)
