"""The state store contract, run unchanged against every store: the memory store, one real
``redis-server`` and a local 3-master Redis Cluster (both started by these tests), and the
durable SQLite store, whose file must give back everything each test left in it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from broker.model import (
    Call,
    CallState,
    EndReason,
    EscalationOutcome,
    Feedback,
    Invite,
    Profile,
    RingWindow,
    Role,
)
from broker.moderation import (
    AuditAction,
    AuditEntry,
    AuditQuery,
    Case,
    CaseAction,
    CaseQuery,
    CaseState,
    Party,
    ReportReason,
    Resolution,
    Restriction,
    RestrictionKind,
)
from broker.notify.devices import Device, DeviceRegistration
from broker.outbox import WebhookDelivery
from broker.stats import Counts
from broker.store import MemoryStore, ResumeTicket, Store, StoreUnavailable, open_store, shown_url
from broker.store.base import PushedRing
from broker.store.redis import RedisStore, parse_redis_url
from broker.store.sqlite import SqliteStore
from tests.redis_procs import RedisClusterProcs, RedisServer

NOW = 1_781_524_800.0  # 2026-06-15 12:00 UTC
DAY = "2026-06-15"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer.start() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcs]:
    with RedisClusterProcs.start() as cluster:
        yield cluster


@pytest.fixture(params=["memory", "sqlite", "redis", "cluster"])
async def st(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        store: Store = MemoryStore()
    elif request.param == "sqlite":
        store = open_store(f"sqlite://{tmp_path}/broker.db")
    elif request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        store = open_store(server.url)
    else:
        cluster: RedisClusterProcs = request.getfixturevalue("redis_cluster")
        cluster.flush()
        store = open_store(cluster.url)
    await store.ping()
    try:
        yield store
    finally:
        await store.close()
    if isinstance(store, SqliteStore):
        # Whatever the test left in the store comes back from the file, as it was.
        reopened = SqliteStore(store.path, recover=False, now=lambda: NOW)
        try:
            assert reopened.durable_state() == store.durable_state()
        finally:
            await reopened.close()


def volunteer(uid: str, **fields: object) -> Profile:
    values: dict[str, object] = {"user_id": uid, "role": Role.VOLUNTEER, "display_name": uid}
    values.update(fields)
    return Profile.model_validate(values)


def new_call(cid: str, recipient: str = "r1", **fields: object) -> Call:
    values: dict[str, object] = {
        "id": cid,
        "recipient_id": recipient,
        "language": "en",
        "languages": ["en"],
        "requested_at": NOW,
    }
    values.update(fields)
    return Call.model_validate(values)


async def online(st: Store, *profiles: Profile) -> None:
    for p in profiles:
        await st.put_profile(p)
        await st.set_on_duty(p.user_id, True)
        await st.set_connected(p.user_id, True)


async def ringing_call(st: Store, cid: str, *uids: str, recipient: str = "r1") -> None:
    assert await st.create_call(new_call(cid, recipient))
    for uid in uids:
        assert await st.reserve_ring(cid, uid, DAY, 10, NOW)


# --- profiles and availability ----------------------------------------------------------------


async def test_profiles_round_trip_and_are_copies(st: Store) -> None:
    assert await st.get_profile("v1") is None
    p = volunteer(
        "v1",
        languages=["en", "pt-BR"],
        timezone="Europe/Lisbon",
        ring_window=RingWindow.model_validate({"start": "09:00", "end": "17:30"}),
        daily_ring_cap=3,
        blocked=frozenset({"r9"}),
        note=None,
    )
    await st.put_profile(p)
    got = await st.get_profile("v1")
    assert got == p
    await st.block("v1", "r8")
    assert (await st.get_profile("v1")) == p.model_copy(update={"blocked": frozenset({"r8", "r9"})})
    await st.block("nobody", "r8")  # blocking by an unknown user changes nothing
    assert await st.get_profile("nobody") is None


async def test_duty_and_connections_are_counted(st: Store) -> None:
    assert not await st.is_on_duty("v1")
    await st.set_on_duty("v1", True)
    assert await st.is_on_duty("v1")
    await st.set_on_duty("v1", False)
    assert not await st.is_on_duty("v1")
    await st.set_connected("v1", True)
    await st.set_connected("v1", True)
    await st.set_connected("v1", False)
    assert await st.is_connected("v1")
    await st.set_connected("v1", False)
    assert not await st.is_connected("v1")
    await st.set_connected("v1", False)  # one too many never goes negative
    await st.set_connected("v1", True)
    assert await st.is_connected("v1")
    assert not await st.has_devices("v1")


async def test_candidates_filter_language_duty_reach_and_window(st: Store) -> None:
    await online(
        st,
        volunteer("en1", languages=["en-GB"]),
        volunteer("enfr", languages=["fr", "EN"]),
        volunteer("fr1", languages=["fr"]),
        volunteer("night", languages=["en"], timezone="Asia/Tokyo"),  # 21:00 there: inside
        volunteer(
            "asleep",
            languages=["en"],
            timezone="America/Los_Angeles",  # 05:00 there
        ),
        volunteer(
            "always",
            languages=["en"],
            timezone="Pacific/Auckland",
            ring_window=RingWindow.model_validate({"start": "00:00", "end": "00:00"}),
        ),
    )
    await st.put_profile(volunteer("offline", languages=["en"]))
    await st.set_on_duty("offline", True)  # on duty but not connected and no device
    await st.put_profile(volunteer("offduty", languages=["en"]))
    await st.set_connected("offduty", True)
    await st.put_profile(Profile(user_id="rec", role=Role.RECIPIENT, languages=["en"]))
    await st.set_on_duty("rec", True)
    await st.set_connected("rec", True)
    got = {c.user_id: c for c in await st.candidates("en-US", NOW)}
    assert set(got) == {"en1", "enfr", "night", "always"}
    assert got["night"].timezone == "Asia/Tokyo" and got["night"].ring_day == "2026-06-15"
    assert got["always"].ring_day == "2026-06-16"  # already tomorrow in Auckland
    assert {c.user_id for c in await st.candidates("fr", NOW)} == {"enfr", "fr1"}
    assert await st.candidates("de", NOW) == []


async def test_candidates_follow_profile_and_duty_changes(st: Store) -> None:
    await online(st, volunteer("v1", languages=["en"]))
    assert [c.user_id for c in await st.candidates("en", NOW)] == ["v1"]
    await st.put_profile(volunteer("v1", languages=["fr"], timezone="Europe/Paris"))
    assert await st.candidates("en", NOW) == []
    assert [c.timezone for c in await st.candidates("fr", NOW)] == ["Europe/Paris"]
    await st.set_on_duty("v1", False)
    assert await st.candidates("fr", NOW) == []
    await st.set_on_duty("v1", True)
    assert [c.user_id for c in await st.candidates("fr", NOW)] == ["v1"]
    # A volunteer who becomes a recipient is no longer rung.
    await st.put_profile(Profile(user_id="v1", role=Role.RECIPIENT, languages=["fr"]))
    assert await st.candidates("fr", NOW) == []


async def test_assistants_are_candidates_marked_as_such(st: Store) -> None:
    await online(
        st,
        volunteer("v1", languages=["en"]),
        volunteer("reader", languages=["en"]).model_copy(update={"role": Role.ASSISTANT}),
    )
    got = {c.user_id: c.assistant for c in await st.candidates("en", NOW)}
    assert got == {"v1": False, "reader": True}
    # A call that asks for one keeps the ask through the store.
    await st.create_call(new_call("c-asks", helper="assistant"))
    stored = await st.get_call("c-asks")
    assert stored is not None and stored.helper == "assistant"


async def test_candidate_facts(st: Store) -> None:
    await online(st, volunteer("v1", daily_ring_cap=4, blocked=frozenset({"r7"})), volunteer("v2"))
    await st.set_on_duty("v1", True)
    await ringing_call(st, "c_1", "v1")
    facts = {c.user_id: c for c in await st.candidates("en", NOW + 5)}
    v1 = facts["v1"]
    assert (v1.busy, v1.rings_today, v1.ring_day, v1.daily_ring_cap) == (True, 1, DAY, 4)
    assert v1.last_rung_at == NOW and v1.blocked == frozenset({"r7"}) and v1.calls_30d == 0
    assert not facts["v2"].busy and facts["v2"].last_rung_at == 0.0
    assert await st.assign("c_1", "v1", "V", Role.VOLUNTEER, NOW + 10) is not None
    assert {c.user_id: c.busy for c in await st.candidates("en", NOW + 11)} == {
        "v1": True,
        "v2": False,
    }
    await st.finish("c_1", EndReason.COMPLETED, Role.RECIPIENT, NOW + 60)
    facts = {c.user_id: c for c in await st.candidates("en", NOW + 61)}
    assert not facts["v1"].busy and facts["v1"].calls_30d == 1
    assert facts["v1"].last_call_at == NOW + 10 and facts["v2"].last_call_at == 0.0
    # A draw reports the very same facts as the full read.
    drawn = await st.candidates_sample("en", NOW + 61, 1, 2, random.Random(1))
    assert {c.user_id: c for c in drawn.candidates}["v1"] == facts["v1"]
    # Thirty days on, the call no longer counts; the next local day, the ring budget is fresh.
    later = {c.user_id: c for c in await st.candidates("en", NOW + 10 + 30 * 86400 + 1)}
    assert later["v1"].calls_30d == 0 and later["v1"].rings_today == 0
    assert later["v1"].last_call_at == NOW + 10  # when they last answered, however long ago


async def test_duty_windows_count_on_duty_volunteers_by_zone_and_window(st: Store) -> None:
    evening = RingWindow.model_validate({"start": "18:00", "end": "23:00"})
    await online(
        st,
        volunteer("a", languages=["en-GB"]),
        volunteer("b", languages=["en", "fr"]),
        volunteer("c", languages=["en"], timezone="Asia/Tokyo", ring_window=evening),
        volunteer("d", languages=["fr"], timezone="Asia/Tokyo", ring_window=evening),
    )
    # On duty without a connection still counts (reachability is not checked); off duty not.
    await st.put_profile(volunteer("e", languages=["en"]))
    await st.set_on_duty("e", True)
    await st.put_profile(volunteer("off", languages=["en"]))
    await st.put_profile(Profile(user_id="rec", role=Role.RECIPIENT, languages=["en"]))
    await st.set_on_duty("rec", True)
    default = RingWindow()
    assert sorted(await st.duty_windows("en-US"), key=str) == sorted(
        [("UTC", default, 3), ("Asia/Tokyo", evening, 1)], key=str
    )
    assert sorted(await st.duty_windows("fr"), key=str) == sorted(
        [("UTC", default, 1), ("Asia/Tokyo", evening, 1)], key=str
    )
    await st.set_on_duty("c", False)
    await st.put_profile(volunteer("b", languages=["fr"]))
    assert await st.duty_windows("en") == [("UTC", default, 2)]
    assert await st.duty_windows("de") == []


async def test_last_rung_is_when_the_volunteer_was_last_rung(st: Store) -> None:
    await online(st, volunteer("v1"), volunteer("v2"))
    assert await st.last_rung("v1") == 0.0
    await ringing_call(st, "c_1", "v1")
    assert await st.last_rung("v1") == NOW and await st.last_rung("v2") == 0.0
    assert await st.last_rung("nobody") == 0.0


async def test_a_draw_that_found_nobody_finds_a_volunteer_who_came_later(st: Store) -> None:
    """A language with nobody in window, then a first volunteer (a new index group), then one
    whose window is another group: each draw sees who is there now, not who was there before."""
    rng = random.Random(3)
    assert (await st.candidates_sample("pt", NOW, 10, 0, rng)).candidates == []
    await online(st, volunteer("late", languages=["pt"]))
    drawn = await st.candidates_sample("pt", NOW, 10, 0, rng)
    assert [c.user_id for c in drawn.candidates] == ["late"]
    await st.put_profile(volunteer("asleep", languages=["pt"], timezone="America/Los_Angeles"))
    await st.set_on_duty("asleep", True)
    await st.set_connected("asleep", True)
    await online(st, volunteer("lagos", languages=["pt"], timezone="Africa/Lagos"))
    drawn = await st.candidates_sample("pt", NOW, 10, 0, rng)
    assert sorted(c.user_id for c in drawn.candidates) == ["lagos", "late"]


async def test_candidates_sample_draws_distinct_volunteers_at_random(st: Store) -> None:
    zones = ["UTC", "Europe/London", "Europe/Paris", "Europe/Berlin", "Africa/Lagos"]
    await online(st, *(volunteer(f"v{i:02d}", timezone=zones[i % 5]) for i in range(60)))
    await st.put_profile(volunteer("asleep", timezone="America/Los_Angeles"))  # 05:00 there
    await st.set_on_duty("asleep", True)
    await st.set_connected("asleep", True)
    everyone = {c.user_id: c for c in await st.candidates("en", NOW)}
    assert len(everyone) == 60
    rng = random.Random(7)
    seen: set[str] = set()
    draws = []
    for _ in range(40):
        drawn = await st.candidates_sample("en", NOW, 10, 0, rng)
        ids = [c.user_id for c in drawn.candidates]
        assert len(ids) == 10 == len(set(ids)) and not drawn.complete and drawn.recent == 0
        assert all(c == everyone[c.user_id] for c in drawn.candidates)
        seen.update(ids)
        draws.append(ids)
    assert seen == set(everyone)  # 400 draws of 60: each one is drawn at some point
    assert len({tuple(sorted(d)) for d in draws}) > 30  # and the draws differ
    whole = await st.candidates_sample("en", NOW, 60, 0, rng)
    assert whole.complete and {c.user_id for c in whole.candidates} == set(everyone)
    assert (await st.candidates_sample("de", NOW, 10, 5, rng)).candidates == []
    # Unreachable volunteers are drawn but not returned: a draw gives up to n.
    for i in range(0, 60, 2):
        await st.set_connected(f"v{i:02d}", False)
    drawn = await st.candidates_sample("en", NOW, 20, 0, rng)
    assert {int(c.user_id[1:]) % 2 for c in drawn.candidates} == {1}
    assert 0 < len(drawn.candidates) < 20


async def test_candidates_of_hundreds_read_whole(st: Store) -> None:
    """More volunteers than one step of a store reads at a time (Redis: 200)."""
    await online(st, *(volunteer(f"v{i:03d}") for i in range(450)))
    everyone = await st.candidates("en", NOW)
    assert sorted(c.user_id for c in everyone) == [f"v{i:03d}" for i in range(450)]
    whole = await st.candidates_sample("en", NOW, 450, 0, random.Random(1))
    assert whole.complete and sorted(whole.candidates, key=lambda c: c.user_id) == sorted(
        everyone, key=lambda c: c.user_id
    )
    drawn = await st.candidates_sample("en", NOW, 300, 0, random.Random(1))
    assert not drawn.complete and len({c.user_id for c in drawn.candidates}) == 300


async def test_candidates_sample_leads_with_the_most_recent_helpers(st: Store) -> None:
    await online(st, *(volunteer(f"v{i:02d}") for i in range(30)))
    await online(st, volunteer("tokyo", timezone="Asia/Tokyo"))  # 21:00: inside
    await online(st, volunteer("la", timezone="America/Los_Angeles"))  # 05:00: outside
    await online(st, volunteer("fr", languages=["fr"]))
    answered = ["v03", "tokyo", "la", "v07", "fr", "v11", "v20"]  # oldest answer first
    for i, uid in enumerate(answered):
        cid = f"c_{i}"
        assert await st.create_call(new_call(cid, f"r{i}"))
        assert await st.reserve_ring(cid, uid, DAY, 10, NOW - 3600 + i)
        assert await st.assign(cid, uid, uid, Role.VOLUNTEER, NOW - 3600 + 10 * i) is not None
        await st.finish(cid, EndReason.COMPLETED, Role.RECIPIENT, NOW - 3000)
    await st.set_on_duty("v11", False)  # off duty: not a candidate, helper or not
    rng = random.Random(3)
    drawn = await st.candidates_sample("en", NOW, 5, 3, rng)
    lead = drawn.candidates[: drawn.recent]
    assert [c.user_id for c in lead] == ["v20", "v07", "tokyo"] and drawn.more_recent
    assert [c.last_call_at for c in lead] == [NOW - 3600 + 60, NOW - 3600 + 30, NOW - 3600 + 10]
    assert lead[0].calls_30d == 1 and lead[2].timezone == "Asia/Tokyo"
    rest = [c.user_id for c in drawn.candidates[drawn.recent :]]
    assert len(rest) == len(set(rest)) and not set(rest) & {"v20", "v07", "tokyo", "v11", "la"}
    drawn = await st.candidates_sample("en", NOW, 5, 10, rng)
    assert [c.user_id for c in drawn.candidates[: drawn.recent]] == ["v20", "v07", "tokyo", "v03"]
    assert not drawn.more_recent
    assert (await st.candidates_sample("en", NOW, 5, 0, rng)).recent == 0
    # Thirty days after their answer a helper is no longer recent.
    late = NOW - 3600 + 30 * 86400 + 35
    drawn = await st.candidates_sample("en", late, 5, 10, rng)
    assert [c.user_id for c in drawn.candidates[: drawn.recent]] == ["v20"]


# --- calls ------------------------------------------------------------------------------------


async def test_one_open_call_per_recipient(st: Store) -> None:
    call = new_call("c_1", topic="a label", note="guide dog")
    assert await st.create_call(call)
    assert await st.get_call("c_1") == call
    assert not await st.create_call(new_call("c_2"))  # r1 already has one open
    assert await st.get_call("c_2") is None
    assert not await st.create_call(new_call("c_1", recipient="r2"))  # the id is taken
    assert await st.current_call("r1") == "c_1"
    assert await st.current_call("r2") is None
    await st.finish("c_1", EndReason.CANCELLED, Role.RECIPIENT, NOW + 1)
    assert await st.current_call("r1") is None
    assert await st.create_call(new_call("c_3"))


async def test_one_open_call_per_recipient_under_a_race(st: Store) -> None:
    won = await asyncio.gather(*(st.create_call(new_call(f"c_{i}")) for i in range(20)))
    assert sum(won) == 1
    cid = await st.current_call("r1")
    assert cid == f"c_{won.index(True)}"
    others = [await st.get_call(f"c_{i}") for i in range(20) if not won[i]]
    assert others == [None] * 19


async def test_update_call_sets_fields_but_never_the_outcome(st: Store) -> None:
    await st.create_call(new_call("c_1"))
    await st.update_call("c_1", wave=2, notified=7, first_ring_at=NOW + 0.125, language_index=1)
    call = await st.get_call("c_1")
    assert call is not None
    assert (call.wave, call.notified, call.first_ring_at, call.language_index) == (
        2,
        7,
        NOW + 0.125,
        1,
    )
    with pytest.raises(ValueError):
        await st.update_call("c_1", state=CallState.ENDED)
    with pytest.raises(ValueError):
        await st.update_call("c_1", helper_id="v9")
    await st.update_call("c_404", wave=3)  # no such call: nothing happens
    assert await st.get_call("c_404") is None
    got = await st.get_call("c_1")
    assert got is not None
    got.wave = 99  # a changed copy does not change the store
    assert (await st.get_call("c_1")).wave == 2  # type: ignore[union-attr]


async def test_ring_budget_busy_and_rung_before(st: Store) -> None:
    await online(st, volunteer("v1"), volunteer("v2", daily_ring_cap=1))
    await st.create_call(new_call("c_1"))
    await st.create_call(new_call("c_2", recipient="r2"))
    assert await st.reserve_ring("c_1", "v1", DAY, 10, NOW)
    assert await st.ring_of("v1") == "c_1"
    assert not await st.reserve_ring("c_2", "v1", DAY, 10, NOW)  # already ringing
    assert not await st.reserve_ring("c_1", "v1", DAY, 10, NOW)
    assert await st.release_ring("c_1", "v1")
    assert not await st.release_ring("c_1", "v1")
    assert await st.ring_of("v1") is None
    assert not await st.reserve_ring("c_1", "v1", DAY, 10, NOW)  # rung before for this call
    assert await st.reserve_ring("c_2", "v1", DAY, 10, NOW)
    assert await st.rung("c_1") == {"v1"} and await st.ringing("c_1") == []
    # The cap counts rings per local day.
    assert await st.reserve_ring("c_1", "v2", DAY, 1, NOW)
    assert await st.release_ring("c_1", "v2")
    assert not await st.reserve_ring("c_2", "v2", DAY, 1, NOW)
    assert await st.reserve_ring("c_2", "v2", "2026-06-16", 1, NOW + 86400)
    assert await st.ringing("c_2") == ["v1", "v2"]
    # A volunteer in a call is not rung; neither is anyone for an ended call.
    await st.create_call(new_call("c_3", recipient="r3"))
    assert await st.assign("c_2", "v1", "V", Role.VOLUNTEER, NOW) is not None
    assert not await st.reserve_ring("c_3", "v1", DAY, 10, NOW)
    await st.finish("c_3", EndReason.CANCELLED, Role.RECIPIENT, NOW)
    await online(st, volunteer("v3"))
    assert not await st.reserve_ring("c_3", "v3", DAY, 10, NOW)
    assert not await st.reserve_ring("c_404", "v3", DAY, 10, NOW)
    # Failed reservations took nothing from the budget.
    assert [c.rings_today for c in await st.candidates("en", NOW) if c.user_id == "v3"] == [0]


async def test_a_volunteer_is_rung_for_one_call_at_a_time_under_a_race(st: Store) -> None:
    await online(st, volunteer("v1"))
    for i in range(10):
        await st.create_call(new_call(f"c_{i}", recipient=f"r{i}"))
    got = await asyncio.gather(*(st.reserve_ring(f"c_{i}", "v1", DAY, 10, NOW) for i in range(10)))
    assert sum(got) == 1
    assert await st.ring_of("v1") == f"c_{got.index(True)}"


async def test_first_accept_wins(st: Store) -> None:
    vols = [volunteer(f"v{i}") for i in range(5)]
    await online(st, *vols)
    await ringing_call(st, "c_1", *(v.user_id for v in vols))
    won = await st.assign("c_1", "v2", "Val", Role.VOLUNTEER, NOW + 3)
    assert won is not None
    assert won.withdrawn == ["v0", "v1", "v3", "v4"]
    assert (won.call.state, won.call.helper_id, won.call.helper_name) == (
        CallState.ASSIGNED,
        "v2",
        "Val",
    )
    assert won.call.helper_role is Role.VOLUNTEER and won.call.assigned_at == NOW + 3
    assert await st.get_call("c_1") == won.call
    assert await st.assign("c_1", "v3", "X", Role.VOLUNTEER, NOW + 4) is None
    assert await st.ringing("c_1") == []
    assert [await st.ring_of(v.user_id) for v in vols] == [None] * 5
    assert await st.current_call("v2") == "c_1" and await st.current_call("r1") == "c_1"
    assert await st.current_call("v3") is None
    assert await st.rung("c_1") == {v.user_id for v in vols}


async def test_a_call_s_peer_is_told_to_its_two_parties_only_while_it_is_assigned(
    st: Store,
) -> None:
    # What every relayed signal asks: who else is in the call, if the sender is in it.
    await online(st, volunteer("v1"), volunteer("v2"))
    await ringing_call(st, "c_1", "v1", "v2")
    assert [await st.call_peer("c_1", u) for u in ("r1", "v1", "v2")] == [None] * 3  # ringing
    assert await st.assign("c_1", "v1", "Val", Role.VOLUNTEER, NOW + 1) is not None
    assert await st.call_peer("c_1", "r1") == "v1"
    assert await st.call_peer("c_1", "v1") == "r1"
    assert await st.call_peer("c_1", "v2") is None  # rung, never a party
    assert await st.call_peer("c_1", "") is None
    assert await st.call_peer("c_404", "r1") is None
    await st.finish("c_1", EndReason.COMPLETED, Role.RECIPIENT, NOW + 2)
    assert [await st.call_peer("c_1", u) for u in ("r1", "v1")] == [None, None]


async def test_accept_needs_a_ring(st: Store) -> None:
    await online(st, volunteer("v1"), volunteer("v2"))
    await ringing_call(st, "c_1", "v1")
    assert await st.assign("c_1", "v2", "X", Role.VOLUNTEER, NOW) is None  # never rung
    assert await st.assign("c_404", "v1", "X", Role.VOLUNTEER, NOW) is None
    assert await st.release_ring("c_1", "v1")
    assert await st.assign("c_1", "v1", "X", Role.VOLUNTEER, NOW) is None  # lapsed
    assert await st.current_call("v1") is None and await st.current_call("v2") is None
    call = await st.get_call("c_1")
    assert call is not None and call.state is CallState.SEARCHING


async def test_exactly_one_of_many_concurrent_accepts_wins(st: Store) -> None:
    vols = [volunteer(f"v{i:02d}") for i in range(40)]
    await online(st, *vols)
    await ringing_call(st, "c_1", *(v.user_id for v in vols))
    results = await asyncio.gather(
        *(st.assign("c_1", v.user_id, v.user_id, Role.VOLUNTEER, NOW) for v in vols)
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    winner = winners[0].call.helper_id
    assert sorted([*winners[0].withdrawn, winner]) == [v.user_id for v in vols]  # type: ignore[list-item]
    for v in vols:
        assert await st.current_call(v.user_id) == ("c_1" if v.user_id == winner else None)
        assert await st.ring_of(v.user_id) is None


async def test_an_accept_racing_a_cancel(st: Store) -> None:
    for i in range(10):
        await online(st, volunteer(f"v{i}"))
        cid, rec = f"c_{i}", f"r{i}"
        await ringing_call(st, cid, f"v{i}", recipient=rec)
        won, ended = await asyncio.gather(
            st.assign(cid, f"v{i}", "V", Role.VOLUNTEER, NOW),
            st.finish(cid, EndReason.CANCELLED, Role.RECIPIENT, NOW),
        )
        assert ended is not None  # an open call always ends
        call = await st.get_call(cid)
        assert call is not None and call.state is CallState.ENDED
        assert await st.current_call(f"v{i}") is None and await st.current_call(rec) is None
        assert await st.ring_of(f"v{i}") is None
        if won is not None:
            assert ended.call.helper_id == f"v{i}" and ended.withdrawn == []
        else:
            assert ended.call.helper_id is None and ended.withdrawn == [f"v{i}"]


async def test_a_ring_lapsing_while_it_is_accepted(st: Store) -> None:
    for i in range(10):
        await online(st, volunteer(f"v{i}"))
        cid = f"c_{i}"
        await ringing_call(st, cid, f"v{i}", recipient=f"r{i}")
        won, released = await asyncio.gather(
            st.assign(cid, f"v{i}", "V", Role.VOLUNTEER, NOW), st.release_ring(cid, f"v{i}")
        )
        assert (won is None) == released  # one or the other, never both


async def test_finish_once_releases_everyone_and_files_history(st: Store) -> None:
    await online(st, volunteer("v1"), volunteer("v2"), volunteer("v3"))
    await ringing_call(st, "c_1", "v1", "v2", "v3")
    assert await st.release_ring("c_1", "v3")
    await st.assign("c_1", "v1", "V", Role.VOLUNTEER, NOW + 1)
    done = await st.finish("c_1", EndReason.COMPLETED, Role.VOLUNTEER, NOW + 100)
    assert done is not None and done.withdrawn == []
    call = done.call
    assert (call.state, call.end_reason, call.ended_by, call.ended_at) == (
        CallState.ENDED,
        EndReason.COMPLETED,
        Role.VOLUNTEER,
        NOW + 100,
    )
    assert await st.finish("c_1", EndReason.FAILED, None, NOW + 101) is None
    assert await st.finish("c_404", EndReason.FAILED, None, NOW + 101) is None
    assert await st.current_call("r1") is None and await st.current_call("v1") is None
    assert [c.id for c in await st.calls_of("r1")] == ["c_1"]
    assert [c.id for c in await st.calls_of("v1")] == ["c_1"]
    assert await st.calls_of("v2") == []
    # Unanswered: those still ringing are withdrawn.
    await ringing_call(st, "c_2", "v2", "v3", recipient="r2")
    done = await st.finish("c_2", EndReason.NO_ANSWER, None, NOW + 200)
    assert done is not None and done.withdrawn == ["v2", "v3"] and done.call.ended_by is None
    assert await st.ring_of("v2") is None and await st.ringing("c_2") == []
    # Who was rung is kept a while after the end, so that a decline crossing it is acknowledged.
    assert await st.rung("c_2") == {"v2", "v3"}


async def test_history_newest_first_and_ended_calls_by_time(st: Store) -> None:
    for i in range(5):
        await st.create_call(new_call(f"c_{i}", requested_at=NOW + i))
        await st.finish(f"c_{i}", EndReason.CANCELLED, Role.RECIPIENT, NOW + 10 * i)
    assert [c.id for c in await st.calls_of("r1")] == ["c_4", "c_3", "c_2", "c_1", "c_0"]
    assert [c.id for c in await st.calls_of("r1", limit=2)] == ["c_4", "c_3"]
    got = await st.ended_calls(NOW + 10, NOW + 40)
    assert sorted(c.id for c in got) == ["c_1", "c_2", "c_3"]
    assert await st.ended_calls(NOW + 41, NOW + 1000) == []


async def test_media_is_marked_once(st: Store) -> None:
    await st.create_call(new_call("c_1"))
    assert await st.mark_media("c_1", NOW + 2.5)
    assert not await st.mark_media("c_1", NOW + 3)
    assert (await st.get_call("c_1")).media_at == NOW + 2.5  # type: ignore[union-attr]
    assert not await st.mark_media("c_404", NOW)


async def test_feedback_once_per_party(st: Store) -> None:
    fb = Feedback(call_id="c_1", user_id="r1", rating="good", at=NOW)
    assert await st.add_feedback(fb)
    assert not await st.add_feedback(fb.model_copy(update={"rating": "bad"}))
    assert await st.add_feedback(fb.model_copy(update={"user_id": "v1"}))


# --- timers, limits, resume ---------------------------------------------------------------------


async def test_timers_fire_in_order_once(st: Store) -> None:
    assert await st.next_deadline() is None
    await st.schedule("wave|c_1", NOW + 5)
    await st.schedule("ring|c_1|v1", NOW + 2)
    await st.schedule("expire|c_1", NOW + 9.5)
    await st.schedule("ring|c_1|v1", NOW + 3)  # moved
    await st.schedule("grace|u|s", NOW + 1)
    await st.unschedule("grace|u|s")
    await st.unschedule("never|set")
    await st.schedule("ring|c_1|v2", NOW + 2)
    await st.schedule("ring|c_1|v3", NOW + 2)
    await st.unschedule("ring|c_1|v2", "never|set", "ring|c_1|v3")  # several in one step
    await st.unschedule()
    assert await st.deadline("ring|c_1|v1") == NOW + 3
    assert [await st.deadline(k) for k in ("grace|u|s", "ring|c_1|v2", "ring|c_1|v3")] == [None] * 3
    assert await st.next_deadline() == NOW + 3
    assert await st.claim_due(NOW + 2) == []
    assert await st.claim_due(NOW + 6) == ["ring|c_1|v1", "wave|c_1"]
    assert await st.claim_due(NOW + 6) == []
    assert await st.next_deadline() == NOW + 9.5
    for i in range(5):
        await st.schedule(f"t|{i}", NOW + 20 + i)
    assert await st.claim_due(NOW + 100, limit=2) == ["expire|c_1", "t|0"]
    assert await st.claim_due(NOW + 100) == ["t|1", "t|2", "t|3", "t|4"]
    assert await st.next_deadline() is None


async def test_a_timer_is_claimed_by_one_caller(st: Store) -> None:
    for i in range(50):
        await st.schedule(f"t|{i}", NOW + i / 10)
    claims = await asyncio.gather(*(st.claim_due(NOW + 10, limit=7) for _ in range(12)))
    flat = [k for c in claims for k in c]
    assert sorted(flat) == sorted(f"t|{i}" for i in range(50))


async def test_a_counted_call_is_counted_then_created_unless_over_the_limit_or_open(
    st: Store,
) -> None:
    """``create_counted_call`` is ``hit`` then ``create_call`` unless over the limit: the
    request counts whatever the answer, and nothing is created when it is over the limit or
    the recipient already has a call open."""
    first = Call(id="c_1", recipient_id="r1", language="en", requested_at=NOW)
    assert await st.create_counted_call(first, "request|r1", NOW, 3600.0, 2) == "created"
    stored = await st.get_call("c_1")
    assert stored is not None and stored.recipient_id == "r1"
    assert await st.current_call("r1") == "c_1"
    again = Call(id="c_2", recipient_id="r1", language="en", requested_at=NOW + 1)
    assert await st.create_counted_call(again, "request|r1", NOW + 1, 3600.0, 2) == "open"
    assert await st.get_call("c_2") is None
    # Both counted: a third under the same count is over a limit of two, whoever it is for.
    third = Call(id="c_3", recipient_id="r2", language="en", requested_at=NOW + 2)
    assert await st.create_counted_call(third, "request|r1", NOW + 2, 3600.0, 2) == "limited"
    assert await st.get_call("c_3") is None
    assert await st.current_call("r2") is None
    assert await st.hit("request|r1", NOW + 3, 3600.0) == 4
    # The window passed: counted afresh, and created.
    later = Call(id="c_4", recipient_id="r2", language="en", requested_at=NOW + 4000)
    assert await st.create_counted_call(later, "request|r1", NOW + 4000, 3600.0, 2) == "created"
    assert await st.current_call("r2") == "c_4"


async def test_hits_count_within_the_window(st: Store) -> None:
    assert [await st.hit("k", NOW + t, 10.0) for t in (0, 1, 2)] == [1, 2, 3]
    assert await st.hit("k", NOW + 10.0, 10.0) == 3  # the hit at NOW fell out
    assert await st.hit("k", NOW + 10.5, 10.0) == 4
    assert await st.hit("other", NOW, 10.0) == 1
    got = await asyncio.gather(*(st.hit("race", NOW, 60.0) for _ in range(30)))
    assert sorted(got) == list(range(1, 31))


async def test_resume_tokens_work_once_until_they_expire(st: Store) -> None:
    await st.put_resume("t1", ResumeTicket("u1", "s1"), NOW + 20)
    await st.put_resume("t2", ResumeTicket("u2", "s2"), NOW + 20)
    assert await st.take_resume("t1", NOW + 5) == ResumeTicket("u1", "s1")
    assert await st.take_resume("t1", NOW + 5) is None
    assert await st.take_resume("t2", NOW + 21) is None  # expired
    assert await st.take_resume("t2", NOW + 5) is None  # and gone
    assert await st.take_resume("nope", NOW) is None


async def test_revoking_sign_ins_keeps_the_latest_time(st: Store) -> None:
    assert await st.revoked_before("u1") is None
    assert await st.revoke_sessions("u1", NOW + 0.25) == NOW + 0.25
    assert await st.revoked_before("u1") == NOW + 0.25  # fractions survive the round trip
    assert await st.revoked_before("u2") is None  # one user's revocation is theirs alone
    assert await st.revoke_sessions("u1", NOW - 100) == NOW + 0.25  # never moved back
    assert await st.revoked_before("u1") == NOW + 0.25
    assert await st.revoke_sessions("u1", NOW + 60) == NOW + 60
    assert await st.revoked_before("u1") == NOW + 60
    got = await asyncio.gather(*(st.revoke_sessions("u3", NOW + i) for i in range(20)))
    assert await st.revoked_before("u3") == NOW + 19
    assert max(got) == NOW + 19


# --- Redis specifics (not part of the shared contract) ------------------------------------------


@pytest.mark.parametrize(
    "url, message",
    [
        ("redis://", "names no host"),
        ("redis://h:1/0?timeout=x", "timeout must be a number"),
        ("redis://h:1/0?timeout=0", "between 0 and 60"),
        ("redis://h:1/0?pool=3", "unknown option(s) pool"),
        ("redis+cluster://h:1/2", "only database 0"),
        ("redis://h:1,h:2/0", "several addresses are for a Redis Cluster"),
        ("redis+cluster://h:1,h2", "seed 'h2' is not host:port"),
        ("redis+cluster://h:1,h2:99999", "seed 'h2:99999' is not host:port"),
        ("redis+cluster://h:1,:7", "seed ':7' is not host:port"),
        ("redis+cluster://,h:1", "names no host"),
        ("memcached://h:1", "unsupported store URL"),
    ],
)
def test_bad_redis_urls_are_refused_with_a_reason(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        if url.startswith("memcached"):
            open_store(url)
        else:
            parse_redis_url(url)


def test_a_refused_url_never_shows_its_password() -> None:
    for url in ("redis://:hunter2@h:1/0?pool=3", "memcached://u:hunter2@h:1"):
        with pytest.raises(ValueError) as refused:
            open_store(url) if url.startswith("memcached") else parse_redis_url(url)
        assert "hunter2" not in str(refused.value) and ":***@h:1" in str(refused.value)
    assert shown_url("redis://h:1/0") == "redis://h:1/0"


def test_redis_urls() -> None:
    assert parse_redis_url("rediss://h:7/1?timeout=0.5") == (
        "rediss://h:7/1",
        False,
        {"socket_timeout": 0.5, "socket_connect_timeout": 0.5},
    )
    assert parse_redis_url("redis+cluster://h:7")[:2] == ("redis://h:7", True)
    target, cluster, options = parse_redis_url("redis+cluster://:pw@h1:7,h2:8,[::1]:9")
    assert (target, cluster) == ("redis://:pw@h1:7", True)
    assert [(n.host, n.port) for n in options["startup_nodes"]] == [("h2", 8), ("::1", 9)]


async def test_unreachable_redis_is_store_unavailable() -> None:
    from tests.redis_procs import free_port

    store = open_store(f"redis://127.0.0.1:{free_port()}/0?timeout=0.5")
    assert isinstance(store, RedisStore)
    try:
        with pytest.raises(StoreUnavailable, match="Redis is unreachable"):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.create_call(new_call("c_1"))
    finally:
        await store.close()


async def test_redis_coming_back_needs_no_new_store(redis_server: RedisServer) -> None:
    redis_server.flush()
    store = open_store(redis_server.url + "?timeout=0.5")
    try:
        await store.schedule("t|1", NOW)
        redis_server.stop()
        with pytest.raises(StoreUnavailable):
            await store.claim_due(NOW + 1)
        redis_server.run()  # without persistence: empty, but serving
        await store.ping()
        assert await store.create_call(new_call("c_1"))  # scripts are loaded again as needed
        await online(store, volunteer("v1"))
        assert [c.user_id for c in await store.candidates("en", NOW)] == ["v1"]
    finally:
        await store.close()


# --- devices and pushes ---------------------------------------------------------------------


def apns(user: str, token: str, **fields: Any) -> Device:
    reg = DeviceRegistration.model_validate({"platform": "apns", "token": token, **fields})
    return Device.register(user, reg, NOW + 0.123456789)


async def test_devices_by_address_one_owner_at_a_time(st: Store) -> None:
    t1, t2 = "0123456789abcdef" * 4, "fedcba9876543210" * 4
    first = await st.add_device(apns("v1", t1))
    assert await st.has_devices("v1") and await st.devices("v1") == [first]
    second = await st.add_device(apns("v1", t2, voip=True))
    again = await st.add_device(apns("v1", t1, voip=True))  # same address: same id, updated
    assert again.id == first.id and again.voip
    assert await st.devices("v1") == [again, second]
    # Online by device: a volunteer with a device is a candidate without a connection.
    await st.put_profile(volunteer("v1"))
    await st.set_on_duty("v1", True)
    assert [c.user_id for c in await st.candidates("en", NOW)] == ["v1"]
    # The phone signs in to another account: the address moves.
    moved = await st.add_device(apns("v2", t1))
    assert await st.devices("v1") == [second] and await st.devices("v2") == [moved]
    assert not await st.remove_device("v1", first.id)
    assert await st.remove_device("v1", second.id)
    assert not await st.has_devices("v1") and await st.devices("v1") == []
    assert await st.candidates("en", NOW) == []
    # Its address is free again: registering it for v1 takes nothing from anyone.
    await st.add_device(apns("v3", t2))
    assert [d.address for d in await st.devices("v3")] == [t2]


async def test_pushes_are_recorded_once_and_taken_once(st: Store) -> None:
    assert await st.record_pushes("c_1", "v1", ["d1", "d2"], NOW + 45.5) == ["d1", "d2"]
    assert await st.record_pushes("c_1", "v1", ["d2", "d3"], NOW + 40) == ["d3"]
    assert await st.record_pushes("c_1", "v2", ["d1"], NOW + 45) == ["d1"]
    taken = await asyncio.gather(*(st.take_pushes("c_1", "v1") for _ in range(5)))
    got = [t for t in taken if t is not None]
    assert got == [PushedRing(device_ids=["d1", "d2", "d3"], expires_at=NOW + 45.5)]
    assert await st.take_pushes("c_1", "v1") is None
    assert await st.take_pushes("c_1", "v2") == PushedRing(["d1"], NOW + 45)


# --- duty of care: restrictions, reports, cases, the audit log, counters, erasure --------------


def _restriction(until: float | None = None) -> Restriction:
    return Restriction(
        kind=RestrictionKind.SUSPENDED, since=NOW, until=until, message="Suspended.", by="a1"
    )


async def test_restrictions_are_kept_apart_from_the_profile(st: Store) -> None:
    await online(st, volunteer("v1"), volunteer("v2"))
    assert await st.get_restriction("v1") is None
    await st.set_restriction("v1", _restriction())
    # A profile write (PUT /v1/me/profile) cannot lift it.
    await st.put_profile(volunteer("v1", display_name="New name"))
    assert await st.get_restriction("v1") == _restriction()
    facts = {c.user_id: c.restricted for c in await st.candidates("en", NOW)}
    assert facts == {"v1": True, "v2": False}
    assert await st.clear_restriction("v1") == _restriction()
    assert await st.clear_restriction("v1") is None
    assert not any(c.restricted for c in await st.candidates("en", NOW))
    # A suspension with an end is not a fact of the candidate after it.
    await st.set_restriction("v2", _restriction(until=NOW + 60))
    assert [c.restricted for c in await st.candidates("en", NOW + 30) if c.user_id == "v2"] == [
        True
    ]
    assert [c.restricted for c in await st.candidates("en", NOW + 61) if c.user_id == "v2"] == [
        False
    ]
    assert await st.revoked_before("v1") is None
    await st.revoke_sessions("v1", NOW + 0.5)
    assert await st.revoked_before("v1") == NOW + 0.5


async def test_reports_count_different_people_inside_the_window(st: Store) -> None:
    window = 90 * 86400.0
    assert await st.note_report("v1", "r1", NOW, window) == 1
    assert await st.note_report("v1", "r1", NOW + 10, window) == 1  # the same person again
    assert await st.note_report("v1", "r2", NOW + 20, window) == 2
    assert await st.note_report("v2", "r3", NOW + 20, window) == 1
    # r1's last report was at NOW + 10: exactly a window later it no longer counts.
    assert await st.note_report("v1", "r3", NOW + 10 + window, window) == 2
    assert await st.note_report("v1", "r4", NOW + 20 + window, window) == 2


async def test_concurrent_reports_count_each_reporter_once(st: Store) -> None:
    counts = await asyncio.gather(*(st.note_report("v1", f"r{i}", NOW, 1e6) for i in range(10)))
    assert sorted(counts) == list(range(1, 11))


def _case(reporter: str, reported: str, reason: str = "abusive", org: str | None = None) -> Case:
    return Case(
        reason=ReportReason(reason),
        opened_at=NOW,
        org=org,
        call_id="c_" + reporter,
        reporter=Party(id=reporter, role=Role.RECIPIENT),
        reported=Party(id=reported, role=Role.VOLUNTEER),
    )


async def test_cases_are_filed_listed_newest_first_and_filtered(st: Store) -> None:
    filed = [
        await st.add_case(_case("r1", "v1")),
        await st.add_case(_case("r2", "v1", "unsafe")),
        await st.add_case(_case("r3", "a1", "privacy", org="o1")),
        await st.add_case(_case("v1", "r1", "other")),
    ]
    assert [c.seq for c in filed] == sorted({c.seq for c in filed})
    assert len({c.id for c in filed}) == 4
    assert await st.get_case(filed[1].id) == filed[1]
    assert await st.get_case("case_404") is None
    everything = await st.cases(CaseQuery(), None, 10)
    assert [c.id for c in everything] == [c.id for c in reversed(filed)]
    page = await st.cases(CaseQuery(), None, 2)
    rest = await st.cases(CaseQuery(), page[-1].seq, 10)
    assert [c.id for c in page + rest] == [c.id for c in everything]
    about_v1 = await st.cases(CaseQuery(user="v1"), None, 10)
    assert [c.id for c in about_v1] == [filed[3].id, filed[1].id, filed[0].id]
    assert [c.id for c in await st.cases(CaseQuery(reason=ReportReason.UNSAFE), None, 10)] == [
        filed[1].id
    ]
    assert [c.id for c in await st.cases(CaseQuery(org="o1"), None, 10)] == [filed[2].id]
    assert await st.count_cases(CaseQuery(state=CaseState.OPEN)) == 4
    assert await st.count_cases(CaseQuery(state=CaseState.OPEN, org="o1")) == 1
    assert await st.count_cases(CaseQuery(user="v1", reason=ReportReason.ABUSIVE)) == 1


async def test_a_case_is_resolved_once(st: Store) -> None:
    case = await st.add_case(_case("r1", "v1"))
    decisions = [
        Resolution(action=CaseAction.WARN, note=f"note {i}", by=f"a{i}", at=NOW + i)
        for i in range(5)
    ]
    results = await asyncio.gather(*(st.resolve_case(case.id, d) for d in decisions))
    won = [r for r in results if r is not None]
    assert len(won) == 1 and won[0].state is CaseState.RESOLVED
    assert await st.get_case(case.id) == won[0]
    assert await st.resolve_case(case.id, decisions[0]) is None
    assert await st.resolve_case("case_404", decisions[0]) is None
    assert await st.count_cases(CaseQuery(state=CaseState.OPEN)) == 0
    assert [c.id for c in await st.cases(CaseQuery(state=CaseState.RESOLVED), None, 5)] == [case.id]


def _entry(actor: str, action: AuditAction, target: str, org: str | None = None) -> AuditEntry:
    return AuditEntry(
        at=NOW,
        actor=actor,
        actor_role="admin",
        action=action,
        target=target,
        reason="why",
        org=org,
        detail={"n": 1},
    )


async def test_the_audit_log_appends_and_filters(st: Store) -> None:
    a = await st.append_audit(_entry("a1", AuditAction.USER_SUSPEND, "v1"))
    b = await st.append_audit(_entry("system", AuditAction.USER_SUSPEND, "v2"))
    c = await st.append_audit(_entry("a2", AuditAction.ORG_PUT, "o1", org="o1"))
    assert a.seq < b.seq < c.seq and len({a.id, b.id, c.id}) == 3
    assert await st.audit(AuditQuery(), None, 10) == [c, b, a]
    assert await st.audit(AuditQuery(), c.seq, 1) == [b]
    assert await st.audit(AuditQuery(target="v1"), None, 10) == [a]
    assert await st.audit(AuditQuery(actor="system"), None, 10) == [b]
    assert await st.audit(AuditQuery(action=AuditAction.ORG_PUT), None, 10) == [c]
    assert await st.audit(AuditQuery(org="o1"), None, 10) == [c]


async def test_the_audit_log_filters_and_pages_through_a_long_history(st: Store) -> None:
    # Far more entries than one read of the store's index, only some of them matching: every
    # match comes back exactly once, newest first, page after page.
    actions = [AuditAction.USER_SUSPEND, AuditAction.ORG_PUT]
    made = [
        await st.append_audit(_entry(f"a{i % 3}", actions[i % 2], f"t{i % 5}")) for i in range(450)
    ]
    query = AuditQuery(actor="a1", action=AuditAction.USER_SUSPEND)
    expected = [e for e in reversed(made) if query.matches(e)]
    got: list[AuditEntry] = []
    before: int | None = None
    while page := await st.audit(query, before, 40):
        got += page
        before = page[-1].seq
    assert got == expected and len(expected) == 75


async def test_day_counters_add_up_per_scope(st: Store) -> None:
    one = Counts(created=1, answered=1, completed=1)
    one.count_answer(2)
    two = Counts(created=1, unanswered=1)
    await st.add_counts(DAY, {"all": one, "lang:en": one})
    await st.add_counts(DAY, {"all": two, "org:o1": two})
    got = await st.day_counts([DAY, "2026-06-16"])
    assert got[1] == {}
    assert set(got[0]) == {"all", "lang:en", "org:o1"}
    total = got[0]["all"]
    assert (total.created, total.answered, total.unanswered, total.completed) == (2, 1, 1, 1)
    assert total.histogram[2] == 1 and sum(total.histogram) == 1
    assert got[0]["org:o1"].created == 1 and got[0]["lang:en"].completed == 1


async def test_escalation_counters_add_up_beside_counters_stored_before_them(st: Store) -> None:
    escalated = Counts(created=1, escalated=1)
    told = Counts(created=1, unanswered=1, told_to_retry=1)
    # A vector written before the escalation counters existed: no trailing fields.
    old = Counts(created=1, completed=1)
    old.v = old.v[: len(old.v) - 2]
    await st.add_counts(DAY, {"all": old})
    await st.add_counts(DAY, {"all": escalated})
    await st.add_counts(DAY, {"all": told})
    total = (await st.day_counts([DAY]))[0]["all"]
    assert (total.created, total.completed, total.unanswered) == (3, 1, 1)
    assert (total.escalated, total.told_to_retry) == (1, 1)
    assert sum(total.histogram) == 0


async def test_escalate_turns_a_search_into_a_queued_call_once(st: Store) -> None:
    await online(st, volunteer("v1"), volunteer("v2"))
    await ringing_call(st, "c_1", "v1", "v2")
    handed = await st.escalate("c_1", "bank", "help", NOW + 180)
    assert handed is not None and handed.withdrawn == ["v1", "v2"]
    call = handed.call
    assert call.state is CallState.QUEUED and (call.org, call.queue) == ("bank", "help")
    assert call.enqueued_at == call.escalated_at == NOW + 180
    assert call.escalation is EscalationOutcome.QUEUED
    assert await st.get_call("c_1") == call
    assert await st.ringing("c_1") == [] and await st.ring_of("v1") is None
    assert await st.rung("c_1") == {"v1", "v2"}  # a crossing decline is still acknowledged
    assert await st.current_call("r1") == "c_1"
    # Rung no more: free for another call.
    await ringing_call(st, "c_2", "v1", recipient="r2")
    assert await st.escalate("c_1", "bank", "help", NOW + 181) is None  # once only
    assert await st.escalate("missing", "bank", "help", NOW) is None
    # An answered call is not escalated; the escalated one is answered like a queued call.
    assert await st.escalate("c_2", "bank", "help", NOW) is not None
    assert await st.finish("c_2", EndReason.NO_ANSWER, None, NOW + 200) is not None
    assert await st.escalate("c_2", "bank", "help", NOW + 201) is None


async def test_concurrent_escalations_escalate_once(st: Store) -> None:
    await ringing_call(st, "c_1")
    results = await asyncio.gather(*(st.escalate("c_1", "bank", "help", NOW + i) for i in range(5)))
    assert sum(r is not None for r in results) == 1


# --- trusted circles ---------------------------------------------------------------------------


async def test_circle_members_on_both_sides(st: Store) -> None:
    assert await st.circle("r1") == {} and await st.circles_of("v1") == {}
    assert await st.circle_add("r1", "v1", NOW)
    assert not await st.circle_add("r1", "v1", NOW + 5)  # already a member: since is kept
    assert await st.circle_add("r1", "v2", NOW + 1)
    assert await st.circle_add("r2", "v1", NOW + 2)
    assert await st.circle("r1") == {"v1": NOW, "v2": NOW + 1}
    assert await st.circles_of("v1") == {"r1": NOW, "r2": NOW + 2}
    assert await st.circle_remove("r1", "v1")
    assert not await st.circle_remove("r1", "v1")
    assert await st.circle("r1") == {"v2": NOW + 1}
    assert await st.circles_of("v1") == {"r2": NOW + 2}


async def test_an_invitation_is_used_once_and_never_after_it_expires(st: Store) -> None:
    code = Invite(recipient_id="r1", created_at=NOW, expires_at=NOW + 600)
    await st.put_invite("k1", code)
    assert await st.take_invite("k1", "v1", NOW + 10) == code
    assert await st.take_invite("k1", "v2", NOW + 11) is None  # used
    await st.put_invite("k2", code)
    assert await st.take_invite("k2", "v1", NOW + 600) is None  # expired at that instant
    assert await st.take_invite("k2", "v1", NOW + 1) is None  # and gone
    assert await st.take_invite("missing", "v1", NOW) is None


async def test_a_proposal_is_for_its_helper_only(st: Store) -> None:
    ask = Invite(recipient_id="r1", created_at=NOW, expires_at=NOW + 600, helper_id="v1")
    later = Invite(recipient_id="r2", created_at=NOW + 1, expires_at=NOW + 900, helper_id="v1")
    await st.put_invite("p1", ask)
    await st.put_invite("p2", later)
    assert await st.proposals_for("v1", NOW + 5) == [("p1", ask), ("p2", later)]
    assert await st.proposals_for("v1", NOW + 700) == [("p2", later)]
    assert await st.proposals_for("v2", NOW) == []
    assert await st.take_invite("p1", "v2", NOW + 5) is None  # someone else's: left alone
    assert await st.take_invite("p1", "v1", NOW + 5) == ask
    assert await st.proposals_for("v1", NOW + 5) == [("p2", later)]


async def test_concurrent_redemptions_use_an_invitation_once(st: Store) -> None:
    await st.put_invite("k1", Invite(recipient_id="r1", created_at=NOW, expires_at=NOW + 600))
    results = await asyncio.gather(*(st.take_invite("k1", f"v{i}", NOW + 1) for i in range(6)))
    assert sum(r is not None for r in results) == 1


async def test_erasure_forgets_circles_and_invitations(st: Store) -> None:
    await online(st, volunteer("v1"), volunteer("v2"))
    await st.put_profile(Profile(user_id="r1", role=Role.RECIPIENT))
    await st.circle_add("r1", "v1", NOW)
    await st.circle_add("r1", "v2", NOW)
    await st.circle_add("r2", "v1", NOW)
    await st.put_invite("k1", Invite(recipient_id="r1", created_at=NOW, expires_at=NOW + 600))
    await st.put_invite(
        "p1", Invite(recipient_id="r2", created_at=NOW, expires_at=NOW + 600, helper_id="v1")
    )
    await st.erase_user("v1", "anon-v1", [])
    assert await st.circle("r1") == {"v2": NOW} and await st.circle("r2") == {}
    assert await st.circles_of("v1") == {} and await st.proposals_for("v1", NOW) == []
    assert await st.take_invite("p1", "v1", NOW) is None
    await st.erase_user("r1", "anon-r1", [])
    assert await st.circle("r1") == {} and await st.circles_of("v2") == {}
    assert await st.take_invite("k1", "v2", NOW) is None


async def test_on_duty_is_counted(st: Store) -> None:
    await online(st, volunteer("v1"), volunteer("v2"))
    assert await st.on_duty_count() == 2
    await st.set_on_duty("v2", False)
    assert await st.on_duty_count() == 1


async def _dump(st: Store) -> str:
    """Everything the store holds, as text: the memory store's every structure, or every key of
    Redis (on every master of a cluster) with its value."""
    if isinstance(st, MemoryStore):
        return repr(vars(st))
    assert isinstance(st, RedisStore)
    parts: list[str] = []
    async for key in st.r.scan_iter(match="*", count=1000):
        kind = await st.r.type(key)
        if kind == "string":
            value: object = await st.r.get(key)
        elif kind == "hash":
            value = await st.r.hgetall(key)
        elif kind == "set":
            value = sorted(await st.r.smembers(key))
        elif kind == "zset":
            value = await st.r.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            value = await st.r.lrange(key, 0, -1)
        else:
            value = kind
        parts.append(f"{key} = {value!r}")
    return "\n".join(parts)


async def test_an_erased_person_leaves_no_trace_but_a_pseudonym(st: Store) -> None:
    uid, alias = "erin-7f3a", "p_" + "0" * 32
    texts = ["Reading my bank letter", "I use a white cane", "He was rude to me", "Erin Example"]
    await st.put_profile(
        Profile(user_id=uid, role=Role.RECIPIENT, display_name=texts[3], note=texts[1])
    )
    await online(st, volunteer("v1"))
    await st.add_device(apns(uid, "0123456789abcdef" * 4))
    await st.put_resume("tok-1", ResumeTicket(uid, "s_1"), NOW + 100)
    await st.hit(f"request|{uid}", NOW, 3600.0)
    await st.schedule(f"grace|{uid}|s_1", NOW + 20)
    await st.create_call(
        new_call("c_1", recipient=uid, recipient_name=texts[3], topic=texts[0], note=texts[1])
    )
    await ringing_call_for(st, "c_1", "v1")
    await st.assign("c_1", "v1", "V", Role.VOLUNTEER, NOW + 1)
    await st.finish("c_1", EndReason.COMPLETED, Role.RECIPIENT, NOW + 60)
    await st.add_feedback(
        Feedback(
            call_id="c_1", user_id=uid, rating="down", report="abusive", comment=texts[2], at=NOW
        )
    )
    await st.block(uid, "v1")
    await st.block("v1", uid)
    await st.note_report("v1", uid, NOW + 61, 1e6)
    await st.add_case(
        Case(
            reason=ReportReason.ABUSIVE,
            opened_at=NOW + 61,
            call_id="c_1",
            reporter=Party(id=uid, role=Role.RECIPIENT),
            reported=Party(id="v1", role=Role.VOLUNTEER),
        )
    )
    await st.set_restriction(uid, _restriction())
    await st.append_audit(_entry("a1", AuditAction.USER_SUSPEND, uid))
    assert uid in await _dump(st)

    await st.erase_user(uid, alias, [f"request|{uid}"])

    dump = await _dump(st)
    assert uid not in dump
    for text in texts:
        assert text not in dump
    call = await st.get_call("c_1")
    assert call is not None and call.recipient_id == alias and call.topic is None
    assert call.helper_id == "v1"  # the other party's record stays
    assert await st.get_restriction(alias) == _restriction()
    assert [c.reporter.id for c in await st.cases(CaseQuery(user=alias), None, 5)] == [alias]
    assert [e.target for e in await st.audit(AuditQuery(target=alias), None, 5)] == [alias]
    assert [f.user_id for f in await st.feedback_of("c_1")] == [alias]
    assert await st.note_report("v1", "r9", NOW + 62, 1e6) == 2  # their report still counts
    assert await st.get_profile(uid) is None and await st.calls_of(uid) == []


async def test_scrubbing_old_calls_and_sweep_marks(st: Store) -> None:
    for i in range(3):
        await st.create_call(new_call(f"c_{i}", recipient=f"r{i}", topic="topic", note="note"))
        await st.finish(f"c_{i}", EndReason.CANCELLED, Role.RECIPIENT, NOW + i)
    assert await st.ended_between(NOW, NOW + 2, 10) == [("c_0", NOW), ("c_1", NOW + 1)]
    assert await st.ended_between(NOW + 1, NOW + 10, 1) == [("c_1", NOW + 1)]
    await st.scrub_call("c_1", {"r1": "p_r1"})
    call = await st.get_call("c_1")
    assert call is not None and (call.recipient_id, call.topic, call.note) == ("p_r1", None, None)
    other = await st.get_call("c_2")
    assert other is not None and other.topic == "topic"
    assert await st.get_mark("retention") is None
    await st.set_mark("retention", NOW + 1)
    assert await st.get_mark("retention") == NOW + 1


async def ringing_call_for(st: Store, cid: str, *uids: str) -> None:
    for uid in uids:
        assert await st.reserve_ring(cid, uid, DAY, 10, NOW)


# --- webhook deliveries ---------------------------------------------------------------------


def delivery(did: str, due: float = NOW, attempts: int = 0) -> WebhookDelivery:
    return WebhookDelivery(
        id=did,
        kind="call.queued",
        url="https://hooks.example.org/in",
        secret="s" * 16,
        body={"id": did, "event": "call.queued", "call": "c_1"},
        attempts=attempts,
        due=due,
    )


async def test_webhook_deliveries_are_claimed_when_due_and_leased(st: Store) -> None:
    await st.add_webhook(delivery("wh_b", due=NOW - 1))
    await st.add_webhook(delivery("wh_a", due=NOW - 5))
    await st.add_webhook(delivery("wh_later", due=NOW + 30))
    assert await st.pending_webhooks() == 3
    claimed = await st.claim_webhooks(NOW, lease_s=10, limit=10)
    assert [d.id for d in claimed] == ["wh_a", "wh_b"]  # earliest first; not the later one
    assert all(d.due == NOW + 10 for d in claimed) and claimed[0].body["call"] == "c_1"
    # Leased: nobody else gets them until the lease runs out, unless settled.
    assert await st.claim_webhooks(NOW + 9, lease_s=10) == []
    again = await st.claim_webhooks(NOW + 10, lease_s=10)
    assert [d.id for d in again] == ["wh_a", "wh_b"]  # the claimant died: another node's turn
    # A failed attempt: kept with its attempts, due at the retry time.
    assert await st.retry_webhook(replace(again[0], attempts=1, due=NOW + 12))
    assert await st.claim_webhooks(NOW + 11, lease_s=10) == []
    (retried,) = await st.claim_webhooks(NOW + 12, lease_s=10)
    assert retried.id == "wh_a" and retried.attempts == 1
    # Settled: delivered or given up.
    assert await st.drop_webhook("wh_a") and not await st.drop_webhook("wh_a")
    assert not await st.retry_webhook(replace(retried, attempts=2))  # settled elsewhere
    assert await st.pending_webhooks() == 2
    (later,) = await st.claim_webhooks(NOW + 40, lease_s=10, limit=1)
    assert later.id == "wh_b"  # due at NOW + 20 (its lease), before wh_later at NOW + 30
    assert await st.claim_webhooks(NOW + 40, lease_s=10, limit=0) == []


async def test_a_due_webhook_delivery_goes_to_one_claimant(st: Store) -> None:
    for i in range(20):
        await st.add_webhook(delivery(f"wh_{i:02}", due=NOW))
    batches = await asyncio.gather(
        *(st.claim_webhooks(NOW, lease_s=30, limit=3) for _ in range(10))
    )
    ids = [d.id for batch in batches for d in batch]
    assert sorted(ids) == [f"wh_{i:02}" for i in range(20)]  # each once, none lost


# --- a handover: "get me a volunteer" from a call with an assistant -----------------------------


async def assistant_call(st: Store, cid: str = "c_a", recipient: str = "r1") -> None:
    """A call of ``recipient`` answered by an assistant ``a_<recipient>``."""
    await online(st, Profile(user_id=f"a_{recipient}", role=Role.ASSISTANT))
    await ringing_call(st, cid, f"a_{recipient}", recipient=recipient)
    assert await st.assign(cid, f"a_{recipient}", "Reader", Role.ASSISTANT, NOW + 1)


def handover(cid: str, replaces: str = "c_a", recipient: str = "r1") -> Call:
    return new_call(cid, recipient, replaces=replaces, reading="EXP 2026-07")


async def test_a_handover_is_pending_beside_the_open_call(st: Store) -> None:
    await assistant_call(st)
    assert not await st.open_handover(new_call("c_x"))  # no ``replaces``: not a handover
    assert not await st.open_handover(handover("c_x", replaces="c_other"))  # not their call
    assert await st.get_call("c_x") is None
    assert await st.open_handover(handover("c_h"))
    stored = await st.get_call("c_h")
    assert stored is not None and (stored.replaces, stored.reading) == ("c_a", "EXP 2026-07")
    assert await st.current_call("r1") == "c_a" and await st.handover_of("r1") == "c_h"
    assert not await st.open_handover(handover("c_h2"))  # one pending at a time
    assert await st.get_call("c_h2") is None
    assert not await st.create_call(new_call("c_n"))  # and still one call of their own
    assert await st.handover_of("a_r1") is None and await st.handover_of("r2") is None


async def test_a_handover_answered_becomes_the_current_call(st: Store) -> None:
    await assistant_call(st)
    await online(st, volunteer("v1"), volunteer("v2"))
    assert await st.open_handover(handover("c_h"))
    assert await st.reserve_ring("c_h", "v1", DAY, 10, NOW + 2)
    assert await st.reserve_ring("c_h", "v2", DAY, 10, NOW + 2)
    won = await st.assign("c_h", "v1", "Val", Role.VOLUNTEER, NOW + 3)
    assert won is not None and won.withdrawn == ["v2"] and won.call.replaces == "c_a"
    assert await st.current_call("r1") == "c_h" and await st.handover_of("r1") is None
    assert await st.current_call("v1") == "c_h"
    # The replaced call, ended after the answer, leaves the recipient in the new one.
    done = await st.finish("c_a", EndReason.HANDED_OVER, Role.RECIPIENT, NOW + 4)
    assert done is not None and done.call.end_reason is EndReason.HANDED_OVER
    assert await st.current_call("r1") == "c_h" and await st.current_call("a_r1") is None
    assert await st.finish("c_h", EndReason.COMPLETED, Role.VOLUNTEER, NOW + 60)
    assert await st.current_call("r1") is None and await st.current_call("v1") is None
    assert [c.id for c in await st.calls_of("r1")] == ["c_h", "c_a"]
    assert await st.create_call(new_call("c_next"))


async def test_a_handover_outlives_the_call_it_replaces(st: Store) -> None:
    await assistant_call(st)
    assert await st.open_handover(handover("c_h"))
    await st.finish("c_a", EndReason.COMPLETED, Role.RECIPIENT, NOW + 5)  # they hung up
    assert await st.current_call("r1") == "c_h" and await st.handover_of("r1") is None
    call = await st.get_call("c_h")
    assert call is not None and call.state is CallState.SEARCHING
    assert not await st.create_call(new_call("c_n"))
    await st.finish("c_h", EndReason.NO_ANSWER, None, NOW + 200)
    assert await st.current_call("r1") is None and await st.create_call(new_call("c_n"))


async def test_a_handover_cancelled_or_unanswered_leaves_the_assistant_call(st: Store) -> None:
    await assistant_call(st)
    assert await st.open_handover(handover("c_h"))
    await st.finish("c_h", EndReason.CANCELLED, Role.RECIPIENT, NOW + 5)
    assert await st.current_call("r1") == "c_a" and await st.handover_of("r1") is None
    assert await st.open_handover(handover("c_h2"))  # they may ask again
    await st.finish("c_h2", EndReason.NO_ANSWER, None, NOW + 200)
    assert await st.current_call("r1") == "c_a" and await st.handover_of("r1") is None
    await st.finish("c_a", EndReason.COMPLETED, Role.RECIPIENT, NOW + 300)
    assert await st.current_call("r1") is None


async def test_an_answer_racing_the_recipient_hanging_up_the_assistant(st: Store) -> None:
    """The two-node race: a volunteer accepts the handover while the recipient hangs up the
    call with the assistant. In either order the recipient ends in the volunteer's call."""
    for i in range(10):
        rec, cid, hid, vid = f"r{i}", f"c_a{i}", f"c_h{i}", f"v{i}"
        await assistant_call(st, cid, rec)
        await online(st, volunteer(vid))
        assert await st.open_handover(handover(hid, replaces=cid, recipient=rec))
        assert await st.reserve_ring(hid, vid, DAY, 10, NOW + 2)
        won, ended = await asyncio.gather(
            st.assign(hid, vid, "V", Role.VOLUNTEER, NOW + 3),
            st.finish(cid, EndReason.COMPLETED, Role.RECIPIENT, NOW + 3),
        )
        assert won is not None and ended is not None
        assert await st.current_call(rec) == hid and await st.handover_of(rec) is None
        assert await st.current_call(vid) == hid and await st.current_call(f"a_{rec}") is None
        # The broker's own end of the replaced call comes too late, and changes nothing.
        assert await st.finish(cid, EndReason.HANDED_OVER, Role.RECIPIENT, NOW + 4) is None
        assert await st.current_call(rec) == hid


