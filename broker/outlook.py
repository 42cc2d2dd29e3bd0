"""A volunteer's outlook: how soon their next call is likely to come while on duty, and why.

Derived from what the broker already knows, and from how the dispatcher really chooses
(``broker.dispatch``, the ``default`` policy): for each language the volunteer speaks,

- the requests of the last 30 days in that language, by UTC hour of the week, and the hours of
  those that fall inside the volunteer's ring window (their local time);
- the volunteers on duty in that language whose ring windows are open at each hour
  (``Store.duty_windows``: one count per zone and window, never a read of everyone);
- the volunteer's place in the order the dispatcher ranks by (fewest calls in 30 days, then
  longest since last rung, ties at random), estimated from a random draw of those in window
  (``Store.candidates_sample``, the dispatcher's own draw);
- the rings a search sent and the share of rings answered, in the last 30 days.

From these, per hour of the week: the chance that a request reaches them, wave by wave (a wave
draws ``max(candidate_factor x size, candidate_sample)`` volunteers at random and rings the best
``size``; the search goes on to the next wave only while nobody has answered), with those with
fewer calls ahead of them and those with as many sharing alike (the order rotates among them);
hence rings and calls per week, and the expected time to the next call through the days when
their recent calls leave the 30 days, counted in calendar time as if they were on duty through
every hour of their window (docs/dispatch.md, "A volunteer's outlook"). The time to the next call of a steady rate is
exponential, so the chance of a call within the expected time is 1 - 1/e, about 63%: "likely".

Plain logic over a store: its cost follows the distinct ring windows, the hours of the week and
one draw per language, plus one read of the period's ended calls (``RequestHistory``), which a
server keeps for a few minutes and shares between volunteers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import time
from enum import StrEnum
from functools import lru_cache

from pydantic import BaseModel, Field

from broker.dispatch import DispatchSettings, GrowingWaves
from broker.model import Call, Profile, RingWindow, Role, local_datetime, primary_language
from broker.store.base import Store

DAYS = 30
WEEK_S = 7 * 86400.0
HOURS = 7 * 24
# 1970-01-05 00:00 UTC, a Monday: hours of the week are counted from Monday 00:00 UTC.
_MONDAY = 4 * 86400.0
# Volunteers drawn to estimate a place in the order: the share ahead is known to a few percent.
RANK_SAMPLE = 200
# The share of rings answered when the last 30 days had no rings in the language: what the
# simulator's calibrated volunteers answer (``country``: about 2.2 rings per answered call).
PRIOR_ANSWER_SHARE = 0.45
PRIOR_RINGS_PER_SEARCH = 2.2
# A search this unlikely to be still going rings nobody more worth counting.
_NEGLIGIBLE = 1e-6


class Bucket(StrEnum):
    DAY = "day"
    THREE_DAYS = "3days"
    WEEK = "week"
    MONTH = "month"
    LONGER = "longer"


_BUCKET_DAYS = (
    (1.0, Bucket.DAY),
    (3.0, Bucket.THREE_DAYS),
    (7.0, Bucket.WEEK),
    (30.0, Bucket.MONTH),
)


def bucket_of(days: float | None) -> Bucket:
    """The range an expected wait in days falls in (None: no call expected at all)."""
    if days is not None:
        for bound, bucket in _BUCKET_DAYS:
            if days <= bound:
                return bucket
    return Bucket.LONGER


class LanguageOutlook(BaseModel):
    language: str = Field(description="primary language tag")
    sharing_window: int = Field(
        description="other volunteers on duty in this language whose ring window overlaps yours"
    )
    requests_30d: int = Field(
        description="volunteer requests in this language in your window hours, last 30 days"
    )
    in_window: int = Field(
        description="volunteers on duty in this language with their window open at a typical "
        "hour of yours (you included when on duty)"
    )
    place: int = Field(description="your place in the dispatcher's order among them, 1 = first")
    tied: int = Field(description="how many share your place (ties are drawn at random)")
    rings_per_week: float
    calls_per_week: float


class Suggestion(BaseModel):
    kind: str = Field(description="'language': add this language; 'hours': widen your window")
    language: str
    hours: list[int] = Field(
        default_factory=list, description="'hours': local hours of day (0-23) to add"
    )
    requests_30d: int = Field(description="requests there in the last 30 days")
    volunteers: int = Field(description="volunteers on duty covering them")


class Outlook(BaseModel):
    """``GET /v1/me/outlook``."""

    timezone: str
    ring_window: dict[str, str]
    on_duty: bool
    window_hours_per_week: int
    answer_share: float = Field(description="share of rings answered (last 30 days)")
    languages: list[LanguageOutlook]
    rings_per_week: float
    calls_per_week: float
    expected_days: float | None = Field(description="null: no call to be expected at all")
    bucket: Bucket = Field(description="day, 3days, week, month or longer")
    suggestions: list[Suggestion] = Field(description="when the wait is long (over a week)")


@dataclass
class RequestHistory:
    """The last ``DAYS`` days' volunteer requests by language and UTC hour of the week, and
    the rings and answers of their searches: read once, shared by every outlook."""

    now: float
    requests: dict[str, list[int]] = field(default_factory=dict)
    searches: int = 0  # requests whose search rang someone
    rings: int = 0
    answered: int = 0

    @classmethod
    def of(cls, calls: Iterable[Call], now: float) -> RequestHistory:
        history = cls(now)
        since = now - DAYS * 86400.0
        for call in calls:
            if call.requested_at < since or call.requested_at > now:
                continue
            if call.org is not None and call.overflowed_at is None and call.escalated_at is None:
                continue  # a partner queue's call, not a volunteer request
            language = primary_language(call.language)
            slots = history.requests.setdefault(language, [0] * HOURS)
            slots[hour_of_week(call.requested_at)] += 1
            # Rings answered over rings sent, among searches that rang someone (a call answered
            # with no ring recorded would say nothing of how rings are answered).
            if call.notified > 0:
                history.searches += 1
                history.rings += call.notified
                # A volunteer's answer (not a help centre's after an escalation).
                if call.helper_role is Role.VOLUNTEER and call.assigned_at is not None:
                    history.answered += 1
        return history

    @property
    def answer_share(self) -> float:
        """Of the rings sent, the share that became a call: what one ring is worth."""
        if self.rings <= 0:
            return PRIOR_ANSWER_SHARE
        return min(1.0, self.answered / self.rings)

    @property
    def rings_per_search(self) -> float:
        if self.searches <= 0:
            return PRIOR_RINGS_PER_SEARCH
        return self.rings / self.searches


async def request_history(store: Store, now: float) -> RequestHistory:
    return RequestHistory.of(
        await store.ended_calls(now - DAYS * 86400.0, math.nextafter(now, math.inf)), now
    )


def hour_of_week(ts: float) -> int:
    """0 = Monday 00:00-01:00 UTC."""
    return int((ts - _MONDAY) // 3600) % HOURS


def slot_instants(now: float) -> list[float]:
    """For each UTC hour of the week, the middle of its latest occurrence up to ``now`` (a
    week back at most): the instant whose local times stand for it."""
    week_start = now - (now - _MONDAY) % WEEK_S
    out = []
    for slot in range(HOURS):
        at = week_start + slot * 3600 + 1800
        out.append(at if at <= now else at - WEEK_S)
    return out


@lru_cache(maxsize=8192)
def _local_time(zone: str, at: float) -> time:
    # The same few zones at the same 168 instants, for every volunteer asking within the hour.
    return local_datetime(zone, at).time()


def _open(zone: str, window: RingWindow, at: float) -> bool:
    return window.contains(_local_time(zone, at))


def _binomial_below(m: int, x: float, k: int) -> float:
    """P(Binomial(m, x) < k)."""
    if k <= 0:
        return 0.0
    if k > m:
        return 1.0
    if x <= 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    term = (1.0 - x) ** m
    total = term
    for i in range(1, k):
        term *= (m - i + 1) / i * x / (1.0 - x)
        total += term
    return min(1.0, total)


def _expected_min(m: int, y: float, k: int) -> float:
    """E[min(Y, k)] for Y ~ Binomial(m, y)."""
    if y <= 0.0 or k <= 0:
        return 0.0
    if y >= 1.0:
        return float(min(m, k))
    term = (1.0 - y) ** m  # P(Y = 0)
    below = 0.0  # P(Y < j)
    total = 0.0
    for j in range(min(k, m + 1)):
        total += j * term
        below += term
        term *= (m - j) / (j + 1) * y / (1.0 - y)
    return total + k * max(0.0, 1.0 - below)


def _tie_averaged_below(m: int, a: float, t: float, k: int) -> float:
    """The mean over r uniform in [0, 1] of P(Binomial(m, a + t r) < k): the chance that
    fewer than ``k`` of ``m`` others drawn stand before a volunteer with a share ``a`` ranked
    ahead and ``t`` tied, ties broken at random. Exact: the integral of a binomial
    probability over its success chance is one of the binomial of one more trial,
    ``integral_0^y P(Bin(m, x) = i) dx = P(Bin(m + 1, y) > i) / (m + 1)``, and summed over
    ``i < k`` that is ``E[min(Bin(m + 1, y), k)] / (m + 1)``."""
    if t <= 0.0:
        return _binomial_below(m, a, k)
    upper = _expected_min(m + 1, a + t, k)
    lower = _expected_min(m + 1, a, k)
    return max(0.0, min(1.0, (upper - lower) / ((m + 1) * t)))


def rings_per_search(settings: DispatchSettings, answer: float) -> float:
    """The rings one search sends, each answered with chance ``answer`` on its own, when the
    next wave goes out only if none of the rings before it was answered (a large pool)."""
    policy = GrowingWaves(settings)
    waves = max(1, math.ceil(settings.max_wait_s / settings.wave_interval_s))
    rings, searching = 0.0, 1.0
    for wave in range(waves):
        k = policy.wave_size(wave)
        rings += searching * k
        searching *= (1.0 - answer) ** k
        if searching < _NEGLIGIBLE:
            break
    return rings


def ring_answer_chance(settings: DispatchSettings, observed: float) -> float:
    """The chance of answer per ring that makes the waves send ``observed`` rings a search, as
    they did in the period. Not the share of rings answered: a wave rings several at once and
    a later wave can go out before an accept arrives, so more rings go out than one answer
    needs, and some accepts come after another's (too late)."""
    if observed <= 1.0:
        return 1.0
    low, high = 1e-6, 1.0
    if rings_per_search(settings, low) <= observed:
        return low
    for _ in range(60):  # bisection: the rings fall as the chance rises
        middle = (low + high) / 2
        if rings_per_search(settings, middle) > observed:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def reach_per_request(
    settings: DispatchSettings, pool: int, ahead: float, tied: float, answer: float
) -> float:
    """The chance that one request rings a volunteer who has ``ahead`` volunteers ranked
    before them and ``tied`` others at their rank, among ``pool`` in window (them included).

    Wave by wave, as the dispatcher goes: a wave of ``k`` rings the best ``k`` of a random draw
    of ``s`` (everyone when ``pool`` left is no more than ``s``); those rung are the best, so
    they come off the ones ahead first. A tie is broken at random: given the volunteer's own
    draw ``r`` each tied one is ahead with chance ``r``, so the number ahead in a draw is
    binomial and the chance is integrated over ``r``. The search reaches the wave only if none
    of the rings before it was answered (each answered with chance ``answer``)."""
    if pool <= 0:
        return 0.0
    policy = GrowingWaves(settings)
    waves = max(1, math.ceil(settings.max_wait_s / settings.wave_interval_s))
    searching = 1.0  # the chance the search is still on at this wave
    not_yet = 1.0  # the chance the volunteer was not rung in an earlier wave
    reach = 0.0
    rung = 0
    for wave in range(waves):
        left = pool - rung  # not rung yet, the volunteer among them
        if left <= 0 or searching < _NEGLIGIBLE:
            break
        k = policy.wave_size(wave)
        before = max(0.0, ahead - rung)
        ties = max(0.0, tied - max(0.0, rung - ahead))
        others = left - 1
        if settings.candidate_factor == 0:
            drawn = left
        else:
            drawn = max(settings.candidate_factor * k, settings.candidate_sample)
        if drawn >= left:
            # Everyone is ranked: rung if fewer than k stand before them after the tie-break.
            p = min(1.0, max(0.0, (k - before) / (ties + 1))) if before < k else 0.0
        else:
            a = min(1.0, before / others) if others else 0.0
            t = min(1.0 - a, ties / others) if others else 0.0
            p = drawn / left * _tie_averaged_below(drawn - 1, a, t, k)
        reach += searching * not_yet * p
        not_yet *= 1.0 - p
        taken = min(k, left)
        rung += taken
        searching *= (1.0 - answer) ** taken
    return min(1.0, reach)


