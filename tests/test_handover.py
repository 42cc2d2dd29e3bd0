"""A person one tap away, on a virtual clock and each store: a recipient in a call with the
automatic reader asks for a volunteer; the volunteers' search runs while the reader stays on,
and the first volunteer to accept takes the call over (``call.handover``)."""

from __future__ import annotations

import random

import pytest

from broker.clock import VirtualClock
from broker.dispatch import DispatchSettings
from broker.events import Assigned, Ended, Event, Ring, Status, Withdrawn
from broker.model import BrokerError, Call, CallState, EndReason, ErrorCode, Profile, Role
from broker.service import Broker
from broker.store import Store

MONDAY_NOON = 1_781_524_800.0  # 2026-06-15 12:00 UTC, 13:00 in London
TIMING = DispatchSettings(
    first_wave=1, max_wave=4, wave_interval_s=10, ring_timeout_s=30, max_wait_s=120
)
READ = "EXP 07/2026\nTake one tablet twice a day"


@pytest.fixture
def store(each_store: Store) -> Store:
    return each_store


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(MONDAY_NOON)


@pytest.fixture
def broker(store: Store, clock: VirtualClock) -> Broker:
    return Broker(store, clock, TIMING, rng=random.Random(3))


async def person(store: Store, user_id: str, role: Role, on_duty: bool = True) -> Profile:
    profile = Profile(
        user_id=user_id,
        role=role,
        display_name=user_id.title(),
        languages=["en"],
        timezone="Europe/London",
    )
    await store.put_profile(profile)
    await store.set_connected(user_id, True)
    if role is not Role.RECIPIENT and on_duty:
        await store.set_on_duty(user_id, True)
    return profile


async def with_reader(broker: Broker, store: Store, topic: str = "a label") -> tuple[Profile, Call]:
    """Recipient ``r1`` in an answered call with the assistant ``reader``."""
    reader = await person(store, "reader", Role.ASSISTANT)
    rec = await person(store, "r1", Role.RECIPIENT)
    out = await broker.request(rec, topic=topic, note="guide dog", helper="assistant")
    assert out.call is not None
    assert [(e.to, e.call_id) for e in out.events if isinstance(e, Ring)] == [
        ("reader", out.call.id)
    ]
    won = await broker.accept(reader, out.call.id)
    assert won.call is not None and won.call.helper_role is Role.ASSISTANT
    told = {e.to: e.peer_assistant for e in won.events if isinstance(e, Assigned)}
    assert told == {"r1": True, "reader": False}
    return rec, won.call


def of(events: list[Event], kind: type, to: str | None = None) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, kind) and (to is None or e.to == to)]


async def test_a_volunteer_takes_over_from_the_reader(broker: Broker, store: Store) -> None:
    rec, first = await with_reader(broker, store)
    vol = await person(store, "val", Role.VOLUNTEER)
    out = await broker.hand_over(rec, first.id, READ)
    search = out.call
    assert search is not None and search.id != first.id
    assert (search.state, search.replaces, search.topic, search.note) == (
        CallState.SEARCHING,
        first.id,
        "a label",
        "guide dog",
    )
    # The recipient hears of the search, naming the call it replaces; the reader stays on.
    [status] = of(out.events, Status, "r1")
    assert (status.call_id, status.replaces, status.state) == (
        search.id,
        first.id,
        CallState.SEARCHING,
    )
    assert not of(out.events, Ended)
    still = await store.get_call(first.id)
    assert still is not None and still.state is CallState.ASSIGNED
    assert await store.current_call("r1") == first.id
    assert await store.handover_of("r1") == search.id
    # The volunteer's ring carries the topic and what the reader read.
    [ring] = of(out.events, Ring, "val")
    assert (ring.call_id, ring.topic, ring.reading) == (search.id, "a label", READ)
    won = await broker.accept(vol, search.id)
    ended = of(won.events, Ended)
    assert {(e.to, e.call_id, e.reason, e.by) for e in ended} == {
        ("r1", first.id, EndReason.HANDED_OVER, Role.RECIPIENT),
        ("reader", first.id, EndReason.HANDED_OVER, Role.RECIPIENT),
    }
    assigned = of(won.events, Assigned)
    assert {(e.to, e.call_id) for e in assigned} == {("r1", search.id), ("val", search.id)}
    assert [e.reading for e in assigned if e.to == "val"] == [READ]
    assert [e.reading for e in assigned if e.to == "r1"] == [None]
    assert [e.peer_assistant for e in assigned] == [False, False]  # a person now
    # The reader's call ends before the volunteer's begins, as the recipient hears it.
    kinds = [type(e) for e in won.events if e.to == "r1"]
    assert kinds == [Ended, Assigned]
    assert await store.current_call("r1") == search.id
    assert await store.current_call("reader") is None
    assert await store.current_call("val") == search.id
    # A volunteer who resumes sees what was shared again; once the call ends it is gone.
    [again] = of(await broker.replay("val"), Assigned)
    assert again.reading == READ
    await broker.end("val", search.id)
    done = await store.get_call(search.id)
    assert done is not None and done.reading is None and done.topic == "a label"


