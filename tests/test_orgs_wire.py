"""Partner organisations over the wire: admin API, directory, a queued call from request to end,
the agents' console, access rules, and signed webhooks to a receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from broker.clock import VirtualClock
from broker.events import AgentStatusChanged, QueueUpdate
from broker.service import Broker
from broker.store.memory import MemoryStore
from signaling.messages import AgentState, QueueUpdateMessage, event_message, parse_server
from signaling.webhooks import WebhookSender, signature, verify
from tests.helpers import Client, Server, start_server
from tests.queue_helpers import ALWAYS, OFFICE, caller, make_org
from tests.queue_helpers import agent as agent_of

SECRET = "whsec-0123456789abcdef"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    # The webhook receivers here listen on 127.0.0.1, which a broker refuses unless told.
    async with start_server(webhook_allow_private=True) as srv:
        yield srv


def org_body(webhook_url: str | None = None, **queue: Any) -> dict[str, Any]:
    q: dict[str, Any] = {"id": "main", "name": "Main line", "languages": ["en"], "wrapup_s": 0}
    if webhook_url:
        q.update(webhook_url=webhook_url, webhook_secret=SECRET)
    q.update(queue)
    return {
        "name": "Bank",
        "description": "Cards and accounts",
        "languages": ["en"],
        "timezone": "Europe/London",
        "hours": ALWAYS,
        "queues": [q],
    }


async def put_org(
    server: Server,
    body: dict[str, Any],
    org_id: str = "bank",
    who: tuple[str, str] = ("boss", "admin"),
    **claims: Any,
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(headers=server.auth(who[0], who[1], **claims)) as http,
        http.put(f"{server.url}/v1/orgs/{org_id}", json=body) as resp,
    ):
        return resp.status, await resp.json()


async def get(server: Server, path: str, sub: str, role: str, **claims: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(headers=server.auth(sub, role, **claims)) as http,
        http.get(server.url + path) as resp,
    ):
        return resp.status, await resp.json()


async def agent(server: Server, sub: str, org: str = "bank") -> Client:
    client = await server.connect(sub, "agent", org=org, name=sub.upper(), languages=["en"])
    answer = await client.request({"type": "agent.status", "state": "available"})
    assert answer == {"type": "agent.status", "state": "available", "ref": answer["ref"]}
    return client


# --- admin API and directory --------------------------------------------------------------------


async def test_admin_puts_and_reads_an_organisation(server: Server) -> None:
    status, body = await put_org(server, org_body("http://127.0.0.1:9/hook"))
    assert status == 201, body
    assert body["queues"][0]["webhook_secret_set"] is True
    assert "webhook_secret" not in body["queues"][0]  # write-only
    # Sent back without the secret, the queue keeps it.
    again = org_body("http://127.0.0.1:9/hook")
    del again["queues"][0]["webhook_secret"]
    status, body = await put_org(server, again)
    assert status == 200 and body["queues"][0]["webhook_secret_set"] is True
    org = await server.ctx.store.get_org("bank")
    assert org is not None and org.queues[0].webhook_secret == SECRET
    status, body = await get(server, "/v1/orgs/bank", "boss", "admin")
    assert status == 200 and body["name"] == "Bank" and body["hours"]["mon"] == ALWAYS["mon"]
    # An org admin manages their own organisation only.
    assert (await put_org(server, org_body(), who=("own", "admin"), org="bank"))[0] == 200
    assert (await put_org(server, org_body(), "atlas", who=("own", "admin"), org="bank"))[0] == 403
    for sub, role, claims in (("a1", "agent", {"org": "bank"}), ("r1", "recipient", {})):
        assert (await put_org(server, org_body(), who=(sub, role), **claims))[0] == 403
        assert (await get(server, "/v1/orgs/bank", sub, role, **claims))[0] == 403
    assert (await get(server, "/v1/orgs/nobody", "boss", "admin"))[0] == 404


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"timezone": "Nowhere/Land"}, "timezone"),
        ({"hours": {"mon": [{"open": "25:00", "close": "26:00"}]}}, "hours.mon.0.open"),
        ({"queues": [{"id": "main", "name": "M", "strategy": "lottery"}]}, "queues.0.strategy"),
        ({"queues": [{"id": "main", "name": "M", "max_length": 0}]}, "queues.0.max_length"),
        (
            {"queues": [{"id": "main", "name": "M", "webhook_url": "http://127.0.0.1:9/"}]},
            "queues.main.webhook_secret",
        ),
        ({"id": "other"}, "id"),
        ({"name": ""}, "name"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_bad_organisations_get_400_naming_the_field(
    server: Server, change: dict[str, Any], named: str
) -> None:
    body = org_body()
    body.update(change)
    status, answer = await put_org(server, body)
    assert status == 400 and answer["error"] == "bad_request", answer
    assert answer["message"].startswith(named) or f"{named}:" in answer["message"], answer
    assert await server.ctx.store.get_org("bank") is None  # nothing half-written


async def test_bad_bodies_and_ids(server: Server) -> None:
    async with aiohttp.ClientSession(headers=server.auth("boss", "admin")) as http:
        async with http.put(
            f"{server.url}/v1/orgs/bank", data=b"{", headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 400 and "JSON" in (await resp.json())["message"]
        async with http.put(f"{server.url}/v1/orgs/bank", json=[1, 2]) as resp:
            assert resp.status == 400
        async with http.put(f"{server.url}/v1/orgs/BAD%20ID", json=org_body()) as resp:
            assert resp.status == 400 and (await resp.json())["message"].startswith("id:")
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/v1/orgs") as resp:
        assert resp.status == 401


async def test_a_demo_broker_has_a_demo_organisation() -> None:
    async with start_server(demo=True) as server:
        status, body = await get(server, "/v1/orgs", "r1", "recipient")
        assert status == 200 and [o["id"] for o in body["orgs"]] == ["demo-org"]
        assert body["orgs"][0]["open_now"] is True
    async with start_server() as server:
        assert (await get(server, "/v1/orgs", "r1", "recipient"))[1] == {"orgs": []}


async def test_directory(server: Server) -> None:
    await put_org(server, org_body())
    office = org_body()
    office.update(name="Chemist", hours=OFFICE, closures=["2026-12-25"])
    await put_org(server, office, "chemist")
    status, body = await get(server, "/v1/orgs", "r1", "recipient")
    assert status == 200
    by_id = {o["id"]: o for o in body["orgs"]}
    assert set(by_id) == {"bank", "chemist"}
    bank = by_id["bank"]
    assert bank["open_now"] is True and bank["queues"] == [
        {"id": "main", "name": "Main line", "languages": ["en"]}
    ]
    assert bank["languages"] == ["en"] and bank["description"] == "Cards and accounts"
    chemist = by_id["chemist"]
    assert chemist["next_opening"] is not None and chemist["next_opening"].endswith(
        ("+00:00", "+01:00")
    )
    assert "09:00" in chemist["next_opening"] or chemist["open_now"]
    assert "webhook_secret" not in json.dumps(body)


# --- a queued call over the wire ----------------------------------------------------------------


async def test_a_queued_call_from_request_to_end(server: Server) -> None:
    await put_org(server, org_body())
    a1 = await agent(server, "a1")
    on_connect = await a1.expect("queue.update")
    assert on_connect["org"] == "bank" and on_connect["waiting"] == []
    assert on_connect["agents"][0]["id"] == "a1" and on_connect["agents"][0]["state"] == "away"
    first = await a1.expect("queue.update")
    assert first["agents"][0]["state"] == "available" and first["agents"][0]["activity"] == "idle"
    rec = await server.connect("r1", "recipient", name="Rae", languages=["en"])
    status = await rec.request({"type": "call.request", "org": "bank", "topic": "card"})
    assert status["type"] == "call.status" and status["state"] == "queued"
    assert status["position"] == 1 and status["eta_s"] == 0 and "notified" not in status
    ring = await a1.expect("call.ring")
    assert ring["call"] == status["call"] and ring["org"] == "bank" and ring["queue"] == "main"
    assert ring["requester"] == {"display_name": "Rae"} and ring["topic"] == "card"
    update = await a1.expect("queue.update")
    assert [(w["call"], w["ringing"]) for w in update["waiting"]] == [(ring["call"], ["a1"])]
    assigned = await a1.request({"type": "call.accept", "call": ring["call"]})
    assert assigned["type"] == "call.assigned" and assigned["offerer"] is False
    assert (await rec.expect("call.assigned"))["offerer"] is True
    await rec.send(
        {"type": "signal", "call": ring["call"], "data": {"sdp": {"type": "offer", "sdp": "v=0"}}}
    )
    assert (await a1.expect("signal"))["data"]["sdp"]["type"] == "offer"
    ended = await a1.request({"type": "call.end", "call": ring["call"]})
    assert (
        ended["type"] == "call.ended" and ended["reason"] == "completed" and ended["by"] == "agent"
    )
    assert (await rec.expect("call.ended"))["by"] == "agent"
    final = await a1.expect("queue.update", timeout=2)
    while final["today"]["answered"] != 1:
        final = await a1.expect("queue.update", timeout=2)
    assert final["today"]["abandoned"] == 0


async def test_org_closed_and_queue_full_over_the_wire(server: Server) -> None:
    closed = org_body()
    closed["hours"] = {}
    await put_org(server, closed, "night")
    await put_org(server, org_body(max_length=1), "tiny")
    r1 = await server.connect("r1", "recipient", languages=["en"], timezone="Asia/Tokyo")
    answer = await r1.request({"type": "call.request", "org": "night"})
    assert answer["type"] == "error" and answer["code"] == "org_closed"
    assert "no opening hours" in answer["message"]
    assert (await r1.request({"type": "call.request", "org": "tiny"}))["state"] == "queued"
    r2 = await server.connect("r2", "recipient", languages=["en"])
    answer = await r2.request({"type": "call.request", "org": "tiny"})
    assert answer["type"] == "error" and answer["code"] == "queue_full"
    answer = await r2.request({"type": "call.request", "org": "nobody"})
    assert answer["code"] == "not_found"


async def test_queue_view_is_for_that_orgs_agents_and_admins(server: Server) -> None:
    await put_org(server, org_body())
    rec = await server.connect("r1", "recipient", languages=["en"])
    call = (await rec.request({"type": "call.request", "org": "bank", "topic": "lost card"}))[
        "call"
    ]
    status, view = await get(server, "/v1/orgs/bank/queue", "a1", "agent", org="bank")
    assert status == 200
    assert 'vabroker_queue_waiting{org="bank"} 1.0' in server.ctx.metrics.render().decode()
    assert [(w["call"], w["position"], w["topic"]) for w in view["waiting"]] == [
        (call, 1, "lost card")
    ]
    assert (await get(server, "/v1/orgs/bank/queue", "boss", "admin"))[0] == 200
    assert (await get(server, "/v1/orgs/bank/queue", "own", "admin", org="bank"))[0] == 200
    for sub, role, claims in (
        ("r1", "recipient", {}),
        ("v1", "volunteer", {}),
        ("x1", "agent", {"org": "chemist"}),
        ("x2", "admin", {"org": "chemist"}),
    ):
        status, body = await get(server, "/v1/orgs/bank/queue", sub, role, **claims)
        assert status == 403 and body["error"] == "forbidden", (sub, body)


async def test_an_agent_cannot_see_or_accept_another_orgs_calls(server: Server) -> None:
    await put_org(server, org_body())
    await put_org(server, org_body(), "chemist")
    teller = await agent(server, "teller", "bank")
    other = await agent(server, "pharmacist", "chemist")
    rec = await server.connect("r1", "recipient", languages=["en"])
    call = (await rec.request({"type": "call.request", "org": "bank"}))["call"]
    await teller.expect("call.ring", call=call)
    answer = await other.request({"type": "call.accept", "call": call})
    assert answer["type"] == "error" and answer["code"] == "forbidden"
    seen = await other.quiet(0.3)
    assert call not in json.dumps(seen)  # no ring, no console line for another org's call
    answer = await other.request({"type": "signal", "call": call, "data": {"candidate": None}})
    assert answer["code"] == "forbidden"


async def test_autopause_is_told_to_the_agent(server: Server) -> None:
    await put_org(server, org_body(ring_timeout_s=5))
    a1 = await agent(server, "a1")
    rec = await server.connect("r1", "recipient", languages=["en"])
    call = (await rec.request({"type": "call.request", "org": "bank"}))["call"]
    await a1.expect("call.ring", call=call)
    # Three lapsed rings on the real clock would take 15 s: move the timers instead.
    for n in range(3):
        await server.ctx.store.schedule(f"ring|{call}|a1", time.time())
        server.ctx.hub.wake()
        await a1.expect("call.withdrawn", call=call, reason="expired")
        if n < 2:
            await a1.expect("call.ring", call=call)
    told = await a1.expect("agent.status")
    assert told == {"type": "agent.status", "state": "away", "reason": "missed_rings"}


# --- webhooks -----------------------------------------------------------------------------------


@dataclass
class Receiver:
    url: str
    got: list[dict[str, Any]] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    delay_s: float = 0.0
    status: int = 200
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@contextlib.asynccontextmanager
async def receiver(delay_s: float = 0.0, status: int = 200) -> AsyncIterator[Receiver]:
    holder: list[Receiver] = []

    async def hook(request: web.Request) -> web.Response:
        rec = holder[0]
        body = await request.read()
        ok = verify(
            SECRET,
            request.headers.get("X-Timestamp", ""),
            body,
            request.headers.get("X-Signature", ""),
            time.time(),
        )
        if not ok:
            rec.bad.append(body.decode())
            return web.Response(status=401)
        if rec.delay_s:
            await asyncio.sleep(rec.delay_s)
        rec.got.append({**json.loads(body), "_event_header": request.headers["X-Webhook-Event"]})
        rec.arrived.set()
        return web.Response(status=rec.status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    holder.append(Receiver(f"http://{host}:{port}/hook", delay_s=delay_s, status=status))
    try:
        yield holder[0]
    finally:
        await runner.cleanup()


def fast_retries(server: Server) -> WebhookSender:
    sender: WebhookSender = server.ctx.extras["webhooks"]
    sender.attempts, sender.first_retry_s, sender.timeout_s = 3, 0.05, 0.5
    return sender


async def wait_for(check: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_webhooks_are_signed_and_tell_the_calls_course(server: Server) -> None:
    async with receiver() as hooks:
        sender = fast_retries(server)
        await put_org(server, org_body(hooks.url))
        a1 = await agent(server, "a1")
        rec = await server.connect("r1", "recipient", languages=["en"])
        call = (await rec.request({"type": "call.request", "org": "bank"}))["call"]
        await a1.expect("call.ring", call=call)
        await a1.request({"type": "call.accept", "call": call})
        await rec.request({"type": "call.end", "call": call})
        await wait_for(lambda: len(hooks.got) == 3)
        await sender.drain()
        assert hooks.bad == []
        kinds = [h["event"] for h in hooks.got]
        assert sorted(kinds) == ["call.assigned", "call.ended", "call.queued"]
        assert all(h["_event_header"] == h["event"] and h["call"] == call for h in hooks.got)
        ended = next(h for h in hooks.got if h["event"] == "call.ended")
        assert ended["reason"] == "completed" and ended["agent"] == "a1"
        assert ended["wait_s"] >= 0 and ended["talk_s"] >= 0
        assert all("r1" not in h.values() and "recipient" not in h for h in hooks.got)
        metrics = server.ctx.metrics.render().decode()
        assert 'vabroker_webhooks_total{result="delivered"} 3.0' in metrics


def test_signatures_are_checked() -> None:
    body = b'{"event":"call.queued"}'
    now = time.time()
    header = signature(SECRET, str(int(now)), body)
    assert verify(SECRET, str(int(now)), body, header, now)
    assert not verify(SECRET, str(int(now)), body + b" ", header, now)  # body changed
    assert not verify("another-secret-0000", str(int(now)), body, header, now)
    assert not verify(
        SECRET, str(int(now) - 3600), body, signature(SECRET, str(int(now) - 3600), body), now
    )  # replay
    assert not verify(SECRET, "soon", body, header, now)


@pytest.mark.parametrize("trouble", ["down", "slow", "refusing"])
async def test_a_receiver_that_is_down_or_slow_changes_nothing(trouble: str) -> None:
    async with (
        start_server(webhook_allow_private=True) as server,
        receiver(
            delay_s=30 if trouble == "slow" else 0, status=503 if trouble == "refusing" else 200
        ) as hooks,
    ):
        sender = fast_retries(server)
        url = hooks.url
        if trouble == "down":
            url = "http://127.0.0.1:9/hook"  # the discard port: nothing listens there
        await put_org(server, org_body(url))
        a1 = await agent(server, "a1")
        rec = await server.connect("r1", "recipient", languages=["en"])
        started = time.monotonic()
        status = await rec.request({"type": "call.request", "org": "bank"}, timeout=2)
        assert status["state"] == "queued"
        ring = await a1.expect("call.ring", timeout=2)
        assigned = await a1.request({"type": "call.accept", "call": ring["call"]}, timeout=2)
        assert assigned["type"] == "call.assigned"
        ended = await rec.request({"type": "call.end", "call": ring["call"]}, timeout=2)
        assert ended["reason"] == "completed"
        # The whole call went by while the receiver was no help at all.
        assert time.monotonic() - started < 2.0
        # Meanwhile each webhook was tried three times (a slow receiver times out after 0.5 s)
        # and counted as failed; the failures are logged.
        await wait_for(lambda: 'result="failed"} 3.0' in server.ctx.metrics.render().decode())
        metrics = server.ctx.metrics.render().decode()
        assert 'vabroker_webhooks_total{result="retried"} 6.0' in metrics
        await sender.drain()


async def test_the_new_server_messages_parse_back() -> None:
    store = MemoryStore()
    broker = Broker(store, VirtualClock(1_781_524_800.0))
    await store.put_org(make_org())
    await agent_of(broker, "a1")
    out = await broker.request(await caller(store, "r1"), org="bank", topic="card")
    update = next(e for e in out.events if isinstance(e, QueueUpdate))
    for event, kind in (
        (update, QueueUpdateMessage),
        (AgentStatusChanged("a1", "away", "missed_rings"), AgentState),
    ):
        wire = event_message(event, 0.0, []).wire()
        parsed = parse_server(json.dumps(wire))
        assert isinstance(parsed, kind) and parsed.wire() == wire
    assert wire == {"type": "agent.status", "state": "away", "reason": "missed_rings"}
