"""Moderation cases for the console's browser tests and screenshots, made the way real ones are:
a call between a recipient and a volunteer over the wire, then a report in ``call.feedback``;
and the administration API as the broker answers it, to check what the console did."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.helpers import Server


async def reported_call(
    server: Server,
    recipient: str,
    volunteer: str,
    report: str = "abusive",
    comment: str | None = None,
    topic: str = "reading a parcel label",
    reporter: str = "recipient",
) -> str:
    """A completed call from ``recipient`` answered by ``volunteer``, reported by ``reporter``
    (``recipient`` or ``volunteer``); answers the call id. Both people are new to the broker:
    a report keeps the two from ever being matched again."""
    vol = await server.connect(
        volunteer, "volunteer", name=volunteer.title(), languages=["en"], timezone="Europe/London"
    )
    rec = await server.connect(
        recipient, "recipient", name=recipient.title(), languages=["en"], timezone="Europe/London"
    )
    try:
        duty = await vol.request({"type": "availability", "available": True})
        assert duty["type"] == "availability" and duty["available"] is True, duty
        status = await rec.request({"type": "call.request", "topic": topic})
        assert status["type"] == "call.status", status
        call = str(status["call"])
        await vol.expect("call.ring", call=call)
        assigned = await vol.request({"type": "call.accept", "call": call})
        assert assigned["type"] == "call.assigned", assigned
        await rec.expect("call.assigned", call=call)
        ended = await rec.request({"type": "call.end", "call": call})
        assert ended["type"] == "call.ended", ended
        await vol.expect("call.ended", call=call)
        off = await vol.request({"type": "availability", "available": False})
        assert off["available"] is False, off
        feedback: dict[str, Any] = {
            "type": "call.feedback",
            "call": call,
            "rating": "down",
            "report": report,
        }
        if comment is not None:
            feedback["comment"] = comment
        who = rec if reporter == "recipient" else vol
        ack = await who.request(feedback)
        assert ack["type"] == "ack", ack
        return call
    finally:
        await vol.close()
        await rec.close()


async def admin_api(
    server: Server,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    sub: str = "admin-check",
) -> tuple[int, Any]:
    """(status, JSON body) of an administration route, as an administrator without an org."""
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, server.url + path, json=body, headers=server.auth(sub, "admin")
        ) as response,
    ):
        return response.status, await response.json()


async def case_of(server: Server, call: str) -> dict[str, Any]:
    """The moderation case opened for ``call``."""
    status, answer = await admin_api(server, "GET", "/v1/admin/cases?state=open&limit=200")
    assert status == 200, answer
    matches = [c for c in answer["cases"] if c["call"]["id"] == call]
    assert len(matches) == 1, answer
    return dict(matches[0])
