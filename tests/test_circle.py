"""Trusted circles on a virtual clock: invitation codes (one-time, expiring), past helpers
asked and agreeing, opaque handles on both sides, leaving and removing, and requests that ring
the circle first (with a head start) or only — under the same windows, caps, blocks and
suspensions as every ring. On the memory, durable (SQLite) and Redis stores."""

from __future__ import annotations

import random

import pytest

from broker.circle import CircleSettings
from broker.clock import VirtualClock
from broker.dispatch import DispatchSettings
from broker.events import Ended, Event, Ring, Status
from broker.model import (
    BrokerError,
    CallState,
    CircleMode,
    EndReason,
    ErrorCode,
    EscalationOutcome,
    Profile,
    Role,
)
from broker.moderation import RestrictionKind
from broker.service import Broker
from broker.store import Store

NOW = 1_781_524_800.0  # Monday 2026-06-15 12:00 UTC
TIMING = DispatchSettings(
    first_wave=1,
    max_wave=4,
    wave_interval_s=10,
    ring_timeout_s=30,
    max_wait_s=120,
    circle_head_start_s=20,
)


@pytest.fixture
def store(each_store: Store) -> Store:
    return each_store


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(NOW)


@pytest.fixture
def broker(store: Store, clock: VirtualClock) -> Broker:
    return Broker(store, clock, TIMING, rng=random.Random(3), circle=CircleSettings(max_members=3))


async def person(store: Store, user_id: str, role: Role, on_duty: bool = True) -> Profile:
    profile = Profile(
        user_id=user_id,
        role=role,
        display_name=user_id.title(),
        languages=["en"],
        timezone="Europe/London",
    )
    await store.put_profile(profile)
    if role is Role.VOLUNTEER and on_duty:
        await store.set_on_duty(user_id, True)
        await store.set_connected(user_id, True)
    return profile


async def fresh(store: Store, user_id: str) -> Profile:
    profile = await store.get_profile(user_id)
    assert profile is not None
    return profile


def rung(events: list[Event]) -> list[tuple[str, bool]]:
    return sorted((e.to, e.circle) for e in events if isinstance(e, Ring))


async def circle_of(broker: Broker, store: Store, recipient: str, *helpers: str) -> None:
    for helper in helpers:
        code, _ = await broker.circles.invite(await fresh(store, recipient))
        await broker.circles.redeem(await fresh(store, helper), code)


# --- invitations, consent, handles -------------------------------------------------------------


async def test_a_code_joins_once_and_neither_side_sees_the_others_id(
    store: Store, broker: Broker, clock: VirtualClock
) -> None:
    rae = await person(store, "r-rae", Role.RECIPIENT)
    val = await person(store, "v-val", Role.VOLUNTEER)
    bob = await person(store, "v-bob", Role.VOLUNTEER)
    code, expires_at = await broker.circles.invite(rae)
    assert expires_at == NOW + 7 * 86400
    assert len(code) == 14 and code.count("-") == 2
    joined = await broker.circles.redeem(val, code.lower().replace("-", " "))
    assert joined.display_name == "R-Rae" and "r-rae" not in joined.circle
    with pytest.raises(BrokerError) as used:
        await broker.circles.redeem(bob, code)
    assert used.value.code is ErrorCode.NOT_FOUND and "used already" in used.value.message
    [member] = await broker.circles.members(rae)
    assert member.display_name == "V-Val" and "v-val" not in member.member
    assert member.member != joined.circle  # each side's handle is its own
    [mine] = await broker.circles.memberships(val)
    assert mine.circle == joined.circle and mine.since == NOW
    assert await broker.circles.memberships(bob) == []


async def test_an_expired_code_is_refused(
    store: Store, broker: Broker, clock: VirtualClock
) -> None:
    rae = await person(store, "r-rae", Role.RECIPIENT)
    val = await person(store, "v-val", Role.VOLUNTEER)
    code, expires_at = await broker.circles.invite(rae)
    clock.set(expires_at)
    with pytest.raises(BrokerError) as expired:
        await broker.circles.redeem(val, code)
    assert expired.value.code is ErrorCode.NOT_FOUND
    assert await broker.circles.members(rae) == []


