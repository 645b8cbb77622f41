""":class:`RedisStore`: sessions in Redis, shared by every agent process of a fleet."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from livekit_lifecycle._numbers import require_seconds
from livekit_lifecycle.log import get_logger

from ._protocol import Claim, StoreWrite, log_skipped
from ._record import SessionRecord, SkippedRecord, UnreadableRecord, parse_record

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisStore"]

DEFAULT_NAMESPACE = "livekit-lifecycle"
_NAMESPACE = re.compile(r"[A-Za-z0-9._-]+")
_PER_CALL = 500
"""Claims (or writes) in one script call at most: a burst goes oldest first, in slices, and
no call holds Redis for long (a script runs alone)."""

# Claims in one step each, many per call: whoever finds a claim key empty takes
# it with a fresh fencing token; everyone after reads who holds it. KEYS[1] is
# the token counter, KEYS[i] (i > 1) a claim whose owner is ARGV[i]; ARGV[1] the
# claims' TTL. Answers (won, owner, token) per claim, flattened.
_CLAIM_SCRIPT = """
local answers = {}
for i = 2, #KEYS do
  local held = redis.call('GET', KEYS[i])
  if held then
    local sep = string.find(held, ' ', 1, true)
    answers[#answers + 1] = 0
    answers[#answers + 1] = string.sub(held, sep + 1)
    answers[#answers + 1] = tonumber(string.sub(held, 1, sep - 1))
  else
    local token = redis.call('INCR', KEYS[1])
    redis.call('SET', KEYS[i], token .. ' ' .. ARGV[i], 'EX', ARGV[1])
    answers[#answers + 1] = 1
    answers[#answers + 1] = ARGV[i]
    answers[#answers + 1] = token
  end
end
return answers
"""

# Upserts and deletes in one call, in order: KEYS[i] gets ARGV[2i] with a TTL of
# ARGV[2i-1] milliseconds, or is deleted when that TTL is negative.
_WRITE_SCRIPT = """
for i = 1, #KEYS do
  local ttl = tonumber(ARGV[2 * i - 1])
  if ttl < 0 then
    redis.call('DEL', KEYS[i])
  else
    redis.call('SET', KEYS[i], ARGV[2 * i], 'PX', ttl)
  end
end
return #KEYS
"""


class RedisStore:
    """Records as JSON strings with a TTL, claims as ``SET``-once keys, under one namespace.

    Keys (room and session key percent-encoded, so any name is safe)::

        {namespace}:session:{room}:{key}          the record (JSON), expires on its own
        {namespace}:claim:{room}:{key}:{sid}      the cleanup claim of one connection
        {namespace}:claim-token                   the fencing-token counter

    Needs the ``redis`` extra: ``pip install 'livekit-lifecycle[redis]'``.
    """

    def __init__(
        self,
        client: Redis,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl_margin: float = 60.0,
        claim_ttl: float = 86400.0,
    ) -> None:
        if not _NAMESPACE.fullmatch(namespace):
            raise ValueError(
                f"namespace must be letters, digits, '.', '_' or '-' (no ':'), got {namespace!r}"
            )
        self._client = client
        self._namespace = namespace
        self._ttl_margin = require_seconds("ttl_margin", ttl_margin, allow_zero=False)
        self._claim_ttl = max(1, round(require_seconds("claim_ttl", claim_ttl, allow_zero=False)))
        self._claim = client.register_script(_CLAIM_SCRIPT)
        self._write = client.register_script(_WRITE_SCRIPT)
        self._claims: list[tuple[list[str], asyncio.Future[Claim]]] = []
        """Claims waiting for the next round trip: one script call carries them all."""
        self._claiming: asyncio.Task[None] | None = None
        self._log = get_logger()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl_margin: float = 60.0,
        claim_ttl: float = 86400.0,
        timeout: float = 2.0,
        **client_options: Any,
    ) -> RedisStore:
        """A store on the Redis at ``url`` (``redis://host:port/db``, ``rediss://``, ``unix://``).

        ``timeout`` bounds connecting and each command; ``client_options`` go
        to ``redis.asyncio.Redis.from_url``. No connection is made here.
        """
        from redis.asyncio import Redis

        timeout = require_seconds("timeout", timeout, allow_zero=False)
        client_options.setdefault("socket_timeout", timeout)
        client_options.setdefault("socket_connect_timeout", timeout)
        client = Redis.from_url(url, **client_options)
        return cls(client, namespace=namespace, ttl_margin=ttl_margin, claim_ttl=claim_ttl)

    @property
    def durable(self) -> bool:
        return True

    @property
    def ttl_margin(self) -> float:
        return self._ttl_margin

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def client(self) -> Redis:
        """The ``redis.asyncio`` client (for the application's own checks)."""
        return self._client

    def _session_key(self, room: str, key: str) -> str:
        return f"{self._namespace}:session:{_quote(room)}:{_quote(key)}"

    async def load(
        self, room: str, *, skipped: Callable[[SkippedRecord], None] | None = None
    ) -> list[SessionRecord]:
        pattern = f"{self._namespace}:session:{_quote(room)}:*"
        names = [name async for name in self._client.scan_iter(match=pattern, count=500)]
        return await self._read(names, skipped)

    async def _read(
        self, names: Sequence[bytes | str], skipped: Callable[[SkippedRecord], None] | None
    ) -> list[SessionRecord]:
        if not names:
            return []
        records = []
        for name, text in zip(names, await self._client.mget(names), strict=True):
            if text is None:  # expired between the scan and the read
                continue
            where = name.decode(errors="replace") if isinstance(name, bytes) else name
            room, key = self._location(where)
            try:
                if room is None:
                    raise UnreadableRecord("not a key this store writes")
                records.append(parse_record(text, room=room, key=key))
            except UnreadableRecord as exc:
                skip = SkippedRecord(where, room, key, exc.reason)
                if skipped is None:
                    log_skipped(self._log, skip)
                else:
                    skipped(skip)
        return records

    def _location(self, name: str) -> tuple[str | None, str | None]:
        """The (room, key) a record's Redis key names, or (None, None) for a foreign key."""
        prefix = f"{self._namespace}:session:"
        room, sep, key = name.removeprefix(prefix).partition(":")
        if not name.startswith(prefix) or not sep or ":" in key:
            return None, None
        return unquote(room), unquote(key)

    async def write(self, batch: Sequence[StoreWrite]) -> None:
        """See :meth:`SessionStore.write`: one script call per 500 entries."""
        for start in range(0, len(batch), _PER_CALL):
            names: list[str] = []
            args: list[str | int] = []
            for entry in batch[start : start + _PER_CALL]:
                names.append(self._session_key(entry.room, entry.key))
                if entry.record is None:
                    args += [-1, ""]
                else:
                    args += [max(1, round(entry.ttl * 1000)), entry.record.to_json()]
            await self._write(keys=names, args=args)

    async def claim(self, room: str, key: str, sid: str, owner: str) -> Claim:
        """See :meth:`SessionStore.claim`. Claims made meanwhile share one round trip."""
        name = f"{self._namespace}:claim:{_quote(room)}:{_quote(key)}:{_quote(sid)}"
        future: asyncio.Future[Claim] = asyncio.get_running_loop().create_future()
        self._claims.append(([name, owner], future))
        if self._claiming is None or self._claiming.done():
            self._claiming = asyncio.get_running_loop().create_task(self._send_claims())
        return await future

    async def _send_claims(self) -> None:
        while self._claims:
            batch = self._claims[:_PER_CALL]
            del self._claims[:_PER_CALL]
            try:
                answers = await self._claim(
                    keys=[f"{self._namespace}:claim-token", *(name for (name, _), _ in batch)],
                    args=[self._claim_ttl, *(owner for (_, owner), _ in batch)],
                )
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except BaseException:  # cancelled (aclose): so are the claims in flight
                for _, future in [*batch, *self._claims]:
                    future.cancel()
                raise
            for index, ((_, owner), future) in enumerate(batch):
                won, holder, token = answers[3 * index : 3 * index + 3]
                holder_name = holder.decode() if isinstance(holder, bytes) else str(holder)
                if not future.done():
                    future.set_result(
                        Claim(bool(won) or holder_name == owner, holder_name, int(token))
                    )

    async def scan(
        self, *, skipped: Callable[[SkippedRecord], None] | None = None
    ) -> AsyncIterator[SessionRecord]:
        batch: list[bytes | str] = []
        async for name in self._client.scan_iter(match=f"{self._namespace}:session:*", count=500):
            batch.append(name)
            if len(batch) >= 500:
                for record in await self._read(batch, skipped):
                    yield record
                batch = []
        for record in await self._read(batch, skipped):
            yield record

    async def ping(self) -> None:
        await self._client.ping()

    async def aclose(self) -> None:
        claiming = self._claiming
        if claiming is not None and not claiming.done():
            claiming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await claiming
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"RedisStore(namespace={self._namespace!r})"


def _quote(name: str) -> str:
    # Encodes ':' (the separator) and every glob character, so a pattern built
    # from a name matches that name only.
    return quote(name, safe="")
