// The test page's client: joins a LiveKit server with livekit-client, publishes the
// (fake) microphone, and reports what it sees on `window.lk` for the test to read.
//
// Query parameters: url, token (required); publish = "microphone" (the default) or ""
// for nothing; auto_subscribe = 0 or 1 (default 1); single_pc = 0 for livekit-client's
// two-PeerConnection /rtc path (default 1: /rtc/v1); log = livekit-client's log level
// (default "warn"). Written as ES2020 without a build step, like the UMD bundle it uses.
"use strict";
(() => {
  const params = new URLSearchParams(window.location.search);
  const LK = window.LivekitClient;
  const lk = {
    version: LK.version,
    state: "new",
    ready: false,
    identity: null,
    sid: null,
    remote: {},
    published: [],
    subscribed: [],
    events: [],
    failure: null,
    room: null,
  };
  window.lk = lk;

  const stateView = document.getElementById("state");
  const logView = document.getElementById("log");
  document.getElementById("version").textContent = LK.version;

  function record(name, detail = {}) {
    const event = { name, at: Date.now(), ...detail };
    lk.events.push(event);
    logView.textContent += `${name} ${JSON.stringify(detail)}\n`;
  }

  function setState(state) {
    lk.state = state;
    stateView.textContent = state;
  }

  LK.setLogLevel(params.get("log") || "warn");
  const publish = (params.get("publish") ?? "microphone").split(",").filter(Boolean);
  const room = new LK.Room({ singlePeerConnection: params.get("single_pc") !== "0" });
  lk.room = room;

  const E = LK.RoomEvent;
  room
    .on(E.ConnectionStateChanged, (state) => {
      setState(state);
      record("connection_state_changed", { state });
    })
    .on(E.SignalConnected, () => record("signal_connected"))
    .on(E.Reconnecting, () => record("reconnecting"))
    .on(E.Reconnected, () => {
      lk.sid = room.localParticipant.sid;
      record("reconnected", { sid: lk.sid });
    })
    .on(E.Disconnected, (reason) => {
      lk.ready = false;
      record("disconnected", { reason: reason ?? null });
    })
    .on(E.ParticipantConnected, (p) => {
      lk.remote[p.identity] = p.sid;
      record("participant_connected", { identity: p.identity, sid: p.sid });
    })
    .on(E.ParticipantDisconnected, (p) => {
      delete lk.remote[p.identity];
      record("participant_disconnected", { identity: p.identity, sid: p.sid });
    })
    .on(E.LocalTrackPublished, (pub) => {
      lk.published.push(pub.trackSid);
      record("local_track_published", { sid: pub.trackSid, source: pub.source });
    })
    .on(E.LocalTrackUnpublished, (pub) => {
      lk.published = lk.published.filter((sid) => sid !== pub.trackSid);
      record("local_track_unpublished", { sid: pub.trackSid });
    })
    .on(E.TrackSubscribed, (_track, pub, p) => {
      lk.subscribed.push(pub.trackSid);
      record("track_subscribed", { sid: pub.trackSid, identity: p.identity });
    })
    .on(E.TrackUnsubscribed, (_track, pub, p) => {
      lk.subscribed = lk.subscribed.filter((sid) => sid !== pub.trackSid);
      record("track_unsubscribed", { sid: pub.trackSid, identity: p.identity });
    });

  async function start() {
    const url = params.get("url");
    const token = params.get("token");
    if (!url || !token) {
      throw new Error("the page needs ?url=...&token=... query parameters");
    }
    await room.connect(url, token, { autoSubscribe: params.get("auto_subscribe") !== "0" });
    lk.identity = room.localParticipant.identity;
    lk.sid = room.localParticipant.sid;
    for (const p of room.remoteParticipants.values()) {
      lk.remote[p.identity] = p.sid;
    }
    record("connected", { identity: lk.identity, sid: lk.sid });
    if (publish.includes("microphone")) {
      await room.localParticipant.setMicrophoneEnabled(true);
    }
    lk.ready = true;
    record("ready", { published: lk.published });
  }

  start().catch((error) => {
    lk.failure = String(error);
    record("failed", { error: String(error) });
    console.error("livekit-lifecycle browser client failed:", error);
  });
})();
