"""Webhooks to partner organisations' systems: signed JSON POSTs, retried with backoff.

The broker describes an event (``broker.queues.WebhookEvent``) and hands it to ``submit``, which
puts it in the store's outbox and returns at once: attempts run in their own tasks, so a
receiver that is slow or down never delays routing, and a delivery waiting for its retry
outlives the node that made the first attempt (``broker.outbox``). Each attempt is signed
afresh:

    X-Timestamp: <Unix seconds>
    X-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
    X-Webhook-Id: <the event's id, the same on every attempt from every node>
    X-Webhook-Attempt: <1, 2, ...>

so that a receiver can check the body came from the broker and refuse replays of old requests
(reject timestamps more than a few minutes from its own clock). Delivery is at least once: a
node that dies after the receiver answered but before recording it leaves the delivery to be
sent again, so receivers de-duplicate on ``X-Webhook-Id``.

Receivers are on public addresses only (unless ``webhook_allow_private``): an organisation's
admin writes the URL, and must not reach the broker's own network through it. A URL naming a
refused address is refused when the organisation is saved; a host name is checked when it is
resolved, on every connection, so a name that later resolves to a private address (DNS
rebinding) is refused too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from prometheus_client import CollectorRegistry, Counter
from yarl import URL

from broker.outbox import RetryPolicy, WebhookDelivery, retryable_status
from broker.queues import WebhookEvent
from broker.store.base import Store, StoreUnavailable
from broker.store.memory import MemoryStore

log = logging.getLogger("vabroker.webhooks")

USER_AGENT = "vabroker-webhooks/1"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Signature`` value for a body sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str, timestamp: str, body: bytes, header: str, now: float, tolerance_s: float = 300
) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    try:
        fresh = abs(now - float(timestamp)) <= tolerance_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(signature(secret, timestamp, body), header)


def refused_address(address: str) -> str | None:
    """Why webhooks may not go to this IP address (None: they may). IPv4-mapped IPv6 addresses
    are judged as the IPv4 address they carry."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for why, hit in (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not public", not ip.is_global),
    ):
        if hit:
            return why
    return None


def refused_host(host: str) -> str | None:
    """Why a URL's host is refused before any look-up: a refused IP literal, or localhost."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return "loopback"
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return None  # a name: checked when it is resolved
    return refused_address(name)


class PublicResolver(AbstractResolver):
    """The default resolver, less every address webhooks may not reach."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept = [r for r in results if refused_address(r["host"]) is None]
        if not kept:
            whys = sorted({refused_address(r["host"]) or "" for r in results})
            raise OSError(f"{host} resolves only to refused addresses ({', '.join(whys)})")
        return kept

    async def close(self) -> None:
        await self._inner.close()


