"""Named dispatch policies, the policy's waking-hours hook, the memory store's candidate index
and sample, and choosing a policy by configuration."""

from __future__ import annotations

import random
from datetime import time

import pytest

from broker.clock import VirtualClock
from broker.dispatch import Dispatcher, DispatchSettings
from broker.events import Ring
from broker.model import Call, Candidate, EndReason, Profile, RingWindow, Role
from broker.policies import POLICIES, Bme2014, Bme2014Batch, RingAll, build_policy
from broker.service import Broker
from broker.store.memory import MemoryStore
from signaling.config import ConfigError, load_settings

# 2026-03-02 is a Monday; Copenhagen is UTC+1 in March.
MONDAY = 1_772_409_600.0
CPH = "Europe/Copenhagen"


def _call() -> Call:
    return Call(id="c1", recipient_id="r1", language="da", languages=["da"], requested_at=0.0)


def test_bme2014_rings_the_most_recent_helpers_first_then_at_random() -> None:
    helpers = [Candidate(user_id=f"h{i}", last_call_at=100.0 + i) for i in range(3)]
    others = [Candidate(user_id=f"o{i}") for i in range(50)]
    rng = random.Random(1)
    picked = Bme2014().pick([*others, *helpers], _call(), 5, rng)
    assert [c.user_id for c in picked[:3]] == ["h2", "h1", "h0"]
    assert {c.user_id for c in picked[3:]} <= {c.user_id for c in others}
    assert len({c.user_id for c in picked}) == 5


def test_wave_shapes_and_timing() -> None:
    base = DispatchSettings()
    bme, timing = build_policy("bme2014", base)
    assert [bme.wave_size(w) for w in range(3)] == [1, 1, 1]
    assert bme.wave_interval(0) == 5.0 and timing.max_wait_s == 120.0
    assert timing.ring_timeout_s == 120.0  # a ring lasts until the search stops
    batch = Bme2014Batch()
    assert [batch.wave_size(w) for w in range(3)] == [10, 20, 20] and batch.wave_interval(1) == 20
    assert RingAll().wave_size(0) >= 1_000_000
    default, same = build_policy("default", base)
    assert default.name == "default" and same is base
    for name in POLICIES:
        policy, _ = build_policy(name, base)
        assert policy.name == name


def test_unknown_policy_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown dispatch policy 'fifo'.*bme2014"):
        build_policy("fifo", DispatchSettings())


def test_server_runs_a_named_policy_from_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    from signaling.app import build_context

    monkeypatch.setenv("VABROKER_POLICY", "bme2014")
    ctx = build_context(load_settings(jwt_secret="x" * 32))
    assert ctx.broker.dispatcher.policy.name == "bme2014"
    assert ctx.broker.settings.max_wait_s == 120.0
    monkeypatch.setenv("VABROKER_POLICY", "loudest")
    with pytest.raises(ConfigError, match=r"policy \(VABROKER_POLICY\).*'loudest'.*ringall"):
        load_settings(jwt_secret="x" * 32)


async def _volunteer(store: MemoryStore, uid: str, window: RingWindow, zone: str = CPH) -> Profile:
    profile = Profile(
        user_id=uid, role=Role.VOLUNTEER, languages=["da"], timezone=zone, ring_window=window
    )
    await store.put_profile(profile)
    await store.set_on_duty(uid, True)
    await store.set_connected(uid, True)
    return profile


async def test_bme2014_keeps_its_own_waking_hours_within_the_volunteers_window() -> None:
    store = MemoryStore()
    always = RingWindow(start=time(0, 0), end=time(0, 0))
    await _volunteer(store, "night-owl", always)
    await store.put_profile(Profile(user_id="r1", role=Role.RECIPIENT, languages=["da"]))
    clock = VirtualClock(MONDAY + 5 * 3600)  # 06:00 in Copenhagen: before 07:00
    policy, timing = build_policy("bme2014", DispatchSettings())
    broker = Broker(store, clock, timing, policy=policy, rng=random.Random(1))
    outcome = await broker.request(Profile(user_id="r1", role=Role.RECIPIENT, languages=["da"]))
    assert not [e for e in outcome.events if isinstance(e, Ring)]
    # The default policy has no hours of its own: the volunteer's "any time" window decides.
    store2 = MemoryStore()
    await _volunteer(store2, "night-owl", always)
    broker2 = Broker(store2, VirtualClock(MONDAY + 5 * 3600), rng=random.Random(1))
    outcome = await broker2.request(Profile(user_id="r1", role=Role.RECIPIENT, languages=["da"]))
    assert [e.to for e in outcome.events if isinstance(e, Ring)] == ["night-owl"]


