from __future__ import annotations

import math
from typing import Any

import pytest
from livekit import rtc

from livekit_lifecycle import DEFAULT_KINDS, DEFAULT_NO_GRACE_REASONS, LifecycleConfig


def test_defaults() -> None:
    config = LifecycleConfig()
    assert (config.grace_period, config.cleanup_timeout, config.shutdown_timeout) == (
        30.0,
        10.0,
        30.0,
    )
    assert config.history_limit == 50 and config.session_key is None
    assert (
        {
            rtc.DisconnectReason.PARTICIPANT_REMOVED,
            rtc.DisconnectReason.ROOM_DELETED,
            rtc.DisconnectReason.ROOM_CLOSED,
            rtc.DisconnectReason.USER_REJECTED,
        }
        <= config.no_grace_reasons
        == DEFAULT_NO_GRACE_REASONS
    )
    kinds = rtc.ParticipantKind
    assert (
        config.kinds
        == DEFAULT_KINDS
        == {
            kinds.PARTICIPANT_KIND_STANDARD,
            kinds.PARTICIPANT_KIND_SIP,
            kinds.PARTICIPANT_KIND_CONNECTOR,
        }
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("grace_period", -1, "grace_period must be >= 0"),
        ("grace_period", math.nan, "grace_period must be finite"),
        ("grace_period", "30", "grace_period must be a number"),
        ("cleanup_timeout", 0, "cleanup_timeout must be > 0"),
        ("cleanup_timeout", -0.5, "cleanup_timeout must be > 0"),
        ("shutdown_timeout", math.inf, "shutdown_timeout must be finite"),
        ("shutdown_timeout", True, "shutdown_timeout must be a number"),
        ("history_limit", 0, "history_limit must be within 1..1000000"),
        ("history_limit", 10**100, "history_limit must be within 1..1000000"),
        ("grace_period", 1e308, "grace_period must be at most"),
        ("history_limit", 2.5, "history_limit must be an int"),
        ("session_key", "identity", "session_key must be callable"),
        ("no_grace_reasons", [999], "not rtc.DisconnectReason"),
        ("no_grace_reasons", 4, "iterable"),
        (
            "kinds",
            [rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD, "agent"],
            "not rtc.ParticipantKind",
        ),
        ("kinds", [], "at least one"),
        ("check_invariants", "yes", "check_invariants must be a bool"),
        ("close_on_room_disconnect", 1, "close_on_room_disconnect must be a bool"),
    ],
)
def test_invalid_values_raise_clear_errors(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LifecycleConfig(**{field: value})


def test_iterables_are_stored_as_frozensets() -> None:
    config = LifecycleConfig(
        no_grace_reasons={rtc.DisconnectReason.ROOM_DELETED},
        kinds=[rtc.ParticipantKind.PARTICIPANT_KIND_SIP],  # type: ignore[arg-type]
    )
    assert config.no_grace_reasons == frozenset({rtc.DisconnectReason.ROOM_DELETED})
    assert isinstance(config.kinds, frozenset)
    hash(config)


def test_config_is_frozen() -> None:
    config = LifecycleConfig()
    with pytest.raises(AttributeError):
        config.grace_period = 5  # type: ignore[misc]
