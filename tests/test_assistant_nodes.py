"""The assistant's routing on two broker nodes sharing one Redis: a recipient on one node is
rung through to an assistant on the other, and when that assistant crashes the volunteers'
search starts for the recipient without their asking again; a recipient asks for a volunteer
mid-call on one node and a volunteer on the other takes over."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


async def answered_by_the_reader(
    a: Any, b: Any, topic: str
) -> tuple[Any, Any, Any, dict[str, Any]]:
    """A reader and a volunteer on node A, a recipient on node B in a call with the reader."""
    reader = await a.connect("reader", "assistant", name="Reader", **EN)
    vol = await a.connect("v1", "volunteer", name="Val", **EN)
    for helper in (reader, vol):
        on = await helper.request({"type": "availability", "available": True})
        assert on["available"], on
    rec = await b.connect("r1", "recipient", name="Rae", **EN)
    status = await rec.request({"type": "call.request", "topic": topic, "helper": "assistant"})
    ring = await reader.expect("call.ring", timeout=10)
    assigned = await reader.request({"type": "call.accept", "call": ring["call"]})
    assert assigned["type"] == "call.assigned", assigned
    mine = await rec.expect("call.assigned", timeout=10, call=status["call"])
    assert mine["peer"] == {"display_name": "Reader", "assistant": True}, mine
    assert "assistant" not in assigned["peer"], assigned
    return reader, vol, rec, status


async def test_a_handover_across_nodes(redis_url: str, tmp_path: Path) -> None:
    """The recipient on node B asks for a volunteer; the volunteer on node A takes over. The
    raw clients here know nothing of ``handed_over``: they see an ordinary ``call.ended``."""
    with broker_nodes(redis_url, tmp_path, grace_s=1, first_wave=5) as (a, b):
        reader, vol, rec, first = await answered_by_the_reader(a, b, "a letter")
        search = await rec.request(
            {"type": "call.handover", "call": first["call"], "reading": "Dear Rae,\nYour bill"}
        )
        assert search["type"] == "call.status", search
        assert search["replaces"] == first["call"] and search["state"] == "searching"
        ring = await vol.expect("call.ring", timeout=10, call=search["call"])
        assert (ring["topic"], ring["reading"]) == ("a letter", "Dear Rae,\nYour bill")
        assigned = await vol.request({"type": "call.accept", "call": ring["call"]})
        assert assigned["type"] == "call.assigned" and assigned["reading"] == ring["reading"]
        for party in (rec, reader):
            ended = await party.expect("call.ended", timeout=10, call=first["call"])
            assert (ended["reason"], ended["by"]) == ("handed_over", "recipient")
        mine = await rec.expect("call.assigned", timeout=10, call=search["call"])
        assert mine["peer"] == {"display_name": "Val"} and "reading" not in mine
        for client in (reader, vol, rec):
            await client.close()


async def test_an_answer_on_one_node_racing_a_hang_up_on_the_other(
    redis_url: str, tmp_path: Path
) -> None:
    """The volunteer accepts on node A while the recipient hangs up the reader on node B: in
    either order the recipient is in the volunteer's call, and the reader's call ends once."""
    with broker_nodes(redis_url, tmp_path, grace_s=1, first_wave=5) as (a, b):
        reader, vol, rec, first = await answered_by_the_reader(a, b, "a form")
        search = await rec.request({"type": "call.handover", "call": first["call"]})
        assert search["type"] == "call.status" and "reading" not in search, search
        ring = await vol.expect("call.ring", timeout=10, call=search["call"])
        assert "reading" not in ring
        accepted, hung_up = await asyncio.gather(
            vol.request({"type": "call.accept", "call": ring["call"]}),
            rec.request({"type": "call.end", "call": first["call"]}),
        )
        assert accepted["type"] == "call.assigned", accepted
        assert hung_up["type"] in ("call.ended", "error"), hung_up
        if hung_up["type"] == "call.ended":  # the hang-up came first
            assert hung_up["reason"] == "completed"
        else:  # the handover came first, and the call had ended
            assert hung_up["code"] == "conflict", hung_up
        ended = [m for m in await reader.quiet(1.0) if m["type"] == "call.ended"]
        assert len(ended) == 1 and ended[0]["call"] == first["call"], ended
        assert ended[0]["reason"] in ("completed", "handed_over")
        mine = await rec.expect("call.assigned", timeout=10, call=search["call"])
        assert mine["peer"]["display_name"] == "Val"
        bye = await rec.request({"type": "call.end", "call": search["call"]})
        assert bye["type"] == "call.ended" and bye["reason"] == "completed", bye
        for client in (reader, vol, rec):
            await client.close()
