"""State stores: the contract, and where to find an implementation for a URL."""

from __future__ import annotations

from broker.store.base import Assignment, Finish, ResumeTicket, Store, StoreUnavailable
from broker.store.memory import MemoryStore

__all__ = [
    "Assignment",
    "Finish",
    "MemoryStore",
    "ResumeTicket",
    "Store",
    "StoreUnavailable",
    "open_store",
]


def open_store(url: str) -> Store:
    """``memory://`` for the embedded store; other schemes as their stores are added."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        return MemoryStore()
    raise ValueError(f"unsupported store URL {url!r}: expected memory://")
