"""Configuration: one pydantic-settings model, from ``VABROKER_*`` variables and a TOML file.

Precedence, highest first: explicit overrides (command-line flags), environment variables, the
TOML file, defaults. A bad value stops start-up with a message naming the setting.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from yarl import URL

from broker.circle import CircleSettings
from broker.dispatch import DispatchSettings
from broker.escalation import EscalationSettings, check_target
from broker.model import RingWindow
from broker.policies import POLICIES
from broker.safety import SafetySettings
from broker.service import LimitSettings


class ConfigError(Exception):
    """Configuration that cannot be used; the message names the setting and what is wrong."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VABROKER_", extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    node_id: str = Field(default="", max_length=64, description="this node's name; random if empty")
    # A broker built in code (tests, the simulator) keeps its state in memory; ``vabroker
    # serve`` defaults to the durable store in ``data_dir`` (``serve_settings``).
    store_url: str = "memory://"
    data_dir: str = Field(
        default="", description="where the durable store keeps its file; empty: the data home"
    )
    # Scale-out (Redis store): how often a node says it is alive, and after how long without a
    # word another node takes over its sessions.
    node_beat_s: float = Field(default=1.0, gt=0, le=60)
    node_ttl_s: float = Field(default=5.0, gt=0, le=600)

    # Tokens: HS256 with a shared secret, or RS256/ES256 with the identity provider's public key.
    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = Field(
        default=None, description="PEM text, or a path to a PEM file"
    )
    jwt_algorithms: list[Literal["HS256", "RS256", "ES256"]] = Field(default=["HS256"])
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    # An OpenID Connect provider's key set (its discovery document's ``jwks_uri``): keys are
    # fetched and refetched as the provider rotates them. Needs jwt_issuer and jwt_audience.
    jwt_jwks_url: str | None = Field(
        default=None, description="https:// URL of the identity provider's JWKS"
    )
    # At most one fetch of the key set per this many seconds, however many unknown kids arrive.
    jwt_jwks_refetch_s: float = Field(default=60.0, ge=1, le=86400)
    # Keys are fetched again when older than this, so a key the provider withdrew stops working.
    jwt_jwks_max_age_s: float = Field(default=3600.0, ge=60, le=7 * 86400)
    # Clock skew allowed when checking a token's exp; a session lives until exp plus this.
    jwt_leeway_s: float = Field(default=30.0, ge=0, le=300)

    # Dispatch.
    policy: str = Field(default="default", description="dispatch policy, see broker.policies")
    first_wave: int = Field(default=1, ge=1, le=1000)
    wave_growth: float = Field(default=2.0, ge=1.0, le=10.0)
    max_wave: int = Field(default=40, ge=1, le=5000)
    wave_interval_s: float = Field(default=15.0, gt=0, le=600)
    ring_timeout_s: float = Field(default=45.0, gt=0, le=600)
    max_wait_s: float = Field(default=180.0, gt=0, le=3600)
    candidate_factor: int = Field(default=10, ge=0, le=1000)
    candidate_sample: int = Field(default=50, ge=0, le=1_000_000)
    # Trusted circles: circle 'first' rings only the circle for this long.
    circle_head_start_s: float = Field(default=30.0, ge=0, le=600)
    circle_invite_ttl_s: float = Field(default=7 * 86400, ge=300, le=90 * 86400)
    circle_max_members: int = Field(default=20, ge=1, le=200)
    ring_window_start: str = "08:00"
    ring_window_end: str = "22:00"
    daily_ring_cap: int = Field(default=10, ge=0, le=1000)
    # Escalation: a search nobody answers goes to this help centre's queue ('org/queue').
    escalate_to: str | None = Field(
        default=None, description="help centre for unanswered searches: 'org/queue'"
    )
    escalate_retry_after_s: int = Field(
        default=900, ge=60, le=86400, description="delay suggested when nothing to escalate to"
    )

    # Sessions.
    grace_s: float = Field(default=20.0, ge=0, le=3600)
    heartbeat_s: float = Field(default=20.0, gt=0, le=600)
    # The lobby: each watcher's list is brought up to date at most this often.
    lobby_interval_s: float = Field(default=1.0, ge=0.1, le=60)
    hello_timeout_s: float = Field(default=10.0, gt=0, le=120)
    messages_per_s: float = Field(default=20.0, gt=0, description="per-connection message rate")
    message_burst: int = Field(default=60, ge=1)
    requests_per_hour: int = Field(default=30, ge=1)
    max_sessions_per_user: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="live sessions a user may hold; a new one closes the oldest",
    )
    token_warning_s: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="auth.expiring this long before a session's token expires",
    )

    # HTTP edge: slow or silent clients do not hold sockets (docs/operations.md, "Security").
    http_header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="a connection without a whole request head within this is closed",
    )
    http_body_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="reading a request's body: 408 after this"
    )

    # ICE: STUN/TURN servers handed to clients; TURN credentials per the TURN REST API scheme.
    stun_urls: list[str] = Field(default_factory=list)
    turn_urls: list[str] = Field(default_factory=list)
    turn_secret: SecretStr | None = None
    turn_ttl_s: int = Field(default=3600, ge=60, le=86400 * 7)

    # Push (APNs, FCM, Web Push). A platform is enabled by its credentials; see docs/protocol.md.
    push_also_when_connected: bool = Field(
        default=False, description="push rings to devices of users who are on the WebSocket too"
    )
    push_concurrency: int = Field(default=500, ge=1, le=10000, description="sends in flight")
    push_timeout_s: float = Field(default=10.0, gt=0, le=120, description="per attempt")
    push_retries: int = Field(default=3, ge=0, le=10, description="after a 429 or 5xx")
    push_backoff_s: float = Field(default=0.5, gt=0, le=60, description="first retry's wait")
    push_ca_file: str | None = Field(
        default=None, description="extra CA certificates (PEM) to trust for push services"
    )
    apns_key: str | None = Field(default=None, description="the .p8 key: PEM text or a path")
    apns_key_id: str | None = None
    apns_team_id: str | None = None
    apns_topic: str | None = Field(default=None, description="the app's bundle id")
    apns_use_sandbox: bool = False
    apns_base_url: str | None = Field(
        default=None, description="default: Apple's production or sandbox host"
    )
    apns_max_connections: int = Field(default=4, ge=1, le=100)
    fcm_service_account: str | None = Field(
        default=None, description="Google service-account JSON: a path or the JSON text"
    )
    fcm_base_url: str = "https://fcm.googleapis.com"
    fcm_token_url: str | None = Field(
        default=None, description="default: the service account's token_uri"
    )
    vapid_private_key: str | None = Field(
        default=None, description="P-256 key: PEM text, a path, or raw base64url"
    )
    vapid_subject: str | None = Field(default=None, description="mailto: or https: contact")
    webpush_hosts: list[str] = Field(
        default_factory=lambda: [
            "fcm.googleapis.com",
            "updates.push.services.mozilla.com",
            "web.push.apple.com",
            ".notify.windows.com",
        ],
        description="push services a subscription may point at ('.suffix' for a domain)",
    )

    # /metrics: open to anyone who can reach it unless a token and/or an address list is set.
    metrics_token: SecretStr | None = Field(
        default=None, description="/metrics needs 'Authorization: Bearer <token>'"
    )
    metrics_allow: list[str] = Field(
        default_factory=list, description="networks (CIDR) /metrics answers; empty: any"
    )

    # Webhooks: organisations' receivers on loopback, private, link-local or other special
    # addresses are refused (an organisation admin could otherwise reach the broker's network).
    webhook_allow_private: bool = False
    # A delivery is attempted this many times in all, waiting first_retry_s, then twice as long
    # each time; an attempt gives up after timeout_s. Pending deliveries wait in the store: a
    # node claims due ones every poll_s, and one it claimed but did not settle (it died) goes to
    # another node lease_s later.
    webhook_attempts: int = Field(default=5, ge=1, le=20)
    webhook_first_retry_s: float = Field(default=1.0, gt=0, le=3600)
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60)
    webhook_lease_s: float = Field(default=60.0, gt=0, le=3600)
    webhook_poll_s: float = Field(default=1.0, gt=0, le=60)

    # Duty of care.
    suspend_after_reports: int = Field(
        default=3, ge=1, le=1000, description="different reporters that suspend a helper"
    )
    report_window_days: int = Field(default=90, ge=1, le=3650, description="reports count")
    retention_days: int = Field(
        default=365, ge=1, le=36500, description="days before calls lose their free text"
    )
    pseudonym_key: SecretStr | None = Field(
        default=None, description="key of erased people's pseudonyms; default: from jwt_secret"
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    demo: bool = False
    demo_token_ttl_s: float = Field(
        default=3600.0, ge=60, le=43200, description="life of a demo sign-in's token"
    )
    demo_signins_per_hour: int = Field(
        default=20, ge=1, le=10000, description="demo sign-ins per client address per hour"
    )

    @field_validator("ring_window_start", "ring_window_end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        RingWindow.model_validate({"start": value})
        return value

    @field_validator("escalate_to")
    @classmethod
    def _escalate_to(cls, value: str | None) -> str | None:
        return check_target(value)

    @field_validator("policy")
    @classmethod
    def _policy(cls, name: str) -> str:
        if name not in POLICIES:
            raise ValueError(
                f"{name!r} is not a dispatch policy: expected one of {', '.join(POLICIES)}"
            )
        return name

    @field_validator("stun_urls", "turn_urls")
    @classmethod
    def _ice_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
                raise ValueError(f"{url!r} is not a stun:, stuns:, turn: or turns: URL")
        return urls

    @field_validator("metrics_allow")
    @classmethod
    def _networks(cls, networks: list[str]) -> list[str]:
        for net in networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(
                    f"{net!r} is not a network such as '10.0.0.0/8' or '::1'"
                ) from None
        return networks

    @field_validator("store_url")
    @classmethod
    def _store_url(cls, url: str) -> str:
        if "://" not in url:
            raise ValueError(
                f"{url!r} is not a store URL such as sqlite:///var/lib/vabroker/broker.db, "
                "memory:// or redis://host:6379/0"
            )
        if url.split("://", 1)[0].lower() == "sqlite":
            from broker.store.sqlite_file import sqlite_path

            sqlite_path(url)  # a clear message now rather than at start-up
        return url

    @field_validator("apns_base_url", "fcm_base_url", "fcm_token_url")
    @classmethod
    def _https_url(cls, url: str | None) -> str | None:
        if url is not None and not re.fullmatch(r"https://[^/\s?#]+(/[^\s?#]*)?", url):
            raise ValueError(f"{url!r} is not an https:// URL")
        return url.rstrip("/") if url else url

    @field_validator("apns_key_id", "apns_team_id")
    @classmethod
    def _apple_id(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Z0-9]{10}", value):
            raise ValueError(f"{value!r} is not a 10-character Apple key or team id")
        return value

    @field_validator("apns_topic")
    @classmethod
    def _bundle(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+", value):
            raise ValueError(f"{value!r} is not a bundle id such as 'org.example.helper'")
        return value

    @field_validator("vapid_subject")
    @classmethod
    def _vapid_subject(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"(mailto:\S+@\S+|https://\S+)", value):
            raise ValueError(f"{value!r} is not a mailto: address or an https: URL")
        return value

    @field_validator("webpush_hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if not re.fullmatch(r"\.?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*", host):
                raise ValueError(f"{host!r} is not a host name (or '.domain' suffix)")
        return [h.lower() for h in hosts]

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        apns = {
            "apns_key_id": self.apns_key_id,
            "apns_team_id": self.apns_team_id,
            "apns_topic": self.apns_topic,
        }
        if self.apns_key and None in apns.values():
            missing = ", ".join(k for k, v in apns.items() if v is None)
            raise ValueError(f"apns_key is set but {missing} is not: APNs needs all four")
        if self.vapid_private_key and not self.vapid_subject:
            raise ValueError(
                "vapid_private_key is set but vapid_subject (mailto: or https:) is not"
            )
        if self.turn_urls and self.turn_secret is None:
            raise ValueError(
                "turn_urls are set but turn_secret is not: TURN needs the shared secret"
            )
        if self.node_ttl_s <= 2 * self.node_beat_s:
            raise ValueError(
                "node_ttl_s must be more than twice node_beat_s, or live nodes look dead"
            )
        if "HS256" not in self.jwt_algorithms and not (self.jwt_public_key or self.jwt_jwks_url):
            raise ValueError(
                "jwt_algorithms asks for RS256/ES256 but neither jwt_public_key nor jwt_jwks_url "
                "is set"
            )
        if self.webhook_lease_s <= self.webhook_timeout_s:
            raise ValueError(
                "webhook_lease_s must be more than webhook_timeout_s, or a slow receiver gets the "
                "same delivery from two nodes at once"
            )
        if self.jwt_jwks_url is not None:
            why = jwks_url_problem(self.jwt_jwks_url)
            if why:
                raise ValueError(f"jwt_jwks_url: {why}")
            if self.jwt_algorithms == ["HS256"]:
                raise ValueError(
                    "jwt_jwks_url is set but jwt_algorithms is only HS256: add RS256 and/or ES256,"
                    " the algorithms the identity provider signs with"
                )
            if not self.jwt_issuer or not self.jwt_audience:
                raise ValueError(
                    "jwt_jwks_url is set but jwt_issuer or jwt_audience is not: a provider's keys "
                    "sign tokens for every application it serves, so both must be checked"
                )
            if self.jwt_jwks_refetch_s > self.jwt_jwks_max_age_s:
                raise ValueError("jwt_jwks_refetch_s must not be more than jwt_jwks_max_age_s")
        return self

    def dispatch(self) -> DispatchSettings:
        return DispatchSettings(**self.model_dump(include=set(DispatchSettings.model_fields)))

    def circle(self) -> CircleSettings:
        return CircleSettings(
            invite_ttl_s=self.circle_invite_ttl_s, max_members=self.circle_max_members
        )

    def escalation(self) -> EscalationSettings:
        return EscalationSettings(to=self.escalate_to, retry_after_s=self.escalate_retry_after_s)

    def limits(self) -> LimitSettings:
        return LimitSettings(requests_per_hour=self.requests_per_hour)

    def safety(self) -> SafetySettings:
        return SafetySettings(
            suspend_after_reports=self.suspend_after_reports,
            report_window_days=self.report_window_days,
            retention_days=self.retention_days,
        )

    def pseudonym_secret(self) -> bytes:
        """The pseudonym key: the setting, else derived from the token secret (or, with only a
        public key or JWKS URL, from that; set VABROKER_PSEUDONYM_KEY then, as those are public)."""
        if self.pseudonym_key is not None:
            return self.pseudonym_key.get_secret_value().encode()
        base = (
            self.jwt_secret.get_secret_value()
            if self.jwt_secret
            else (self.jwt_public_key or self.jwt_jwks_url)
        )
        return hashlib.sha256(b"vabroker pseudonyms|" + (base or "").encode()).digest()

    def ring_window(self) -> RingWindow:
        return _ring_window(self.ring_window_start, self.ring_window_end)

    def public_key_pem(self) -> str | None:
        key = self.jwt_public_key
        if key is None or "-----BEGIN" in key:
            return key
        try:
            return Path(key).read_text()
        except OSError as exc:
            raise ConfigError(f"jwt_public_key: cannot read {key!r}: {exc.strerror}") from None


def jwks_url_problem(url: str) -> str | None:
    """Why a JWKS URL is refused (None: it is fine): keys are fetched over HTTPS, or plain HTTP
    to this machine only, since whoever can change the keys can sign in as anyone."""
    try:
        parsed = URL(url)
    except ValueError:
        return f"{url!r} is not a URL"
    if not parsed.is_absolute() or not parsed.host:
        return f"{url!r} is not an absolute URL"
    if parsed.scheme == "https":
        return None
    if parsed.scheme != "http":
        return f"{url!r}: the scheme must be https"
    host = parsed.host.strip("[]").lower()
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return f"{url!r}: keys must be fetched over https (plain http only to a loopback address)"


def _explain(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "(settings)"
        hint = f"VABROKER_{name.upper()}" if err["loc"] else ""
        lines.append(f"  {name}{f' ({hint})' if hint else ''}: {err['msg']}")
    return "\n".join(lines)


def default_data_dir() -> Path:
    """The user's data home: ``$XDG_DATA_HOME/vabroker``, else ``~/.local/share/vabroker``."""
    home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(home) / "vabroker"


def data_dir_of(settings: Settings) -> Path:
    return Path(settings.data_dir).expanduser() if settings.data_dir else default_data_dir()


def durable_store_url(data_dir: Path) -> str:
    """The durable embedded store's URL for a data directory."""
    return f"sqlite://{data_dir.absolute() / 'broker.db'}"


def serve_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """What ``vabroker serve`` runs with: ``load_settings``, except that a store named nowhere
    (flag, environment, file) is the durable store in the data directory, not memory."""
    first = load_settings(config_file, **overrides)
    default = {"store_url": durable_store_url(data_dir_of(first))}
    return load_settings(config_file, _defaults=default, **overrides)


def load_settings(
    config_file: str | Path | None = None,
    _defaults: dict[str, Any] | None = None,
    **overrides: Any,
) -> Settings:
    """Settings from defaults, a TOML file, the environment and ``overrides``, in rising order
    (``_defaults`` replace the built-in defaults, below everything else)."""
    file_values: dict[str, Any] = {}
    source = "environment"
    if config_file is not None:
        path = Path(config_file)
        source = f"{path} and environment"
        try:
            file_values = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
        unknown = sorted(set(file_values) - set(Settings.model_fields))
        if unknown:
            raise ConfigError(f"configuration file {path}: unknown setting(s) {', '.join(unknown)}")

    class _Layered(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (
                init_settings,
                env_settings,
                InitSettingsSource(settings_cls, file_values),
                InitSettingsSource(settings_cls, dict(_defaults or {})),
            )

    try:
        return Settings.model_validate(_Layered(**overrides).model_dump())
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source)) from None
    except SettingsError as exc:  # e.g. a list variable that is not JSON
        raise ConfigError(
            f"invalid configuration ({source}): {exc}; lists are JSON, e.g. "
            "VABROKER_STUN_URLS='[\"stun:stun.example.org:3478\"]'"
        ) from None


@functools.lru_cache(maxsize=16)
def _ring_window(start: str, end: str) -> RingWindow:
    # One (frozen) object for every profile given the default window, not one each.
    return RingWindow.model_validate({"start": start, "end": end})
