"""Partner queues on a virtual clock: hours, positions and ETAs, strategies, rings, wrap-up,
autopause, closing and maximum wait, overflow, isolation between organisations. No sockets."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from broker.clock import VirtualClock
from broker.dispatch import DispatchSettings
from broker.events import (
    AgentStatusChanged,
    Assigned,
    Ended,
    Event,
    QueueUpdate,
    Ring,
    Status,
    Withdrawn,
)
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
from broker.orgs import AgentRecord, Org, closed_message, is_open, next_closing, next_opening
from broker.queues import QueueSettings, WebhookEvent, estimate_wait, news, pick_order
from broker.service import Broker
from broker.store.memory import MemoryStore
from tests.queue_helpers import OFFICE, agent, caller, make_org, put_agent, rings, statuses


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


# --- opening hours ------------------------------------------------------------------------------


def test_office_hours_follow_the_local_clock_across_the_spring_change() -> None:
    org = make_org(hours=OFFICE)  # 09:00-17:00 Monday to Friday, London
    # Friday 27 March 2026: still GMT, so 09:00 local is 09:00 UTC.
    assert not is_open(org, utc(2026, 3, 27, 8, 30))
    assert is_open(org, utc(2026, 3, 27, 9, 0))  # the opening instant is open
    assert is_open(org, utc(2026, 3, 27, 16, 59))
    assert not is_open(org, utc(2026, 3, 27, 17, 0))  # the closing instant is closed
    # Clocks go forward on Sunday 29 March: Monday's 09:00 BST is 08:00 UTC.
    assert next_opening(org, utc(2026, 3, 27, 17, 0)) == utc(2026, 3, 30, 8, 0)
    assert is_open(org, utc(2026, 3, 30, 8, 30))
    assert next_closing(org, utc(2026, 3, 30, 8, 30)) == utc(2026, 3, 30, 16, 0)


def test_office_hours_across_the_autumn_change() -> None:
    org = make_org(hours=OFFICE)
    # Friday 23 October 2026 is BST: closes 16:00 UTC; clocks go back on Sunday 25 October.
    assert next_closing(org, utc(2026, 10, 23, 12, 0)) == utc(2026, 10, 23, 16, 0)
    assert next_opening(org, utc(2026, 10, 23, 16, 0)) == utc(2026, 10, 26, 9, 0)
    assert not is_open(org, utc(2026, 10, 26, 8, 30))


def test_new_york_and_a_spring_gap() -> None:
    # A span opening inside the hour that does not exist (02:30 on 8 March 2026 in New York)
    # opens at the first instant after the gap.
    org = make_org(
        hours={"sun": [{"open": "02:30", "close": "05:00"}]}, timezone="America/New_York"
    )
    assert next_opening(org, utc(2026, 3, 8, 0, 0)) == utc(2026, 3, 8, 7, 30)  # 03:30 EDT
    assert next_closing(org, utc(2026, 3, 8, 8, 0)) == utc(2026, 3, 8, 9, 0)  # 05:00 EDT


def test_dated_closures() -> None:
    org = make_org(hours=OFFICE, closures=["2026-06-15"])  # Monday
    assert not is_open(org, utc(2026, 6, 15, 12, 0))
    assert next_opening(org, utc(2026, 6, 15, 12, 0)) == utc(2026, 6, 16, 8, 0)  # Tuesday 09:00
    assert is_open(org, utc(2026, 6, 16, 12, 0))


def test_overnight_spans_and_round_the_clock() -> None:
    org = make_org(hours={"fri": [{"open": "22:00", "close": "06:00"}]})
    assert is_open(org, utc(2026, 6, 20, 4, 59))  # Saturday 05:59 BST
    assert not is_open(org, utc(2026, 6, 20, 5, 0))
    assert next_closing(org, utc(2026, 6, 19, 22, 0)) == utc(2026, 6, 20, 5, 0)
    always = make_org()
    assert is_open(always, utc(2026, 6, 20, 3, 0))
    assert next_closing(always, utc(2026, 6, 20, 3, 0)) is None  # open past the horizon
    assert next_opening(make_org(hours={}), utc(2026, 6, 20, 3, 0)) is None


def test_closed_message_names_the_opening_in_both_zones() -> None:
    org = make_org(hours=OFFICE)
    text = closed_message(org, utc(2026, 6, 13, 12, 0), "America/New_York")  # a Saturday
    assert "Bank is closed now" in text
    assert "Monday 15 June 09:00 (Europe/London time)" in text
    assert "Monday 15 June 04:00 your time" in text
    assert "your time" not in closed_message(org, utc(2026, 6, 13, 12, 0), "Europe/London")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"hours": {"mon": [{"open": "9:00", "close": "17:00"}]}}, "hours.mon.0.open"),
        ({"hours": {"mon": [{"open": "09:00", "close": "09:00"}]}}, "hours.mon.0"),
        ({"hours": {"funday": []}}, "hours.funday"),
        (
            {
                "hours": {
                    "mon": [
                        {"open": "09:00", "close": "13:00"},
                        {"open": "12:00", "close": "17:00"},
                    ]
                }
            },
            "overlaps",
        ),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"languages": ["not a language"]}, "languages.0"),
        ({"closures": ["2026-02-30"]}, "closures.0"),
        ({"id": "Bad Id"}, "id"),
        ({"queues": []}, "queues"),
        ({"queues": [{"id": "a", "name": "A"}, {"id": "a", "name": "B"}]}, "more than once"),
        ({"queues": [{"id": "a", "name": "A", "strategy": "random"}]}, "queues.0.strategy"),
        ({"queues": [{"id": "a", "name": "A", "ring_timeout_s": 1}]}, "queues.0.ring_timeout_s"),
        ({"queues": [{"id": "a", "name": "A", "overflow": "bin"}]}, "queues.0.overflow"),
        ({"queues": [{"id": "a", "name": "A", "webhook_url": "ftp://x"}]}, "queues.0.webhook_url"),
        ({"queues": [{"id": "a", "name": "A", "surprise": 1}]}, "queues.0.surprise"),
    ],
)
def test_bad_organisations_are_refused_naming_the_field(
    change: dict[str, object], field: str
) -> None:
    body: dict[str, object] = {
        "id": "bank",
        "name": "Bank",
        "languages": ["en"],
        "timezone": "Europe/London",
        "queues": [{"id": "main", "name": "Main"}],
    }
    body.update(change)
    with pytest.raises(ValidationError) as info:
        Org.model_validate(body)
    text = str(info.value)
    where = [".".join(str(p) for p in e["loc"]) for e in info.value.errors()]
    assert any(w.startswith(field) for w in where) or field in text, (where, text)


def test_eta_and_news_rules() -> None:
    assert estimate_wait(1, 1, 2, 240) == 0
    assert estimate_wait(3, 2, 2, 240) == 120
    assert estimate_wait(3, 0, 0, 240) is None  # nobody signed in: no estimate
    assert news(None, None, 1, 0, 30, 0.25)
    assert news(2, 100, 1, 100, 30, 0.25)  # position moved
    assert not news(2, 100, 2, 110, 30, 0.25)  # 10 s is not news
    assert not news(2, 400, 2, 440, 30, 0.25)  # 40 s of 400 is not news either
    assert news(2, 100, 2, 140, 30, 0.25)
    assert news(2, 100, 2, None, 30, 0.25)


# --- callers ------------------------------------------------------------------------------------


@pytest.fixture
def hooks(broker: Broker) -> list[WebhookEvent]:
    got: list[WebhookEvent] = []
    broker.queues.webhooks.append(got.append)
    return got


async def test_five_callers_two_agents_positions_and_etas_in_order(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    await store.put_org(make_org())
    a1 = await agent(broker, "a1")
    clock.advance(1)
    a2 = await agent(broker, "a2")
    heard: dict[str, list[tuple[int | None, int | None]]] = {}
    calls: dict[str, str] = {}

    def listen(events: list[Event]) -> None:
        for s in statuses(events):
            heard[s.to].append((s.position, s.eta_s))

    rung: list[tuple[str, str]] = []
    for n in range(1, 6):
        out = await broker.request(await caller(store, f"r{n}"), org="bank")
        assert out.call is not None and out.call.state is CallState.QUEUED
        calls[f"r{n}"] = out.call.id
        heard[f"r{n}"] = [(out.call.queue_position, out.call.queue_eta_s)]
        listen(out.events)
        rung += rings(out.events)
    # The first two are rung at once, longest idle first; the others wait.
    assert rung == [("a1", calls["r1"]), ("a2", calls["r2"])]
    assert heard["r1"][0] == (1, 0) and heard["r2"][0] == (2, 0)
    assert [heard[f"r{n}"][0] for n in (3, 4, 5)] == [(3, 120), (4, 240), (5, 360)]
    # Agents take calls; each caller's position and ETA only ever go down.
    listen((await broker.accept(a1, calls["r1"])).events)
    listen((await broker.accept(a2, calls["r2"])).events)
    clock.advance(200)
    listen((await broker.end("a1", calls["r1"])).events)  # a1 is free again: rings r3
    listen((await broker.accept(a1, calls["r3"])).events)
    clock.advance(10)
    listen((await broker.end("r2", calls["r2"])).events)
    listen((await broker.accept(a2, calls["r4"])).events)
    assert heard["r2"][-1] == (1, 0)
    for name in ("r3", "r4", "r5"):
        positions = [p for p, _ in heard[name]]
        etas = [e for _, e in heard[name]]
        assert positions == sorted(positions, reverse=True), (name, heard[name])
        assert etas == sorted(etas, reverse=True), (name, heard[name])  # type: ignore[type-var]
        assert len(set(heard[name])) == len(heard[name]), "told the same thing twice"
    assert heard["r5"][-1][0] == 1
    # r3 moves up one place at a time, and hears once more when an agent is rung for it.
    assert heard["r3"] == [(3, 120), (2, 120), (1, 120), (1, 0)]
    # The average handle time now comes from the calls: 200 s then 210 s, weighted 0.2.
    assert await store.handle_time("bank", "main") == pytest.approx(200 + 0.2 * 10)


async def test_closed_organisation_names_the_next_opening(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    await store.put_org(make_org(hours=OFFICE))
    clock.set(utc(2026, 6, 20, 12, 0))  # Saturday
    rec = await caller(store, "r1", timezone="Asia/Tokyo")
    with pytest.raises(BrokerError) as info:
        await broker.request(rec, org="bank")
    assert info.value.code is ErrorCode.ORG_CLOSED
    assert "Monday 22 June 09:00 (Europe/London time)" in info.value.message
    assert "Monday 22 June 17:00 your time" in info.value.message
    assert await store.current_call("r1") is None


async def test_unknown_org_or_queue(store: MemoryStore, broker: Broker) -> None:
    await store.put_org(make_org())
    rec = await caller(store, "r1")
    for org, queue in (("nobody", None), ("bank", "nope")):
        with pytest.raises(BrokerError) as info:
            await broker.request(rec, org=org, queue=queue)
        assert info.value.code is ErrorCode.NOT_FOUND


async def test_full_queue(store: MemoryStore, broker: Broker) -> None:
    await store.put_org(make_org(max_length=2))
    for n in range(2):
        await broker.request(await caller(store, f"r{n}"), org="bank")
    with pytest.raises(BrokerError) as info:
        await broker.request(await caller(store, "late"), org="bank")
    assert info.value.code is ErrorCode.QUEUE_FULL and "full" in info.value.message
    assert await store.current_call("late") is None
    assert len(await store.queue_entries("bank", "main")) == 2


async def test_cancel_leaves_the_queue_and_counts_as_abandoned(
    store: MemoryStore, broker: Broker, clock: VirtualClock, hooks: list[WebhookEvent]
) -> None:
    await store.put_org(make_org(webhook_url="http://127.0.0.1:9/hook", webhook_secret="s" * 16))
    first = await broker.request(await caller(store, "r1"), org="bank")
    second = await broker.request(await caller(store, "r2"), org="bank")
    assert second.call is not None and second.call.queue_position == 2
    assert second.call.queue_eta_s is None  # no agent signed in: no estimate
    clock.advance(30)
    out = await broker.cancel("r1", first.call.id)  # type: ignore[union-attr]
    assert [e.reason for e in out.events if isinstance(e, Ended)] == [EndReason.CANCELLED]
    assert [(s.position, s.eta_s) for s in statuses(out.events, "r2")] == [(1, None)]
    assert [e.call_id for e in await store.queue_entries("bank", "main")] == [second.call.id]
    snap = await broker.queues.snapshot("bank")
    assert snap is not None and snap.today.abandoned == 1 and snap.today.answered == 0
    assert [h.kind for h in hooks] == ["call.queued", "call.queued", "call.ended"]
    assert hooks[-1].body["reason"] == "cancelled" and hooks[-1].body["wait_s"] == 30


async def test_replay_tells_a_queued_caller_their_place(store: MemoryStore, broker: Broker) -> None:
    await store.put_org(make_org())
    out = await broker.request(await caller(store, "r1"), org="bank")
    replay = await broker.replay("r1")
    assert replay == [Status("r1", out.call.id, CallState.QUEUED, position=1, eta_s=None)]  # type: ignore[union-attr]


# --- agents -------------------------------------------------------------------------------------


async def test_longest_idle_picks_the_agent_idle_longest(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    await store.put_org(make_org())
    a2 = await agent(broker, "a2")
    clock.advance(10)
    await agent(broker, "a3")
    clock.advance(10)
    await agent(broker, "a1")
    out = await broker.request(await caller(store, "r1"), org="bank")
    assert rings(out.events) == [("a2", out.call.id)]  # type: ignore[union-attr]
    # a2 takes it and finishes: now a3 has been idle longest, then a1, then a2.
    await broker.accept(a2, out.call.id)  # type: ignore[union-attr]
    clock.advance(60)
    await broker.end("a2", out.call.id)  # type: ignore[union-attr]
    picked = []
    for n in range(3):
        got = await broker.request(await caller(store, f"x{n}"), org="bank")
        picked += [to for to, _ in rings(got.events)]
    assert picked == ["a3", "a1", "a2"]


def test_strategies_order_free_agents() -> None:
    agents = [
        AgentRecord("a", idle_since=30, calls=0, last_rung_at=50),
        AgentRecord("b", idle_since=10, calls=5, last_rung_at=40),
        AgentRecord("c", idle_since=20, calls=1, last_rung_at=5),
    ]

    def order(strategy: str, rung: set[str] | None = None) -> list[str]:
        return [a.user_id for a in pick_order(agents, strategy, rung or set())]

    assert order("longest_idle") == ["b", "c", "a"]
    assert order("fewest_calls") == ["a", "c", "b"]
    assert order("round_robin") == ["c", "b", "a"]
    # Whoever was already rung for this call comes last.
    assert order("longest_idle", {"b"}) == ["c", "a", "b"]


@pytest.mark.parametrize(("strategy", "first"), [("longest_idle", "b"), ("fewest_calls", "a")])
async def test_a_queue_rings_by_its_strategy(
    strategy: str, first: str, store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    await store.put_org(make_org(strategy=strategy))
    b = await agent(broker, "b")
    one = await broker.request(await caller(store, "r1"), org="bank")
    await broker.accept(b, one.call.id)  # type: ignore[union-attr]
    await broker.end("b", one.call.id)  # type: ignore[union-attr]
    clock.advance(10)
    await agent(broker, "a")  # idle for less time than b, but has answered no call
    two = await broker.request(await caller(store, "r2"), org="bank")
    assert [to for to, _ in rings(two.events)] == [first]


async def test_ring_timeout_moves_to_the_next_agent(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    await store.put_org(make_org(ring_timeout_s=20))
    await agent(broker, "a1")
    clock.advance(1)
    await agent(broker, "a2")
    out = await broker.request(await caller(store, "r1"), org="bank")
    call_id = out.call.id  # type: ignore[union-attr]
    assert rings(out.events) == [("a1", call_id)]
    clock.advance(19.9)
    assert rings(await broker.fire_due()) == []
    clock.advance(0.1)
    events = await broker.fire_due()
    assert Withdrawn("a1", call_id, WithdrawReason.EXPIRED) in events
    assert rings(events) == [("a2", call_id)]
    assert (await store.agents("bank"))[0].missed == 1


async def test_three_missed_rings_set_an_agent_away(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    await store.put_org(make_org(ring_timeout_s=20))
    a1 = await agent(broker, "a1")
    out = await broker.request(await caller(store, "r1"), org="bank")
    call_id = out.call.id  # type: ignore[union-attr]
    assert rings(out.events) == [("a1", call_id)]
    told: list[Event] = []
    for n in range(3):
        clock.advance(20)
        events = await broker.fire_due()
        told += [e for e in events if isinstance(e, AgentStatusChanged)]
        assert rings(events) == ([("a1", call_id)] if n < 2 else []), n
    assert told == [AgentStatusChanged("a1", "away", "missed_rings")]
    record = (await store.agents("bank"))[0]
    assert record.state == "away" and record.missed == 3
    # Coming back clears the count and rings again.
    events = await broker.queues.set_agent_status(a1, "available")
    assert rings(events) == [("a1", call_id)]
    assert (await store.agents("bank"))[0].missed == 0


async def test_an_answered_call_ends_the_run_of_missed_rings(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    await store.put_org(make_org(ring_timeout_s=20))
    a1 = await agent(broker, "a1")
    out = await broker.request(await caller(store, "r1"), org="bank")
    for _ in range(2):
        clock.advance(20)
        await broker.fire_due()
    await broker.accept(a1, out.call.id)  # type: ignore[union-attr]
    assert (await store.agents("bank"))[0].missed == 0


async def test_wrap_up_delays_the_next_ring(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    await store.put_org(make_org(wrapup_s=30))
    a1 = await agent(broker, "a1")
    first = await broker.request(await caller(store, "r1"), org="bank")
    await broker.accept(a1, first.call.id)  # type: ignore[union-attr]
    second = await broker.request(await caller(store, "r2"), org="bank")
    assert rings(second.events) == []
    clock.advance(100)
    ended = await broker.end("r1", first.call.id)  # type: ignore[union-attr]
    assert rings(ended.events) == []  # wrap-up first
    snap = await broker.queues.snapshot("bank")
    assert snap is not None and snap.agents[0].activity == "wrap_up"
    clock.advance(29)
    assert rings(await broker.fire_due()) == []
    clock.advance(1)
    assert rings(await broker.fire_due()) == [("a1", second.call.id)]  # type: ignore[union-attr]


async def test_ringall_rings_everyone_and_one_wins(store: MemoryStore, broker: Broker) -> None:
    await store.put_org(make_org(strategy="ringall"))
    profiles = [await agent(broker, name) for name in ("a1", "a2", "a3")]
    out = await broker.request(await caller(store, "r1"), org="bank")
    call_id = out.call.id  # type: ignore[union-attr]
    assert sorted(rings(out.events)) == [("a1", call_id), ("a2", call_id), ("a3", call_id)]
    results = await asyncio.gather(
        *(broker.accept(p, call_id) for p in profiles), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BrokerError)]
    assert len(winners) == 1 and len(losers) == 2
    assert all(e.code is ErrorCode.CONFLICT for e in losers)
    won = winners[0]
    withdrawn = [e for e in won.events if isinstance(e, Withdrawn)]
    assert sorted(e.to for e in withdrawn) == sorted(
        p.user_id
        for p in profiles
        if p.user_id != won.call.helper_id  # type: ignore[union-attr]
    )
    assert all(e.reason is WithdrawReason.ANSWERED for e in withdrawn)


class Yielding:
    """A store that lets other tasks run before each operation, as a networked store does, so
    that two routers on one event loop interleave between their store calls."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0)
            return await method(*args, **kwargs)

        return call


