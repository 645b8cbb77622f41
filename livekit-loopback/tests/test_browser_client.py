"""livekit-client (the JavaScript SDK, in headless Chromium) against the LoopbackServer.

Each test drives the real npm livekit-client through the test page and
checks both ends: what the browser saw and what a real Python ``rtc.Room``
(or the server) saw. Every path the JS client uses that the Python SDK does
not is covered here: the ``access_token`` query parameter, ``/rtc/validate``
read from another origin, the ``/rtc`` fallback, legacy ``ping`` beside
``ping_req``, and a resume with its ICE restart.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
from livekit import rtc

from livekit_loopback import LoopbackServer
from livekit_loopback.audio import Tone
from livekit_loopback.browser_client import (
    LIVEKIT_CLIENT_VERSION,
    BrowserClientError,
    BrowserParticipant,
    ClientPageServer,
    LivekitClientUnavailable,
    find_livekit_client,
    install_livekit_client,
)
from livekit_loopback.support import Recorder, eventually

ROOM = "browser-room"
REASON = rtc.DisconnectReason
SLOW = 30.0
"""Chromium and WebRTC on a loaded two-core machine: generous, but never waited out."""


async def agent_and_alice(
    server: LoopbackServer, pages: ClientPageServer
) -> tuple[rtc.Room, Recorder, BrowserParticipant]:
    """An agent's real Room and what it sees, then alice's tab, connected and publishing."""
    agent = await server.connect("agent", ROOM, kind="agent")
    events = Recorder.on(agent)
    alice = await pages.open(server.url, server.token("alice", ROOM))
    return agent, events, alice


@pytest.mark.browser
@pytest.mark.e2e
async def test_join_publish_and_close_the_tab(
    loopback_server: LoopbackServer, browser_client: ClientPageServer
) -> None:
    agent, events, alice = await agent_and_alice(loopback_server, browser_client)
    state = await alice.state()
    joined = await events.wait_for("participant_connected", SLOW, identity="alice")
    published = await events.wait_for("track_published", SLOW, identity="alice")
    await events.wait_for("participant_active", SLOW, identity="alice")

    assert state["version"] == "2.23.0" and state["state"] == "connected"
    assert joined.sid == state["sid"] and state["remote"] == {"agent": agent.local_participant.sid}
    assert state["published"] == [published.track]
    view = await loopback_server.wait_for_participant(ROOM, "alice", "active")
    assert view is not None and view.tracks == (published.track,)
    # /rtc/v1: the join request rides on the URL; the answer comes back over the socket.
    assert alice.signalled("received", "join") == 1
    assert alice.signalled("received", "answer") >= 1

    await alice.close()
    gone = await events.wait_for("participant_disconnected", SLOW, identity="alice")
    assert gone.reason == REASON.CLIENT_INITIATED
    assert loopback_server.participant(ROOM, "alice") is None
    alice.console.raise_for_errors("removeTrack")


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.loopback(ping_interval=1, ping_timeout=2)
async def test_pings_are_answered_both_ways(
    loopback_server: LoopbackServer, browser_client: ClientPageServer
) -> None:
    alice = await browser_client.open(loopback_server.url, loopback_server.token("alice", ROOM))
    # livekit-client sends the legacy `ping` and `ping_req` side by side; with no
    # pong_resp within ping_timeout it would drop the connection and reconnect.
    answered = await eventually(lambda: alice.signalled("received", "pong_resp") >= 3, SLOW)
    assert answered, alice.signals
    assert alice.signalled("received", "pong") >= 3
    assert alice.signalled("sent", "ping") >= 3 and alice.signalled("sent", "ping_req") >= 3
    state = await alice.state()
    assert state["state"] == "connected"
    assert [e for e in state["events"] if e["name"] == "reconnecting"] == []
    alice.console.raise_for_errors()


@pytest.mark.browser
@pytest.mark.e2e
async def test_resume_keeps_the_participant(
    loopback_server: LoopbackServer, browser_client: ClientPageServer
) -> None:
    _, events, alice = await agent_and_alice(loopback_server, browser_client)
    sid = (await alice.state())["sid"]
    await events.wait_for("participant_active", SLOW, identity="alice")

    # The signalling socket drops: livekit-client resumes with reconnect=true and
    # its sid, gets a ReconnectResponse, and restarts ICE on the same PeerConnection.
    await alice.page.evaluate("lk.room.simulateScenario('signal-reconnect')")
    await alice.wait_for("lk.events.some((e) => e.name === 'reconnected')", SLOW)

    state = await alice.state()
    assert state["sid"] == sid and state["state"] == "connected"
    assert alice.signalled("received", "reconnect") == 1
    view = loopback_server.participant(ROOM, "alice")
    assert view is not None and view.sid == sid and view.signal_connected
    seen = [e.name for e in events.events if e.name.startswith("participant_")]
    assert seen == ["participant_connected", "participant_active"]  # nobody saw the resume
    alice.console.raise_for_errors("removeTrack")


@pytest.mark.browser
@pytest.mark.e2e
async def test_full_reconnect_rejoins_and_republishes(
    loopback_server: LoopbackServer, browser_client: ClientPageServer
) -> None:
    _, events, alice = await agent_and_alice(loopback_server, browser_client)
    old = await alice.state()
    await events.wait_for("track_published", SLOW, sid=old["sid"])

    # livekit-client drops both connections and joins again as a new participant,
    # then publishes its microphone again itself.
    await alice.page.evaluate("lk.room.simulateScenario('full-reconnect')")
    await alice.wait_for("lk.events.some((e) => e.name === 'reconnected')", SLOW)
    new = await alice.state()
    assert new["sid"] != old["sid"] and new["state"] == "connected"
    gone = await events.wait_for("participant_disconnected", SLOW, sid=old["sid"])
    republished = await events.wait_for("track_published", SLOW, sid=new["sid"])
    assert gone.reason == REASON.DUPLICATE_IDENTITY  # the new join replaced the old one
    assert new["published"] == [republished.track] != old["published"]
    view = loopback_server.participant(ROOM, "alice")
    assert view is not None and view.sid == new["sid"] and view.tracks == (republished.track,)
    # livekit-client 2.23.0 logs a *warning* here, "failed to remove track ... removeTrack",
    # while it tears the old PeerConnection down (client-sdk-js#507): its own, not an error.
    alice.console.raise_for_errors()


@pytest.mark.browser
@pytest.mark.e2e
async def test_mute_unmute_and_unpublish_reach_the_room(
    loopback_server: LoopbackServer, browser_client: ClientPageServer
) -> None:
    _, events, alice = await agent_and_alice(loopback_server, browser_client)
    track = (await events.wait_for("track_published", SLOW, identity="alice")).track
    microphone = "lk.room.localParticipant.getTrackPublication('microphone')"

    await alice.page.evaluate(f"{microphone}.mute()")
    await events.wait_for("track_muted", SLOW, track=track)
    await alice.page.evaluate(f"{microphone}.unmute()")
    await events.wait_for("track_unmuted", SLOW, track=track)
    # livekit-client unpublishes by renegotiating without the track (no message of its own).
    await alice.page.evaluate(f"lk.room.localParticipant.unpublishTrack({microphone}.track)")
    await events.wait_for("track_unpublished", SLOW, track=track)
    view = loopback_server.participant(ROOM, "alice")
    assert view is not None and view.tracks == ()
    alice.console.raise_for_errors("removeTrack")


@pytest.mark.browser
@pytest.mark.e2e
async def test_the_browser_receives_what_the_agent_publishes(
    loopback_server: LoopbackServer, browser_client: ClientPageServer
) -> None:
    # /rtc/v1 only: on /rtc (two PeerConnections) the page missed the server's
    # subscriber offer in about 1 run of 12; see docs/testing.md.
    agent = await loopback_server.connect("agent", ROOM, kind="agent")
    alice = await browser_client.open(loopback_server.url, loopback_server.token("alice", ROOM))
    async with Tone(440) as tone:
        publication = await agent.local_participant.publish_track(tone.track)
        # The server renegotiates the one PeerConnection: livekit-client subscribes.
        await alice.wait_for(f"lk.subscribed.includes('{publication.sid}')", SLOW)
        live = (
            "lk.room.remoteParticipants.get('agent')"
            f".trackPublications.get('{publication.sid}').track.mediaStreamTrack.readyState"
        )
        assert await alice.page.evaluate(live) == "live"
        await agent.local_participant.unpublish_track(publication.sid)
        await alice.wait_for(f"!lk.subscribed.includes('{publication.sid}')", SLOW)
    alice.console.raise_for_errors("removeTrack")


@pytest.mark.browser
@pytest.mark.e2e
async def test_removal_by_the_server_reaches_the_browser(
    loopback_server: LoopbackServer, browser_client: ClientPageServer
) -> None:
    alice = await browser_client.open(loopback_server.url, loopback_server.token("alice", ROOM))
    await loopback_server.remove_participant(ROOM, "alice")
    event = await alice.wait_for("lk.events.find((e) => e.name === 'disconnected')", SLOW)
    assert event["reason"] == REASON.PARTICIPANT_REMOVED
    assert (await alice.state())["state"] == "disconnected"
    alice.console.raise_for_errors("removeTrack")


@pytest.mark.browser
@pytest.mark.e2e
async def test_a_bad_token_is_reported_through_validate(
    loopback_server: LoopbackServer, browser_client: ClientPageServer
) -> None:
    other = LoopbackServer(api_secret="not-the-secret-of-the-server-under-test")
    alice = await browser_client.open(loopback_server.url, other.token("alice", ROOM), wait=False)
    with pytest.raises(BrowserClientError, match="invalid access token"):
        await alice.wait_ready(SLOW)
    # The failed upgrade is Chromium's own console error; the explanation came
    # from /rtc/v1/validate, read across origins.
    assert not alice.console.matching("CORS")
    assert loopback_server.participants(ROOM) == []


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.loopback(single_pc=False)
@pytest.mark.parametrize("page_single_pc", [False, True], ids=["two-pcs", "fallback"])
async def test_the_two_peer_connection_path(
    loopback_server: LoopbackServer, browser_client: ClientPageServer, page_single_pc: bool
) -> None:
    agent = await loopback_server.connect("agent", ROOM, kind="agent")
    events = Recorder.on(agent)
    alice = await browser_client.open(
        loopback_server.url, loopback_server.token("alice", ROOM), single_pc=page_single_pc
    )
    await events.wait_for("track_published", SLOW, identity="alice")
    await events.wait_for("participant_active", SLOW, identity="alice")
    sid = (await alice.state())["sid"]
    assert alice.signalled("sent", "offer") >= 1  # /rtc: the offer follows over the socket

    await alice.page.evaluate("lk.room.simulateScenario('signal-reconnect')")
    await alice.wait_for("lk.events.some((e) => e.name === 'reconnected')", SLOW)
    assert (await alice.state())["sid"] == sid

    await alice.close()
    gone = await events.wait_for("participant_disconnected", SLOW, identity="alice")
    assert gone.reason == REASON.CLIENT_INITIATED
    errors = [f"{e.text} {e.location}" for e in alice.console.errors]
    if page_single_pc:
        # livekit-client tries /rtc/v1 first; the 404s of that attempt (the upgrade and
        # /rtc/v1/validate) are how it learns to fall back, and Chromium logs both.
        assert len(errors) == 2 and all("/rtc/v1" in text for text in errors), errors
    else:
        assert errors == []


def test_a_missing_livekit_client_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(LivekitClientUnavailable, match="browser_client install --prefix"):
        find_livekit_client(tmp_path)
    with pytest.raises(LivekitClientUnavailable, match="npm not found"):
        install_livekit_client(tmp_path, npm="no-such-npm")


async def test_page_options_are_checked() -> None:
    pages = ClientPageServer()
    with pytest.raises(RuntimeError, match="not started"):
        pages.url("ws://127.0.0.1:1", "token")
    with pytest.raises(RuntimeError, match="needed to open pages"):
        await pages.open("ws://127.0.0.1:1", "token")
    pages._base = "http://127.0.0.1:1/"
    with pytest.raises(ValueError, match="'microphone' only"):
        pages.url("ws://127.0.0.1:1", "token", publish=("camera",))
    assert "publish=&" in pages.url("ws://127.0.0.1:1", "token", publish=())


def test_the_pinned_version_is_the_shipped_lock(tmp_path: Path) -> None:
    lock = json.loads(_shipped("package-lock.json"))
    manifest = json.loads(_shipped("package.json"))
    assert manifest["dependencies"] == {"livekit-client": LIVEKIT_CLIENT_VERSION}
    assert lock["packages"]["node_modules/livekit-client"]["version"] == LIVEKIT_CLIENT_VERSION


def _shipped(name: str) -> str:
    return resources.files("livekit_loopback.browser_client").joinpath(name).read_text()
