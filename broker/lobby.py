"""The lobby: requests still searching, for an on-duty volunteer to look at and take (pull,
beside the rings the dispatcher pushes).

A request is listed while its public search runs: a volunteer request (no partner queue, not
one that asked for an automatic helper, not circle-only, past a circle's head start) that is
still searching. It is listed under the language the search is in now (``Store.lobby_put``),
kept up as the broker moves the call (``track``), and read back by each node that has watchers
(``read``): one read per language per refresh, shared by every watcher of the node, then one
``view`` per watcher in memory. The index may lag a call by a step (a node that died between
assigning and unlisting); every call read is checked here, and one that is not listable any
more is dropped, so a watcher never sees it.

Taking (``Broker.take``) is the same atomic first accept as a ring's: the taker is reserved a
ring (the store's ``reserve_ring``: still searching, not busy, under the cap, not rung before)
and then ``assign`` decides, exactly as for an accept. Whoever the store's ``assign`` names,
on any node, is the one winner.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from broker.clock import Clock
from broker.dispatch import DispatchSettings
from broker.model import (
    Call,
    CallState,
    CircleMode,
    Profile,
    Role,
    local_datetime,
    primary_language,
)
from broker.store.base import Store

# What one watcher is shown at most; ``more`` counts the rest.
LOBBY_SIZE = 20
# Read beyond what is shown, per language: room for the calls a watcher may not take (rung
# before, blocks) without a second read.
READ_SLACK = 20


class LobbyClosed(enum.StrEnum):
    """Why the broker closed a volunteer's lobby."""

    OFF_DUTY = "off_duty"
    SUSPENDED = "suspended"
    IN_CALL = "in_call"


@dataclass(frozen=True, slots=True)
class LobbyEntry:
    """A request as a watcher sees it: what, never who."""

    call_id: str
    language: str
    topic: str | None
    requested_at: float


@dataclass(frozen=True, slots=True)
class LobbyView:
    entries: tuple[LobbyEntry, ...]
    more: int


EMPTY = LobbyView((), 0)


@dataclass(slots=True)
class Listing:
    """One read of the lobby, for the languages some watchers speak (primary subtags). Per call
    it keeps what a view must check but never shows: who asked, whom they block, who was rung."""

    calls: dict[str, list[Call]] = field(default_factory=dict)  # language -> oldest first
    totals: dict[str, int] = field(default_factory=dict)  # language -> how many listed
    blocked_by: dict[str, frozenset[str]] = field(default_factory=dict)  # call -> recipient's
    rung: dict[str, set[str]] = field(default_factory=dict)  # call -> everyone rung for it


def listable(call: Call, settings: DispatchSettings, now: float) -> bool:
    """Whether the lobby lists ``call`` at ``now``."""
    if call.state is not CallState.SEARCHING or call.org is not None:
        return False
    if call.helper == "assistant" or call.circle is CircleMode.ONLY:
        return False
    if call.circle is CircleMode.FIRST:
        return now >= call.search_started_at + settings.circle_head_start_s
    return True


def search_language(call: Call) -> str:
    """The language the search is in now (after widening, the recipient's next one)."""
    return call.languages[call.language_index] if call.languages else call.language


def inside_window(profile: Profile, now: float) -> bool:
    return profile.ring_window.contains(local_datetime(profile.timezone, now).time())


class Lobby:
    def __init__(self, store: Store, clock: Clock, settings: DispatchSettings) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings

    def entry(self, call: Call) -> tuple[str, float] | None:
        """How the index lists ``call`` now (its search language and when it was asked for),
        or None when it does not."""
        if listable(call, self.settings, self.clock.now()):
            return search_language(call), call.requested_at
        return None

    async def track(self, call: Call) -> None:
        """Keep the index up with a call the broker just moved (a wave, an answer, an end)."""
        entry = self.entry(call)
        if entry is not None:
            await self.store.lobby_put(call.id, *entry)
        else:
            await self.store.lobby_drop(call.id)

    async def read(self, languages: Iterable[str]) -> Listing:
        """The listed calls in each of ``languages``, checked, with the facts views need."""
        now = self.clock.now()
        listing = Listing()
        wanted = sorted({primary_language(tag) for tag in languages})
        reads = await asyncio.gather(
            *(self.store.lobby_calls(lang, LOBBY_SIZE + READ_SLACK) for lang in wanted)
        )
        for lang, (calls, total) in zip(wanted, reads, strict=True):
            kept: list[Call] = []
            for call in calls:
                if listable(call, self.settings, now) and (
                    primary_language(search_language(call)) == lang
                ):
                    kept.append(call)
                    continue
                # Answered, ended or moved on without the index hearing of it (a node died
                # between the two): put the index right.
                await self.track(call)
                total -= 1
            listing.calls[lang] = kept
            listing.totals[lang] = max(total, len(kept))
        shown = [c for calls in listing.calls.values() for c in calls]
        recipients = sorted({c.recipient_id for c in shown})
        blocked, rung = await self.store.lobby_facts(recipients, [c.id for c in shown])
        blocks = dict(zip(recipients, blocked, strict=True))
        for call, rung_for in zip(shown, rung, strict=True):
            listing.blocked_by[call.id] = blocks[call.recipient_id]
            listing.rung[call.id] = rung_for
        return listing

    def view(self, profile: Profile, listing: Listing) -> LobbyView:
        """What one volunteer sees of ``listing``: the requests they could take, oldest first,
        at most ``LOBBY_SIZE``, and how many more are listed in their languages."""
        now = self.clock.now()
        if not inside_window(profile, now):
            return EMPTY
        me = profile.user_id
        mine = sorted({primary_language(tag) for tag in profile.languages})
        takeable: list[Call] = []
        total = 0
        for lang in mine:
            calls = listing.calls.get(lang, [])
            allowed = [
                c
                for c in calls
                if c.recipient_id != me
                and c.recipient_id not in profile.blocked
                and me not in listing.blocked_by.get(c.id, frozenset())
                and me not in listing.rung.get(c.id, set())
            ]
            takeable += allowed
            total += listing.totals.get(lang, 0) - (len(calls) - len(allowed))
        takeable.sort(key=lambda c: (c.requested_at, c.id))
        shown = takeable[:LOBBY_SIZE]
        entries = tuple(
            LobbyEntry(c.id, search_language(c), c.topic, c.requested_at) for c in shown
        )
        return LobbyView(entries, max(0, total - len(shown)))

    async def why_closed(self, profile: Profile) -> LobbyClosed | None:
        """Why the volunteer may not watch the lobby now, or None if they may."""
        # Two reads per watcher and pass: a suspension takes the volunteer off duty, so the
        # restriction is read only to name the reason.
        on_duty, current = await asyncio.gather(
            self.store.is_on_duty(profile.user_id),
            self.store.current_call(profile.user_id),
        )
        if not on_duty:
            restriction = await self.store.get_restriction(profile.user_id)
            if restriction is not None and restriction.active(self.clock.now()):
                return LobbyClosed.SUSPENDED
            return LobbyClosed.OFF_DUTY
        if current is not None:
            return LobbyClosed.IN_CALL
        return None


def may_watch(profile: Profile) -> bool:
    return profile.role is Role.VOLUNTEER
