"""The HTTP API: health, metrics, profile, history (JSON and CSV), ICE servers, statistics."""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import time
from typing import Any

import aiohttp
import pytest

from tests.helpers import Server, start_server


async def call_once(server: Server, ended_by: str = "r1") -> str:
    vol = await server.connect("v1", "volunteer", name="Val", languages=["en"])
    await vol.request({"type": "availability", "available": True})
    rec = await server.connect("r1", "recipient", name="Rae", languages=["en"])
    call = (await rec.request({"type": "call.request", "topic": "post"}))["call"]
    await vol.expect("call.ring")
    await vol.request({"type": "call.accept", "call": call})
    await (rec if ended_by == "r1" else vol).request({"type": "call.end", "call": call})
    await vol.close()
    await rec.close()
    return str(call)


async def test_health_and_readiness(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz"):
            async with http.get(server.url + path) as resp:
                assert resp.status == 200
                assert (await resp.json())["status"] in ("ok", "ready")


async def test_metrics_count_what_happened(server: Server) -> None:
    await call_once(server)
    async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        text = await resp.text()
    for line in (
        "vabroker_rings_total 1.0",
        "vabroker_calls_requested_total 1.0",
        "vabroker_calls_assigned_total 1.0",
        'vabroker_calls_ended_total{reason="completed"} 1.0',
        "vabroker_answer_seconds_count 1.0",
    ):
        assert line in text, line


async def test_profile_round_trip(server: Server) -> None:
    headers = server.auth(
        "v1", "volunteer", name="Val", languages=["en", "fr"], timezone="Europe/Paris"
    )
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(server.url + "/v1/me/profile") as resp:
            assert await resp.json() == {
                "id": "v1",
                "role": "volunteer",
                "display_name": "Val",
                "languages": ["en", "fr"],
                "timezone": "Europe/Paris",
                "ring_window": {"start": "00:00", "end": "00:00"},
                "daily_ring_cap": 10,
                "available": False,
                "devices": [],  # helpers' push devices (see the push tests)
            }
        body = {
            "display_name": "Valérie",
            "ring_window": {"start": "09:30", "end": "21:00"},
            "daily_ring_cap": 3,
        }
        async with http.put(server.url + "/v1/me/profile", json=body) as resp:
            assert resp.status == 200
        async with http.get(server.url + "/v1/me/profile") as resp:
            got = await resp.json()
        assert got["display_name"] == "Valérie" and got["languages"] == ["en", "fr"]
        assert (
            got["ring_window"] == {"start": "09:30", "end": "21:00"} and got["daily_ring_cap"] == 3
        )


async def test_recipient_note(server: Server) -> None:
    async with aiohttp.ClientSession(headers=server.auth("r1", "recipient")) as http:
        async with http.put(server.url + "/v1/me/profile", json={"note": "Guide dog Rex"}) as resp:
            assert (await resp.json())["note"] == "Guide dog Rex"
    vol = await server.connect("v1", "volunteer")
    await vol.request({"type": "availability", "available": True})
    rec = await server.connect("r1", "recipient")
    await rec.request({"type": "call.request"})
    assert (await vol.expect("call.ring"))["note"] == "Guide dog Rex"


@pytest.mark.parametrize(
    ("role", "body", "needle"),
    [
        ("volunteer", {"languages": ["english"]}, "languages.0"),
        ("volunteer", {"languages": []}, "languages"),
        ("volunteer", {"timezone": "Mars/Olympus"}, "timezone"),
        ("volunteer", {"ring_window": {"start": "25:00", "end": "22:00"}}, "ring_window.start"),
        ("volunteer", {"daily_ring_cap": -1}, "daily_ring_cap"),
        ("volunteer", {"daily_ring_cap": "many"}, "daily_ring_cap"),
        ("volunteer", {"colour": "blue"}, "colour"),
        ("volunteer", {"display_name": ""}, "display_name"),
        ("volunteer", {"note": "hi"}, "note"),
        ("recipient", {"daily_ring_cap": 5}, "daily_ring_cap"),
        ("volunteer", ["not", "an", "object"], "object"),
        ("volunteer", {"languages": None}, "languages: may not be null"),
        ("recipient", {"display_name": None, "note": None}, "display_name: may not be null"),
        ("volunteer", {"ring_window": None, "timezone": None}, "ring_window, timezone"),
        ("volunteer", {"ring_window": {"start": "09:00"}}, "give both start and end"),
        ("volunteer", {"ring_window": {}}, "give both start and end"),
        (
            "volunteer",
            {"ring_window": {"start": "09:00", "end": "17:00", "strat": "10:00"}},
            "ring_window.strat",
        ),
    ],
)
async def test_profile_validation(server: Server, role: str, body: Any, needle: str) -> None:
    async with aiohttp.ClientSession(headers=server.auth("u1", role)) as http:
        async with http.get(server.url + "/v1/me/profile") as resp:
            before = await resp.json()
        async with http.put(server.url + "/v1/me/profile", json=body) as resp:
            assert resp.status == 400
            problem = await resp.json()
            assert problem["error"] == "bad_request" and needle in problem["message"], problem
        async with http.get(server.url + "/v1/me/profile") as resp:
            assert await resp.json() == before  # nothing half-written


async def test_profile_body_must_be_json(server: Server) -> None:
    async with aiohttp.ClientSession(headers=server.auth("u1")) as http:
        async with http.put(
            server.url + "/v1/me/profile",
            data="{oops",
            headers={"Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 400 and "not valid JSON" in (await resp.json())["message"]
        async with http.put(server.url + "/v1/me/profile", data="x=1") as resp:
            assert resp.status == 400 and "Content-Type" in (await resp.json())["message"]


@pytest.mark.parametrize("header", [None, "Basic abc", "Bearer", "Bearer not-a-token"])
async def test_api_needs_a_valid_token(server: Server, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    async with aiohttp.ClientSession(headers=headers) as http:
        for path in ("/v1/me/profile", "/v1/me/calls", "/v1/ice-servers", "/v1/stats"):
            async with http.get(server.url + path) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"] == "unauthenticated"


async def test_call_history_json_and_csv(server: Server) -> None:
    call = await call_once(server)
    for sub, role, as_role in (("r1", "recipient", "recipient"), ("v1", "volunteer", "volunteer")):
        async with aiohttp.ClientSession(headers=server.auth(sub, role)) as http:
            async with http.get(server.url + "/v1/me/calls") as resp:
                rows = (await resp.json())["calls"]
            assert len(rows) == 1 and rows[0]["call"] == call and rows[0]["role"] == as_role
            assert rows[0]["reason"] == "completed" and rows[0]["language"] == "en"
            async with http.get(server.url + "/v1/me/calls?format=csv") as resp:
                assert resp.content_type == "text/csv"
                table = list(csv.DictReader(io.StringIO(await resp.text())))
            assert table[0]["call"] == call and table[0]["reason"] == "completed"
            for column in (
                "call",
                "role",
                "language",
                "requested",
                "answered",
                "ended",
                "reason",
                "duration_s",
            ):
                assert column in table[0]
            async with http.get(server.url + "/v1/me/calls?format=xml") as resp:
                assert resp.status == 400


async def test_ice_servers_with_turn_rest_credentials() -> None:
    secret = "turn-shared-secret"
    async with start_server(
        stun_urls=["stun:stun.example.org:3478"],
        turn_urls=["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"],
        turn_secret=secret,
        turn_ttl_s=600,
    ) as server:
        async with aiohttp.ClientSession(headers=server.auth("v1")) as http:
            async with http.get(server.url + "/v1/ice-servers") as resp:
                body = await resp.json()
        stun, turn = body["ice_servers"]
        assert stun == {"urls": ["stun:stun.example.org:3478"]}
        expiry, user = turn["username"].split(":")
        assert user == "v1" and 590 <= int(expiry) - time.time() <= 601
        expected = base64.b64encode(
            hmac.new(secret.encode(), turn["username"].encode(), hashlib.sha1).digest()
        )
        assert turn["credential"] == expected.decode()
        # The same servers arrive in welcome.
        client = await server.connect("v1")
        assert [s["urls"] for s in client.welcome["ice_servers"]] == [stun["urls"], turn["urls"]]


async def test_statistics_for_admins_only(server: Server) -> None:
    await call_once(server)
    async with aiohttp.ClientSession(headers=server.auth("v1", "volunteer")) as http:
        async with http.get(server.url + "/v1/stats") as resp:
            assert resp.status == 403
    async with aiohttp.ClientSession(headers=server.auth("boss", "admin")) as http:
        async with http.get(server.url + "/v1/stats") as resp:
            stats = await resp.json()
        async with http.get(server.url + "/v1/stats?since=soon") as resp:
            assert resp.status == 400
    total = stats["total"]
    assert (total["created"], total["answered"], total["completed"], total["completed_pct"]) == (
        1,
        1,
        1,
        100.0,
    )
    assert list(stats["by_language"]) == ["en"] and len(stats["by_month"]) == 1


async def test_errors_are_json(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/v1/nothing-here") as resp:
            assert resp.status == 404 and (await resp.json())["error"] == "not_found"
        async with http.delete(server.url + "/v1/me/profile") as resp:
            assert resp.status == 405 and (await resp.json())["error"] == "bad_request"
        big = b"{" + b" " * (300 * 1024) + b"}"
        headers = {**server.auth("v1"), "Content-Type": "application/json"}
        async with http.put(server.url + "/v1/me/profile", data=big, headers=headers) as resp:
            assert resp.status == 413


async def test_profile_tells_a_volunteer_whether_they_are_on_duty(server: Server) -> None:
    vol = await server.connect("v1", "volunteer")
    await vol.request({"type": "availability", "available": True})
    await vol.close()  # on duty outlives the connection
    async with aiohttp.ClientSession(headers=server.auth("v1")) as http:
        async with http.get(server.url + "/v1/me/profile") as resp:
            assert (await resp.json())["available"] is True
    async with aiohttp.ClientSession(headers=server.auth("r1", "recipient")) as http:
        async with http.get(server.url + "/v1/me/profile") as resp:
            assert "available" not in await resp.json()
