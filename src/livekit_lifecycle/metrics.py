"""Prometheus metrics of lifecycle managers (``livekit_lifecycle_*``), with prometheus-client.

Opt in per manager with :func:`enable_metrics` ``(manager)``. Every
manager of a process adds to the same series of one registry (the default
one unless another is given): a worker running one manager per job exports
one set of series, optionally labelled by room.

Nothing is computed per event beyond one dict increment per transition.
Where each series comes from:

=================================================  =========  ===================================
``livekit_lifecycle_sessions{state}``              gauge      ``manager.sessions``, read at scrape
``livekit_lifecycle_transitions_total{trigger}``   counter    ``state_changed`` listener
``livekit_lifecycle_events_ignored_total{reason}`` counter    ``manager.stats``, read at scrape
``livekit_lifecycle_cleanups_total{outcome}``      counter    listener + cleanup failure hook
``livekit_lifecycle_cleanup_duration_seconds``     histogram  listener: disconnect → cleaned
``livekit_lifecycle_reconnects_total``             counter    listener (``reconnect`` + ``rejoin``)
``livekit_lifecycle_takeovers_total``              counter    listener (``takeover``)
``livekit_lifecycle_grace_expired_total``          counter    listener (``expire``)
``livekit_lifecycle_shutdown_duration_seconds``    histogram  the manager's shutdown hooks
=================================================  =========  ===================================

The hooks are the manager's one observability seam
(:mod:`livekit_lifecycle._observer`). With ``PROMETHEUS_MULTIPROC_DIR`` set
(livekit-agents' job processes), the same numbers are also copied into
prometheus-client's multiprocess files every second and at shutdown.

See ``docs/observability.md`` for their meanings and PromQL examples.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ._observer import Observer
from .statechart import PARTICIPANT_CHART

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from .manager import LifecycleManager
    from .session import Session, Transition

__all__ = [
    "CLEANUP_BUCKETS",
    "IGNORED_REASONS",
    "METRIC_NAMES",
    "SHUTDOWN_BUCKETS",
    "enable_metrics",
]

PREFIX = "livekit_lifecycle"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROCESS_FLUSH_INTERVAL = 1.0
"""Seconds between two copies of the counts into prometheus-client's multiprocess files."""

IGNORED_REASONS: dict[str, str] = {
    "duplicate": "ignored_duplicate",
    "stale_sid": "ignored_stale",
    "invalid": "ignored_invalid",
    "untracked_kind": "ignored_kind",
    "after_close": "ignored_after_close",
    "rejected_input": "rejected_input",
}
"""``reason`` label of ``events_ignored_total`` -> the ``manager.stats`` counter it reads."""

OUTCOMES = ("ok", "error", "timeout")
CLEANUP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SHUTDOWN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

METRIC_NAMES = tuple(
    f"{PREFIX}_{name}"
    for name in (
        "sessions",
        "transitions_total",
        "events_ignored_total",
        "cleanups_total",
        "cleanup_duration_seconds",
        "reconnects_total",
        "takeovers_total",
        "grace_expired_total",
        "shutdown_duration_seconds",
    )
)
"""Every series name as exposed (counters with their ``_total``)."""

_TRIGGERS = PARTICIPANT_CHART.triggers
_STATES = tuple(state.value for state in PARTICIPANT_CHART.states)


def enable_metrics(
    manager: LifecycleManager,
    registry: CollectorRegistry | None = None,
    *,
    room_label: bool = False,
) -> None:
    """Export ``manager``'s metrics on ``registry`` (prometheus-client's default when ``None``).

    Idempotent per manager and registry. All managers enabled on one
    registry share its series, so they must agree on ``room_label``.

    Raises:
        ImportError: prometheus-client is not installed.
        ValueError: ``room_label`` differs from the managers already on ``registry``.
    """
    try:
        import prometheus_client
    except ImportError:
        raise ImportError(
            "livekit-lifecycle metrics need prometheus-client:"
            " pip install 'livekit-lifecycle[metrics]'"
        ) from None
    if registry is None:
        registry = prometheus_client.REGISTRY
    collector: _LifecycleCollector | None = getattr(registry, _COLLECTOR_ATTRIBUTE, None)
    if collector is None:
        collector = _LifecycleCollector(room_label)
        registry.register(collector)
        if registry is prometheus_client.REGISTRY and os.environ.get(MULTIPROCESS_ENV):
            collector.export_to_files()
        setattr(registry, _COLLECTOR_ATTRIBUTE, collector)
    elif collector.room_label != room_label:
        raise ValueError(
            f"this registry already exports livekit_lifecycle metrics with"
            f" room_label={collector.room_label}; every manager on it must use the same"
        )
    collector.add(manager)