@pytest.mark.parametrize("code", ["", "KM7P-3XQA", "KM7P-3XQA-9RT0", "KM7P-3XQA-9RTW-4444"])
async def test_a_malformed_code_is_refused_naming_the_shape(
    store: Store, broker: Broker, code: str
) -> None:
    val = await person(store, "v-val", Role.VOLUNTEER)
    with pytest.raises(BrokerError) as bad:
        await broker.circles.redeem(val, code)
    assert bad.value.code is ErrorCode.BAD_MESSAGE and "12 letters and digits" in bad.value.message


async def test_guessing_codes_is_rate_limited(store: Store, broker: Broker) -> None:
    val = await person(store, "v-val", Role.VOLUNTEER)
    for _ in range(10):
        with pytest.raises(BrokerError) as miss:
            await broker.circles.redeem(val, "KM7P-3XQA-9RTW")
        assert miss.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(BrokerError) as limited:
        await broker.circles.redeem(val, "KM7P-3XQA-9RTW")
    assert limited.value.code is ErrorCode.RATE_LIMITED


async def test_only_recipients_invite_and_only_volunteers_join(
    store: Store, broker: Broker
) -> None:
    rae = await person(store, "r-rae", Role.RECIPIENT)
    val = await person(store, "v-val", Role.VOLUNTEER)
    with pytest.raises(BrokerError) as refused:
        await broker.circles.invite(val)
    assert refused.value.code is ErrorCode.FORBIDDEN
    code, _ = await broker.circles.invite(rae)
    agent = Profile(user_id="a1", role=Role.AGENT, org="bank")
    with pytest.raises(BrokerError) as agent_refused:
        await broker.circles.redeem(agent, code)
    assert agent_refused.value.code is ErrorCode.FORBIDDEN


async def test_a_circle_has_a_size_limit(store: Store, broker: Broker) -> None:
    await person(store, "r-rae", Role.RECIPIENT)
    for n in range(4):
        await person(store, f"v{n}", Role.VOLUNTEER)
    await circle_of(broker, store, "r-rae", "v0", "v1", "v2")
    code, _ = await broker.circles.invite(await fresh(store, "r-rae"))
    with pytest.raises(BrokerError) as full:
        await broker.circles.redeem(await fresh(store, "v3"), code)
    assert full.value.code is ErrorCode.CONFLICT and "3 helpers" in full.value.message


async def test_a_past_helper_is_asked_and_must_agree(
    store: Store, broker: Broker, clock: VirtualClock
) -> None:
    rae = await person(store, "r-rae", Role.RECIPIENT)
    val = await person(store, "v-val", Role.VOLUNTEER)
    out = await broker.request(rae)
    assert out.call is not None
    await broker.accept(val, out.call.id)
    with pytest.raises(BrokerError) as too_soon:
        await broker.circles.propose(rae, out.call.id)  # the call has not ended
    assert too_soon.value.code is ErrorCode.NOT_FOUND
    await broker.end("r-rae", out.call.id)
    proposal, _ = await broker.circles.propose(rae, out.call.id)
    [asked] = await broker.circles.proposals(val)
    assert (asked.proposal, asked.display_name) == (proposal, "R-Rae")
    assert await broker.circles.members(rae) == []  # not before the helper agrees
    # Nobody else can answer it, nor can a recipient ask about someone else's call.
    bob = await person(store, "v-bob", Role.VOLUNTEER)
    with pytest.raises(BrokerError):
        await broker.circles.answer(bob, proposal, True)
    other = await person(store, "r-other", Role.RECIPIENT)
    with pytest.raises(BrokerError):
        await broker.circles.propose(other, out.call.id)
    joined = await broker.circles.answer(val, proposal, True)
    assert joined is not None and joined.display_name == "R-Rae"
    assert [m.display_name for m in await broker.circles.members(rae)] == ["V-Val"]
    with pytest.raises(BrokerError) as again:
        await broker.circles.propose(rae, out.call.id)
    assert again.value.code is ErrorCode.CONFLICT


