"""Random sequences of what people do, checked against the rules that must always hold.

Hypothesis drives the broker core (memory store, virtual clock) through requests, accepts,
declines, cancels, hang-ups, availability changes, lost connections and the passing of time,
and after every step checks the invariants: one helper per call, nobody rung twice for a call,
never outside their window or over their cap, never while busy, every ring ended exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter, defaultdict
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from broker.clock import VirtualClock
from broker.dispatch import DispatchSettings
from broker.events import Assigned, Ended, Event, Ring, Withdrawn
from broker.model import (
    BrokerError,
    CallState,
    Profile,
    RingWindow,
    Role,
    local_datetime,
    primary_language,
)
from broker.service import Broker, LimitSettings
from broker.store.memory import MemoryStore

T = TypeVar("T")

ZONES = ["Europe/London", "America/New_York", "Asia/Tokyo", "Australia/Sydney", "UTC"]
WINDOWS = [("08:00", "22:00"), ("00:00", "00:00"), ("22:00", "06:00"), ("12:00", "13:00")]
LANGS = [["en"], ["fr"], ["en", "fr"], ["de", "en"]]


class BrokerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = VirtualClock(1_781_524_800.0)
        self.ids = itertools.count()
        self.store = MemoryStore()
        self.broker = Broker(
            self.store,
            self.clock,
            DispatchSettings(
                first_wave=2,
                wave_growth=2,
                max_wave=4,
                wave_interval_s=5,
                ring_timeout_s=12,
                max_wait_s=40,
            ),
            LimitSettings(requests_per_hour=1000),
            rng=random.Random(0),
            new_id=lambda: f"c{next(self.ids)}",  # deterministic, so that Hypothesis can replay
        )
        self.profiles: dict[str, Profile] = {}
        self.ringing: dict[str, str] = {}  # volunteer -> call, as the events told it
        self.rung: Counter[tuple[str, str]] = Counter()
        self.rings_on_day: Counter[tuple[str, str]] = Counter()
        self.helpers: dict[str, set[str]] = defaultdict(set)  # call -> helpers assigned
        self.in_call: dict[str, str] = {}  # user -> assigned call
        self.ended: set[str] = set()
        self.calls: dict[str, str] = {}  # call -> recipient
        for n in range(8):
            zone, window, langs = ZONES[n % 5], WINDOWS[n % 4], LANGS[n % 4]
            profile = Profile(
                user_id=f"v{n}",
                role=Role.VOLUNTEER,
                languages=langs,
                timezone=zone,
                ring_window=RingWindow.model_validate({"start": window[0], "end": window[1]}),
                daily_ring_cap=3,
            )
            self.profiles[profile.user_id] = profile
            self.run(self.store.put_profile(profile))
            self.run(self.store.set_on_duty(profile.user_id, True))
            self.run(self.store.set_connected(profile.user_id, True))
        for n in range(3):
            rec = Profile(user_id=f"r{n}", role=Role.RECIPIENT, languages=LANGS[n % 4])
            self.profiles[rec.user_id] = rec
            self.run(self.store.put_profile(rec))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.loop.close()

    # --- bookkeeping of what the broker said ---------------------------------------------------
    def observe(self, events: list[Event]) -> None:
        now = self.clock.now()
        for event in events:
            if isinstance(event, Ring):
                vol = self.profiles[event.to]
                assert event.to not in self.ringing, f"{event.to} rung while ringing"
                assert event.to not in self.in_call, f"{event.to} rung while in a call"
                self.rung[(event.call_id, event.to)] += 1
                assert self.rung[(event.call_id, event.to)] == 1, "rung twice for one call"
                local = local_datetime(vol.timezone, now)
                assert vol.ring_window.contains(local.time()), "rung outside the window"
                assert primary_language(event.language) in {
                    primary_language(t) for t in vol.languages
                }
                day = (event.to, local.date().isoformat())
                self.rings_on_day[day] += 1
                assert self.rings_on_day[day] <= vol.daily_ring_cap, "over the daily cap"
                assert event.expires_at > now
                self.ringing[event.to] = event.call_id
            elif isinstance(event, Withdrawn):
                assert self.ringing.pop(event.to, None) == event.call_id, "withdrawn without a ring"
            elif isinstance(event, Assigned):
                if event.offerer:
                    continue
                self.helpers[event.call_id].add(event.to)
                assert len(self.helpers[event.call_id]) == 1, "two helpers for one call"
                self.in_call[event.to] = event.call_id
                self.in_call[self.calls[event.call_id]] = event.call_id
            elif isinstance(event, Ended) and event.party is Role.RECIPIENT:
                assert event.call_id not in self.ended, "ended twice"
                self.ended.add(event.call_id)
                for user, call in list(self.in_call.items()):
                    if call == event.call_id:
                        del self.in_call[user]

    def attempt(self, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            return self.run(coro)
        except BrokerError:
            return None

    # --- what people do ------------------------------------------------------------------------
    @rule(who=st.integers(0, 2), lang=st.sampled_from([None, "en", "fr", "de"]))
    def request(self, who: int, lang: str | None) -> None:
        outcome = self.attempt(self.broker.request(self.profiles[f"r{who}"], language=lang))
        if outcome is not None:
            self.calls[outcome.call.id] = f"r{who}"
            self.observe(outcome.events)

    @precondition(lambda self: bool(self.ringing))
    @rule(data=st.data())
    def accept(self, data: st.DataObject) -> None:
        vol = data.draw(st.sampled_from(sorted(self.ringing)))
        call = self.ringing.pop(vol)
        outcome = self.attempt(self.broker.accept(self.profiles[vol], call))
        if outcome is None:
            self.ringing[vol] = call  # refused: still ringing as far as it knows
        else:
            self.observe(outcome.events)

    @precondition(lambda self: bool(self.ringing))
    @rule(data=st.data())
    def decline(self, data: st.DataObject) -> None:
        vol = data.draw(st.sampled_from(sorted(self.ringing)))
        outcome = self.attempt(self.broker.decline(vol, self.ringing[vol]))
        if outcome is not None:
            self.observe(outcome.events)
            assert vol not in self.ringing, "a decline must withdraw the ring"

    @precondition(lambda self: bool(self.calls))
    @rule(data=st.data(), hang_up=st.booleans())
    def finish(self, data: st.DataObject, hang_up: bool) -> None:
        call = data.draw(st.sampled_from(sorted(self.calls)))
        rec = self.calls[call]
        outcome = self.attempt(
            self.broker.end(rec, call) if hang_up else self.broker.cancel(rec, call)
        )
        if outcome is not None:
            self.observe(outcome.events)

    @rule(who=st.integers(0, 7), on=st.booleans())
    def availability(self, who: int, on: bool) -> None:
        self.run(self.broker.set_available(self.profiles[f"v{who}"], on))

    @rule(who=st.integers(0, 7))
    def drop(self, who: int) -> None:
        user = f"v{who}"
        if self.run(self.store.is_connected(user)):
            self.run(self.store.set_connected(user, False))
            self.run(self.broker.disconnected(user, "s", grace_s=3))
        else:
            self.run(self.store.set_connected(user, True))
            self.observe(
                [
                    e
                    for e in self.run(self.broker.resumed(user, "s"))
                    if not isinstance(e, Ring | Assigned)
                ]
            )

    @rule(seconds=st.sampled_from([0.5, 2, 5, 13, 3600, 6 * 3600]))
    def time_passes(self, seconds: float) -> None:
        # Timers fire when they are due, as the server's timer loop fires them.
        until = self.clock.now() + seconds
        while (due := self.run(self.store.next_deadline())) is not None and due <= until:
            self.clock.set(max(due, self.clock.now()))
            self.observe(self.run(self.broker.fire_due()))
        self.clock.set(until)

    # --- what must always hold -----------------------------------------------------------------
    @invariant()
    def store_agrees(self) -> None:
        for vol, call in self.ringing.items():
            assert self.run(self.store.ring_of(vol)) == call
        for call_id in self.calls:
            call = self.run(self.store.get_call(call_id))
            assert call is not None
            if call.state is CallState.ASSIGNED:
                assert self.helpers[call_id] == {call.helper_id}
                assert not self.run(self.store.ringing(call_id))
            if call.state is CallState.ENDED:
                assert call_id in self.ended and not self.run(self.store.ringing(call_id))


BrokerMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBroker = BrokerMachine.TestCase
