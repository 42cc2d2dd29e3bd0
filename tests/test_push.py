"""Push rings end to end: a real server pushing to local APNs (HTTP/2), FCM v1 + OAuth and
Web Push stand-ins over TLS, through the production senders with only their base URLs moved."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from signaling.push import pusher_of
from signaling.push.pusher import Pusher
from tests.helpers import Client, Server, start_server
from tests.push_standins import (
    ApnsCredentials,
    ApnsStandIn,
    FcmCredentials,
    GoogleStandIn,
    b64url,
    make_tls,
    pem_private,
    wait_until,
)

TOKEN_A = "a" * 64
TOKEN_B = "b" * 64
TOKEN_C = "c" * 64
FCM_TOKEN = "fcm-token-" + "x" * 140


@dataclass
class PushEnv:
    apns: ApnsStandIn
    google: GoogleStandIn
    settings: dict[str, Any]


@pytest.fixture
async def push_env(tmp_path: Path) -> AsyncIterator[PushEnv]:
    tls = make_tls(tmp_path / "tls")
    apns = ApnsStandIn(ApnsCredentials.generate(), tls)
    google = GoogleStandIn(FcmCredentials.generate(), tls)
    await apns.start()
    await google.start()
    vapid = ec.generate_private_key(ec.SECP256R1())
    google.vapid_public = b64url(
        vapid.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
    creds = apns.creds
    settings = {
        "push_ca_file": tls.ca_file,
        "push_backoff_s": 0.05,
        "apns_key": creds.key_pem,
        "apns_key_id": creds.key_id,
        "apns_team_id": creds.team_id,
        "apns_topic": creds.topic,
        "apns_base_url": apns.base_url,
        "fcm_service_account": google.fcm.write(
            tmp_path / "service-account.json", f"{google.base_url}/token"
        ),
        "fcm_base_url": google.base_url,
        "vapid_private_key": pem_private(vapid),
        "vapid_subject": "mailto:ops@example.org",
        "webpush_hosts": ["127.0.0.1"],
        "first_wave": 10,
    }
    try:
        yield PushEnv(apns, google, settings)
    finally:
        await apns.stop()
        await google.stop()


def pusher(server: Server) -> Pusher:
    p = pusher_of(server.app)
    assert p is not None
    return p


async def http(
    server: Server, method: str, path: str, sub: str, role: str = "volunteer", body: Any = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(headers=server.auth(sub, role)) as session,
        session.request(method, server.url + path, json=body) as resp,
    ):
        data = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, data


async def add_device(server: Server, sub: str, **device: Any) -> dict[str, Any]:
    status, body = await http(server, "POST", "/v1/me/devices", sub, body=device)
    assert status in (200, 201), body
    return dict(body)


async def offline_volunteer(server: Server, sub: str, *devices: dict[str, Any]) -> None:
    """On duty, devices registered, then the app closed: reachable only by push."""
    vol = await server.connect(sub, "volunteer", name=sub, languages=["en"])
    await vol.request({"type": "availability", "available": True})
    for device in devices:
        await add_device(server, sub, **device)
    await vol.close()
    store = server.ctx.store
    for _ in range(500):
        if not await store.is_connected(sub):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{sub} still connected")


async def online_volunteer(server: Server, sub: str) -> Client:
    vol = await server.connect(sub, "volunteer", name=sub, languages=["en"])
    await vol.request({"type": "availability", "available": True})
    return vol


def metric(server: Server, name: str, **labels: str) -> float:
    value = server.ctx.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_offline_devices_are_rung_and_each_gets_exactly_one_withdrawal(
    push_env: PushEnv,
) -> None:
    apns, google = push_env.apns, push_env.google
    async with start_server(**push_env.settings) as server:
        browser = google.subscriber()
        await offline_volunteer(
            server,
            "off1",
            {"platform": "apns", "token": TOKEN_A, "voip": True},
            {"platform": "fcm", "token": FCM_TOKEN},
            {"platform": "webpush", "subscription": browser.subscription()},
        )
        await offline_volunteer(server, "off2", {"platform": "apns", "token": TOKEN_B})
        on1 = await online_volunteer(server, "on1")
        await add_device(server, "on1", platform="apns", token=TOKEN_C, voip=True)

        rec = await server.connect("r1", "recipient", name="Rae", languages=["en"])
        status = await rec.request({"type": "call.request", "topic": "reading a label"})
        call = status["call"]
        assert status["notified"] == 3
        requested = time.time()
        ring = await on1.expect("call.ring")
        await wait_until(
            lambda: len(apns.pushes) == 2 and len(google.fcm_messages) == 1, what="ring pushes"
        )
        await wait_until(lambda: len(google.webpush_messages) == 1, what="web push ring")

        voip = apns.to(TOKEN_A)[0]
        assert voip.headers["apns-push-type"] == "voip"
        assert voip.headers["apns-topic"] == "org.example.helper.voip"
        assert voip.headers["apns-priority"] == "10"
        assert voip.headers["apns-collapse-id"] == call
        expiry = int(voip.headers["apns-expiration"])
        assert abs(expiry - (requested + ring["expires_in_s"])) <= 2
        assert voip.payload["type"] == "call.ring" and voip.payload["call"] == call
        assert voip.payload["language"] == "en" and voip.payload["topic"] == "reading a label"
        assert abs(int(voip.payload["expires_at"]) - expiry) <= 2
        alert = apns.to(TOKEN_B)[0]
        assert alert.headers["apns-push-type"] == "alert"
        assert alert.headers["apns-topic"] == "org.example.helper"
        assert alert.headers["apns-collapse-id"] == call
        assert alert.payload["aps"]["alert"]["title"]
        fcm = google.fcm_messages[0]
        assert fcm["android"]["priority"] == "HIGH" and fcm["android"]["collapse_key"] == call
        assert 40 <= int(fcm["android"]["ttl"].removesuffix("s")) <= 46
        assert fcm["data"]["type"] == "call.ring" and fcm["data"]["call"] == call
        headers, payload = google.webpush_messages[browser.endpoint.rsplit("/", 1)[1]][0]
        assert payload["type"] == "call.ring" and payload["call"] == call
        assert headers["Urgency"] == "high" and headers["Topic"] == call
        assert 40 <= int(headers["TTL"]) <= 46
        assert not apns.to(TOKEN_C), "a connected volunteer is rung on the WebSocket only"

        assigned = await on1.request({"type": "call.accept", "call": call})
        assert assigned["type"] == "call.assigned"
        await pusher(server).drain()

        for token in (TOKEN_A, TOKEN_B):
            kinds = [p.payload["type"] for p in apns.to(token)]
            assert kinds == ["call.ring", "call.withdrawn"], (token, kinds)
            withdrawal = apns.to(token)[1]
            assert withdrawal.headers["apns-collapse-id"] == call
            assert withdrawal.payload["reason"] == "answered"
        assert apns.to(TOKEN_A)[1].headers["apns-push-type"] == "voip"
        assert [m["data"]["type"] for m in google.to(FCM_TOKEN)] == [
            "call.ring",
            "call.withdrawn",
        ]
        assert google.to(FCM_TOKEN)[1]["android"]["collapse_key"] == call
        pushes = google.webpush_messages[browser.endpoint.rsplit("/", 1)[1]]
        assert [p["type"] for _, p in pushes] == ["call.ring", "call.withdrawn"]
        assert pushes[1][0]["Topic"] == call
        assert not apns.to(TOKEN_C)
        assert not apns.problems and not google.problems
        assert google.tokens_granted == 1, "the OAuth access token is reused"

        await rec.request({"type": "call.end", "call": call})
        await pusher(server).drain()
        assert len(apns.pushes) == 4, "ending the call sends no second withdrawal"
        assert metric(server, "vabroker_push_total", platform="apns", result="sent") == 4
        assert metric(server, "vabroker_push_seconds_count", platform="fcm") == 2
        await on1.close()
        await rec.close()


async def test_gone_devices_are_pruned(push_env: PushEnv) -> None:
    apns, google = push_env.apns, push_env.google
    async with start_server(**push_env.settings) as server:
        browser = google.subscriber()
        apns.script[TOKEN_A] = [410]
        apns.script[TOKEN_B] = [400]  # BadDeviceToken
        google.fcm_script[FCM_TOKEN] = [404]  # UNREGISTERED
        google.webpush_script[browser.endpoint.rsplit("/", 1)[1]] = [410]
        await offline_volunteer(
            server,
            "off1",
            {"platform": "apns", "token": TOKEN_A},
            {"platform": "apns", "token": TOKEN_B, "voip": True},
            {"platform": "fcm", "token": FCM_TOKEN},
            {"platform": "webpush", "subscription": browser.subscription()},
            {"platform": "apns", "token": TOKEN_C},
        )
        rec = await server.connect("r1", "recipient", name="Rae", languages=["en"])
        call = (await rec.request({"type": "call.request"}))["call"]
        await wait_until(lambda: len(apns.pushes) == 3, what="ring pushes")
        await pusher(server).drain()
        status, profile = await http(server, "GET", "/v1/me/profile", "off1")
        assert status == 200
        assert [d["token_end"] for d in profile["devices"]] == [TOKEN_C[-8:]]
        for platform in ("apns", "fcm", "webpush"):
            assert metric(server, "vabroker_push_total", platform=platform, result="pruned") >= 1
        await rec.request({"type": "call.cancel", "call": call})
        await pusher(server).drain()
        # Only the device that is still registered hears of the withdrawal.
        assert [p.payload["type"] for p in apns.to(TOKEN_C)] == ["call.ring", "call.withdrawn"]
        assert apns.to(TOKEN_C)[1].payload["reason"] == "cancelled"
        assert len(apns.to(TOKEN_A)) == 1 and len(google.to(FCM_TOKEN)) == 1
        await rec.close()


async def test_429_is_retried_with_backoff_then_given_up(push_env: PushEnv) -> None:
    apns = push_env.apns
    async with start_server(**push_env.settings, push_retries=2) as server:
        apns.script[TOKEN_A] = [429, 200]
        apns.script[TOKEN_B] = [429, 429, 429, 429]
        await offline_volunteer(server, "off1", {"platform": "apns", "token": TOKEN_A})
        await offline_volunteer(server, "off2", {"platform": "apns", "token": TOKEN_B})
        rec = await server.connect("r1", "recipient", name="Rae", languages=["en"])
        await rec.request({"type": "call.request"})
        await wait_until(lambda: len(apns.pushes) == 5, what="attempts")
        await pusher(server).drain()
        assert [p.status for p in apns.to(TOKEN_A)] == [429, 200]
        assert [p.status for p in apns.to(TOKEN_B)] == [429, 429, 429], "1 try + 2 retries"
        assert metric(server, "vabroker_push_total", platform="apns", result="retried") == 3
        assert metric(server, "vabroker_push_total", platform="apns", result="sent") == 1
        assert metric(server, "vabroker_push_total", platform="apns", result="failed") == 1
        _, profile = await http(server, "GET", "/v1/me/profile", "off2")
        assert len(profile["devices"]) == 1, "a busy push service is no reason to forget a device"
        await rec.close()


def _window_excluding_now() -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "start": (now + timedelta(hours=2)).strftime("%H:%M"),
        "end": (now + timedelta(hours=3)).strftime("%H:%M"),
    }


async def test_quiet_hours_and_daily_caps_block_pushes(push_env: PushEnv) -> None:
    apns = push_env.apns
    async with start_server(**push_env.settings) as server:
        await offline_volunteer(server, "night", {"platform": "apns", "token": TOKEN_A})
        await offline_volunteer(server, "capped", {"platform": "apns", "token": TOKEN_B})
        status, _ = await http(
            server,
            "PUT",
            "/v1/me/profile",
            "night",
            body={"timezone": "UTC", "ring_window": _window_excluding_now()},
        )
        assert status == 200
        status, _ = await http(
            server, "PUT", "/v1/me/profile", "capped", body={"daily_ring_cap": 1}
        )
        assert status == 200
        rec = await server.connect("r1", "recipient", name="Rae", languages=["en"])
        first = await rec.request({"type": "call.request"})
        assert first["notified"] == 1
        await wait_until(lambda: len(apns.pushes) == 1, what="the capped volunteer's ring")
        assert apns.pushes[0].token == TOKEN_B
        await rec.request({"type": "call.cancel", "call": first["call"]})
        await pusher(server).drain()
        second = await rec.request({"type": "call.request"})
        assert second["notified"] == 0, "one is over the cap, the other outside their window"
        await pusher(server).drain()
        assert [p.payload["type"] for p in apns.pushes] == ["call.ring", "call.withdrawn"]
        assert not apns.to(TOKEN_A)
        await rec.close()


async def test_a_slow_push_service_does_not_delay_accept(push_env: PushEnv) -> None:
    apns = push_env.apns
    apns.delay_s = 2.0
    async with start_server(**push_env.settings) as server:
        await offline_volunteer(server, "off1", {"platform": "apns", "token": TOKEN_A})
        on1 = await online_volunteer(server, "on1")
        rec = await server.connect("r1", "recipient", name="Rae", languages=["en"])
        call = (await rec.request({"type": "call.request"}))["call"]
        await on1.expect("call.ring")
        await wait_until(lambda: len(apns.pushes) == 1, what="the ring push to arrive")
        assigned = await on1.request({"type": "call.accept", "call": call})
        assert assigned["type"] == "call.assigned"
        assert (await rec.expect("call.assigned"))["call"] == call
        # The push service has not answered the ring yet: nothing on the accept path waited.
        assert apns.answered == 0 and apns.in_flight == 1
        apns.delay_s = 0.0  # the withdrawal need not be slow too
        await pusher(server).drain()
        assert [p.payload["type"] for p in apns.to(TOKEN_A)] == ["call.ring", "call.withdrawn"]
        await on1.close()
        await rec.close()


async def test_connected_volunteers_can_be_pushed_too(push_env: PushEnv) -> None:
    apns = push_env.apns
    async with start_server(**push_env.settings, push_also_when_connected=True) as server:
        on1 = await online_volunteer(server, "on1")
        await add_device(server, "on1", platform="apns", token=TOKEN_C, voip=True)
        rec = await server.connect("r1", "recipient", name="Rae", languages=["en"])
        call = (await rec.request({"type": "call.request"}))["call"]
        await on1.expect("call.ring")
        await wait_until(lambda: len(apns.pushes) == 1, what="the ring push")
        await rec.request({"type": "call.cancel", "call": call})
        assert (await on1.expect("call.withdrawn"))["reason"] == "cancelled"
        await pusher(server).drain()
        assert [p.payload["type"] for p in apns.to(TOKEN_C)] == ["call.ring", "call.withdrawn"]
        await on1.close()
        await rec.close()


async def test_a_volunteer_who_comes_online_still_withdraws_their_devices(
    push_env: PushEnv,
) -> None:
    apns = push_env.apns
    async with start_server(**push_env.settings) as server:
        await offline_volunteer(server, "off1", {"platform": "apns", "token": TOKEN_A})
        rec = await server.connect("r1", "recipient", name="Rae", languages=["en"])
        call = (await rec.request({"type": "call.request"}))["call"]
        await wait_until(lambda: len(apns.pushes) == 1, what="the ring push")
        # The push woke the app: it connects, sees the ring again, and the caller gives up.
        vol = await server.connect("off1", "volunteer", name="off1", languages=["en"])
        ring = await vol.expect("call.ring")
        assert ring["call"] == call
        await rec.request({"type": "call.cancel", "call": call})
        await vol.expect("call.withdrawn")
        await pusher(server).drain()
        assert [p.payload["type"] for p in apns.to(TOKEN_A)] == ["call.ring", "call.withdrawn"]
        await vol.close()
        await rec.close()


async def test_fcm_access_token_is_renewed_before_it_expires(push_env: PushEnv) -> None:
    google = push_env.google
    google.token_lifetime_s = 60  # inside the renewal margin: every send needs a new token
    async with start_server(**push_env.settings) as server:
        await offline_volunteer(server, "off1", {"platform": "fcm", "token": FCM_TOKEN})
        rec = await server.connect("r1", "recipient", name="Rae", languages=["en"])
        call = (await rec.request({"type": "call.request"}))["call"]
        await wait_until(lambda: len(google.fcm_messages) == 1, what="the ring push")
        await rec.request({"type": "call.cancel", "call": call})
        await pusher(server).drain()
        assert [m["data"]["type"] for m in google.to(FCM_TOKEN)] == ["call.ring", "call.withdrawn"]
        assert google.tokens_granted == 2 and not google.problems
        await rec.close()


@pytest.mark.parametrize(
    ("answer", "reason"), [("call.accept", "answered"), ("call.decline", "declined")]
)
async def test_answering_or_declining_on_one_device_withdraws_the_others(
    push_env: PushEnv, answer: str, reason: str
) -> None:
    apns, google = push_env.apns, push_env.google
    async with start_server(**push_env.settings) as server:
        await offline_volunteer(
            server,
            "off1",
            {"platform": "apns", "token": TOKEN_A, "voip": True},
            {"platform": "fcm", "token": FCM_TOKEN},
        )
        rec = await server.connect("r1", "recipient", name="Rae", languages=["en"])
        call = (await rec.request({"type": "call.request"}))["call"]
        await wait_until(
            lambda: len(apns.pushes) == 1 and len(google.fcm_messages) == 1, what="ring pushes"
        )
        # The phone's push opened the app, which connects and answers or declines.
        phone = await server.connect("off1", "volunteer", name="off1", languages=["en"])
        await phone.expect("call.ring")
        replied = await phone.request({"type": answer, "call": call})
        assert replied["type"] == ("call.assigned" if answer == "call.accept" else "ack")
        await pusher(server).drain()
        for kinds in (
            [p.payload for p in apns.to(TOKEN_A)],
            [m["data"] for m in google.to(FCM_TOKEN)],
        ):
            assert [(k["type"], k.get("reason")) for k in kinds] == [
                ("call.ring", None),
                ("call.withdrawn", reason),
            ]
        await rec.request({"type": "call.end", "call": call})
        await pusher(server).drain()
        assert len(apns.pushes) == 2 and len(google.fcm_messages) == 2  # exactly one withdrawal
        await phone.close()
        await rec.close()


async def test_a_push_that_times_out_leaves_the_connection_usable(push_env: PushEnv) -> None:
    apns = push_env.apns
    apns.delay_s = 1.0
    settings = {**push_env.settings, "push_timeout_s": 0.2, "push_retries": 0}
    async with start_server(**settings) as server:
        await offline_volunteer(server, "off1", {"platform": "apns", "token": TOKEN_A})
        rec = await server.connect("r1", "recipient", name="Rae", languages=["en"])
        call = (await rec.request({"type": "call.request"}))["call"]
        await pusher(server).drain()
        assert metric(server, "vabroker_push_total", platform="apns", result="failed") == 1
        # The late answer arrives on the same HTTP/2 connection, after the send gave up.
        await wait_until(lambda: apns.answered == 1, what="the late answer")
        apns.delay_s = 0.0
        await rec.request({"type": "call.cancel", "call": call})
        await pusher(server).drain()
        assert [p.payload["type"] for p in apns.to(TOKEN_A)] == ["call.ring", "call.withdrawn"]
        assert metric(server, "vabroker_push_total", platform="apns", result="sent") == 1
        assert apns.connections_made == 1, "the connection survived the late answer"
        await rec.close()
