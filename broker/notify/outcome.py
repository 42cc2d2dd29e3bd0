"""What a push service's answer means, and how long to wait before trying again."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from broker.notify.devices import Platform


class Result(enum.StrEnum):
    SENT = "sent"
    RETRY = "retry"  # the service is busy or failing: try again after a backoff
    PRUNE = "pruned"  # the device is gone (uninstalled, token invalid): forget it
    FAILED = "failed"  # refused for a reason retrying will not fix


@dataclass(frozen=True, slots=True)
class Answer:
    """One attempt's answer from a push service."""

    result: Result
    status: int  # HTTP status, 0 when there was no answer (timeout, connection failure)
    reason: str = ""
    retry_after_s: float | None = None


# APNs reasons that mean the token will never work again for this app.
_APNS_DEAD = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered"})
# FCM v1 error codes (``details[].errorCode`` or ``error.status``) that mean the same.
_FCM_DEAD = frozenset({"UNREGISTERED", "SENDER_ID_MISMATCH"})


def classify(platform: Platform, status: int, reason: str = "") -> Result:
    if 200 <= status < 300:
        return Result.SENT
    if status == 0 or status == 429 or status >= 500:
        return Result.RETRY
    if platform is Platform.APNS:
        return Result.PRUNE if status == 410 or reason in _APNS_DEAD else Result.FAILED
    if platform is Platform.FCM:
        if status == 401:
            return Result.RETRY  # an access token that lapsed: the sender fetches a new one
        return Result.PRUNE if status == 404 or reason in _FCM_DEAD else Result.FAILED
    # Web Push (RFC 8030 section 7.3): 404 and 410 mean the subscription has ended.
    return Result.PRUNE if status in (404, 410) else Result.FAILED


@dataclass(frozen=True, slots=True)
class Backoff:
    """Bounded exponential backoff: ``retries`` more attempts after the first, waiting
    ``base_s`` * 2^n (at most ``cap_s``), or what the service asked for in Retry-After when that
    is longer but still within ``cap_s``."""

    retries: int = 3
    base_s: float = 0.5
    cap_s: float = 10.0

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` (attempts count from 0), or None
        when the attempts are used up."""
        if attempt >= self.retries:
            return None
        wait: float = min(self.cap_s, self.base_s * 2.0**attempt)
        if retry_after_s is not None and retry_after_s > wait:
            if retry_after_s > self.cap_s:
                return None  # the service asks for longer than a ring lasts: give up now
            wait = retry_after_s
        return wait