async def test_concurrent_handovers_open_one(st: Store) -> None:
    await assistant_call(st)
    opened = await asyncio.gather(*(st.open_handover(handover(f"c_h{i}")) for i in range(10)))
    assert sum(opened) == 1
    assert await st.handover_of("r1") == f"c_h{opened.index(True)}"
    assert [await st.get_call(f"c_h{i}") for i in range(10) if not opened[i]] == [None] * 9


async def test_a_handover_left_by_a_node_that_died_mid_finish_is_repaired(
    redis_server: RedisServer,
) -> None:
    """Redis: a node that died between finish's steps leaves the recipient's ``handover``
    naming an ended call; reading it clears it, so they may ask again."""
    redis_server.flush()
    st = open_store(redis_server.url)
    assert isinstance(st, RedisStore)
    try:
        await assistant_call(st)
        assert await st.open_handover(handover("c_h"))
        # Finish's decision on the call's slot only, as a dying node would leave it.
        await st._finish_call(
            keys=["vb:{c_h}:call", "vb:{c_h}:ringing", "vb:{c_h}:rung"],
            args=[60, "state", '"ended"', "ended_at", repr(NOW + 5)],
        )
        assert await st.r.hget("vb:{u:r1}", "handover") == "c_h"
        assert await st.handover_of("r1") is None
        assert await st.r.hget("vb:{u:r1}", "handover") is None
        assert await st.open_handover(handover("c_h2"))
        assert await st.current_call("r1") == "c_a"
    finally:
        await st.close()


