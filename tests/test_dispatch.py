"""Dispatch on a virtual clock: eligibility, ordering, waves, widening, timeouts. No sockets."""

from __future__ import annotations

import random
from datetime import UTC, datetime, time

import pytest

from broker.clock import VirtualClock
from broker.dispatch import DispatchSettings
from broker.events import Assigned, Ended, Event, Ring, Status, Withdrawn
from broker.model import (
    BrokerError,
    CallState,
    EndReason,
    ErrorCode,
    Profile,
    RingWindow,
    Role,
    WithdrawReason,
)
from broker.moderation import ReportReason
from broker.service import Broker
from broker.store.memory import MemoryStore


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


async def volunteer(
    store: MemoryStore,
    user_id: str,
    languages: list[str] | None = None,
    timezone: str = "Europe/London",
    window: tuple[str, str] = ("08:00", "22:00"),
    cap: int = 10,
    connected: bool = True,
    on_duty: bool = True,
) -> Profile:
    profile = Profile(
        user_id=user_id,
        role=Role.VOLUNTEER,
        display_name=user_id.title(),
        languages=languages or ["en"],
        timezone=timezone,
        ring_window=RingWindow.model_validate({"start": window[0], "end": window[1]}),
        daily_ring_cap=cap,
    )
    await store.put_profile(profile)
    if on_duty:
        await store.set_on_duty(user_id, True)
    if connected:
        await store.set_connected(user_id, True)
    return profile


async def recipient(
    store: MemoryStore, user_id: str = "rec", languages: list[str] | None = None
) -> Profile:
    profile = Profile(
        user_id=user_id, role=Role.RECIPIENT, display_name="Rae", languages=languages or ["en"]
    )
    await store.put_profile(profile)
    return profile


def rings(events: list[Event]) -> list[str]:
    return sorted(e.to for e in events if isinstance(e, Ring))


def of(events: list[Event], kind: type, to: str | None = None) -> list[Event]:
    return [e for e in events if isinstance(e, kind) and (to is None or e.to == to)]


async def ringing_now(store: MemoryStore, call_id: str) -> list[str]:
    return await store.ringing(call_id)


# --- eligibility, one rule at a time ----------------------------------------------------------


async def test_rings_a_suitable_volunteer_at_once(store: MemoryStore, broker: Broker) -> None:
    await volunteer(store, "val")
    rec = await recipient(store)
    outcome = await broker.request(rec, topic="label")
    assert outcome.call is not None and outcome.call.state is CallState.SEARCHING
    assert rings(outcome.events) == ["val"]
    assert outcome.call.notified == 1 and outcome.call.first_ring_at == broker.clock.now()
    ring = of(outcome.events, Ring)[0]
    assert isinstance(ring, Ring) and ring.topic == "label" and ring.requester_name == "Rae"
    assert ring.expires_at == broker.clock.now() + 45


@pytest.mark.parametrize(
    "rule",
    [
        "language",
        "night",
        "off_duty",
        "unreachable",
        "in_call",
        "ringing_elsewhere",
        "over_cap",
        "blocked_by_recipient",
        "blocks_recipient",
    ],
)
async def test_each_eligibility_rule_alone(rule: str, store: MemoryStore, broker: Broker) -> None:
    await volunteer(store, "ok")
    kwargs: dict[str, object] = {}
    if rule == "language":
        kwargs["languages"] = ["fr"]
    if rule == "night":
        kwargs["timezone"] = "America/Los_Angeles"  # 05:00 there at 12:00 UTC in June
    if rule == "off_duty":
        kwargs["on_duty"] = False
    if rule == "unreachable":
        kwargs["connected"] = False
    if rule == "over_cap":
        kwargs["cap"] = 0
    bad = await volunteer(store, "bad", **kwargs)  # type: ignore[arg-type]
    rec = await recipient(store)
    if rule in ("in_call", "ringing_elsewhere"):
        # Occupy "bad" with another recipient's call first.
        other = await recipient(store, "other")
        await store.set_on_duty("ok", False)
        first = await broker.request(other)
        assert rings(first.events) == ["bad"]
        if rule == "in_call":
            await broker.accept(bad, first.call.id)  # type: ignore[union-attr]
        await store.set_on_duty("ok", True)
    if rule == "blocked_by_recipient":
        await store.block("rec", "bad")
        rec = await store.get_profile("rec")  # type: ignore[assignment]
    if rule == "blocks_recipient":
        await store.block("bad", "rec")
    outcome = await broker.request(rec)
    assert rings(outcome.events) == ["ok"], rule


