"""FCM HTTP v1 over aiohttp, authorised with an OAuth2 access token obtained with the service
account's signed JWT (RFC 7523 grant) and reused until shortly before it expires."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from typing import Any

import aiohttp
import jwt

from broker.notify.devices import Device, Platform
from broker.notify.outcome import Answer, Result, classify
from broker.notify.payloads import Push, fcm_message
from signaling.push.credentials import ServiceAccount

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_MARGIN_S = 60.0  # fetch a new access token this long before the old one expires


class TokenError(Exception):
    """The OAuth token endpoint refused or failed."""


class FcmSender:
    platform = Platform.FCM

    def __init__(
        self,
        account: ServiceAccount,
        base_url: str = "https://fcm.googleapis.com",
        token_url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connections: int = 100,
    ) -> None:
        self.account = account
        self.send_url = f"{base_url}/v1/projects/{account.project_id}/messages:send"
        self.token_url = token_url or account.token_uri
        self.ssl_context = ssl_context
        self.connections = connections
        self.session: aiohttp.ClientSession | None = None
        self._token: tuple[str, float] | None = None  # (access token, good until, monotonic)
        self._token_lock = asyncio.Lock()
        self.tokens_fetched = 0

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections, ssl=self.ssl_context or True),
            trust_env=False,
        )

    async def access_token(self) -> str:
        token = self._token
        if token is not None and time.monotonic() < token[1]:
            return token[0]
        async with self._token_lock:  # one fetch however many sends are waiting for it
            token = self._token
            if token is not None and time.monotonic() < token[1]:
                return token[0]
            access, lifetime = await self._fetch_token()
            self._token = (access, time.monotonic() + max(0.0, lifetime - TOKEN_MARGIN_S))
            return access

    async def _fetch_token(self) -> tuple[str, float]:
        assert self.session is not None, "start() first"
        now = int(time.time())
        assertion = jwt.encode(
            {
                "iss": self.account.client_email,
                "scope": SCOPE,
                "aud": self.token_url,
                "iat": now,
                "exp": now + 3600,
            },
            self.account.private_key,
            algorithm="RS256",
        )
        async with self.session.post(
            self.token_url, data={"grant_type": GRANT, "assertion": assertion}
        ) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise TokenError(f"token endpoint answered {resp.status}: {text[:200]}")
        try:
            body = json.loads(text)
            access, lifetime = str(body["access_token"]), float(body.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenError(f"token endpoint's answer is not a token: {exc}") from None
        self.tokens_fetched += 1
        return access, lifetime

    async def send(self, device: Device, push: Push, now: float) -> Answer:
        assert self.session is not None, "start() first"
        try:
            token = await self.access_token()
        except TokenError as exc:
            return Answer(Result.RETRY, 0, str(exc))
        async with self.session.post(
            self.send_url,
            json=fcm_message(device, push, now),
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            status = resp.status
            text = await resp.text()
            retry_after = _retry_after(resp.headers.get("Retry-After"))
        reason = _fcm_error(text) if status >= 300 else ""
        if status == 401:
            self._token = None  # revoked or expired early: the retry fetches a new one
        return Answer(classify(Platform.FCM, status, reason), status, reason, retry_after)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


def _fcm_error(text: str) -> str:
    """The most specific error code in an FCM v1 error body: ``details[].errorCode`` (such as
    UNREGISTERED), else ``error.status``."""
    try:
        error: Any = json.loads(text).get("error", {})
    except (ValueError, AttributeError):
        return ""
    if not isinstance(error, dict):
        return ""
    for detail in error.get("details", []) or []:
        if isinstance(detail, dict) and isinstance(detail.get("errorCode"), str):
            return str(detail["errorCode"])
    return str(error.get("status", ""))


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from push services; the backoff applies instead