# --- the lobby ---------------------------------------------------------------------------------


async def test_the_lobby_lists_calls_by_language_oldest_first(st: Store) -> None:
    for i, (cid, lang) in enumerate(
        [("c_3", "en"), ("c_1", "en-GB"), ("c_2", "pt"), ("c_4", "en")]
    ):
        assert await st.create_call(new_call(cid, f"r{i}", language=lang, languages=[lang]))
    await st.lobby_put("c_3", "en", NOW + 3)
    await st.lobby_put("c_1", "en-GB", NOW + 1)  # primary subtag: listed under "en"
    await st.lobby_put("c_2", "pt", NOW + 2)
    await st.lobby_put("c_4", "en", NOW + 4)
    calls, total = await st.lobby_calls("en-US", 2)
    assert [c.id for c in calls] == ["c_1", "c_3"] and total == 3
    assert calls[0] == await st.get_call("c_1")  # as stored now
    calls, total = await st.lobby_calls("pt", 20)
    assert [c.id for c in calls] == ["c_2"] and total == 1
    assert await st.lobby_calls("de", 20) == ([], 0)
    assert (await st.lobby_calls("en", 0))[1] == 3


async def test_a_call_moved_to_its_next_language_leaves_the_old_list(st: Store) -> None:
    assert await st.create_call(new_call("c_1", languages=["en", "pt"]))
    await st.lobby_put("c_1", "en", NOW)
    await st.lobby_put("c_1", "pt-BR", NOW)
    assert await st.lobby_calls("en", 20) == ([], 0)
    assert [c.id for c in (await st.lobby_calls("pt", 20))[0]] == ["c_1"]
    await st.lobby_put("c_1", "pt", NOW)  # listing again changes nothing
    assert (await st.lobby_calls("pt", 20))[1] == 1


