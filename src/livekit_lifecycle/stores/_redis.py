""":class:`RedisStore`: sessions in Redis, shared by every agent process of a fleet."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from livekit_lifecycle.log import get_logger

from ._protocol import Claim, StoreWrite
from ._record import SessionRecord

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisStore"]

DEFAULT_NAMESPACE = "livekit-lifecycle"

# The claim in one step: whoever finds the key empty takes it with a fresh
# fencing token; everyone after reads who holds it.
_CLAIM_SCRIPT = """
local held = redis.call('GET', KEYS[1])
if held then
  local sep = string.find(held, ' ', 1, true)
  return {0, string.sub(held, sep + 1), tonumber(string.sub(held, 1, sep - 1))}
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ' ' .. ARGV[1], 'EX', ARGV[2])
return {1, ARGV[1], token}
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
        if not namespace or ":" in namespace:
            raise ValueError(f"namespace must be a non-empty name without ':', got {namespace!r}")
        if ttl_margin <= 0 or claim_ttl <= 0:
            raise ValueError("ttl_margin and claim_ttl must be > 0 seconds")
        self._client = client
        self._namespace = namespace
        self._ttl_margin = float(ttl_margin)
        self._claim_ttl = max(1, round(claim_ttl))
        self._claim = client.register_script(_CLAIM_SCRIPT)
        self._claims: list[tuple[list[str], asyncio.Future[Claim]]] = []
        """Claims waiting for the next round trip: one pipeline carries them all."""
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

    async def load(self, room: str) -> list[SessionRecord]:
        pattern = f"{self._namespace}:session:{_quote(room)}:*"
        names = [name async for name in self._client.scan_iter(match=pattern, count=500)]
        return await self._read(names)

    async def _read(self, names: Sequence[bytes | str]) -> list[SessionRecord]:
        if not names:
            return []
        records = []
        for name, text in zip(names, await self._client.mget(names), strict=True):
            if text is None:  # expired between the scan and the read
                continue
            try:
                records.append(SessionRecord.from_json(text))
            except ValueError as exc:
                self._log.warning(
                    "store.unreadable_record", category="store", redis_key=name, error=str(exc)
                )
        return records

    async def write(self, batch: Sequence[StoreWrite]) -> None:
        if not batch:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for entry in batch:
                name = self._session_key(entry.room, entry.key)
                if entry.record is None:
                    pipe.delete(name)
                else:
                    pipe.set(name, entry.record.to_json(), px=max(1, round(entry.ttl * 1000)))
            await pipe.execute()

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
            batch, self._claims = self._claims, []
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for (name, owner), _ in batch:
                        await self._claim(
                            keys=[name, f"{self._namespace}:claim-token"],
                            args=[owner, self._claim_ttl],
                            client=pipe,
                        )
                    answers = await pipe.execute()
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except BaseException:  # cancelled (aclose): so are the claims in flight
                for _, future in [*batch, *self._claims]:
                    future.cancel()
                raise
            for ((_, owner), future), (won, holder, token) in zip(batch, answers, strict=True):
                holder_name = holder.decode() if isinstance(holder, bytes) else str(holder)
                if not future.done():
                    future.set_result(
                        Claim(bool(won) or holder_name == owner, holder_name, int(token))
                    )

    async def scan(self) -> AsyncIterator[SessionRecord]:
        batch: list[bytes | str] = []
        async for name in self._client.scan_iter(match=f"{self._namespace}:session:*", count=500):
            batch.append(name)
            if len(batch) >= 500:
                for record in await self._read(batch):
                    yield record
                batch = []
        for record in await self._read(batch):
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
