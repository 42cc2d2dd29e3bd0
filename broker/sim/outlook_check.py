"""The outlook against the simulator: the estimate a volunteer is shown, and when their next
call really came.

The scenario runs with the server's policy (``default``) for a warm-up, so that the broker has
the history an outlook reads (30 days of requests, who answered, who was rung); at the end of
the warm-up, ``broker.outlook`` is asked for a random sample of volunteers, exactly as
``GET /v1/me/outlook`` asks it, from the store as it then is. The run goes on, and for each of
them the world records their first answered call after that instant and their time on duty
until then.

The outlook's estimate is a time on duty ("while on duty": calendar time if on duty through
every hour of their window), so it is compared with the time each volunteer spent on duty
until their first call, not with calendar time. A volunteer with no call by the end of the run
is censored: their wait is known to be longer than their time on duty in the run. So:

- ``error_days``, per volunteer, is ``|min(E, C) - min(A, C)|``: the estimate E against the
  actual wait A, both cut at C, their time on duty in the measured period (A is C when no call
  came). This is the error that the run can see; a censored volunteer whose estimate is beyond
  C counts 0, one whose estimate is below it counts at least ``C - E``.
- ``same_bucket``: whether the actual wait fell in the estimated range (day, 3 days, week,
  month, longer); ``sentence_held``: whether what the page said held ("likely within 3
  days": the call came within 3 days; "more than a month": none came within a month). Each is
  None when the run cannot tell (no call yet, and their time on duty inside the range).
- ``expected_first_calls`` against ``first_calls``: with the estimate's rate r = 1/E, a
  volunteer on duty for C gets a call with chance ``1 - exp(-C / E)``; summed over the sample,
  the first calls the outlook predicts, against how many came. The plainest test of its rate.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
from dataclasses import dataclass, field
from typing import Any

from broker.outlook import Bucket, Outlook, outlook, request_history
from broker.sim.engine import World
from broker.sim.scenario import Scenario

DAY_S = 86400.0
# The bounds of each range, in days: (above, at most).
_RANGES = {
    Bucket.DAY: (0.0, 1.0),
    Bucket.THREE_DAYS: (1.0, 3.0),
    Bucket.WEEK: (3.0, 7.0),
    Bucket.MONTH: (7.0, 30.0),
    Bucket.LONGER: (30.0, math.inf),
}


@dataclass
class Checked:
    """One volunteer of the sample."""

    user_id: str
    estimate_days: float | None  # None: no call expected at all
    bucket: Bucket
    on_duty_days: float  # on duty in the whole measured period
    wait_days: float | None  # on duty from the estimate until their first call; None: none came

    @property
    def error_days(self) -> float:
        cut = self.on_duty_days
        estimate = cut if self.estimate_days is None else min(self.estimate_days, cut)
        actual = cut if self.wait_days is None else min(self.wait_days, cut)
        return abs(estimate - actual)

    @property
    def same_bucket(self) -> bool | None:
        """The actual wait fell in the estimated range; None while the run cannot tell."""
        low, high = _RANGES[self.bucket]
        if self.wait_days is not None:
            return low < self.wait_days <= high or (self.wait_days == 0.0 and low == 0.0)
        if self.on_duty_days > high:
            return False  # waited on duty past the range without a call
        return True if math.isinf(high) and self.on_duty_days > low else None

    @property
    def sentence_held(self) -> bool | None:
        """What the page said held: "likely within X" (the call came by X), or "more than a
        month" (it did not come within a month). None while the run cannot tell."""
        low, high = _RANGES[self.bucket]
        if math.isinf(high):
            if self.wait_days is not None:
                return self.wait_days > low
            return True if self.on_duty_days > low else None
        if self.wait_days is not None:
            return self.wait_days <= high
        return False if self.on_duty_days > high else None

    @property
    def expected_first_call(self) -> float:
        if self.estimate_days is None or self.estimate_days <= 0:
            return 0.0 if self.estimate_days is None else 1.0
        return 1.0 - math.exp(-self.on_duty_days / self.estimate_days)


@dataclass
class OutlookCheck:
    scenario: str
    seed: int
    warm_up_days: float
    measured_days: float
    volunteers: list[Checked] = field(default_factory=list)

    def calibration(self) -> list[dict[str, Any]]:
        return _calibration(self.volunteers)

    def report(self) -> dict[str, Any]:
        checked = self.volunteers
        errors = [c.error_days for c in checked]
        called = [c for c in checked if c.wait_days is not None]
        same = [c.same_bucket for c in checked if c.same_bucket is not None]
        held = [c.sentence_held for c in checked if c.sentence_held is not None]
        buckets = {b.value: sum(1 for c in checked if c.bucket is b) for b in Bucket}
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "policy": "default",
            "warm_up_days": self.warm_up_days,
            "measured_days": self.measured_days,
            "sampled": len(checked),
            "estimated_buckets": buckets,
            "first_calls": len(called),
            "expected_first_calls": round(sum(c.expected_first_call for c in checked), 1),
            "median_abs_error_days": _r(statistics.median(errors) if errors else None),
            # Only those whose call came: a biased subset (the lucky ones), for comparison.
            "median_abs_error_days_called": _r(
                statistics.median(
                    math.inf if c.estimate_days is None else abs(c.estimate_days - c.wait_days)
                    for c in called
                    if c.wait_days is not None
                )
                if called
                else None
            ),
            "same_bucket_share": _r(sum(same) / len(same) if same else None, 3),
            "same_bucket_decided": len(same),
            "sentence_held_share": _r(sum(held) / len(held) if held else None, 3),
            "sentence_held_decided": len(held),
            "calibration": self.calibration(),
            "median_estimate_days": _r(
                statistics.median(
                    c.estimate_days if c.estimate_days is not None else math.inf for c in checked
                )
                if checked
                else None
            ),
        }


