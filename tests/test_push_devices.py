"""Device registration (validated at the edge), push configuration, and the sans-I/O push core:
payloads, answers, backoff and the exactly-once withdrawal record."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from broker.events import Ring, Withdrawn
from broker.model import WithdrawReason
from broker.notify.devices import MAX_DEVICES, Device, DeviceRegistration, Platform
from broker.notify.outcome import Backoff, Result, classify
from broker.notify.payloads import (
    apns_request,
    fcm_message,
    ring_push,
    webpush_message,
    webpush_topic,
    withdrawn_push,
)
from broker.notify.planner import PushPlanner
from broker.store.memory import MemoryStore
from signaling.config import ConfigError, load_settings
from signaling.push import build_senders
from signaling.push.webpush import WebPushSender, encrypt
from tests.helpers import Server, start_server
from tests.push_standins import (
    ApnsCredentials,
    FcmCredentials,
    WebPushSubscriber,
    b64url,
    pem_private,
)

TOKEN = "0123456789abcdef" * 4
P256 = b64url(b"\x04" + b"\x01" * 64)
AUTH = b64url(b"\x02" * 16)


@pytest.fixture
async def push_server(tmp_path: Path) -> AsyncIterator[Server]:
    """A server with all three platforms configured (nothing is sent in these tests)."""
    apns = ApnsCredentials.generate()
    account = FcmCredentials.generate().write(tmp_path / "sa.json", "https://127.0.0.1:1/token")
    async with start_server(
        apns_key=apns.key_pem,
        apns_key_id=apns.key_id,
        apns_team_id=apns.team_id,
        apns_topic=apns.topic,
        fcm_service_account=account,
        vapid_private_key=pem_private(ec.generate_private_key(ec.SECP256R1())),
        vapid_subject="https://example.org/contact",
        webpush_hosts=["push.example.org", ".push.example.net"],
    ) as server:
        yield server


async def post(server: Server, sub: str, body: Any, role: str = "volunteer") -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(headers=server.auth(sub, role)) as http,
        http.post(server.url + "/v1/me/devices", json=body) as resp,
    ):
        return resp.status, await resp.json()


def webpush(endpoint: str = "https://push.example.org/s/1", **keys: str) -> dict[str, Any]:
    return {
        "platform": "webpush",
        "subscription": {"endpoint": endpoint, "keys": {"p256dh": P256, "auth": AUTH, **keys}},
    }


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"platform": "pager", "token": TOKEN}, "platform"),
        ({"platform": "apns"}, "needs its push token"),
        ({"platform": "apns", "token": "not-hex-" * 10}, "hex APNs device token"),
        ({"platform": "apns", "token": "ab" * 10}, "hex APNs device token"),
        ({"platform": "fcm", "token": "short"}, "FCM registration token"),
        ({"platform": "fcm", "token": "t" * 100, "voip": True}, "voip is for apns"),
        ({"platform": "fcm", "token": "t" * 100, "topic": "org.example.app"}, "topic"),
        ({"platform": "apns", "token": TOKEN, "topic": "not a bundle"}, "bundle id"),
        ({"platform": "apns", "token": TOKEN, "topic": "org.example.app.voip"}, ".voip"),
        ({"platform": "apns", "token": TOKEN, "voip": "yes"}, "voip"),
        ({"platform": "apns", "token": TOKEN, "colour": "red"}, "colour"),
        ({"platform": "webpush"}, "needs a subscription"),
        ({**webpush(), "token": TOKEN}, "not a token"),
        ({"platform": "apns", "token": TOKEN, "subscription": webpush()["subscription"]}, "token"),
        (webpush("http://push.example.org/s/1"), "https://"),
        (webpush("https://user:pw@push.example.org/s/1"), "user name"),
        (webpush(p256dh=b64url(b"\x04" * 10)), "P-256"),
        (webpush(p256dh="***"), "base64url"),
        (webpush(auth=b64url(b"\x01" * 8)), "16-byte"),
        (webpush("https://127.0.0.1/s/1"), "not a push service"),
        (webpush("https://evil.example.org/s/1"), "not a push service"),
        ([1, 2], "JSON object"),
    ],
)
async def test_bad_devices_are_refused_with_the_reason(
    push_server: Server, body: Any, needle: str
) -> None:
    status, answer = await post(push_server, "v1", body)
    assert status == 400 and answer["error"] == "bad_request", answer
    assert needle in answer["message"], answer["message"]
    assert await push_server.ctx.store.devices("v1") == []


async def test_device_lifecycle(push_server: Server) -> None:
    status, first = await post(
        push_server, "v1", {"platform": "apns", "token": TOKEN, "voip": True}
    )
    assert status == 201 and first["platform"] == "apns" and first["voip"] is True
    assert "token" not in first and first["token_end"] == TOKEN[-8:]
    status, again = await post(push_server, "v1", {"platform": "apns", "token": TOKEN.upper()})
    assert status == 200 and again["id"] == first["id"] and again["voip"] is False
    status, web = await post(push_server, "v1", webpush("https://a.push.example.net/x"))
    assert status == 201 and web["endpoint_host"] == "a.push.example.net"
    async with aiohttp.ClientSession(headers=push_server.auth("v1")) as http:
        async with http.get(push_server.url + "/v1/me/profile") as resp:
            devices = (await resp.json())["devices"]
        assert [d["id"] for d in devices] == [first["id"], web["id"]]
        async with http.delete(f"{push_server.url}/v1/me/devices/{first['id']}") as resp:
            assert resp.status == 204
        async with http.delete(f"{push_server.url}/v1/me/devices/{first['id']}") as resp:
            assert resp.status == 404 and (await resp.json())["error"] == "not_found"
    # Nobody can delete another user's device.
    async with (
        aiohttp.ClientSession(headers=push_server.auth("v2")) as http,
        http.delete(f"{push_server.url}/v1/me/devices/{web['id']}") as resp,
    ):
        assert resp.status == 404
    assert [d.id for d in await push_server.ctx.store.devices("v1")] == [web["id"]]


async def test_a_token_belongs_to_one_user_and_devices_are_limited(push_server: Server) -> None:
    await post(push_server, "v1", {"platform": "fcm", "token": "t" * 100})
    status, _ = await post(push_server, "v2", {"platform": "fcm", "token": "t" * 100})
    assert status == 201
    store = push_server.ctx.store
    assert await store.devices("v1") == [] and not await store.has_devices("v1")
    assert len(await store.devices("v2")) == 1 and await store.has_devices("v2")
    for n in range(MAX_DEVICES - 1):
        assert (await post(push_server, "v2", {"platform": "fcm", "token": f"{n}" * 40}))[0] == 201
    status, answer = await post(push_server, "v2", {"platform": "fcm", "token": "z" * 100})
    assert status == 400 and "remove one first" in answer["message"]


async def test_only_helpers_register_devices(push_server: Server) -> None:
    status, answer = await post(
        push_server, "r1", {"platform": "apns", "token": TOKEN}, role="recipient"
    )
    assert status == 403 and answer["error"] == "forbidden"


async def test_a_platform_that_is_not_configured_is_refused(server: Server) -> None:
    status, answer = await post(server, "v1", {"platform": "apns", "token": TOKEN})
    assert status == 400 and "does not send apns" in answer["message"]


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"apns_key": "x.p8"}, "apns_key_id"),
        ({"apns_key_id": "short"}, "apns_key_id"),
        ({"apns_team_id": "lowercase1"}, "apns_team_id"),
        ({"apns_topic": "no dots"}, "apns_topic"),
        ({"apns_base_url": "http://127.0.0.1:1"}, "apns_base_url"),
        ({"fcm_base_url": "fcm.googleapis.com"}, "fcm_base_url"),
        ({"vapid_private_key": "abc"}, "vapid_subject"),
        ({"vapid_subject": "ops@example.org"}, "vapid_subject"),
        ({"webpush_hosts": ["https://x"]}, "webpush_hosts"),
        ({"push_retries": 99}, "push_retries"),
        ({"push_timeout_s": 0}, "push_timeout_s"),
    ],
)
def test_bad_push_settings_name_the_setting(values: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(**values)
    assert needle in str(err.value)


def test_bad_push_credentials_stop_start_up(tmp_path: Path) -> None:
    apns = ApnsCredentials.generate()
    ids = {"apns_key_id": apns.key_id, "apns_team_id": apns.team_id, "apns_topic": apns.topic}
    rsa_pem = pem_private(FcmCredentials.generate().key)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"apns_key": str(tmp_path / "missing.p8"), **ids}, "cannot read"),
        (
            {"apns_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", **ids},
            "PEM",
        ),
        ({"apns_key": rsa_pem, **ids}, "P-256"),
        ({"fcm_service_account": "{not json"}, "not JSON"),
        ({"fcm_service_account": json.dumps({"project_id": "p"})}, "client_email"),
        (
            {
                "fcm_service_account": json.dumps(
                    {"project_id": "p", "client_email": "e", "private_key": apns.key_pem}
                )
            },
            "RSA",
        ),
        ({"vapid_private_key": "!!", "vapid_subject": "mailto:a@b.org"}, "base64url"),
        ({"vapid_private_key": b64url(b"k" * 16), "vapid_subject": "mailto:a@b.org"}, "32 bytes"),
        ({"push_ca_file": str(tmp_path / "nope.pem")}, "push_ca_file"),
    ]
    for values, needle in cases:
        with pytest.raises(ConfigError) as err:
            build_senders(load_settings(**values))
        assert needle in str(err.value), (values, str(err.value))
    raw = b64url(
        ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value.to_bytes(32, "big")
    )
    senders = build_senders(load_settings(vapid_private_key=raw, vapid_subject="mailto:a@b.org"))
    assert set(senders) == {Platform.WEBPUSH}


# --- the sans-I/O core ------------------------------------------------------------------------


def _ring(to: str = "v1", call: str = "c_1", expires_at: float = 1045.0) -> Ring:
    return Ring(to=to, call_id=call, language="en", requester_name="Rae", expires_at=expires_at)


def _device(platform: Platform = Platform.APNS, **fields: Any) -> Device:
    reg = {"platform": platform, "token": TOKEN if platform is Platform.APNS else "t" * 100}
    if platform is Platform.WEBPUSH:
        reg = webpush()
    reg.update(fields)
    return Device.register("v1", DeviceRegistration.model_validate(reg), 1000.0)


def test_payloads_share_the_call_as_collapse_key_and_expire_with_the_ring() -> None:
    ring = ring_push(_ring())
    gone = withdrawn_push(Withdrawn("v1", "c_1", WithdrawReason.ANSWERED), 1045.0)
    voip = _device(voip=True, topic="org.example.other")
    r, w = (
        apns_request(voip, ring, "org.example.helper", 1000.0),
        apns_request(voip, gone, "org.example.helper", 1000.0),
    )
    assert (r.topic, r.push_type, r.priority, r.ttl_s) == ("org.example.other.voip", "voip", 10, 45)
    assert r.collapse_id == w.collapse_id == "c_1" and w.payload["type"] == "call.withdrawn"
    assert "aps" not in r.payload  # PushKit hands VoIP payloads to the app as they are
    alert = apns_request(_device(), ring, "org.example.helper", 1000.0)
    assert alert.push_type == "alert" and alert.topic == "org.example.helper"
    assert alert.payload["aps"]["interruption-level"] == "time-sensitive"
    # A lapsed ring is never sent with TTL 0; its withdrawal stays deliverable for a while.
    assert ring.ttl(2000.0) == 1 and gone.ttl(2000.0) == 60 and gone.ttl(900.0) == 145
    fcm = fcm_message(_device(Platform.FCM), ring, 1000.0)["message"]
    assert fcm["android"] == {"priority": "HIGH", "ttl": "45s", "collapse_key": "c_1"}
    assert all(isinstance(v, str) for v in fcm["data"].values())
    web = webpush_message(gone, 1000.0)
    assert json.loads(web.body)["reason"] == "answered" and web.topic == "c_1"
    assert len(webpush_topic("c_" + "x" * 40)) == 32 and webpush_topic("a.b") != "a.b"


def test_answers_mean_what_the_services_document() -> None:
    assert classify(Platform.APNS, 200) is Result.SENT
    assert classify(Platform.APNS, 410, "Unregistered") is Result.PRUNE
    assert classify(Platform.APNS, 400, "BadDeviceToken") is Result.PRUNE
    assert classify(Platform.APNS, 400, "BadCollapseId") is Result.FAILED
    assert classify(Platform.APNS, 429, "TooManyRequests") is Result.RETRY
    assert (
        classify(Platform.APNS, 503) is Result.RETRY and classify(Platform.FCM, 0) is Result.RETRY
    )
    assert classify(Platform.FCM, 404, "UNREGISTERED") is Result.PRUNE
    assert classify(Platform.FCM, 400, "INVALID_ARGUMENT") is Result.FAILED
    assert classify(Platform.FCM, 401) is Result.RETRY
    assert classify(Platform.WEBPUSH, 201) is Result.SENT
    assert classify(Platform.WEBPUSH, 410) is Result.PRUNE
    assert classify(Platform.WEBPUSH, 413) is Result.FAILED


def test_backoff_is_bounded() -> None:
    b = Backoff(retries=3, base_s=0.5, cap_s=4.0)
    assert [b.delay(n) for n in range(4)] == [0.5, 1.0, 2.0, None]
    assert b.delay(0, retry_after_s=3.0) == 3.0 and b.delay(0, retry_after_s=0.1) == 0.5
    assert b.delay(0, retry_after_s=30.0) is None


def test_web_push_encryption_is_rfc8291() -> None:
    import http_ece

    browser = WebPushSubscriber("https://push.example.org/s/1")
    keys = browser.subscription()["keys"]
    body = encrypt(b'{"type":"call.ring"}', keys["p256dh"], keys["auth"])
    assert body != encrypt(b'{"type":"call.ring"}', keys["p256dh"], keys["auth"])  # fresh salt
    plain = http_ece.decrypt(body, private_key=browser.key, auth_secret=browser.auth)
    assert plain == b'{"type":"call.ring"}'


async def test_planner_pushes_each_device_once_and_withdraws_exactly_once() -> None:
    store = MemoryStore()
    apns = await store.add_device(_device())
    fcm = await store.add_device(_device(Platform.FCM))
    await store.add_device(_device(Platform.WEBPUSH))  # this node sends no Web Push
    planner = PushPlanner(store, frozenset({Platform.APNS, Platform.FCM}))
    jobs = await planner.ring(_ring(), connected=False)
    assert [j.device.id for j in jobs] == [apns.id, fcm.id]
    assert await planner.ring(_ring(), connected=False) == [], "a re-sent ring is not re-pushed"
    assert await planner.ring(_ring(call="c_2"), connected=True) == []
    await store.set_connected("v1", True)  # connected on another node
    assert await planner.ring(_ring(call="c_3"), connected=False) == []
    gone = Withdrawn("v1", "c_1", WithdrawReason.EXPIRED)
    withdrawals = await planner.withdrawn(gone)
    assert [(j.device.id, j.push.kind.value) for j in withdrawals] == [
        (apns.id, "call.withdrawn"),
        (fcm.id, "call.withdrawn"),
    ]
    assert await planner.withdrawn(gone) == [], "a second withdrawal finds nothing to send"
    assert await planner.withdrawn(Withdrawn("v1", "c_2", WithdrawReason.EXPIRED)) == []


async def test_push_records_nobody_takes_are_dropped_a_day_after_they_expire() -> None:
    store = MemoryStore()
    assert await store.record_pushes("c_a", "v1", ["d1"], 1000.0) == ["d1"]
    await store.record_pushes("c_b", "v1", ["d1"], 1000.0 + 3600)
    await store.record_pushes("c_c", "v2", ["d2"], 1000.0 + 3600)
    assert await store.take_pushes("c_c", "v2") is not None  # kept within the day
    await store.record_pushes("c_d", "v1", ["d1"], 1000.0 + 86401.0)
    assert await store.take_pushes("c_a", "v1") is None, "a day past its expiry"
    for call in ("c_b", "c_d"):
        taken = await store.take_pushes(call, "v1")
        assert taken is not None and taken.device_ids == ["d1"]


async def test_the_webpush_key_is_served_for_browsers_to_subscribe_with(
    push_server: Server,
) -> None:
    """``GET /v1/push/webpush``: the VAPID public key the broker signs its pushes with, which a
    browser passes as ``applicationServerKey``; a broker without Web Push answers 404."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(push_server.url + "/v1/push/webpush") as resp,
    ):
        assert resp.status == 200
        body = await resp.json()
    sender = build_senders(push_server.ctx.settings)[Platform.WEBPUSH]
    assert isinstance(sender, WebPushSender)
    assert body == {"public_key": sender.public_key}
    raw = base64.urlsafe_b64decode(body["public_key"] + "=" * (-len(body["public_key"]) % 4))
    assert len(raw) == 65 and raw[0] == 4  # an uncompressed P-256 point

    async with (
        start_server() as plain,
        aiohttp.ClientSession() as http,
        http.get(plain.url + "/v1/push/webpush") as resp,
    ):
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"
