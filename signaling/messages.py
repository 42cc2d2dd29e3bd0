"""Protocol v1 messages: one pydantic model per message, both directions.

This module is the one definition of the wire format. The server parses client frames with
``parse_client``; the Python SDK parses server frames with ``parse_server``. Unknown fields are
ignored (clients and servers may be newer than each other); a wrong type or a missing field is a
``bad_message``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from broker.events import (
    AgentStatusChanged,
    Assigned,
    AvailabilityChanged,
    Ended,
    Escalation,
    Event,
    QueueUpdate,
    Ring,
    Status,
    Withdrawn,
)
from broker.model import Language, MultilineText, PlainText
from broker.orgs import AgentView, TodayStats, WaitingCall
from signaling import jsonin
from signaling.jsonin import unpaired_surrogate

MAX_FRAME = 65_536

# Compact JSON for every message sent: one encoder, not the new one ``json.dumps`` builds
# for each call given separators (a fifth of a small message's encoding time).
encode = json.JSONEncoder(separators=(",", ":")).encode

Ref = Annotated[str, Field(max_length=64)]
CallId = Annotated[str, Field(min_length=1, max_length=64)]


class Message(BaseModel):
    # Strict: "yes" is not a boolean and 1 is not a string; a client that sends them is told.
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    ref: Ref | None = None

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# --- client -> server --------------------------------------------------------------------------


class Hello(Message):
    type: Literal["hello"]
    token: str = Field(min_length=1, max_length=8192)
    client: PlainText | None = Field(default=None, max_length=128)
    resume: str | None = Field(default=None, max_length=256)


class AuthRefresh(Message):
    """A fresh token for the session, before the current one expires."""

    type: Literal["auth.refresh"]
    token: str = Field(min_length=1, max_length=8192)


class Ping(Message):
    type: Literal["ping"]


class Availability(Message):
    type: Literal["availability"]
    available: bool


class AgentStatus(Message):
    type: Literal["agent.status"]
    state: Literal["available", "away"]


class CallRequest(Message):
    type: Literal["call.request"]
    language: Language | None = None
    topic: PlainText | None = Field(default=None, max_length=200)
    note: MultilineText | None = Field(default=None, max_length=1000)
    org: str | None = Field(default=None, max_length=64)
    queue: str | None = Field(default=None, max_length=64)
    # "assistant": an automatic helper first, volunteers if none is free.
    helper: Literal["volunteer", "assistant"] | None = None
    # The recipient's trusted circle: rung first for a head start, or only (never the public).
    circle: Literal["first", "only"] | None = None


class CallCancel(Message):
    type: Literal["call.cancel"]
    call: CallId


# What an automatic reader read, as the recipient shares it with the volunteer they ask for:
# the reader's own limit for one ``assistant.text`` (docs/protocol.md, "In-call tools").
MAX_READING = 3000


class CallHandover(Message):
    """From a call with the automatic reader: "get me a volunteer"."""

    type: Literal["call.handover"]
    call: CallId
    # Present only when the recipient agrees to share what the reader read with the volunteer.
    reading: MultilineText | None = Field(default=None, min_length=1, max_length=MAX_READING)


class CallAccept(Message):
    type: Literal["call.accept"]
    call: CallId


class CallDecline(Message):
    type: Literal["call.decline"]
    call: CallId


class CallTake(Message):
    """Take a request from the lobby: answered like ``call.accept``."""

    type: Literal["call.take"]
    call: CallId


class LobbyOpen(Message):
    type: Literal["lobby.open"]


class LobbyClose(Message):
    type: Literal["lobby.close"]


class SessionDescription(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    type: Literal["offer", "answer", "pranswer", "rollback"]
    sdp: str = Field(default="", max_length=60_000)


class SignalData(BaseModel):
    """``{"sdp": {...}}`` or ``{"candidate": {...} | null}``; relayed unchanged."""

    model_config = ConfigDict(extra="allow", frozen=True)

    sdp: SessionDescription | None = None
    candidate: dict[str, Any] | None = None

    @field_validator("candidate", mode="before")
    @classmethod
    def _candidate(cls, value: object) -> object:
        if value is not None and not isinstance(value, dict):
            raise ValueError("candidate must be an RTCIceCandidateInit object or null")
        return value


# Numbered signals (docs/protocol.md, "Numbered signals"): a sender's running number, from 1,
# and a receiver's "every signal up to N arrived" (0: none yet, and I acknowledge). Both are
# JSON numbers a JavaScript client holds exactly.
SignalSeq = Annotated[int, Field(ge=1, le=2**53 - 1)]
SignalAckSeq = Annotated[int, Field(ge=0, le=2**53 - 1)]


class Signal(Message):
    type: Literal["signal"]
    call: CallId
    data: dict[str, Any]
    seq: SignalSeq | None = None

    @field_validator("data")
    @classmethod
    def _data(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "sdp" not in value and "candidate" not in value:
            raise ValueError("data must hold 'sdp' or 'candidate'")
        SignalData.model_validate(value)
        return value


class SignalAck(Message):
    type: Literal["signal.ack"]
    call: CallId
    seq: SignalAckSeq


class CallMedia(Message):
    type: Literal["call.media"]
    call: CallId
    state: Literal["connected", "failed"]


class CallEnd(Message):
    type: Literal["call.end"]
    call: CallId


ReportName = Literal["inappropriate", "abusive", "unsafe", "privacy", "poor_quality", "other"]


class CallFeedback(Message):
    type: Literal["call.feedback"]
    call: CallId
    rating: Literal["up", "down"]
    report: ReportName | None = None
    comment: MultilineText | None = Field(default=None, max_length=2000)


ClientMessage = Annotated[
    Hello
    | AuthRefresh
    | Ping
    | Availability
    | AgentStatus
    | CallRequest
    | CallCancel
    | CallHandover
    | CallAccept
    | CallDecline
    | CallTake
    | LobbyOpen
    | LobbyClose
    | Signal
    | SignalAck
    | CallMedia
    | CallEnd
    | CallFeedback,
    Field(discriminator="type"),
]
_client = TypeAdapter[ClientMessage](ClientMessage)


# --- server -> client --------------------------------------------------------------------------


class UserInfo(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    role: str
    org: str | None = None
    display_name: str = ""


class RestrictionInfo(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: str
    since: str
    until: str | None
    message: str


class Welcome(Message):
    type: Literal["welcome"] = "welcome"
    user: UserInfo
    session: str
    resume: str
    heartbeat_s: float
    ice_servers: list[dict[str, Any]] = Field(default_factory=list)
    # When the session closes (4401) unless its token is refreshed: seconds since the epoch.
    expires_at: float | None = None
    restriction: RestrictionInfo | None = None

    def wire(self) -> dict[str, Any]:
        out = super().wire()
        if self.restriction is not None:
            out["restriction"] = self.restriction.model_dump(mode="json")  # keeps until: null
        return out


class Error(Message):
    type: Literal["error"] = "error"
    code: str
    message: str
    until: str | None = None  # code "suspended": when the restriction ends (null: not set)

    def wire(self) -> dict[str, Any]:
        out = super().wire()
        if self.code == "suspended":
            out["until"] = self.until
        return out


class Pong(Message):
    type: Literal["pong"] = "pong"


class Ack(Message):
    type: Literal["ack"] = "ack"


class AvailabilityState(Message):
    type: Literal["availability"] = "availability"
    available: bool
    # Set when the broker changed it itself: "suspended".
    reason: str | None = None


class AgentState(Message):
    type: Literal["agent.status"] = "agent.status"
    state: str
    # Set when the broker changed the status itself: "missed_rings" (autopause).
    reason: str | None = None


class EscalationInfo(BaseModel):
    """What became of a search nobody answered: handed to a help centre (``queued``, naming
    it), or not (``closed``, ``full``, ``unavailable``), with a suggested delay before asking
    again."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    outcome: str
    org: str | None = None
    org_name: str | None = None
    queue: str | None = None
    retry_after_s: int | None = None


