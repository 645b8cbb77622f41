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

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from transitions import Machine
from transitions.core import Event, Transition
from transitions.core import EventData as _EventData

from .statechart import Edge, State, Statechart

__all__ = ["EventData", "build_machine"]

EventData = Any
"""``transitions.EventData`` (the package ships no type hints)."""

Guard = Callable[[EventData], bool]
Effect = Callable[[EventData], None]


def build_machine(
    chart: Statechart,
    *,
    guards: Mapping[str, Guard],
    effects: Mapping[str, Effect],
    on_enter: Mapping[State, Sequence[Effect]],
    on_exit: Mapping[State, Sequence[Effect]],
    after_state_change: Effect,
) -> Machine:
    """A model-less machine whose edges, guards and callbacks all come from ``chart``.

    ``effects`` are keyed by trigger and run before the state changes (so
    listeners of the change already see their result); ``on_enter``/``on_exit``
    by state. ``after_state_change`` runs after every change of state, not
    after internal edges: it is the last ``on_enter`` callback of every state.
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
    )
    for state, entered in on_enter.items():
        machine.get_state(state).on_enter.extend(entered)
    for state, left in on_exit.items():
        machine.get_state(state).on_exit.extend(left)
    for state in chart.states:
        machine.get_state(state).on_enter.append(after_state_change)
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


class _LeanTransition(Transition):
    """``Transition.execute`` without what costs and is never needed here.

    transitions logs each step of a trigger (~15 logger calls, even with
    logging off) and resolves every callback by name first. ``build_machine``
    only installs callables, so :meth:`_LeanMachine.freeze` compiles each
    transition's callback lists into one plan, in transitions' order:
    prepare, conditions, before_state_change + before, exit, state set,
    enter (+ on_final), after + after_state_change. ``execute`` then calls
    the plan directly.
    """

    lean_plan: _Plan | None = None
    """Set by :meth:`_LeanMachine.freeze`; ``None`` until then."""

    def execute(self, event_data: EventData) -> bool:
        plan = self.lean_plan
        if plan is None:
            raise RuntimeError("a lean machine's transitions run only after freeze()")
        for callback in plan.prepare:
            callback(event_data)
        for condition, target in plan.conditions:
            if condition(event_data) != target:
                return False
        for callback in plan.before:
            callback(event_data)
        if plan.dest is not None:  # None for an internal edge: no state change
            setattr(event_data.model, plan.attribute, plan.value)
            event_data.state = plan.dest
        for callback in plan.after:
            callback(event_data)
        return True


class _Plan(NamedTuple):
    """One transition's callbacks, flattened in the order ``Transition.execute`` calls them."""

    prepare: tuple[Callable[[EventData], Any], ...]
    conditions: tuple[tuple[Callable[[EventData], Any], bool], ...]
    before: tuple[Callable[[EventData], Any], ...]
    """before_state_change, the transition's before, the source state's on_exit."""
    dest: Any
    """The destination's transitions ``State``; ``None`` for an internal edge."""
    attribute: str
    value: Any
    """What the model attribute holds in the destination state."""
    after: tuple[Callable[[EventData], Any], ...]
    """The destination's on_enter (+ on_final), the transition's after, after_state_change."""


class _LeanEvent(Event):
    """``Event.trigger`` for an unqueued machine without exception/finalize hooks.

    For such a machine (``build_machine`` makes one) this gives the result of
    transitions' ``trigger`` -> ``Machine._process`` -> ``_trigger`` ->
    ``_process`` chain: the source state's transitions are tried in order and
    the first that executes wins; exceptions propagate, as they do there
    without ``on_exception``. A trigger the state has no transition for is
    handed to transitions itself (MachineError, or False when ignored).
    """

    lean_sources: dict[Any, tuple[Any, list[Transition]]]
    """State value -> (transitions State, the transitions from it), set by ``freeze``."""

    def trigger(self, model: object, *args: Any, **kwargs: Any) -> bool:
        machine: _LeanMachine = self.machine  # type: ignore[assignment]
        source = self.lean_sources.get(getattr(model, machine.model_attribute))
        if source is None:
            return super().trigger(model, *args, **kwargs)
        event_data = _EventData(source[0], self, machine, model, args=args, kwargs=kwargs)
        for callback in machine.lean_prepare_event:
            callback(event_data)
        for transition in source[1]:
            event_data.transition = transition
            if transition.execute(event_data):
                event_data.result = True
                return True
        return False


class _LeanMachine(Machine):
    """A ``Machine`` whose triggers skip per-call logging and callback name resolution.

    :meth:`freeze` compiles the callback lists: a callback, state or
    transition added afterwards is only seen after another ``freeze()``.
    """

    event_cls = _LeanEvent
    transition_cls = _LeanTransition

    lean_prepare_event: tuple[Callable[[EventData], Any], ...] = ()

    def freeze(self) -> None:
        """Compile every transition's callbacks; refuse what only transitions' general path handles.

        Call it once every state, transition and callback is added (again
        after adding more).
        """
        if self.has_queue or self.on_exception or self.finalize_event or not self.send_event:
            raise ValueError(
                "a lean machine sends EventData, has no queue, no exception/finalize callbacks"
            )
        self.lean_prepare_event = _callables(self.prepare_event)
        for event in self.events.values():
            lean_event: _LeanEvent = event  # type: ignore[assignment]
            lean_event.lean_sources = {}
            for name, transitions in event.transitions.items():
                if not transitions:
                    continue
                state = self.states[name]
                lean_event.lean_sources[state.value] = (state, transitions)
                for transition in transitions:
                    if not isinstance(transition, _LeanTransition):
                        raise TypeError(f"a lean machine runs only lean transitions: {transition}")
                    transition.lean_plan = self._plan(transition)

    def _plan(self, transition: _LeanTransition) -> _Plan:
        source = self.states[transition.source]
        dest = None if transition.dest is None else self.states[transition.dest]
        after = [*transition.after, *self.after_state_change]
        before = [*self.before_state_change, *transition.before]
        if dest is not None:
            before += source.on_exit
            after = [*dest.on_enter, *(self.on_final if dest.final else ()), *after]
        return _Plan(
            prepare=_callables(transition.prepare),
            conditions=tuple(
                (_callables([condition.func])[0], condition.target)
                for condition in transition.conditions
            ),
            before=_callables(before),
            dest=dest,
            attribute=self.model_attribute,
            value=None if dest is None else dest.value,
            after=_callables(after),
        )


def _callables(callbacks: Iterable[Any]) -> tuple[Callable[[EventData], Any], ...]:
    """``callbacks`` as a tuple; a lean machine calls them directly, so names are refused."""
    checked = tuple(callbacks)
    for callback in checked:
        if not callable(callback):
            raise TypeError(f"a lean machine calls callbacks directly, got {callback!r}")
    return checked
