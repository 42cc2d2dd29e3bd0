"""Escalation: what becomes of a search that nobody answers.

A volunteer search that reaches its maximum wait, or finds nobody eligible in any of the
recipient's languages, goes to a help centre: the queue of a partner organisation named in the
configuration (``VABROKER_ESCALATE_TO=org/queue``), if it is open and has room. The call keeps
its id and becomes a queued call there, answered by the organisation's agents like any other.
When no help centre is configured, or it is closed or full, the recipient is told so with a
suggested delay before asking again: the search itself goes on until its maximum wait, as a
volunteer may still come on duty.

This module decides; the broker applies the decision (it owns ending calls) and the queues own
the waiting line.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from broker.clock import Clock
from broker.events import Escalation
from broker.model import Call, CircleMode, EscalationOutcome, shown
from broker.orgs import Org, QueueConfig, check_id, is_open, next_opening
from broker.store.base import Store

log = logging.getLogger("vabroker.escalation")


def check_target(value: str | None) -> str | None:
    """A help centre written 'org/queue'; empty means none."""
    if value is None or value == "":
        return None
    org, sep, queue = value.partition("/")
    if not sep:
        raise ValueError(
            f"{shown(value)} is not a help centre written 'org/queue' (an organisation id and "
            "one of its queue ids)"
        )
    check_id(org, "organisation id")
    check_id(queue, "queue id")
    return value


class EscalationSettings(BaseModel):
    """Where unanswered searches go (``VABROKER_ESCALATE_TO``, ``..._RETRY_AFTER_S``)."""

    model_config = ConfigDict(frozen=True)

    to: str | None = Field(
        default=None, description="the help centre: 'org/queue' of a partner organisation"
    )
    retry_after_s: int = Field(
        default=900,
        ge=60,
        le=86400,
        description="the delay suggested to a recipient whose search could not be escalated",
    )

    @field_validator("to")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        return check_target(value)

    @property
    def target(self) -> tuple[str, str] | None:
        if self.to is None:
            return None
        org, _, queue = self.to.partition("/")
        return org, queue


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a search goes: to ``org``'s ``queue`` (outcome ``queued``), or nowhere, with the
    delay the recipient is told to wait before asking again."""

    outcome: EscalationOutcome
    org: Org | None = None
    queue: QueueConfig | None = None
    retry_after_s: int | None = None

    def told(self) -> Escalation:
        """What the recipient hears about it."""
        return Escalation(
            outcome=self.outcome,
            org=self.org.id if self.org else None,
            org_name=self.org.name if self.org else None,
            queue=self.queue.id if self.queue else None,
            retry_after_s=self.retry_after_s,
        )


class Escalator:
    def __init__(self, store: Store, clock: Clock, settings: EscalationSettings) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings

    async def decide(self, call: Call) -> Decision:
        retry = self.settings.retry_after_s
        target = self.settings.target
        if target is None or call.org is not None or call.circle is CircleMode.ONLY:
            # A call that came from a partner queue (its overflow) does not go back to one,
            # and a private matter for the recipient's circle only goes to nobody else.
            return Decision(EscalationOutcome.UNAVAILABLE, retry_after_s=retry)
        org = await self.store.get_org(target[0])
        queue = org.queue(target[1]) if org is not None else None
        if org is None or queue is None:
            log.warning(
                "the help centre %s does not exist: nothing to escalate to", self.settings.to
            )
            return Decision(EscalationOutcome.UNAVAILABLE, retry_after_s=retry)
        now = self.clock.now()
        if not is_open(org, now):
            opening = next_opening(org, now)
            if opening is not None:
                # Opening soon: come back when it does, not later.
                retry = min(retry, max(60, math.ceil(opening - now)))
            return Decision(EscalationOutcome.CLOSED, org, queue, retry)
        if len(await self.store.queue_entries(org.id, queue.id)) >= queue.max_length:
            return Decision(EscalationOutcome.FULL, org, queue, retry)
        return Decision(EscalationOutcome.QUEUED, org, queue)

    async def told(self, call: Call) -> Escalation | None:
        """What a recipient resuming their call is told again of its escalation."""
        if call.escalation is None:
            return None
        org = await self.store.get_org(call.org) if call.org is not None else None
        queued = call.escalation is EscalationOutcome.QUEUED
        return Escalation(
            outcome=call.escalation,
            org=call.org if queued else None,
            org_name=org.name if queued and org is not None else None,
            queue=call.queue if queued else None,
            retry_after_s=call.retry_after_s,
        )
