"""The chart is consistent, and the runtime machine is built from it and nothing else."""

from __future__ import annotations

import itertools
from collections import deque
from pathlib import Path

import pytest

from livekit_lifecycle import PARTICIPANT_CHART, LifecycleManager, State
from livekit_lifecycle.statechart import Edge, Statechart

CHART = PARTICIPANT_CHART


def test_every_state_is_reachable_and_every_non_final_state_can_be_left() -> None:
    reachable = {CHART.initial}
    frontier = deque([CHART.initial])
    while frontier:
        for edge in CHART.edges_from(frontier.popleft()):
            if edge.target not in reachable:
                reachable.add(edge.target)
                frontier.append(edge.target)
    assert reachable == set(State)
    for state in set(State) - CHART.final:
        assert any(e.dest not in (None, state) for e in CHART.edges_from(state)), state


def test_removed_is_reachable_from_every_state() -> None:
    for start in State:
        seen, frontier = {start}, deque([start])
        while frontier:
            for edge in CHART.edges_from(frontier.popleft()):
                if edge.target not in seen:
                    seen.add(edge.target)
                    frontier.append(edge.target)
        assert State.REMOVED in seen, start


def test_state_values_are_the_public_names() -> None:
    assert [s.value for s in State] == [
        "connecting",
        "active",
        "disconnecting",
        "cleaned",
        "grace",
        "reconnected",
        "removed",
    ]


def test_the_runtime_machine_has_exactly_the_charts_edges() -> None:
    machine = LifecycleManager()._runtime.machine
    built = {
        (name, source, transition.dest)
        for name, event in machine.events.items()
        for source, transitions in event.transitions.items()
        for transition in transitions
    }
    expected = {
        (e.trigger, e.source.name, None if e.dest is None else e.dest.name) for e in CHART.edges
    }
    assert built == expected


def test_transient_states_always_leave_by_an_automatic_edge() -> None:
    for state in (State.CLEANED, State.RECONNECTED):
        assert CHART.automatic_triggers(state)
        assert all(e.automatic for e in CHART.edges_from(state))


def test_automatic_edges_of_a_state_exclude_each_other_and_cover_every_case() -> None:
    # So the order they are tried in is only a matter of cost (the common case
    # goes first) and a transient state is always left, whatever the guards say.
    for state in (State.CLEANED, State.RECONNECTED):
        edges = [e for e in CHART.edges_from(state) if e.automatic]
        names = sorted({g for e in edges for g in (*e.guards, *e.unless)})
        for values in itertools.product((False, True), repeat=len(names)):
            holds = dict(zip(names, values, strict=True))
            taken = [
                e
                for e in edges
                if all(holds[g] for g in e.guards) and not any(holds[g] for g in e.unless)
            ]
            assert len(taken) == 1, (state, holds, taken)


def test_a_chart_naming_an_unknown_guard_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown guard 'nope'"):
        Statechart(
            name="broken",
            states=tuple(State),
            initial=State.CONNECTING,
            final=frozenset({State.REMOVED}),
            guards=(),
            edges=(Edge("go", State.CONNECTING, State.ACTIVE, "test", guards=("nope",)),),
        )


def test_labels_show_guards_and_delays() -> None:
    guards = CHART.guard_map
    labels = {e.label(guards) for e in CHART.edges}
    assert "disconnect [current sid]" in labels
    assert "expire (after grace_period) [current timer]" in labels
    assert "release [not grace allowed, not new connection waiting]" in labels


def test_the_concepts_doc_embeds_the_current_chart_table() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "concepts.md").read_text()
    embedded = doc.split("<!-- chart-table:begin -->\n")[1].split("<!-- chart-table:end -->")[0]
    assert embedded == CHART.markdown_table(), (
        "docs/concepts.md is out of date: paste PARTICIPANT_CHART.markdown_table() between the"
        " chart-table markers"
    )
