"""APNs through aioapns: token (.p8) authentication over one pool of HTTP/2 connections.

aioapns has no host or port setting: its client protocol class carries Apple's address. The one
adapter below gives the pool a subclass with another address when ``apns_base_url`` names one (a
relay, or a test's stand-in); everything else is aioapns as it comes. Its proxy mode is not
offered (it fails on Python 3.11).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from typing import Any
from urllib.parse import urlsplit

from aioapns import APNs, NotificationRequest, PushType
from aioapns.connection import APNsDevelopmentClientProtocol, APNsProductionClientProtocol

from broker.notify.devices import Device, Platform
from broker.notify.outcome import Answer, classify
from broker.notify.payloads import Push, apns_request

_PUSH_TYPES = {"voip": PushType.VOIP, "alert": PushType.ALERT}


def protocol_class(base_url: str | None, use_sandbox: bool) -> type[Any]:
    """aioapns's protocol class, aimed at ``base_url`` when given (else at Apple), writing what
    HTTP/2 has to send once per event-loop turn instead of once per push: with hundreds of
    pushes in flight, one TLS record and one system call carry many of them."""
    apple = APNsDevelopmentClientProtocol if use_sandbox else APNsProductionClientProtocol
    address: dict[str, Any] = {}
    if base_url is not None:
        parts = urlsplit(base_url)
        address = {"APNS_SERVER": parts.hostname, "APNS_PORT": parts.port or 443}
    return type("APNsCoalescingClientProtocol", (_Coalescing, apple), address)


class _Coalescing:
    """Mixed in before aioapns's protocol class: replaces its write-per-call ``flush``, and
    spares h2 work that costs more CPU per push than everything else in pure Python: header
    values go without Huffman coding (HPACK allows either; a quarter more header bytes), and
    the headers aioapns builds (lower-case names, no connection headers) are not re-checked on
    the way out. Answers from the server are still validated."""

    _flush_pending = False
    conn: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn.config.validate_outbound_headers = False
        self.conn.config.normalize_outbound_headers = False
        self.conn.encoder.encode = functools.partial(
            type(self.conn.encoder).encode, self.conn.encoder, huffman=False
        )

    def flush(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_pending = False
        self.refresh_inactivity_timer()
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def refresh_inactivity_timer(self) -> None:  # aioapns's own
        super().refresh_inactivity_timer()  # type: ignore[misc]


class ApnsSender:
    platform = Platform.APNS

    def __init__(
        self,
        key_pem: str,
        key_id: str,
        team_id: str,
        topic: str,
        use_sandbox: bool = False,
        base_url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 4,
    ) -> None:
        self.key_pem = key_pem
        self.key_id = key_id
        self.team_id = team_id
        self.topic = topic
        self.use_sandbox = use_sandbox
        self.base_url = base_url
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.client: APNs | None = None

    async def start(self) -> None:
        # aioapns binds to the event loop it is created in: create it here, in the running loop.
        self.client = APNs(
            key=self.key_pem,
            key_id=self.key_id,
            team_id=self.team_id,
            topic=self.topic,
            use_sandbox=self.use_sandbox,
            ssl_context=self.ssl_context,
            max_connections=self.max_connections,
            max_connection_attempts=1,  # retries are the caller's, with backoff
            err_func=_quiet,
        )
        self.client.pool.protocol_class = protocol_class(self.base_url, self.use_sandbox)

    async def send(self, device: Device, push: Push, now: float) -> Answer:
        assert self.client is not None, "start() first"
        req = apns_request(device, push, self.topic, now)
        # Shielded: a send the caller gives up on must not cancel aioapns's future, or the
        # late answer finds it cancelled, raises in the protocol and drops the connection with
        # every other push in flight on it.
        sending = asyncio.ensure_future(
            self.client.send_notification(
                NotificationRequest(
                    device_token=req.token,
                    message=req.payload,
                    time_to_live=req.ttl_s,
                    priority=req.priority,
                    collapse_key=req.collapse_id,
                    push_type=_PUSH_TYPES[req.push_type],
                    apns_topic=req.topic,
                )
            )
        )
        sending.add_done_callback(_consume)
        result = await asyncio.shield(sending)
        status = int(result.status) if str(result.status).isdigit() else 0
        reason = result.description or ""
        return Answer(classify(Platform.APNS, status, reason), status, reason)

    async def close(self) -> None:
        if self.client is not None:
            self.client.pool.close()  # aioapns has no close() of its own
            self.client = None


def _consume(task: asyncio.Future[Any]) -> None:
    """Collect the outcome of a send nobody awaits any more (timed out, or shutting down)."""
    if not task.cancelled():
        task.exception()


async def _quiet(request: Any, result: Any) -> None:
    """aioapns logs every failure at ERROR unless given this; the pusher logs and counts."""