async def test_what_the_reader_read_goes_only_if_shared(broker: Broker, store: Store) -> None:
    rec, first = await with_reader(broker, store)
    await person(store, "val", Role.VOLUNTEER)
    out = await broker.hand_over(rec, first.id)
    [ring] = of(out.events, Ring, "val")
    assert ring.reading is None and ring.topic == "a label"
    assert out.call is not None and out.call.reading is None


async def test_handover_refusals(broker: Broker, store: Store) -> None:
    rec, first = await with_reader(broker, store)
    other = await person(store, "r2", Role.RECIPIENT)
    reader = await store.get_profile("reader")
    assert reader is not None
    with pytest.raises(BrokerError) as err:
        await broker.hand_over(other, first.id)  # not theirs: the call is not revealed
    assert err.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(BrokerError) as err:
        await broker.hand_over(reader, first.id)
    assert err.value.code is ErrorCode.FORBIDDEN and "asked for help" in err.value.message
    await broker.hand_over(rec, first.id)
    with pytest.raises(BrokerError) as err:
        await broker.hand_over(rec, first.id)
    assert err.value.code is ErrorCode.CONFLICT and "already being looked for" in err.value.message
    # A call with a volunteer, and a call still searching, are not handed over.
    vol = await person(store, "val", Role.VOLUNTEER)
    out = await broker.request(other)
    assert out.call is not None
    with pytest.raises(BrokerError) as err:
        await broker.hand_over(other, out.call.id)
    assert err.value.code is ErrorCode.CONFLICT and "not in progress" in err.value.message
    await broker.accept(vol, out.call.id)
    with pytest.raises(BrokerError) as err:
        await broker.hand_over(other, out.call.id)
    assert err.value.code is ErrorCode.CONFLICT and "already with a person" in err.value.message
    await broker.end("r2", out.call.id)
    with pytest.raises(BrokerError) as err:
        await broker.hand_over(other, out.call.id)
    assert err.value.code is ErrorCode.CONFLICT


async def test_cancelling_the_search_keeps_the_reader(broker: Broker, store: Store) -> None:
    rec, first = await with_reader(broker, store)
    await person(store, "val", Role.VOLUNTEER)
    out = await broker.hand_over(rec, first.id, READ)
    assert out.call is not None
    cancelled = await broker.cancel("r1", out.call.id)
    assert {(e.to, e.call_id) for e in of(cancelled.events, Withdrawn)} == {("val", out.call.id)}
    [ended] = of(cancelled.events, Ended)
    assert (ended.to, ended.call_id, ended.reason) == ("r1", out.call.id, EndReason.CANCELLED)
    call = await store.get_call(first.id)
    assert call is not None and call.state is CallState.ASSIGNED
    assert await store.current_call("r1") == first.id and await store.handover_of("r1") is None
    again = await broker.hand_over(rec, first.id)  # and they may ask again
    assert again.call is not None and again.call.replaces == first.id


