"""Volunteer fan-out: who is eligible, in what order, and how many to ring in each wave.

A search rings a first wave at once, then a larger wave every interval, until someone accepts or
the maximum wait passes. A wave that finds nobody left in the call's language widens the search
to the recipient's next language. Each ring takes one unit of the volunteer's daily ring budget
through the store's atomic ``reserve_ring``, so two nodes can never ring one volunteer twice.

The ranking and wave shape are a ``Policy``: a small strategy object. The server runs
``GrowingWaves``; the simulator runs it and the alternatives it is compared with.
"""

from __future__ import annotations

import asyncio
import heapq
import random
from collections.abc import Awaitable, Sequence
from dataclasses import replace
from typing import Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from broker.clock import Clock
from broker.events import Event, Ring, Status
from broker.model import (
    Call,
    CallState,
    Candidate,
    CircleMode,
    RingWindow,
    local_datetime,
    primary_language,
)
from broker.store.base import Store

# Timer names. Timers are data in the store: "<kind>|<call>[|<user>]".
WAVE = "wave"
EXPIRE = "expire"
RING = "ring"


A = TypeVar("A")
B = TypeVar("B")


async def both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Both at once (on a shared store, their round trips overlap), each seen through before
    an error of either is raised: neither goes on unseen behind the other's failure."""
    a, b = await asyncio.gather(first, second, return_exceptions=True)
    if isinstance(a, BaseException):
        raise a
    if isinstance(b, BaseException):
        raise b
    return a, b


def timer(kind: str, *parts: str) -> str:
    return "|".join((kind, *parts))


class DispatchSettings(BaseModel):
    """Every number of the search; each is configuration (``VABROKER_DISPATCH__...``)."""

    model_config = ConfigDict(frozen=True)

    first_wave: int = Field(default=1, ge=1, le=1000, description="volunteers in the first wave")
    wave_growth: float = Field(
        default=2.0, ge=1.0, le=10.0, description="each wave is this much larger"
    )
    max_wave: int = Field(default=40, ge=1, le=5000, description="no wave is larger than this")
    wave_interval_s: float = Field(default=15.0, gt=0, le=600, description="seconds between waves")
    ring_timeout_s: float = Field(default=45.0, gt=0, le=600, description="how long one ring lasts")
    max_wait_s: float = Field(
        default=180.0, gt=0, le=3600, description="search gives up after this"
    )
    candidate_factor: int = Field(
        default=10,
        ge=0,
        le=1000,
        description="a wave draws this many volunteers at random per ring it sends, and ranks "
        "those (0: rank every volunteer in window)",
    )
    circle_head_start_s: float = Field(
        default=30.0,
        ge=0,
        le=600,
        description="a request with circle 'first' rings only the circle for this long",
    )
    candidate_sample: int = Field(
        default=50,
        ge=0,
        le=1_000_000,
        description="a wave draws at least this many volunteers at random",
    )


class Policy(Protocol):
    """How many to ring in each wave, when, and whom first.

    ``awake`` narrows eligibility to local hours of the policy's own (in each candidate's time
    zone), on top of every volunteer's ring window and cap, which no policy can widen. ``None``
    means the volunteer's own window alone decides. The dispatcher reads it with a default of
    ``None``, so a policy written before the hook existed still runs.

    ``recent_first`` says that the policy ranks volunteers who answered a call lately before
    the others (most recent first), so a wave asks the store for them besides its random draw;
    read with a default of ``False``.
    """

    name: str
    awake: RingWindow | None

    def wave_size(self, wave: int) -> int:
        """How many to ring in wave ``wave`` (the first wave is 0)."""
        ...

    def wave_interval(self, wave: int) -> float:
        """Seconds from wave ``wave`` to the next."""
        ...

    def pick(
        self, eligible: Sequence[Candidate], call: Call, k: int, rng: random.Random
    ) -> list[Candidate]:
        """The best ``k`` of ``eligible``, best first."""
        ...


