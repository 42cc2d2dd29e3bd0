"""The Redis store's lobby index: requests still searching, by the language they search in.

``vb:{lobby:LANG}`` is a sorted set of call ids by the time they were requested, one per primary
language, and ``vb:{lobby}:where`` a hash naming the language each call is listed under (so
that a call moved to its next language leaves the old list). Each is one key on its own slot,
written with single commands: the index may name a call that has just stopped searching (the
broker checks each call it reads and drops such entries, ``broker.lobby``), so it need not change
in the same step as the call, and the same code runs on a single Redis and on a Cluster. Hot
state, not a record: a migration does not move it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from broker.model import Call, primary_language
from broker.store.redis_common import call_key, unavailable_on_redis_errors, user_key

_WHERE = "vb:{lobby}:where"


def _listed(lang: str) -> str:
    return "vb:{lobby:" + lang + "}"


class LobbyMixin:
    r: Any
    _calls: Callable[[list[str]], Awaitable[list[Call]]]  # the store's: one pipeline
    _pipelined: Callable[[Callable[[Any], object]], Awaitable[list[Any]]]

    @unavailable_on_redis_errors
    async def lobby_facts(
        self, recipient_ids: Sequence[str], call_ids: Sequence[str]
    ) -> tuple[list[frozenset[str]], list[set[str]]]:
        # One pipeline, not a round trip per recipient and call: a node reads this for every
        # listed call once a second while anyone watches.
        if not recipient_ids and not call_ids:
            return [], []
        replies = await self._pipelined(
            lambda pipe: (
                [pipe.smembers(user_key(u) + ":blocked") for u in recipient_ids],
                [pipe.smembers(call_key(c) + ":rung") for c in call_ids],
            )
        )
        n = len(recipient_ids)
        return [frozenset(b) for b in replies[:n]], [set(r) for r in replies[n:]]

    @unavailable_on_redis_errors
    async def lobby_put(self, call_id: str, language: str, requested_at: float) -> None:
        lang = primary_language(language)
        # One round trip (a request waits for it before its first ring goes out); a second
        # only when the call moved to its next language.
        old, _, _ = await self._pipelined(
            lambda pipe: (
                pipe.hget(_WHERE, call_id),
                pipe.zadd(_listed(lang), {call_id: requested_at}),
                pipe.hset(_WHERE, call_id, lang),
            )
        )
        if old is not None and old != lang:
            await self.r.zrem(_listed(old), call_id)

    @unavailable_on_redis_errors
    async def lobby_drop(self, call_id: str) -> None:
        old = await self.r.hget(_WHERE, call_id)
        if old is not None:
            await self._pipelined(
                lambda pipe: (pipe.zrem(_listed(old), call_id), pipe.hdel(_WHERE, call_id))
            )

    @unavailable_on_redis_errors
    async def lobby_calls(self, language: str, limit: int) -> tuple[list[Call], int]:
        key = _listed(primary_language(language))
        ids: list[str] = list(await self.r.zrange(key, 0, limit - 1)) if limit > 0 else []
        total = int(await self.r.zcard(key))
        calls = await self._calls(ids) if ids else []
        found = {c.id for c in calls}
        gone = [i for i in ids if i not in found]
        if gone:  # a call whose record has gone (erased, expired): no longer listed
            await self.r.zrem(key, *gone)
            await self.r.hdel(_WHERE, *gone)
            total -= len(gone)
        return calls, total
