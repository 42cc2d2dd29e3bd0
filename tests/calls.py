"""Helpers for tests that make real calls: SDK parties on a test server, media on loopback."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Callable
from typing import Any, TypeVar

from aiortc import RTCPeerConnection

from clients.media import MediaOptions
from clients.roles import Recipient, Volunteer
from clients.sdk import Client
from tests.helpers import Server

# Rings at any hour, and no daily cap to run out of: tests must not depend on the time of day.
CALL_SETTINGS: dict[str, Any] = {
    "ring_window_start": "00:00",
    "ring_window_end": "00:00",
    "daily_ring_cap": 1000,
}
LOOPBACK = MediaOptions(loopback_ice=True, connect_timeout_s=10.0)

P = TypeVar("P", Recipient, Volunteer)


async def volunteer(server: Server, sub: str, auto_accept: bool = True, **client: Any) -> Volunteer:
    token = server.token(sub, "volunteer", name=sub, languages=["en"], timezone="Europe/London")
    party = Volunteer(Client(server.ws_url, token, **client), LOOPBACK, auto_accept=auto_accept)
    await party.client.connect()
    await party.set_available(True)
    return party


async def recipient(server: Server, sub: str = "rec", **client: Any) -> Recipient:
    token = server.token(sub, "recipient", name="Rae", languages=["en"])
    party = Recipient(Client(server.ws_url, token, **client), LOOPBACK)
    await party.client.connect()
    return party


async def until(check: Callable[[], bool], within_s: float = 5.0, what: str = "condition") -> None:
    """Wait for ``check()`` to hold, polling; fail naming ``what`` after ``within_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within_s} s waiting for {what}")
        await asyncio.sleep(0.02)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def live_peer_connections() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, RTCPeerConnection))
