"""Duty of care on a virtual clock: the report threshold, restrictions in dispatch, erasure, the
retention sweep and the per-day counters. No sockets."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from broker.clock import VirtualClock
from broker.dispatch import DispatchSettings
from broker.events import AvailabilityChanged, Event, Ring, Withdrawn
from broker.model import BrokerError, CallState, ErrorCode, Profile, WithdrawReason
from broker.moderation import (
    AuditAction,
    AuditQuery,
    CaseAction,
    CaseQuery,
    CaseState,
    ReportReason,
    RestrictionKind,
)
from broker.privacy import RETENTION
from broker.safety import SafetySettings
from broker.service import Broker
from broker.stats import day_of, days_between, percentile
from broker.stats import report as stats_report
from broker.store.memory import MemoryStore
from tests.test_dispatch import recipient, volunteer

DAY = 86400.0


@pytest.fixture
def care(store: MemoryStore, clock: VirtualClock) -> Broker:
    return Broker(
        store,
        clock,
        DispatchSettings(first_wave=5, max_wave=5),
        rng=random.Random(3),
        safety=SafetySettings(suspend_after_reports=3, report_window_days=90, retention_days=365),
    )


def rings(events: list[Event]) -> list[str]:
    return sorted(e.to for e in events if isinstance(e, Ring))


async def answered_call(broker: Broker, rec: Profile, helper: str, topic: str | None = None) -> str:
    """A call from ``rec`` that ``helper`` answers and that then ends."""
    outcome = await broker.request(rec, topic=topic)
    assert outcome.call is not None
    call_id = outcome.call.id
    assert helper in rings(outcome.events), rings(outcome.events)
    helper_profile = await broker.store.get_profile(helper)
    assert helper_profile is not None
    await broker.accept(helper_profile, call_id)
    await broker.end(rec.user_id, call_id)
    return call_id


async def report(
    broker: Broker, rec: Profile, helper: str, reason: ReportReason = ReportReason.ABUSIVE
) -> list[Event]:
    call_id = await answered_call(broker, rec, helper)
    return await broker.feedback(rec.user_id, call_id, "down", reason, "rude")


async def test_three_different_reporters_suspend_a_helper(
    care: Broker, store: MemoryStore, clock: VirtualClock
) -> None:
    await volunteer(store, "val")
    r1, r2, r3 = [await recipient(store, f"r{i}") for i in range(1, 4)]
    assert await report(care, r1, "val") == []
    clock.advance(DAY)
    assert await report(care, r2, "val") == []
    assert (await care.safety.restriction("val")) is None
    events = await report(care, r3, "val")
    assert AvailabilityChanged(to="val", available=False, reason="suspended") in events
    restriction = await care.safety.restriction("val")
    assert restriction is not None and restriction.kind is RestrictionKind.SUSPENDED
    assert restriction.by == "system" and restriction.until is None
    assert not await store.is_on_duty("val")
    entries = await store.audit(AuditQuery(target="val"), None, 10)
    assert [(e.action, e.actor) for e in entries] == [(AuditAction.USER_SUSPEND, "system")]
    # Refused on duty, with the end date (none).
    val = await store.get_profile("val")
    assert val is not None
    with pytest.raises(BrokerError) as refused:
        await care.set_available(val, True)
    assert refused.value.code is ErrorCode.SUSPENDED and refused.value.until is None
    await care.set_available(val, False)  # going off duty is always allowed
    # Three open cases wait for a person.
    assert await store.count_cases(CaseQuery(state=CaseState.OPEN, user="val")) == 3


async def test_one_person_reporting_three_times_suspends_nobody(
    care: Broker, store: MemoryStore, clock: VirtualClock
) -> None:
    await volunteer(store, "val")
    r1 = await recipient(store, "r1")
    for _ in range(3):
        await report(care, r1, "val")
        profile = await store.get_profile("r1")
        assert profile is not None
        # The pairwise block would stop r1 reaching val again: lift it to test the count.
        await store.put_profile(profile.model_copy(update={"blocked": frozenset()}))
        clock.advance(3600)
    assert await care.safety.restriction("val") is None


async def test_reports_outside_the_window_do_not_count(
    care: Broker, store: MemoryStore, clock: VirtualClock
) -> None:
    await volunteer(store, "val", window=("00:00", "00:00"))
    r1, r2, r3 = [await recipient(store, f"r{i}") for i in range(1, 4)]
    await report(care, r1, "val")
    clock.advance(45 * DAY)
    await report(care, r2, "val")
    # Exactly 90 days after r1's report it no longer counts: two reporters in the window.
    clock.advance(45 * DAY)
    await report(care, r3, "val")
    assert await care.safety.restriction("val") is None
    # r2's report (45 days ago) still counts: a fourth reporter now makes three (r2, r3, r4).
    r4 = await recipient(store, "r4")
    await report(care, r4, "val")
    assert await care.safety.restriction("val") is not None


async def test_recipients_are_never_suspended_automatically(
    care: Broker, store: MemoryStore
) -> None:
    rec = await recipient(store, "rec")
    for name in ("v1", "v2", "v3"):
        await volunteer(store, name)
    for name in ("v1", "v2", "v3"):
        call_id = await answered_call(care, rec, name)
        await care.feedback(name, call_id, "down", ReportReason.UNSAFE, None)
    assert await care.safety.restriction("rec") is None
    assert await store.count_cases(CaseQuery(user="rec", state=CaseState.OPEN)) == 3


async def test_a_restricted_helper_is_not_rung_and_a_ring_in_flight_is_withdrawn(
    care: Broker, store: MemoryStore, clock: VirtualClock
) -> None:
    await volunteer(store, "val")
    rec = await recipient(store)
    outcome = await care.request(rec)
    assert outcome.call is not None and rings(outcome.events) == ["val"]
    val = await store.get_profile("val")
    assert val is not None
    _, events = await care.restrict(val, RestrictionKind.SUSPENDED, "review", "admin1", "admin")
    assert Withdrawn("val", outcome.call.id, WithdrawReason.EXPIRED) in events
    assert await store.ring_of("val") is None
    # Even put back on duty behind the broker's back, the dispatcher skips them.
    await store.set_on_duty("val", True)
    await care.cancel("rec", outcome.call.id)
    again = await care.request(rec)
    assert rings(again.events) == []
    await care.reinstate(val, "cleared", "admin1", "admin")
    await care.cancel("rec", again.call.id)  # type: ignore[union-attr]
    third = await care.request(rec)
    assert rings(third.events) == ["val"]
    with pytest.raises(BrokerError) as twice:
        await care.reinstate(val, "again", "admin1", "admin")
    assert twice.value.code is ErrorCode.CONFLICT


async def test_a_suspension_with_days_ends_by_its_timer(
    care: Broker, store: MemoryStore, clock: VirtualClock
) -> None:
    val = await volunteer(store, "val")
    restriction, _ = await care.restrict(
        val, RestrictionKind.SUSPENDED, "cool off", "admin1", "admin", days=7
    )
    assert restriction.until == clock.now() + 7 * DAY
    with pytest.raises(BrokerError) as refused:
        await care.set_available(val, True)
    assert refused.value.until == restriction.until
    ends = datetime.fromtimestamp(restriction.until, UTC)
    assert f"It ends on {ends.day} {ends:%B %Y} at {ends:%H:%M} UTC." in refused.value.message
    clock.advance(7 * DAY)
    await care.fire_due()
    assert await store.get_restriction("val") is None
    await care.set_available(val, True)
    actions = [e.action for e in await store.audit(AuditQuery(target="val"), None, 5)]
    assert actions == [AuditAction.USER_REINSTATE, AuditAction.USER_SUSPEND]


async def test_a_suspended_recipient_cannot_call(care: Broker, store: MemoryStore) -> None:
    rec = await recipient(store)
    await care.restrict(rec, RestrictionKind.SUSPENDED, "abuse", "admin1", "admin")
    with pytest.raises(BrokerError) as refused:
        await care.request(rec)
    assert refused.value.code is ErrorCode.SUSPENDED


async def test_resolving_a_case_once_and_a_ban_revokes_sign_ins(
    care: Broker, store: MemoryStore, clock: VirtualClock
) -> None:
    await volunteer(store, "val")
    rec = await recipient(store)
    await report(care, rec, "val")
    (case,) = await store.cases(CaseQuery(), None, 5)
    resolved, _ = await care.resolve_case(case.id, CaseAction.BAN, "serious", None, "a1", None)
    assert resolved.state is CaseState.RESOLVED
    restriction = await care.safety.restriction("val")
    assert restriction is not None and restriction.kind is RestrictionKind.BANNED
    assert await store.revoked_before("val") == clock.now()
    with pytest.raises(BrokerError) as twice:
        await care.resolve_case(case.id, CaseAction.DISMISS, "no", None, "a1", None)
    assert twice.value.code is ErrorCode.CONFLICT
    # An organisation's admin does not see a case outside their organisation.
    with pytest.raises(BrokerError) as hidden:
        await care.safety.get_case(case.id, "some-org")
    assert hidden.value.code is ErrorCode.NOT_FOUND


async def test_erasure_ends_the_call_and_a_ban_survives_it(
    care: Broker, store: MemoryStore
) -> None:
    await volunteer(store, "val")
    rec = await recipient(store)
    await care.restrict(rec, RestrictionKind.BANNED, "abuse", "admin1", "admin")
    await care.reinstate(rec, "appeal", "admin1", "admin")
    outcome = await care.request(rec, topic="my medicine")
    assert outcome.call is not None
    await care.restrict(rec, RestrictionKind.BANNED, "abuse again", "admin1", "admin")
    pseudonym, events = await care.erase(rec)
    assert any(isinstance(e, Withdrawn) and e.to == "val" for e in events)
    call = await store.get_call(outcome.call.id)
    assert call is not None and call.state is CallState.ENDED
    assert call.recipient_id == pseudonym and call.topic is None
    assert "'rec'" not in repr(vars(store)) and "my medicine" not in repr(vars(store))
    # Signing in again with the same identity: the ban is back.
    await recipient(store)
    restriction = await care.safety.restriction("rec")
    assert restriction is not None and restriction.kind is RestrictionKind.BANNED
    erased = await store.audit(AuditQuery(action=AuditAction.USER_ERASE), None, 5)
    assert [e.target for e in erased] == [pseudonym]


async def test_the_retention_sweep_scrubs_old_calls_in_batches(
    care: Broker, store: MemoryStore, clock: VirtualClock
) -> None:
    await volunteer(store, "val", window=("00:00", "00:00"))
    rec = await recipient(store)
    old = await answered_call(care, rec, "val", topic="old topic")
    clock.advance(200 * DAY)
    recent = await answered_call(care, rec, "val", topic="recent topic")
    await care.start()
    assert await store.deadline(RETENTION) is not None
    clock.advance(166 * DAY)  # the first call is now 366 days old, the second 166
    await care.fire_due()
    old_call, recent_call = await store.get_call(old), await store.get_call(recent)
    assert old_call is not None and recent_call is not None
    assert old_call.topic is None and old_call.recipient_id.startswith("p_")
    assert old_call.helper_id is not None and old_call.helper_id.startswith("p_")
    assert recent_call.topic == "recent topic" and recent_call.recipient_id == "rec"
    # It put itself back for the next day, and records what it did.
    next_run = await store.deadline(RETENTION)
    assert next_run is not None and next_run == pytest.approx(clock.now() + DAY)
    sweeps = await store.audit(AuditQuery(action=AuditAction.RETENTION_SWEEP), None, 5)
    assert [e.detail["calls"] for e in sweeps] == [1]


async def test_calls_are_counted_once_per_day_as_they_end(
    care: Broker, store: MemoryStore, clock: VirtualClock
) -> None:
    await volunteer(store, "val", window=("00:00", "00:00"))
    rec = await recipient(store)
    clock.advance(12)
    await answered_call(care, rec, "val")
    cancelled = await care.request(rec)
    await care.cancel("rec", cancelled.call.id)  # type: ignore[union-attr]
    # Ending an ended call again counts nothing more.
    await care.cancel("rec", cancelled.call.id)  # type: ignore[union-attr]
    day = day_of(clock.now())
    (counts,) = await store.day_counts([day])
    total = counts["all"]
    assert (total.created, total.answered, total.completed, total.cancelled) == (2, 1, 1, 1)
    assert counts["lang:en"].created == 2
    body = stats_report(zip([day], [counts], strict=True), None)
    assert body["total"]["completed_pct"] == 50.0
    assert body["monthly"] == [
        {"month": day[:7], "created": 2, "completed": 1, "completed_pct": 50.0}
    ]


def test_percentiles_are_estimated_within_buckets() -> None:
    hist = [0] * 13
    hist[1] = 10  # ten answers in (5, 10] s
    assert percentile(hist, 50) == 7.5
    assert percentile(hist, 100) == 10
    assert percentile([0] * 13, 50) is None
    hist[12] = 10  # and ten over 600 s: the open bucket answers its lower bound
    assert percentile(hist, 99) == 600


def test_days_between_covers_whole_days() -> None:
    start = 1_781_481_600.0  # 2026-06-15 00:00 UTC
    assert days_between(start, start + DAY) == ["2026-06-15"]
    assert days_between(start, start + 2 * DAY + 1) == ["2026-06-15", "2026-06-16", "2026-06-17"]
    assert days_between(start, start) == []
