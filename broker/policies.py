"""The dispatch policies the broker can run, by name.

Each is a small strategy object (``broker.dispatch.Policy``): how many volunteers each wave
rings, how far apart waves are, and whom first. Every policy runs inside the same broker rules:
a ring never goes to a volunteer outside their ring window, over their daily cap, busy, rung for
this call before, or blocked. A policy only chooses among those who remain.

- ``default``: ours, growing waves ranked fairest first (``GrowingWaves``).
- ``bme2014``: Be My Eyes' published server code of 2014: volunteers awake 07:00-22:00 local,
  the most recent helpers first and then a random sample, one more volunteer every 5 s, each
  ring lasting until the search stops after 2 minutes.
- ``bme2014-batch``: their earlier setting: 10 at once, then 20 more every 20 s, for 2 minutes.
- ``ringall``, ``fewestcalls``, ``leastrecent``, ``random``: the queue strategies of Asterisk,
  with its default ring of 15 s per volunteer; ``ringall`` rings every eligible volunteer.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence
from datetime import time

from broker.dispatch import DispatchSettings, GrowingWaves, Policy
from broker.model import Call, Candidate, RingWindow

BME_AWAKE = RingWindow(start=time(7, 0), end=time(22, 0))
ASTERISK_RING_S = 15.0


class Bme2014:
    """Most recent helper first, then at random; a fixed number per wave."""

    name = "bme2014"
    awake: RingWindow | None = BME_AWAKE
    recent_first = True

    def __init__(self, first: int = 1, then: int = 1, interval_s: float = 5.0) -> None:
        self.first = first
        self.then = then
        self.interval_s = interval_s

    def wave_size(self, wave: int) -> int:
        return self.first if wave == 0 else self.then

    def wave_interval(self, wave: int) -> float:
        return self.interval_s

    def pick(
        self, eligible: Sequence[Candidate], call: Call, k: int, rng: random.Random
    ) -> list[Candidate]:
        helpers = [c for c in eligible if c.last_call_at > 0]
        chosen = heapq.nlargest(k, helpers, key=lambda c: c.last_call_at)
        if len(chosen) < k:
            rest = [c for c in eligible if c.last_call_at <= 0]
            chosen += rng.sample(rest, min(k - len(chosen), len(rest)))
        return chosen


class Bme2014Batch(Bme2014):
    name = "bme2014-batch"

    def __init__(self) -> None:
        super().__init__(first=10, then=20, interval_s=20.0)


class _OneAtATime:
    """Asterisk's sequential strategies: one volunteer per ring timeout, best first."""

    name = ""
    awake: RingWindow | None = None

    def wave_size(self, wave: int) -> int:
        return 1

    def wave_interval(self, wave: int) -> float:
        return ASTERISK_RING_S

    def key(self, c: Candidate) -> float:
        return 0.0

    def pick(
        self, eligible: Sequence[Candidate], call: Call, k: int, rng: random.Random
    ) -> list[Candidate]:
        keyed = [(self.key(c), rng.random(), i) for i, c in enumerate(eligible)]
        return [eligible[key[-1]] for key in heapq.nsmallest(k, keyed)]


class FewestCalls(_OneAtATime):
    name = "fewestcalls"

    def key(self, c: Candidate) -> float:
        return c.calls_30d


class LeastRecent(_OneAtATime):
    """The volunteer whose last call is longest ago (never is longest)."""

    name = "leastrecent"

    def key(self, c: Candidate) -> float:
        return c.last_call_at


class RandomPick(_OneAtATime):
    name = "random"

    def pick(
        self, eligible: Sequence[Candidate], call: Call, k: int, rng: random.Random
    ) -> list[Candidate]:
        return rng.sample(list(eligible), min(k, len(eligible)))


class RingAll:
    """Every eligible volunteer at once; each later wave rings whoever became eligible since."""

    name = "ringall"
    awake: RingWindow | None = None

    def wave_size(self, wave: int) -> int:
        return 1_000_000_000

    def wave_interval(self, wave: int) -> float:
        return ASTERISK_RING_S

    def pick(
        self, eligible: Sequence[Candidate], call: Call, k: int, rng: random.Random
    ) -> list[Candidate]:
        return list(eligible[:k])


def _bme(base: DispatchSettings, policy: Bme2014) -> tuple[Policy, DispatchSettings]:
    # Their rings stay up until the search stops at 2 minutes.
    timing = base.model_copy(
        update={"ring_timeout_s": 120.0, "max_wait_s": 120.0, "wave_interval_s": policy.interval_s}
    )
    return policy, timing


def _asterisk(base: DispatchSettings, policy: Policy) -> tuple[Policy, DispatchSettings]:
    timing = base.model_copy(
        update={"ring_timeout_s": ASTERISK_RING_S, "wave_interval_s": ASTERISK_RING_S}
    )
    return policy, timing


POLICIES: dict[str, Callable[[DispatchSettings], tuple[Policy, DispatchSettings]]] = {
    "default": lambda base: (GrowingWaves(base), base),
    "bme2014": lambda base: _bme(base, Bme2014()),
    "bme2014-batch": lambda base: _bme(base, Bme2014Batch()),
    "ringall": lambda base: _asterisk(base, RingAll()),
    "fewestcalls": lambda base: _asterisk(base, FewestCalls()),
    "leastrecent": lambda base: _asterisk(base, LeastRecent()),
    "random": lambda base: _asterisk(base, RandomPick()),
}


def build_policy(name: str, base: DispatchSettings) -> tuple[Policy, DispatchSettings]:
    """The named policy and the timing it runs with (``base`` for ``default``; the others keep
    their own ring and wave timing and take everything else from ``base``)."""
    try:
        make = POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown dispatch policy {name!r}: expected one of {', '.join(POLICIES)}"
        ) from None
    return make(base)
