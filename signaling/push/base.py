"""The interface every push transport implements."""

from __future__ import annotations

from typing import Protocol

from broker.notify.devices import Device, Platform
from broker.notify.outcome import Answer
from broker.notify.payloads import Push


class Sender(Protocol):
    platform: Platform

    async def start(self) -> None:
        """Open pools; called inside the running event loop."""

    async def send(self, device: Device, push: Push, now: float) -> Answer:
        """One attempt. Timeouts and retries are the caller's."""
        ...

    async def close(self) -> None: ...