async def test_a_dropped_call_leaves_the_lobby_and_dropping_twice_is_harmless(st: Store) -> None:
    assert await st.create_call(new_call("c_1"))
    assert await st.create_call(new_call("c_2", "r2"))
    await st.lobby_put("c_1", "en", NOW)
    await st.lobby_put("c_2", "en", NOW + 1)
    await st.lobby_drop("c_1")
    await st.lobby_drop("c_1")
    await st.lobby_drop("never-listed")
    calls, total = await st.lobby_calls("en", 20)
    assert [c.id for c in calls] == ["c_2"] and total == 1


async def test_the_lobby_index_is_not_the_call_state(st: Store) -> None:
    """The index may name a call that stopped searching: the call read says so."""
    await online(st, volunteer("v1"))
    await ringing_call(st, "c_1", "v1")
    await st.lobby_put("c_1", "en", NOW)
    assert await st.assign("c_1", "v1", "v1", Role.VOLUNTEER, NOW + 1) is not None
    calls, _ = await st.lobby_calls("en", 20)
    assert [c.state for c in calls] == [CallState.ASSIGNED]


async def test_a_take_and_a_ring_accept_racing_have_one_winner(st: Store) -> None:
    """A take is the ring reservation and the very same ``assign`` as an accept: of a taker
    and a rung helper racing for one call, exactly one is assigned."""
    for _ in range(5):
        await online(st, volunteer("v1"), volunteer("v2"))
        cid = f"c_{random.randrange(10**9)}"
        await ringing_call(st, cid, "v1")

        async def take(cid: str) -> bool:
            if not await st.reserve_ring(cid, "v2", DAY, 10, NOW):
                return False
            won = await st.assign(cid, "v2", "v2", Role.VOLUNTEER, NOW)
            if won is None:
                await st.release_ring(cid, "v2")
            return won is not None

        async def accept(cid: str) -> bool:
            return await st.assign(cid, "v1", "v1", Role.VOLUNTEER, NOW) is not None

        took, accepted = await asyncio.gather(take(cid), accept(cid))
        assert took + accepted == 1
        call = await st.get_call(cid)
        assert call is not None and call.helper_id == ("v2" if took else "v1")
        assert await st.ringing(cid) == []
        assert await st.finish(cid, EndReason.COMPLETED, Role.VOLUNTEER, NOW + 5) is not None


async def test_the_lobby_facts_are_blocks_and_rings_read_at_once(st: Store) -> None:
    """``lobby_facts`` answers what ``get_profile().blocked`` and ``rung`` answer, in order."""
    await online(st, volunteer("v1"), volunteer("v2"))
    for rid in ("r1", "r2"):
        await st.put_profile(volunteer(rid, role=Role.RECIPIENT))
    await st.block("r1", "v2")
    await ringing_call(st, "c_1", "v1", recipient="r1")
    assert await st.create_call(new_call("c_2", "r2"))
    blocked, rung = await st.lobby_facts(["r1", "r2", "nobody"], ["c_1", "c_2", "c_none"])
    assert blocked == [frozenset({"v2"}), frozenset(), frozenset()]
    assert rung == [{"v1"}, set(), set()]
    for rid, got in zip(["r1", "r2"], blocked, strict=False):
        profile = await st.get_profile(rid)
        assert profile is not None and profile.blocked == got
    assert rung[0] == await st.rung("c_1")
    assert await st.lobby_facts([], []) == ([], [])
