"""The default deployment remembers: ``vabroker serve`` (durable store in its data directory)
is given every kind of record, killed with SIGKILL, started again on the same directory, and
gives every record back. A call in progress at the kill has ended as documented (``failed``)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from signaling.auth import mint
from tests.helpers import SECRET, Client
from tests.nodes import BrokerNode, node_env
from tests.queue_helpers import ALWAYS
from tests.redis_procs import free_port

P256 = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
AUTH = "BTBZMqHH6r4Tts7J_aSIgg"

# What is read before the kill and again after the restart: (path, who, role).
READ_BACK = [
    ("/v1/me/profile", "v1", "volunteer"),
    ("/v1/me/profile", "v2", "volunteer"),
    ("/v1/orgs/bank", "boss", "admin"),
    ("/v1/me/calls", "r1", "recipient"),
    ("/v1/me/export", "r1", "recipient"),
    ("/v1/admin/cases", "boss", "admin"),
    ("/v1/admin/audit", "boss", "admin"),
    ("/v1/admin/users/s1", "boss", "admin"),
    ("/v1/admin/users/v1", "boss", "admin"),
]


def _vapid_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[BrokerNode]:
    env = node_env("unused", "durable", first_wave=5)
    del env["VABROKER_STORE_URL"]  # the default store: durable, in the data directory
    env["VABROKER_DATA_DIR"] = str(tmp_path / "data")
    env["VABROKER_VAPID_PRIVATE_KEY"] = _vapid_pem()
    env["VABROKER_VAPID_SUBJECT"] = "mailto:ops@example.org"
    env["VABROKER_WEBPUSH_HOSTS"] = '["push.example.org"]'
    broker = BrokerNode("durable", free_port(), tmp_path / "node.log", env)
    try:
        yield broker
    finally:
        broker.kill(signal.SIGTERM)


def auth(sub: str, role: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(SECRET, sub, role, **claims)}"}


async def http(
    node: BrokerNode, method: str, path: str, sub: str, role: str, body: Any = None, **claims: Any
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(headers=auth(sub, role, **claims)) as session,
        session.request(method, node.url + path, json=body) as resp,
    ):
        return resp.status, (await resp.json() if resp.status != 204 else None)


async def call_between(rec: Client, vol: Client) -> str:
    status = await rec.request({"type": "call.request", "language": "en"})
    assert status["type"] == "call.status", status
    ring = await vol.expect("call.ring", timeout=10)
    assigned = await vol.request({"type": "call.accept", "call": ring["call"]})
    assert assigned["type"] == "call.assigned", assigned
    await rec.expect("call.assigned", timeout=10)
    return str(ring["call"])


async def test_every_record_survives_a_kill(node: BrokerNode, tmp_path: Path) -> None:
    node.start()
    assert (tmp_path / "data" / "broker.db").is_file()
    # A volunteer's profile, duty and push device.
    vol = await node.connect("v1", languages=["en"], name="Val")
    profile = {
        "languages": ["fr", "en"],
        "daily_ring_cap": 3,
        "ring_window": {"start": "00:00", "end": "00:00"},
        "timezone": "Europe/Paris",
    }
    status, _ = await http(node, "PUT", "/v1/me/profile", "v1", "volunteer", profile)
    assert status == 200
    assert (await vol.request({"type": "availability", "available": True}))["available"]
    device = {
        "platform": "webpush",
        "subscription": {
            "endpoint": "https://push.example.org/s/1",
            "keys": {"p256dh": P256, "auth": AUTH},
        },
    }
    status, dev = await http(node, "POST", "/v1/me/devices", "v1", "volunteer", device)
    assert status == 201, dev
    # A partner organisation with a queue.
    org = {
        "name": "Bank",
        "languages": ["en"],
        "timezone": "Europe/London",
        "hours": ALWAYS,
        "queues": [{"id": "main", "name": "Main line", "languages": ["en"]}],
    }
    status, body = await http(node, "PUT", "/v1/orgs/bank", "boss", "admin", org)
    assert status == 201, body
    # A whole call, its feedback and a report (a block, a case, audit entries).
    rec = await node.connect("r1", "recipient", name="Rae")
    done = await call_between(rec, vol)
    assert (await rec.request({"type": "call.end", "call": done}))["type"] == "call.ended"
    await vol.expect("call.ended", timeout=10, call=done)
    fb = {"type": "call.feedback", "call": done, "rating": "down", "report": "inappropriate"}
    assert (await rec.request(fb))["type"] == "ack"
    fb = {"type": "call.feedback", "call": done, "rating": "up", "comment": "glad to help"}
    assert (await vol.request(fb))["type"] == "ack"
    # Restrictions: a suspension and a ban (which revokes the user's sign-ins).
    for sub in ("s1", "b1"):
        await (await node.connect(sub, "recipient")).close()
    status, _ = await http(
        node, "POST", "/v1/admin/users/s1/suspend", "boss", "admin", {"reason": "x", "days": 7}
    )
    assert status == 200
    banned_at = time.time()
    status, _ = await http(node, "POST", "/v1/admin/users/b1/ban", "boss", "admin", {"reason": "y"})
    assert status == 200
    # A call in progress at the kill.
    vol2 = await node.connect("v2", languages=["en"], name="Vic")
    assert (await vol2.request({"type": "availability", "available": True}))["available"]
    assert (await vol.request({"type": "availability", "available": False}))["available"] is False
    rec2 = await node.connect("r2", "recipient", name="Ray")
    open_call = await call_between(rec2, vol2)
    before: dict[str, Any] = {}
    for path, sub, role in READ_BACK:
        status, before[path + sub] = await http(node, "GET", path, sub, role)
        assert status == 200, (path, before[path + sub])

    node.kill(signal.SIGKILL)
    for client in (vol, rec, vol2, rec2):
        await client.close()
    node.start()

    for path, sub, role in READ_BACK:
        status, after = await http(node, "GET", path, sub, role)
        assert status == 200, (path, after)
        if path == "/v1/me/export":  # an export is stamped with when it was made
            after.pop("exported_at", None)
            before[path + sub].pop("exported_at", None)
        assert after == before[path + sub], path
    me = before["/v1/me/profilev1"]
    assert me["languages"] == ["fr", "en"] and me["daily_ring_cap"] == 3
    assert [d["id"] for d in me["devices"]] == [dev["id"]]
    assert me["available"] is False and before["/v1/me/profilev2"]["available"] is True
    assert before["/v1/admin/users/s1boss"]["restriction"]["kind"] == "suspended"
    export = before["/v1/me/exportr1"]
    assert export["blocks"] == ["v1"]
    # The banned user's sign-ins from before the ban are still refused.
    old = mint(SECRET, "b1", "recipient", now=banned_at - 60)
    async with aiohttp.ClientSession() as session, session.ws_connect(node.ws_url) as ws:
        await ws.send_json({"type": "hello", "token": old})
        refused = await ws.receive_json(timeout=10)
        assert refused["type"] == "error" and refused["code"] == "unauthenticated", refused
    # The call in progress ended as interrupted, in both parties' history and the statistics.
    for sub, role in (("r2", "recipient"), ("v2", "volunteer")):
        status, calls = await http(node, "GET", "/v1/me/calls", sub, role)
        assert status == 200
        (ended,) = [c for c in calls["calls"] if c["call"] == open_call]
        assert ended["reason"] == "failed" and ended["ended"] is not None, ended
    status, stats = await http(node, "GET", "/v1/stats", "boss", "admin")
    assert status == 200, stats
    assert stats["total"]["created"] == 2 and stats["total"]["completed"] == 1, stats
    # Each party is told when they sign in again, once; nobody is left in a call.
    rec2 = await node.connect("r2", "recipient", name="Ray")
    told = await rec2.expect("call.ended", timeout=10)
    assert told == {"type": "call.ended", "call": open_call, "reason": "failed"}, told
    vol2 = await node.connect("v2", languages=["en"], name="Vic")
    told = await vol2.expect("call.ended", timeout=10)
    assert told["call"] == open_call and told["reason"] == "failed", told
    await vol2.close()
    vol2 = await node.connect("v2", languages=["en"], name="Vic")
    assert not [m for m in await vol2.quiet(0.5) if m["type"] == "call.ended"]
    await vol2.close()
    again = await rec2.request({"type": "call.request", "language": "en"})
    assert again["type"] == "call.status", again
    await rec2.close()
