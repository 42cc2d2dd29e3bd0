"""Races and filters over the wire, with many real WebSocket clients."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from tests.helpers import Client, Server, start_server


async def volunteers(server: Server, n: int, prefix: str = "v", **claims: Any) -> list[Client]:
    async def one(i: int) -> Client:
        client = await server.connect(f"{prefix}{i:03d}", "volunteer", languages=["en"], **claims)
        assert (await client.request({"type": "availability", "available": True}))["available"]
        return client

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_two_hundred_accept_at_once_one_wins_twenty_times() -> None:
    async with start_server(first_wave=200, max_wave=200, daily_ring_cap=100) as server:
        vols = await volunteers(server, 200)
        rec = await server.connect("r1", "recipient", languages=["en"])
        for rep in range(20):
            status = await rec.request({"type": "call.request"})
            call = status["call"]
            assert status["notified"] == 200, rep
            await asyncio.gather(*(v.expect("call.ring", call=call) for v in vols))
            answers = await asyncio.gather(
                *(v.request({"type": "call.accept", "call": call}) for v in vols)
            )
            winners = [
                v for v, a in zip(vols, answers, strict=True) if a["type"] == "call.assigned"
            ]
            losers = [
                (v, a) for v, a in zip(vols, answers, strict=True) if a["type"] != "call.assigned"
            ]
            assert len(winners) == 1, rep
            assert all(a["type"] == "error" and a["code"] == "conflict" for _, a in losers)
            for v, _ in losers:
                withdrawn = await v.expect("call.withdrawn", call=call)
                assert withdrawn["reason"] == "answered"
            assert (await rec.expect("call.assigned", call=call))["offerer"] is True
            await rec.request({"type": "call.end", "call": call})
            await winners[0].expect("call.ended", call=call)
            for v in vols:  # nothing else arrived for this call
                assert not [m for m in v.inbox if m.get("call") == call]


def zone_where_it_is(hour: int) -> str:
    """A fixed-offset IANA zone whose local hour is ``hour`` right now."""
    utc_hour = time.gmtime().tm_hour
    offset = (hour - utc_hour) % 24
    if offset > 12:
        offset -= 24
    # Etc/GMT-N is UTC+N (POSIX signs are inverted).
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


async def test_filters_over_the_wire(server: Server) -> None:
    async with aiohttp.ClientSession() as http:

        async def put(sub: str, body: dict[str, Any]) -> None:
            async with http.put(
                f"{server.url}/v1/me/profile", json=body, headers=server.auth(sub)
            ) as resp:
                assert resp.status == 200, await resp.text()

        good = (await volunteers(server, 1, "good"))[0]
        french = await server.connect("marie", "volunteer", languages=["fr"])
        await french.request({"type": "availability", "available": True})
        night = await server.connect("owl", "volunteer", languages=["en"])
        await put(
            "owl",
            {"timezone": zone_where_it_is(3), "ring_window": {"start": "08:00", "end": "22:00"}},
        )
        await night.request({"type": "availability", "available": True})
        capped = await server.connect("capped", "volunteer", languages=["en"])
        await put("capped", {"daily_ring_cap": 1})
        await capped.request({"type": "availability", "available": True})

        rec = await server.connect("r1", "recipient", languages=["en"])
        rung: dict[str, int] = {"good": 0, "marie": 0, "owl": 0, "capped": 0}
        for _ in range(3):
            call = (await rec.request({"type": "call.request", "language": "en"}))["call"]
            await asyncio.sleep(0.05)
            for name, client in (
                ("good", good),
                ("marie", french),
                ("owl", night),
                ("capped", capped),
            ):
                rung[name] += sum(1 for m in await client.quiet(0.05) if m["type"] == "call.ring")
            await rec.request({"type": "call.cancel", "call": call})
        assert rung == {"good": 3, "marie": 0, "owl": 0, "capped": 1}
