"""Trusted circles over the wire: the REST routes, and ``call.request`` with ``circle``."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.helpers import Server, start_server


async def api(
    server: Server, method: str, path: str, sub: str, role: str, body: Any = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(headers=server.auth(sub, role)) as http,
        http.request(method, server.url + path, json=body) as resp,
    ):
        return resp.status, (await resp.json() if resp.status != 204 else None)


async def test_invite_join_list_leave_and_ring_the_circle_first() -> None:
    async with start_server(circle_head_start_s=60.0) as server:
        rec = await server.connect("r1", "recipient", name="Rae", languages=["en"])
        val = await server.connect("v1", "volunteer", name="Val", languages=["en"])
        pub = await server.connect("v2", "volunteer", name="Pat", languages=["en"])
        for vol in (val, pub):
            await vol.request({"type": "availability", "available": True})
        code, made = await api(server, "POST", "/v1/me/circle/invitations", "r1", "recipient")
        assert code == 201 and made["link"] == f"/app/volunteer.html#circle={made['code']}"
        code, joined = await api(
            server, "POST", "/v1/circle/join", "v1", "volunteer", {"code": made["code"]}
        )
        assert code == 200 and joined["display_name"] == "Rae"
        assert "r1" not in joined["circle"]
        code, again = await api(
            server, "POST", "/v1/circle/join", "v2", "volunteer", {"code": made["code"]}
        )
        assert code == 404 and "used already" in again["message"]
        code, mine = await api(server, "GET", "/v1/me/circle", "r1", "recipient")
        assert code == 200 and [m["display_name"] for m in mine["members"]] == ["Val"]
        assert "v1" not in mine["members"][0]["member"]
        # Circle first: only Val rings, with the ring saying so; Pat waits for the head start.
        answer = await rec.request({"type": "call.request", "circle": "first"})
        ring = await val.expect("call.ring", call=answer["call"])
        assert ring["circle"] is True and ring["requester"]["display_name"] == "Rae"
        await val.request({"type": "call.accept", "call": answer["call"]})
        await rec.expect("call.assigned", call=answer["call"])
        with pytest.raises(TimeoutError):
            await pub.expect("call.ring", timeout=0.5)  # the head start is not over
        await rec.request({"type": "call.end", "call": answer["call"]})
        # Val leaves; the circle is empty, and circle "only" is refused with the reason.
        code, theirs = await api(server, "GET", "/v1/me/circle", "v1", "volunteer")
        assert code == 200 and [c["display_name"] for c in theirs["circles"]] == ["Rae"]
        handle = theirs["circles"][0]["circle"]
        assert (await api(server, "DELETE", f"/v1/me/circle/circles/{handle}", "v1", "volunteer"))[
            0
        ] == 204
        refused = await rec.request({"type": "call.request", "circle": "only"})
        assert refused["type"] == "error" and refused["code"] == "not_found"
        assert "invite someone" in refused["message"]


async def test_a_past_helper_is_asked_over_the_api_and_agrees() -> None:
    async with start_server() as server:
        rec = await server.connect("r1", "recipient", name="Rae", languages=["en"])
        val = await server.connect("v1", "volunteer", name="Val", languages=["en"])
        await val.request({"type": "availability", "available": True})
        call = (await rec.request({"type": "call.request"}))["call"]
        await val.expect("call.ring", call=call)
        await val.request({"type": "call.accept", "call": call})
        await rec.request({"type": "call.end", "call": call})
        code, asked = await api(
            server, "POST", "/v1/me/circle/proposals", "r1", "recipient", {"call": call}
        )
        assert code == 201
        code, theirs = await api(server, "GET", "/v1/me/circle", "v1", "volunteer")
        assert [p["display_name"] for p in theirs["proposals"]] == ["Rae"]
        assert theirs["proposals"][0]["proposal"] == asked["proposal"]
        path = f"/v1/me/circle/proposals/{asked['proposal']}"
        code, answered = await api(server, "POST", path, "v1", "volunteer", {"accept": True})
        assert code == 200 and answered["joined"]["display_name"] == "Rae"
        code, mine = await api(server, "GET", "/v1/me/circle", "r1", "recipient")
        [member] = mine["members"]
        path = f"/v1/me/circle/members/{member['member']}"
        assert (await api(server, "DELETE", path, "r1", "recipient"))[0] == 204
        assert (await api(server, "DELETE", path, "r1", "recipient"))[0] == 404


@pytest.mark.parametrize(
    ("method", "path", "sub", "role", "body", "status", "named"),
    [
        ("POST", "/v1/circle/join", "v1", "volunteer", {}, 400, "code"),
        ("POST", "/v1/circle/join", "v1", "volunteer", {"code": 7}, 400, "code"),
        ("POST", "/v1/circle/join", "v1", "volunteer", {"code": "x", "y": 1}, 400, "y"),
        ("POST", "/v1/circle/join", "v1", "volunteer", {"code": "ABC"}, 400, "12 letters"),
        ("POST", "/v1/circle/join", "r1", "recipient", {"code": "KM7P-3XQA-9RTW"}, 403, "volun"),
        ("POST", "/v1/me/circle/invitations", "v1", "volunteer", None, 403, "recipients"),
        ("POST", "/v1/me/circle/proposals", "r1", "recipient", {"call": "c_x"}, 404, "ended"),
        ("POST", "/v1/me/circle/proposals", "r1", "recipient", {"call": ""}, 400, "call"),
        ("POST", "/v1/me/circle/proposals/p_x", "v1", "volunteer", {"accept": 1}, 400, "accept"),
        ("POST", "/v1/me/circle/proposals/p_x", "v1", "volunteer", {"accept": True}, 404, "no"),
        ("DELETE", "/v1/me/circle/members/m_x", "r1", "recipient", None, 404, "member"),
        ("DELETE", "/v1/me/circle/circles/k_x", "v1", "volunteer", None, 404, "circle"),
        ("GET", "/v1/me/circle", "a1", "agent", None, 403, "recipients and volunteers"),
    ],
)
async def test_bad_circle_requests_are_refused_naming_what_was_wrong(
    method: str,
    path: str,
    sub: str,
    role: str,
    body: Any,
    status: int,
    named: str,
) -> None:
    async with start_server() as server:
        headers = server.auth(sub, role, org="bank") if role == "agent" else server.auth(sub, role)
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            http.request(method, server.url + path, json=body) as resp,
        ):
            got = await resp.json()
        assert resp.status == status, got
        assert named in got["message"]


async def test_a_bad_circle_value_in_call_request_is_a_bad_message() -> None:
    async with start_server() as server:
        rec = await server.connect("r1", "recipient", name="Rae", languages=["en"])
        refused = await rec.request({"type": "call.request", "circle": "everyone"})
        assert refused["code"] == "bad_message" and "circle" in refused["message"]
        both = await rec.request({"type": "call.request", "circle": "first", "org": "bank"})
        assert both["code"] == "bad_message" and "org" in both["message"]


async def test_the_sdk_asks_the_circle_only_and_the_member_hears_it_is_their_circle() -> None:
    from tests.calls import CALL_SETTINGS, recipient, until, volunteer

    async with start_server(**CALL_SETTINGS) as server:
        member = await volunteer(server, "v1", auto_accept=False)
        stranger = await volunteer(server, "v2", auto_accept=False)
        rec = await recipient(server, "r1")
        try:
            code, made = await api(server, "POST", "/v1/me/circle/invitations", "r1", "recipient")
            assert code == 201
            body = {"code": made["code"]}
            assert (await api(server, "POST", "/v1/circle/join", "v1", "volunteer", body))[0] == 200
            status = await rec.request(topic="a letter", circle="only")
            assert status.state == "searching"
            await until(lambda: status.call in member.rings, 5, "the circle's ring")
            assert member.rings[status.call].circle is True
            await asyncio.sleep(0.3)
            assert status.call not in stranger.rings
        finally:
            for party in (rec, member, stranger):
                await party.close()
