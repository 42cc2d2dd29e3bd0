"""Partner organisations: who they are, when they are open, and how their queues route calls.

An organisation is configuration an administrator writes (``PUT /v1/orgs/{id}``); everything
here validates it and answers questions about time in the organisation's own zone. Opening
hours are wall-clock times in the organisation's IANA zone, so "09:00-17:00" stays 09:00-17:00
local across a daylight-saving change; zoneinfo turns each day's hours into absolute instants.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator, model_validator

from broker.model import (
    Language,
    MultilineText,
    PlainText,
    TimeZone,
    local_datetime,
    primary_language,
    shown,
)

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Strategy = Literal["longest_idle", "ringall", "fewest_calls", "round_robin"]
Overflow = Literal["end", "volunteers"]

_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_HHMM = re.compile(r"^(?:[01]\d|2[0-3]):[0-5]\d$|^24:00$")
# How far ahead to look for the next opening: a closure can last a season, not more than a year.
OPENING_HORIZON_DAYS = 400
# How far ahead a closing time matters: queued calls wait a day at most.
CLOSING_HORIZON_DAYS = 8


def check_id(value: str, what: str = "id") -> str:
    if not _ID.match(value):
        raise ValueError(
            f"{shown(value)} is not a valid {what}: 1-64 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return value


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


class Span(BaseModel):
    """One stretch of opening on a weekday. ``close`` before ``open`` runs past midnight;
    ``close`` may be "24:00" (midnight at the end of the day)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    open: str
    close: str

    @field_validator("open", "close")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError(f"{shown(value)} is not a time of day written HH:MM (00:00-24:00)")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Span:
        if self.open == "24:00":
            raise ValueError("open cannot be 24:00; write 00:00 of the next day")
        if _minutes(self.open) == _minutes(self.close) % 1440 and self.close != "24:00":
            raise ValueError(f"open and close are both {self.open}: the span would be empty")
        return self

    @property
    def open_min(self) -> int:
        return _minutes(self.open)

    @property
    def close_min(self) -> int:
        """Minutes after the start of the opening day (past 1440 when it runs past midnight)."""
        close = _minutes(self.close)
        return close if close > self.open_min else close + 1440


class QueueConfig(BaseModel):
    """One queue of an organisation and how it routes calls to agents."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: PlainText = Field(min_length=1, max_length=120)
    languages: list[Language] = Field(default_factory=list, max_length=20)
    strategy: Strategy = "longest_idle"
    ring_timeout_s: float = Field(default=20.0, ge=5, le=600)
    max_wait_s: float = Field(default=900.0, ge=10, le=86400)
    max_length: int = Field(default=50, ge=1, le=10000)
    wrapup_s: float = Field(default=15.0, ge=0, le=3600)
    overflow: Overflow = "end"
    webhook_url: HttpUrl | None = None
    webhook_secret: str | None = Field(default=None, min_length=16, max_length=256)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return check_id(value, "queue id")

    @model_validator(mode="after")
    def _webhook(self) -> QueueConfig:
        if self.webhook_url is not None and self.webhook_url.scheme not in ("http", "https"):
            raise ValueError("webhook_url must be an http:// or https:// URL")
        return self

    def serves(self, language: str) -> bool:
        return primary_language(language) in {primary_language(t) for t in self.languages}


class Org(BaseModel):
    """A partner organisation, as its administrator configured it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: PlainText = Field(min_length=1, max_length=120)
    description: MultilineText = Field(default="", max_length=2000)
    languages: list[Language] = Field(min_length=1, max_length=20)
    timezone: TimeZone
    hours: dict[Weekday, list[Span]] = Field(default_factory=dict)
    closures: list[date] = Field(default_factory=list, max_length=1000)
    queues: list[QueueConfig] = Field(min_length=1, max_length=50)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return check_id(value, "organisation id")

    @model_validator(mode="after")
    def _consistent(self) -> Org:
        ids = [q.id for q in self.queues]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"queues: the queue id(s) {', '.join(twice)} appear more than once")
        for day, spans in self.hours.items():
            ordered = sorted(spans, key=lambda s: s.open_min)
            for a, b in itertools.pairwise(ordered):
                if b.open_min < a.close_min:
                    raise ValueError(f"hours.{day}: {a.open}-{a.close} overlaps {b.open}-{b.close}")
        return self

    def queue(self, queue_id: str) -> QueueConfig | None:
        return next((q for q in self.queues if q.id == queue_id), None)

    def pick_queue(self, language: str | None) -> QueueConfig:
        """The queue for a caller who named none: the first that serves their language."""
        if language is not None:
            for queue in self.queues:
                if queue.serves(language):
                    return queue
        return self.queues[0]

    def public(self) -> Org:
        """The organisation without its webhook secrets, for reading back."""
        return self.model_copy(
            update={"queues": [q.model_copy(update={"webhook_secret": None}) for q in self.queues]}
        )


# --- opening hours ------------------------------------------------------------------------------


