"""The chart as Graphviz DOT text, and how it is styled."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from livekit_lifecycle.statechart import PARTICIPANT_CHART, Edge, State, Statechart

from ._common import (
    _AUTO,
    _CURRENT_FILL,
    _CURRENT_LINE,
    _GENERATED,
    _ID,
    _INK,
    _MUTED,
    _PATH,
    _TIMER,
    _VISITED_FILL,
    _edge_text,
    _Marks,
    _marks,
    _steps_text,
    _title,
)
from ._highlight import Highlight

__all__ = ["to_dot"]

_FONT = "Helvetica,Arial,sans-serif"
_DOT_KEYWORDS = frozenset({"node", "edge", "graph", "digraph", "subgraph", "strict"})


def to_dot(chart: Statechart = PARTICIPANT_CHART, highlight: Highlight | None = None) -> str:
    """The chart as Graphviz DOT text.

    Solid arrows are caused by room events (or the manager's shutdown),
    dashed ones are automatic (fired on entering their source state), the
    bold orange one is delayed (a timer). Internal edges are listed inside
    their state's box. With a ``highlight``, the session's current state is
    filled amber (``class="current"``), the states it passed through light
    blue, and the arrows it took blue with their step numbers.

    Raises:
        RenderError: when ``highlight`` does not fit ``chart``.
    """
    marks = _marks(chart, highlight)
    lit = highlight is not None
    font = _q(_FONT)
    lines = [
        f"// {_GENERATED} ({chart.name}).",
        "// Do not edit by hand: change the chart and run the command again.",
        f"digraph {_dot_id(chart.name)} {{",
        f"  graph [rankdir=TB, nodesep=0.5, ranksep=0.5, fontname={font}, fontsize=11,"
        f" labelloc=b, label={_dot_legend(chart, highlight)}];",
        f'  node [shape=box, style="rounded,filled", fillcolor="#ffffff", color={_q(_INK)},'
        f' fontname={font}, fontsize=12, margin="0.18,0.06"];',
        f"  edge [color={_q(_INK)}, fontcolor={_q(_INK)}, fontname={font}, fontsize=10,"
        " arrowsize=0.8];",
        "",
        '  __initial [shape=point, width=0.16, label="", fillcolor="#000000",'
        f' tooltip="initial state: {chart.initial}"];',
    ]
    for state in chart.states:
        lines.append(
            f"  {_dot_id(state.value)} [{_dot_node_attrs(chart, state, marks, highlight)}];"
        )
    if chart.final:
        lines.append(
            '  __final [shape=doublecircle, width=0.12, label="", style=filled,'
            ' fillcolor="#000000", tooltip="final: the session is forgotten"];'
        )
    lines.append("")
    initial_attrs = ['class="initial"']
    if marks.starts_at_initial:
        initial_attrs += [f"color={_q(_PATH)}", "penwidth=2.4"]
    elif lit:
        initial_attrs.append(f"color={_q(_MUTED)}")
    lines.append(f"  __initial -> {_dot_id(chart.initial.value)} [{', '.join(initial_attrs)}];")
    for index, edge in enumerate(chart.edges):
        if edge.internal:
            continue
        lines.append(
            f"  {_dot_id(edge.source.value)} -> {_dot_id(edge.target.value)}"
            f" [{_dot_edge_attrs(chart, edge, marks.steps[index], muted=_muted(edge, marks))}];"
        )
    for state in chart.states:
        if state in chart.final:
            final_attrs = 'class="final"'
            if lit and state is not marks.current:
                final_attrs += f", color={_q(_MUTED)}"
            lines.append(f"  {_dot_id(state.value)} -> __final [{final_attrs}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_node_attrs(
    chart: Statechart, state: State, marks: _Marks, highlight: Highlight | None
) -> str:
    rows = [f"<tr><td><b>{_html(state.value)}</b></td></tr>"]
    activity = chart.activity(state)
    if activity is not None:  # UML's do-activity: runs while the session is here
        rows.append(
            f'<tr><td><font point-size="9"><i>do / {_html(activity.name)}</i></font></td></tr>'
        )
    internal = [e for e in chart.edges_from(state) if e.internal]
    if internal:
        rows.append("<hr/>")
        rows += [
            f'<tr><td align="left"><font point-size="9">{_html(_edge_text(e, chart))}</font>'
            "</td></tr>"
            for e in internal
        ]
    classes = ["state"]
    attrs: list[str] = []
    if state is chart.initial:
        classes.append("initial")
    if state in chart.final:
        classes.append("final")
        attrs.append("peripheries=2")
    if highlight is not None:
        if state is marks.current:
            classes.append("current")
            who = f"{highlight.key} is here" if highlight.key else "the session is here"
            rows.append(f'<tr><td><font point-size="9"><i>{_html(who)}</i></font></td></tr>')
            attrs += [f"fillcolor={_q(_CURRENT_FILL)}", f"color={_q(_CURRENT_LINE)}", "penwidth=3"]
        elif state in marks.visited:
            classes.append("visited")
            attrs += [f"fillcolor={_q(_VISITED_FILL)}", f"color={_q(_PATH)}", "penwidth=1.6"]
        else:
            attrs += [f"color={_q(_MUTED)}", f"fontcolor={_q('#607d8b')}"]
    label = '<<table border="0" cellborder="0" cellspacing="0" cellpadding="1">'
    label += "".join(rows) + "</table>>"
    tooltip = (
        state.value
        + (f"; do / {activity.name}: {activity.description}" if activity is not None else "")
        + (
            "; internal: " + "; ".join(f"{_edge_text(e, chart)}: {e.cause}" for e in internal)
            if internal
            else ""
        )
    )
    return ", ".join(
        [f"label={label}", f"class={_q(' '.join(classes))}", f"tooltip={_q(tooltip)}", *attrs]
    )


def _muted(edge: Edge, marks: _Marks) -> bool:
    # With a session drawn, only its path and the moves open to it now keep
    # their colours; the rest of the chart fades.
    return marks.current is not None and edge.source is not marks.current


def _dot_edge_attrs(chart: Statechart, edge: Edge, numbers: Sequence[int], *, muted: bool) -> str:
    text = _edge_text(edge, chart)
    # Break before the guards: long labels spread the layout sideways.
    head, sep, guards = text.partition(" [")
    label = f"{head}\n[{guards}" if sep else head
    classes = ["transition"]
    attrs: list[str] = []
    if edge.automatic:
        classes.append("automatic")
        attrs += ["style=dashed", f"color={_q(_AUTO)}", f"fontcolor={_q(_AUTO)}"]
    if edge.delay:
        classes.append("delayed")
        attrs += ["style=bold", f"color={_q(_TIMER)}", f"fontcolor={_q(_TIMER)}", "penwidth=2"]
    if numbers:
        classes.append("taken")
        label += "\n" + _steps_text(numbers)
        attrs += [f"color={_q(_PATH)}", f"fontcolor={_q(_PATH)}", "penwidth=2.4"]
    elif muted:
        attrs += [f"color={_q(_MUTED)}", f"fontcolor={_q(_MUTED)}"]
    guard_map = chart.guard_map
    why = [f"cause: {edge.cause}"]
    why += [f"{guard_map[g].label}: {_sentence(guard_map[g].description)}" for g in edge.guards]
    why += [f"not {guard_map[g].label}: {_sentence(guard_map[g].description)}" for g in edge.unless]
    if edge.delay:
        why.append(f"fires {edge.delay} seconds after {edge.source} is entered")
    return ", ".join(
        [
            f"label={_q(label)}",
            f"class={_q(' '.join(classes))}",
            f"tooltip={_q('; '.join(why))}",
            *_last_wins(attrs),
        ]
    )


def _dot_legend(chart: Statechart, highlight: Highlight | None) -> str:
    entries = [
        "solid arrow: caused by a room event or by the manager",
        "dashed purple arrow: automatic, fired as soon as its source state is entered",
        "bold orange arrow: delayed, fired by a timer",
        "[...]: guards that must hold; text inside a state: internal, no state change",
    ]
    if chart.activities:
        entries.append("do / name inside a state: an activity that runs while the session is there")
    if highlight is not None:
        entries.append(
            "blue arrows (step n): the session's recorded path; amber: where it is now;"
            " dark arrows out of it: what can happen next"
        )
    rows = [f"<tr><td><b>{_html(_title(chart, highlight))}</b></td></tr>"]
    rows += [
        f'<tr><td align="left"><font point-size="9">{_html(entry)}</font></td></tr>'
        for entry in entries
    ]
    table = '<<table border="0" cellborder="0" cellspacing="0" cellpadding="1">'
    return table + "".join(rows) + "</table>>"


def _sentence(text: str) -> str:
    return text.rstrip(". ")


def _last_wins(attrs: Iterable[str]) -> list[str]:
    # Later styling (delay over automatic, path over both) replaces earlier
    # values, keeping the first position so output order stays fixed.
    merged: dict[str, str] = {}
    for attr in attrs:
        name, _, value = attr.partition("=")
        merged[name] = value
    return [f"{name}={value}" for name, value in merged.items()]


def _dot_id(name: str) -> str:
    if _ID.fullmatch(name) and name.lower() not in _DOT_KEYWORDS:
        return name
    return _q(name)


def _q(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _html(text: str) -> str:
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("\n", " ")
    )