async def test_one_agent_at_a_time_across_two_nodes(clock: VirtualClock) -> None:
    store = MemoryStore()
    node_a = Broker(Yielding(store), clock, rng=random.Random(1))  # type: ignore[arg-type]
    node_b = Broker(Yielding(store), clock, rng=random.Random(2))  # type: ignore[arg-type]
    await store.put_org(make_org())
    out = await node_a.request(await caller(store, "r1"), org="bank")  # nobody to ring yet
    assert rings(out.events) == []
    for name in ("a1", "a2", "a3"):
        await put_agent(store, name)
        await store.set_agent_state("bank", name, "available", clock.now())
    # Both nodes route the queue at once: the one call is offered to one agent only.
    both = await asyncio.gather(node_a.queues.settle("bank"), node_b.queues.settle("bank"))
    assert len(rings(both[0]) + rings(both[1])) == 1
    assert len(await store.ringing(out.call.id)) == 1  # type: ignore[union-attr]


async def test_away_while_ringing_passes_the_call_on(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    await store.put_org(make_org())
    a1 = await agent(broker, "a1")
    clock.advance(1)
    await agent(broker, "a2")
    out = await broker.request(await caller(store, "r1"), org="bank")
    call_id = out.call.id  # type: ignore[union-attr]
    events = await broker.queues.set_agent_status(a1, "away")
    assert Withdrawn("a1", call_id, WithdrawReason.EXPIRED) in events
    assert rings(events) == [("a2", call_id)]


async def test_agent_decline_passes_the_call_on(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    await store.put_org(make_org())
    await agent(broker, "a1")
    clock.advance(1)
    await agent(broker, "a2")
    out = await broker.request(await caller(store, "r1"), org="bank")
    call_id = out.call.id  # type: ignore[union-attr]
    declined = await broker.decline("a1", call_id)
    assert rings(declined.events) == [("a2", call_id)]


async def test_agents_only_answer_their_own_organisation(
    store: MemoryStore, broker: Broker
) -> None:
    await store.put_org(make_org("bank"))
    await store.put_org(make_org("chemist"))
    await agent(broker, "teller", "bank")
    stranger = await agent(broker, "pharmacist", "chemist")
    vol = Profile(user_id="vol", role=Role.VOLUNTEER, ring_window=RingWindow())
    await store.put_profile(vol)
    out = await broker.request(await caller(store, "r1"), org="bank")
    call_id = out.call.id  # type: ignore[union-attr]
    assert rings(out.events) == [("teller", call_id)]
    for outsider in (stranger, vol):
        with pytest.raises(BrokerError) as info:
            await broker.accept(outsider, call_id)
        assert info.value.code is ErrorCode.FORBIDDEN
    # The other organisation's console never shows the call.
    snap = await broker.queues.snapshot("chemist")
    assert snap is not None and snap.waiting == []
    assert [e.to for e in out.events if isinstance(e, QueueUpdate)] == ["teller"]
    with pytest.raises(BrokerError) as info:
        await broker.queues.set_agent_status(vol, "available")
    assert info.value.code is ErrorCode.FORBIDDEN


async def test_a_call_ends_normally_and_the_console_counts_it(
    store: MemoryStore, broker: Broker, clock: VirtualClock, hooks: list[WebhookEvent]
) -> None:
    await store.put_org(make_org(webhook_url="http://127.0.0.1:9/hook", webhook_secret="s" * 16))
    a1 = await agent(broker, "a1")
    await broker.queues.set_agent_status(a1, "away")
    out = await broker.request(await caller(store, "r1"), org="bank")
    call_id = out.call.id  # type: ignore[union-attr]
    clock.advance(40)
    back = await broker.queues.set_agent_status(a1, "available")
    assert rings(back) == [("a1", call_id)]
    accepted = await broker.accept(a1, call_id)
    assert sorted(e.to for e in accepted.events if isinstance(e, Assigned)) == ["a1", "r1"]
    clock.advance(90)
    ended = await broker.end("a1", call_id)
    assert {e.to for e in ended.events if isinstance(e, Ended)} == {"a1", "r1"}
    snap = await broker.queues.snapshot("bank")
    assert snap is not None
    assert (snap.today.answered, snap.today.abandoned, snap.today.average_wait_s) == (1, 0, 40)
    assert [h.kind for h in hooks] == ["call.queued", "call.assigned", "call.ended"]
    assert hooks[1].body["agent"] == "a1" and hooks[1].body["wait_s"] == 40
    assert hooks[2].body["talk_s"] == 90 and hooks[2].body["wait_s"] == 40
    assert hooks[2].body["reason"] == "completed"
    # The caller's identity stays private.
    assert all("r1" not in h.body.values() and "recipient" not in h.body for h in hooks)


async def test_console_feed(store: MemoryStore, broker: Broker, clock: VirtualClock) -> None:
    await store.put_org(make_org())
    await agent(broker, "a1")
    await put_agent(store, "a2")
    await broker.queues.set_agent_status((await store.get_profile("a2")), "away")  # type: ignore[arg-type]
    out1 = await broker.request(await caller(store, "r1"), org="bank", topic="card", language="en")
    clock.advance(5)
    out2 = await broker.request(await caller(store, "r2"), org="bank")
    updates = [e for e in out2.events if isinstance(e, QueueUpdate)]
    assert sorted(u.to for u in updates) == ["a1", "a2"]
    snap = updates[0].snapshot
    assert [(w.call, w.position, w.wait_s, w.topic) for w in snap.waiting] == [
        (out1.call.id, 1, 5, "card"),  # type: ignore[union-attr]
        (out2.call.id, 2, 0, None),  # type: ignore[union-attr]
    ]
    assert snap.waiting[0].ringing == ["a1"]
    assert [(a.id, a.state, a.activity) for a in snap.agents] == [
        ("a1", "available", "ringing"),
        ("a2", "away", "away"),
    ]
    replay = await broker.replay("a1")
    assert any(isinstance(e, QueueUpdate) and e.to == "a1" for e in replay)


# --- closing, maximum wait, overflow ------------------------------------------------------------


async def volunteer(store: MemoryStore, user_id: str = "vol") -> Profile:
    profile = Profile(
        user_id=user_id,
        role=Role.VOLUNTEER,
        display_name="Val",
        languages=["en"],
        timezone="Europe/London",
        ring_window=RingWindow.model_validate({"start": "00:00", "end": "00:00"}),
    )
    await store.put_profile(profile)
    await store.set_on_duty(user_id, True)
    await store.set_connected(user_id, True)
    return profile


@pytest.mark.parametrize("overflow", ["end", "volunteers"])
async def test_closing_with_calls_waiting(
    overflow: str, store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    await store.put_org(make_org(hours=OFFICE, overflow=overflow, max_wait_s=7200))
    await volunteer(store)
    clock.set(utc(2026, 6, 15, 15, 50))  # Monday 16:50 in London; closes at 17:00
    out = await broker.request(await caller(store, "r1"), org="bank")
    call_id = out.call.id  # type: ignore[union-attr]
    clock.advance(599)
    assert await broker.fire_due() == []
    clock.advance(1)
    events = await broker.fire_due()
    call = await store.get_call(call_id)
    assert call is not None
    if overflow == "end":
        assert [(e.to, e.reason) for e in events if isinstance(e, Ended)] == [
            ("r1", EndReason.CLOSED)
        ]
        assert call.state is CallState.ENDED
    else:
        assert statuses(events, "r1")[0].state is CallState.SEARCHING
        assert rings(events) == [("vol", call_id)]
        assert call.state is CallState.SEARCHING and call.overflowed_at == clock.now()
        won = await broker.accept(await store.get_profile("vol"), call_id)  # type: ignore[arg-type]
        assert won.call is not None and won.call.helper_role is Role.VOLUNTEER
    assert await store.queue_entries("bank", "main") == []


async def test_new_hours_move_the_deadline_of_waiting_calls(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    await store.put_org(make_org(max_wait_s=3600))  # open round the clock
    out = await broker.request(await caller(store, "r1"), org="bank")
    call_id = out.call.id  # type: ignore[union-attr]
    assert await store.deadline(f"qwait|{call_id}") == utc(2026, 6, 15, 13, 0)
    # Now open 09:00-17:00 London only, with a longer maximum wait: closing time comes first.
    await store.put_org(make_org(max_wait_s=86400, hours=OFFICE))
    assert await broker.queues.reconfigured("bank") == []
    assert await store.deadline(f"qwait|{call_id}") == utc(2026, 6, 15, 16, 0)
    clock.set(utc(2026, 6, 15, 16, 0))
    events = await broker.fire_due()
    assert [(e.to, e.reason) for e in events if isinstance(e, Ended)] == [("r1", EndReason.CLOSED)]


@pytest.mark.parametrize("overflow", ["end", "volunteers"])
async def test_maximum_wait(overflow: str, store: MemoryStore, clock: VirtualClock) -> None:
    broker = Broker(
        store,
        clock,
        DispatchSettings(ring_timeout_s=30, max_wait_s=60),
        rng=random.Random(3),
        queues=QueueSettings(),
    )
    await store.put_org(make_org(overflow=overflow, max_wait_s=300, ring_timeout_s=20))
    await volunteer(store)
    a1 = await agent(broker, "a1")
    await broker.queues.set_agent_status(a1, "away")
    out = await broker.request(await caller(store, "r1"), org="bank")
    call_id = out.call.id  # type: ignore[union-attr]
    clock.advance(299)
    assert await broker.fire_due() == []
    clock.advance(1)
    events = await broker.fire_due()
    if overflow == "end":
        assert [(e.to, e.reason) for e in events if isinstance(e, Ended)] == [
            ("r1", EndReason.NO_ANSWER)
        ]
        return
    assert rings(events) == [("vol", call_id)]
    # The volunteer search has its own full maximum wait from the overflow, not from the request.
    ring = next(e for e in events if isinstance(e, Ring))
    assert ring.expires_at == clock.now() + 30
    clock.advance(59)
    assert not [e for e in await broker.fire_due() if isinstance(e, Ended)]
    clock.advance(1)
    ended = [e for e in await broker.fire_due() if isinstance(e, Ended)]
    assert [(e.to, e.reason) for e in ended] == [("r1", EndReason.NO_ANSWER)]


async def test_overflow_withdraws_the_agent_still_ringing(
    store: MemoryStore, broker: Broker, clock: VirtualClock
) -> None:
    await store.put_org(make_org(overflow="volunteers", max_wait_s=30, ring_timeout_s=60))
    await agent(broker, "a1")
    out = await broker.request(await caller(store, "r1"), org="bank")
    call_id = out.call.id  # type: ignore[union-attr]
    clock.advance(30)
    events = await broker.fire_due()
    assert Withdrawn("a1", call_id, WithdrawReason.EXPIRED) in events
    assert await store.ring_of("a1") is None
    with pytest.raises(BrokerError):
        await broker.accept(await store.get_profile("a1"), call_id)  # type: ignore[arg-type]
