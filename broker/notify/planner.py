"""Whom to push for each ring and withdrawal, recorded so that withdrawals reach every device the
ring reached, once.

The planner is given every ``Ring`` and ``Withdrawn`` the broker produced, whether or not the user
was rung on a WebSocket. Pushes follow only from those events, so a volunteer outside their ring
window, over their daily cap, busy or blocked is never pushed: the dispatcher never rang them.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.events import Ring, Withdrawn
from broker.notify.devices import Device, Platform
from broker.notify.payloads import Push, ring_push, withdrawn_push
from broker.store.base import Store


@dataclass(frozen=True, slots=True)
class PushJob:
    device: Device
    push: Push


class PushPlanner:
    def __init__(
        self, store: Store, platforms: frozenset[Platform], also_when_connected: bool = False
    ) -> None:
        self.store = store
        self.platforms = platforms  # those this node can send to
        self.also_when_connected = also_when_connected

    async def ring(self, ring: Ring, connected: bool) -> list[PushJob]:
        """Devices to ring. ``connected`` says the user holds a WebSocket on this node; the
        store knows about the other nodes. A connected user is rung there and not pushed,
        unless configured otherwise."""
        if not self.also_when_connected and (connected or await self.store.is_connected(ring.to)):
            return []
        devices = [d for d in await self.store.devices(ring.to) if d.platform in self.platforms]
        if not devices:
            return []
        # A ring re-sent on resume is not pushed again to a device that already has it.
        fresh = set(
            await self.store.record_pushes(
                ring.call_id, ring.to, [d.id for d in devices], ring.expires_at
            )
        )
        push = ring_push(ring)
        return [PushJob(d, push) for d in devices if d.id in fresh]

    async def withdrawn(self, event: Withdrawn) -> list[PushJob]:
        """Every device this user's ring for the call was pushed to, exactly once: the record
        is taken from the store atomically, so a second withdrawal finds nothing."""
        pushed = await self.store.take_pushes(event.call_id, event.to)
        if pushed is None:
            return []
        devices = {d.id: d for d in await self.store.devices(event.to)}
        push = withdrawn_push(event, pushed.expires_at)
        return [PushJob(devices[i], push) for i in pushed.device_ids if i in devices]