_COLLECTOR_ATTRIBUTE = "_livekit_lifecycle_collector"
"""Where a registry keeps our one collector: a registry accepts each series name once, so
every manager on it shares that collector. Kept on the registry, not in this module: it
lives and dies with the registry, and this module holds no state of its own."""


class _Histogram:
    """A Prometheus histogram in plain numbers: observed on the loop, read at scrape."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def add(self, other: _Histogram) -> None:
        for index, count in enumerate(other.counts):
            self.counts[index] += count
        self.total += other.total

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class _Counts:
    """Every counter and histogram of one manager (or of the managers already retired)."""

    __slots__ = ("cleanup_duration", "cleanups", "ignored", "shutdown_duration", "transitions")

    def __init__(self) -> None:
        self.transitions = dict.fromkeys(_TRIGGERS, 0)
        self.ignored = dict.fromkeys(IGNORED_REASONS, 0)
        self.cleanups = dict.fromkeys(OUTCOMES, 0)
        self.cleanup_duration = _Histogram(CLEANUP_BUCKETS)
        self.shutdown_duration = _Histogram(SHUTDOWN_BUCKETS)

    def add(self, other: _Counts) -> None:
        for mine, theirs in (
            (self.transitions, other.transitions),
            (self.ignored, other.ignored),
            (self.cleanups, other.cleanups),
        ):
            for label, value in list(theirs.items()):
                mine[label] = mine.get(label, 0) + value
        self.cleanup_duration.add(other.cleanup_duration)
        self.shutdown_duration.add(other.shutdown_duration)


class _ManagerMetrics(Observer):
    """One manager's share: its listener, its hooks, its counts. Holds the manager weakly.

    ``on_gone(self)`` is called once the manager has shut down or was
    garbage-collected without a shutdown, whichever comes first.
    """

    __slots__ = (
        "_failed",
        "_manager",
        "_on_gone",
        "_shutdown_started",
        "_transitions",
        "counts",
        "retired",
        "room",
    )

    def __init__(
        self, manager: LifecycleManager, on_gone: Callable[[_ManagerMetrics], None]
    ) -> None:
        self._on_gone = on_gone
        self._manager = weakref.ref(manager, lambda _: self._retire())
        self.counts = _Counts()
        self._transitions = self.counts.transitions
        self.retired = False
        self.room = ""
        self._failed: dict[Session, str] = {}
        """Runs in progress with a failed callback -> "timeout" if one timed out, else "error"."""
        self._shutdown_started = 0.0

    @property
    def manager(self) -> LifecycleManager | None:
        return self._manager()

    def on_transition(self, session: Session, transition: Transition) -> None:
        """The ``state_changed`` listener: one dict increment per transition.

        Reconnects, takeovers and expired grace windows are the counts of
        their triggers, so they are derived when Prometheus scrapes. A cleanup
        run lasts from the session's disconnect to its ``cleanup_done``.
        """
        transitions = self._transitions
        trigger = transition.trigger
        if trigger in transitions:
            transitions[trigger] += 1
        else:  # a trigger of a chart other than the participant chart
            transitions[trigger] = 1
        if trigger == "cleanup_done":
            outcome = self._failed.pop(session, "ok") if self._failed else "ok"
            self._count_cleanup(session, transition.at, outcome)

    def _count_cleanup(self, session: Session, now: float, outcome: str) -> None:
        started = session.disconnected_at
        self.counts.cleanups[outcome] += 1
        # Wall-clock times (Transition.at): a clock step back must not make it negative.
        self.counts.cleanup_duration.observe(0.0 if started is None else max(now - started, 0.0))

    def note_room(self) -> None:
        if not self.room:
            manager = self._manager()
            room = None if manager is None else manager.room
            if room is not None:
                self.room = room.name

    # ---------------------------------------------------------------- manager hooks

    def cleanup_failed(self, session: Session, timed_out: bool) -> None:
        if self._failed.get(session) != "timeout":
            self._failed[session] = "timeout" if timed_out else "error"

    def shutdown_started(self, sessions: int) -> None:
        self.note_room()  # before the shutdown detaches the room
        self._shutdown_started = time.perf_counter()

    def shutdown_ended(self, timed_out: bool) -> None:
        # Runs the shutdown deadline cut short never reached cleanup_done.
        now = time.time()
        for session in self._failed:
            self._count_cleanup(session, now, "timeout")
        self._failed.clear()
        self.counts.shutdown_duration.observe(time.perf_counter() - self._shutdown_started)
        manager = self._manager()
        if manager is not None:
            self.read_stats(manager)
        self._retire()

    def _retire(self) -> None:
        if not self.retired:
            self.retired = True
            self._on_gone(self)

    def read_stats(self, manager: LifecycleManager) -> None:
        stats = manager.stats
        ignored = self.counts.ignored
        for reason, stat in IGNORED_REASONS.items():
            ignored[reason] = stats.get(stat, 0)


class _LifecycleCollector:
    """The registry's collector: sums every manager's counts when Prometheus scrapes.

    Scrapes run on the scraping server's thread while managers change on
    their loop. A manager's own counts are read in single C-level
    operations (``list(...)``, ``dict(...)``), which the GIL keeps whole; the
    collector's lists (managers, counts of managers gone) change under a lock.
    """

    def __init__(self, room_label: bool) -> None:
        self.room_label = room_label
        self._files: _FileExport | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._lock = threading.RLock()  # re-entrant: a manager may be collected mid-scrape
        self._members: list[_ManagerMetrics] = []
        self._past: dict[str, _Counts] = {}
        """Counts of managers that are gone, per room label ("" without room labels)."""

    def add(self, manager: LifecycleManager) -> None:
        with self._lock:
            for member in self._members:
                if member.manager is manager:
                    return
            member = _ManagerMetrics(manager, self._retire)
            self._members.append(member)
        manager.on("state_changed", member.on_transition)
        manager._add_observer(member)
        member.note_room()  # the room, if already attached
        self._schedule_flush()

    def _retire(self, member: _ManagerMetrics) -> None:
        # A manager that is gone: its counts join the past, so that counters never
        # go down; under a room label they are reported at the next scrape, then dropped.
        with self._lock:
            if member in self._members:
                self._members.remove(member)
                label = member.room if self.room_label else ""
                self._past.setdefault(label, _Counts()).add(member.counts)
        self.flush()

    # ------------------------------------------------------------ multiprocess mode

    def export_to_files(self) -> None:
        """Also copy the counts into prometheus-client's multiprocess files, periodically.

        With ``PROMETHEUS_MULTIPROC_DIR`` set (livekit-agents'
        ``prometheus_multiproc_dir``), the scraped process reads every
        process's files, not their registries: a job process's collector
        would never be seen. So its numbers are written there too, every
        :data:`MULTIPROCESS_FLUSH_INTERVAL` seconds and when a manager
        shuts down, off the event path.
        """
        self._files = _FileExport()

    def flush(self) -> None:
        if self._files is not None:
            self._files.write(self.collect())

    def _schedule_flush(self) -> None:
        if self._files is None or self._flush_timer is not None:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: flushed at shutdown
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(MULTIPROCESS_FLUSH_INTERVAL, self._tick)

    def _tick(self) -> None:
        self._flush_timer = None
        self.flush()
        if self._members:
            self._schedule_flush()

    def describe(self) -> Iterable[Metric]:
        # Names only: lets the registry check for clashes without a scrape.
        return self._families({}, [])

    def collect(self) -> Iterable[Metric]:
        totals: dict[str, _Counts] = {}
        sessions: list[tuple[str, list[Session]]] = []
        with self._lock:
            for member in list(self._members):
                manager = member.manager
                if manager is None:
                    continue  # collected: its weakref callback retires it
                member.read_stats(manager)
                member.note_room()
                label = member.room if self.room_label else ""
                sessions.append((label, list(manager.sessions.values())))
                totals.setdefault(label, _Counts()).add(member.counts)
            for label, counts in self._past.items():
                totals.setdefault(label, _Counts()).add(counts)
            if self.room_label:
                # A room's series stay while it has a live manager, plus one scrape.
                live = {member.room for member in self._members}
                self._past = {label: c for label, c in self._past.items() if label in live}
        return self._families(totals, sessions)

    def _families(
        self, totals: dict[str, _Counts], sessions: list[tuple[str, list[Session]]]
    ) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        room = ["room"] if self.room_label else []
        if not totals:
            totals = {"": _Counts()} if not self.room_label else {}

        gauge = GaugeMetricFamily(
            f"{PREFIX}_sessions", "Sessions per statechart state.", labels=[*room, "state"]
        )
        per_state: dict[str, dict[str, int]] = {
            label: dict.fromkeys(_STATES, 0) for label in totals
        }
        for label, members in sessions:
            counts = per_state.setdefault(label, dict.fromkeys(_STATES, 0))
            for session in members:
                counts[session.state.value] += 1
        for label, counts in per_state.items():
            for state, value in counts.items():
                gauge.add_metric([*self._room(label), state], value)
        yield gauge

        def counter(name: str, doc: str, label: str | None, pick: Any) -> Metric:
            family = CounterMetricFamily(
                f"{PREFIX}_{name}", doc, labels=[*room, *([label] if label else [])]
            )
            for room_name, counts in totals.items():
                picked = pick(counts)
                if label is None:
                    family.add_metric(self._room(room_name), picked)
                else:
                    for value, count in picked.items():
                        family.add_metric([*self._room(room_name), value], count)
            return family

        yield counter(
            "transitions", "State changes, per chart trigger.", "trigger", lambda c: c.transitions
        )
        yield counter(
            "events_ignored",
            "Room events that changed nothing, per reason.",
            "reason",
            lambda c: c.ignored,
        )
        yield counter(
            "cleanups",
            "Cleanup runs (one per ended connection), per outcome.",
            "outcome",
            lambda c: c.cleanups,
        )
        yield counter(
            "reconnects",
            "New connections bound to an existing session (in its grace window or by takeover).",
            None,
            lambda c: c.transitions.get("reconnect", 0) + c.transitions.get("rejoin", 0),
        )
        yield counter(
            "takeovers",
            "New connections that replaced a live one (a second tab, a refresh seen late).",
            None,
            lambda c: c.transitions.get("takeover", 0),
        )
        yield counter(
            "grace_expired",
            "Grace windows that ran out.",
            None,
            lambda c: c.transitions.get("expire", 0),
        )
        for name, doc, shutdown in (
            (
                "cleanup_duration_seconds",
                "Duration of one cleanup run (every callback of one ended connection).",
                False,
            ),
            ("shutdown_duration_seconds", "Duration of one graceful shutdown (aclose).", True),
        ):
            histogram = HistogramMetricFamily(f"{PREFIX}_{name}", doc, labels=room)
            for room_name, room_counts in totals.items():
                hist = room_counts.shutdown_duration if shutdown else room_counts.cleanup_duration
                histogram.add_metric(self._room(room_name), hist.buckets(), hist.total)
            yield histogram

    def _room(self, label: str) -> list[str]:
        return [label] if self.room_label else []


class _FileExport:
    """prometheus-client metric objects fed from the collector's families (multiprocess mode).

    Gauges are set (``livesum`` across processes); counters and histogram
    buckets are increased by what changed since the last write.
    """

    def __init__(self) -> None:
        self._metrics: dict[str, Any] = {}
        self._written: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def write(self, families: Iterable[Metric]) -> None:
        for family in families:
            if family.type == "gauge":
                for sample in family.samples:
                    _child(self._metric(family, "gauge"), sample.labels).set(sample.value)
            elif family.type == "counter":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        delta = self._delta(sample.name, sample.labels, sample.value)
                        if delta:
                            _child(self._metric(family, "counter"), sample.labels).inc(delta)
            elif family.type == "histogram":
                self._write_histogram(family)

    def _write_histogram(self, family: Metric) -> None:
        by_labels: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            entry = by_labels.setdefault(tuple(sorted(labels.items())), {"buckets": []})
            if sample.name.endswith("_bucket"):
                entry["buckets"].append(sample.value)
            elif sample.name.endswith("_sum"):
                entry["sum"] = sample.value
        for key, entry in by_labels.items():
            labels = dict(key)
            child = _child(self._metric(family, "histogram"), labels)
            cumulative = entry["buckets"]  # one per bound, +Inf last, as the child has them
            # The child's buckets are not cumulative (each observation counts in one).
            for index, count in enumerate(cumulative):
                below = cumulative[index - 1] if index else 0.0
                delta = self._delta(f"{family.name}_bucket{index}", labels, count - below)
                if delta:
                    child._buckets[index].inc(delta)
            delta = self._delta(f"{family.name}_sum", labels, entry.get("sum", 0.0))
            if delta:
                child._sum.inc(delta)

    def _delta(self, name: str, labels: dict[str, str], value: float) -> float:
        key = (name, tuple(sorted(labels.items())))
        delta = value - self._written.get(key, 0.0)
        self._written[key] = value
        return delta

    def _metric(self, family: Metric, kind: str) -> Any:
        metric = self._metrics.get(family.name)
        if metric is None:
            import prometheus_client

            labelnames = sorted(
                {k for sample in family.samples for k in sample.labels if k != "le"}
            )
            if kind == "gauge":
                metric = prometheus_client.Gauge(
                    family.name,
                    family.documentation,
                    labelnames,
                    registry=None,
                    multiprocess_mode="livesum",
                )
            elif kind == "counter":
                metric = prometheus_client.Counter(
                    family.name, family.documentation, labelnames, registry=None
                )
            else:
                bounds = CLEANUP_BUCKETS if "cleanup" in family.name else SHUTDOWN_BUCKETS
                metric = prometheus_client.Histogram(
                    family.name, family.documentation, labelnames, registry=None, buckets=bounds
                )
            self._metrics[family.name] = metric
        return metric


def _child(metric: Any, labels: dict[str, str]) -> Any:
    return metric.labels(**labels) if labels else metric