async def test_a_past_helper_may_decline(store: Store, broker: Broker) -> None:
    rae = await person(store, "r-rae", Role.RECIPIENT)
    val = await person(store, "v-val", Role.VOLUNTEER)
    out = await broker.request(rae)
    assert out.call is not None
    await broker.accept(val, out.call.id)
    await broker.end("v-val", out.call.id)
    proposal, _ = await broker.circles.propose(rae, out.call.id)
    assert await broker.circles.answer(val, proposal, False) is None
    assert await broker.circles.members(rae) == [] and await broker.circles.proposals(val) == []
    with pytest.raises(BrokerError):
        await broker.circles.answer(val, proposal, True)  # answered once


async def test_members_leave_and_recipients_remove(store: Store, broker: Broker) -> None:
    rae = await person(store, "r-rae", Role.RECIPIENT)
    val = await person(store, "v-val", Role.VOLUNTEER)
    bob = await person(store, "v-bob", Role.VOLUNTEER)
    await circle_of(broker, store, "r-rae", "v-val", "v-bob")
    [mine] = await broker.circles.memberships(val)
    await broker.circles.leave(val, mine.circle)
    assert [m.display_name for m in await broker.circles.members(rae)] == ["V-Bob"]
    with pytest.raises(BrokerError):
        await broker.circles.leave(val, mine.circle)
    [member] = await broker.circles.members(rae)
    await broker.circles.remove(rae, member.member)
    assert await broker.circles.members(rae) == [] and await broker.circles.memberships(bob) == []
    with pytest.raises(BrokerError) as gone:
        await broker.circles.remove(rae, member.member)
    assert gone.value.code is ErrorCode.NOT_FOUND


# --- requests to the circle ------------------------------------------------------------------


async def test_circle_first_rings_the_circle_then_everyone_after_the_head_start(
    store: Store, broker: Broker, clock: VirtualClock
) -> None:
    rae = await person(store, "r-rae", Role.RECIPIENT)
    for uid in ("v-val", "v-bob", "v-pub"):
        await person(store, uid, Role.VOLUNTEER)
    await circle_of(broker, store, "r-rae", "v-val", "v-bob")
    out = await broker.request(await fresh(store, "r-rae"), circle=CircleMode.FIRST)
    assert out.call is not None and out.call.circle is CircleMode.FIRST
    assert rung(out.events) == [("v-bob", True), ("v-val", True)]
    clock.advance(10)
    assert rung(await broker.fire_due()) == []  # still the circle's head start
    clock.advance(10)
    assert rung(await broker.fire_due()) == [("v-pub", False)]
    assert out.call.recipient_id == rae.user_id


async def test_circle_first_goes_public_at_once_when_the_circle_has_declined(
    store: Store, broker: Broker, clock: VirtualClock
) -> None:
    await person(store, "r-rae", Role.RECIPIENT)
    val = await person(store, "v-val", Role.VOLUNTEER)
    await person(store, "v-pub", Role.VOLUNTEER)
    await circle_of(broker, store, "r-rae", "v-val")
    out = await broker.request(await fresh(store, "r-rae"), circle=CircleMode.FIRST)
    assert out.call is not None
    await broker.decline(val.user_id, out.call.id)
    assert rung(await broker.fire_due()) == [("v-pub", False)]


async def test_circle_first_with_nobody_available_searches_everyone_at_once(
    store: Store, broker: Broker
) -> None:
    await person(store, "r-rae", Role.RECIPIENT)
    await person(store, "v-off", Role.VOLUNTEER)
    await person(store, "v-pub", Role.VOLUNTEER)
    await circle_of(broker, store, "r-rae", "v-off")
    await store.set_on_duty("v-off", False)
    out = await broker.request(await fresh(store, "r-rae"), circle=CircleMode.FIRST)
    assert rung(out.events) == [("v-pub", False)]


