"""What states and inputs mean is said once, by the chart; docs and runtime derive from it.

Each test follows one step of the "Adding a state or an input" guide in
``docs/concepts.md`` on a variant of the chart.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Any

import pytest

from livekit_lifecycle import PARTICIPANT_CHART, LifecycleManager, State
from livekit_lifecycle._events import InputKind
from livekit_lifecycle.statechart import ChartInput, Edge, StateGroup

CHART = PARTICIPANT_CHART
DOC = Path(__file__).parent.parent / "docs" / "concepts.md"


def test_the_concepts_doc_embeds_the_current_states_table() -> None:
    embedded = DOC.read_text().split("<!-- states-table:begin -->\n")[1]
    assert embedded.split("<!-- states-table:end -->")[0] == CHART.states_table(), (
        "docs/concepts.md is out of date: paste PARTICIPANT_CHART.states_table() between the"
        " states-table markers"
    )


def test_the_guide_is_in_the_concepts_doc() -> None:
    doc = DOC.read_text()
    assert "## Adding a state or an input" in doc
    for name in ("StateGroup", "ChartInput", "InputKind", "_actions.py", "categories"):
        assert f"`{name}" in doc, name


def test_every_state_has_a_meaning_and_every_trigger_a_category() -> None:
    assert set(CHART.meanings) == set(CHART.states)
    assert set(CHART.categories) == set(CHART.triggers)


def test_the_runtime_knows_exactly_the_charts_inputs() -> None:
    assert {kind.value for kind in InputKind} == {i.name for i in CHART.inputs}
    assert {e.input for e in CHART.edges if e.input is not None} == {i.name for i in CHART.inputs}


def test_the_runtime_dispatch_and_categories_come_from_the_chart() -> None:
    runtime = LifecycleManager()._runtime
    for inp in CHART.inputs:
        kind = InputKind(inp.name)
        assert runtime._dispatch[kind] == CHART.input_triggers()[inp.name]
        assert runtime.input_category(kind) == inp.category
        assert runtime._duplicate_in[kind] == inp.duplicate_in
    assert runtime.connected == CHART.group("connected")


def test_a_new_state_appears_in_the_tables_and_its_groups() -> None:
    # Step 1, on a copy: State is closed, so the variant's states come from their own enum.
    Variant = enum.Enum(  # type: ignore[misc]
        "Variant", {s.name: s.value for s in State} | {"HELD": "held"}, type=str
    )
    held: Any = Variant["HELD"]
    states: Any = tuple(Variant)
    groups = tuple(
        StateGroup(g.name, (*g.states, held) if g.name == "bound" else g.states, g.description)
        for g in CHART.groups
    )
    variant = dataclasses.replace(
        CHART,
        states=states,
        groups=groups,
        meanings={**CHART.meanings, held: "the user is on hold"},
        edges=(*CHART.edges, Edge("hold_call", State.ACTIVE, held, "the user holds")),
    )
    assert held in variant.group("bound")
    assert "| `held` | the user is on hold | `bound` |" in variant.states_table()
    with pytest.raises(ValueError, match="names states not in the chart"):
        dataclasses.replace(variant, states=CHART.states)


def test_a_new_input_fires_its_edges_and_is_refused_twice_from_one_state() -> None:
    # Steps 2 and 3: an input's edges and its table row derive from the chart.
    mute = ChartInput("track_muted", "track", "The participant muted a track.")
    variant = dataclasses.replace(
        CHART,
        inputs=(*CHART.inputs, mute),
        edges=(*CHART.edges, Edge("mute", State.ACTIVE, None, "muted", input="track_muted")),
        categories={**CHART.categories, "mute": "track"},
    )
    assert variant.input_triggers()["track_muted"] == {State.ACTIVE: "mute"}
    assert "| `track_muted` | `mute` | track | - |" in variant.states_table()
    assert variant.category("mute") == "track"
    with pytest.raises(ValueError, match="fires both"):
        dataclasses.replace(
            variant,
            edges=(*variant.edges, Edge("mute2", State.ACTIVE, None, "x", input="track_muted")),
        )
    with pytest.raises(ValueError, match="unknown input"):
        dataclasses.replace(
            CHART, edges=(*CHART.edges, Edge("mute", State.ACTIVE, None, "x", input="nope"))
        )
    with pytest.raises(ValueError, match="categories for triggers"):
        dataclasses.replace(CHART, categories={"nope": "track"})
