"""What a push says, and the exact request each push service is sent.

A ring push carries the call id, the language, the topic and the absolute expiry; a withdrawal
carries the call id and the reason. Both travel under the same collapse key (APNs
``apns-collapse-id``, FCM ``collapse_key``, Web Push ``Topic``), the call id, so that a push
service still holding an undelivered ring replaces it with the withdrawal, and an app can match
the withdrawal to the ring it is showing (on iOS: end the CallKit call with
``answeredElsewhere``).
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from broker.events import Ring, Withdrawn
from broker.notify.devices import Device, Platform

# A withdrawal stays deliverable at least this long, so that a phone that comes back online
# shortly after its ring lapsed still learns that the call is gone.
WITHDRAWAL_MIN_TTL_S = 60


class PushKind(enum.StrEnum):
    RING = "call.ring"
    WITHDRAWN = "call.withdrawn"


@dataclass(frozen=True, slots=True)
class Push:
    """One message for one user's devices, independent of the push service."""

    kind: PushKind
    call_id: str
    expires_at: float  # the ring's expiry (a withdrawal keeps its ring's, for its TTL)
    data: dict[str, str] = field(default_factory=dict)

    def ttl(self, now: float) -> int:
        """Whole seconds the push service should keep trying, at least 1 (0 means "now or
        never" to APNs and FCM, which is wrong for a ring)."""
        left = math.ceil(self.expires_at - now)
        if self.kind is PushKind.WITHDRAWN:
            return max(WITHDRAWAL_MIN_TTL_S, left)
        return max(1, left)


def ring_push(ring: Ring) -> Push:
    data = {
        "type": PushKind.RING.value,
        "call": ring.call_id,
        "language": ring.language,
        "expires_at": str(int(ring.expires_at)),
    }
    if ring.topic:
        data["topic"] = ring.topic
    if ring.org:
        data["org"] = ring.org
    return Push(PushKind.RING, ring.call_id, ring.expires_at, data)


def withdrawn_push(event: Withdrawn, ring_expires_at: float) -> Push:
    data = {"type": PushKind.WITHDRAWN.value, "call": event.call_id, "reason": event.reason.value}
    return Push(PushKind.WITHDRAWN, event.call_id, ring_expires_at, data)


# --- APNs -------------------------------------------------------------------------------------

APNS_PRIORITY_IMMEDIATE = 10


@dataclass(frozen=True, slots=True)
class ApnsRequest:
    token: str
    topic: str
    push_type: str  # "voip" | "alert"
    priority: int
    ttl_s: int
    collapse_id: str
    payload: dict[str, Any]


def apns_request(device: Device, push: Push, default_topic: str, now: float) -> ApnsRequest:
    """A VoIP device (PushKit) gets VoIP pushes on ``<bundle>.voip``: iOS hands them to the app,
    which reports the ring to CallKit, and reports the withdrawal as a call that ended at once
    (every VoIP push must reach CallKit). Any other device gets alert pushes; the withdrawal
    replaces the ring's notification through the shared collapse id."""
    assert device.platform is Platform.APNS and device.token
    bundle = device.topic or default_topic
    payload: dict[str, Any] = dict(push.data)
    if device.voip:
        topic, push_type = f"{bundle}.voip", "voip"
    else:
        topic, push_type = bundle, "alert"
        payload["aps"] = _alert(push)
    return ApnsRequest(
        token=device.token,
        topic=topic,
        push_type=push_type,
        priority=APNS_PRIORITY_IMMEDIATE,
        ttl_s=push.ttl(now),
        collapse_id=push.call_id,
        payload=payload,
    )


def _alert(push: Push) -> dict[str, Any]:
    if push.kind is PushKind.RING:
        about = push.data.get("topic")
        body = f"A call in {push.data['language']}" + (f": {about}" if about else "")
        return {
            "alert": {"title": "Someone needs your help", "body": body},
            "sound": "default",
            "interruption-level": "time-sensitive",
            "category": "CALL_RING",
        }
    return {
        "alert": {"title": "Call no longer waiting", "body": _WITHDRAWN_TEXT[push.data["reason"]]},
        "interruption-level": "passive",
    }


_WITHDRAWN_TEXT = {
    "answered": "Someone else answered. Thank you for being there.",
    "cancelled": "The person who called no longer needs help.",
    "expired": "The call was not answered in time.",
}


# --- FCM HTTP v1 ------------------------------------------------------------------------------


def fcm_message(device: Device, push: Push, now: float) -> dict[str, Any]:
    """A high-priority data message: the app decides how to ring (a full-screen intent), so a
    notification block would only get in its way. Data values must all be strings."""
    assert device.platform is Platform.FCM and device.token
    return {
        "message": {
            "token": device.token,
            "data": dict(push.data),
            "android": {
                "priority": "HIGH",
                "ttl": f"{push.ttl(now)}s",
                "collapse_key": push.call_id,
            },
        }
    }


# --- Web Push (RFC 8030, 8291, 8292) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebPushMessage:
    body: bytes  # the plaintext; the transport encrypts it to the subscription's keys
    ttl_s: int
    urgency: str
    topic: str


def webpush_message(push: Push, now: float) -> WebPushMessage:
    return WebPushMessage(
        body=json.dumps(push.data, separators=(",", ":")).encode(),
        ttl_s=push.ttl(now),
        urgency="high",
        topic=webpush_topic(push.call_id),
    )


def webpush_topic(call_id: str) -> str:
    """RFC 8030's Topic is at most 32 characters of the base64url alphabet: the call id when it
    fits, otherwise a digest of it (the same for the ring and its withdrawal)."""
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    if len(call_id) <= 32 and set(call_id) <= allowed:
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:32]
