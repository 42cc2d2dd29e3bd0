"""Escalation over the wire: a real server configured with a help centre
(``VABROKER_ESCALATE_TO``), its organisation put through the admin API, an agent and a
recipient on WebSockets; and a server without one, whose recipient is told when to retry."""

from __future__ import annotations

import csv
import io

import aiohttp

from tests.helpers import Server, start_server
from tests.test_orgs_wire import agent, get, org_body, put_org


async def history(server: Server, sub: str, role: str, fmt: str = "json") -> list[dict[str, str]]:
    async with (
        aiohttp.ClientSession(headers=server.auth(sub, role)) as http,
        http.get(f"{server.url}/v1/me/calls?format={fmt}") as resp,
    ):
        assert resp.status == 200
        if fmt == "json":
            rows: list[dict[str, str]] = (await resp.json())["calls"]
            return rows
        return list(csv.DictReader(io.StringIO(await resp.text())))


async def test_nobody_on_duty_goes_to_the_help_centre_and_its_agent_answers() -> None:
    async with start_server(escalate_to="help/line") as server:
        status, body = await put_org(server, org_body(id="line", name="Help line"), "help")
        assert status == 201, body
        a1 = await agent(server, "a1", org="help")
        rec = await server.connect("r1", "recipient", name="Rae", languages=["en"])
        answer = await rec.request({"type": "call.request", "topic": "a letter"})
        call = answer["call"]
        assert answer["state"] == "queued"
        told = await rec.expect("call.status", call=call)
        assert told["escalation"] == {
            "outcome": "queued",
            "org": "help",
            "org_name": "Bank",
            "queue": "line",
        }
        assert told["state"] == "queued" and told["position"] == 1
        ring = await a1.expect("call.ring", call=call)
        assert (ring["org"], ring["queue"], ring["topic"]) == ("help", "line", "a letter")
        assigned = await a1.request({"type": "call.accept", "call": call})
        assert assigned["type"] == "call.assigned"
        assert (await rec.expect("call.assigned", call=call))["peer"]["display_name"] == "A1"
        await rec.request({"type": "call.end", "call": call})
        (row,) = await history(server, "r1", "recipient")
        assert row["escalation"] == "queued" and row["reason"] == "completed"
        (line,) = await history(server, "r1", "recipient", "csv")
        assert line["escalation"] == "queued" and line["retry_after_s"] == ""
        code, stats = await get(server, "/v1/stats", "boss", "admin")
        assert code == 200
        assert (stats["total"]["escalated"], stats["total"]["told_to_retry"]) == (1, 0)


async def test_without_a_help_centre_the_recipient_is_told_when_to_retry() -> None:
    async with start_server(max_wait_s=0.6, wave_interval_s=0.2, escalate_retry_after_s=120) as (
        server
    ):
        rec = await server.connect("r1", "recipient", name="Rae", languages=["en"])
        call = (await rec.request({"type": "call.request"}))["call"]
        told = await rec.expect("call.status", call=call)
        assert told["state"] == "searching"
        assert told["escalation"] == {"outcome": "unavailable", "retry_after_s": 120}
        ended = await rec.expect("call.ended", call=call, timeout=3)
        assert (ended["reason"], ended["retry_after_s"]) == ("no_answer", 120)
        (row,) = await history(server, "r1", "recipient")
        assert (row["escalation"], row["retry_after_s"]) == ("unavailable", 120)
        code, stats = await get(server, "/v1/stats", "boss", "admin")
        assert code == 200 and stats["total"]["told_to_retry"] == 1


async def test_a_help_centre_that_does_not_exist_is_not_escalated_to() -> None:
    async with start_server(escalate_to="nobody/line", escalate_retry_after_s=300) as server:
        rec = await server.connect("r1", "recipient", name="Rae", languages=["en"])
        call = (await rec.request({"type": "call.request"}))["call"]
        told = await rec.expect("call.status", call=call)
        assert told["escalation"] == {"outcome": "unavailable", "retry_after_s": 300}
