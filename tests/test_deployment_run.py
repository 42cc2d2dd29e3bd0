"""The compose deployment, run: redis-server, two ``vabroker serve`` nodes, HAProxy and coturn
with the files in ``deploy/`` (tests/deployment.py). Clients know only the balancer's address
and use the SDK, which resumes through it when a node goes away.

Run alone with ``pytest -m deploy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from broker.store.redis import RedisStore
from clients.sdk import Client, Conflict, ConnectionLost, NotFound
from signaling.auth import mint
from tests.deployment import Deployment
from tests.helpers import SECRET
from tests.nodes import BrokerNode, wait_for

pytestmark = pytest.mark.deploy

EN: dict[str, Any] = {"languages": ["en"], "timezone": "Europe/London"}
# Long enough that a party whose node died is never given up on while it reconnects.
SETTINGS: dict[str, Any] = {"grace_s": 30, "daily_ring_cap": 1000, "requests_per_hour": 1000}


@dataclass
class Party:
    """One user through the balancer: the SDK client and every message it was given."""

    sub: str
    client: Client
    events: list[Any] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def join(cls, d: Deployment, sub: str, role: str) -> Party:
        token = mint(SECRET, sub, role, name=sub, **EN)
        party = cls(sub, Client(d.ws_url, token, resume_within_s=40, request_timeout_s=10))
        party.client.listeners.append(party._on)
        await party.client.connect()
        return party

    def _on(self, message: Any) -> None:
        self.events.append(message)
        self.arrived.set()

    async def next(self, type_: str, timeout: float = 20.0, **match: Any) -> Any:
        """The first message of ``type_`` (matching ``match``) not yet taken."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, m in enumerate(self.events):
                if m.type == type_ and all(getattr(m, k, None) == v for k, v in match.items()):
                    return self.events.pop(i)
            self.arrived.clear()
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"{self.sub}: no {type_} {match} within {timeout} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)

    async def connected(self, timeout: float = 40.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.client.connected:
            if loop.time() > deadline:
                raise TimeoutError(f"{self.sub} did not reconnect within {timeout} s")
            await asyncio.sleep(0.05)

    async def send(self, message: dict[str, Any]) -> None:
        """Send, waiting out a reconnection (a message that could not be sent is sent after)."""
        while True:
            try:
                await self.client.send(message)
                return
            except ConnectionLost:
                await self.connected()

    async def end(self, call: str) -> str:
        """End the call; if the connection dropped with the request in flight, ask again after
        the resume (an already ended call answers ``conflict``). The reason it ended with."""
        while True:
            try:
                answer = await self.client.request({"type": "call.end", "call": call})
                return str(answer.reason)
            except ConnectionLost:
                await self.connected()
            except Conflict:
                return str((await self.next("call.ended", call=call)).reason)

    async def close(self) -> None:
        await self.client.close()


async def stop(node: BrokerNode, how: signal.Signals) -> None:
    """Stop a node while the clients' event loop keeps running: they see the node's
    ``reconnect`` and its closing socket as they happen, as clients do."""
    await asyncio.to_thread(node.kill, how)


async def node_of(r: aioredis.Redis, sub: str) -> set[str]:
    members = await r.zrange(f"vb:sessions:{{u:{sub}}}", 0, -1)
    return {m.decode().split("|", 1)[0] for m in members}


async def _only_on(r: aioredis.Redis, sub: str, node: str) -> bool:
    return await node_of(r, sub) == {node}


@contextlib.asynccontextmanager
async def store_of(d: Deployment) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(d.redis.url)
    try:
        yield store
    finally:
        await store.close()


async def nothing_left_ringing(d: Deployment, calls: list[str], subs: list[str]) -> None:
    async with store_of(d) as store:
        for call in calls:
            assert await store.ringing(call) == [], f"call {call} still rings"
        for sub in subs:
            assert await store.ring_of(sub) is None, f"{sub} is still rung"
            assert await store.current_call(sub) is None, f"{sub} still has a call"


async def relay(a: Party, b: Party, call: str, tag: str, timeout: float = 10.0) -> None:
    """A signal each way, delivered (the parties may be resuming: sends wait for that)."""
    await a.send({"type": "signal", "call": call, "data": {"sdp": {"type": "offer", "sdp": tag}}})
    got = await b.next("signal", call=call, timeout=timeout)
    assert got.data["sdp"]["sdp"] == tag
    candidate = {"candidate": f"candidate:{tag} 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"}
    await b.send({"type": "signal", "call": call, "data": {"candidate": candidate}})
    assert (await a.next("signal", call=call, timeout=timeout)).data["candidate"] == candidate


async def open_calls(d: Deployment, r: aioredis.Redis) -> list[tuple[Party, Party, str]]:
    """Four calls through the balancer, at least one between parties on different nodes."""
    pairs: list[tuple[Party, Party, str]] = []
    for i in range(4):
        # One volunteer free at a time: each call rings exactly its volunteer.
        vol = await Party.join(d, f"v{i}", "volunteer")
        rec = await Party.join(d, f"r{i}", "recipient")
        await vol.client.request({"type": "availability", "available": True})
        status = await rec.client.request({"type": "call.request"})
        ring = await vol.next("call.ring", call=status.call)
        await vol.client.request({"type": "call.accept", "call": ring.call})
        assert (await rec.next("call.assigned", call=status.call)).offerer is True
        pairs.append((rec, vol, status.call))
    homes = {p.sub: await node_of(r, p.sub) for rec, vol, _ in pairs for p in (rec, vol)}
    assert all(len(h) == 1 for h in homes.values()), homes
    assert any(homes[rec.sub] != homes[vol.sub] for rec, vol, _ in pairs), homes
    for rec, vol, call in pairs:
        await relay(rec, vol, call, "before")
    return pairs


async def end_calls(d: Deployment, pairs: list[tuple[Party, Party, str]]) -> None:
    """Every call ends completed for both parties, and nobody is left rung or in a call."""
    for rec, vol, call in pairs:
        assert await rec.end(call) == "completed"
        assert (await vol.next("call.ended", call=call)).reason == "completed"
    subs = [p.sub for rec, vol, _ in pairs for p in (rec, vol)]
    await nothing_left_ringing(d, [c for *_, c in pairs], subs)
    for rec, vol, _ in pairs:
        await rec.close()
        await vol.close()


async def test_a_node_stopped_cleanly_hands_its_calls_over(tmp_path: Path) -> None:
    with Deployment.start(tmp_path, **SETTINGS) as d:
        r = aioredis.Redis.from_url(d.redis.url)
        try:
            pairs = await open_calls(d, r)
            a, b = d.node("broker-a"), d.node("broker-b")
            everyone = [p for rec, vol, _ in pairs for p in (rec, vol)]
            on_a = [p for p in everyone if await node_of(r, p.sub) == {a.name}]
            assert on_a, "the balancer sent nobody to node A"
            # Node A tells its clients to reconnect; they resume on B, through the balancer.
            await stop(a, signal.SIGTERM)
            for p in on_a:
                again = await p.next("call.assigned", resumed=True, timeout=30)
                assert again.call in {c for *_, c in pairs}
            for rec, vol, call in pairs:
                await relay(rec, vol, call, "after-stop")
            for p in everyone:
                assert await node_of(r, p.sub) == {b.name}, p.sub
            resumes = sum(p.client.resumes for p in everyone)
            assert resumes == len(on_a)
            await end_calls(d, pairs)
            print(f"\n{len(pairs)} calls, {len(on_a)} parties moved from A to B, {resumes} resumes")
        finally:
            await r.aclose()


async def test_a_killed_node_s_calls_resume_through_the_balancer(tmp_path: Path) -> None:
    with Deployment.start(tmp_path, **SETTINGS) as d:
        r = aioredis.Redis.from_url(d.redis.url)
        try:
            pairs = await open_calls(d, r)
            a, b = d.node("broker-a"), d.node("broker-b")
            everyone = [p for rec, vol, _ in pairs for p in (rec, vol)]
            on_b = [p for p in everyone if await node_of(r, p.sub) == {b.name}]
            assert on_b, "the balancer sent nobody to node B"
            killed_at = time.monotonic()
            await stop(b, signal.SIGKILL)
            # Each party sends as soon as it is back itself, without waiting for its peer.
            for rec, vol, call in pairs:
                await relay(rec, vol, call, "after-kill")
            for p in on_b:
                again = await p.next("call.assigned", resumed=True, timeout=30)
                assert again.call in {c for *_, c in pairs}
            back_in = time.monotonic() - killed_at
            resumes = sum(p.client.resumes for p in everyone)
            assert resumes == len(on_b)
            # B's sessions stay listed until the survivor sees it stopped beating and takes over.
            for p in everyone:
                await wait_for(lambda p=p: _only_on(r, p.sub, a.name), f"{p.sub} only on A")
            await end_calls(d, pairs)
            print(
                f"\n{len(pairs)} calls, {len(on_b)} parties moved from B to A in {back_in:.1f} s, "
                f"{resumes} resumes"
            )
        finally:
            await r.aclose()


async def test_signals_sent_while_the_peer_moves_off_a_stopping_node(tmp_path: Path) -> None:
    with Deployment.start(tmp_path, **SETTINGS) as d:
        r = aioredis.Redis.from_url(d.redis.url)
        try:
            pairs = await open_calls(d, r)
            await stop(d.node("broker-a"), signal.SIGTERM)
            undelivered = []
            for rec, vol, call in pairs:
                try:
                    await relay(rec, vol, call, "after-stop", timeout=5)
                except TimeoutError as exc:
                    undelivered.append(str(exc))
            print(f"\n{len(pairs)} calls, {len(undelivered)} with a signal lost after the stop")
            assert not undelivered, undelivered
        finally:
            await r.aclose()


@dataclass
class Load:
    """Recipients calling one after another while volunteers answer and echo their signals."""

    calls: list[str] = field(default_factory=list)
    completed: int = 0
    signals: int = 0
    asked_again: int = 0  # call requests in flight when the node went
    signals_again: int = 0  # signals never echoed, sent again
    errors: list[str] = field(default_factory=list)
    stopping: bool = False  # recipients ask for no more calls
    answered: bool = False  # every recipient is done: volunteers stop too

    def summary(self) -> str:
        return (
            f"{len(self.calls)} calls, {self.completed} completed, {self.signals} signals echoed, "
            f"{self.asked_again} requests and {self.signals_again} signals sent again, "
            f"{len(self.errors)} errors"
        )


async def volunteer_loop(vol: Party, load: Load) -> None:
    """Accept every ring (losing a race is normal), echo every signal."""
    while not load.answered:
        try:
            m = await vol.next("call.ring", timeout=0.2)
        except TimeoutError:
            m = None
        if m is not None:
            with contextlib.suppress(Conflict, NotFound, ConnectionLost):
                # A ring lost with a dropped request is given again on resume.
                await vol.client.request({"type": "call.accept", "call": m.call})
        for e in [e for e in vol.events if e.type != "call.ring"]:
            vol.events.remove(e)
            if e.type == "signal":
                await vol.send({"type": "signal", "call": e.call, "data": e.data})


async def recipient_loop(rec: Party, load: Load) -> None:
    while not load.stopping:
        try:
            try:
                status = await rec.client.request({"type": "call.request"})
                call = str(status.call)
            except (ConnectionLost, Conflict):
                # In flight when the node went: the resume replays the open call, if any.
                await rec.connected()
                load.asked_again += 1
                try:
                    call = str((await rec.next("call.status", timeout=3)).call)
                except TimeoutError:
                    continue
            load.calls.append(call)
            await rec.next("call.assigned", call=call, timeout=40)
            for seq in range(3):
                tag = f"{call}:{seq}"
                for _attempt in range(6):
                    candidate = {"candidate": f"candidate:{tag} 1 udp 1 127.0.0.1 9 typ host"}
                    await rec.send(
                        {"type": "signal", "call": call, "data": {"candidate": candidate}}
                    )
                    try:
                        echo = await rec.next("signal", call=call, timeout=5)
                    except TimeoutError:
                        load.signals_again += 1  # lost in a node's stop: send again
                        continue
                    if echo.data["candidate"] == candidate:
                        load.signals += 1
                        break
                else:
                    raise AssertionError(f"{tag} was never echoed")
            reason = await rec.end(call)
            if reason != "completed":
                load.errors.append(f"{call} ended {reason}")
            load.completed += 1
            load.errors += [
                f"{rec.sub}: {e.code} {e.message}" for e in rec.events if e.type == "error"
            ]
            rec.events = [e for e in rec.events if getattr(e, "call", None) not in (call, None)]
        except Exception as exc:
            load.errors.append(f"{rec.sub}: {exc!r}")
            return


async def test_a_rolling_restart_under_load_loses_no_call(tmp_path: Path) -> None:
    settings = {**SETTINGS, "first_wave": 10, "max_wave": 10, "ring_timeout_s": 30}
    with Deployment.start(tmp_path, **settings) as d:
        vols = [await Party.join(d, f"v{i}", "volunteer") for i in range(6)]
        for v in vols:
            await v.client.request({"type": "availability", "available": True})
        recs = [await Party.join(d, f"r{i}", "recipient") for i in range(3)]
        load = Load()
        answering = [asyncio.create_task(volunteer_loop(v, load)) for v in vols]
        calling = [asyncio.create_task(recipient_loop(r, load)) for r in recs]
        t0 = time.monotonic()
        try:
            await asyncio.sleep(1.5)
            for name in ("broker-a", "broker-b"):
                node = d.node(name)
                before = load.completed
                await stop(node, signal.SIGTERM)
                await asyncio.to_thread(d.wait_balanced, {n.name for n in d.nodes} - {name})
                node.start()
                await asyncio.to_thread(d.wait_balanced)
                await asyncio.sleep(1.0)
                print(f"\nafter {name}'s restart: {load.summary()}")
                assert not load.errors, load.errors
                assert load.completed > before, f"no call completed across {name}'s restart"
            await asyncio.sleep(1.0)
        finally:
            load.stopping = True
            done = await asyncio.wait_for(asyncio.gather(*calling, return_exceptions=True), 60)
            load.answered = True
            done += await asyncio.wait_for(asyncio.gather(*answering, return_exceptions=True), 10)
        everyone = vols + recs
        resumes = sum(p.client.resumes for p in everyone)
        print(
            f"\nrolling restart in {time.monotonic() - t0:.1f} s: {load.summary()}, "
            f"{resumes} resumes"
        )
        assert not [x for x in done if isinstance(x, BaseException)], done
        assert not load.errors, load.errors
        assert len(load.calls) == load.completed, "a call was requested and never completed"
        # A stopping node relays what was written before its ``reconnect`` was read, and the SDK
        # writes nothing after it: no signal has to be sent again.
        assert load.signals_again == 0, load.summary()
        assert len(set(load.calls)) == len(load.calls)
        assert resumes >= len(everyone), "not every party moved when its node restarted"
        await nothing_left_ringing(d, load.calls, [p.sub for p in everyone])
        async with store_of(d) as store:
            ended = Counter()
            for call in load.calls:
                got = await store.get_call(call)
                assert got is not None
                ended[str(got.state)] += 1
            assert ended == Counter({"ended": len(load.calls)}), ended
        for p in everyone:
            await p.close()
