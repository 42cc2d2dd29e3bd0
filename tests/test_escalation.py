"""Escalation on a virtual clock: a search that reaches its maximum wait or finds nobody eligible
goes to the configured help centre's queue if it is open and has room; otherwise the recipient
is told when to try again. On the memory, durable (SQLite) and Redis stores."""

from __future__ import annotations

import random

import pytest

from broker.clock import VirtualClock
from broker.dispatch import DispatchSettings
from broker.escalation import EscalationSettings
from broker.events import Assigned, Ended, Event, Ring, Status, Withdrawn
from broker.model import (
    BrokerError,
    CallState,
    EndReason,
    EscalationOutcome,
    Profile,
    Role,
    WithdrawReason,
)
from broker.service import Broker
from broker.stats import day_of
from broker.store import Store
from tests.queue_helpers import OFFICE, agent, caller, make_org

MONDAY_NOON = 1_781_524_800.0  # 2026-06-15 12:00 UTC, 13:00 in London
TIMING = DispatchSettings(
    first_wave=1, max_wave=4, wave_interval_s=10, ring_timeout_s=30, max_wait_s=120
)


@pytest.fixture
def store(each_store: Store) -> Store:
    return each_store


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(MONDAY_NOON)


def make_broker(
    store: Store,
    clock: VirtualClock,
    to: str | None = "help/line",
    timing: DispatchSettings = TIMING,
) -> Broker:
    return Broker(
        store,
        clock,
        timing,
        rng=random.Random(5),
        escalation=EscalationSettings(to=to, retry_after_s=600),
    )


async def volunteer(store: Store, user_id: str) -> Profile:
    profile = Profile(
        user_id=user_id,
        role=Role.VOLUNTEER,
        display_name=user_id.title(),
        languages=["en"],
        timezone="Europe/London",
    )
    await store.put_profile(profile)
    await store.set_on_duty(user_id, True)
    await store.set_connected(user_id, True)
    return profile


def told(events: list[Event], to: str = "r1") -> list[Status]:
    return [e for e in events if isinstance(e, Status) and e.to == to and e.escalation]


async def stats_of(store: Store, clock: VirtualClock) -> tuple[int, int]:
    counts = (await store.day_counts([day_of(clock.now())]))[0]["all"]
    return counts.escalated, counts.told_to_retry


async def test_nobody_eligible_goes_to_the_open_help_centre_at_once(
    store: Store, clock: VirtualClock
) -> None:
    broker = make_broker(store, clock)
    await store.put_org(make_org("help", id="line", name="Help line"))
    a1 = await agent(broker, "a1", org="help")
    out = await broker.request(await caller(store, "r1"))
    call = out.call
    assert call is not None and call.state is CallState.QUEUED
    assert (call.org, call.queue, call.escalation) == ("help", "line", EscalationOutcome.QUEUED)
    [status] = told(out.events)
    assert status.state is CallState.QUEUED and status.position == 1
    assert status.escalation is not None
    assert (status.escalation.outcome, status.escalation.org_name) == (
        EscalationOutcome.QUEUED,
        "Help",
    )
    assert [(e.to, e.call_id) for e in out.events if isinstance(e, Ring)] == [("a1", call.id)]
    # No volunteer timers are left to fire: the search is over.
    assert await store.deadline(f"expire|{call.id}") is None
    assert await store.deadline(f"wave|{call.id}") is None
    won = await broker.accept(a1, call.id)
    assert {e.to for e in won.events if isinstance(e, Assigned)} == {"r1", "a1"}
    assert await store.queue_entries("help", "line") == []
    await broker.end("r1", call.id)
    [history] = await store.calls_of("r1")
    assert history.escalation is EscalationOutcome.QUEUED and history.escalated_at == clock.now()
    assert history.helper_role is Role.AGENT
    assert await stats_of(store, clock) == (1, 0)


async def test_maximum_wait_goes_to_the_help_centre_and_withdraws_rings(
    store: Store, clock: VirtualClock
) -> None:
    # Rings last as long as the search, so that both are still live at its maximum wait.
    broker = make_broker(store, clock, timing=TIMING.model_copy(update={"ring_timeout_s": 300}))
    await store.put_org(make_org("help", id="line", name="Help line"))
    await volunteer(store, "v1")
    await volunteer(store, "v2")
    out = await broker.request(await caller(store, "r1"))
    assert out.call is not None and out.call.state is CallState.SEARCHING
    call_id = out.call.id
    assert told(out.events) == []  # someone was rung: nothing to escalate yet
    # Both volunteers are rung in turn and never answer.
    events: list[Event] = []
    for _ in range(12):
        clock.advance(10)
        events += await broker.fire_due()
    queued = await store.get_call(call_id)
    assert queued is not None and queued.state is CallState.QUEUED
    assert queued.escalated_at == MONDAY_NOON + 120
    assert [s.escalation.outcome for s in told(events) if s.escalation] == [
        EscalationOutcome.QUEUED
    ]
    assert not [e for e in events if isinstance(e, Ended)]
    assert await store.ringing(call_id) == []
    assert await store.queue_entries("help", "line") != []
    # A volunteer's late accept is refused: the call is the help centre's now.
    v2 = await store.get_profile("v2")
    assert v2 is not None
    with pytest.raises(BrokerError, match="Your ring for this call has expired"):
        await broker.accept(v2, call_id)


