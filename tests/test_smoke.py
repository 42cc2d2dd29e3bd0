from __future__ import annotations

from tests.helpers import Server


async def test_whole_call_over_the_wire(server: Server) -> None:
    vol = await server.connect(
        "v1", "volunteer", name="Val", languages=["en"], timezone="Europe/London"
    )
    assert (await vol.request({"type": "availability", "available": True}))["available"] is True
    rec = await server.connect(
        "r1", "recipient", name="Rae", languages=["en"], timezone="Europe/London"
    )
    status = await rec.request({"type": "call.request", "topic": "reading a label"})
    assert (
        status["type"] == "call.status"
        and status["state"] == "searching"
        and status["notified"] == 1
    )
    ring = await vol.expect("call.ring")
    assert ring["call"] == status["call"] and ring["requester"] == {"display_name": "Rae"}
    assigned = await vol.request({"type": "call.accept", "call": ring["call"]})
    assert assigned["type"] == "call.assigned" and assigned["offerer"] is False
    assert (await rec.expect("call.assigned"))["offerer"] is True
    await rec.send(
        {"type": "signal", "call": ring["call"], "data": {"sdp": {"type": "offer", "sdp": "v=0"}}}
    )
    sig = await vol.expect("signal")
    assert sig["data"]["sdp"]["type"] == "offer"
    ended = await rec.request({"type": "call.end", "call": ring["call"]})
    assert (
        ended["type"] == "call.ended"
        and ended["reason"] == "completed"
        and ended["by"] == "recipient"
    )
    assert (await vol.expect("call.ended"))["reason"] == "completed"