async def test_hanging_up_the_reader_keeps_the_search(broker: Broker, store: Store) -> None:
    """They asked for a person: hanging up the reader does not stop looking for one."""
    rec, first = await with_reader(broker, store)
    vol = await person(store, "val", Role.VOLUNTEER)
    out = await broker.hand_over(rec, first.id)
    assert out.call is not None
    hung = await broker.end("r1", first.id)
    assert {(e.to, e.reason) for e in of(hung.events, Ended)} == {
        ("r1", EndReason.COMPLETED),
        ("reader", EndReason.COMPLETED),
    }
    assert await store.current_call("r1") == out.call.id
    won = await broker.accept(vol, out.call.id)
    assert not of(won.events, Ended)  # the reader's call ended once, when they hung up
    assert {e.to for e in of(won.events, Assigned)} == {"r1", "val"}


async def test_nobody_answering_leaves_the_reader(
    broker: Broker, store: Store, clock: VirtualClock
) -> None:
    rec, first = await with_reader(broker, store)
    out = await broker.hand_over(rec, first.id)  # no volunteer on duty at all
    assert out.call is not None
    ended: list[Ended] = []
    for _ in range(20):
        clock.advance(10)
        ended += of(await broker.fire_due(), Ended, "r1")
    assert [(e.call_id, e.reason) for e in ended] == [(out.call.id, EndReason.NO_ANSWER)]
    call = await store.get_call(first.id)
    assert call is not None and call.state is CallState.ASSIGNED
    assert await store.current_call("r1") == first.id and await store.handover_of("r1") is None


async def test_the_search_keeps_the_rules_of_any_search(broker: Broker, store: Store) -> None:
    rec, first = await with_reader(broker, store)
    await person(store, "blocked", Role.VOLUNTEER)
    await person(store, "off", Role.VOLUNTEER, on_duty=False)
    await store.block("r1", "blocked")
    rec = await store.get_profile("r1") or rec
    out = await broker.hand_over(rec, first.id)
    assert not of(out.events, Ring)
    free = await person(store, "free", Role.VOLUNTEER)
    await broker.end("reader", first.id)  # a wave later, the free volunteer is rung
    assert out.call is not None
    rung: list[Ring] = []
    clock = broker.clock
    assert isinstance(clock, VirtualClock)
    for _ in range(3):
        clock.advance(10)
        rung += of(await broker.fire_due(), Ring)
    assert [(r.to, r.call_id) for r in rung] == [(free.user_id, out.call.id)]


async def test_a_reader_crashing_mid_handover_keeps_that_search(
    broker: Broker, store: Store
) -> None:
    rec, first = await with_reader(broker, store)
    out = await broker.hand_over(rec, first.id)
    assert out.call is not None
    await store.set_connected("reader", False)
    lost = await broker.lost("reader")
    assert {(e.to, e.call_id, e.reason) for e in of(lost, Ended)} == {
        ("r1", first.id, EndReason.PEER_LOST),
        ("reader", first.id, EndReason.PEER_LOST),
    }
    # No second search: the recipient is told of the one they asked for.
    [status] = of(lost, Status, "r1")
    assert (status.call_id, status.replaces) == (out.call.id, first.id)
    assert await store.current_call("r1") == out.call.id


async def test_a_reader_crashing_starts_a_search_unasked(broker: Broker, store: Store) -> None:
    """Without a handover, a lost reader is replaced by the volunteers' search at once."""
    _, first = await with_reader(broker, store)
    await person(store, "val", Role.VOLUNTEER)
    await store.set_connected("reader", False)
    lost = await broker.lost("reader")
    [status] = of(lost, Status, "r1")
    assert status.call_id != first.id and status.state is CallState.SEARCHING
    [ring] = of(lost, Ring, "val")
    assert ring.call_id == status.call_id and ring.topic == "a label"


