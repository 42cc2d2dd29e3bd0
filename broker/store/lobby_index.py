"""The lobby's index of requests still searching, in the memory store (and so the embedded
SQLite store, whose open calls live in memory).

The index is hot state, like rings in flight: it names calls by the primary language they are
searching in now, and means nothing once the process is gone (a restart ends every open call).
It may name a call that has since stopped searching; the broker's lobby checks each call it
reads and drops such entries (``broker.lobby``), so the index need not change atomically with
the call.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from broker.model import Call, Profile, primary_language


class MemoryLobbyIndex:
    """A mixin of ``MemoryStore``: the lobby methods of the ``Store`` contract."""

    _calls: dict[str, Call]
    _profiles: dict[str, Profile]
    _rung: dict[str, set[str]]

    def _lobby_init(self) -> None:
        # primary language -> call -> requested at; call -> the language it is listed under
        self._lobby: dict[str, dict[str, float]] = {}
        self._lobby_where: dict[str, str] = {}

    async def lobby_put(self, call_id: str, language: str, requested_at: float) -> None:
        lang = primary_language(language)
        self._lobby_unlist(call_id)
        self._lobby.setdefault(lang, {})[call_id] = requested_at
        self._lobby_where[call_id] = lang

    async def lobby_drop(self, call_id: str) -> None:
        self._lobby_unlist(call_id)

    async def lobby_calls(self, language: str, limit: int) -> tuple[list[Call], int]:
        listed = self._lobby.get(primary_language(language), {})
        oldest = heapq.nsmallest(max(0, limit), listed.items(), key=lambda item: (item[1], item[0]))
        calls: list[Call] = []
        for call_id, _ in oldest:
            call = self._calls.get(call_id)
            if call is None:  # gone from memory (the embedded store keeps ended calls on file)
                self._lobby_unlist(call_id)
            else:
                calls.append(call.model_copy(update={"languages": list(call.languages)}))
        return calls, len(self._lobby.get(primary_language(language), {}))

    async def lobby_facts(
        self, recipient_ids: Sequence[str], call_ids: Sequence[str]
    ) -> tuple[list[frozenset[str]], list[set[str]]]:
        blocked = [
            p.blocked if (p := self._profiles.get(u)) is not None else frozenset()
            for u in recipient_ids
        ]
        return blocked, [set(self._rung.get(c, ())) for c in call_ids]

    def _lobby_unlist(self, call_id: str) -> None:
        old = self._lobby_where.pop(call_id, None)
        if old is not None:
            listed = self._lobby.get(old)
            if listed is not None:
                listed.pop(call_id, None)
                if not listed:
                    del self._lobby[old]
