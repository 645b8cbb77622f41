"""How big each figure's workload is: the full run, and the quick smoke run CI uses."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sizes:
    lifecycles: int
    """Full lifecycles (connect → … → removed) per throughput run."""
    chunk: int
    """Lifecycles fed back to back before the loop gets a turn (as if one FFI batch)."""
    memory_sessions: int
    """Sessions tracked when memory per session is measured."""
    attach_room: int
    """Participants already in the room when the manager attaches."""
    scaling_rooms: tuple[int, ...]
    """Room sizes at which add/remove cost is measured."""
    scaling_ops: int
    """Participants added, then removed, at each room size."""
    shutdown_sessions: int
    """Sessions our manager shuts down."""
    shutdown_baseline_sessions: int
    """Sessions the baseline shuts down (it is sequential: its time is scaled up)."""
    shutdown_cleanup: float
    """Seconds each cleanup takes at shutdown."""
    hol_hang: float
    """Seconds one user's cleanup hangs while other users' events are timed."""
    latency_samples: int
    """Users whose connect, active and disconnect are each timed through the SDK path."""
    soak_cycles: int
    """Connect/disconnect cycles of the memory soak (run once, not per run)."""
    soak_batch: int
    """Identities cycling concurrently in the soak."""


FULL = Sizes(
    lifecycles=20_000,
    chunk=100,
    memory_sessions=10_000,
    attach_room=10_000,
    scaling_rooms=(1_000, 10_000, 50_000),
    scaling_ops=1_000,
    shutdown_sessions=1_000,
    shutdown_baseline_sessions=20,
    shutdown_cleanup=0.05,
    hol_hang=5.0,
    latency_samples=5_000,
    soak_cycles=1_000_000,
    soak_batch=1_000,
)

QUICK = Sizes(
    lifecycles=500,
    chunk=50,
    memory_sessions=500,
    attach_room=500,
    scaling_rooms=(100, 500, 1_000),
    scaling_ops=100,
    shutdown_sessions=100,
    shutdown_baseline_sessions=2,
    shutdown_cleanup=0.05,
    hol_hang=0.2,
    latency_samples=200,
    soak_cycles=2_000,
    soak_batch=200,
)
