"""Webhooks that outlive their node: a delivery waiting for its retry lives in the store, and
when the node that made the first attempt is killed, another node makes the retry (at least
once, with the same ``X-Webhook-Id``). Nodes are real ``vabroker serve`` processes on a real
``redis-server``; the receiver is a local HTTP server that fails the first attempt.

On the durable embedded store, a pending delivery outlives a restart of the process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from broker.outbox import RetryPolicy, WebhookDelivery, due_deliveries, retryable_status
from broker.store.sqlite import SqliteStore
from signaling.auth import mint
from signaling.config import ConfigError, load_settings
from signaling.webhooks import verify
from tests.helpers import SECRET
from tests.nodes import BrokerNode, broker_nodes, wait_for
from tests.redis_procs import RedisServer

HOOK_SECRET = "hook-secret-0123456789"
ALWAYS = {d: [{"open": "00:00", "close": "24:00"}] for d in ("mon", "tue", "wed", "thu", "fri")}
ALWAYS |= {d: [{"open": "00:00", "close": "24:00"}] for d in ("sat", "sun")}


@dataclass
class FlakyReceiver:
    """Answers 503 to the first ``failures`` requests, 200 after; keeps what it got."""

    failures: int = 1
    url: str = ""
    got: list[dict[str, Any]] = field(default_factory=list)
    hang_first: bool = False  # hold the first request unanswered (its sender dies meanwhile)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = request.headers
        signed = verify(
            HOOK_SECRET,
            headers.get("X-Timestamp", ""),
            body,
            headers.get("X-Signature", ""),
            time.time(),
        )
        status = 503 if len(self.got) < self.failures else 200
        hang = self.hang_first and not self.got
        self.got.append(
            {
                "id": headers.get("X-Webhook-Id"),
                "attempt": headers.get("X-Webhook-Attempt"),
                "event": headers.get("X-Webhook-Event"),
                "signed": signed,
                "body": json.loads(body),
                "status": status,
            }
        )
        if hang:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), 30)
        return web.Response(status=status)


@contextlib.asynccontextmanager
async def flaky_receiver(
    failures: int = 1, hang_first: bool = False
) -> AsyncIterator[FlakyReceiver]:
    receiver = FlakyReceiver(failures, hang_first=hang_first)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    receiver.url = f"http://{host}:{port}/hook"
    try:
        yield receiver
    finally:
        receiver.release.set()
        await runner.cleanup()


@pytest.fixture(scope="module")
def redis_for_nodes() -> Iterator[RedisServer]:
    with RedisServer.start() as server:
        yield server


def org(url: str) -> dict[str, Any]:
    queue = {
        "id": "main",
        "name": "Main line",
        "languages": ["en"],
        "wrapup_s": 0,
        "webhook_url": url,
        "webhook_secret": HOOK_SECRET,
    }
    return {
        "name": "Bank",
        "languages": ["en"],
        "timezone": "UTC",
        "hours": ALWAYS,
        "queues": [queue],
    }


def retry_logged_by(node: BrokerNode, delivery_id: str) -> bool:
    for line in node.log_path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("msg") == "webhook retry scheduled" and entry.get("delivery") == (
                delivery_id
            ):
                return True
    return False


async def test_a_webhook_waiting_for_its_retry_is_delivered_by_another_node(
    redis_for_nodes: RedisServer, tmp_path: Path
) -> None:
    redis_for_nodes.flush()
    settings = {
        "log_json": "true",
        "webhook_allow_private": "true",  # the receiver is on 127.0.0.1
        "webhook_first_retry_s": 3,
        "webhook_timeout_s": 2,
        "webhook_lease_s": 10,
        "webhook_poll_s": 0.2,
    }
    async with flaky_receiver(failures=1) as receiver:
        with broker_nodes(redis_for_nodes.url, tmp_path, count=2, **settings) as nodes:
            admin = {"Authorization": "Bearer " + mint(SECRET, "boss", "admin")}
            async with aiohttp.ClientSession(headers=admin) as http:
                async with http.put(nodes[0].url + "/v1/orgs/bank", json=org(receiver.url)) as r:
                    assert r.status == 201, await r.text()
            agent = await nodes[0].connect("a1", "agent", org="bank", name="A1", languages=["en"])
            status = await agent.request({"type": "agent.status", "state": "available"})
            assert status["state"] == "available", status
            rec = await nodes[0].connect("r1", "recipient", languages=["en"])
            queued = await rec.request({"type": "call.request", "org": "bank"})
            assert queued["state"] == "queued", queued

            # The first attempt fails (503); whichever node made it schedules the retry in
            # the store. That node is killed before the retry is due.
            await wait_for(_true_when(lambda: len(receiver.got) >= 1), "the first attempt")
            first = receiver.got[0]
            assert first["status"] == 503 and first["attempt"] == "1" and first["signed"]
            delivery_id = first["id"]
            assert delivery_id and first["body"]["id"] == delivery_id
            await wait_for(
                _true_when(lambda: any(retry_logged_by(n, delivery_id) for n in nodes)),
                "a node to schedule the retry",
            )
            (attempted,) = [n for n in nodes if retry_logged_by(n, delivery_id)]
            (survivor,) = [n for n in nodes if n is not attempted]
            assert receiver.got[1:] == []  # not due yet (3 s)
            attempted.kill(signal.SIGKILL)

            # The other node makes the retry: same id, second attempt, delivered once.
            await wait_for(_true_when(lambda: len(receiver.got) >= 2), "the retry", timeout=15)
            second = receiver.got[1]
            assert second["id"] == delivery_id and second["attempt"] == "2", second
            assert second["status"] == 200 and second["signed"] and second["event"] == "call.queued"
            assert second["body"] == first["body"]
            assert retry_logged_by(survivor, delivery_id) is False  # it only delivered
            await asyncio.sleep(0.5)
            assert [g["id"] for g in receiver.got].count(delivery_id) == 2  # no third copy
            assert survivor.ready() == 200
            await agent.close()
            await rec.close()


def _true_when(check: Any) -> Any:
    async def condition() -> bool:
        return bool(check())

    return condition


async def test_a_pending_delivery_outlives_a_restart_of_the_durable_store(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    store = SqliteStore(path)
    waiting = WebhookDelivery(
        id="wh_1", kind="call.ended", url="https://hooks.example.org/", secret=None, due=100.0
    )
    await store.add_webhook(waiting)
    await store.retry_webhook(replace(waiting, attempts=2, due=200.0))
    await store.close()
    reopened = SqliteStore(path)
    try:
        assert await reopened.pending_webhooks() == 1
        assert await reopened.claim_webhooks(150.0, lease_s=10) == []
        (claimed,) = await reopened.claim_webhooks(200.0, lease_s=10)
        assert (claimed.id, claimed.attempts, claimed.due) == ("wh_1", 2, 210.0)
    finally:
        await reopened.close()


async def test_a_delivery_whose_node_dies_mid_attempt_goes_to_another_node_after_its_lease(
    redis_for_nodes: RedisServer, tmp_path: Path
) -> None:
    """Node A claims the delivery and dies while the receiver holds the request; node B, started
    after, finds it in Redis once A's lease has run out and delivers it (attempt 1 again: A
    never recorded its attempt)."""
    redis_for_nodes.flush()
    settings = {
        "log_json": "true",
        "webhook_allow_private": "true",
        "webhook_timeout_s": 2,
        "webhook_lease_s": 3,
        "webhook_poll_s": 0.2,
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with flaky_receiver(failures=0, hang_first=True) as receiver:
        with broker_nodes(redis_for_nodes.url, tmp_path / "a", count=1, **settings) as (a,):
            admin = {"Authorization": "Bearer " + mint(SECRET, "boss", "admin")}
            async with aiohttp.ClientSession(headers=admin) as http:
                async with http.put(a.url + "/v1/orgs/bank", json=org(receiver.url)) as r:
                    assert r.status == 201, await r.text()
            rec = await a.connect("r1", "recipient", languages=["en"])
            queued = await rec.request({"type": "call.request", "org": "bank"})
            assert queued["state"] in ("queued", "searching"), queued
            await wait_for(_true_when(lambda: len(receiver.got) >= 1), "the first attempt")
            a.kill(signal.SIGKILL)  # mid-attempt: the receiver has not answered
            killed_at = time.monotonic()
        first = receiver.got[0]
        settings["node_id"] = "node-B"  # another node, not A restarted
        with broker_nodes(redis_for_nodes.url, tmp_path / "b", count=1, **settings) as (b,):
            await wait_for(_true_when(lambda: len(receiver.got) >= 2), "B's attempt", timeout=15)
            again = receiver.got[1]
            assert again["id"] == first["id"] and again["body"] == first["body"]
            assert again["attempt"] == "1" and again["status"] == 200 and again["signed"]
            # Not before A's lease ran out (3 s after A claimed it, which was before the kill).
            assert time.monotonic() - killed_at > 1.0
            await asyncio.sleep(0.5)
            assert len(receiver.got) == 2
            assert b.ready() == 200


def test_a_lease_shorter_than_an_attempt_is_refused() -> None:
    with pytest.raises(ConfigError, match="webhook_lease_s must be more than webhook_timeout_s"):
        load_settings(webhook_timeout_s=10, webhook_lease_s=5)


def test_retries_back_off_and_give_up() -> None:
    policy = RetryPolicy(attempts=5, first_retry_s=1.0)
    assert [policy.next_due(n, 100.0, retryable=True) for n in range(1, 6)] == [
        101.0,
        102.0,
        104.0,
        108.0,
        None,  # five attempts made
    ]
    assert policy.next_due(1, 100.0, retryable=False) is None
    assert [s for s in (400, 401, 404, 408, 409, 429, 500, 502, 503) if retryable_status(s)] == [
        408,
        429,
        500,
        502,
        503,
    ]


def test_deliveries_round_trip_and_are_due_in_order() -> None:
    d = WebhookDelivery("wh_1", "call.queued", "https://x.example/", "s" * 16, {"a": 1}, 2, 5.0)
    assert WebhookDelivery.from_json(d.to_json()) == d
    pending = {
        k: replace(d, id=k, due=due) for k, due in (("b", 3.0), ("a", 3.0), ("c", 1.0), ("z", 9.0))
    }
    assert [x.id for x in due_deliveries(pending, 5.0, 10)] == ["c", "a", "b"]
    assert [x.id for x in due_deliveries(pending, 5.0, 1)] == ["c"]