async def test_circle_only_never_rings_the_public_and_is_not_escalated(
    store: Store, clock: VirtualClock
) -> None:
    from broker.escalation import EscalationSettings
    from tests.queue_helpers import make_org

    broker = Broker(
        store, clock, TIMING, rng=random.Random(3), escalation=EscalationSettings(to="help/line")
    )
    await store.put_org(make_org("help", id="line", name="Help line"))
    await person(store, "r-rae", Role.RECIPIENT)
    val = await person(store, "v-val", Role.VOLUNTEER)
    await person(store, "v-pub", Role.VOLUNTEER)
    await circle_of(broker, store, "r-rae", "v-val")
    out = await broker.request(await fresh(store, "r-rae"), circle=CircleMode.ONLY)
    assert out.call is not None
    call_id = out.call.id
    assert rung(out.events) == [("v-val", True)]
    await broker.decline(val.user_id, call_id)
    events: list[Event] = []
    for _ in range(12):
        events += await broker.fire_due()
        clock.advance(10)
    events += await broker.fire_due()
    assert rung(events) == []  # the public never, the member not twice
    told = [e.escalation for e in events if isinstance(e, Status) and e.escalation]
    assert [t.outcome for t in told] == [EscalationOutcome.UNAVAILABLE]
    ended = [e for e in events if isinstance(e, Ended)]
    assert [(e.to, e.reason) for e in ended] == [("r-rae", EndReason.NO_ANSWER)]
    call = await store.get_call(call_id)
    assert call is not None and call.state is CallState.ENDED and call.org is None


async def test_circle_only_rings_a_member_who_comes_on_duty(
    store: Store, broker: Broker, clock: VirtualClock
) -> None:
    await person(store, "r-rae", Role.RECIPIENT)
    await person(store, "v-val", Role.VOLUNTEER, on_duty=False)
    await circle_of(broker, store, "r-rae", "v-val")
    out = await broker.request(await fresh(store, "r-rae"), circle=CircleMode.ONLY)
    assert rung(out.events) == []
    await store.set_on_duty("v-val", True)
    await store.set_connected("v-val", True)
    clock.advance(10)
    assert rung(await broker.fire_due()) == [("v-val", True)]


async def test_circle_only_with_an_empty_circle_is_refused(store: Store, broker: Broker) -> None:
    rae = await person(store, "r-rae", Role.RECIPIENT)
    with pytest.raises(BrokerError) as empty:
        await broker.request(rae, circle=CircleMode.ONLY)
    assert empty.value.code is ErrorCode.NOT_FOUND and "invite someone" in empty.value.message
    with pytest.raises(BrokerError) as with_org:
        await broker.request(rae, org="bank", circle=CircleMode.FIRST)
    assert with_org.value.code is ErrorCode.BAD_MESSAGE


async def test_circle_rings_obey_blocks_caps_windows_and_suspensions(
    store: Store, broker: Broker, clock: VirtualClock
) -> None:
    await person(store, "r-rae", Role.RECIPIENT)
    for uid in ("v-blocked", "v-capped", "v-asleep", "v-suspended", "v-ok"):
        await person(store, uid, Role.VOLUNTEER)
    await circle_of(broker, store, "r-rae", "v-blocked", "v-capped", "v-asleep")
    # Past this test's size limit of 3, straight into the store.
    await store.circle_add("r-rae", "v-suspended", NOW)
    await store.circle_add("r-rae", "v-ok", NOW)
    await store.block("r-rae", "v-blocked")
    capped = await fresh(store, "v-capped")
    await store.put_profile(capped.model_copy(update={"daily_ring_cap": 0}))
    asleep = await fresh(store, "v-asleep")
    window = {"ring_window": {"start": "01:00", "end": "02:00"}}
    await store.put_profile(asleep.model_validate({**asleep.model_dump(), **window}))
    await broker.restrict(
        await fresh(store, "v-suspended"), RestrictionKind.SUSPENDED, "test", "admin", "admin", 1
    )
    out = await broker.request(await fresh(store, "r-rae"), circle=CircleMode.ONLY)
    assert rung(out.events) == [("v-ok", True)]


async def test_a_member_resuming_hears_the_ring_is_from_their_circle(
    store: Store, broker: Broker
) -> None:
    await person(store, "r-rae", Role.RECIPIENT)
    await person(store, "v-val", Role.VOLUNTEER)
    await circle_of(broker, store, "r-rae", "v-val")
    out = await broker.request(await fresh(store, "r-rae"), circle=CircleMode.FIRST)
    assert rung(out.events) == [("v-val", True)]
    [again] = [e for e in await broker.replay("v-val") if isinstance(e, Ring)]
    assert again.circle is True and again.call_id == out.call.id  # type: ignore[union-attr]
