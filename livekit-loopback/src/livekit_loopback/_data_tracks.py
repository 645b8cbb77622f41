"""Data tracks: published by name, subscribed by sid, forwarded under each subscriber's handle.

What the SDKs do (``publish_data_track``, ``RemoteDataTrack.subscribe``) and
livekit-server answers:

- the publisher asks with ``PublishDataTrackRequest`` (a handle it chose, a
  name); the server answers ``PublishDataTrackResponse`` with the track's
  ``DataTrackInfo`` (sid ``DTR_...``), or a ``RequestResponse`` saying why not
  (no ``can_publish_data``, handle 0 or taken, name empty or taken), and the
  room hears of it in the participant's ``data_tracks``;
- a subscriber asks with ``UpdateDataSubscription``; the server gives each of
  its subscriptions a handle of its own and sends the whole map
  (``DataTrackSubscriberHandles``);
- packets come on the publisher's ``_data_track`` data channel (unordered, no
  retransmission), each starting with a header that names the track by the
  publisher's handle (bytes 2-3, see the SDKs' "Data Track Packet (v0)"); each
  subscriber gets a copy on the server's ``_data_track`` channel with its own
  handle written there, the rest (sequence, frame number, timestamp,
  extensions such as E2EE and the user timestamp, payload) as sent.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, MutableSequence
from dataclasses import dataclass, field

from livekit.protocol import models
from livekit.protocol import rtc as signal

__all__ = ["DATA_TRACK", "DataSubscriptions", "publish", "publisher_handle", "unpublish"]

DATA_TRACK = "_data_track"
"""The label of the data channels data track packets travel on."""

_HANDLE_LIMIT = 0xFFFF
_REASON = signal.RequestResponse.Reason


def publish(
    tracks: Iterable[models.DataTrackInfo], request: signal.PublishDataTrackRequest
) -> models.DataTrackInfo | signal.RequestResponse:
    """The new track ``request`` asks for among ``tracks`` (the publisher's), or why not."""
    reason = None
    if not 0 < request.pub_handle <= _HANDLE_LIMIT:
        reason, message = _REASON.INVALID_HANDLE, "handle must be in 1..65535"
    elif not request.name:
        reason, message = _REASON.INVALID_NAME, "a data track needs a name"
    elif any(t.pub_handle == request.pub_handle for t in tracks):
        reason, message = _REASON.DUPLICATE_HANDLE, f"handle {request.pub_handle} is taken"
    elif any(t.name == request.name for t in tracks):
        reason, message = _REASON.DUPLICATE_NAME, f"a data track is named {request.name!r}"
    if reason is not None:
        return refusal(request, reason, message)
    return models.DataTrackInfo(
        pub_handle=request.pub_handle,
        sid="DTR_" + secrets.token_hex(6),
        name=request.name,
        encryption=request.encryption,
        frame_encoding=request.frame_encoding if request.HasField("frame_encoding") else None,
        schema=request.schema if request.HasField("schema") else None,
    )


def refusal(
    request: signal.PublishDataTrackRequest, reason: int, message: str
) -> signal.RequestResponse:
    return signal.RequestResponse(
        reason=reason,  # type: ignore[arg-type]
        message=message,
        publish_data_track=request,
    )


def unpublish(
    tracks: MutableSequence[models.DataTrackInfo], request: signal.UnpublishDataTrackRequest
) -> models.DataTrackInfo | None:
    """Take the track ``request`` names out of ``tracks``; None when there is none."""
    track = next((t for t in tracks if t.pub_handle == request.pub_handle), None)
    if track is not None:
        tracks.remove(track)
    return track


def publisher_handle(packet: bytes) -> int | None:
    """The track handle a data track packet carries (None: too short to be one)."""
    return int.from_bytes(packet[2:4], "big") if len(packet) >= 12 else None


@dataclass
class _Subscription:
    publisher_identity: str
    publisher_sid: str
    track_sid: str


@dataclass
class DataSubscriptions:
    """One participant's data track subscriptions, each under a handle of its own."""

    by_handle: dict[int, _Subscription] = field(default_factory=dict)
    _next: int = 1

    def handle_of(self, track_sid: str) -> int | None:
        return next((h for h, s in self.by_handle.items() if s.track_sid == track_sid), None)

    def add(self, publisher_identity: str, publisher_sid: str, track_sid: str) -> int:
        """The handle of ``track_sid`` (a new one unless already subscribed)."""
        found = self.handle_of(track_sid)
        if found is not None:
            return found
        while self._next in self.by_handle or self._next == 0:
            self._next = self._next % _HANDLE_LIMIT + 1
        handle, self._next = self._next, self._next % _HANDLE_LIMIT + 1
        self.by_handle[handle] = _Subscription(publisher_identity, publisher_sid, track_sid)
        return handle

    def remove(self, track_sid: str) -> bool:
        handle = self.handle_of(track_sid)
        if handle is None:
            return False
        del self.by_handle[handle]
        return True

    def message(self) -> signal.SignalResponse:
        """The whole map, as the subscriber's SDK takes it."""
        published = signal.DataTrackSubscriberHandles.PublishedDataTrack
        return signal.SignalResponse(
            data_track_subscriber_handles=signal.DataTrackSubscriberHandles(
                sub_handles={
                    handle: published(
                        publisher_identity=s.publisher_identity,
                        publisher_sid=s.publisher_sid,
                        track_sid=s.track_sid,
                    )
                    for handle, s in self.by_handle.items()
                }
            )
        )


def rewritten(packet: bytes, handle: int) -> bytes:
    """``packet`` naming its track by ``handle``."""
    return packet[:2] + handle.to_bytes(2, "big") + packet[4:]