async def test_closed_help_centre_tells_when_it_opens_and_the_search_goes_on(
    store: Store, clock: VirtualClock
) -> None:
    broker = make_broker(store, clock)
    await store.put_org(make_org("help", hours=OFFICE, id="line", name="Help line"))
    clock.set(MONDAY_NOON + 20 * 3600 - 5 * 60)  # 08:55 Tuesday in London: opens at 09:00
    out = await broker.request(await caller(store, "r1"))
    call = out.call
    assert call is not None and call.state is CallState.SEARCHING
    [status] = told(out.events)
    assert status.escalation is not None
    assert status.escalation.outcome is EscalationOutcome.CLOSED
    assert status.escalation.retry_after_s == 300  # the opening, sooner than the default
    # Told once, however many waves follow; a volunteer coming on duty is still rung.
    clock.advance(10)
    assert told(await broker.fire_due()) == []
    await volunteer(store, "v1")
    clock.advance(10)
    assert [e.to for e in await broker.fire_due() if isinstance(e, Ring)] == ["v1"]
    await broker.decline("v1", call.id)
    # At the maximum wait (08:57) it is still closed: the search ends, with the new delay.
    clock.set(call.requested_at + 120)
    ended = [e for e in await broker.fire_due() if isinstance(e, Ended)]
    assert [(e.reason, e.retry_after_s) for e in ended] == [(EndReason.NO_ANSWER, 180)]
    [history] = await store.calls_of("r1")
    assert history.escalation is EscalationOutcome.CLOSED and history.retry_after_s == 180
    assert await stats_of(store, clock) == (0, 1)


async def test_help_centre_opening_before_the_maximum_wait_takes_the_search(
    store: Store, clock: VirtualClock
) -> None:
    broker = make_broker(store, clock)
    await store.put_org(make_org("help", hours=OFFICE, id="line", name="Help line"))
    clock.set(MONDAY_NOON + 20 * 3600 - 60)  # 08:59 Tuesday in London
    out = await broker.request(await caller(store, "r1"))
    assert out.call is not None
    [status] = told(out.events)
    assert status.escalation is not None and status.escalation.retry_after_s == 60
    clock.advance(120)
    events = await broker.fire_due()
    assert [s.escalation.outcome for s in told(events) if s.escalation] == [
        EscalationOutcome.QUEUED
    ]
    call = await store.get_call(out.call.id)
    assert call is not None and call.state is CallState.QUEUED


@pytest.mark.parametrize("configured", [False, True])
async def test_no_help_centre_ends_with_a_suggested_delay(
    configured: bool, store: Store, clock: VirtualClock
) -> None:
    # Not configured, or configured and the organisation does not exist.
    broker = make_broker(store, clock, to="help/line" if configured else None)
    out = await broker.request(await caller(store, "r1"))
    assert out.call is not None
    call_id = out.call.id
    [status] = told(out.events)
    assert status.escalation is not None
    assert status.escalation.outcome is EscalationOutcome.UNAVAILABLE
    assert status.escalation.retry_after_s == 600
    clock.advance(120)
    events = await broker.fire_due()
    assert [e for e in events if isinstance(e, Ended)] == [
        Ended("r1", call_id, EndReason.NO_ANSWER, retry_after_s=600)
    ]
    [history] = await store.calls_of("r1")
    assert history.escalation is EscalationOutcome.UNAVAILABLE and history.retry_after_s == 600
    assert await stats_of(store, clock) == (0, 1)


async def test_full_help_centre_is_not_joined(store: Store, clock: VirtualClock) -> None:
    broker = make_broker(store, clock)
    await store.put_org(make_org("help", id="line", name="Help line", max_length=1))
    first = await broker.request(await caller(store, "r1"))
    assert first.call is not None and first.call.state is CallState.QUEUED
    second = await broker.request(await caller(store, "r2"))
    assert second.call is not None and second.call.state is CallState.SEARCHING
    [status] = told(second.events, "r2")
    assert status.escalation is not None and status.escalation.outcome is EscalationOutcome.FULL


