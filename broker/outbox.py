"""Webhook deliveries waiting in the store: what one is, when it is due, and what a failed attempt
leads to. No I/O here: ``signaling.webhooks`` makes the HTTP requests.

A delivery lives in the store from the moment the event happens until it is delivered or given
up, so that any node can make its next attempt: a node that dies between attempts, or during one,
leaves it behind for another (at least once; receivers de-duplicate on the delivery's id, sent on
every attempt as ``X-Webhook-Id``).

Claiming is a lease: ``Store.claim_webhooks`` hands due deliveries to one node and moves their
due time ``lease_s`` ahead, so no other node takes them while the attempt runs; if the node dies
before it settles the attempt (``retry_webhook`` or ``drop_webhook``), the lease runs out and
another node claims the delivery. A lease must outlast an attempt (its timeout), or a slow
receiver would be sent the same delivery by two nodes at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One event for one receiver, with its attempts so far."""

    id: str  # the event's id: the same on every attempt, from every node
    kind: str  # call.queued, call.assigned, call.ended
    url: str
    secret: str | None
    body: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0  # attempts already made
    due: float = 0.0  # when the next attempt may start (Unix time: nodes share it)

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "kind": self.kind,
                "url": self.url,
                "secret": self.secret,
                "body": self.body,
                "attempts": self.attempts,
                "due": self.due,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> WebhookDelivery:
        data = json.loads(text)
        return cls(
            id=str(data["id"]),
            kind=str(data["kind"]),
            url=str(data["url"]),
            secret=data.get("secret"),
            body=dict(data.get("body") or {}),
            attempts=int(data.get("attempts", 0)),
            due=float(data.get("due", 0.0)),
        )

    def claimed(self, now: float, lease_s: float) -> WebhookDelivery:
        return replace(self, due=now + lease_s)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long a delivery is tried: ``attempts`` in all, waiting
    ``first_retry_s``, then twice as long each time (1, 2, 4, 8 s by default)."""

    attempts: int = 5
    first_retry_s: float = 1.0

    def backoff(self, attempts_made: int) -> float:
        """The wait before the next attempt, after ``attempts_made`` (at least 1)."""
        return float(self.first_retry_s * 2 ** max(attempts_made - 1, 0))

    def next_due(self, attempts_made: int, now: float, retryable: bool) -> float | None:
        """When to try again after a failed attempt, or None to give up."""
        if not retryable or attempts_made >= self.attempts:
            return None
        return now + self.backoff(attempts_made)


def retryable_status(status: int) -> bool:
    """Whether an HTTP status (not 2xx) is worth another attempt: the receiver's trouble (5xx),
    a timeout (408) or a rate limit (429). Other 4xx refuse this request; it won't change."""
    return status >= 500 or status in (408, 429)


def due_deliveries(
    pending: dict[str, WebhookDelivery], now: float, limit: int
) -> list[WebhookDelivery]:
    """The deliveries that may be attempted at ``now``, earliest first, at most ``limit``: the
    one rule every store's ``claim_webhooks`` applies."""
    due = [d for d in pending.values() if d.due <= now]
    due.sort(key=lambda d: (d.due, d.id))
    return due[:limit]