async def test_a_recipient_gone_ends_both_calls(broker: Broker, store: Store) -> None:
    rec, first = await with_reader(broker, store)
    out = await broker.hand_over(rec, first.id)
    assert out.call is not None
    # Resuming in time, they hear of the reader's call and of the search.
    replay = await broker.replay("r1")
    assert [e.call_id for e in of(replay, Assigned, "r1")] == [first.id]
    [status] = of(replay, Status, "r1")
    assert (status.call_id, status.replaces) == (out.call.id, first.id)
    await store.set_connected("r1", False)
    lost = await broker.lost("r1")
    assert {(e.to, e.call_id, e.reason) for e in of(lost, Ended)} == {
        ("r1", out.call.id, EndReason.CANCELLED),
        ("r1", first.id, EndReason.PEER_LOST),
        ("reader", first.id, EndReason.PEER_LOST),
    }
    assert await store.current_call("r1") is None and await store.handover_of("r1") is None


def test_the_shared_reading_is_the_newest_texts_that_fit_in_text_the_protocol_takes() -> None:
    from clients.roles import shared_reading

    assert shared_reading([]) == ""
    assert shared_reading(["first", "second"]) == "first\n\nsecond"
    # Whole texts, newest kept: the oldest goes when they do not all fit.
    assert shared_reading(["a" * 10, "b" * 10, "c" * 10], limit=25) == "b" * 10 + "\n\n" + "c" * 10
    assert shared_reading(["x" * 50], limit=20) == "x" * 20
    # What the reader sent is passed on without characters the broker refuses.
    assert shared_reading(["EXP\u202e2026\x00", "   "]) == "EXP 2026"


async def test_erasing_a_recipient_ends_the_search_they_asked_for(
    broker: Broker, store: Store
) -> None:
    rec, first = await with_reader(broker, store)
    await person(store, "val", Role.VOLUNTEER)
    out = await broker.hand_over(rec, first.id, READ)
    assert out.call is not None
    _, events = await broker.erase(rec)
    assert {(e.to, e.call_id) for e in of(events, Withdrawn)} == {("val", out.call.id)}
    assert {(e.to, e.call_id, e.reason) for e in of(events, Ended)} == {
        ("reader", first.id, EndReason.CLOSED),
    }
    for cid in (first.id, out.call.id):
        ended = await store.get_call(cid)
        assert ended is not None and ended.state is CallState.ENDED and ended.reading is None
    assert await store.current_call("val") is None and await store.ring_of("val") is None


async def test_a_handover_search_is_in_the_lobby_and_a_take_hands_over(
    broker: Broker, store: Store
) -> None:
    rec, first = await with_reader(broker, store)
    # Off the waves' path (not connected: never rung), on duty: only the lobby reaches them.
    watcher = await person(store, "wat", Role.VOLUNTEER)
    await store.set_connected("wat", False)
    out = await broker.hand_over(rec, first.id, READ)
    search = out.call
    assert search is not None and not of(out.events, Ring, "wat")
    listing = await broker.lobby.read(watcher.languages)
    view = broker.lobby.view(watcher, listing)
    assert [(e.call_id, e.topic) for e in view.entries] == [(search.id, "a label")]
    won = await broker.take(watcher, search.id)
    assert {(e.to, e.reason) for e in of(won.events, Ended)} == {
        ("r1", EndReason.HANDED_OVER),
        ("reader", EndReason.HANDED_OVER),
    }
    assert [e.reading for e in of(won.events, Assigned, "wat")] == [READ]
    assert await store.current_call("r1") == search.id
    assert await store.handover_of("r1") is None
    assert broker.lobby.view(watcher, await broker.lobby.read(watcher.languages)).entries == ()
