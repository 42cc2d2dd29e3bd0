"""The discrete-event loop: a modelled world driving the real broker on a virtual clock.

The broker, its dispatcher and the store are the very code the server runs; only the clock is
virtual. The store is the memory store, or an empty Redis database (``simulate(...,
store_url="redis://...")``), which the run fills with its population and empties when done:
dispatch draws its candidates through the same store contract on both, so both measure what
production does. The loop moves the clock to whichever comes first, the next event of the
world (a call, a volunteer coming on or going off duty, an accept, a decline, a hang-up) or the
store's next timer, and calls the ``Broker`` method a real client or the server's timer loop
would. Whatever the broker says (rings, withdrawals, assignments) goes back into the world.

The world checks the broker's answers independently of the broker's own bookkeeping: a ring
outside the volunteer's window or the policy's waking hours, over their cap for their local day,
to someone off duty, or a call with two winners, is counted as a violation.

Each source of chance has its own seeded stream, so two policies see the same population, the
same calls at the same moments and the same duty sessions; a run is a function of its seed.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from broker.clock import VirtualClock
from broker.coverage import Coverage, coverage
from broker.events import Assigned, Event, Ring, Withdrawn
from broker.model import (
    BrokerError,
    CallState,
    CircleMode,
    EndReason,
    Profile,
    RingWindow,
    Role,
    local_datetime,
    primary_language,
)
from broker.policies import build_policy
from broker.service import Broker, LimitSettings
from broker.sim.scenario import Scenario
from broker.store import Store, open_store, shown_url
from broker.store.memory import MemoryStore

T = TypeVar("T")

# Kinds of world event, in the order they are processed when they fall on the same instant.
DUTY, ARRIVAL, ACCEPT, DECLINE, HANGUP, LOBBY = range(6)


@dataclass
class Violations:
    outside_window: int = 0  # the volunteer's own ring window
    outside_policy_hours: int = 0  # the policy's waking hours (``Policy.awake``)
    over_cap: int = 0
    off_duty: int = 0
    two_winners: int = 0

    @property
    def total(self) -> int:
        return (
            self.outside_window
            + self.outside_policy_hours
            + self.over_cap
            + self.off_duty
            + self.two_winners
        )


@dataclass
class Result:
    """One policy's run of one scenario. ``report()`` is the deterministic part."""

    scenario: str
    policy: str
    seed: int
    days: float
    volunteers: int
    calls: int
    answered: int
    unanswered: int
    refused_requests: int  # a recipient asking again while their call was open, or rate-limited
    rings: int
    late_accepts: int  # accepts that arrived after someone else won: the broker said "conflict"
    active_volunteers: int
    volunteers_with_call: int
    violations: Violations
    answer_times: list[float] = field(repr=False)
    calls_per_volunteer: list[int] = field(repr=False)  # one entry per active volunteer
    world_events: int = 0
    broker_events: int = 0
    # Trusted circles (reported when the scenario models them): calls asked of a circle, and
    # of those, answered by a member.
    circle_calls: int | None = None
    circle_answered_by_member: int = 0
    # The lobby (reported when the scenario models it): calls taken from it, and how many
    # active volunteers were ever rung.
    lobby_taken: int | None = None
    volunteers_rung: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0  # this process's CPU time: on a shared machine, steadier than wall time
    # Coverage gaps of the period (``broker.coverage``, as the operator's console shows them).
    coverage: Coverage | None = field(default=None, repr=False)

    def percentile(self, p: float) -> float | None:
        return percentile(self.answer_times, p)

    @property
    def gini(self) -> float:
        return gini(self.calls_per_volunteer)

    @property
    def events(self) -> int:
        return self.world_events + self.broker_events

    def report(self) -> dict[str, Any]:
        def r(x: float | None, n: int = 2) -> float | None:
            return None if x is None else round(x, n)

        return (
            {
                "scenario": self.scenario,
                "policy": self.policy,
                "seed": self.seed,
                "days": self.days,
                "volunteers": self.volunteers,
                "calls": self.calls,
                "answered": self.answered,
                "unanswered_share": r(self.unanswered / self.calls if self.calls else 0.0, 4),
                "answer_p50_s": r(self.percentile(0.50)),
                "answer_p90_s": r(self.percentile(0.90)),
                "answer_p99_s": r(self.percentile(0.99)),
                "answered_within_30s_share": r(
                    sum(1 for t in self.answer_times if t <= 30.0) / len(self.answer_times)
                    if self.answer_times
                    else None,
                    4,
                ),
                "rings": self.rings,
                "rings_per_answered_call": r(self.rings / self.answered if self.answered else None),
                "active_volunteers": self.active_volunteers,
                "volunteers_with_call": self.volunteers_with_call,
                "share_with_call": r(
                    self.volunteers_with_call / self.active_volunteers
                    if self.active_volunteers
                    else 0.0,
                    4,
                ),
                "gini_calls_per_volunteer": r(self.gini, 4),
                "gini_floor": r(even_gini(self.answered, self.active_volunteers), 4),
                "gini_among_helpers": r(gini([n for n in self.calls_per_volunteer if n > 0]), 4),
                "late_accepts": self.late_accepts,
                "refused_requests": self.refused_requests,
                "violations": {
                    "outside_window": self.violations.outside_window,
                    "outside_policy_hours": self.violations.outside_policy_hours,
                    "over_cap": self.violations.over_cap,
                    "off_duty": self.violations.off_duty,
                    "two_winners": self.violations.two_winners,
                },
            }
            | self.circle_figures()
            | self.lobby_figures()
        )

    def lobby_figures(self) -> dict[str, Any]:
        if self.lobby_taken is None:
            return {}
        rung = self.volunteers_rung / self.active_volunteers if self.active_volunteers else 0.0
        return {
            "lobby_taken": self.lobby_taken,
            "lobby_taken_share": round(self.lobby_taken / self.answered, 4)
            if self.answered
            else None,
            "share_rung": round(rung, 4),
        }

    def circle_figures(self) -> dict[str, Any]:
        if self.circle_calls is None:
            return {}
        return {
            "circle_calls": self.circle_calls,
            "circle_answered_by_member": self.circle_answered_by_member,
        }

    def speed(self) -> dict[str, float]:
        return {
            "wall_s": round(self.wall_s, 2),
            "cpu_s": round(self.cpu_s, 2),
            "events": self.events,
            "events_per_s": round(self.events / self.wall_s) if self.wall_s else 0.0,
            "events_per_cpu_s": round(self.events / self.cpu_s) if self.cpu_s else 0.0,
        }


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of ``values`` (sorted or not); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def gini(values: Sequence[int]) -> float:
    """Gini coefficient: 0 when everyone has the same, near 1 when one has everything."""
    n = len(values)
    total = sum(values)
    if n == 0 or total == 0:
        return 0.0
    ordered = sorted(values)
    weighted = sum((i + 1) * x for i, x in enumerate(ordered))
    return (2.0 * weighted) / (n * total) - (n + 1.0) / n


