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
from transitions.core import Event, Transition
from transitions.core import EventData as _EventData

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
    machine = _LeanMachine(
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
    machine.freeze()
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


class _LeanTransition(Transition):
    """``Transition.execute`` without what costs and is never needed here.

    transitions logs each step of a trigger (~15 logger calls, even with
    logging off) and resolves every callback by name first. ``build_machine``
    only installs callables, so this calls the same callback lists, read live,
    in the same order, directly: prepare, conditions, before_state_change +
    before, exit, state set, enter (+ on_final), after + after_state_change.
    (``type: ignore[operator]``: transitions types callbacks as ``str |
    callable``; :meth:`_LeanMachine.freeze` checked there are no names.)
    """

    def execute(self, event_data: EventData) -> bool:
        machine: _LeanMachine = event_data.machine
        for callback in self.prepare:
            callback(event_data)  # type: ignore[operator]
        for condition in self.conditions:
            if condition.func(event_data) != condition.target:  # type: ignore[operator]
                return False
        for callback in machine._before_state_change:
            callback(event_data)  # type: ignore[operator]
        for callback in self.before:
            callback(event_data)  # type: ignore[operator]
        if self.dest:  # None for an internal edge: no state change
            for callback in machine.states[self.source].on_exit:
                callback(event_data)  # type: ignore[operator]
            dest, value = machine.lean_dests[self.dest]
            setattr(event_data.model, machine.model_attribute, value)
            event_data.state = dest
            for callback in dest.on_enter:
                callback(event_data)
            if dest.final:
                for callback in machine.on_final:
                    callback(event_data)
        for callback in self.after:
            callback(event_data)  # type: ignore[operator]
        for callback in machine._after_state_change:
            callback(event_data)  # type: ignore[operator]
        return True


class _LeanEvent(Event):
    """``Event.trigger`` for an unqueued machine without exception/finalize hooks.

    For such a machine (``build_machine`` makes one) this gives the result of
    transitions' ``trigger`` -> ``Machine._process`` -> ``_trigger`` ->
    ``_process`` chain: the source state's transitions are tried in order and
    the first that executes wins; exceptions propagate, as they do there
    without ``on_exception``. A trigger the state has no transition for is
    handed to transitions itself (MachineError, or False when ignored).
    """

    def trigger(self, model: object, *args: Any, **kwargs: Any) -> bool:
        machine: _LeanMachine = self.machine  # type: ignore[assignment]
        state, name = machine.lean_states[getattr(model, machine.model_attribute)]
        transitions = self.transitions.get(name)
        if not transitions:
            return super().trigger(model, *args, **kwargs)
        event_data = _EventData(state, self, machine, model, args=args, kwargs=kwargs)
        for callback in machine._prepare_event:
            callback(event_data)  # type: ignore[operator]
        for transition in transitions:
            event_data.transition = transition
            if transition.execute(event_data):
                event_data.result = True
                break
        return bool(event_data.result)


class _LeanMachine(Machine):
    """A ``Machine`` whose triggers skip per-call logging and callback name resolution.

    Callbacks may be added after :meth:`freeze` (they are read live), as
    long as they are callables, never names.
    """

    event_cls = _LeanEvent
    transition_cls = _LeanTransition

    lean_states: dict[Any, tuple[Any, str]]
    """State value (what the model attribute holds) -> (transitions State, its name)."""
    lean_dests: dict[str, tuple[Any, Any]]
    """State name -> (transitions State, its value)."""

    def freeze(self) -> None:
        """Index the states; refuse what only transitions' general code path handles.

        Call it once every state is added.
        """
        if self.has_queue or self.on_exception or self.finalize_event or not self.send_event:
            raise ValueError(
                "a lean machine sends EventData, has no queue, no exception/finalize callbacks"
            )
        callbacks = [*self.prepare_event, *self.before_state_change, *self.after_state_change]
        callbacks += self.on_final
        for state in self.states.values():
            callbacks += [*state.on_enter, *state.on_exit]
        for event in self.events.values():
            for transitions in event.transitions.values():
                for transition in transitions:
                    callbacks += [*transition.prepare, *transition.before, *transition.after]
                    callbacks += [condition.func for condition in transition.conditions]
        for callback in callbacks:
            if not callable(callback):
                raise TypeError(f"a lean machine calls callbacks directly, got {callback!r}")
        self.lean_states = {state.value: (state, name) for name, state in self.states.items()}
        self.lean_dests = {name: (state, state.value) for name, state in self.states.items()}
