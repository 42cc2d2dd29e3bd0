"""Builders shared by the partner-queue tests."""

from __future__ import annotations

from typing import Any

from broker.events import Event, Ring, Status
from broker.model import Profile, Role
from broker.orgs import WEEKDAYS, Org
from broker.service import Broker
from broker.store.base import Store

ALWAYS: dict[str, list[dict[str, str]]] = {
    d: [{"open": "00:00", "close": "24:00"}] for d in WEEKDAYS
}
OFFICE: dict[str, list[dict[str, str]]] = {
    d: [{"open": "09:00", "close": "17:00"}] for d in WEEKDAYS[:5]
}


def make_org(
    org_id: str = "bank",
    hours: dict[str, list[dict[str, str]]] | None = None,
    timezone: str = "Europe/London",
    closures: list[str] | None = None,
    **queue: Any,
) -> Org:
    q: dict[str, Any] = {"id": "main", "name": "Main", "languages": ["en"], "wrapup_s": 0}
    q.update(queue)
    return Org.model_validate(
        {
            "id": org_id,
            "name": org_id.title(),
            "languages": ["en"],
            "timezone": timezone,
            "hours": ALWAYS if hours is None else hours,
            "closures": closures or [],
            "queues": [q],
        }
    )


async def put_agent(
    store: Store, user_id: str, org: str = "bank", connected: bool = True
) -> Profile:
    profile = Profile(
        user_id=user_id, role=Role.AGENT, org=org, display_name=user_id.upper(), languages=["en"]
    )
    await store.put_profile(profile)
    if connected:
        await store.set_connected(user_id, True)
    return profile


async def agent(broker: Broker, user_id: str, org: str = "bank") -> Profile:
    """An agent of ``org``, connected and available."""
    profile = await put_agent(broker.store, user_id, org)
    await broker.queues.set_agent_status(profile, "available")
    return profile


async def caller(store: Store, user_id: str, timezone: str = "Europe/London") -> Profile:
    profile = Profile(
        user_id=user_id,
        role=Role.RECIPIENT,
        display_name=user_id.title(),
        languages=["en"],
        timezone=timezone,
    )
    await store.put_profile(profile)
    return profile


def rings(events: list[Event]) -> list[tuple[str, str]]:
    """(agent, call) for each ring, in order."""
    return [(e.to, e.call_id) for e in events if isinstance(e, Ring)]


def statuses(events: list[Event], to: str | None = None) -> list[Status]:
    return [e for e in events if isinstance(e, Status) and (to is None or e.to == to)]
