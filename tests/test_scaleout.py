"""Many nodes on one Redis: calls across nodes, a race of 1,000 accepts, and nodes or Redis
dying mid-call. Nodes are real ``vabroker serve`` processes; Redis is a real ``redis-server``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions as rex
import websockets

from broker.model import Call
from broker.store.base import StoreUnavailable
from broker.store.redis import RedisStore
from broker.store.redis_common import PromptConnection, PromptSSLConnection, WaitingPool
from signaling.auth import mint
from tests.helpers import SECRET, Client, start_server
from tests.nodes import BrokerNode, broker_nodes, wait_for
from tests.redis_procs import RedisServer

REPETITIONS = int(os.environ.get("VB_RACE_REPETITIONS", "20"))
EN = {"languages": ["en"], "timezone": "Europe/London"}


@pytest.fixture(scope="module")
def redis_for_nodes() -> Iterator[RedisServer]:
    with RedisServer.start() as server:
        yield server


@pytest.fixture
def redis_url(redis_for_nodes: RedisServer) -> str:
    if redis_for_nodes.proc is None:
        redis_for_nodes.run()
    redis_for_nodes.flush()
    return redis_for_nodes.url + "?timeout=5"


async def call_between(rec: Client, vol: Client) -> str:
    """Recipient asks, volunteer is rung and accepts; returns the call id."""
    status = await rec.request({"type": "call.request"})
    assert status["type"] == "call.status", status
    ring = await vol.expect("call.ring", timeout=10)
    assert ring["call"] == status["call"]
    assigned = await vol.request({"type": "call.accept", "call": ring["call"]})
    assert assigned["type"] == "call.assigned" and assigned["offerer"] is False, assigned
    assert (await rec.expect("call.assigned", timeout=10))["offerer"] is True
    return str(status["call"])


async def relay_both_ways(a: Client, b: Client, call: str, tag: str) -> None:
    await a.send({"type": "signal", "call": call, "data": {"sdp": {"type": "offer", "sdp": tag}}})
    got = await b.expect("signal", timeout=10)
    assert got["data"]["sdp"] == {"type": "offer", "sdp": tag}
    candidate = {"candidate": f"candidate:{tag} 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"}
    await b.send({"type": "signal", "call": call, "data": {"candidate": candidate}})
    assert (await a.expect("signal", timeout=10))["data"]["candidate"] == candidate


async def test_a_call_between_users_on_two_nodes(redis_url: str, tmp_path: Path) -> None:
    with broker_nodes(redis_url, tmp_path) as (a, b):
        vol = await a.connect("v1", "volunteer", name="Val", **EN)
        assert (await vol.request({"type": "availability", "available": True}))["available"]
        rec = await b.connect("r1", "recipient", name="Rae", **EN)
        call = await call_between(rec, vol)
        for i in range(5):  # in order, both ways
            await relay_both_ways(rec, vol, call, f"m{i}")
        ended = await vol.request({"type": "call.end", "call": call})
        assert ended["type"] == "call.ended" and ended["reason"] == "completed"
        assert (await rec.expect("call.ended", timeout=10))["by"] == "volunteer"
        await vol.close()
        await rec.close()


async def _volunteers(nodes: list[BrokerNode], n: int) -> list[Client]:
    sem = asyncio.Semaphore(100)

    async def one(i: int) -> Client:
        async with sem:
            c = await nodes[i % len(nodes)].connect(f"v{i:04d}", "volunteer", **EN)
            ok = await c.request({"type": "availability", "available": True}, timeout=30)
            assert ok["type"] == "availability" and ok["available"] is True, ok
            return c

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_a_thousand_volunteers_on_two_nodes_accept_one_call(
    redis_url: str, tmp_path: Path
) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    settings: dict[str, Any] = {
        "first_wave": 1000,
        "max_wave": 1000,
        "daily_ring_cap": 1000,
        "requests_per_hour": 1000,
        "ring_timeout_s": 120,
        "wave_interval_s": 120,
    }
    store = RedisStore.from_url(redis_url)
    with broker_nodes(redis_url, tmp_path, **settings) as nodes:
        vols = await _volunteers(nodes, 1000)
        rec = await nodes[0].connect("r1", "recipient", **EN)
        try:
            for rep in range(REPETITIONS):
                t0 = time.monotonic()
                status = await rec.request({"type": "call.request"}, timeout=60)
                assert status["type"] == "call.status" and status["notified"] == 1000, status
                call = status["call"]
                rings = await asyncio.gather(
                    *(v.expect("call.ring", timeout=60, call=call) for v in vols)
                )
                assert len(rings) == 1000
                t1 = time.monotonic()
                answers = await asyncio.gather(
                    *(v.request({"type": "call.accept", "call": call}, timeout=60) for v in vols)
                )
                won = [
                    v for v, a in zip(vols, answers, strict=True) if a["type"] == "call.assigned"
                ]
                lost = [v for v, a in zip(vols, answers, strict=True) if a["type"] == "error"]
                assert len(won) == 1, f"repetition {rep}: {len(won)} winners"
                assert len(lost) == 999
                codes = Counter((a["code"], a["message"]) for a in answers if a["type"] == "error")
                assert set(codes) == {("conflict", "Someone else answered this call first.")}, codes
                withdrawn = await asyncio.gather(
                    *(v.expect("call.withdrawn", timeout=60, call=call) for v in lost)
                )
                assert {w["reason"] for w in withdrawn} == {"answered"}
                t2 = time.monotonic()
                print(f"repetition {rep}: rung in {t1 - t0:.2f} s, race settled in {t2 - t1:.2f} s")
                assert await store.ringing(call) == []
                assert all(await asyncio.gather(*(store.ring_of(v.sub) for v in vols))) is False
                await rec.expect("call.assigned", timeout=30, call=call)
                ended = await rec.request({"type": "call.end", "call": call}, timeout=30)
                assert ended["type"] == "call.ended", ended
                await won[0].expect("call.ended", timeout=30, call=call)
        finally:
            await store.close()
            await asyncio.gather(*(v.close() for v in vols), return_exceptions=True)


async def test_node_killed_mid_call_both_parties_resume_on_the_other(
    redis_url: str, tmp_path: Path
) -> None:
    with broker_nodes(redis_url, tmp_path, grace_s=30) as (a, b):
        vol = await a.connect("v1", "volunteer", **EN)
        await vol.request({"type": "availability", "available": True})
        rec = await a.connect("r1", "recipient", **EN)
        call = await call_between(rec, vol)
        await relay_both_ways(rec, vol, call, "before")
        tokens = (vol.welcome["resume"], rec.welcome["resume"])
        a.kill(signal.SIGKILL)
        vol2 = await b.connect("v1", "volunteer", resume=tokens[0], **EN)
        rec2 = await b.connect("r1", "recipient", resume=tokens[1], **EN)
        assert vol2.welcome["session"] == vol.welcome["session"]
        again = await vol2.expect("call.assigned", timeout=10)
        assert again["call"] == call and again["resumed"] is True and again["offerer"] is False
        assert (await rec2.expect("call.assigned", timeout=10))["resumed"] is True
        await relay_both_ways(rec2, vol2, call, "after")
        # Node A's sessions are taken over once it stops beating; the call stays up because
        # both parties came back within the grace period.
        store = RedisStore.from_url(redis_url)
        try:
            await wait_for(
                lambda: _not_in(store, "node-A"), "node-A to be declared dead", timeout=10
            )
            assert await store.is_connected("v1") and await store.is_connected("r1")
            ended = await rec2.request({"type": "call.end", "call": call})
            assert ended["type"] == "call.ended" and ended["reason"] == "completed"
        finally:
            await store.close()


async def _not_in(store: RedisStore, node: str) -> bool:
    return bool(await store.r.zscore("vb:nodes", node) is None)


async def test_node_killed_mid_search_the_other_node_carries_on(
    redis_url: str, tmp_path: Path
) -> None:
    settings = {
        "first_wave": 1,
        "wave_growth": 1.0,
        "wave_interval_s": 0.5,
        "ring_timeout_s": 5,
        "max_wait_s": 3,
        "grace_s": 30,
    }
    with broker_nodes(redis_url, tmp_path, **settings) as (a, b):
        vols = [await (a if i % 2 else b).connect(f"v{i}", "volunteer", **EN) for i in range(4)]
        for v in vols:
            await v.request({"type": "availability", "available": True})
        rec = await a.connect("r1", "recipient", **EN)
        status = await rec.request({"type": "call.request"})
        call = status["call"]
        a.kill(signal.SIGKILL)
        # Node B fires the waves node A had scheduled: volunteers on B keep being rung (a ring
        # node A had not yet handed on when it died is lost with it; its expiry is not).
        on_b = [v for i, v in enumerate(vols) if i % 2 == 0]
        waiting = [
            asyncio.ensure_future(v.expect("call.ring", timeout=10, call=call)) for v in on_b
        ]
        done, pending = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        assert any(task.exception() is None for task in done)
        rec2 = await b.connect("r1", "recipient", resume=rec.welcome["resume"], **EN)
        ended = await rec2.expect("call.ended", timeout=10, call=call)
        assert ended["reason"] == "no_answer"
        for v in on_b:
            assert (await v.expect("call.withdrawn", timeout=10, call=call))["reason"] == "expired"
        store = RedisStore.from_url(redis_url)
        try:
            assert await store.ringing(call) == []
            for i in range(4):
                assert await store.ring_of(f"v{i}") is None
        finally:
            await store.close()


@pytest.fixture
def redis_with_aof() -> Iterator[RedisServer]:
    with RedisServer.start(aof=True) as server:
        yield server


async def test_the_store_s_pooled_connections_are_made_again_after_a_redis_restart(
    redis_with_aof: RedisServer,
) -> None:
    """Connections the store pooled before Redis restarted are closed by then: each is made
    again when taken from the pool, not tried once and failed (commands are not retried)."""
    store = RedisStore.from_url(redis_with_aof.url)
    try:
        assert await store.create_call(
            Call(id="c_1", recipient_id="r1", language="en", requested_at=1.0)
        )
        # Many reads at once: many connections in the pool.
        assert all(await asyncio.gather(*(store.get_call("c_1") for _ in range(16))))
        redis_with_aof.stop()
        redis_with_aof.run()

        async def answers() -> bool:
            try:
                await store.ping()
            except StoreUnavailable:
                return False
            return True

        await wait_for(answers, "Redis to answer again")
        got = await asyncio.gather(
            *(store.get_call("c_1") for _ in range(16)), return_exceptions=True
        )
        assert [c.id if isinstance(c, Call) else repr(c) for c in got] == ["c_1"] * 16
    finally:
        await store.close()


def _store_with_pool(url: str, size: int, wait_s: float) -> tuple[RedisStore, WaitingPool]:
    target = url.partition("?")[0]  # the store's own options are not redis-py's
    pool = WaitingPool.from_url(target, decode_responses=True, max_connections=size, wait_s=wait_s)
    return RedisStore(aioredis.Redis(connection_pool=pool)), pool


async def test_commands_beyond_the_pool_s_size_wait_for_a_connection(redis_url: str) -> None:
    """Sixty reads at once through a pool of three: each waits its turn for a connection
    instead of failing (redis-py's plain pool refuses the fourth at once)."""
    store, pool = _store_with_pool(redis_url, size=3, wait_s=5.0)
    try:
        assert await store.create_call(
            Call(id="c_1", recipient_id="r1", language="en", requested_at=1.0)
        )
        got = await asyncio.gather(*(store.get_call("c_1") for _ in range(60)))
        assert [c.id if c else None for c in got] == ["c_1"] * 60
        assert len(pool._available_connections) + len(pool._in_use_connections) <= 3
        assert not pool._waiters
    finally:
        await store.close()


async def test_a_command_kept_waiting_for_a_connection_too_long_is_unavailable(
    redis_url: str,
) -> None:
    """The pool's only connection is held (a blocking read of two seconds): a read waits 0.3
    s for it, then is refused as ``StoreUnavailable``; once it is free, reads work again."""
    store, pool = _store_with_pool(redis_url, size=1, wait_s=0.3)
    try:
        holding = asyncio.create_task(store.r.blpop(["nothing"], timeout=2))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.get_call("c_1")
        assert 0.25 <= time.monotonic() - started < 1.5
        assert not pool._waiters
        assert await holding is None
        assert await store.get_call("c_1") is None
    finally:
        await store.close()


async def test_a_waiter_cancelled_as_it_is_woken_passes_its_turn_on(redis_url: str) -> None:
    """A connection given back wakes the first waiter; if that one is cancelled before it
    runs, the next waiter gets the connection rather than waiting out its time."""
    _, pool = _store_with_pool(redis_url, size=1, wait_s=5.0)
    try:
        held = await pool.get_connection()
        first = asyncio.create_task(pool.get_connection())
        second = asyncio.create_task(pool.get_connection())
        await asyncio.sleep(0.05)
        assert len(pool._waiters) == 2
        await pool.release(held)
        first.cancel()
        connection = await asyncio.wait_for(second, timeout=1.0)
        assert first.cancelled()
        await pool.release(connection)
        assert not pool._waiters
    finally:
        await pool.aclose()


async def test_a_write_redis_does_not_take_fails_after_the_socket_timeout() -> None:
    """Commands are written without a timer while the socket takes them; a write to a Redis
    that stopped reading (SIGSTOP) fills the socket and fails after the socket timeout rather
    than hang; once Redis reads again, the store is used again and the half-written command
    was not run. Over TLS or not, the store's connections write this way."""
    assert WaitingPool.from_url("rediss://127.0.0.1:1/0").connection_class is PromptSSLConnection
    with RedisServer.start() as server:
        store = RedisStore.from_url(server.url + "?timeout=0.5")
        assert store.r.connection_pool.connection_class is PromptConnection
        try:
            await store.r.set("k", "v")
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(rex.TimeoutError, match="Timeout writing to socket"):
                    await store.r.set("big", "x" * 32_000_000)
                assert time.monotonic() - started < 5
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            assert await store.r.get("k") == "v"
            assert await store.r.get("big") is None
        finally:
            await store.close()


async def test_redis_stopped_mid_search_then_back(
    redis_with_aof: RedisServer, tmp_path: Path
) -> None:
    """With AOF on, an open call outlives a Redis restart; meanwhile requests are refused with
    ``unavailable`` and readiness fails; afterwards the same nodes serve again."""
    settings = {"first_wave": 1, "wave_interval_s": 60, "ring_timeout_s": 60, "max_wait_s": 120}
    redis_for_nodes = redis_with_aof
    redis_url = redis_with_aof.url + "?timeout=2"
    with broker_nodes(redis_url, tmp_path, **settings) as (a, b):
        vol = await b.connect("v1", "volunteer", **EN)
        await vol.request({"type": "availability", "available": True})
        rec = await a.connect("r1", "recipient", **EN)
        status = await rec.request({"type": "call.request"})
        call = status["call"]
        ring = await vol.expect("call.ring", timeout=10)
        assert ring["call"] == call
        redis_for_nodes.stop()
        await wait_for(_async(lambda: a.ready() == 503), "node A to report not ready")
        refused = await rec.request({"type": "call.cancel", "call": call}, timeout=10)
        assert refused["type"] == "error" and refused["code"] == "unavailable"
        assert "unavailable" in refused["message"]
        refused = await vol.request({"type": "call.accept", "call": call}, timeout=10)
        assert refused["code"] == "unavailable"
        redis_for_nodes.run()
        await wait_for(_async(lambda: a.ready() == 200 and b.ready() == 200), "readiness")
        # The call survived (AOF) and the ring is still good: accepting it connects them.
        assigned = await vol.request({"type": "call.accept", "call": call}, timeout=10)
        assert assigned["type"] == "call.assigned", assigned
        assert (await rec.expect("call.assigned", timeout=10))["call"] == call
        await relay_both_ways(rec, vol, call, "after-restart")


def _async(check: Any) -> Any:
    async def run() -> bool:
        return bool(await asyncio.to_thread(check))

    return run


# --- ending sessions on every node --------------------------------------------------------------


@contextlib.asynccontextmanager
async def two_nodes(redis_url: str, tmp_path: Path, **settings: Any) -> AsyncIterator[Any]:
    """Node B a ``vabroker serve`` process, node A in this process (so that the test can call
    its hub, as an admin route would), on one Redis."""
    with broker_nodes(redis_url, tmp_path, count=1, **settings) as (b,):
        async with start_server(
            store_url=redis_url, node_id="node-in", node_beat_s=0.5, node_ttl_s=4, **settings
        ) as a:
            yield a, b


async def test_revoking_a_user_ends_their_sessions_on_every_node(
    redis_url: str, tmp_path: Path
) -> None:
    async with two_nodes(redis_url, tmp_path) as (a, b):
        here = await a.connect("v1", "volunteer")
        there = await b.connect("v1", "volunteer")
        bystander = await b.connect("v2", "volunteer")
        before = await a.ctx.hub.revoke("v1", error_code="suspended", message="Banned.")
        for client in (here, there):
            got, code = await client.until_closed(timeout=10)
            assert code == 4403
            assert got[-1] == {"type": "error", "code": "suspended", "message": "Banned."}
        assert (await bystander.request({"type": "ping"}))["type"] == "pong"
        # The revocation is in the store: node B refuses a token issued before it.
        ws = await websockets.connect(b.ws_url, proxy=None)
        late = Client(ws, "v1")
        old = mint(SECRET, "v1", "volunteer", ttl_s=3600, now=before - 5)
        answer = await late.request({"type": "hello", "token": old}, timeout=10)
        assert answer["type"] == "error" and answer["code"] == "unauthenticated"
        assert (await late.until_closed(timeout=10))[1] == 4401
        await bystander.close()


async def test_the_session_cap_counts_sessions_on_every_node(
    redis_url: str, tmp_path: Path
) -> None:
    async with two_nodes(redis_url, tmp_path, max_sessions_per_user=2) as (a, b):
        # Left behind by a node that lost Redis as a session closed: it must not count.
        stale = "node-gone|s_stale"
        await a.ctx.store.r.zadd("vb:sessions:{u:v1}", {stale: 1.0})
        first = await a.connect("v1", "volunteer")
        second = await b.connect("v1", "volunteer")
        third = await a.connect("v1", "volunteer")  # the oldest, on this node, closes
        got, code = await first.until_closed(timeout=10)
        assert code == 4409 and got[-1]["code"] == "conflict"
        fourth = await a.connect("v1", "volunteer")  # the oldest is now on node B
        got, code = await second.until_closed(timeout=10)
        assert code == 4409 and got[-1]["code"] == "conflict"
        for client in (third, fourth):
            assert (await client.request({"type": "ping"}))["type"] == "pong"
            await client.close()
        assert await a.ctx.store.r.zscore("vb:sessions:{u:v1}", stale) is None
