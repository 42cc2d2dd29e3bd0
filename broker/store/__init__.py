"""State stores: the contract, and where to find an implementation for a URL."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from broker.store.base import (
    Assignment,
    Finish,
    Handover,
    ResumeTicket,
    Store,
    StoreUnavailable,
)
from broker.store.memory import MemoryStore

__all__ = [
    "Assignment",
    "Finish",
    "Handover",
    "MemoryStore",
    "ResumeTicket",
    "Store",
    "StoreUnavailable",
    "open_store",
    "shown_url",
]


def shown_url(url: str) -> str:
    """A store URL as it may appear in a message or a log: its password, if any, masked."""
    parts = urlsplit(url)
    try:
        password = parts.password
    except ValueError:  # a netloc too broken to read: show none of it
        return urlunsplit((parts.scheme, "***", parts.path, "", ""))
    if password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def open_store(url: str) -> Store:
    """``memory://`` for the in-process store (tests, the simulator), ``sqlite://PATH`` for
    the durable embedded store (``sqlite:///var/lib/vabroker/broker.db``, see
    ``broker.store.sqlite``); ``redis://host:port/db`` (``rediss://`` for TLS)
    for one Redis, ``redis+cluster://host:port`` (``rediss+cluster://``) for a Redis Cluster
    reached through any of its nodes. Redis URLs take ``?timeout=SECONDS`` (default 2)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        from broker.store.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    if scheme in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        from broker.store.redis import RedisStore

        return RedisStore.from_url(url)
    raise ValueError(
        f"unsupported store URL {shown_url(url)!r}: expected memory://, sqlite://, redis://, "
        "rediss:// or redis+cluster://"
    )