async def test_candidates_follow_rings_calls_and_windows() -> None:
    store = MemoryStore()
    day = RingWindow(start=time(8, 0), end=time(22, 0))
    await _volunteer(store, "v1", day)
    await _volunteer(store, "v2", day)
    noon = MONDAY + 11 * 3600
    night = MONDAY + 23 * 3600
    assert {c.user_id for c in await store.candidates("da", noon)} == {"v1", "v2"}
    assert await store.candidates("da", night) == []
    await store.create_call(_call().model_copy(update={"requested_at": noon}))
    assert await store.reserve_ring("c1", "v1", "2026-03-02", 10, noon)
    [v1] = [c for c in await store.candidates("da", noon) if c.user_id == "v1"]
    assert v1.busy and v1.rings_today == 1 and v1.last_rung_at == noon
    assert await store.assign("c1", "v1", "V", Role.VOLUNTEER, noon + 5) is not None
    await store.finish("c1", EndReason.COMPLETED, None, noon + 60)
    [v1] = [c for c in await store.candidates("da", noon + 61) if c.user_id == "v1"]
    assert not v1.busy and v1.calls_30d == 1 and v1.last_call_at == noon + 5
    # The next local day starts a fresh ring count; 30 days on, the call no longer counts.
    [v1] = [c for c in await store.candidates("da", noon + 86400) if c.user_id == "v1"]
    assert v1.rings_today == 0 and v1.calls_30d == 1
    [v1] = [c for c in await store.candidates("da", noon + 31 * 86400) if c.user_id == "v1"]
    assert v1.calls_30d == 0
    await store.set_on_duty("v2", False)
    assert [c.user_id for c in await store.candidates("da", noon)] == ["v1"]


async def test_candidate_sample_draws_at_random_and_leads_with_recent_helpers() -> None:
    store = MemoryStore()
    day = RingWindow(start=time(8, 0), end=time(22, 0))
    for i in range(300):
        await _volunteer(store, f"v{i}", day)
    noon = MONDAY + 11 * 3600
    await store.create_call(_call().model_copy(update={"requested_at": noon}))
    assert await store.reserve_ring("c1", "v123", "2026-03-02", 10, noon)
    assert await store.assign("c1", "v123", "V", Role.VOLUNTEER, noon) is not None
    rng = random.Random(3)
    sample = await store.candidates_sample("da", noon + 1, 20, 1, rng)
    ids = [c.user_id for c in sample.candidates]
    assert ids[0] == "v123" and sample.recent == 1 and not sample.complete
    assert len(ids) == len(set(ids)) and 20 <= len(ids) <= 21
    without = await store.candidates_sample("da", noon + 1, 20, 0, rng)
    assert without.recent == 0 and len(without.candidates) == 20
    everyone = await store.candidates_sample("da", noon + 1, 300, 0, rng)
    assert everyone.complete and len(everyone.candidates) == 300


async def test_dispatcher_draws_again_when_the_sample_runs_short() -> None:
    """Nearly everyone busy: the draw finds too few, so the wave draws more, up to everyone."""
    store = MemoryStore()
    day = RingWindow(start=time(8, 0), end=time(22, 0))
    for i in range(200):
        await _volunteer(store, f"v{i}", day)
    noon = MONDAY + 11 * 3600
    await store.create_call(Call(id="busy", recipient_id="r0", language="da", requested_at=noon))
    for i in range(199):
        assert await store.reserve_ring("busy", f"v{i}", "2026-03-02", 10, noon)
    settings = DispatchSettings(candidate_sample=20, candidate_factor=2, first_wave=1)
    dispatcher = Dispatcher(store, VirtualClock(noon), settings, rng=random.Random(5))
    call = Call(id="c2", recipient_id="r1", language="da", languages=["da"], requested_at=noon)
    await store.create_call(call)
    _, events = await dispatcher.start(call)
    assert [e.to for e in events if isinstance(e, Ring)] == ["v199"]