@dataclass(frozen=True, slots=True)
class _Standing:
    """Where a volunteer stands among those in window, as shares of the others: ranked before
    them and tied with them by the dispatcher's key (for their place), and by calls in 30 days
    alone (``calls[j]``: the share with ``j`` calls; for the rate)."""

    ahead: float = 0.0
    tied: float = 0.0
    calls: dict[int, float] = field(default_factory=dict)

    def fewer_calls(self, j: int) -> float:
        return sum(share for n, share in self.calls.items() if n < j)


async def _standing(
    store: Store, language: str, at: float, user_id: str, key: tuple[int, float], rng: random.Random
) -> _Standing:
    """The volunteer's standing among those in window at ``at``, from a draw like a wave's."""
    found = await store.candidates_sample(language, at, RANK_SAMPLE, 0, rng)
    others = [c for c in found.candidates if c.user_id != user_id and not c.assistant]
    if not others:
        return _Standing()
    n = len(others)
    by_calls: dict[int, float] = {}
    for c in others:
        by_calls[c.calls_30d] = by_calls.get(c.calls_30d, 0.0) + 1.0 / n
    return _Standing(
        ahead=sum(1 for c in others if (c.calls_30d, c.last_rung_at) < key) / n,
        tied=sum(1 for c in others if (c.calls_30d, c.last_rung_at) == key) / n,
        calls=by_calls,
    )


