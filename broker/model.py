"""The domain's values: who people are, what a call is, and why things end.

Everything here is plain data. The store keeps it, the dispatcher reads and changes it through
the store's atomic operations, and the signalling edge turns it into wire messages.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time
from typing import Annotated, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

ModelT = TypeVar("ModelT", bound=BaseModel)


def lean(model: ModelT) -> ModelT:
    """``model`` (the caller's own object) without pydantic's set of the fields given
    explicitly. Only ``exclude_unset`` reads that set, and nothing here does for a record a
    store keeps; but it is a set of names per object, kept for as long as the object: 728
    bytes for a profile, 1,240 for an assigned call."""
    model.model_fields_set.clear()
    return model


class Role(enum.StrEnum):
    RECIPIENT = "recipient"
    VOLUNTEER = "volunteer"
    AGENT = "agent"
    ADMIN = "admin"
    # An automatic helper (e.g. ``vabroker assistant``, a reader): on duty like a volunteer,
    # rung only for calls that ask for it (``call.request`` with ``helper: "assistant"``).
    ASSISTANT = "assistant"

    @property
    def is_helper(self) -> bool:
        return self in (Role.VOLUNTEER, Role.AGENT, Role.ASSISTANT)

    @property
    def is_on_duty_helper(self) -> bool:
        """Goes on duty and is rung by the dispatcher (the candidate index)."""
        return self in (Role.VOLUNTEER, Role.ASSISTANT)


class CallState(enum.StrEnum):
    """The call lifecycle. Transitions only go forward:

    searching -> assigned -> ended, queued -> assigned -> ended, or straight to ended.
    A search nobody answers may be escalated to a help centre's queue (searching -> queued).
    ``connected`` is not a state of its own: media is a fact about an assigned call
    (``media_at``), because the parties may reconnect media without the call changing hands.
    """

    SEARCHING = "searching"
    QUEUED = "queued"
    ASSIGNED = "assigned"
    ENDED = "ended"

    @property
    def is_open(self) -> bool:
        return self is not CallState.ENDED

    def can_become(self, other: CallState) -> bool:
        return other in _TRANSITIONS[self]


# The only moves a call makes. A queued call may go back to searching when its organisation
# overflows it to volunteers; a search may be escalated to a help centre's queue. The stores
# check every state change against this table.
_TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    CallState.SEARCHING: frozenset({CallState.ASSIGNED, CallState.ENDED, CallState.QUEUED}),
    CallState.QUEUED: frozenset({CallState.ASSIGNED, CallState.ENDED, CallState.SEARCHING}),
    CallState.ASSIGNED: frozenset({CallState.ENDED}),
    CallState.ENDED: frozenset(),
}


class EndReason(enum.StrEnum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    NO_ANSWER = "no_answer"
    PEER_LOST = "peer_lost"
    CLOSED = "closed"
    FAILED = "failed"
    # A call with an automatic helper that the recipient escalated to a person: it ends when a
    # volunteer accepts the search that replaces it (``Call.replaces``).
    HANDED_OVER = "handed_over"


class WithdrawReason(enum.StrEnum):
    ANSWERED = "answered"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    DECLINED = "declined"  # the helper declined (on this or another of their devices)


class EscalationOutcome(enum.StrEnum):
    """What became of a search that reached its maximum wait or found nobody eligible."""

    QUEUED = "queued"  # handed to the configured help centre's queue
    CLOSED = "closed"  # a help centre is configured but closed now
    FULL = "full"  # a help centre is configured but its queue is full
    UNAVAILABLE = "unavailable"  # no help centre is configured (or the call came from one)


class CircleMode(enum.StrEnum):
    """How a request uses the recipient's trusted circle."""

    FIRST = "first"  # ring the circle for a head start, then search as usual
    ONLY = "only"  # private matters: the circle and never the public


class ErrorCode(enum.StrEnum):
    BAD_MESSAGE = "bad_message"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    RATE_LIMITED = "rate_limited"
    ORG_CLOSED = "org_closed"
    QUEUE_FULL = "queue_full"
    UNAVAILABLE = "unavailable"
    TOO_LARGE = "too_large"
    SUSPENDED = "suspended"


class BrokerError(Exception):
    """A refusal the client should hear about, with a code from the protocol."""

    def __init__(self, code: ErrorCode, message: str, until: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.until = until  # ``suspended``: when the restriction ends (None: not set)


# --- validated scalar types -------------------------------------------------------------------

# BCP 47, loosely: a primary language subtag and optional subtags ("en", "pt-BR", "zh-Hant-TW").
_BCP47 = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


def _check_language(tag: str) -> str:
    if len(tag) > 64 or not _BCP47.match(tag):
        raise ValueError(f"{shown(tag)} is not a BCP 47 language tag such as 'en' or 'pt-BR'")
    return tag


# IANA names are at most a few short parts ("America/Argentina/ComodRivadavia", 32 characters):
# anything longer or odder is refused before any look-up (zoneinfo's walks the name's parts).
MAX_TIMEZONE_LENGTH = 64
_TZ_SHAPE = re.compile(r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9][A-Za-z0-9_+-]*){0,3}$")


def _check_timezone(name: str) -> str:
    if len(name) > MAX_TIMEZONE_LENGTH or not _TZ_SHAPE.match(name):
        raise ValueError(
            f"{shown(name)} is not an IANA time zone such as 'Europe/London' "
            f"(at most {MAX_TIMEZONE_LENGTH} characters)"
        )
    if name not in _known_zones():
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            raise ValueError(f"{name!r} is not an IANA time zone such as 'Europe/London'") from exc
    return name


def shown(value: str, limit: int = 40) -> str:
    """A value quoted in an error message, cut short: a message never echoes a whole input."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


_ZONES: frozenset[str] | None = None


def _known_zones() -> frozenset[str]:
    global _ZONES
    if _ZONES is None:
        _ZONES = frozenset(available_timezones())
    return _ZONES


# Free text one person types and another sees (names, topics, notes, comments): no control
# characters (C0 U+0000-U+001F, DEL, C1 U+0080-U+009F), which a screen reader or a terminal may act
# on, and no bidirectional overrides or isolates (U+202A-U+202E, U+2066-U+2069), which make text
# read differently from what it says (a name that shows as another person's). Multi-line text
# (notes, comments, descriptions) may hold tab, line feed and carriage return. Refused, not
# stripped: the sender is told which field and which character.
_FORBIDDEN_IN_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_FORBIDDEN_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _check_text(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        bad = pattern.search(value)
        if bad is not None:
            raise ValueError(
                f"{what} must not contain U+{ord(bad.group()):04X} (control characters and "
                "bidirectional overrides are refused)"
            )
        return value

    return check


def readable_text(value: str) -> str:
    """``value`` with every character refused in multi-line text replaced by a space: for text
    a client passes on that it did not type (what an automatic reader read)."""
    return _FORBIDDEN_IN_TEXT.sub(" ", value)


Language = Annotated[str, AfterValidator(_check_language)]
TimeZone = Annotated[str, AfterValidator(_check_timezone)]
# One line of text a person sees (a name, a topic).
PlainText = Annotated[str, AfterValidator(_check_text(_FORBIDDEN_IN_LINE, "text"))]
# Text that may run over several lines (a note, a comment, a description).
MultilineText = Annotated[str, AfterValidator(_check_text(_FORBIDDEN_IN_TEXT, "text"))]


def local_datetime(timezone: str, ts: float) -> datetime:
    """The wall-clock time at ``ts`` in an IANA zone; zoneinfo gets DST right both ways."""
    return datetime.fromtimestamp(ts, ZoneInfo(timezone))


def primary_language(tag: str) -> str:
    """'pt-BR' -> 'pt': volunteers are matched on the primary subtag, case-insensitively."""
    return tag.split("-", 1)[0].lower()


class RingWindow(BaseModel):
    """Local hours in which a volunteer accepts rings. ``end`` before ``start`` spans midnight."""

    # A misspelt key ("strat") is refused, not ignored: ignoring it would leave the default.
    model_config = ConfigDict(frozen=True, extra="forbid")

    start: time = time(8, 0)
    end: time = time(22, 0)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _parse_hhmm(cls, value: object) -> object:
        if isinstance(value, str):
            if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
                raise ValueError(f"{shown(value)} is not a time of day written HH:MM")
            hours, minutes = value.split(":")
            return time(int(hours), int(minutes))
        return value

    def contains(self, local: time) -> bool:
        if self.start == self.end:
            return True  # a window of zero length means "any time"
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def as_wire(self) -> dict[str, str]:
        return {"start": self.start.strftime("%H:%M"), "end": self.end.strftime("%H:%M")}


class Profile(BaseModel):
    """What the broker knows of a user. Created from the token's claims on first sign-in."""

    user_id: str
    role: Role
    org: str | None = None
    display_name: str = ""
    languages: list[Language] = Field(default_factory=lambda: ["en"])
    timezone: TimeZone = "UTC"
    ring_window: RingWindow = Field(default_factory=RingWindow)
    daily_ring_cap: int = Field(default=10, ge=0, le=1000)
    note: str | None = None
    blocked: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Candidate:
    """A volunteer as the dispatcher sees them when choosing whom to ring.

    The store returns volunteers who are on duty, reachable, speak the language and are inside
    their ring window; the dispatcher applies the per-call rules and ranks them. A plain
    dataclass, not a pydantic model: thousands are built for every wave.
    """

    user_id: str
    timezone: str = "UTC"
    calls_30d: int = 0
    last_rung_at: float = 0.0
    rings_today: int = 0
    ring_day: str = ""  # the local date that ``rings_today`` counts, YYYY-MM-DD
    daily_ring_cap: int = 10
    busy: bool = False  # in a call, or ringing for one
    blocked: frozenset[str] = frozenset()
    favourite_of: frozenset[str] = frozenset()
    last_call_at: float = 0.0  # when they last answered a call; 0 if never (or not known)
    restricted: bool = False  # suspended or banned: never rung
    assistant: bool = False  # an automatic helper: rung only for calls that ask for one


class Call(BaseModel):
    """A request for help, from the tap on "call" to its end."""

    id: str
    recipient_id: str
    recipient_name: str = ""
    language: str
    languages: list[str] = Field(default_factory=list)  # the search order, widened as it goes
    language_index: int = 0
    topic: str | None = None
    note: str | None = None
    org: str | None = None
    queue: str | None = None
    # "assistant": ring an automatic helper first and alone, volunteers if none is free.
    helper: str | None = None
    state: CallState = CallState.SEARCHING
    helper_id: str | None = None
    helper_name: str = ""
    helper_role: Role | None = None
    wave: int = 0
    notified: int = 0
    requested_at: float
    first_ring_at: float | None = None
    assigned_at: float | None = None
    media_at: float | None = None
    ended_at: float | None = None
    end_reason: EndReason | None = None
    ended_by: Role | None = None
    # Partner queues: when the call joined its queue, what the caller was last told of their
    # place, and when it overflowed from the queue to volunteer help (if it did).
    enqueued_at: float | None = None
    queue_position: int | None = None
    queue_eta_s: int | None = None
    overflowed_at: float | None = None
    # Escalation: when the search was escalated, what became of it, and (when it could not go
    # to a help centre) the delay after which the recipient was told to try again.
    escalated_at: float | None = None
    escalation: EscalationOutcome | None = None
    retry_after_s: int | None = None
    circle: CircleMode | None = None  # the recipient's trusted circle first, or only
    # A handover: the search a recipient started from a call with an automatic helper ("get me
    # a volunteer") names that call, which stays up until a volunteer accepts this one.
    replaces: str | None = None
    # What the automatic helper read, shared by the recipient with the volunteer they asked
    # for; shown with the ring, dropped when the call ends.
    reading: str | None = None

    @property
    def search_started_at(self) -> float:
        """When the volunteer search began: the request, or the overflow from a queue."""
        return self.overflowed_at if self.overflowed_at is not None else self.requested_at

    def party_of(self, user_id: str) -> Role | None:
        if user_id == self.recipient_id:
            return Role.RECIPIENT
        if user_id == self.helper_id:
            return self.helper_role or Role.VOLUNTEER
        return None

    def peer_of(self, user_id: str) -> str | None:
        if user_id == self.recipient_id:
            return self.helper_id
        if user_id == self.helper_id:
            return self.recipient_id
        return None

    @property
    def answer_time_s(self) -> float | None:
        if self.assigned_at is None:
            return None
        return self.assigned_at - self.requested_at

    @property
    def duration_s(self) -> float | None:
        if self.assigned_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.assigned_at


class Invite(BaseModel):
    """An invitation into a recipient's trusted circle: a one-time code anyone may redeem
    (``helper_id`` None), or the recipient's request to one past helper, who must agree."""

    model_config = ConfigDict(frozen=True)

    recipient_id: str
    created_at: float
    expires_at: float
    helper_id: str | None = None


class Feedback(BaseModel):
    call_id: str
    user_id: str
    rating: str
    report: str | None = None
    comment: str | None = None
    at: float