async def test_never_rung_twice_for_one_call(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    await volunteer(store, "val")
    rec = await recipient(store)
    outcome = await broker.request(rec)
    assert rings(outcome.events) == ["val"]
    clock.advance(46)  # the ring lapses; later waves must not ring val again for this call
    events = await broker.fire_due()
    assert of(events, Withdrawn, "val") == [
        Withdrawn("val", outcome.call.id, WithdrawReason.EXPIRED)
    ]  # type: ignore[union-attr]
    for _ in range(5):
        clock.advance(10)
        assert rings(await broker.fire_due()) == []


async def test_daily_cap_counts_rings_and_resets_on_the_local_day(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    await volunteer(store, "val", cap=2)
    for n in range(3):
        rec = await recipient(store, f"r{n}")
        outcome = await broker.request(rec)
        assert rings(outcome.events) == (["val"] if n < 2 else []), n
        await broker.cancel(rec.user_id, outcome.call.id)  # type: ignore[union-attr]
    clock.set(utc(2026, 6, 16, 9, 0))  # 10:00 the next day in London
    rec = await recipient(store, "tomorrow")
    assert rings((await broker.request(rec)).events) == ["val"]


# --- ordering ---------------------------------------------------------------------------------


async def test_fewest_recent_calls_first_then_longest_since_rung(
    store: MemoryStore, clock: VirtualClock
) -> None:
    broker = Broker(store, clock, DispatchSettings(first_wave=1, max_wave=1), rng=random.Random(1))
    for name in ("busy_bee", "rested", "fresh"):
        await volunteer(store, name)
    # busy_bee answers a call; rested is rung (and lets it lapse) later than fresh is.
    r1 = await recipient(store, "r1")
    await store.set_on_duty("rested", False)
    await store.set_on_duty("fresh", False)
    c1 = await broker.request(r1)
    assert rings(c1.events) == ["busy_bee"]
    await broker.accept(await store.get_profile("busy_bee"), c1.call.id)  # type: ignore[arg-type, union-attr]
    await broker.end("r1", c1.call.id)  # type: ignore[union-attr]
    for name in ("fresh", "rested"):
        clock.advance(60)
        await store.set_on_duty(name, True)
        r = await recipient(store, f"for_{name}")
        out = await broker.request(r)
        assert rings(out.events) == [name]
        await broker.cancel(r.user_id, out.call.id)  # type: ignore[union-attr]
        await store.set_on_duty(name, False)
    for name in ("rested", "fresh"):
        await store.set_on_duty(name, True)
    clock.advance(60)
    wide = Broker(store, clock, DispatchSettings(first_wave=3), rng=random.Random(1))
    out = await wide.request(await recipient(store, "last"))
    order = [e.to for e in out.events if isinstance(e, Ring)]
    # fresh was rung longest ago, rested more recently; busy_bee answered a call in the last
    # 30 days, so comes last however long ago it was rung.
    assert order == ["fresh", "rested", "busy_bee"]


async def test_ties_are_broken_at_random_but_reproducibly(
    store: MemoryStore, clock: VirtualClock
) -> None:
    for n in range(20):
        await volunteer(store, f"v{n:02d}")
    await recipient(store)

    async def first_wave(seed: int) -> list[str]:
        s = MemoryStore()
        for n in range(20):
            await volunteer(s, f"v{n:02d}")
        rec = await recipient(s)
        b = Broker(s, clock, DispatchSettings(first_wave=5), rng=random.Random(seed))
        return rings((await b.request(rec)).events)

    assert await first_wave(3) == await first_wave(3)
    picks = {tuple(await first_wave(seed)) for seed in range(8)}
    assert len(picks) > 1


# --- waves, widening, timeouts ----------------------------------------------------------------


async def test_waves_grow_until_everyone_is_rung(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    for n in range(20):
        await volunteer(store, f"v{n:02d}")
    rec = await recipient(store)
    outcome = await broker.request(rec)
    sizes = [len(rings(outcome.events))]
    statuses = []
    for _ in range(4):
        clock.advance(10)
        events = await broker.fire_due()
        sizes.append(len(rings(events)))
        statuses += of(events, Status, "rec")
    assert sizes == [2, 4, 8, 6, 0]  # 2, 4, 8 (max_wave), then the 6 left, then nobody
    assert [s.notified for s in statuses if isinstance(s, Status)] == [6, 14, 20]


async def test_widens_to_the_recipients_next_language(store: MemoryStore, broker: Broker) -> None:
    await volunteer(store, "marie", languages=["fr"])
    rec = await recipient(store, languages=["en", "fr"])
    outcome = await broker.request(rec)
    ring = of(outcome.events, Ring, "marie")
    assert len(ring) == 1 and isinstance(ring[0], Ring) and ring[0].language == "fr"
    assert outcome.call is not None and outcome.call.language == "en"


async def test_requested_language_first_then_profile_languages(
    store: MemoryStore, broker: Broker
) -> None:
    await volunteer(store, "hans", languages=["de"])
    await volunteer(store, "ann", languages=["en"])
    rec = await recipient(store, languages=["en", "de"])
    outcome = await broker.request(rec, language="de")
    assert rings(outcome.events) == ["hans"]


async def test_maximum_wait_ends_with_no_answer(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    await volunteer(store, "val")
    rec = await recipient(store)
    call_id = (await broker.request(rec)).call.id  # type: ignore[union-attr]
    clock.advance(44)
    assert of(await broker.fire_due(), Ended) == []
    await volunteer(store, "late")  # arrives later, is rung by a wave, never answers
    clock.advance(10)
    assert "late" in rings(await broker.fire_due())
    clock.advance(120 - 54)
    events = await broker.fire_due()
    # Nobody answered and no help centre is configured: told when to try again.
    assert of(events, Ended, "rec") == [
        Ended("rec", call_id, EndReason.NO_ANSWER, retry_after_s=900)
    ]
    assert of(events, Withdrawn, "late") == [Withdrawn("late", call_id, WithdrawReason.EXPIRED)]
    call = await store.get_call(call_id)
    assert (
        call is not None
        and call.state is CallState.ENDED
        and call.end_reason is EndReason.NO_ANSWER
    )
    assert await store.current_call("rec") is None and await store.ring_of("late") is None


async def test_ring_never_outlasts_the_search(store: MemoryStore, clock: VirtualClock) -> None:
    broker = Broker(store, clock, DispatchSettings(ring_timeout_s=45, max_wait_s=30))
    await volunteer(store, "val")
    rec = await recipient(store)
    ring = of((await broker.request(rec)).events, Ring)[0]
    assert isinstance(ring, Ring) and ring.expires_at == clock.now() + 30


async def test_decline_brings_the_next_wave_forward(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    await volunteer(store, "a")
    await volunteer(store, "b")
    await volunteer(store, "c")
    rec = await recipient(store)
    outcome = await broker.request(rec)
    first = rings(outcome.events)
    assert len(first) == 2
    for user in first:
        await broker.decline(user, outcome.call.id)  # type: ignore[union-attr]
    clock.advance(0.001)
    assert rings(await broker.fire_due()) == sorted({"a", "b", "c"} - set(first))


async def test_cancel_withdraws_every_ring(store: MemoryStore, broker: Broker) -> None:
    for n in range(3):
        await volunteer(store, f"v{n}")
    rec = await recipient(store)
    outcome = await broker.request(rec)
    call_id = outcome.call.id  # type: ignore[union-attr]
    cancelled = await broker.cancel("rec", call_id)
    assert sorted(e.to for e in of(cancelled.events, Withdrawn)) == rings(outcome.events)
    assert all(e.reason is WithdrawReason.CANCELLED for e in of(cancelled.events, Withdrawn))  # type: ignore[attr-defined]
    assert of(cancelled.events, Ended) == [
        Ended("rec", call_id, EndReason.CANCELLED, Role.RECIPIENT)
    ]
    assert await store.next_deadline() is None  # every timer of the call is gone


# --- accept -----------------------------------------------------------------------------------


async def test_first_accept_wins_and_everyone_else_is_withdrawn(
    store: MemoryStore, broker: Broker
) -> None:
    vols = [await volunteer(store, f"v{n}") for n in range(2)]
    rec = await recipient(store)
    call_id = (await broker.request(rec)).call.id  # type: ignore[union-attr]
    won = await broker.accept(vols[0], call_id)
    assert of(won.events, Withdrawn) == [Withdrawn("v1", call_id, WithdrawReason.ANSWERED)]
    assert of(won.events, Assigned) == [
        Assigned("rec", call_id, "V0", offerer=True),
        Assigned("v0", call_id, "Rae", offerer=False),
    ]
    with pytest.raises(BrokerError) as late:
        await broker.accept(vols[1], call_id)
    assert late.value.code is ErrorCode.CONFLICT


async def test_accept_refusals(store: MemoryStore, broker: Broker) -> None:
    val = await volunteer(store, "val")
    stranger = await volunteer(store, "stranger", languages=["fr"])
    rec = await recipient(store)
    call_id = (await broker.request(rec)).call.id  # type: ignore[union-attr]
    cases = [
        (stranger, call_id, ErrorCode.FORBIDDEN),
        (val, "c_nope", ErrorCode.NOT_FOUND),
        (rec, call_id, ErrorCode.FORBIDDEN),
    ]
    for who, cid, code in cases:
        with pytest.raises(BrokerError) as err:
            await broker.accept(who, cid)
        assert err.value.code is code
    await broker.cancel("rec", call_id)
    with pytest.raises(BrokerError) as err:
        await broker.accept(val, call_id)
    assert err.value.code is ErrorCode.CONFLICT


async def test_one_open_call_per_recipient(store: MemoryStore, broker: Broker) -> None:
    rec = await recipient(store)
    await broker.request(rec)
    with pytest.raises(BrokerError) as err:
        await broker.request(rec)
    assert err.value.code is ErrorCode.RATE_LIMITED


async def test_requests_per_hour_are_limited(store: MemoryStore, clock: VirtualClock) -> None:
    from broker.service import LimitSettings

    broker = Broker(store, clock, limits=LimitSettings(requests_per_hour=3))
    rec = await recipient(store)
    for _ in range(3):
        call = (await broker.request(rec)).call
        await broker.cancel("rec", call.id)  # type: ignore[union-attr]
    with pytest.raises(BrokerError) as err:
        await broker.request(rec)
    assert err.value.code is ErrorCode.RATE_LIMITED
    clock.advance(3601)
    assert (await broker.request(rec)).call is not None


async def test_only_recipients_ask_and_only_helpers_answer(
    store: MemoryStore, broker: Broker
) -> None:
    val = await volunteer(store, "val")
    with pytest.raises(BrokerError) as err:
        await broker.request(val)
    assert err.value.code is ErrorCode.FORBIDDEN


# --- the call ---------------------------------------------------------------------------------


async def test_lifecycle_timestamps_and_history(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    val = await volunteer(store, "val")
    rec = await recipient(store)
    requested = clock.now()
    call_id = (await broker.request(rec)).call.id  # type: ignore[union-attr]
    clock.advance(3)
    await broker.accept(val, call_id)
    clock.advance(0.5)
    await broker.media("rec", call_id, connected=True)
    clock.advance(60)
    ended = await broker.end("val", call_id)
    assert sorted(e.to for e in of(ended.events, Ended)) == ["rec", "val"]
    call = await store.get_call(call_id)
    assert call is not None
    assert (call.requested_at, call.first_ring_at, call.assigned_at) == (
        requested,
        requested,
        requested + 3,
    )
    assert call.media_at == requested + 3.5 and call.ended_at == requested + 63.5
    assert call.end_reason is EndReason.COMPLETED and call.ended_by is Role.VOLUNTEER
    assert [c.id for c in await store.calls_of("rec")] == [call_id]
    assert [c.id for c in await store.calls_of("val")] == [call_id]
    with pytest.raises(BrokerError) as err:
        await broker.end("rec", call_id)
    assert err.value.code is ErrorCode.CONFLICT


async def test_grace_period_then_peer_lost(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    val = await volunteer(store, "val")
    rec = await recipient(store)
    call_id = (await broker.request(rec)).call.id  # type: ignore[union-attr]
    await broker.accept(val, call_id)
    await store.set_connected("val", False)
    await broker.disconnected("val", "s1", grace_s=20)
    clock.advance(19)
    assert await broker.fire_due() == []
    clock.advance(2)
    events = await broker.fire_due()
    assert of(events, Ended, "rec") == [Ended("rec", call_id, EndReason.PEER_LOST, Role.VOLUNTEER)]


async def test_resume_within_grace_keeps_the_call(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    val = await volunteer(store, "val")
    rec = await recipient(store)
    call_id = (await broker.request(rec)).call.id  # type: ignore[union-attr]
    await broker.accept(val, call_id)
    await broker.disconnected("val", "s1", grace_s=20)
    clock.advance(5)
    replay = await broker.resumed("val", "s1")
    assert replay == [Assigned("val", call_id, "Rae", offerer=False, resumed=True)]
    clock.advance(30)
    assert await broker.fire_due() == []
    assert (await store.get_call(call_id)).state is CallState.ASSIGNED  # type: ignore[union-attr]


async def test_resume_re_sends_a_pending_ring_with_its_expiry(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    await volunteer(store, "val")
    rec = await recipient(store)
    ring = of((await broker.request(rec)).events, Ring)[0]
    clock.advance(5)
    replay = await broker.resumed("val", "s1")
    assert replay == [ring]


async def test_feedback_once_and_a_report_blocks(store: MemoryStore, broker: Broker) -> None:
    val = await volunteer(store, "val")
    rec = await recipient(store)
    call_id = (await broker.request(rec)).call.id  # type: ignore[union-attr]
    with pytest.raises(BrokerError):
        await broker.feedback("rec", call_id, "down")  # not ended yet
    await broker.accept(val, call_id)
    await broker.end("rec", call_id)
    await broker.feedback("rec", call_id, "down", report=ReportReason.ABUSIVE)
    with pytest.raises(BrokerError) as err:
        await broker.feedback("rec", call_id, "up")
    assert err.value.code is ErrorCode.CONFLICT
    rec = await store.get_profile("rec")  # type: ignore[assignment]
    assert "val" in rec.blocked
    assert rings((await broker.request(rec)).events) == []


async def test_signal_peer_only_for_parties(store: MemoryStore, broker: Broker) -> None:
    val = await volunteer(store, "val")
    await volunteer(store, "eve")
    rec = await recipient(store)
    call_id = (await broker.request(rec)).call.id  # type: ignore[union-attr]
    with pytest.raises(BrokerError):
        await broker.peer("rec", call_id)  # not assigned yet
    await broker.accept(val, call_id)
    assert await broker.peer("rec", call_id) == "val"
    assert await broker.peer("val", call_id) == "rec"
    for who, cid in (("eve", call_id), ("rec", "c_missing")):
        with pytest.raises(BrokerError) as err:
            await broker.peer(who, cid)
        assert err.value.code is ErrorCode.FORBIDDEN


# --- ring windows and DST ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "inside"),
    [
        (utc(2026, 3, 28, 7, 30), False),  # 07:30 GMT, the day before clocks go forward
        (utc(2026, 3, 29, 7, 30), True),  # 08:30 BST: the same UTC time is inside after the change
        (utc(2026, 3, 29, 20, 59), True),  # 21:59 BST
        (utc(2026, 3, 29, 21, 0), False),  # 22:00 BST
        (utc(2026, 10, 24, 21, 30), False),  # 22:30 BST, the night before clocks go back
        (utc(2026, 10, 25, 21, 30), True),  # 21:30 GMT
        (utc(2026, 10, 25, 7, 59), False),  # 07:59 GMT
        (utc(2026, 10, 25, 8, 0), True),  # 08:00 GMT
    ],
)
async def test_ring_window_across_dst(moment: float, inside: bool) -> None:
    store = MemoryStore()
    clock = VirtualClock(moment)
    broker = Broker(store, clock)
    await volunteer(store, "val", timezone="Europe/London")
    rec = await recipient(store)
    assert rings((await broker.request(rec)).events) == (["val"] if inside else [])


@pytest.mark.parametrize(
    ("hour", "inside"), [(21, False), (22, True), (2, True), (5, True), (6, False)]
)
async def test_window_spanning_midnight(hour: int, inside: bool) -> None:
    store = MemoryStore()
    clock = VirtualClock(utc(2026, 1, 10, hour, 0))
    broker = Broker(store, clock)
    await volunteer(store, "owl", timezone="UTC", window=("22:00", "06:00"))
    rec = await recipient(store)
    assert rings((await broker.request(rec)).events) == (["owl"] if inside else [])


def test_ring_window_contains() -> None:
    w = RingWindow.model_validate({"start": "08:00", "end": "22:00"})
    assert w.contains(time(8, 0)) and w.contains(time(21, 59)) and not w.contains(time(22, 0))
    assert RingWindow.model_validate({"start": "00:00", "end": "00:00"}).contains(time(3, 0))
    for bad in ("8:00", "24:00", "12:60", "noon"):
        with pytest.raises(ValueError):
            RingWindow.model_validate({"start": bad})


def test_call_state_machine() -> None:
    S = CallState
    assert S.SEARCHING.can_become(S.ASSIGNED) and S.SEARCHING.can_become(S.ENDED)
    assert S.QUEUED.can_become(S.SEARCHING) and S.ASSIGNED.can_become(S.ENDED)
    assert S.SEARCHING.can_become(S.QUEUED)  # escalated to a help centre's queue
    assert not S.ASSIGNED.can_become(S.SEARCHING) and not S.ASSIGNED.can_become(S.QUEUED)
    assert not any(S.ENDED.can_become(other) for other in S)


async def test_a_late_wave_rings_nobody_after_the_maximum_wait(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    rec = await recipient(store)
    call_id = (await broker.request(rec)).call.id  # type: ignore[union-attr]
    await volunteer(store, "val")
    clock.advance(3600)  # the node was away: every timer of the call is long overdue
    events = await broker.fire_due()
    assert rings(events) == []
    # Nobody answered and no help centre is configured: told when to try again.
    assert of(events, Ended, "rec") == [
        Ended("rec", call_id, EndReason.NO_ANSWER, retry_after_s=900)
    ]


@pytest.mark.parametrize("ending", ["answered", "cancelled", "no_answer"])
async def test_a_decline_crossing_the_end_of_the_call_is_harmless(
    store: MemoryStore, broker: Broker, clock: VirtualClock, ending: str
) -> None:
    await volunteer(store, "a")
    await volunteer(store, "b")
    rec = await recipient(store)
    outcome = await broker.request(rec)
    call_id = outcome.call.id  # type: ignore[union-attr]
    assert rings(outcome.events) == ["a", "b"]
    if ending == "answered":
        await broker.accept(await store.get_profile("b"), call_id)  # type: ignore[arg-type]
    elif ending == "cancelled":
        await broker.cancel("rec", call_id)
    else:
        clock.advance(broker.settings.max_wait_s + 1)
        await broker.fire_due()
    late = await broker.decline("a", call_id)
    assert late.events == []
    with pytest.raises(BrokerError) as refused:
        await broker.decline("never-rung", call_id)
    assert refused.value.code is ErrorCode.NOT_FOUND