async def test_cancel_after_being_told_ends_without_a_delay(
    store: Store, clock: VirtualClock
) -> None:
    broker = make_broker(store, clock, to=None)
    out = await broker.request(await caller(store, "r1"))
    assert out.call is not None
    ended = await broker.cancel("r1", out.call.id)
    assert [e for e in ended.events if isinstance(e, Ended)] == [
        Ended("r1", out.call.id, EndReason.CANCELLED, by=Role.RECIPIENT)
    ]


async def test_an_escalated_call_does_not_overflow_back_to_volunteers(
    store: Store, clock: VirtualClock
) -> None:
    broker = make_broker(store, clock)
    await store.put_org(
        make_org("help", id="line", name="Help line", overflow="volunteers", max_wait_s=60)
    )
    out = await broker.request(await caller(store, "r1"))
    assert out.call is not None and out.call.state is CallState.QUEUED
    await volunteer(store, "v1")
    clock.advance(60)
    events = await broker.fire_due()
    assert not [e for e in events if isinstance(e, Ring)]
    assert [(e.to, e.reason) for e in events if isinstance(e, Ended)] == [
        ("r1", EndReason.NO_ANSWER)
    ]


async def test_a_call_overflowed_from_a_queue_is_not_escalated_to_one(
    store: Store, clock: VirtualClock
) -> None:
    broker = make_broker(store, clock)
    await store.put_org(make_org("help", id="line", name="Help line"))
    await store.put_org(make_org("bank", overflow="volunteers", max_wait_s=30))
    out = await broker.request(await caller(store, "r1"), org="bank")
    assert out.call is not None and out.call.state is CallState.QUEUED
    clock.advance(30)
    events = await broker.fire_due()  # overflows to volunteers: there are none
    call = await store.get_call(out.call.id)
    assert call is not None and call.state is CallState.SEARCHING and call.org == "bank"
    [status] = told(events)
    assert status.escalation is not None
    assert status.escalation.outcome is EscalationOutcome.UNAVAILABLE
    clock.advance(120)
    ended = [e for e in await broker.fire_due() if isinstance(e, Ended)]
    assert [(e.reason, e.retry_after_s) for e in ended] == [(EndReason.NO_ANSWER, 600)]


async def test_a_volunteer_declining_leaves_nobody_and_escalates(
    store: Store, clock: VirtualClock
) -> None:
    broker = make_broker(store, clock)
    await store.put_org(make_org("help", id="line", name="Help line"))
    await volunteer(store, "v1")
    out = await broker.request(await caller(store, "r1"))
    assert out.call is not None and out.call.state is CallState.SEARCHING
    declined = await broker.decline("v1", out.call.id)
    assert Withdrawn("v1", out.call.id, WithdrawReason.DECLINED) in declined.events
    events = await broker.fire_due()  # the next wave, brought forward, finds nobody
    assert [s.escalation.outcome for s in told(events) if s.escalation] == [
        EscalationOutcome.QUEUED
    ]


async def test_resuming_recipient_hears_the_escalation_again(
    store: Store, clock: VirtualClock
) -> None:
    broker = make_broker(store, clock)
    await store.put_org(make_org("help", id="line", name="Help line"))
    out = await broker.request(await caller(store, "r1"))
    assert out.call is not None
    [status] = [e for e in await broker.replay("r1") if isinstance(e, Status)]
    assert status.state is CallState.QUEUED and status.escalation is not None
    assert (status.escalation.outcome, status.escalation.org_name) == (
        EscalationOutcome.QUEUED,
        "Help",
    )


@pytest.mark.parametrize(
    "value, message",
    [
        ("help", "is not a help centre written 'org/queue'"),
        ("Help/line", "is not a valid organisation id"),
        ("help/", "is not a valid queue id"),
        ("help/line/x", "is not a valid queue id"),
    ],
)
def test_bad_help_centre_settings_are_refused(value: str, message: str) -> None:
    from signaling.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="escalate_to") as err:
        load_settings(escalate_to=value)
    assert message in str(err.value)


def test_help_centre_setting_and_delay_are_read() -> None:
    from signaling.config import ConfigError, load_settings

    settings = load_settings(escalate_to="help/line", escalate_retry_after_s=120)
    assert settings.escalation().target == ("help", "line")
    assert settings.escalation().retry_after_s == 120
    assert load_settings().escalation().target is None
    with pytest.raises(ConfigError, match="escalate_retry_after_s"):
        load_settings(escalate_retry_after_s=5)