# Bands of the estimate (days, at most) for the calibration table; the last is "longer or never".
BANDS = (7.0, 30.0, 60.0, 120.0, 240.0, math.inf)


def _band(days: float | None) -> float:
    return (
        next(b for b in BANDS if days is not None and days <= b) if days is not None else BANDS[-1]
    )


def _calibration(checked: list[Checked]) -> list[dict[str, Any]]:
    """By band of the estimate: how many volunteers, the first calls their estimates predict
    within their time on duty, and how many came."""
    out = []
    low = 0.0
    for high in BANDS:
        group = [c for c in checked if _band(c.estimate_days) == high]
        out.append(
            {
                "estimate_days_above": low,
                "estimate_days_up_to": None if math.isinf(high) else high,
                "volunteers": len(group),
                "on_duty_days": round(sum(c.on_duty_days for c in group), 1),
                "expected_first_calls": round(sum(c.expected_first_call for c in group), 1),
                "first_calls": sum(1 for c in group if c.wait_days is not None),
            }
        )
        low = high
    return out


def _r(x: float | None, n: int = 1) -> float | None:
    return None if x is None or math.isinf(x) else round(x, n)


class _MeasuredWorld(World):
    """The world of the engine, asking the outlook of a sample at the end of the warm-up and
    following their duty from then on. The engine's loop is untouched: the outlook is asked at
    the first duty change or request after the instant (the world has one every few seconds)."""

    def __init__(self, scenario: Scenario, at: float, sample: int) -> None:
        super().__init__(scenario, "default")
        self.measure_at = at
        self.sample_size = sample
        self.sampled: dict[int, Outlook] = {}
        self.asked_at: float | None = None
        # Each sampled volunteer's duty from the measuring instant: on then or not, and the
        # times it changed since.
        self.on_at_ask: dict[int, bool] = {}
        self.duty_log: dict[int, list[float]] = {}

    async def _ask(self) -> None:
        if self.asked_at is not None or self.clock.now() < self.measure_at:
            return
        now = self.asked_at = self.clock.now()
        rng = random.Random(f"{self.sc.scenario.seed}/outlook")
        people = range(len(self.vol_profiles))
        chosen = rng.sample(people, min(self.sample_size, len(people)))
        history = await request_history(self.store, now)
        for i in chosen:
            self.sampled[i] = await outlook(
                self.store, self.vol_profiles[i], now, self.timing, history, rng
            )
            self.on_at_ask[i] = self.on_duty[i]
            self.duty_log[i] = []

    async def _duty(self, i: int) -> None:
        await self._ask()
        if i in self.duty_log:
            self.duty_log[i].append(self.clock.now())
        await super()._duty(i)

    async def _arrival(self, region: int) -> None:
        await self._ask()
        await super()._arrival(region)

    async def checked(self) -> list[Checked]:
        assert self.asked_at is not None, "the run ended before the warm-up did"
        first: dict[str, float] = {}
        for call in await self.store.ended_calls(self.asked_at, math.inf):
            if (
                call.helper_id
                and call.assigned_at is not None
                and call.assigned_at >= self.asked_at
            ):
                if call.helper_id not in first or call.assigned_at < first[call.helper_id]:
                    first[call.helper_id] = call.assigned_at
        out = []
        for i, report in sorted(self.sampled.items()):
            uid = self.vol_profiles[i].user_id
            came = first.get(uid)
            out.append(
                Checked(
                    user_id=uid,
                    estimate_days=report.expected_days,
                    bucket=report.bucket,
                    on_duty_days=self._on_duty_until(i, self.sc.end) / DAY_S,
                    wait_days=(
                        self._on_duty_until(i, came) / DAY_S
                        if came is not None and came <= self.sc.end
                        else None
                    ),
                )
            )
        return out

    def _on_duty_until(self, i: int, until: float) -> float:
        """Time on duty from the measuring instant to ``until``, from their duty changes."""
        assert self.asked_at is not None
        total, since = 0.0, (self.asked_at if self.on_at_ask[i] else None)
        for at in self.duty_log[i]:
            if at > until:
                break
            if since is not None:
                total += at - since
                since = None
            else:
                since = at
        if since is not None:
            total += until - since
        return total


def check_outlook(scenario: Scenario, warm_up_days: float, sample: int) -> OutlookCheck:
    """Run ``scenario`` (its ``days`` the warm-up and the measured period together) and compare
    the outlook of ``sample`` volunteers at the end of the warm-up with their first call."""
    if sample < 1:
        raise ValueError(f"the sample must be at least 1 volunteer, not {sample}")
    if not 0 < warm_up_days < scenario.scenario.days:
        raise ValueError(
            f"the warm-up ({warm_up_days:g} days) must be above 0 and shorter than the run "
            f"({scenario.scenario.days:g} days): the rest is the measured period"
        )
    world = _MeasuredWorld(scenario, scenario.start + warm_up_days * DAY_S, sample)

    async def run() -> list[Checked]:
        await world.run()
        return await world.checked()

    volunteers = asyncio.run(run())
    return OutlookCheck(
        scenario=scenario.scenario.name,
        seed=scenario.scenario.seed,
        warm_up_days=warm_up_days,
        measured_days=scenario.scenario.days - warm_up_days,
        volunteers=volunteers,
    )
