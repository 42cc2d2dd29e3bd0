"""Push credentials from configuration: read once at start-up, each failure a ``ConfigError``
naming the setting and what is wrong with it."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from broker.notify.devices import b64url_decode
from signaling.config import ConfigError


def _text(setting: str, value: str) -> str:
    """The value itself when it looks like inline PEM or JSON, else the file it names."""
    if value.lstrip().startswith(("-----BEGIN", "{")):
        return value
    try:
        return Path(value).read_text()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {value!r}: {exc.strerror}") from None


def apns_key(value: str) -> str:
    """The .p8 key as PEM text (aioapns takes the text, not a path); must be a P-256 key."""
    pem = _text("apns_key", value)
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"apns_key: not a PEM private key (the .p8 file from Apple): {exc}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError("apns_key: APNs token keys are P-256 (ES256) keys; this one is not")
    return pem


@dataclass(frozen=True)
class ServiceAccount:
    project_id: str
    client_email: str
    private_key: str  # PEM
    token_uri: str


def service_account(value: str) -> ServiceAccount:
    text = _text("fcm_service_account", value)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"fcm_service_account: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("fcm_service_account: expected a JSON object")
    missing = [
        k for k in ("project_id", "client_email", "private_key") if not isinstance(data.get(k), str)
    ]
    if missing:
        raise ConfigError(f"fcm_service_account: missing {', '.join(missing)}")
    try:
        key = serialization.load_pem_private_key(data["private_key"].encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"fcm_service_account: private_key is not a PEM key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError("fcm_service_account: private_key must be an RSA key (RS256)")
    token_uri = data.get("token_uri", "https://oauth2.googleapis.com/token")
    if not isinstance(token_uri, str) or not token_uri.startswith("https://"):
        raise ConfigError("fcm_service_account: token_uri must be an https:// URL")
    return ServiceAccount(data["project_id"], data["client_email"], data["private_key"], token_uri)


def vapid_key(value: str) -> ec.EllipticCurvePrivateKey:
    """A VAPID key as PEM (text or file), or the raw 32-byte private number in base64url, as
    web-push tools print it."""
    stripped = value.strip()
    if not stripped.startswith("-----BEGIN") and not Path(stripped).exists():
        try:
            raw = b64url_decode(stripped)
        except ValueError:
            raise ConfigError(
                "vapid_private_key: neither PEM, a readable file, nor base64url"
            ) from None
        if len(raw) != 32:
            raise ConfigError("vapid_private_key: a raw key is 32 bytes (base64url)")
        return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
    pem = _text("vapid_private_key", stripped)
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"vapid_private_key: not a PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError("vapid_private_key: VAPID keys are P-256 keys; this one is not")
    return key


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """The system's trust store, plus ``push_ca_file`` for a private push relay."""
    context = ssl.create_default_context()
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"push_ca_file: cannot load {ca_file!r}: {exc}") from None
    return context
