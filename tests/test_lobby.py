"""The lobby on a virtual clock: what is listed (language, window, circles, assistants, queues,
blocks, rings already sent), what a watcher is shown of it (never who asked; oldest first, at
most 20 and a count of the rest), entries leaving when a call is answered, cancelled, given up
or escalated, and ``take``: the same first accept as a ring's, with every refusal. On the
memory, durable (SQLite) and Redis stores."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import pytest

from broker.clock import VirtualClock
from broker.dispatch import DispatchSettings
from broker.escalation import EscalationSettings
from broker.events import Assigned, Event, Ring, Withdrawn
from broker.lobby import LOBBY_SIZE, LobbyClosed, LobbyView
from broker.model import (
    BrokerError,
    CallState,
    CircleMode,
    ErrorCode,
    Profile,
    Role,
    WithdrawReason,
)
from broker.moderation import RestrictionKind
from broker.service import Broker, LimitSettings
from broker.store import Store
from tests.queue_helpers import make_org

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
    return Broker(
        store, clock, TIMING, rng=random.Random(3), limits=LimitSettings(requests_per_hour=100)
    )


async def person(
    store: Store,
    user_id: str,
    role: Role = Role.VOLUNTEER,
    languages: tuple[str, ...] = ("en",),
    reachable: bool = False,
    **fields: object,
) -> Profile:
    """A person. A volunteer is on duty; ``reachable`` ones are rung by waves, the others
    (watchers, here) only see the lobby, so that rings do not get in the way."""
    profile = Profile.model_validate(
        {
            "user_id": user_id,
            "role": role,
            "display_name": user_id.title(),
            "languages": list(languages),
            "timezone": "Europe/London",
            **fields,
        }
    )
    await store.put_profile(profile)
    if role is Role.VOLUNTEER:
        await store.set_on_duty(user_id, True)
        if reachable:
            await store.set_connected(user_id, True)
    return profile


async def ask(broker: Broker, recipient: str, **kwargs: object) -> str:
    profile = await broker.store.get_profile(recipient)
    assert profile is not None
    out = await broker.request(profile, **kwargs)  # type: ignore[arg-type]
    assert out.call is not None
    return out.call.id


async def look(broker: Broker, profile: Profile) -> LobbyView:
    listing = await broker.lobby.read(profile.languages)
    return broker.lobby.view(profile, listing)


def ids(view: LobbyView) -> list[str]:
    return [e.call_id for e in view.entries]


async def refused(broker: Broker, profile: Profile, call_id: str) -> ErrorCode:
    with pytest.raises(BrokerError) as err:
        await broker.take(profile, call_id)
    return err.value.code


async def test_a_watcher_sees_requests_in_their_languages_oldest_first_never_who(
    store: Store, broker: Broker, clock: VirtualClock
) -> None:
    val = await person(store, "v-val", languages=("en", "pt-PT"))
    await person(store, "r-ann", Role.RECIPIENT)
    await person(store, "r-bo", Role.RECIPIENT, languages=("pt-BR",))
    await person(store, "r-cy", Role.RECIPIENT, languages=("de",))
    first = await ask(broker, "r-ann", topic="Reading a letter")
    clock.advance(5)
    second = await ask(broker, "r-bo")
    await ask(broker, "r-cy")  # German: not for Val
    clock.advance(7)
    view = await look(broker, val)
    assert ids(view) == [first, second] and view.more == 0
    entry = view.entries[0]
    assert (entry.language, entry.topic, entry.requested_at) == ("en", "Reading a letter", NOW)
    assert view.entries[1].language == "pt-BR" and view.entries[1].topic is None
    # What, never who: no field of an entry names or identifies the recipient.
    shown = {str(v) for e in view.entries for v in dataclasses.asdict(e).values()}
    assert not {"r-ann", "R-Ann", "r-bo", "R-Bo"} & shown


async def test_outside_their_window_a_watcher_sees_nothing_and_may_not_take(
    store: Store, broker: Broker
) -> None:
    night = await person(store, "v-owl", ring_window={"start": "01:00", "end": "02:00"})
    await person(store, "r-ann", Role.RECIPIENT)
    call = await ask(broker, "r-ann")
    assert await look(broker, night) == LobbyView((), 0)
    assert await refused(broker, night, call) is ErrorCode.FORBIDDEN


async def test_circle_only_assistant_and_queue_calls_are_never_listed_circle_first_later(
    store: Store, broker: Broker, clock: VirtualClock
) -> None:
    val = await person(store, "v-val")
    for r in ("r-ann", "r-bo", "r-cy", "r-di"):
        await person(store, r, Role.RECIPIENT)
    await person(store, "v-kin", reachable=True)
    await store.circle_add("r-ann", "v-kin", NOW)
    await store.circle_add("r-bo", "v-kin", NOW)
    await store.put_org(make_org())
    only = await ask(broker, "r-ann", circle=CircleMode.ONLY)
    first = await ask(broker, "r-bo", circle=CircleMode.FIRST)
    await ask(broker, "r-cy", helper="assistant")
    await ask(broker, "r-di", org="bank")
    assert ids(await look(broker, val)) == []
    for code in [await refused(broker, val, only), await refused(broker, val, first)]:
        assert code is ErrorCode.FORBIDDEN
    clock.advance(TIMING.circle_head_start_s)
    broker.clock = clock
    await broker.fire_due()  # the head start ends: the public search, and the lobby, begin
    assert ids(await look(broker, val)) == [first]


async def test_entries_leave_when_answered_cancelled_or_given_up(
    store: Store, clock: VirtualClock
) -> None:
    broker = Broker(store, clock, TIMING, rng=random.Random(3))  # no help centre
    val = await person(store, "v-val")
    await person(store, "v-ring", reachable=True)
    for r in ("r-ann", "r-bo", "r-cy"):
        await person(store, r, Role.RECIPIENT)
    answered = await ask(broker, "r-ann")
    cancelled = await ask(broker, "r-bo")
    assert set(ids(await look(broker, val))) == {answered, cancelled}
    ring = await store.ring_of("v-ring")
    assert ring == answered
    await broker.accept(await _profile(store, "v-ring"), answered)
    await broker.cancel("r-bo", cancelled)
    assert ids(await look(broker, val)) == []
    # Given up: nobody answers until the maximum wait, with no help centre open to take it.
    given_up = await ask(broker, "r-cy")
    assert ids(await look(broker, val)) == [given_up]
    clock.advance(TIMING.max_wait_s + 1)
    await broker.fire_due()
    call = await store.get_call(given_up)
    assert call is not None and call.state is not CallState.SEARCHING
    assert ids(await look(broker, val)) == []


async def test_an_escalated_request_leaves_the_lobby(store: Store, clock: VirtualClock) -> None:
    await store.put_org(make_org())
    broker = Broker(
        store,
        clock,
        TIMING,
        rng=random.Random(3),
        escalation=EscalationSettings(to="bank/main"),
    )
    val = await person(store, "v-val")
    await person(store, "v-ring", reachable=True)  # rung once, so the search goes on
    await person(store, "r-ann", Role.RECIPIENT)
    call_id = await ask(broker, "r-ann")
    assert ids(await look(broker, val)) == [call_id]
    for _ in range(int(TIMING.max_wait_s)):
        clock.advance(1)
        await broker.fire_due()
    call = await store.get_call(call_id)
    assert call is not None and call.state is CallState.QUEUED
    assert ids(await look(broker, val)) == []
    assert await refused(broker, val, call_id) is ErrorCode.CONFLICT


async def _profile(store: Store, user_id: str) -> Profile:
    profile = await store.get_profile(user_id)
    assert profile is not None
    return profile


async def test_a_take_wins_like_an_accept_and_withdraws_the_rings(
    store: Store, broker: Broker
) -> None:
    val = await person(store, "v-val")
    await person(store, "v-ring", reachable=True)
    await person(store, "r-ann", Role.RECIPIENT)
    call_id = await ask(broker, "r-ann")
    assert await store.ring_of("v-ring") == call_id
    out = await broker.take(val, call_id)
    assert out.call is not None and out.call.helper_id == "v-val"
    assigned = sorted(e.to for e in out.events if isinstance(e, Assigned))
    assert assigned == ["r-ann", "v-val"]
    [withdrawn] = [e for e in out.events if isinstance(e, Withdrawn)]
    assert (withdrawn.to, withdrawn.reason) == ("v-ring", WithdrawReason.ANSWERED)
    assert await store.ring_of("v-ring") is None
    assert ids(await look(broker, val)) == []
    assert await broker.lobby.why_closed(val) is LobbyClosed.IN_CALL
    # Too late for anyone else.
    other = await person(store, "v-late")
    assert await refused(broker, other, call_id) is ErrorCode.CONFLICT
    with pytest.raises(BrokerError) as err:
        await broker.accept(await _profile(store, "v-ring"), call_id)
    assert err.value.code is ErrorCode.CONFLICT


async def test_a_take_and_a_ring_accept_racing_have_exactly_one_winner(
    store: Store, broker: Broker
) -> None:
    for n in range(4):
        taker = await person(store, f"v-take{n}")
        ringer = await person(store, f"v-ring{n}", reachable=True)
        await person(store, f"r-{n}", Role.RECIPIENT)
        call_id = await ask(broker, f"r-{n}")
        assert await store.ring_of(ringer.user_id) == call_id
        results = await asyncio.gather(
            broker.take(taker, call_id), broker.accept(ringer, call_id), return_exceptions=True
        )
        won = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, BrokerError)]
        assert len(won) == 1 and len(lost) == 1 and lost[0].code is ErrorCode.CONFLICT
        call = await store.get_call(call_id)
        assert call is not None and call.state is CallState.ASSIGNED
        assert await store.ring_of(taker.user_id) is None  # the loser holds no ring
        await broker.end(f"r-{n}", call_id)
        await store.set_connected(ringer.user_id, False)


async def test_take_refusals(store: Store, broker: Broker, clock: VirtualClock) -> None:
    await person(store, "r-ann", Role.RECIPIENT)
    call_id = await ask(broker, "r-ann")
    assert await refused(broker, await person(store, "v-de", languages=("de",)), call_id) is (
        ErrorCode.FORBIDDEN
    )
    blocker = await person(store, "v-blk")
    await store.block("v-blk", "r-ann")
    blocked = await person(store, "v-blkd")
    await store.block("r-ann", "v-blkd")
    for who in (await _profile(store, "v-blk"), blocked):
        assert ids(await look(broker, who)) == []
        assert await refused(broker, who, call_id) is ErrorCode.FORBIDDEN
    assert blocker.user_id == "v-blk"
    capped = await person(store, "v-cap", daily_ring_cap=0)
    assert await refused(broker, capped, call_id) is ErrorCode.FORBIDDEN
    off = await person(store, "v-off")
    await store.set_on_duty("v-off", False)
    assert await refused(broker, off, call_id) is ErrorCode.CONFLICT
    suspended = await person(store, "v-sus")
    await broker.safety.restrict(suspended, RestrictionKind.SUSPENDED, "test", "admin", "admin", 1)
    assert await refused(broker, suspended, call_id) is ErrorCode.FORBIDDEN
    assert await broker.lobby.why_closed(suspended) is LobbyClosed.SUSPENDED
    agent = await person(store, "a-ag", Role.AGENT)
    assert await refused(broker, agent, call_id) is ErrorCode.FORBIDDEN
    recipient = await _profile(store, "r-ann")
    assert await refused(broker, recipient, call_id) is ErrorCode.FORBIDDEN
    val = await person(store, "v-val")
    assert await refused(broker, val, "c_nothing") is ErrorCode.NOT_FOUND
    # Busy: in a call of their own.
    await person(store, "r-bo", Role.RECIPIENT)
    other = await ask(broker, "r-bo")
    await broker.take(val, other)
    assert await refused(broker, val, call_id) is ErrorCode.FORBIDDEN
    # Ended.
    await broker.cancel("r-ann", call_id)
    assert await refused(broker, await person(store, "v-new"), call_id) is ErrorCode.CONFLICT


async def test_a_volunteer_rung_before_is_not_offered_the_call_again(
    store: Store, broker: Broker
) -> None:
    ring = await person(store, "v-ring", reachable=True)
    await person(store, "r-ann", Role.RECIPIENT)
    call_id = await ask(broker, "r-ann")
    assert ids(await look(broker, ring)) == []  # ringing: answer the ring
    await broker.decline("v-ring", call_id)
    assert ids(await look(broker, ring)) == []
    assert await refused(broker, ring, call_id) is ErrorCode.FORBIDDEN


async def test_a_volunteer_ringing_for_the_call_may_take_it(store: Store, broker: Broker) -> None:
    ring = await person(store, "v-ring", reachable=True)
    await person(store, "r-ann", Role.RECIPIENT)
    call_id = await ask(broker, "r-ann")
    out = await broker.take(ring, call_id)
    assert out.call is not None and out.call.helper_id == "v-ring"


async def test_a_watcher_is_shown_twenty_and_told_how_many_more(
    store: Store, broker: Broker, clock: VirtualClock
) -> None:
    val = await person(store, "v-val")
    made = []
    for n in range(LOBBY_SIZE + 5):
        await person(store, f"r-{n:02}", Role.RECIPIENT)
        made.append(await ask(broker, f"r-{n:02}"))
        clock.advance(1)
    view = await look(broker, val)
    assert ids(view) == made[:LOBBY_SIZE] and view.more == 5
    await broker.take(val, made[0])
    await store.set_on_duty("v-val", True)
    # The taker is in a call now; another watcher sees the list move up.
    other = await person(store, "v-two")
    view = await look(broker, other)
    assert ids(view) == made[1 : LOBBY_SIZE + 1] and view.more == 4


async def test_a_widened_search_moves_its_entry_to_the_next_language(
    store: Store, broker: Broker, clock: VirtualClock
) -> None:
    en = await person(store, "v-en")
    pt = await person(store, "v-pt", languages=("pt",))
    await person(store, "v-en-ring", reachable=True)  # rung first, in English
    await person(store, "r-ann", Role.RECIPIENT, languages=("en", "pt"))
    call_id = await ask(broker, "r-ann")
    assert ids(await look(broker, en)) == [call_id] and ids(await look(broker, pt)) == []
    await person(store, "v-pt-ring", languages=("pt",), reachable=True)
    clock.advance(TIMING.wave_interval_s)
    events: list[Event] = await broker.fire_due()
    assert any(isinstance(e, Ring) and e.language == "pt" for e in events)
    assert ids(await look(broker, en)) == []
    [entry] = (await look(broker, pt)).entries
    assert (entry.call_id, entry.language) == (call_id, "pt")
    # Taken by someone who speaks a language the search has reached.
    out = await broker.take(en, call_id)
    assert out.call is not None and out.call.helper_id == "v-en"


async def test_the_lobby_closes_off_duty(store: Store, broker: Broker) -> None:
    val = await person(store, "v-val")
    assert await broker.lobby.why_closed(val) is None
    await broker.set_available(val, False)
    assert await broker.lobby.why_closed(val) is LobbyClosed.OFF_DUTY


async def test_a_stale_index_entry_is_never_shown_and_is_dropped(
    store: Store, broker: Broker
) -> None:
    """A node that died between answering and unlisting leaves the index behind the call."""
    val = await person(store, "v-val")
    await person(store, "v-ring", reachable=True)
    await person(store, "r-ann", Role.RECIPIENT)
    call_id = await ask(broker, "r-ann")
    await broker.accept(await _profile(store, "v-ring"), call_id)
    await store.lobby_put(call_id, "en", NOW)  # as if never unlisted
    assert ids(await look(broker, val)) == [] and (await look(broker, val)).more == 0
    assert await store.lobby_calls("en", 20) == ([], 0)
