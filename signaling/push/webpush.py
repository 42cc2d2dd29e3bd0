"""Web Push: the payload encrypted to the subscription's keys (RFC 8291, aes128gcm via
http_ece), the sender identified with VAPID (RFC 8292), posted to the subscription's endpoint
(RFC 8030) with TTL, Urgency and Topic."""

from __future__ import annotations

import base64
import os
import ssl
import time
from urllib.parse import urlsplit

import aiohttp
import http_ece
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.notify.devices import Device, Platform, b64url_decode
from broker.notify.outcome import Answer, classify
from broker.notify.payloads import Push, webpush_message
from signaling.push.fcm import _retry_after

VAPID_LIFETIME_S = 12 * 3600  # RFC 8292 allows up to 24 h


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def encrypt(plaintext: bytes, p256dh: str, auth: str) -> bytes:
    """RFC 8291: a fresh sender key and salt for every message."""
    sender = ec.generate_private_key(ec.SECP256R1())
    return bytes(
        http_ece.encrypt(
            plaintext,
            salt=os.urandom(16),
            private_key=sender,
            dh=b64url_decode(p256dh),
            auth_secret=b64url_decode(auth),
            version="aes128gcm",
        )
    )


def host_allowed(host: str, allowed: list[str]) -> bool:
    """``host`` is one of ``allowed``, or under one written as '.domain'."""
    host = host.lower()
    return any(host == a or (a.startswith(".") and host.endswith(a)) for a in allowed)


class WebPushSender:
    platform = Platform.WEBPUSH

    def __init__(
        self,
        vapid_key: ec.EllipticCurvePrivateKey,
        subject: str,
        ssl_context: ssl.SSLContext | None = None,
        connections: int = 100,
    ) -> None:
        self.vapid_key = vapid_key
        self.subject = subject
        self.public_key = b64url(
            vapid_key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        )
        self._pem = vapid_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.ssl_context = ssl_context
        self.connections = connections
        self.session: aiohttp.ClientSession | None = None
        self._vapid: dict[str, tuple[str, float]] = {}  # audience -> (header, good until)

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections, ssl=self.ssl_context or True),
            trust_env=False,
        )

    def authorization(self, endpoint: str) -> str:
        """``vapid t=JWT, k=KEY`` for the endpoint's origin, reused for an hour less than its
        lifetime (one signature per push service, not per push)."""
        parts = urlsplit(endpoint)
        audience = f"{parts.scheme}://{parts.netloc}"
        now = time.time()
        cached = self._vapid.get(audience)
        if cached is not None and now < cached[1]:
            return cached[0]
        token = jwt.encode(
            {"aud": audience, "exp": int(now) + VAPID_LIFETIME_S, "sub": self.subject},
            self._pem,
            algorithm="ES256",
            headers={"typ": "JWT"},
        )
        header = f"vapid t={token}, k={self.public_key}"
        self._vapid[audience] = (header, now + VAPID_LIFETIME_S - 3600)
        return header

    async def send(self, device: Device, push: Push, now: float) -> Answer:
        assert self.session is not None, "start() first"
        sub = device.subscription
        assert device.platform is Platform.WEBPUSH and sub is not None
        msg = webpush_message(push, now)
        body = encrypt(msg.body, sub.keys.p256dh, sub.keys.auth)
        async with self.session.post(
            sub.endpoint,
            data=body,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Encoding": "aes128gcm",
                "TTL": str(msg.ttl_s),
                "Urgency": msg.urgency,
                "Topic": msg.topic,
                "Authorization": self.authorization(sub.endpoint),
            },
        ) as resp:
            status = resp.status
            reason = (await resp.text())[:200] if status >= 300 else ""
            retry_after = _retry_after(resp.headers.get("Retry-After"))
        return Answer(classify(Platform.WEBPUSH, status, reason), status, reason, retry_after)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
