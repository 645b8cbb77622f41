"""Access tokens: issued and verified exactly as a LiveKit server does, with ``livekit-api``."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from livekit import api
from livekit.protocol import models
from livekit.protocol.room import RoomConfiguration

__all__ = ["AuthError", "JoinGrant", "TokenAuthority"]

_KINDS: dict[str, int] = {
    "": models.ParticipantInfo.STANDARD,
    "standard": models.ParticipantInfo.STANDARD,
    "ingress": models.ParticipantInfo.INGRESS,
    "egress": models.ParticipantInfo.EGRESS,
    "sip": models.ParticipantInfo.SIP,
    "agent": models.ParticipantInfo.AGENT,
    "connector": models.ParticipantInfo.CONNECTOR,
}
_GRANT_FIELDS = frozenset(f.name for f in dataclasses.fields(api.VideoGrants))


class AuthError(Exception):
    """A token was missing, malformed, expired, badly signed or lacks the grant needed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class JoinGrant:
    """What a verified join token allows: who joins which room, and with which permissions."""

    identity: str
    room: str
    name: str
    metadata: str
    attributes: Mapping[str, str]
    kind: int
    hidden: bool
    can_publish: bool
    can_subscribe: bool
    can_publish_data: bool
    can_update_metadata: bool
    room_config: RoomConfiguration | None = None
    """The token's ``roomConfig``: it configures the room when this join creates it."""

    def permission(self) -> models.ParticipantPermission:
        """The ``ParticipantPermission`` the server reports for this participant."""
        return models.ParticipantPermission(
            can_subscribe=self.can_subscribe,
            can_publish=self.can_publish,
            can_publish_data=self.can_publish_data,
            hidden=self.hidden,
            can_update_metadata=self.can_update_metadata,
        )


class TokenAuthority:
    """Issues join tokens for one API key pair and verifies the tokens clients present."""

    def __init__(self, api_key: str, api_secret: str) -> None:
        if not api_key or not api_secret:
            raise ValueError("api_key and api_secret must be non-empty strings")
        self.api_key = api_key
        self.api_secret = api_secret
        self._verifier = api.TokenVerifier(api_key, api_secret)

    def issue(
        self,
        identity: str,
        room: str,
        *,
        name: str | None = None,
        metadata: str | None = None,
        attributes: Mapping[str, str] | None = None,
        kind: str = "standard",
        ttl: datetime.timedelta = datetime.timedelta(hours=1),
        room_config: RoomConfiguration | None = None,
        **grants: Any,
    ) -> str:
        """A signed JWT that lets ``identity`` join ``room``.

        ``grants`` are ``livekit.api.VideoGrants`` fields (``can_publish=False``,
        ``hidden=True``...); ``room_join`` and ``room`` are filled in.

        Raises:
            ValueError: for an empty identity or room, or an unknown kind.
            TypeError: for a grant that ``VideoGrants`` does not have.
        """
        if not identity or not room:
            raise ValueError("identity and room must be non-empty strings")
        if kind not in _KINDS:
            raise ValueError(f"unknown participant kind {kind!r}; expected one of {sorted(_KINDS)}")
        unknown = sorted(set(grants) - _GRANT_FIELDS)
        if unknown:
            raise TypeError(
                f"unknown grant(s) {unknown}; VideoGrants fields are {sorted(_GRANT_FIELDS)}"
            )
        video = api.VideoGrants(**{"room_join": True, **grants, "room": room})
        token = (
            api.AccessToken(self.api_key, self.api_secret)
            .with_identity(identity)
            .with_grants(video)
            .with_ttl(ttl)
        )
        if kind not in ("", "standard"):
            token = token.with_kind(kind)  # type: ignore[arg-type]
        if name:
            token = token.with_name(name)
        if metadata:
            token = token.with_metadata(metadata)
        if attributes:
            token = token.with_attributes(dict(attributes))
        if room_config is not None:
            token = token.with_room_config(room_config)
        return token.to_jwt()

    def verify(self, token: str) -> api.access_token.Claims:
        """The claims of a token signed with this key pair.

        Raises:
            AuthError: (401) when the token is missing, malformed, expired or badly signed.
        """
        if not token:
            raise AuthError(401, "no access token: send it as 'Authorization: Bearer <token>'")
        try:
            return self._verifier.verify(token)
        except Exception as exc:
            raise AuthError(401, f"invalid access token: {exc}") from None

    def verify_join(self, token: str) -> JoinGrant:
        """The join grant carried by ``token``.

        Raises:
            AuthError: 401 for a bad token, 403 when it does not grant joining a room.
        """
        claims = self.verify(token)
        video = claims.video
        if video is None or not video.room_join or not video.room:
            raise AuthError(403, "the token does not grant room_join for a named room")
        if not claims.identity:
            raise AuthError(403, "the token has no identity")
        return JoinGrant(
            identity=claims.identity,
            room=video.room,
            name=claims.name or "",
            metadata=claims.metadata or "",
            attributes=dict(claims.attributes or {}),
            kind=_KINDS.get(claims.kind or "", models.ParticipantInfo.STANDARD),
            hidden=bool(video.hidden),
            can_publish=video.can_publish,
            can_subscribe=video.can_subscribe,
            can_publish_data=video.can_publish_data,
            can_update_metadata=bool(video.can_update_own_metadata),
            room_config=claims.room_config,
        )

    def verify_grant(self, token: str, grant: str, *, room: str | None = None) -> api.VideoGrants:
        """The video grant of ``token``, which must hold ``grant`` (a ``VideoGrants`` field).

        With ``room``, the grant must be for that room too (``roomAdmin`` is per room).

        Raises:
            AuthError: 401 for a bad token, 403 when it lacks ``grant`` (for ``room``).
        """
        video = self.verify(token).video
        if video is None or not getattr(video, grant, False):
            raise AuthError(403, f"the token does not grant {grant}")
        if room is not None and video.room != room:
            raise AuthError(403, f"the token grants {grant} for room {video.room!r}, not {room!r}")
        return video


def bearer_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str:
    """The token a client presents: ``Authorization: Bearer`` or the ``access_token`` query."""
    auth = headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[len("Bearer ") :].strip()
    return query.get("access_token", "")