class GrowingWaves:
    """The default: growing waves, fairest first.

    Ranked by fewest calls in the last 30 days (so that everyone gets calls), then longest since
    last rung (so that nobody is rung over and over), ties at random.
    """

    name = "default"
    awake: RingWindow | None = None

    def __init__(self, settings: DispatchSettings) -> None:
        self.settings = settings

    def wave_size(self, wave: int) -> int:
        s = self.settings
        return min(s.max_wave, max(1, round(s.first_wave * s.wave_growth**wave)))

    def wave_interval(self, wave: int) -> float:
        return self.settings.wave_interval_s

    def pick(
        self, eligible: Sequence[Candidate], call: Call, k: int, rng: random.Random
    ) -> list[Candidate]:
        recipient = call.recipient_id
        keyed = [
            (recipient not in c.favourite_of, c.calls_30d, c.last_rung_at, rng.random(), i)
            for i, c in enumerate(eligible)
        ]
        return [eligible[key[-1]] for key in heapq.nsmallest(k, keyed)]


def ineligible(
    c: Candidate, call: Call, recipient_blocked: frozenset[str], rung: set[str]
) -> str | None:
    """Why a candidate may not be rung for this call, or None. Language, duty, reachability and
    ring window are the store's filter (``Store.candidates``); these are the per-call rules."""
    if c.user_id == call.recipient_id:
        return "self"
    if c.restricted:
        return "restricted"
    if c.busy:
        return "busy"
    if c.user_id in rung:
        return "rung_before"
    if c.rings_today >= c.daily_ring_cap:
        return "over_cap"
    if c.user_id in recipient_blocked or call.recipient_id in c.blocked:
        return "blocked"
    return None