class CallStatus(Message):
    type: Literal["call.status"] = "call.status"
    call: str
    state: str
    notified: int | None = None
    language: str | None = None
    position: int | None = None
    eta_s: int | None = None
    escalation: EscalationInfo | None = None
    replaces: str | None = None  # a handover search: the call with the automatic reader


class Requester(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    display_name: str = ""


class CallRing(Message):
    type: Literal["call.ring"] = "call.ring"
    call: str
    language: str
    topic: str | None = None
    note: str | None = None
    org: str | None = None
    queue: str | None = None
    requester: Requester
    expires_in_s: float
    circle: bool | None = None  # true: rung as a member of the recipient's trusted circle
    reading: str | None = None  # a handover: what the automatic reader read, shared


class CallWithdrawn(Message):
    type: Literal["call.withdrawn"] = "call.withdrawn"
    call: str
    reason: str


class Peer(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    display_name: str = ""
    assistant: bool | None = None  # true: an automatic helper (``call.handover`` may follow)


class CallAssigned(Message):
    type: Literal["call.assigned"] = "call.assigned"
    call: str
    peer: Peer
    ice_servers: list[dict[str, Any]] = Field(default_factory=list)
    offerer: bool
    resumed: bool | None = None
    reading: str | None = None  # the volunteer of a handover: what the reader read, shared


class SignalRelay(Message):
    type: Literal["signal"] = "signal"
    call: str
    data: dict[str, Any]
    seq: int | None = None


class SignalAckRelay(Message):
    type: Literal["signal.ack"] = "signal.ack"
    call: str
    seq: int


class CallEnded(Message):
    type: Literal["call.ended"] = "call.ended"
    call: str
    reason: str
    by: str | None = None
    retry_after_s: int | None = None  # no_answer: a suggested delay before asking again


class QueueUpdateMessage(Message):
    """An agent's console: their organisation's waiting calls, agents and today's figures."""

    type: Literal["queue.update"] = "queue.update"
    org: str
    open_now: bool
    waiting: list[WaitingCall]
    agents: list[AgentView]
    today: TodayStats


class LobbyEntryWire(BaseModel):
    """One request waiting in the lobby: what it is, never who asked."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    call: str
    language: str
    topic: str | None
    waiting_s: int
    requested_at: float


class LobbyMessage(Message):
    """The lobby as it is now, oldest first; ``more`` waiting beyond ``entries``. ``closed``:
    the broker closed this session's lobby, for ``reason``."""

    type: Literal["lobby"] = "lobby"
    entries: list[LobbyEntryWire]
    more: int
    closed: bool | None = None
    reason: str | None = None

    def wire(self) -> dict[str, Any]:
        out = super().wire()
        # ``topic`` is always there, null when the recipient gave none.
        out["entries"] = [entry.model_dump(mode="json") for entry in self.entries]
        return out


class AuthRefreshed(Message):
    """The direct answer to ``auth.refresh``: the session now lasts until ``expires_at``."""

    type: Literal["auth.refreshed"] = "auth.refreshed"
    expires_at: float


class AuthExpiring(Message):
    """The session's token expires soon: send ``auth.refresh`` before ``expires_at``."""

    type: Literal["auth.expiring"] = "auth.expiring"
    expires_at: float
    expires_in_s: float


class Reconnect(Message):
    """The node is shutting down: connect again (elsewhere) and resume."""

    type: Literal["reconnect"] = "reconnect"
    after_s: float = 0.0


ServerMessage = Annotated[
    Welcome
    | Error
    | Pong
    | Ack
    | AvailabilityState
    | AgentState
    | CallStatus
    | CallRing
    | CallWithdrawn
    | CallAssigned
    | SignalRelay
    | SignalAckRelay
    | CallEnded
    | QueueUpdateMessage
    | LobbyMessage
    | Reconnect
    | AuthRefreshed
    | AuthExpiring,
    Field(discriminator="type"),
]
_server = TypeAdapter[ServerMessage](ServerMessage)


class BadMessage(ValueError):
    """A frame that is not a valid message; ``str()`` says what was wrong, for a person."""

    def __init__(self, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.ref = ref


def _clean_ref(data: object) -> str | None:
    """The message's ``ref``, when it is one that can be echoed back."""
    raw = data.get("ref") if isinstance(data, dict) else None
    if isinstance(raw, str) and len(raw) <= 64 and unpaired_surrogate(raw) is None:
        return raw
    return None


def _decode(frame: str | bytes) -> dict[str, Any]:
    try:
        data = jsonin.decode(frame)
    except jsonin.JsonRejected as exc:
        raise BadMessage(f"The message {exc}", _clean_ref(exc.document)) from None
    if not isinstance(data, dict):
        raise BadMessage("A message must be a JSON object with a 'type'.")
    return data


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(
            str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-"))
        )
        parts.append(f"{where[:100] or 'message'}: {err['msg'][:300]}")
    return "; ".join(parts)


def parse_client(frame: str | bytes) -> ClientMessage:
    data = _decode(frame)
    ref = _clean_ref(data)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise BadMessage("A message needs a string field 'type'.", ref)
    try:
        return _client.validate_python(data)
    except ValidationError as exc:
        if any(e["type"] == "union_tag_invalid" for e in exc.errors()):
            raise BadMessage(f"Unknown message type {kind[:64]!r}.", ref) from None
        raise BadMessage(f"Bad {kind[:64]!r} message: {_explain(exc)}.", ref) from None


def parse_server(frame: str | bytes) -> ServerMessage:
    data = _decode(frame)
    try:
        return _server.validate_python(data)
    except ValidationError as exc:
        raise BadMessage(f"Bad server message: {_explain(exc)}.") from None


def _escalation_info(escalation: Escalation | None) -> EscalationInfo | None:
    if escalation is None:
        return None
    return EscalationInfo(
        outcome=escalation.outcome.value,
        org=escalation.org,
        org_name=escalation.org_name,
        queue=escalation.queue,
        retry_after_s=escalation.retry_after_s,
    )


def event_message(event: Event, now: float, ice_servers: list[dict[str, Any]]) -> Message:
    """The wire message for a broker event, as sent at ``now``."""
    match event:
        case Ring():
            return CallRing(
                call=event.call_id,
                language=event.language,
                topic=event.topic,
                note=event.note,
                org=event.org,
                queue=event.queue,
                requester=Requester(display_name=event.requester_name),
                expires_in_s=max(0.0, round(event.expires_at - now, 3)),
                circle=True if event.circle else None,
                reading=event.reading,
            )
        case Withdrawn():
            return CallWithdrawn(call=event.call_id, reason=event.reason.value)
        case Status():
            return CallStatus(
                call=event.call_id,
                state=event.state.value,
                notified=event.notified,
                language=event.language,
                position=event.position,
                eta_s=event.eta_s,
                escalation=_escalation_info(event.escalation),
                replaces=event.replaces,
            )
        case Assigned():
            return CallAssigned(
                call=event.call_id,
                peer=Peer(
                    display_name=event.peer_name,
                    assistant=True if event.peer_assistant else None,
                ),
                ice_servers=ice_servers,
                offerer=event.offerer,
                resumed=True if event.resumed else None,
                reading=event.reading,
            )
        case Ended():
            return CallEnded(
                call=event.call_id,
                reason=event.reason.value,
                by=event.by.value if event.by else None,
                retry_after_s=event.retry_after_s,
            )
        case AgentStatusChanged():
            return AgentState(state=event.state, reason=event.reason)
        case AvailabilityChanged():
            return AvailabilityState(available=event.available, reason=event.reason)
        case QueueUpdate():
            snap = event.snapshot
            return QueueUpdateMessage(
                org=snap.org,
                open_now=snap.open_now,
                waiting=snap.waiting,
                agents=snap.agents,
                today=snap.today,
            )
    raise TypeError(f"no wire message for {event!r}")
