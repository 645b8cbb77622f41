"""Checking a Redis store URL before redis-py reads it (it takes a bad database path as 0)."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

_DB_PATH = re.compile(r"/?(\d+)?/?")


def check_redis_url(url: str) -> None:
    """Raise ``ValueError`` naming what is wrong with a ``redis://``/``rediss://``/``unix://`` URL.

    redis-py silently uses database 0 for a path that is not a number
    (``redis://host/sessions``): a store that reads and writes another
    application's database is worse than an error.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range
    except ValueError as exc:
        raise ValueError(f"bad store URL {url!r}: {exc}") from None
    for value in parse_qs(parts.query).get("db", []):
        if not value.isdigit():
            raise ValueError(f"bad store URL {url!r}: db={value!r} is not a database number")
    if parts.scheme.lower() == "unix":
        if not parts.path:
            raise ValueError(f"bad store URL {url!r}: unix:// needs a socket path")
        return
    path = unquote(parts.path)
    if not _DB_PATH.fullmatch(path):
        raise ValueError(
            f"bad store URL {url!r}: the path must be a database number"
            f" (redis://host:port/0), got {path!r}"
        )