class Dispatcher:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        settings: DispatchSettings,
        policy: Policy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self.policy: Policy = policy or GrowingWaves(settings)
        self.rng = rng or random.Random()

    async def start(self, call: Call) -> tuple[Call, list[Event]]:
        """Begin the search for a call just created: the maximum-wait timer and wave 0, at
        once (on a shared store the timer's write shares a round trip with the wave's reads).
        Both are seen through before a failure of either is raised, so that no wave goes on
        unseen behind an error."""
        _, first = await both(
            self.store.schedule(
                timer(EXPIRE, call.id), call.search_started_at + self.settings.max_wait_s
            ),
            self.wave(call),
        )
        return first

    async def wave(self, call: Call) -> tuple[Call, list[Event]]:
        """Ring the next wave of ``call`` and schedule the one after. Returns the call as updated
        and the rings (plus a status for the recipient when the search moved)."""
        now = self.clock.now()
        if (
            call.state is not CallState.SEARCHING
            or now >= call.search_started_at + self.settings.max_wait_s
        ):
            return call, []  # a late timer (a node that lagged or died): the search is over
        if call.helper == "assistant" and call.wave == 0:
            rung_assistant = await self._ring_assistant(call, now)
            if rung_assistant is not None:
                return rung_assistant
        if call.circle is not None:
            circled = await self._circle_step(call, now)
            if circled is not None:
                return circled
        size = self.policy.wave_size(call.wave)
        # Two reads at once: on a shared store each is a round trip.
        profile, rung = await asyncio.gather(
            self.store.get_profile(call.recipient_id), self.store.rung(call.id)
        )
        blocked = profile.blocked if profile else frozenset()
        rings: list[Event] = []
        language_index = call.language_index
        widened = False
        awake: RingWindow | None = getattr(self.policy, "awake", None)
        while True:
            language = call.languages[language_index]
            eligible = await self._pool(language, now, size, call, blocked, rung, awake)
            if eligible or language_index + 1 >= len(call.languages):
                break
            language_index += 1
            widened = True
        expires_at = min(
            now + self.settings.ring_timeout_s, call.search_started_at + self.settings.max_wait_s
        )
        rest = eligible
        while len(rings) < size and rest:
            chosen = self.policy.pick(rest, call, size - len(rings), self.rng)
            lost_race = False
            # Each reservation is its own atomic step: on a shared store they run at once.
            reserved = await asyncio.gather(
                *(
                    self.store.reserve_ring(call.id, c.user_id, c.ring_day, c.daily_ring_cap, now)
                    for c in chosen
                )
            )
            for c, ok in zip(chosen, reserved, strict=True):
                if ok:
                    rings.append(self._ring(call, c.user_id, expires_at, language))
                else:
                    lost_race = True  # rung by another call meanwhile: take the next best
            if not lost_race:
                break
            chosen_ids = {c.user_id for c in chosen}
            rest = [c for c in rest if c.user_id not in chosen_ids]
        fields: dict[str, object] = {"wave": call.wave + 1, "language_index": language_index}
        if rings:
            fields["notified"] = call.notified + len(rings)
            if call.first_ring_at is None:
                fields["first_ring_at"] = now
        call = call.model_copy(update=fields)
        next_at = now + self.policy.wave_interval(call.wave - 1)
        # Independent writes, at once: each ring's timer, the call's fields, the next wave.
        writes = [self.store.schedule(timer(RING, call.id, r.to), expires_at) for r in rings]
        writes.append(self.store.update_call(call.id, **fields))
        if next_at < call.search_started_at + self.settings.max_wait_s:
            writes.append(self.store.schedule(timer(WAVE, call.id), next_at))
        await asyncio.gather(*writes)
        events: list[Event] = list(rings)
        if call.wave > 1 and (rings or widened):
            events.append(
                Status(
                    to=call.recipient_id,
                    call_id=call.id,
                    state=CallState.SEARCHING,
                    notified=call.notified,
                    language=call.languages[language_index],
                )
            )
        return call, events

    async def _circle_step(self, call: Call, now: float) -> tuple[Call, list[Event]] | None:
        """The trusted circle's turn: every eligible member at once, in the first of the
        recipient's languages that has one, under the same rules as anyone (window, duty,
        reachability: the store's; cap, blocks, restrictions, busy: ``_eligible``). None when
        it is the public search's turn: circle ``first`` after its head start, or when nobody
        in the circle can be rung."""
        s = self.settings
        head_start_ends = call.search_started_at + s.circle_head_start_s
        if call.circle is CircleMode.FIRST and now >= head_start_ends:
            return None
        members = await self.store.circle(call.recipient_id)
        eligible: list[Candidate] = []
        language = call.languages[call.language_index]
        if members:
            profile = await self.store.get_profile(call.recipient_id)
            blocked = profile.blocked if profile else frozenset()
            rung = await self.store.rung(call.id)
            for language in call.languages:
                pool = [
                    c for c in await self.store.candidates(language, now) if c.user_id in members
                ]
                eligible = self._eligible(pool, call, blocked, rung)
                if eligible:
                    break
        if not eligible and call.circle is CircleMode.FIRST:
            return None
        end = call.search_started_at + s.max_wait_s
        expires_at = min(now + s.ring_timeout_s, end)
        rings: list[Event] = []
        for c in eligible:
            if await self.store.reserve_ring(call.id, c.user_id, c.ring_day, c.daily_ring_cap, now):
                await self.store.schedule(timer(RING, call.id, c.user_id), expires_at)
                ring = self._ring(call, c.user_id, expires_at, language)
                rings.append(replace(ring, circle=True))
        fields: dict[str, object] = {}
        if rings:
            fields["notified"] = call.notified + len(rings)
            if call.first_ring_at is None:
                fields["first_ring_at"] = now
            await self.store.update_call(call.id, **fields)
            call = call.model_copy(update=fields)
        # Circle first: the public search begins when the head start ends (or sooner, when
        # every circle ring has ended). Circle only: look again for members coming on duty.
        if call.circle is CircleMode.FIRST:
            next_at = head_start_ends
        else:
            next_at = now + self.policy.wave_interval(0)
        if next_at < end:
            await self.store.schedule(timer(WAVE, call.id), next_at)
        return call, rings

    async def _pool(
        self,
        language: str,
        now: float,
        size: int,
        call: Call,
        blocked: frozenset[str],
        rung: set[str],
        awake: RingWindow | None,
    ) -> list[Candidate]:
        """The eligible volunteers a wave of ``size`` ranks: a random draw from the store
        (``Store.candidates_sample``), drawn again twice as large while too few of those drawn
        may be rung, up to everyone in window. Every store answers the same way, so the server
        ranks on Redis exactly as the simulator does in memory."""
        s = self.settings
        if not s.candidate_factor:
            return self._allowed(
                await self.store.candidates(language, now), call, blocked, rung, awake, now
            )
        n = max(s.candidate_factor * size, s.candidate_sample)
        # Recent helpers for a policy that rings them first; those rung for this call already
        # are among them, so ask for that many more.
        recent = size + len(rung) if getattr(self.policy, "recent_first", False) else 0
        while True:
            found = await self.store.candidates_sample(language, now, n, recent, self.rng)
            eligible = self._allowed(found.candidates, call, blocked, rung, awake, now)
            if found.complete:
                return eligible
            if len(eligible) < size:
                n *= 2  # most of those drawn were busy, rung or asleep: draw more
                recent *= 2
                continue
            if not (recent and found.more_recent):
                return eligible
            # The helpers read may all have been busy, rung or asleep while later ones are
            # not: the policy must see enough of them, as if it saw everyone.
            lead = {c.user_id for c in found.candidates[: found.recent]}
            if sum(1 for c in eligible if c.user_id in lead) >= size:
                return eligible
            recent *= 2

    def _allowed(
        self,
        candidates: list[Candidate],
        call: Call,
        blocked: frozenset[str],
        rung: set[str],
        awake: RingWindow | None,
        now: float,
    ) -> list[Candidate]:
        eligible = self._eligible(candidates, call, blocked, rung)
        return eligible if awake is None else _inside(eligible, awake, now)

    @staticmethod
    def _eligible(
        candidates: list[Candidate], call: Call, blocked: frozenset[str], rung: set[str]
    ) -> list[Candidate]:
        """``ineligible(c, ...) is None`` for every candidate, written out inline: this runs over
        every volunteer of a language on every wave, tens of thousands in a country."""
        me = call.recipient_id
        return [
            c
            for c in candidates
            if not c.busy
            and not c.restricted
            and c.rings_today < c.daily_ring_cap
            and c.user_id not in rung
            and c.user_id != me
            and c.user_id not in blocked
            and me not in c.blocked
            and not c.assistant  # assistants are rung only for calls that ask (below)
        ]

    async def _ring_assistant(self, call: Call, now: float) -> tuple[Call, list[Event]] | None:
        """The first wave of a call that asked for an automatic helper: one free assistant
        alone; None when there is none, and the volunteers' search goes on as usual."""
        language = call.languages[call.language_index]
        profile = await self.store.get_profile(call.recipient_id)
        blocked = profile.blocked if profile else frozenset()
        rung = await self.store.rung(call.id)
        pool = [
            c
            for c in await self.store.candidates(language, now)
            if c.assistant and ineligible(c, call, blocked, rung) is None
        ]
        expires_at = min(
            now + self.settings.ring_timeout_s, call.search_started_at + self.settings.max_wait_s
        )
        for c in self.policy.pick(pool, call, len(pool), self.rng):
            if await self.store.reserve_ring(call.id, c.user_id, c.ring_day, c.daily_ring_cap, now):
                await self.store.schedule(timer(RING, call.id, c.user_id), expires_at)
                fields: dict[str, object] = {
                    "wave": 1,
                    "notified": call.notified + 1,
                    "first_ring_at": now,
                }
                await self.store.update_call(call.id, **fields)
                # Volunteers next if the assistant does not answer (it crashed, it is full).
                await self.store.schedule(timer(WAVE, call.id), now + self.policy.wave_interval(0))
                return call.model_copy(update=fields), [
                    self._ring(call, c.user_id, expires_at, language)
                ]
        return None

    def _ring(self, call: Call, user_id: str, expires_at: float, language: str) -> Ring:
        return Ring(
            to=user_id,
            call_id=call.id,
            language=language,
            requester_name=call.recipient_name,
            expires_at=expires_at,
            topic=call.topic,
            note=call.note,
            org=call.org,
            queue=call.queue,
            reading=call.reading,
        )

    async def pending_ring(self, call: Call, user_id: str) -> Ring:
        """The ring a volunteer should see again after resuming, with its original expiry."""
        expires_at = await self.store.deadline(timer(RING, call.id, user_id))
        if expires_at is None:
            expires_at = self.clock.now()
        ring = self._ring(call, user_id, expires_at, call.languages[call.language_index])
        if call.circle is not None and user_id in await self.store.circle(call.recipient_id):
            ring = replace(ring, circle=True)
        return ring


def _inside(candidates: list[Candidate], window: RingWindow, now: float) -> list[Candidate]:
    """Candidates whose local time at ``now`` is inside ``window``; one conversion per zone."""
    inside: dict[str, bool] = {}
    out = []
    for c in candidates:
        ok = inside.get(c.timezone)
        if ok is None:
            ok = inside[c.timezone] = window.contains(local_datetime(c.timezone, now).time())
        if ok:
            out.append(c)
    return out


def search_languages(requested: str | None, profile_languages: Sequence[str]) -> list[str]:
    """The order in which a search widens: the requested language, then the recipient's other
    languages, each primary language once."""
    order: list[str] = []
    seen: set[str] = set()
    for tag in ([requested] if requested else []) + list(profile_languages):
        primary = primary_language(tag)
        if primary not in seen:
            seen.add(primary)
            order.append(tag)
    return order or ["en"]
