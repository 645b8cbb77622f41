"""Tracks a user publishes show up in ``session.tracks`` and are dropped when they go."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from livekit import rtc

from livekit_lifecycle import State
from livekit_loopback import LoopbackServer
from livekit_loopback.support import WAIT
from tests.e2e.conftest import ROOM, MakeAgent

pytestmark = pytest.mark.e2e


@pytest.fixture
async def microphone() -> AsyncIterator[rtc.LocalAudioTrack]:
    source = rtc.AudioSource(48000, 1)
    try:
        yield rtc.LocalAudioTrack.create_audio_track("microphone", source)
    finally:
        await source.aclose()


async def test_published_track_is_tracked_then_dropped_on_disconnect(
    loopback_server: LoopbackServer, make_agent: MakeAgent, microphone: rtc.LocalAudioTrack
) -> None:
    agent = await make_agent(grace_period=0.0)
    user = await loopback_server.connect("alice", ROOM)
    session = await agent.manager.wait_for("alice", State.ACTIVE, WAIT)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)

    first = await user.local_participant.publish_track(microphone, options)
    await agent.events.wait_for("track_published", track=first.sid)
    assert session.tracks == {first.sid}
    view = loopback_server.participant(ROOM, "alice")
    assert view is not None and view.tracks == (first.sid,)

    await user.local_participant.unpublish_track(first.sid)
    await agent.events.wait_for("track_unpublished", track=first.sid)
    assert session.tracks == frozenset()

    second = await user.local_participant.publish_track(microphone, options)
    await agent.events.wait_for("track_published", track=second.sid)
    assert second.sid != first.sid and session.tracks == {second.sid}

    await user.disconnect()
    await agent.wait_removed("alice")
    # The SDK unpublishes a departing participant's tracks before it reports
    # the disconnect, so the session has dropped them by the time it is cleaned.
    unpublished = await agent.events.wait_for("track_unpublished", track=second.sid)
    left = await agent.events.wait_for("participant_disconnected", identity="alice")
    assert agent.events.events.index(unpublished) < agent.events.events.index(left)
    assert agent.cleanups == [
        ("alice", session.sid, frozenset(), rtc.DisconnectReason.CLIENT_INITIATED)
    ]
    assert session.tracks == frozenset() and session.participant is None
