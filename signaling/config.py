"""Configuration: one pydantic-settings model, from ``VABROKER_*`` variables and a TOML file.

Precedence, highest first: explicit overrides (command-line flags), environment variables, the
TOML file, defaults. A bad value stops start-up with a message naming the setting.
"""

from __future__ import annotations

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

from broker.dispatch import DispatchSettings
from broker.model import RingWindow
from broker.service import LimitSettings


class ConfigError(Exception):
    """Configuration that cannot be used; the message names the setting and what is wrong."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VABROKER_", extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    node_id: str = Field(default="", max_length=64, description="this node's name; random if empty")
    store_url: str = "memory://"

    # Tokens: HS256 with a shared secret, or RS256/ES256 with the identity provider's public key.
    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = Field(
        default=None, description="PEM text, or a path to a PEM file"
    )
    jwt_algorithms: list[Literal["HS256", "RS256", "ES256"]] = Field(default=["HS256"])
    jwt_audience: str | None = None
    jwt_issuer: str | None = None

    # Dispatch.
    first_wave: int = Field(default=5, ge=1, le=1000)
    wave_growth: float = Field(default=2.0, ge=1.0, le=10.0)
    max_wave: int = Field(default=40, ge=1, le=5000)
    wave_interval_s: float = Field(default=8.0, gt=0, le=600)
    ring_timeout_s: float = Field(default=45.0, gt=0, le=600)
    max_wait_s: float = Field(default=180.0, gt=0, le=3600)
    ring_window_start: str = "08:00"
    ring_window_end: str = "22:00"
    daily_ring_cap: int = Field(default=10, ge=0, le=1000)

    # Sessions.
    grace_s: float = Field(default=20.0, ge=0, le=3600)
    heartbeat_s: float = Field(default=20.0, gt=0, le=600)
    hello_timeout_s: float = Field(default=10.0, gt=0, le=120)
    messages_per_s: float = Field(default=20.0, gt=0, description="per-connection message rate")
    message_burst: int = Field(default=60, ge=1)
    requests_per_hour: int = Field(default=30, ge=1)

    # ICE: STUN/TURN servers handed to clients; TURN credentials per the TURN REST API scheme.
    stun_urls: list[str] = Field(default_factory=list)
    turn_urls: list[str] = Field(default_factory=list)
    turn_secret: SecretStr | None = None
    turn_ttl_s: int = Field(default=3600, ge=60, le=86400 * 7)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    demo: bool = False

    @field_validator("ring_window_start", "ring_window_end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        RingWindow.model_validate({"start": value})
        return value

    @field_validator("stun_urls", "turn_urls")
    @classmethod
    def _ice_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
                raise ValueError(f"{url!r} is not a stun:, stuns:, turn: or turns: URL")
        return urls

    @field_validator("store_url")
    @classmethod
    def _store_url(cls, url: str) -> str:
        if "://" not in url:
            raise ValueError(f"{url!r} is not a store URL such as memory:// or redis://host:6379/0")
        return url

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.turn_urls and self.turn_secret is None:
            raise ValueError(
                "turn_urls are set but turn_secret is not: TURN needs the shared secret"
            )
        if "HS256" not in self.jwt_algorithms and not self.jwt_public_key:
            raise ValueError("jwt_algorithms asks for RS256/ES256 but jwt_public_key is not set")
        return self

    def dispatch(self) -> DispatchSettings:
        return DispatchSettings(**self.model_dump(include=set(DispatchSettings.model_fields)))

    def limits(self) -> LimitSettings:
        return LimitSettings(requests_per_hour=self.requests_per_hour)

    def ring_window(self) -> RingWindow:
        return RingWindow.model_validate(
            {"start": self.ring_window_start, "end": self.ring_window_end}
        )

    def public_key_pem(self) -> str | None:
        key = self.jwt_public_key
        if key is None or "-----BEGIN" in key:
            return key
        try:
            return Path(key).read_text()
        except OSError as exc:
            raise ConfigError(f"jwt_public_key: cannot read {key!r}: {exc.strerror}") from None


def _explain(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "(settings)"
        hint = f"VABROKER_{name.upper()}" if err["loc"] else ""
        lines.append(f"  {name}{f' ({hint})' if hint else ''}: {err['msg']}")
    return "\n".join(lines)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from defaults, a TOML file, the environment and ``overrides``, in rising order."""
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
            return (init_settings, env_settings, InitSettingsSource(settings_cls, file_values))

    try:
        return Settings.model_validate(_Layered(**overrides).model_dump())
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source)) from None
    except SettingsError as exc:  # e.g. a list variable that is not JSON
        raise ConfigError(
            f"invalid configuration ({source}): {exc}; lists are JSON, e.g. "
            "VABROKER_STUN_URLS='[\"stun:stun.example.org:3478\"]'"
        ) from None
