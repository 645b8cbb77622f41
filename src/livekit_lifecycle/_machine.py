"""Builds the runtime ``transitions`` machine from the statechart data.

One synchronous ``transitions.Machine`` serves every session of a manager.
Sessions are never ``add_model``-ed: a trigger is fired with
``machine.events[name].trigger(session, ...)``, which costs O(1) per session
instead of ``add_model``'s list append, ~20 bound partials per model and
O(n) ``remove_model``. The machine is synchronous on purpose: asynchronous
work (cleanup) happens between two transitions in the manager's per-session
queue, so no later trigger can ever cancel it, which is exactly what
``AsyncMachine`` would do by default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from transitions import Machine

from .statechart import Edge, State, Statechart

EventData = Any
"""``transitions.EventData`` (the package ships no type hints)."""

Guard = Callable[[EventData], bool]
Effect = Callable[[EventData], None]


def build_machine(
    chart: Statechart,
    *,
    guards: Mapping[str, Guard],
    effects: Mapping[str, Effect],
    on_enter: Mapping[State, Effect],
    on_exit: Mapping[State, Effect],
    after_state_change: Effect,
) -> Machine:
    """A model-less machine whose edges, guards and callbacks all come from ``chart``.

    ``effects`` are keyed by trigger and run before the state changes (so
    listeners of the change already see their result); ``on_enter``/``on_exit``
    by state. ``after_state_change`` runs after every change of state, not
    after internal edges.
    """
    missing = {g.name for g in chart.guards} - set(guards)
    if missing:
        raise ValueError(f"no implementation for guards: {sorted(missing)}")
    unknown = set(effects) - set(chart.triggers)
    if unknown:
        raise ValueError(f"effects for triggers the chart does not have: {sorted(unknown)}")
    machine = Machine(
        model=None,
        states=list(chart.states),
        initial=chart.initial,
        transitions=[_edge_spec(edge, guards, effects) for edge in chart.edges],
        auto_transitions=False,
        send_event=True,
        model_attribute="_state",
        after_state_change=[_only_on_change(after_state_change)],
    )
    for state, effect in on_enter.items():
        machine.get_state(state).on_enter.append(effect)
    for state, effect in on_exit.items():
        machine.get_state(state).on_exit.append(effect)
    return machine


def _edge_spec(
    edge: Edge, guards: Mapping[str, Guard], effects: Mapping[str, Effect]
) -> dict[str, Any]:
    effect = effects.get(edge.trigger)
    return {
        "trigger": edge.trigger,
        "source": edge.source,
        "dest": edge.dest,
        "conditions": [guards[name] for name in edge.guards],
        "unless": [guards[name] for name in edge.unless],
        "before": [] if effect is None else [effect],
    }


def _only_on_change(callback: Effect) -> Effect:
    def after(event_data: EventData) -> None:
        if event_data.transition.dest is not None:
            callback(event_data)

    return after
