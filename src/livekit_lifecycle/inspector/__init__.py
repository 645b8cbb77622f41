"""A live statechart page for lifecycle sessions: ``livekit-lifecycle inspect --web``.

One page shows every session as a row (state, reconnects, cleanups, the
last transitions) next to the participant statechart, drawn from the chart
definition, with the selected session's state and last transition
highlighted. Changes are pushed to the page as server-sent events.

Where the sessions come from is a :class:`Source`: :class:`ManagerSource`
for a manager in this process (:func:`serve_inspector`),
:class:`RoomSource` for a live room joined as a hidden observer (what
``livekit-lifecycle watch`` does), :class:`StoreSource` for every room of a
session store across every worker (``inspect --store URL --web``). The
server binds 127.0.0.1 unless told otherwise; anywhere else every request
needs the token printed at start. Session ``data`` is shown only when asked
for. Needs aiohttp (the
``inspector`` extra); the diagram needs Graphviz's ``dot``.

See ``docs/observability.md``.
"""

from __future__ import annotations

from ._serve import serve_inspector
from ._server import Inspector, InspectorError
from ._source import (
    Change,
    ManagerSource,
    RoomSource,
    Snapshot,
    Source,
    StoreSource,
    session_dict,
)

__all__ = [
    "Change",
    "Inspector",
    "InspectorError",
    "ManagerSource",
    "RoomSource",
    "Snapshot",
    "Source",
    "StoreSource",
    "serve_inspector",
    "session_dict",
]
