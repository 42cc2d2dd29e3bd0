"""The store contract for partner organisations, queues and agents.

Every test runs on the memory store, on a real ``redis-server`` and on a local 3-master Redis
Cluster, both started by the tests on free loopback ports. A backend opens any number of
clients onto one shared state (for the memory store, the same object; for Redis, separate
connections), so the same tests prove that the atomic steps hold across nodes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.clock import VirtualClock
from broker.model import Call, CallState, EndReason, Role
from broker.service import Broker
from broker.store import open_store
from broker.store.base import Store
from broker.store.memory import MemoryStore
from broker.store.sqlite import SqliteStore
from tests.queue_helpers import caller, make_org, put_agent, rings
from tests.redis_procs import RedisClusterProcs, RedisServer

OpenClient = Callable[[], Store]


NOW = 1_781_524_800.0  # 2026-06-15 12:00 UTC, a Monday


@pytest.fixture(scope="session")
def queue_redis() -> Iterator[RedisServer]:
    with RedisServer.start() as server:
        yield server


@pytest.fixture(scope="session")
def queue_cluster() -> Iterator[RedisClusterProcs]:
    with RedisClusterProcs.start() as cluster:
        yield cluster


@pytest.fixture(params=["memory", "sqlite", "redis", "cluster"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenClient]:
    """A function that opens clients onto one shared state: the same memory store, or new
    connections to one real redis-server / local 3-master Redis Cluster (flushed first)."""
    if request.param == "memory":
        shared = MemoryStore()
        yield lambda: shared
        return
    if request.param == "sqlite":
        # One process, one store: every "client" is the same store over one file.
        durable = SqliteStore(tmp_path / "broker.db")
        yield lambda: durable
        await durable.close()
        reopened = SqliteStore(tmp_path / "broker.db", recover=False, now=lambda: NOW)
        assert reopened.durable_state() == durable.durable_state()
        await reopened.close()
        return
    procs: RedisServer | RedisClusterProcs = request.getfixturevalue(
        "queue_redis" if request.param == "redis" else "queue_cluster"
    )
    procs.flush()
    clients: list[Store] = []

    def open_client() -> Store:
        clients.append(open_store(procs.url))
        return clients[-1]

    try:
        yield open_client
    finally:
        for client in clients:
            await client.close()


@pytest.fixture
def store(backend: OpenClient) -> Store:
    return backend()


async def connected(backend: OpenClient, n: int) -> list[Store]:
    """``n`` clients, each connected before the race starts."""
    clients = [backend() for _ in range(n)]
    for client in clients:
        await client.ping()
    return clients


async def queued_call(store: Store, call_id: str, org: str = "bank", **fields: Any) -> Call:
    call = Call(
        id=call_id,
        recipient_id=f"rec-{call_id}",
        language="en",
        languages=["en"],
        org=org,
        queue="main",
        state=CallState.QUEUED,
        requested_at=NOW,
        enqueued_at=NOW,
        **fields,
    )
    assert await store.create_call(call)
    return call


async def free_agent(store: Store, user_id: str, org: str = "bank") -> None:
    await put_agent(store, user_id, org)
    await store.set_agent_state(org, user_id, "available", NOW)


# --- organisations ------------------------------------------------------------------------------


async def test_organisations_are_stored_and_replaced(store: Store) -> None:
    assert await store.get_org("bank") is None
    assert await store.list_orgs() == []
    await store.put_org(make_org("bank"))
    await store.put_org(make_org("atlas", max_length=7))
    assert [o.id for o in await store.list_orgs()] == ["atlas", "bank"]
    await store.put_org(make_org("bank", strategy="ringall"))
    bank = await store.get_org("bank")
    assert bank is not None and bank.queues[0].strategy == "ringall"
    assert bank == make_org("bank", strategy="ringall")


# --- queues -------------------------------------------------------------------------------------


async def test_enqueue_positions_limit_and_order(store: Store) -> None:
    for n in range(3):
        assert await store.enqueue("bank", "main", f"c{n}", NOW + n, 3) == n + 1
    assert await store.enqueue("bank", "main", "c3", NOW + 3, 3) is None  # full
    assert await store.enqueue("bank", "main", "c1", NOW + 9, 3) == 2  # already in: keeps place
    entries = await store.queue_entries("bank", "main")
    assert [(e.call_id, e.enqueued_at) for e in entries] == [
        ("c0", NOW),
        ("c1", NOW + 1),
        ("c2", NOW + 2),
    ]
    assert await store.dequeue("bank", "main", "c1")
    assert not await store.dequeue("bank", "main", "c1")
    assert [e.call_id for e in await store.queue_entries("bank", "main")] == ["c0", "c2"]
    assert await store.enqueue("bank", "main", "c4", NOW + 4, 3) == 3  # room again, at the back
    # Queues are separate: another queue, another organisation.
    assert await store.enqueue("bank", "other", "c5", NOW, 3) == 1
    assert await store.enqueue("atlas", "main", "c6", NOW, 3) == 1
    assert await store.queue_entries("nobody", "main") == []


async def test_queue_calls_reads_the_queue_with_its_calls(store: Store) -> None:
    await queued_call(store, "c1")
    await store.enqueue("bank", "main", "c1", NOW, 10)
    await store.enqueue("bank", "main", "ghost", NOW + 1, 10)  # its call was never created
    got = await store.queue_calls("bank", "main")
    assert [(e.call_id, e.enqueued_at) for e, _ in got] == [("c1", NOW), ("ghost", NOW + 1)]
    first = got[0][1]
    assert first is not None and first.id == "c1" and got[1][1] is None
    first.languages.append("xx")  # a copy: changing it changes nothing stored
    again = (await store.queue_calls("bank", "main"))[0][1]
    assert again is not None and again.languages == ["en"]


async def test_concurrent_enqueues_never_exceed_the_limit(backend: OpenClient) -> None:
    clients = await connected(backend, 4)
    results = await asyncio.gather(
        *(clients[n % 4].enqueue("bank", "main", f"c{n}", NOW, 25) for n in range(100))
    )
    accepted = [r for r in results if r is not None]
    assert sorted(accepted) == list(range(1, 26))
    assert len(await clients[0].queue_entries("bank", "main")) == 25


# --- agents -------------------------------------------------------------------------------------


async def test_agent_states(store: Store) -> None:
    await put_agent(store, "a1")
    assert await store.agents("bank") == []
    record = await store.set_agent_state("bank", "a1", "available", NOW)
    assert (record.state, record.since, record.idle_since, record.missed) == (
        "available",
        NOW,
        NOW,
        0,
    )
    assert record.connected and not record.busy and record.ringing is None
    named = await store.set_agent_state("bank", "a1", "available", NOW, "Ann")
    assert named.display_name == "Ann" and named.since == NOW
    # Setting the same state again changes nothing.
    again = await store.set_agent_state("bank", "a1", "available", NOW + 50)
    assert again.since == NOW
    assert await store.agent_missed("bank", "a1") == 1
    assert await store.agent_missed("bank", "a1") == 2
    await store.set_agent_state("bank", "a1", "away", NOW + 60)
    back = await store.set_agent_state("bank", "a1", "available", NOW + 70)
    assert back.missed == 0 and back.idle_since == NOW + 70
    await store.set_connected("a1", False)
    assert not (await store.agents("bank"))[0].connected
    # Moving to another organisation leaves the old one.
    await store.set_agent_state("atlas", "a1", "available", NOW + 80)
    assert await store.agents("bank") == []
    assert [a.user_id for a in await store.agents("atlas")] == ["a1"]


async def test_answered_released_and_wrap_up(store: Store) -> None:
    await free_agent(store, "a1")
    await store.agent_missed("bank", "a1")
    await store.agent_answered("bank", "a1")
    record = (await store.agents("bank"))[0]
    assert (record.missed, record.calls) == (0, 1)
    await store.agent_released("bank", "a1", NOW + 100, NOW + 130)
    record = (await store.agents("bank"))[0]
    assert record.wrapup_until == NOW + 130 and record.idle_since == NOW + 130
    assert not record.free(NOW + 129) and record.free(NOW + 130)
    # Unknown agents are ignored, not invented.
    await store.agent_answered("bank", "ghost")
    await store.agent_released("bank", "ghost", NOW, NOW)
    assert await store.agent_missed("bank", "ghost") == 0
    assert [a.user_id for a in await store.agents("bank")] == ["a1"]


async def test_reserve_agent_ring_rules(store: Store) -> None:
    await queued_call(store, "c1")
    await free_agent(store, "ok")
    await free_agent(store, "away")
    await store.set_agent_state("bank", "away", "away", NOW)
    await free_agent(store, "offline")
    await store.set_connected("offline", False)
    await free_agent(store, "wrapping")
    await store.agent_released("bank", "wrapping", NOW, NOW + 30)
    await free_agent(store, "stranger", org="atlas")
    await put_agent(store, "unknown")  # never set a state
    for user_id in ("away", "offline", "wrapping", "stranger", "unknown"):
        assert not await store.reserve_agent_ring("c1", "bank", user_id, NOW, True), user_id
    assert await store.reserve_agent_ring("c1", "bank", "ok", NOW, True)
    assert await store.ringing("c1") == ["ok"] and await store.ring_of("ok") == "c1"
    assert "ok" in await store.rung("c1")
    record = next(a for a in await store.agents("bank") if a.user_id == "ok")
    assert record.ringing == "c1" and record.last_rung_at == NOW
    # Ringing already: not for a second call.
    await queued_call(store, "c2")
    assert not await store.reserve_agent_ring("c2", "bank", "ok", NOW, True)
    # Past the wrap-up, the agent may be rung; a call that is not queued may not.
    assert await store.reserve_agent_ring("c2", "bank", "wrapping", NOW + 30, True)
    await store.finish("c2", EndReason.CANCELLED, Role.RECIPIENT, NOW + 31)
    assert await store.ring_of("wrapping") is None
    assert not await store.reserve_agent_ring("c2", "bank", "wrapping", NOW + 31, True)
    assert not await store.reserve_agent_ring("missing", "bank", "wrapping", NOW + 31, True)


async def test_exclusive_rings_one_agent_per_call_ringall_many(store: Store) -> None:
    await queued_call(store, "c1")
    await queued_call(store, "c2")
    for name in ("a1", "a2", "a3"):
        await free_agent(store, name)
    assert await store.reserve_agent_ring("c1", "bank", "a1", NOW, True)
    assert not await store.reserve_agent_ring("c1", "bank", "a2", NOW, True)
    assert await store.reserve_agent_ring("c2", "bank", "a2", NOW, False)
    assert await store.reserve_agent_ring("c2", "bank", "a3", NOW, False)
    assert await store.ringing("c2") == ["a2", "a3"]
    # First accept wins, the other ring is released, and the agent is busy.
    won = await store.assign("c2", "a3", "A3", Role.AGENT, NOW + 5)
    assert won is not None and won.withdrawn == ["a2"] and won.call.helper_role is Role.AGENT
    assert await store.assign("c2", "a2", "A2", Role.AGENT, NOW + 5) is None
    by_id = {a.user_id: a for a in await store.agents("bank")}
    assert by_id["a3"].busy and by_id["a2"].ringing is None and by_id["a2"].free(NOW + 5)


async def test_concurrent_rings_for_one_call_give_it_one_agent(backend: OpenClient) -> None:
    clients = await connected(backend, 4)
    await queued_call(clients[0], "c1")
    names = [f"a{n:02d}" for n in range(40)]
    for name in names:
        await free_agent(clients[0], name)
    results = await asyncio.gather(
        *(
            clients[n % 4].reserve_agent_ring("c1", "bank", name, NOW, True)
            for n, name in enumerate(names)
        )
    )
    assert sum(results) == 1
    assert len(await clients[1].ringing("c1")) == 1


async def test_concurrent_rings_for_one_agent_give_them_one_call(backend: OpenClient) -> None:
    clients = await connected(backend, 4)
    for n in range(20):
        await queued_call(clients[0], f"c{n:02d}")
    await free_agent(clients[0], "a1")
    results = await asyncio.gather(
        *(
            clients[n % 4].reserve_agent_ring(f"c{n:02d}", "bank", "a1", NOW, False)
            for n in range(20)
        )
    )
    assert sum(results) == 1


async def test_hand_to_volunteers(store: Store) -> None:
    await queued_call(store, "c1")
    await free_agent(store, "a1")
    assert await store.reserve_agent_ring("c1", "bank", "a1", NOW, True)
    handed = await store.hand_to_volunteers("c1", NOW + 60)
    assert handed is not None and handed.withdrawn == ["a1"]
    assert handed.call.state is CallState.SEARCHING and handed.call.overflowed_at == NOW + 60
    assert await store.ring_of("a1") is None
    stored = await store.get_call("c1")
    assert stored is not None and stored.state is CallState.SEARCHING
    assert stored.search_started_at == NOW + 60
    assert await store.hand_to_volunteers("c1", NOW + 61) is None  # once only
    assert await store.hand_to_volunteers("missing", NOW) is None


async def test_queue_figures(store: Store) -> None:
    empty = await store.queue_day_stats("bank", "2026-06-15")
    assert (empty.answered, empty.abandoned, empty.average_wait_s) == (0, 0, None)
    await store.count_queue_outcome("bank", "2026-06-15", True, 30)
    await store.count_queue_outcome("bank", "2026-06-15", True, 50)
    await store.count_queue_outcome("bank", "2026-06-15", False, 99)
    await store.count_queue_outcome("bank", "2026-06-16", True, 5)
    day = await store.queue_day_stats("bank", "2026-06-15")
    assert (day.answered, day.abandoned, day.average_wait_s) == (2, 1, 40)
    assert await store.handle_time("bank", "main") is None
    assert await store.record_handle_time("bank", "main", 100, 0.5) == 100
    assert await store.record_handle_time("bank", "main", 200, 0.5) == 150
    assert await store.handle_time("bank", "main") == 150
    assert await store.handle_time("bank", "other") is None


# --- two nodes on one store ---------------------------------------------------------------------


async def test_two_nodes_share_one_queue(backend: OpenClient) -> None:
    clock = VirtualClock(NOW)
    node_a = Broker(backend(), clock, rng=random.Random(1))
    node_b = Broker(backend(), clock, rng=random.Random(2))
    await node_a.store.put_org(make_org(ring_timeout_s=20))
    calls = []
    for n in range(3):
        out = await node_a.request(await caller(node_a.store, f"r{n}"), org="bank")
        calls.append(out.call.id)  # type: ignore[union-attr]
    # Node A dies here. Node B knows the queue, in order, and routes it.
    entries = await node_b.store.queue_entries("bank", "main")
    assert [e.call_id for e in entries] == calls
    await put_agent(node_b.store, "a1")
    a1 = await node_b.store.get_profile("a1")
    assert a1 is not None
    events = await node_b.queues.set_agent_status(a1, "available")
    assert rings(events) == [("a1", calls[0])]
    # The ring lapses; node B's timers find it (they are data), and ring the same agent again.
    clock.advance(20)
    assert rings(await node_b.fire_due()) == [("a1", calls[0])]
    won = await node_b.accept(a1, calls[0])
    assert won.call is not None and won.call.helper_id == "a1"
    assert [e.call_id for e in await node_a.store.queue_entries("bank", "main")] == calls[1:]
