"""What every part of the Redis store shares: key names of users and calls, value encoding,
and turning Redis being unreachable into ``StoreUnavailable``."""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import redis.exceptions as rex

from broker.orgs import AgentRecord
from broker.store.base import StoreUnavailable

P = ParamSpec("P")
T = TypeVar("T")

REDIS_DOWN: tuple[type[BaseException], ...] = (
    rex.ConnectionError,
    rex.TimeoutError,
    rex.ClusterDownError,
    rex.ClusterError,
    rex.TryAgainError,
    rex.MasterDownError,
    rex.ReadOnlyError,
    rex.SlotNotCoveredError,  # a failover under way: the dead master's slots have no owner yet
    OSError,
)


def unavailable_on_redis_errors(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except REDIS_DOWN as exc:
            errors = getattr(args[0], "errors", None) if args else None
            if isinstance(errors, Counter):  # the store's count of failed operations
                errors[method.__name__] += 1
            raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc

    return wrapper


def user_key(uid: str) -> str:
    return "vb:{u:" + uid + "}"


def call_key(cid: str) -> str:
    return "vb:{" + cid + "}"


# One encoder for everything stored: ``json.dumps`` with separators builds a new encoder on
# every call, most of the cost of a small value (a call record is 34 of them).
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def enc(value: Any) -> str:
    return _ENCODER.encode(value)


def agent_record(user_id: str, h: dict[str, str], **live: Any) -> AgentRecord:
    """An agent's stored hash as a record; ``live`` adds the facts read elsewhere (connected,
    busy, ringing, last rung)."""
    return AgentRecord(
        user_id=user_id,
        state="available" if h.get("state") == "available" else "away",
        display_name=h.get("display_name", ""),
        since=float(h.get("since", 0)),
        idle_since=float(h.get("idle_since", 0)),
        wrapup_until=float(h.get("wrapup_until", 0)),
        missed=int(h.get("missed", 0)),
        calls=int(h.get("calls", 0)),
        **live,
    )
