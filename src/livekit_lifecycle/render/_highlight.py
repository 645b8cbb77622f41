"""A session drawn onto the chart, read from a manager, a session or a snapshot."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from livekit_lifecycle.manager import LifecycleManager
from livekit_lifecycle.session import Session, Transition
from livekit_lifecycle.statechart import State, Statechart

from ._errors import RenderError

__all__ = ["Highlight", "Source"]

Source: TypeAlias = "LifecycleManager | Session | Highlight | Mapping[str, Any]"
"""What a highlighted diagram can be drawn from: a live manager, one live session,
a ``manager.snapshot()`` (``{key: session_dict}``), one ``session.as_dict()``, or a
:class:`Highlight` already read from one of those."""


@dataclasses.dataclass(frozen=True, slots=True)
class Highlight:
    """One session drawn onto the chart: where it is, and the transitions it took.

    Attributes:
        key: The session key (printed on the diagram).
        state: The state the session is in; drawn as the current state.
        steps: Its recorded history, oldest first (at most ``history_limit``
            transitions, so a long-lived session's path may start mid-chart).
        sid: Participant sid of its latest connection.
        disconnect_reason: ``rtc.DisconnectReason`` name of its latest disconnect.
    """

    key: str
    state: State
    steps: tuple[Transition, ...] = ()
    sid: str = ""
    disconnect_reason: str | None = None

    @classmethod
    def from_session_dict(cls, data: Mapping[str, Any], *, key: str | None = None) -> Highlight:
        """Read one ``Session.as_dict()`` (as found in a snapshot or its JSON).

        Only ``state`` and ``history`` (``source``/``dest``/``trigger`` of each
        entry) are required; ``key`` defaults to ``data["key"]``.

        Raises:
            RenderError: naming the first field that is missing or wrong.
        """
        where = f"session {key!r}" if key is not None else "session"
        if not isinstance(data, Mapping):
            raise RenderError(f"{where}: expected an object, got {_kind(data)}")
        if key is None:
            key = _optional_str(data, "key", where) or ""
            where = f"session {key!r}" if key else where
        state = _state(data.get("state"), f"{where}: state")
        history = data.get("history", [])
        if not isinstance(history, list):
            raise RenderError(f"{where}: history must be a list, got {_kind(history)}")
        steps: list[Transition] = []
        for index, entry in enumerate(history):
            at = f"{where}: history[{index}]"
            if not isinstance(entry, Mapping):
                raise RenderError(f"{at}: expected an object, got {_kind(entry)}")
            trigger = entry.get("trigger")
            if not isinstance(trigger, str) or not trigger:
                raise RenderError(f"{at}.trigger: expected a trigger name, got {trigger!r}")
            when = entry.get("at", 0.0)
            if isinstance(when, bool) or not isinstance(when, (int, float)):
                raise RenderError(f"{at}.at: expected a time in seconds, got {when!r}")
            steps.append(
                Transition(
                    _state(entry.get("source"), f"{at}.source"),
                    _state(entry.get("dest"), f"{at}.dest"),
                    trigger,
                    _optional_str(entry, "sid", at) or "",
                    float(when),
                )
            )
        return cls(
            key=key,
            state=state,
            steps=tuple(steps),
            sid=_optional_str(data, "sid", where) or "",
            disconnect_reason=_optional_str(data, "disconnect_reason", where),
        )

    @classmethod
    def of(cls, source: Source, key: str | None = None) -> Highlight:
        """The highlight for session ``key`` of a manager, session or snapshot.

        ``key`` may be left out when ``source`` holds exactly one session.

        Raises:
            RenderError: unknown key, ambiguous or empty source, malformed snapshot.
        """
        if isinstance(source, LifecycleManager):
            # One session's as_dict(), not manager.snapshot(): O(its history), never all sessions.
            keys = list(source.sessions)
            key = _pick_key(key, keys, "the manager")
            session = source.get(key)
            assert session is not None
            return cls.from_session_dict(session.as_dict(), key=key)
        if isinstance(source, Highlight):
            if key is not None and key != source.key:
                raise RenderError(f"key {key!r} given with the session of {source.key!r}")
            return source
        if isinstance(source, Session):
            if key is not None and key != source.key:
                raise RenderError(f"key {key!r} given with the session of {source.key!r}")
            return cls.from_session_dict(source.as_dict(), key=source.key)
        if not isinstance(source, Mapping):
            raise RenderError(
                "expected a LifecycleManager, a Session, a snapshot {key: session}"
                f" or one session's as_dict(), got {_kind(source)}"
            )
        if _is_session_dict(source):
            own = source.get("key")
            if key is not None and isinstance(own, str) and own and key != own:
                raise RenderError(f"key {key!r} given with the session of {own!r}")
            return cls.from_session_dict(source, key=key)
        keys = list(source)
        bad = [k for k in keys if not isinstance(k, str)]
        if bad:
            raise RenderError(f"snapshot keys must be strings, got {bad[0]!r}")
        key = _pick_key(key, keys, "the snapshot")
        return cls.from_session_dict(source[key], key=key)

    def check(self, chart: Statechart) -> None:
        """Raise :class:`RenderError` unless this path is possible in ``chart``.

        Every step must be a transition of the chart, each step must start
        where the previous one ended, and the last must end in :attr:`state`.
        A snapshot written by another version of the chart fails here.
        """
        where = f"session {self.key!r}" if self.key else "session"
        if self.state not in chart.states:
            raise RenderError(f"{where}: state {self.state} is not in the {chart.name} chart")
        previous: Transition | None = None
        for index, step in enumerate(self.steps):
            if not chart.is_edge(step.source, step.dest, step.trigger):
                raise RenderError(
                    f"{where}: history[{index}] {step.source} --{step.trigger}--> {step.dest}"
                    f" is not a transition of the {chart.name} chart"
                    " (a snapshot from another version?)"
                )
            if previous is not None and previous.dest is not step.source:
                raise RenderError(
                    f"{where}: history[{index}] starts in {step.source}"
                    f" but history[{index - 1}] ended in {previous.dest}"
                )
            previous = step
        if previous is not None and previous.dest is not self.state:
            raise RenderError(
                f"{where}: state is {self.state} but its last transition ended in {previous.dest}"
            )


def _is_session_dict(data: Mapping[Any, Any]) -> bool:
    # A snapshot maps keys to dicts; one session maps "state" to a string.
    return isinstance(data.get("state"), str)


def _pick_key(key: str | None, keys: Sequence[str], what: str) -> str:
    listed = ", ".join(repr(k) for k in sorted(keys)) or "none"
    if key is None:
        if len(keys) == 1:
            return keys[0]
        if not keys:
            raise RenderError(f"{what} holds no sessions")
        raise RenderError(f"{what} holds {len(keys)} sessions; pick one with key= ({listed})")
    if not isinstance(key, str):
        raise RenderError(f"key must be a string, got {_kind(key)}")
    if key not in keys:
        raise RenderError(f"no session {key!r} in {what} (sessions: {listed})")
    return key


def _state(value: object, where: str) -> State:
    try:
        return State(value)
    except ValueError:
        names = ", ".join(s.value for s in State)
        raise RenderError(f"{where}: {value!r} is not a state ({names})") from None


def _optional_str(data: Mapping[str, Any], name: str, where: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise RenderError(f"{where}: {name} must be a string, got {_kind(value)}")
    return value


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__
