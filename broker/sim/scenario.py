"""A simulation scenario: every parameter of the modelled world, read from one TOML file.

The shipped scenarios live next to this module (``scenarios/<name>.toml``), so an installed
package finds them by name. A bad file is refused with a message naming the key that is wrong.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from broker.dispatch import DispatchSettings
from broker.model import Language, RingWindow, TimeZone

Share = Annotated[float, Field(gt=0, le=1e9)]
Probability = Annotated[float, Field(ge=0, le=1)]


class ScenarioError(Exception):
    """A scenario that cannot be used; the message names the file and the bad key."""


def _hourly(values: list[float]) -> list[float]:
    if len(values) != 24:
        raise ValueError(f"needs 24 values, one per local hour 00-23, not {len(values)}")
    if any(v < 0 for v in values):
        raise ValueError("values must not be negative")
    if not any(values):
        raise ValueError("at least one hour must be above 0")
    return values


Hourly = Annotated[list[float], AfterValidator(_hourly)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class About(_Strict):
    name: str = Field(min_length=1, max_length=80)
    description: str = ""
    seed: int = 1
    start: datetime = Field(description="UTC start of the simulated period")
    days: float = Field(gt=0, le=62, description="length of the simulated period")

    @field_validator("start")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("write the start with its offset, e.g. 2026-03-02T00:00:00Z")
        return value.astimezone(UTC)


class Region(_Strict):
    """Where people live, in what share, and which languages they speak there."""

    zone: TimeZone
    volunteers: float = Field(ge=0, description="relative weight of volunteers living here")
    recipients: float = Field(ge=0, description="relative weight of recipients living here")
    languages: dict[Language, Share] = Field(min_length=1)


class WindowShare(_Strict):
    start: str
    end: str
    share: Share

    @model_validator(mode="after")
    def _valid(self) -> WindowShare:
        RingWindow.model_validate({"start": self.start, "end": self.end})
        return self

    def window(self) -> RingWindow:
        return RingWindow.model_validate({"start": self.start, "end": self.end})


class CapShare(_Strict):
    cap: int = Field(ge=0, le=1000)
    share: Share


class Volunteers(_Strict):
    count: int = Field(ge=1, le=5_000_000)
    second_language_share: Probability = 0.0
    second_languages: dict[Language, Share] = Field(default_factory=dict)
    ring_windows: list[WindowShare] = Field(min_length=1)
    daily_caps: list[CapShare] = Field(min_length=1)
    on_duty_share: float = Field(
        gt=0, le=1, description="long-run share of time a volunteer is logged in and available"
    )
    on_duty_session_h: float = Field(gt=0, le=24 * 31, description="mean length of a session")

    @model_validator(mode="after")
    def _second(self) -> Volunteers:
        if self.second_language_share > 0 and not self.second_languages:
            raise ValueError("second_language_share is above 0 but second_languages is empty")
        return self


class Recipients(_Strict):
    count: int = Field(ge=1, le=5_000_000)
    calls_per_day: float = Field(gt=0, le=10_000_000, description="mean calls a day, all together")
    hourly_profile: Hourly = Field(description="relative call rate by local hour")


class Response(_Strict):
    """How volunteers answer a ring.

    Each volunteer has a willingness drawn once from a Beta distribution (mean
    ``accept_mean``); a ring is accepted with probability willingness x ``hourly_factor`` of
    their local hour x (1 - ``fatigue`` x exp(-seconds since their previous ring /
    ``fatigue_time_s``)). An accept comes after a log-normal delay; one that would come after
    the ring expired does not happen. Of the rest, ``decline_share`` tap "decline".
    """

    accept_mean: float = Field(gt=0, lt=1)
    accept_concentration: float = Field(gt=0, le=1000, description="Beta's alpha + beta")
    hourly_factor: Hourly
    fatigue: Probability
    fatigue_time_s: float = Field(gt=0, le=30 * 86400)
    delay_median_s: float = Field(gt=0, le=600)
    delay_sigma: float = Field(ge=0, le=5)
    decline_share: Probability
    decline_median_s: float = Field(gt=0, le=600)
    dismiss_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="an accept this close to its ring's withdrawal is already on its way",
    )

    @field_validator("hourly_factor")
    @classmethod
    def _factor(cls, values: list[float]) -> list[float]:
        if any(v > 1 for v in values):
            raise ValueError("factors are at most 1")
        return values


class Calls(_Strict):
    duration_min_s: float = Field(gt=0, le=86400)
    duration_max_s: float = Field(gt=0, le=86400)

    @model_validator(mode="after")
    def _order(self) -> Calls:
        if self.duration_max_s < self.duration_min_s:
            raise ValueError("duration_max_s is below duration_min_s")
        return self


class Circles(_Strict):
    """Trusted circles: a share of recipients keep a circle of a few volunteers who speak their
    language (from their own region when enough do), and ask it first, or only."""

    share: Probability = Field(default=0.0, description="recipients who have a circle")
    size: int = Field(default=3, ge=1, le=50, description="volunteers in each circle")
    mode: Literal["first", "only"] = "first"


class Lobby(_Strict):
    """The lobby: a share of on-duty volunteers watch the requests still searching, and one of
    them takes a request after a delay (log-normal). Without ``watch_share`` the lobby is not
    modelled; with 0 it is, with nobody watching (the figures to compare with)."""

    watch_share: Probability | None = Field(
        default=None, description="volunteers who watch the lobby while on duty"
    )
    take_median_s: float = Field(
        default=20.0, gt=0, le=3600, description="a watcher takes a request this long after it"
    )
    take_sigma: float = Field(default=0.8, ge=0, le=5, description="spread of that delay")


class ScenarioDispatch(DispatchSettings):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Scenario(_Strict):
    scenario: About
    regions: list[Region] = Field(min_length=1)
    volunteers: Volunteers
    recipients: Recipients
    response: Response
    calls: Calls
    circles: Circles = Field(default_factory=Circles)
    lobby: Lobby = Field(default_factory=Lobby)
    dispatch: ScenarioDispatch = Field(
        default_factory=ScenarioDispatch,
        description="the broker's dispatch settings for the default policy",
    )

    @model_validator(mode="after")
    def _weights(self) -> Scenario:
        if not any(r.volunteers for r in self.regions):
            raise ValueError("regions: no region has volunteers above 0")
        if not any(r.recipients for r in self.regions):
            raise ValueError("regions: no region has recipients above 0")
        return self

    @property
    def start(self) -> float:
        return self.scenario.start.timestamp()

    @property
    def end(self) -> float:
        return self.start + self.scenario.days * 86400.0


def shipped() -> list[str]:
    """Names of the scenarios that come with the package."""
    folder = resources.files(__package__ or "broker.sim") / "scenarios"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _explain(exc: ValidationError, source: str) -> str:
    lines = [f"scenario {source} is not valid:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "missing"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def parse(
    text: str, source: str = "(text)", seed: int | None = None, days: float | None = None
) -> Scenario:
    """A scenario from TOML text; ``seed`` and ``days`` replace the file's own."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario {source} is not valid TOML: {exc}") from None
    about = data.get("scenario")
    if isinstance(about, dict):
        if seed is not None:
            about["seed"] = seed
        if days is not None:
            about["days"] = days
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_explain(exc, source)) from None


def load(name_or_path: str | Path, seed: int | None = None, days: float | None = None) -> Scenario:
    """A shipped scenario by name (``country``), or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text()
        except OSError as exc:
            raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}") from None
        return parse(text, str(path), seed, days)
    name = str(name_or_path)
    if name not in shipped():
        raise ScenarioError(
            f"no scenario named {name!r}: shipped are {', '.join(shipped())}, or give a .toml path"
        )
    folder = resources.files(__package__ or "broker.sim") / "scenarios"
    return parse((folder / f"{name}.toml").read_text(), name, seed, days)
