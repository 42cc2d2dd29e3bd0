"""What the broker asks the edge to tell people.

Every entry point of the broker returns a list of these. The signalling edge turns each into a
wire message for the user's WebSocket, and ``notify`` turns rings and withdrawals into pushes for
users who are not connected. Times are absolute (``expires_at``) so that a message delivered
late, or re-sent on resume, still tells the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.model import CallState, EndReason, EscalationOutcome, Role, WithdrawReason
from broker.orgs import QueueSnapshot


@dataclass(frozen=True, slots=True)
class Ring:
    to: str
    call_id: str
    language: str
    requester_name: str
    expires_at: float
    topic: str | None = None
    note: str | None = None
    org: str | None = None
    queue: str | None = None
    circle: bool = False  # rung as a member of the recipient's trusted circle
    reading: str | None = None  # a handover: what the automatic helper read, shared


@dataclass(frozen=True, slots=True)
class Withdrawn:
    to: str
    call_id: str
    reason: WithdrawReason


@dataclass(frozen=True, slots=True)
class Escalation:
    """What the recipient is told when their search is escalated: handed to a help centre
    (``org``, ``org_name``, ``queue``), or not possible, with when to try again."""

    outcome: EscalationOutcome
    org: str | None = None
    org_name: str | None = None
    queue: str | None = None
    retry_after_s: int | None = None


@dataclass(frozen=True, slots=True)
class Status:
    to: str
    call_id: str
    state: CallState
    notified: int | None = None
    language: str | None = None
    position: int | None = None
    eta_s: int | None = None
    escalation: Escalation | None = None
    replaces: str | None = None  # a handover search: the call with the automatic helper


@dataclass(frozen=True, slots=True)
class Assigned:
    to: str
    call_id: str
    peer_name: str
    offerer: bool
    resumed: bool = False
    reading: str | None = None  # the helper of a handover: what the automatic helper read
    peer_assistant: bool = False  # the recipient's copy: the helper is an automatic one


@dataclass(frozen=True, slots=True)
class Ended:
    to: str
    call_id: str
    reason: EndReason
    by: Role | None = None
    party: Role = Role.RECIPIENT  # the role of ``to`` in the call
    retry_after_s: int | None = None  # nobody answered: a suggested delay before asking again


@dataclass(frozen=True, slots=True)
class AgentStatusChanged:
    """The broker changed an agent's status (e.g. set away after missed rings)."""

    to: str
    state: str
    reason: str


@dataclass(frozen=True, slots=True)
class AvailabilityChanged:
    """The broker took a volunteer off duty (e.g. suspended)."""

    to: str
    available: bool
    reason: str


@dataclass(frozen=True, slots=True)
class QueueUpdate:
    """The agent console's view of their organisation's queues changed."""

    to: str
    snapshot: QueueSnapshot


Event = (
    Ring
    | Withdrawn
    | Status
    | Assigned
    | Ended
    | AgentStatusChanged
    | AvailabilityChanged
    | QueueUpdate
)
