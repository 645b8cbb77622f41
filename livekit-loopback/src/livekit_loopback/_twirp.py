"""Twirp, the HTTP RPC of LiveKit's server APIs: ``POST /twirp/livekit.<Service>/<Method>``.

A request body is a protobuf message (``application/protobuf``, what
livekit-api sends) or its JSON form (``application/json``); the answer comes
in the same encoding. Errors are Twirp's JSON ``{"code", "msg"}`` with the
HTTP status Twirp gives each code, which livekit-api raises as ``TwirpError``.
Every call needs ``Authorization: Bearer <token>`` signed with the server's key.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from ._log import get_logger
from ._tokens import AuthError, bearer_token

__all__ = ["TwirpError", "TwirpMethod", "TwirpService"]

_PREFIX = "/twirp"
_PROTOBUF = "application/protobuf"
_JSON = "application/json"
_STATUS = {
    "invalid_argument": 400,
    "malformed": 400,
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "failed_precondition": 412,
    "unimplemented": 501,
    "internal": 500,
}


class TwirpError(Exception):
    """An RPC failed with Twirp error ``code`` (``"not_found"``, ``"invalid_argument"``...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = _STATUS[code]


Handler = Callable[[Any, str], Awaitable[Message]]
"""``(request message, bearer token) -> response message``; raises :class:`TwirpError`
or ``AuthError``."""


@dataclass(frozen=True, slots=True)
class TwirpMethod:
    request: type[Message]
    handler: Handler


class TwirpService:
    """One Twirp service (e.g. ``livekit.RoomService``): its methods under one route."""

    def __init__(self, name: str, methods: Mapping[str, TwirpMethod]) -> None:
        self.name = name
        self._methods = dict(methods)
        self._log = get_logger().bind(service=name)

    def mount(self, router: web.UrlDispatcher) -> None:
        router.add_post(f"{_PREFIX}/{self.name}/{{method}}", self._serve)

    async def _serve(self, request: web.Request) -> web.Response:
        name = request.match_info["method"]
        as_json = request.content_type == _JSON
        try:
            method = self._methods.get(name)
            if method is None:
                raise TwirpError("bad_route", f"no method {name!r} in {self.name}")
            if request.content_type not in (_JSON, _PROTOBUF):
                raise TwirpError("bad_route", f"unexpected Content-Type {request.content_type!r}")
            message = _decode(method.request, await request.read(), as_json)
            token = bearer_token(request.headers, {})
            response = await method.handler(message, token)
        except AuthError as exc:
            code = "unauthenticated" if exc.status == 401 else "permission_denied"
            return self._error(name, TwirpError(code, str(exc)))
        except TwirpError as exc:
            return self._error(name, exc)
        except Exception as exc:
            self._log.exception("twirp.failed", method=name)
            return self._error(name, TwirpError("internal", f"{type(exc).__name__}: {exc}"))
        self._log.info("twirp.served", method=name)
        if as_json:
            # Twirp's JSON: proto field names, and fields at their default value too.
            body = json_format.MessageToJson(
                response,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            )
            return web.Response(body=body.encode(), content_type=_JSON)
        return web.Response(body=response.SerializeToString(), content_type=_PROTOBUF)

    def _error(self, method: str, error: TwirpError) -> web.Response:
        self._log.info("twirp.error", method=method, code=error.code, error=str(error))
        return web.Response(
            status=error.status,
            body=json.dumps({"code": error.code, "msg": str(error)}).encode(),
            content_type=_JSON,
        )


def _decode(kind: type[Message], body: bytes, as_json: bool) -> Message:
    try:
        if as_json:
            return json_format.Parse(body or b"{}", kind(), ignore_unknown_fields=True)
        return kind.FromString(body)
    except Exception as exc:  # protobuf's DecodeError and ParseError
        raise TwirpError("malformed", f"undecodable {kind.__name__}: {exc}") from None
