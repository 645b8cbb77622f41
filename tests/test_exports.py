"""The public face: every public module's ``__all__``, pinned (as httpx does).

Both distributions of this repository: livekit-lifecycle and livekit-loopback.
A name added to or removed from the public API fails here first: update the
list on purpose, together with the docs.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import livekit_lifecycle
import livekit_loopback

EXPORTS: dict[str, list[str]] = {
    "livekit_lifecycle": [
        "CleanupCallback",
        "DEFAULT_KINDS",
        "DEFAULT_NO_GRACE_REASONS",
        "LifecycleConfig",
        "LifecycleManager",
        "PARTICIPANT_CHART",
        "Session",
        "SessionKey",
        "State",
        "Transition",
        "configure_logging",
        "render_statechart",
    ],
    "livekit_lifecycle.agents": [
        "JobLifecycleManager",
        "WhenEmpty",
        "for_job",
        "refresh_safe_room_options",
    ],
    "livekit_lifecycle.cli": ["COMMANDS", "main"],
    "livekit_lifecycle.compat": [
        "CleanupHandlers",
        "ClearUserCallback",
        "active_sessions",
        "get_manager",
        "get_session_info",
        "graceful_shutdown",
        "register_cleanup_handlers",
        "update_session_user",
    ],
    "livekit_lifecycle.config": [
        "DEFAULT_KINDS",
        "DEFAULT_NO_GRACE_REASONS",
        "LifecycleConfig",
        "SessionKey",
    ],
    "livekit_lifecycle.inspector": [
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
    ],
    "livekit_lifecycle.invariants": [
        "INVARIANTS",
        "InvariantChecker",
        "InvariantViolation",
        "Violation",
        "check_closed",
        "check_manager",
        "check_session",
        "check_transition",
        "raise_for",
    ],
    "livekit_lifecycle.log": ["LOGGER_NAME", "configure_logging", "get_logger"],
    "livekit_lifecycle.manager": ["CleanupCallback", "LifecycleManager"],
    "livekit_lifecycle.metrics": [
        "CLEANUP_BUCKETS",
        "IGNORED_REASONS",
        "METRIC_NAMES",
        "SHUTDOWN_BUCKETS",
        "enable_metrics",
    ],
    "livekit_lifecycle.render": [
        "DEFAULT_FORMATS",
        "EXTENSIONS",
        "FORMATS",
        "GraphvizError",
        "GraphvizNotFoundError",
        "Highlight",
        "INSTALL_GRAPHVIZ",
        "MARKDOWN_BEGIN",
        "MARKDOWN_END",
        "RenderError",
        "SVG_STAMP",
        "Source",
        "dot_digest",
        "embed_in_markdown",
        "graphviz_version",
        "markdown_block",
        "output_name",
        "render_statechart",
        "to_dot",
        "to_mermaid",
    ],
    "livekit_lifecycle.session": ["Session", "Transition"],
    "livekit_lifecycle.stores": [
        "Claim",
        "MemoryStore",
        "RedisStore",
        "RoomInfo",
        "SessionData",
        "SessionRecord",
        "SessionStore",
        "SkippedRecord",
        "StoreWrite",
        "UnreadableRecord",
        "check_json",
        "fleet_snapshot",
        "open_store",
        "parse_record",
        "process_owner",
        "record_ttl",
    ],
    "livekit_lifecycle.statechart": [
        "BOUND",
        "CLEANED",
        "CONNECTED",
        "Activity",
        "ChartInput",
        "Edge",
        "Guard",
        "MAY_HAVE_PENDING",
        "MAY_HOLD_TRACKS",
        "PARTICIPANT_CHART",
        "State",
        "StateGroup",
        "Statechart",
    ],
    "livekit_lifecycle.testing": ["RoomDriver"],
    "livekit_loopback.agent_worker": ["AgentWorker", "WorkerExited"],
    "livekit_loopback.audio": ["SAMPLE_RATE", "Tone", "dominant_frequency", "record"],
    "livekit_loopback.browser": [
        "BrowserUnavailable",
        "CHROMIUM_ARGS",
        "CHROMIUM_ENV",
        "ConsoleEntry",
        "ConsoleLog",
        "find_chromium",
        "headless_chromium",
    ],
    "livekit_loopback.browser_client": [
        "DEFAULT_PREFIX",
        "LIVEKIT_CLIENT_ENV",
        "LIVEKIT_CLIENT_VERSION",
        "BrowserClientError",
        "BrowserParticipant",
        "ClientPageServer",
        "LivekitClientUnavailable",
        "find_livekit_client",
        "install_livekit_client",
    ],
    "livekit_loopback": [
        "DispatchView",
        "JobView",
        "LoopbackServer",
        "LoopbackUnavailable",
        "ParticipantView",
        "WorkerView",
        "ice_addresses",
    ],
    "livekit_loopback.server": ["LoopbackServer"],
    "livekit_loopback.pytest_plugin": [
        "agent_worker",
        "CHROMIUM",
        "LIVEKIT_CLIENT",
        "REDIS_SERVER",
        "OptionalPackage",
        "browser_client",
        "chromium",
        "loopback_server",
        "pytest_configure",
        "pytest_runtest_makereport",
        "pytest_terminal_summary",
        "redis_cluster",
        "redis_server",
        "skip_missing",
    ],
    "livekit_loopback.redis_cluster": ["RedisClusterServer", "find_redis_cli"],
    "livekit_loopback.redis_server": [
        "RedisServer",
        "RedisUnavailable",
        "find_redis_server",
        "free_port",
        "free_ports",
    ],
    "livekit_loopback.support": [
        "WAIT",
        "Event",
        "Recorder",
        "eventually",
        "needs_network",
        "no_leaks",
        "open_sockets",
        "webrtc_warmed_up",
    ],
    "livekit_lifecycle.testing.virtual_time": ["Deadlock", "VirtualTimeLoop", "clock", "run"],
    "livekit_lifecycle.tracing": ["CLEANUP_SPAN", "SHUTDOWN_SPAN", "enable_tracing"],
    "livekit_lifecycle.watchdog": [
        "RESUME_KEY",
        "DeadRoom",
        "Dispatcher",
        "OnDispatch",
        "RecoveryStore",
        "Watchdog",
        "livekit_dispatcher",
        "resume_info",
    ],
}


def _public_modules() -> list[str]:
    names = []
    for package in (livekit_lifecycle, livekit_loopback):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not any(part.startswith("_") for part in info.name.split(".")[1:]):
                names.append(info.name)
    return sorted(names)


def test_every_public_module_is_pinned() -> None:
    assert _public_modules() == sorted(EXPORTS)


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_exported_names(name: str) -> None:
    if name == "livekit_lifecycle.agents":
        pytest.importorskip("livekit.agents", reason="needs livekit-agents (the 'agents' extra)")
    module = importlib.import_module(name)
    assert sorted(module.__all__) == sorted(EXPORTS[name])
    for exported in module.__all__:
        assert hasattr(module, exported), f"{name}.__all__ names missing {exported!r}"
