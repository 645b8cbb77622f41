"""The chart is the program: a copy of the chart with a new state runs, is drawn and is
model-tested, with no change anywhere else.

The variant adds ``lingering`` after ``grace``: the expiry of the grace window leads
there instead of ``removed``; ``lingering`` runs an activity (``farewell``, implemented
by the application) and leaves for ``removed`` after ``cleanup_timeout`` (a delayed
edge the runtime arms from the chart's ``delay``). ``State`` is the default chart's
closed enum: a variant's new states are members of an enum of its own (docs/concepts.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from typing import Any

import pytest

from livekit_lifecycle import PARTICIPANT_CHART, LifecycleConfig, LifecycleManager, Session, State
from livekit_lifecycle.invariants import InvariantChecker, check_manager, raise_for
from livekit_lifecycle.render import to_dot, to_mermaid
from livekit_lifecycle.statechart import Activity, Edge, Statechart
from livekit_lifecycle.testing import RoomDriver
from livekit_lifecycle.testing.virtual_time import run

from .test_model_based import Plan, edge_id, execute, missing_drivers, plan_paths, stimuli_for

CHART = PARTICIPANT_CHART


class Extra(str, enum.Enum):
    """The variant's own states."""

    LINGERING = "lingering"


LINGERING: Any = Extra.LINGERING  # typed as the chart's State: it is one of its states


def _variant() -> Statechart:
    edges = tuple(
        dataclasses.replace(edge, dest=LINGERING) if edge.trigger == "expire" else edge
        for edge in CHART.edges
    )
    return dataclasses.replace(
        CHART,
        name="lingering",
        states=(*CHART.states, LINGERING),
        edges=(
            *edges,
            Edge("farewell_done", LINGERING, None, "the farewell was said"),
            Edge(
                "forget",
                LINGERING,
                State.REMOVED,
                "the lingering time ran out",
                delay="cleanup_timeout",
            ),
            Edge("shutdown", LINGERING, State.REMOVED, "aclose()", input="shutdown"),
        ),
        activities=(
            *CHART.activities,
            Activity("farewell", LINGERING, "farewell_done", "say goodbye to the other side"),
        ),
        meanings={**CHART.meanings, LINGERING: "the window ran out; saying goodbye"},
        categories={**CHART.categories, "farewell_done": "session", "forget": "session"},
    )


VARIANT = _variant()
NEW = [e for e in VARIANT.edges if LINGERING in (e.source, e.dest)]


def test_it_runs() -> None:
    async def main() -> None:
        farewells: list[str] = []

        async def farewell(session: Session) -> None:
            await asyncio.sleep(0.5)
            farewells.append(session.key)

        manager = LifecycleManager(
            LifecycleConfig(grace_period=2.0, cleanup_timeout=3.0),
            chart=VARIANT,
            activities={"farewell": farewell},
        )
        checker = InvariantChecker(manager, VARIANT)
        async with RoomDriver("variant") as driver, manager:
            manager.attach(driver.room)
            driver.connect("alice", active=True)
            driver.disconnect("alice")
            session = await manager.wait_for("alice", "lingering", 5)
            assert farewells == []
            await manager.idle()  # the activity ran; the delayed edge is still armed
            assert farewells == ["alice"] and session.state is LINGERING
            raise_for(check_manager(manager, VARIANT))
            await manager.wait_for("alice", State.REMOVED, 5)
            # farewell_done is internal: run, not recorded as a change of state.
            assert [t.trigger for t in session.history][-3:] == ["hold", "expire", "forget"]
        checker.raise_if_violated()

    run(main)


def test_it_is_drawn() -> None:
    dot = to_dot(VARIANT)
    assert "<b>lingering</b>" in dot and "do / farewell" in dot
    assert "forget (after cleanup_timeout)" in dot
    mermaid = to_mermaid(VARIANT)
    assert "grace --> lingering : expire (after grace_period) [current timer]" in mermaid
    assert "lingering : do / farewell" in mermaid
    assert "lingering --> removed : forget (after cleanup_timeout)" in mermaid
    assert "| `lingering` | the window ran out; saying goodbye | - |" in VARIANT.states_table()


def test_every_new_edge_has_a_path_and_a_driver() -> None:
    assert missing_drivers(VARIANT, stimuli_for(VARIANT)) == []
    plans = plan_paths(VARIANT, stimuli_for(VARIANT))
    assert all(plans.get(edge) for edge in NEW), [edge_id(e) for e in NEW if not plans.get(e)]


def _new_edge_plans() -> list[Any]:
    plans = plan_paths(VARIANT, stimuli_for(VARIANT))
    return [
        pytest.param(plan, id=f"{edge_id(edge)}[{plan.steps[-1].stimulus.name}]")
        for edge in NEW
        for plan in plans.get(edge, [])
    ]


@pytest.mark.parametrize("plan", _new_edge_plans())
def test_it_is_model_tested(plan: Plan) -> None:
    fired = run(lambda: execute(plan, VARIANT))
    assert plan.edge in fired
