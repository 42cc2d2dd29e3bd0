"""Webhooks to partner organisations' systems: signed JSON POSTs, retried with backoff.

The broker describes an event (``broker.queues.WebhookEvent``) and hands it to ``submit``, which
returns at once: delivery runs in its own task, so a receiver that is slow or down never delays
routing. Each attempt is signed afresh:

    X-Timestamp: <Unix seconds>
    X-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>

so that a receiver can check the body came from the broker and refuse replays of old requests
(reject timestamps more than a few minutes from its own clock, and ``X-Webhook-Id`` it has seen).

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
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from prometheus_client import CollectorRegistry, Counter
from yarl import URL

from broker.queues import WebhookEvent

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
    ) -> None:
        self.allow_private = allow_private
        self._resolver = resolver  # the name look-up beneath the address check (tests)
        self.attempts = attempts
        self.first_retry_s = first_retry_s
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.results = Counter(
            "vabroker_webhooks_total",
            "Webhook deliveries, by result (delivered, retried, failed, dropped)",
            ["result"],
            registry=registry,
        )
        self._limit = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def submit(self, event: WebhookEvent) -> None:
        """Queue a delivery and return at once."""
        if self._session is None or len(self._tasks) >= self.max_pending:
            self.results.labels("dropped").inc()
            log.warning(
                "webhook dropped: sender not running or too many pending",
                extra={"event": event.kind, "url": event.url},
            )
            return
        task = asyncio.get_running_loop().create_task(self._deliver(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, event: WebhookEvent) -> None:
        assert self._session is not None
        body = json.dumps(event.body, separators=(",", ":")).encode()
        why = ""
        refused = None if self.allow_private else refused_host(URL(event.url).host or "")
        if refused is not None:
            self.results.labels("failed").inc()
            log.warning(
                "webhook refused: not a public address",
                extra={"event": event.kind, "url": event.url, "why": refused},
            )
            return
        async with self._limit:
            for attempt in range(self.attempts):
                if attempt:
                    self.results.labels("retried").inc()
                    await asyncio.sleep(self.first_retry_s * 2 ** (attempt - 1))
                timestamp = str(int(time.time()))
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": USER_AGENT,
                    "X-Timestamp": timestamp,
                    "X-Webhook-Id": str(event.body.get("id", "")),
                    "X-Webhook-Event": event.kind,
                }
                if event.secret:
                    headers["X-Signature"] = signature(event.secret, timestamp, body)
                try:
                    async with self._session.post(
                        event.url,
                        data=body,
                        headers=headers,
                        timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                        allow_redirects=False,
                    ) as response:
                        if 200 <= response.status < 300:
                            self.results.labels("delivered").inc()
                            return
                        why = f"HTTP {response.status}"
                        if response.status < 500 and response.status not in (408, 429):
                            break  # the receiver refuses this request: sending it again won't help
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    why = type(exc).__name__ + (f": {exc}" if str(exc) else "")
        self.results.labels("failed").inc()
        log.warning(
            "webhook failed",
            extra={
                "event": event.kind,
                "url": event.url,
                "call": event.body.get("call"),
                "why": why,
            },
        )

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: a client session for the server's lifetime."""
        resolver = self._resolver if self.allow_private else PublicResolver(self._resolver)
        connector = aiohttp.TCPConnector(resolver=resolver)
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        try:
            yield
        finally:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._session.close()
            self._session = None

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait for deliveries in flight (tests and graceful shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
