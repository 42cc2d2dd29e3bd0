"""Push devices: what a helper's phone or browser registers, validated before it is stored."""

from __future__ import annotations

import base64
import binascii
import enum
import re
import secrets
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

MAX_DEVICES = 10  # per user: a person has a few phones and browsers, not hundreds

# APNs device tokens are 32 bytes today, sent as hex; Apple says they may grow, so allow more.
_APNS_TOKEN = re.compile(r"^[0-9a-fA-F]{64,200}$")
# FCM registration tokens are opaque, URL-safe text of about 150-250 characters.
_FCM_TOKEN = re.compile(r"^[A-Za-z0-9_:\-.]{20,4096}$")
# An iOS bundle identifier, reverse-DNS: "org.example.helper".
_BUNDLE = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


class Platform(enum.StrEnum):
    APNS = "apns"
    FCM = "fcm"
    WEBPUSH = "webpush"


def b64url_decode(text: str) -> bytes:
    """Base64url with or without padding, as Web Push subscriptions write their keys."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]+=*", text):
        raise ValueError("is not base64url text")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("is not base64url text") from exc


class SubscriptionKeys(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    p256dh: str = Field(max_length=200)
    auth: str = Field(max_length=100)

    @field_validator("p256dh")
    @classmethod
    def _p256dh(cls, value: str) -> str:
        raw = b64url_decode(value)
        if len(raw) != 65 or raw[0] != 4:
            raise ValueError("must be an uncompressed P-256 public key (65 bytes, base64url)")
        return value

    @field_validator("auth")
    @classmethod
    def _auth(cls, value: str) -> str:
        if len(b64url_decode(value)) != 16:
            raise ValueError("must be a 16-byte authentication secret (base64url)")
        return value


class Subscription(BaseModel):
    """A browser's ``PushSubscription.toJSON()``: where to post, and the keys to encrypt to."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    endpoint: str = Field(max_length=2048)
    keys: SubscriptionKeys

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("must be the https:// URL of a push service")
        if parts.username or parts.password:
            raise ValueError("must not carry a user name or password")
        return value

    @property
    def host(self) -> str:
        return urlsplit(self.endpoint).hostname or ""


class DeviceRegistration(BaseModel):
    """``POST /v1/me/devices``. Unknown fields are an error so that a misspelt one is reported."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    platform: Platform
    token: str | None = Field(default=None, max_length=4096)
    subscription: Subscription | None = None
    voip: StrictBool = False
    topic: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _consistent(self) -> DeviceRegistration:
        if self.platform is Platform.WEBPUSH:
            if self.subscription is None:
                raise ValueError("a webpush device needs a subscription {endpoint, keys}")
            if self.token is not None:
                raise ValueError("a webpush device has a subscription, not a token")
        else:
            if self.subscription is not None:
                raise ValueError(f"an {self.platform.value} device has a token, not a subscription")
            if self.token is None:
                raise ValueError(f"an {self.platform.value} device needs its push token")
            pattern = _APNS_TOKEN if self.platform is Platform.APNS else _FCM_TOKEN
            if not pattern.match(self.token):
                what = (
                    "a hex APNs device token (64 or more hex digits)"
                    if self.platform is Platform.APNS
                    else "an FCM registration token"
                )
                raise ValueError(f"token is not {what}")
        if self.voip and self.platform is not Platform.APNS:
            raise ValueError("voip is for apns devices (PushKit); FCM and Web Push have no VoIP")
        if self.topic is not None:
            if self.platform is not Platform.APNS:
                raise ValueError("topic (the app's bundle id) is for apns devices")
            if not _BUNDLE.match(self.topic) or self.topic.endswith(".voip"):
                raise ValueError(
                    "topic must be the app's bundle id, such as 'org.example.helper' "
                    "(without '.voip': the broker adds it for VoIP pushes)"
                )
        return self


class Device(BaseModel):
    """A registered device. ``address`` (the token, or the subscription's endpoint) identifies
    the device to its push service: registering the same address again replaces the entry."""

    model_config = ConfigDict(frozen=True)

    id: str
    user_id: str
    platform: Platform
    token: str | None = None
    subscription: Subscription | None = None
    voip: bool = False
    topic: str | None = None
    created_at: float = 0.0

    @property
    def address(self) -> str:
        if self.subscription is not None:
            return self.subscription.endpoint
        return self.token or ""

    @classmethod
    def register(cls, user_id: str, reg: DeviceRegistration, now: float) -> Device:
        return cls(
            id="d_" + secrets.token_urlsafe(9),
            user_id=user_id,
            platform=reg.platform,
            token=reg.token.lower() if reg.platform is Platform.APNS and reg.token else reg.token,
            subscription=reg.subscription,
            voip=reg.voip,
            topic=reg.topic,
            created_at=now,
        )

    def wire(self) -> dict[str, object]:
        """What the owner sees: enough to recognise each device, never a whole token."""
        body: dict[str, object] = {
            "id": self.id,
            "platform": self.platform.value,
            "voip": self.voip,
            "created": int(self.created_at),
        }
        if self.topic:
            body["topic"] = self.topic
        if self.token:
            body["token_end"] = self.token[-8:]
        if self.subscription is not None:
            body["endpoint_host"] = self.subscription.host
        return body
