"""The lobby on two ``vabroker serve`` nodes sharing one real Redis: entries appear and go on
both nodes whichever node the recipient is on, and a take on one node racing a ring's accept
on the other has exactly one winner, every time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Client
from tests.nodes import BrokerNode, broker_nodes
from tests.redis_procs import RedisServer

EN = {"languages": ["en"], "timezone": "Europe/London"}
# Waves far apart: a volunteer on duty after a request is not rung for it within a test.
SETTINGS = {"wave_interval_s": 300, "lobby_interval_s": 0.2, "first_wave": 5}
ROUNDS = 6


@pytest.fixture(scope="module")
def redis_for_nodes() -> Iterator[RedisServer]:
    with RedisServer.start() as server:
        yield server


@pytest.fixture
def redis_url(redis_for_nodes: RedisServer) -> str:
    redis_for_nodes.flush()
    return redis_for_nodes.url + "?timeout=5"


async def on_duty(node: BrokerNode, sub: str) -> Client:
    vol = await node.connect(sub, "volunteer", name=sub.upper(), **EN)
    assert (await vol.request({"type": "availability", "available": True}))["available"] is True
    return vol


async def later(delay: float, answer: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """``answer`` after ``delay``: the accept sent a little later each round, so that the
    race is run at several offsets (a take makes more round trips before its assign)."""
    await asyncio.sleep(delay)
    return await answer


async def listed(watcher: Client, want: list[str], timeout: float = 10.0) -> dict[str, Any]:
    """The first list the watcher gets naming exactly ``want``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        msg = await watcher.expect("lobby", timeout=max(0.0, deadline - loop.time()))
        if [e["call"] for e in msg["entries"]] == want:
            return msg


async def test_entries_appear_and_go_on_both_nodes(redis_url: str, tmp_path: Path) -> None:
    with broker_nodes(redis_url, tmp_path, **SETTINGS) as (a, b):
        w_a, w_b = await on_duty(a, "v-wa"), await on_duty(b, "v-wb")
        for watcher in (w_a, w_b):
            assert (await watcher.request({"type": "lobby.open"}))["entries"] == []
        # The first call rings both watchers (not theirs to see in the lobby), which keeps
        # them from being rung for the second: that one they see appear, on both nodes.
        r0 = await b.connect("r0", "recipient", name="Rae", **EN)
        call0 = (await r0.request({"type": "call.request"}))["call"]
        for watcher in (w_a, w_b):
            await watcher.expect("call.ring", timeout=10, call=call0)
        r2 = await a.connect("r2", "recipient", name="Ro", **EN)
        call2 = (await r2.request({"type": "call.request", "topic": "Post"}))["call"]
        for watcher in (w_a, w_b):
            [entry] = (await listed(watcher, [call2]))["entries"]
            assert entry["topic"] == "Post" and "Ro" not in str(entry)
        # Later volunteers see both, oldest first, whichever node they are on.
        l_a, l_b = await on_duty(a, "v-la"), await on_duty(b, "v-lb")
        for watcher in (l_a, l_b):
            first = await watcher.request({"type": "lobby.open"})
            assert [e["call"] for e in first["entries"]] == [call0, call2]
        # Cancelled on node B: gone from both nodes' lists.
        await r0.request({"type": "call.cancel", "call": call0})
        for watcher in (l_a, l_b):
            await listed(watcher, [call2])
        # Taken on node B (by a watcher freed by the cancel): gone on node A too.
        await w_b.expect("call.withdrawn", timeout=10, call=call0)
        taken = await w_b.request({"type": "call.take", "call": call2})
        assert taken["type"] == "call.assigned", taken
        await r2.expect("call.assigned", timeout=10)
        for watcher in (w_a, l_a, l_b):
            await listed(watcher, [])
        closed = await w_b.expect("lobby", timeout=10, closed=True)
        assert closed["reason"] == "in_call"
        for client in (w_a, w_b, r0, r2, l_a, l_b):
            await client.close()


async def test_a_take_on_one_node_racing_an_accept_on_the_other_has_one_winner(
    redis_url: str, tmp_path: Path
) -> None:
    with broker_nodes(redis_url, tmp_path, **SETTINGS) as (a, b):
        wins: list[str] = []
        for n in range(ROUNDS):
            ringer = await on_duty(b, f"v-ring{n}")
            rec = await b.connect(f"r{n}", "recipient", name="Rae", **EN)
            call = (await rec.request({"type": "call.request"}))["call"]
            await ringer.expect("call.ring", timeout=10, call=call)
            taker = await on_duty(a, f"v-take{n}")
            [entry] = (await taker.request({"type": "lobby.open"}))["entries"]
            assert entry["call"] == call
            took, accepted = await asyncio.gather(
                taker.request({"type": "call.take", "call": call}, timeout=10),
                later(n * 0.004, ringer.request({"type": "call.accept", "call": call}, timeout=10)),
            )
            answers = sorted([took["type"], accepted["type"]])
            assert answers == ["call.assigned", "error"], (took, accepted)
            loser = accepted if took["type"] == "call.assigned" else took
            assert loser["code"] == "conflict", loser
            wins.append("take" if took["type"] == "call.assigned" else "accept")
            assigned = await rec.expect("call.assigned", timeout=10)
            assert assigned["call"] == call
            await rec.request({"type": "call.end", "call": call})
            for client in (ringer, rec, taker):
                await client.close()
        assert len(wins) == ROUNDS
