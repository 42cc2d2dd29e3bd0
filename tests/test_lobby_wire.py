"""The lobby over the wire, on one node: ``lobby.open`` (who may), the lists (at once, then
on change only, never who asked), ``lobby.close``, the broker closing it (off duty, in a call),
``call.take`` answered like ``call.accept``, and an entry leaving when its call is cancelled."""

from __future__ import annotations

import pytest

from tests.helpers import Client, Server, start_server

# Waves far apart: a volunteer who comes on duty after the request is not rung for it within
# a test, so that the lobby is theirs to look at.
SLOW = {"wave_interval_s": 300.0, "lobby_interval_s": 0.2}


async def on_duty(server: Server, sub: str, **claims: object) -> Client:
    vol = await server.connect(sub, "volunteer", name=sub.title(), **claims)
    assert (await vol.request({"type": "availability", "available": True}))["available"] is True
    return vol


async def test_a_volunteer_sees_a_waiting_request_and_takes_it() -> None:
    async with start_server(**SLOW) as server:
        rec = await server.connect("r1", "recipient", name="Rae", languages=["en"])
        asked = await rec.request({"type": "call.request", "topic": "Reading a letter"})
        call = asked["call"]
        val = await on_duty(server, "v1", languages=["en"])
        first = await val.request({"type": "lobby.open"})
        assert first["type"] == "lobby" and first["more"] == 0
        [entry] = first["entries"]
        assert set(entry) == {"call", "language", "topic", "waiting_s", "requested_at"}
        assert (entry["call"], entry["language"], entry["topic"]) == (
            call,
            "en",
            "Reading a letter",
        )
        assert isinstance(entry["waiting_s"], int) and entry["waiting_s"] >= 0
        assert "Rae" not in str(first) and "r1" not in str(first)
        # Nothing changed: no more lists, however many passes run.
        assert [m for m in await val.quiet(0.7) if m["type"] == "lobby"] == []
        assigned = await val.request({"type": "call.take", "call": call})
        assert assigned["type"] == "call.assigned" and assigned["call"] == call
        assert assigned["peer"]["display_name"] == "Rae" and assigned["offerer"] is False
        await rec.expect("call.assigned", call=call)
        closed = await val.expect("lobby")
        assert closed == {
            "type": "lobby",
            "entries": [],
            "more": 0,
            "closed": True,
            "reason": "in_call",
        }
        # Too late for another volunteer.
        late = await on_duty(server, "v2", languages=["en"])
        refused = await late.request({"type": "call.take", "call": call})
        assert (refused["type"], refused["code"]) == ("error", "conflict")


async def test_who_may_open_the_lobby() -> None:
    async with start_server(**SLOW) as server:
        rec = await server.connect("r1", "recipient")
        agent = await server.connect("a1", "agent", org="bank")
        off = await server.connect("v1", "volunteer")
        for client, code in ((rec, "forbidden"), (agent, "forbidden"), (off, "conflict")):
            answer = await client.request({"type": "lobby.open"})
            assert (answer["type"], answer["code"]) == ("error", code)
        for client in (rec, agent):
            answer = await client.request({"type": "call.take", "call": "c_nothing"})
            assert (answer["type"], answer["code"]) == ("error", "forbidden")
        answer = await off.request({"type": "call.take", "call": "c_nothing"})
        assert (answer["type"], answer["code"]) == ("error", "not_found")


async def test_entries_leave_on_cancel_and_lobby_close_stops_the_lists() -> None:
    async with start_server(**SLOW) as server:
        rec = await server.connect("r1", "recipient", languages=["en"])
        call = (await rec.request({"type": "call.request"}))["call"]
        val = await on_duty(server, "v1", languages=["en"])
        assert [e["call"] for e in (await val.request({"type": "lobby.open"}))["entries"]] == [call]
        await rec.request({"type": "call.cancel", "call": call})
        emptied = await val.expect("lobby")
        assert emptied == {"type": "lobby", "entries": [], "more": 0}
        assert (await val.request({"type": "lobby.close"}))["type"] == "ack"
        await rec.request({"type": "call.request"})
        assert [m for m in await val.quiet(0.7) if m["type"] == "lobby"] == []


async def test_going_off_duty_closes_the_lobby_on_every_session() -> None:
    async with start_server(**SLOW) as server:
        phone = await on_duty(server, "v1", languages=["en"])
        laptop = await server.connect("v1", "volunteer", languages=["en"])
        for session in (phone, laptop):
            assert (await session.request({"type": "lobby.open"}))["entries"] == []
        await phone.request({"type": "availability", "available": False})
        for session in (phone, laptop):
            closed = await session.expect("lobby")
            assert closed["closed"] is True and closed["reason"] == "off_duty"


async def test_a_request_in_another_language_is_not_listed() -> None:
    async with start_server(**SLOW) as server:
        rec = await server.connect("r1", "recipient", languages=["de"])
        call = (await rec.request({"type": "call.request"}))["call"]
        val = await on_duty(server, "v1", languages=["en"])
        assert (await val.request({"type": "lobby.open"}))["entries"] == []
        refused = await val.request({"type": "call.take", "call": call})
        assert (refused["type"], refused["code"]) == ("error", "forbidden")


@pytest.mark.parametrize("bad", [{}, {"call": 7}, {"call": ""}, {"call": "x" * 65}])
async def test_a_malformed_take_is_a_bad_message(bad: dict[str, object]) -> None:
    async with start_server(**SLOW) as server:
        val = await on_duty(server, "v1")
        answer = await val.request({"type": "call.take", **bad})
        assert (answer["type"], answer["code"]) == ("error", "bad_message")
        assert "call" in answer["message"]