def _instant(day: date, minutes: int, zone: ZoneInfo) -> float:
    day = day + timedelta(days=minutes // 1440)
    minutes %= 1440
    local = datetime(day.year, day.month, day.day, minutes // 60, minutes % 60, tzinfo=zone)
    # A time inside a spring-forward gap (fold=0) maps to the instant just after the gap.
    return local.timestamp()


def _day_spans(org: Org, day: date, zone: ZoneInfo, closed: frozenset[date]) -> list[Interval]:
    """Opening spans that start on the local date ``day``."""
    if day in closed:
        return []
    out = []
    for span in org.hours.get(WEEKDAYS[day.weekday()], []):  # type: ignore[call-overload]
        out.append(
            Interval(_instant(day, span.open_min, zone), _instant(day, span.close_min, zone))
        )
    return sorted(out)


@dataclass(frozen=True, order=True, slots=True)
class Interval:
    start: float
    end: float


def opening_intervals(org: Org, since: float, days: int) -> list[Interval]:
    """Merged opening intervals from the local day before ``since`` for ``days`` days: adjacent
    spans (e.g. Monday 00:00-24:00 and Tuesday 00:00-24:00) join into one."""
    zone = ZoneInfo(org.timezone)
    closed = frozenset(org.closures)
    first = local_datetime(org.timezone, since).date() - timedelta(days=1)
    merged: list[Interval] = []
    for n in range(days + 2):
        for iv in _day_spans(org, first + timedelta(days=n), zone, closed):
            if merged and iv.start <= merged[-1].end:
                merged[-1] = Interval(merged[-1].start, max(merged[-1].end, iv.end))
            else:
                merged.append(iv)
    return merged


def is_open(org: Org, ts: float) -> bool:
    return any(iv.start <= ts < iv.end for iv in opening_intervals(org, ts, 1))


def next_closing(org: Org, ts: float) -> float | None:
    """When the current opening ends; None if closed now, or open past the horizon."""
    intervals = opening_intervals(org, ts, CLOSING_HORIZON_DAYS)
    for n, iv in enumerate(intervals):
        if iv.start <= ts < iv.end:
            return None if n == len(intervals) - 1 and _runs_to_horizon(org, iv, ts) else iv.end
    return None


def _runs_to_horizon(org: Org, iv: Interval, ts: float) -> bool:
    horizon_day = local_datetime(org.timezone, ts).date() + timedelta(days=CLOSING_HORIZON_DAYS)
    zone = ZoneInfo(org.timezone)
    return iv.end >= _instant(horizon_day, 0, zone)


def next_opening(org: Org, ts: float) -> float | None:
    """The next instant after ``ts`` at which a closed organisation opens (when open now: the
    opening after the current one ends). None if it never opens within the horizon."""
    zone = ZoneInfo(org.timezone)
    closed = frozenset(org.closures)
    first = local_datetime(org.timezone, ts).date() - timedelta(days=1)
    current_end: float | None = None
    for n in range(OPENING_HORIZON_DAYS + 2):
        for iv in _day_spans(org, first + timedelta(days=n), zone, closed):
            if iv.start <= ts < iv.end or (current_end is not None and iv.start <= current_end):
                current_end = max(iv.end, current_end or iv.end)
                continue
            if iv.start > ts:
                return iv.start
    return None


def describe_time(ts: float, timezone: str) -> str:
    """'Monday 15 June 09:00' in the zone."""
    local = local_datetime(timezone, ts)
    return f"{local:%A} {local.day} {local:%B %H:%M}"


def closed_message(org: Org, ts: float, caller_timezone: str) -> str:
    """Why a call is refused, naming the next opening in the organisation's and caller's time."""
    opening = next_opening(org, ts)
    if opening is None:
        return f"{org.name} is closed and has no opening hours set. Please try again later."
    theirs = describe_time(opening, org.timezone)
    text = f"{org.name} is closed now. It opens {theirs} ({org.timezone} time)"
    if caller_timezone != org.timezone:
        text += f", which is {describe_time(opening, caller_timezone)} your time"
    return text + "."


# --- what the store keeps about queues and agents ----------------------------------------------

AgentStateName = Literal["available", "away"]


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """An agent as the queue router sees them. The store fills in the live facts (connected,
    in a call, ringing) from its own records, as it does for volunteers' ``Candidate``s."""

    user_id: str
    state: AgentStateName = "away"
    display_name: str = ""
    since: float = 0.0  # when the state was last set
    idle_since: float = 0.0  # when they last became free: set available, or wrap-up ended
    wrapup_until: float = 0.0
    missed: int = 0  # rings missed in a row
    calls: int = 0  # calls answered, ever (for ``fewest_calls``)
    last_rung_at: float = 0.0
    connected: bool = False
    busy: bool = False  # a party of an open call
    ringing: str | None = None  # the call they are ringing for

    def free(self, now: float) -> bool:
        """May be rung now: on, connected, not in a call or a ring, past their wrap-up."""
        return (
            self.state == "available"
            and self.connected
            and not self.busy
            and self.ringing is None
            and self.wrapup_until <= now
        )


@dataclass(frozen=True, slots=True)
class QueueEntry:
    call_id: str
    enqueued_at: float


@dataclass(frozen=True, slots=True)
class QueueDayStats:
    """One organisation's queue figures for one local day."""

    answered: int = 0
    abandoned: int = 0
    wait_total_s: float = 0.0

    @property
    def average_wait_s(self) -> float | None:
        return self.wait_total_s / self.answered if self.answered else None


# --- the agent console's view of a queue -------------------------------------------------------


class WaitingCall(BaseModel):
    call: str
    queue: str
    position: int
    wait_s: int
    language: str
    topic: str | None = None
    ringing: list[str] = Field(default_factory=list)  # agents being rung for it


class AgentView(BaseModel):
    id: str
    display_name: str = ""
    state: AgentStateName
    activity: Literal["idle", "ringing", "in_call", "wrap_up", "offline", "away"]
    calls: int = 0
    missed: int = 0


class TodayStats(BaseModel):
    date: str  # the organisation's local date
    answered: int
    abandoned: int
    average_wait_s: float | None = None


class QueueSnapshot(BaseModel):
    org: str
    open_now: bool
    waiting: list[WaitingCall]
    agents: list[AgentView]
    today: TodayStats
