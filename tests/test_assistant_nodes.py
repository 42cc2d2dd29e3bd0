"""The assistant's routing on two broker nodes sharing one Redis: a recipient on one node is
rung through to an assistant on the other, and when that assistant crashes the volunteers'
search starts for the recipient without their asking again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodes import broker_nodes
from tests.redis_procs import RedisServer

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


async def test_assistant_across_nodes_then_its_crash_hands_over_to_volunteers(
    redis_url: str, tmp_path: Path
) -> None:
    with broker_nodes(redis_url, tmp_path, grace_s=1, first_wave=5) as (a, b):
        reader = await a.connect("reader", "assistant", name="Reader", **EN)
        vol = await a.connect("v1", "volunteer", name="Val", **EN)
        for helper in (reader, vol):
            on = await helper.request({"type": "availability", "available": True})
            assert on["available"], on
        rec = await b.connect("r1", "recipient", name="Rae", **EN)
        status = await rec.request(
            {"type": "call.request", "topic": "a letter", "helper": "assistant"}
        )
        assert status["type"] == "call.status" and status["notified"] == 1, status
        ring = await reader.expect("call.ring", timeout=10)
        assert ring["call"] == status["call"] and ring["topic"] == "a letter"
        assigned = await reader.request({"type": "call.accept", "call": ring["call"]})
        assert assigned["type"] == "call.assigned", assigned
        assert (await rec.expect("call.assigned", timeout=10))["peer"]["display_name"] == "Reader"
        assert not [m for m in vol.inbox if m["type"] == "call.ring"]

        reader.ws.transport.abort()  # the assistant's process dies
        ended = await rec.expect("call.ended", timeout=15)
        assert ended["call"] == status["call"] and ended["reason"] == "peer_lost"
        search = await rec.expect("call.status", timeout=10)
        assert search["call"] != status["call"] and search["state"] == "searching"
        ring = await vol.expect("call.ring", timeout=10)
        assert ring["call"] == search["call"] and ring["topic"] == "a letter"
        assigned = await vol.request({"type": "call.accept", "call": ring["call"]})
        assert assigned["type"] == "call.assigned", assigned
        assert (await rec.expect("call.assigned", timeout=10))["call"] == search["call"]
        await vol.close()
        await rec.close()