def expected_wait(rates: Sequence[float], steps: Sequence[float]) -> float | None:
    """The expected time to a first event of a process whose rate is ``rates[0]`` until
    ``steps[0]``, then ``rates[1]`` until ``steps[1]`` ..., the last rate for ever (``steps``
    one shorter than ``rates``, increasing). None when it may never come."""
    expected, alive, start = 0.0, 1.0, 0.0
    for k, rate in enumerate(rates):
        end = steps[k] if k < len(steps) else math.inf
        span = end - start
        if math.isinf(span):
            if rate <= 0.0:
                return None if alive > _NEGLIGIBLE else expected
            return expected + alive / rate
        if rate > 0.0:
            expected += alive * (1.0 - math.exp(-rate * span)) / rate
            alive *= math.exp(-rate * span)
        else:
            expected += alive * span
        start = end
    return expected


async def outlook(
    store: Store,
    profile: Profile,
    now: float,
    settings: DispatchSettings,
    history: RequestHistory,
    rng: random.Random | None = None,
) -> Outlook:
    rng = rng or random.Random()
    instants = slot_instants(now)
    mine = [_open(profile.timezone, profile.ring_window, at) for at in instants]
    my_slots = [slot for slot, inside in enumerate(mine) if inside]
    # Where they stand in the order: calls answered in 30 days, then when last rung.
    calls = await store.calls_of(profile.user_id, limit=1000)
    horizon = now - DAYS * 86400.0
    answered = sorted(
        c.assigned_at
        for c in calls
        if c.helper_id == profile.user_id and c.assigned_at is not None and c.assigned_at >= horizon
    )
    calls_30d = len(answered)
    key = (calls_30d, await store.last_rung(profile.user_id))
    on_duty = await store.is_on_duty(profile.user_id)
    answer = history.answer_share
    # The waves' chance to stop at each ring, fitted to the rings a search sent lately.
    stops = ring_answer_chance(settings, history.rings_per_search)
    weeks = DAYS / 7.0
    # A typical hour of theirs for the draw: now if their window is open, else the middle
    # of their window hours (the draw asks who is in window then, on duty now).
    typical = now if _open(profile.timezone, profile.ring_window, now) else None
    if typical is None and my_slots:
        typical = instants[my_slots[len(my_slots) // 2]]
    per_language: list[LanguageOutlook] = []
    counts_by_language: dict[str, list[tuple[str, RingWindow, int]]] = {}
    # Rings a week at each number of calls in 30 days they will have: now, and after each of
    # their calls leaves the 30 days (the dispatcher ranks fewer calls first).
    tier_rings = [0.0] * (calls_30d + 1)
    for language in _spoken(profile.languages):
        groups = await store.duty_windows(language)
        counts_by_language[language] = groups
        pool = [sum(n for zone, window, n in groups if _open(zone, window, at)) for at in instants]
        me_in_pool = 0 if on_duty else 1  # an off-duty volunteer is not in the counts yet
        overlap = sum(
            n
            for zone, window, n in groups
            if any(_open(zone, window, instants[s]) for s in my_slots)
        )
        sharing = max(0, overlap - (1 if on_duty else 0))
        requests = history.requests.get(language, [0] * HOURS)
        standing = (
            await _standing(store, language, typical, profile.user_id, key, rng)
            if typical is not None
            else _Standing()
        )
        reach_at: dict[tuple[int, int], float] = {}
        current = 0.0
        for tier in range(calls_30d + 1):
            rings = 0.0
            for slot in my_slots:
                if not requests[slot]:
                    continue
                n = pool[slot] + me_in_pool
                reach = reach_at.get((n, tier))
                if reach is None:
                    # Fewer calls rank first; among equal calls the order rotates (least
                    # recently rung first), so over time each gets an equal share: tied.
                    others = n - 1
                    reach = reach_at[(n, tier)] = reach_per_request(
                        settings,
                        n,
                        standing.fewer_calls(tier) * others,
                        standing.calls.get(tier, 0.0) * others,
                        stops,
                    )
                rings += requests[slot] / weeks * reach
            tier_rings[tier] += rings
            if tier == calls_30d:
                current = rings
        typical_pool = (
            sum(n for zone, window, n in groups if _open(zone, window, typical)) + me_in_pool
            if typical is not None
            else 0
        )
        others = max(0, typical_pool - 1)
        per_language.append(
            LanguageOutlook(
                language=language,
                sharing_window=sharing,
                requests_30d=sum(requests[s] for s in my_slots),
                in_window=typical_pool,
                place=1 + round(standing.ahead * others),
                tied=round(standing.tied * others),
                rings_per_week=round(current, 3),
                calls_per_week=round(current * answer, 3),
            )
        )
    # Calls a week now, then after each of their calls in the last 30 days leaves them.
    rates = [tier_rings[calls_30d - k] * answer / 7.0 for k in range(calls_30d + 1)]
    steps = [(at + DAYS * 86400.0 - now) / 86400.0 for at in answered]
    expected = expected_wait(rates, steps)
    bucket = bucket_of(expected)
    suggestions: list[Suggestion] = []
    if expected is None or expected > 7.0:
        suggestions = await _suggest(store, profile, history, instants, mine, counts_by_language)
    return Outlook(
        timezone=profile.timezone,
        ring_window=profile.ring_window.as_wire(),
        on_duty=on_duty,
        window_hours_per_week=len(my_slots),
        answer_share=round(answer, 3),
        languages=per_language,
        rings_per_week=round(sum(lo.rings_per_week for lo in per_language), 3),
        calls_per_week=round(sum(lo.calls_per_week for lo in per_language), 3),
        expected_days=round(expected, 1) if expected is not None else None,
        bucket=bucket,
        suggestions=suggestions,
    )


def _spoken(languages: Sequence[str]) -> list[str]:
    out: list[str] = []
    for tag in languages:
        primary = primary_language(tag)
        if primary not in out:
            out.append(primary)
    return out


# Suggested hours: at most this many, each with requests in the last 30 days.
_SUGGESTED_HOURS = 3


async def _suggest(
    store: Store,
    profile: Profile,
    history: RequestHistory,
    instants: list[float],
    mine: list[bool],
    groups_of: dict[str, list[tuple[str, RingWindow, int]]],
) -> list[Suggestion]:
    """Where their help is short: the language they do not speak with the most requests per
    volunteer on duty, and, in each of theirs, the local hours outside their window with the
    most requests per volunteer covering them."""
    out: list[Suggestion] = []
    best: tuple[float, str, int, int] | None = None
    for language, requests in sorted(history.requests.items()):
        if language in groups_of:
            continue
        total = sum(requests)
        if not total:
            continue
        volunteers = sum(n for _, _, n in await store.duty_windows(language))
        score = total / (volunteers + 1)
        if best is None or score > best[0]:
            best = (score, language, total, volunteers)
    if best is not None:
        out.append(
            Suggestion(kind="language", language=best[1], requests_30d=best[2], volunteers=best[3])
        )
    for language, groups in groups_of.items():
        requests = history.requests.get(language, [0] * HOURS)
        # Local hour of day -> (requests, volunteers covering it summed over the week's days).
        by_hour: dict[int, tuple[int, int]] = {}
        for slot, at in enumerate(instants):
            if mine[slot]:
                continue
            hour = local_datetime(profile.timezone, at).hour
            covering = sum(n for zone, window, n in groups if _open(zone, window, at))
            n, cover = by_hour.get(hour, (0, 0))
            by_hour[hour] = (n + requests[slot], cover + covering)
        short = [(hour, n, cover / 7) for hour, (n, cover) in by_hour.items() if n]
        short.sort(key=lambda item: (-item[1] / (item[2] + 1), item[0]))
        chosen = short[:_SUGGESTED_HOURS]
        if chosen:
            out.append(
                Suggestion(
                    kind="hours",
                    language=language,
                    hours=sorted(hour for hour, _, _ in chosen),
                    requests_30d=sum(n for _, n, _ in chosen),
                    # The volunteers covering those hours on an average day.
                    volunteers=round(sum(c for _, _, c in chosen) / len(chosen)),
                )
            )
    return out