def even_gini(calls: int, people: int) -> float:
    """The lowest Gini any policy could reach: ``calls`` spread as evenly as possible over
    ``people``. With fewer calls than people most get none, so it is close to 1."""
    if people <= 0 or calls <= 0:
        return 0.0
    each, extra = divmod(calls, people)
    return gini([each] * (people - extra) + [each + 1] * extra)


def _cumulative(weights: Sequence[float]) -> list[float]:
    return list(itertools.accumulate(weights))


def _choose(rng: random.Random, items: Sequence[T], cumulative: list[float]) -> T:
    return rng.choices(items, cum_weights=cumulative)[0]


class _LocalTimes:
    """Local (time, date, hour) by zone, computed once per zone and minute."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], tuple[Any, str, int]] = {}

    def at(self, zone: str, ts: float) -> tuple[Any, str, int]:
        key = (zone, int(ts // 60))
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) > 50_000:
                self._cache.clear()
            moment = local_datetime(zone, key[1] * 60.0)
            hit = (moment.time(), moment.date().isoformat(), moment.hour)
            self._cache[key] = hit
        return hit


class World:
    def __init__(self, scenario: Scenario, policy_name: str, store: Store | None = None) -> None:
        self.sc = scenario
        self.policy_name = policy_name
        seed = scenario.scenario.seed
        self.rng_population = random.Random(f"{seed}/population")
        self.rng_duty = random.Random(f"{seed}/duty")
        self.rng_arrival = random.Random(f"{seed}/arrival")
        self.rng_response = random.Random(f"{seed}/response")
        self.rng_calls = random.Random(f"{seed}/calls")
        self.rng_lobby = random.Random(f"{seed}/lobby")
        self.watchers: list[int] = []
        self.taken = 0
        self.ever_rung: set[int] = set()
        self.clock = VirtualClock(scenario.start)
        self.store: Store = store if store is not None else MemoryStore()
        policy, timing = build_policy(policy_name, scenario.dispatch)
        self.awake: RingWindow | None = getattr(policy, "awake", None)
        self.timing = timing
        ids = (f"c{n}" for n in itertools.count(1))
        self.broker = Broker(
            self.store,
            self.clock,
            timing,
            LimitSettings(requests_per_hour=1000),
            policy=policy,
            rng=random.Random(f"{seed}/broker"),
            new_id=lambda: next(ids),
        )
        self.local = _LocalTimes()
        self.heap: list[tuple[float, int, int, int, str]] = []
        self.seq = itertools.count()
        self.violations = Violations()
        self.late_accepts = 0
        self.refused = 0
        self.rings = 0
        self.world_events = 0
        self.broker_events = 0
        self.winners: Counter[str] = Counter()
        self.pending: dict[tuple[int, str], float] = {}  # (volunteer, call) -> accept/decline at
        self.rings_on_day: Counter[tuple[int, str]] = Counter()
        self.recipient_of: dict[str, int] = {}
        self.circle_of: dict[int, list[int]] = {}  # recipient -> volunteers in their circle

    # --- the population ---------------------------------------------------------------------
    def _people(self) -> None:
        sc, rng = self.sc, self.rng_population
        regions = sc.regions
        v, r = sc.volunteers, sc.response
        region_of_vol = rng.choices(
            range(len(regions)), weights=[g.volunteers for g in regions], k=v.count
        )
        languages = [(list(g.languages), _cumulative(list(g.languages.values()))) for g in regions]
        second = (list(v.second_languages), _cumulative(list(v.second_languages.values())))
        windows = [w.window() for w in v.ring_windows]
        window_cw = _cumulative([w.share for w in v.ring_windows])
        caps = [c.cap for c in v.daily_caps]
        cap_cw = _cumulative([c.share for c in v.daily_caps])
        a = r.accept_mean * r.accept_concentration
        b = (1.0 - r.accept_mean) * r.accept_concentration
        self.vol_profiles: list[Profile] = []
        self.vol_zone: list[str] = []
        self.vol_window: list[RingWindow] = []
        self.vol_cap: list[int] = []
        self.willing: list[float] = []
        for i, g in enumerate(region_of_vol):
            tags = [_choose(rng, *languages[g])]
            if v.second_language_share and rng.random() < v.second_language_share:
                extra = _choose(rng, *second)
                if primary_language(extra) != primary_language(tags[0]):
                    tags.append(extra)
            window = _choose(rng, windows, window_cw)
            cap = _choose(rng, caps, cap_cw)
            zone = regions[g].zone
            self.vol_profiles.append(
                Profile(
                    user_id=f"v{i}",
                    role=Role.VOLUNTEER,
                    display_name=f"v{i}",
                    languages=tags,
                    timezone=zone,
                    ring_window=window,
                    daily_ring_cap=cap,
                )
            )
            self.vol_zone.append(zone)
            self.vol_window.append(window)
            self.vol_cap.append(cap)
            self.willing.append(rng.betavariate(a, b))
        rec = sc.recipients
        region_of_rec = rng.choices(
            range(len(regions)), weights=[g.recipients for g in regions], k=rec.count
        )
        self.rec_profiles: list[Profile] = []
        self.rec_by_region: list[list[int]] = [[] for _ in regions]
        for i, g in enumerate(region_of_rec):
            self.rec_by_region[g].append(i)
            self.rec_profiles.append(
                Profile(
                    user_id=f"r{i}",
                    role=Role.RECIPIENT,
                    display_name=f"r{i}",
                    languages=[_choose(rng, *languages[g])],
                    timezone=regions[g].zone,
                )
            )

    def _circles(self) -> None:
        """Who keeps a circle, and of whom: drawn from a stream of its own, so that a scenario
        without circles runs exactly as before."""
        model = self.sc.circles
        if model.share <= 0:
            return
        rng = random.Random(f"{self.sc.scenario.seed}/circles")
        speakers: dict[tuple[str, str], list[int]] = {}
        everywhere: dict[str, list[int]] = {}
        for i, profile in enumerate(self.vol_profiles):
            for tag in profile.languages:
                lang = primary_language(tag)
                speakers.setdefault((lang, profile.timezone), []).append(i)
                everywhere.setdefault(lang, []).append(i)
        for r, profile in enumerate(self.rec_profiles):
            if rng.random() >= model.share:
                continue
            lang = primary_language(profile.languages[0])
            near = speakers.get((lang, profile.timezone), [])
            pool = near if len(near) >= model.size else everywhere.get(lang, [])
            if pool:
                self.circle_of[r] = rng.sample(pool, min(model.size, len(pool)))

    # --- the event queue --------------------------------------------------------------------
    def push(self, at: float, kind: int, who: int, what: str = "") -> None:
        heapq.heappush(self.heap, (at, kind, next(self.seq), who, what))

    def _next_session(self, on: bool) -> float:
        v = self.sc.volunteers
        mean_on = v.on_duty_session_h * 3600.0
        if on:
            return self.rng_duty.expovariate(1.0 / mean_on)
        if v.on_duty_share >= 1.0:
            return math.inf
        mean_off = mean_on * (1.0 - v.on_duty_share) / v.on_duty_share
        return self.rng_duty.expovariate(1.0 / mean_off)

    def _arrival_rates(self) -> None:
        rec = self.sc.recipients
        profile = rec.hourly_profile
        mean = sum(profile) / 24.0
        self.hour_weight = [h / mean for h in profile]
        peak = max(self.hour_weight)
        self.region_rate = [
            rec.calls_per_day * len(members) / rec.count / 86400.0 for members in self.rec_by_region
        ]
        self.region_peak = [rate * peak for rate in self.region_rate]

    def _schedule_arrival(self, region: int, after: float) -> None:
        """Calls by local hour: a Poisson process at the peak rate, thinned hour by hour."""
        peak = self.region_peak[region]
        if peak <= 0:
            return
        rng = self.rng_arrival
        zone = self.sc.regions[region].zone
        t = after
        while True:
            t += rng.expovariate(peak)
            if t >= self.sc.end:
                return
            hour = self.local.at(zone, t)[2]
            if rng.random() * peak <= self.region_rate[region] * self.hour_weight[hour]:
                self.push(t, ARRIVAL, region)
                return

    # --- the run ----------------------------------------------------------------------------
    async def run(self) -> Result:
        started, cpu = time.perf_counter(), time.process_time()
        self._people()
        self._arrival_rates()
        store, broker, sc = self.store, self.broker, self.sc
        now = self.clock.now()
        self.on_duty = [False] * len(self.vol_profiles)
        self.active = [False] * len(self.vol_profiles)
        self.last_ring = [-math.inf] * len(self.vol_profiles)
        for i, profile in enumerate(self.vol_profiles):
            await store.put_profile(profile)
            await store.set_connected(profile.user_id, True)  # reachable, like a push device
            on = self.rng_duty.random() < sc.volunteers.on_duty_share
            if on:
                await broker.set_available(profile, True)
                self.on_duty[i] = self.active[i] = True
            self.push(now + self._next_session(on), DUTY, i)
        for profile in self.rec_profiles:
            await store.put_profile(profile)
        self._circles()
        for r, members in self.circle_of.items():
            for i in members:
                await store.circle_add(f"r{r}", f"v{i}", now)
        for region in range(len(sc.regions)):
            self._schedule_arrival(region, now)
        share = sc.lobby.watch_share or 0.0
        self.watchers = [
            i for i in range(len(self.vol_profiles)) if self.rng_lobby.random() < share
        ]

        # Calls asked for before the end finish within the longest search and call.
        stop = sc.end + self.timing.max_wait_s + sc.calls.duration_max_s + 60.0
        heap = self.heap
        while True:
            deadline = await store.next_deadline()
            at = heap[0][0] if heap else math.inf
            if deadline is not None and deadline <= at:
                if deadline > stop:
                    break
                if deadline > self.clock.now():
                    self.clock.set(deadline)
                self.world_events += 1
                self.deliver(await broker.fire_due())
                continue
            if at > stop:
                break
            at, kind, _, who, what = heapq.heappop(heap)
            if at > self.clock.now():
                self.clock.set(at)
            self.world_events += 1
            if kind == DUTY:
                await self._duty(who)
            elif kind == ARRIVAL:
                await self._arrival(who)
            elif kind == ACCEPT:
                await self._accept(who, what)
            elif kind == DECLINE:
                await self._decline(who, what)
            elif kind == LOBBY:
                await self._lobby_take(what)
            else:
                await self._hangup(who, what)
        result = await self._result()
        result.coverage = await self._coverage()
        result.wall_s = time.perf_counter() - started
        result.cpu_s = time.process_time() - cpu
        return result

    async def _duty(self, i: int) -> None:
        on = not self.on_duty[i]
        self.on_duty[i] = on
        await self.broker.set_available(self.vol_profiles[i], on)
        if on and self.clock.now() < self.sc.end:
            self.active[i] = True
        self.push(self.clock.now() + self._next_session(on), DUTY, i)

    async def _arrival(self, region: int) -> None:
        members = self.rec_by_region[region]
        who = members[self.rng_arrival.randrange(len(members))]
        circle = CircleMode(self.sc.circles.mode) if who in self.circle_of else None
        try:
            outcome = await self.broker.request(self.rec_profiles[who], circle=circle)
        except BrokerError:
            self.refused += 1
        else:
            assert outcome.call is not None
            self.recipient_of[outcome.call.id] = who
            self.deliver(outcome.events)
            if self.watchers and circle is None:
                self._lobby_later(outcome.call.id)
        self._schedule_arrival(region, self.clock.now())

    async def _accept(self, i: int, call_id: str) -> None:
        if self.pending.pop((i, call_id), None) is None:
            return  # the ring was withdrawn and dismissed before they tapped
        try:
            outcome = await self.broker.accept(self.vol_profiles[i], call_id)
        except BrokerError:
            self.late_accepts += 1
            return
        self.deliver(outcome.events)

    async def _decline(self, i: int, call_id: str) -> None:
        if self.pending.pop((i, call_id), None) is None:
            return
        try:
            outcome = await self.broker.decline(self.vol_profiles[i].user_id, call_id)
        except BrokerError:
            return
        self.deliver(outcome.events)

    def _lobby_later(self, call_id: str) -> None:
        lobby = self.sc.lobby
        delay = self.rng_lobby.lognormvariate(math.log(lobby.take_median_s), lobby.take_sigma)
        self.push(self.clock.now() + delay, LOBBY, 0, call_id)

    async def _lobby_take(self, call_id: str) -> None:
        """A watcher picks the request: a few on-duty watchers try (the broker refuses those
        who may not take it: language, window, busy, cap, rung before); none able, another
        look after another delay while it still searches."""
        call = await self.store.get_call(call_id)
        if call is None or call.state is not CallState.SEARCHING:
            return
        on = [i for i in self.watchers if self.on_duty[i]]
        for i in self.rng_lobby.sample(on, min(5, len(on))):
            try:
                outcome = await self.broker.take(self.vol_profiles[i], call_id)
            except BrokerError:
                continue
            self.taken += 1
            self.deliver(outcome.events)
            return
        self._lobby_later(call_id)

    async def _hangup(self, recipient: int, call_id: str) -> None:
        try:
            outcome = await self.broker.end(self.rec_profiles[recipient].user_id, call_id)
        except BrokerError:
            return
        self.deliver(outcome.events)

    # --- what the broker said ---------------------------------------------------------------
    def deliver(self, events: list[Event]) -> None:
        self.broker_events += len(events)
        for event in events:
            if isinstance(event, Ring):
                self._rung(event)
            elif isinstance(event, Withdrawn):
                key = (int(event.to[1:]), event.call_id)
                at = self.pending.get(key)
                if at is not None and at > self.clock.now() + self.sc.response.dismiss_s:
                    del self.pending[key]
            elif isinstance(event, Assigned) and not event.offerer:
                self.winners[event.call_id] += 1
                if self.winners[event.call_id] > 1:
                    self.violations.two_winners += 1
                calls = self.sc.calls
                length = self.rng_calls.uniform(calls.duration_min_s, calls.duration_max_s)
                recipient = self.recipient_of[event.call_id]
                self.push(self.clock.now() + length, HANGUP, recipient, event.call_id)

    def _rung(self, ring: Ring) -> None:
        now = self.clock.now()
        i = int(ring.to[1:])
        self.rings += 1
        self.ever_rung.add(i)
        local_time, day, hour = self.local.at(self.vol_zone[i], now)
        if not self.vol_window[i].contains(local_time):
            self.violations.outside_window += 1
        if self.awake is not None and not self.awake.contains(local_time):
            self.violations.outside_policy_hours += 1
        if not self.on_duty[i]:
            self.violations.off_duty += 1
        key = (i, day)
        self.rings_on_day[key] += 1
        if self.rings_on_day[key] > self.vol_cap[i]:
            self.violations.over_cap += 1
        r = self.sc.response
        rng = self.rng_response
        rested = 1.0 - r.fatigue * math.exp(-(now - self.last_ring[i]) / r.fatigue_time_s)
        self.last_ring[i] = now
        chance = self.willing[i] * r.hourly_factor[hour] * rested
        if rng.random() < chance:
            delay = rng.lognormvariate(math.log(r.delay_median_s), r.delay_sigma)
            if now + delay < ring.expires_at:
                self.pending[(i, ring.call_id)] = now + delay
                self.push(now + delay, ACCEPT, i, ring.call_id)
        elif rng.random() < r.decline_share:
            delay = rng.lognormvariate(math.log(r.decline_median_s), r.delay_sigma)
            if now + delay < ring.expires_at:
                self.pending[(i, ring.call_id)] = now + delay
                self.push(now + delay, DECLINE, i, ring.call_id)

    async def _result(self) -> Result:
        sc = self.sc
        calls = [
            c for c in await self.store.ended_calls(sc.start, math.inf) if c.requested_at < sc.end
        ]
        answered = [c for c in calls if c.assigned_at is not None]
        helped = Counter(c.helper_id for c in answered if c.helper_id is not None)
        per_volunteer = [
            helped.get(p.user_id, 0) for i, p in enumerate(self.vol_profiles) if self.active[i]
        ]
        circle_calls: int | None = None
        by_member = 0
        if sc.circles.share > 0:
            asked = [c for c in calls if c.circle is not None]
            circle_calls = len(asked)
            by_member = sum(
                1
                for c in asked
                if c.helper_id is not None
                and int(c.helper_id[1:]) in self.circle_of.get(int(c.recipient_id[1:]), [])
            )
        rung = sum(1 for i in self.ever_rung if self.active[i])
        return Result(
            lobby_taken=self.taken if sc.lobby.watch_share is not None else None,
            volunteers_rung=rung,
            circle_calls=circle_calls,
            circle_answered_by_member=by_member,
            scenario=sc.scenario.name,
            policy=self.policy_name,
            seed=sc.scenario.seed,
            days=sc.scenario.days,
            volunteers=len(self.vol_profiles),
            calls=len(calls),
            answered=len(answered),
            unanswered=sum(1 for c in calls if c.end_reason is EndReason.NO_ANSWER),
            refused_requests=self.refused,
            rings=sum(c.notified for c in calls),
            late_accepts=self.late_accepts,
            active_volunteers=len(per_volunteer),
            volunteers_with_call=sum(1 for n in per_volunteer if n > 0),
            violations=self.violations,
            answer_times=sorted(c.answer_time_s or 0.0 for c in answered),
            calls_per_volunteer=per_volunteer,
            world_events=self.world_events,
            broker_events=self.broker_events,
        )

    async def _coverage(self) -> Coverage:
        """The run's coverage gaps as ``GET /v1/stats/coverage`` reports them, read from its
        store at its end: by language and local hour of the week in the zone where most
        recipients live, over the whole run (volunteers: those on duty at the end)."""
        zone = max(self.sc.regions, key=lambda region: region.recipients).zone
        now = self.clock.now()
        days = max(1, math.ceil((now - self.sc.start) / 86400.0))
        return await coverage(self.store, now, days, zone)


SIMULATION_STORES = ("memory://", "redis://", "rediss://", "redis+cluster://", "rediss+cluster://")


def check_store_url(url: str) -> None:
    """Refuse a store the simulator cannot run on, before anything is written."""
    if not url.lower().startswith(SIMULATION_STORES):
        raise ValueError(
            f"the simulator runs on memory:// or an empty Redis database (redis://, "
            f"redis+cluster://), not {shown_url(url)!r}"
        )
    try:
        open_store(url)  # a malformed URL is refused here, with what is wrong with it
    except ValueError as exc:
        message = str(exc)
        if shown_url(url) not in message:
            message = f"store URL {shown_url(url)!r}: {message}"
        raise ValueError(message) from None


def simulate(scenario: Scenario, policy: str, store_url: str = "memory://") -> Result:
    """Run one policy through one scenario, on the memory store or an empty Redis database
    (refused with ``ValueError`` when it holds any key; emptied again after the run)."""
    check_store_url(store_url)

    async def run() -> Result:
        store = open_store(store_url)
        if isinstance(store, MemoryStore):
            return await World(scenario, policy, store).run()
        from broker.store.redis import RedisStore

        assert isinstance(store, RedisStore)
        try:
            await store.ping()
            if await store.r.dbsize():
                raise ValueError(
                    f"the Redis database at {shown_url(store_url)} holds keys: the simulator "
                    "needs an empty one (it writes a whole population, then empties it)"
                )
            try:
                return await World(scenario, policy, store).run()
            finally:
                await store.r.flushdb()
        finally:
            await store.close()

    return asyncio.run(run())