class WebhookSender:
    """Sends webhooks from the store's outbox (``broker.outbox``).

    ``submit`` puts the event in the store as a delivery and returns at once. A loop claims due
    deliveries from the store (a lease: see ``broker.outbox``) and attempts each in its own
    task; a failed attempt is put back with its next due time, so that whichever node claims it
    next (this one, or another if this one dies) makes the retry. Every node runs the loop; with
    a shared store (Redis) the nodes share the outbox.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        attempts: int = 5,
        first_retry_s: float = 1.0,
        timeout_s: float = 5.0,
        concurrency: int = 16,
        max_pending: int = 10_000,
        allow_private: bool = False,
        resolver: AbstractResolver | None = None,
        store: Store | None = None,
        lease_s: float = 60.0,
        poll_s: float = 1.0,
        node: str = "",
    ) -> None:
        self.allow_private = allow_private
        self._resolver = resolver  # the name look-up beneath the address check (tests)
        # Where deliveries wait; in this process only when no store is given (tests, tools).
        self.store: Store = store if store is not None else MemoryStore()
        self.attempts = attempts
        self.first_retry_s = first_retry_s
        self.timeout_s = timeout_s
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.node = node
        self.max_pending = max_pending
        self.concurrency = concurrency
        self.results = Counter(
            "vabroker_webhooks_total",
            "Webhook attempts' outcomes (delivered, retried, failed, dropped)",
            ["result"],
            registry=registry,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._attempting: set[str] = set()  # delivery ids with an attempt running here
        self._submitted: set[str] = set()  # ids submitted here and not yet settled (drain)
        self._settled = asyncio.Event()
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.attempts, first_retry_s=self.first_retry_s)

    def submit(self, event: WebhookEvent) -> None:
        """Put a delivery in the outbox and return at once."""
        if self._session is None or len(self._tasks) >= self.max_pending:
            self.results.labels("dropped").inc()
            log.warning(
                "webhook dropped: sender not running or too many pending",
                extra={"event": event.kind, "url": event.url},
            )
            return
        delivery_id = str(event.body.get("id") or "wh_" + secrets.token_urlsafe(12))
        delivery = WebhookDelivery(
            id=delivery_id,
            kind=event.kind,
            url=event.url,
            secret=event.secret,
            body=event.body,
            due=time.time(),
        )
        self._submitted.add(delivery_id)
        self._spawn(self._add(delivery))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _add(self, delivery: WebhookDelivery) -> None:
        try:
            await self.store.add_webhook(delivery)
        except StoreUnavailable as exc:
            self._settle(delivery.id)
            self.results.labels("dropped").inc()
            log.warning(
                "webhook dropped: the store is unavailable",
                extra={"event": delivery.kind, "url": delivery.url, "why": str(exc)},
            )
            return
        self._wake.set()

    async def _run(self) -> None:
        """Claim due deliveries and attempt them, until stopped."""
        while True:
            self._wake.clear()
            room = self.concurrency - len(self._attempting)
            batch: list[WebhookDelivery] = []
            if room > 0:
                try:
                    batch = await self.store.claim_webhooks(time.time(), self.lease_s, room)
                except StoreUnavailable as exc:
                    log.warning("webhook outbox unavailable", extra={"why": str(exc)})
                except Exception:  # the loop must outlive any one bad turn
                    log.exception("webhook outbox turn failed")
            for delivery in batch:
                self._attempting.add(delivery.id)
                self._spawn(self._attempt(delivery))
            if len(batch) == room and room > 0:
                continue  # there may be more due right now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()

    async def _attempt(self, delivery: WebhookDelivery) -> None:
        try:
            delivered, retryable, why = await self._post(delivery)
            made = delivery.attempts + 1
            if delivered:
                await self._finish(delivery, "delivered")
                return
            due = self.policy.next_due(made, time.time(), retryable)
            if due is None:
                await self._finish(delivery, "failed")
                log.warning(
                    "webhook failed",
                    extra={
                        "event": delivery.kind,
                        "url": delivery.url,
                        "call": delivery.body.get("call"),
                        "delivery": delivery.id,
                        "attempts": made,
                        "why": why,
                    },
                )
                return
            await self.store.retry_webhook(replace(delivery, attempts=made, due=due))
            self.results.labels("retried").inc()
            log.info(
                "webhook retry scheduled",
                extra={
                    "event": delivery.kind,
                    "delivery": delivery.id,
                    "node": self.node,
                    "attempts": made,
                    "due_in_s": round(due - time.time(), 3),
                    "why": why,
                },
            )
            # Wake this node's loop when it is due; other nodes find it on their next turn.
            asyncio.get_running_loop().call_later(max(due - time.time(), 0), self._wake.set)
        except StoreUnavailable as exc:
            # The attempt's outcome could not be recorded: the lease runs out and the delivery
            # is attempted again (at least once, never lost).
            log.warning(
                "webhook outcome not recorded; it will be attempted again",
                extra={"delivery": delivery.id, "why": str(exc)},
            )
        finally:
            self._attempting.discard(delivery.id)
            self._wake.set()

    async def _finish(self, delivery: WebhookDelivery, result: str) -> None:
        await self.store.drop_webhook(delivery.id)
        self.results.labels(result).inc()
        self._settle(delivery.id)

    def _settle(self, delivery_id: str) -> None:
        self._submitted.discard(delivery_id)
        self._settled.set()

    async def _post(self, delivery: WebhookDelivery) -> tuple[bool, bool, str]:
        """One attempt: (delivered, worth retrying, why not)."""
        assert self._session is not None
        refused = None if self.allow_private else refused_host(URL(delivery.url).host or "")
        if refused is not None:
            log.warning(
                "webhook refused: not a public address",
                extra={"event": delivery.kind, "url": delivery.url, "why": refused},
            )
            return False, False, f"not a public address ({refused})"
        body = json.dumps(delivery.body, separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Timestamp": timestamp,
            "X-Webhook-Id": delivery.id,
            "X-Webhook-Event": delivery.kind,
            "X-Webhook-Attempt": str(delivery.attempts + 1),
        }
        if delivery.secret:
            headers["X-Signature"] = signature(delivery.secret, timestamp, body)
        try:
            async with self._session.post(
                delivery.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                allow_redirects=False,
            ) as response:
                if 200 <= response.status < 300:
                    return True, False, ""
                return False, retryable_status(response.status), f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return False, True, type(exc).__name__ + (f": {exc}" if str(exc) else "")

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: a client session and the outbox loop for the server's
        lifetime."""
        resolver = self._resolver if self.allow_private else PublicResolver(self._resolver)
        connector = aiohttp.TCPConnector(resolver=resolver)
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        self._loop_task = asyncio.get_running_loop().create_task(self._run())
        try:
            yield
        finally:
            await self.stop()
            await self._session.close()
            self._session = None

    async def stop(self, app: web.Application | None = None) -> None:
        """Stop claiming and cancel attempts in flight (their leases run out and another node,
        or this one after a restart, attempts them again). Also an ``on_shutdown`` hook, so
        that the loop stops before the store closes."""
        loop_task, self._loop_task = self._loop_task, None
        tasks = [t for t in (loop_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until every delivery submitted here is delivered or given up (tests and
        graceful shutdown), or ``timeout`` passes."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._submitted:
                    self._settled.clear()
                    await self._settled.wait()
