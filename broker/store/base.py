"""The state store contract.

Everything the broker must share between nodes lives behind this interface: profiles,
availability, calls, rings, timers, resume tokens, sign-in revocations and history. Two implementations honour it:
``MemoryStore`` (one process, the default) and the Redis store (many nodes). One contract test
suite runs against both.

Operations that race between nodes are single atomic steps here, never read-modify-write in the
caller: ``create_call`` (one open call per recipient, besides one pending handover:
``open_handover``), ``reserve_ring`` (the ring budget and
"not already ringing"), ``assign`` (first accept wins), ``finish`` (a call ends once) and
``claim_due`` (a timer fires on one node only).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from broker.model import (
    Call,
    Candidate,
    EndReason,
    Feedback,
    Invite,
    Profile,
    RingWindow,
    Role,
)
from broker.moderation import AuditEntry, AuditQuery, Case, CaseQuery, Resolution, Restriction
from broker.notify.devices import Device
from broker.orgs import AgentRecord, AgentStateName, Org, QueueDayStats, QueueEntry
from broker.outbox import WebhookDelivery
from broker.stats import Counts

# How long after a call ends ``rung`` still names the helpers rung for it: a decline that crosses
# the end of the call (answered elsewhere, cancelled, given up) is acknowledged, not refused.
RUNG_KEPT_S = 3600.0


# What ``Store.create_counted_call`` did.
Admission = Literal["created", "open", "limited"]


async def counted_then_created(
    store: Store, call: Call, key: str, now: float, window_s: float, limit: int
) -> Admission:
    """``Store.create_counted_call`` as its two steps, for a store without one step for both."""
    if await store.hit(key, now, window_s) > limit:
        return "limited"
    return "created" if await store.create_call(call) else "open"


class StoreUnavailable(Exception):
    """The store cannot be reached. Nothing was written; the caller may retry later."""


@dataclass(slots=True)
class Assignment:
    """The result of an accept: the call as assigned, and whom else to withdraw the ring from."""

    call: Call
    withdrawn: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Finish:
    """The result of ending a call: the call as ended, and who was still ringing for it."""

    call: Call
    withdrawn: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Handover:
    """A queued call handed to volunteer help: the call as it now is (searching), and the
    agents who were still ringing for it."""

    call: Call
    withdrawn: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PushedRing:
    """The devices one user's ring for one call was pushed to, and when that ring expires."""

    device_ids: list[str]
    expires_at: float


@dataclass(frozen=True, slots=True)
class ResumeTicket:
    user_id: str
    session_id: str


@dataclass(frozen=True, slots=True)
class CandidateSample:
    """What ``Store.candidates_sample`` found. ``candidates`` starts with the ``recent``
    helpers read (most recent answer first), then those drawn. ``complete``: they are everyone
    ``candidates`` would return, so a larger sample finds nobody more. ``more_recent``: the
    helpers read stopped at the number asked for, and others may follow."""

    candidates: list[Candidate]
    complete: bool
    recent: int = 0
    more_recent: bool = False


class RecoveringStore(Protocol):
    """An optional extension of ``Store`` for a store that outlives its process (the durable
    embedded store): calls it ended on start-up because the process holding them died
    (``EndReason.FAILED``), for their parties to be told when they next sign in."""

    async def take_interrupted(self, user_id: str) -> list[str]:
        """Remove and return the ids of the user's calls ended that way that they have not
        been told of, oldest first."""
        ...


RecordKind = Literal[
    "profile",
    "rung",
    "duty",
    "devices",
    "org",
    "agent",
    "queue_day",
    "handle",
    "call",
    "history",
    "feedback",
    "restriction",
    "reporters",
    "case",
    "audit",
    "revoked",
    "circle",
    "invite",
    "day",
    "timer",
    "mark",
]

# The order a migration writes kinds in: what a record refers to comes before it (a profile
# before its duty, a call before the history naming it).
RECORD_KINDS: tuple[RecordKind, ...] = get_args(RecordKind)


@dataclass(frozen=True, slots=True)
class Record:
    """One durable record, as a migration moves it between stores. By kind, ``key`` and
    ``value`` are:

    - ``profile`` (user): ``Profile`` with its blocks; ``duty`` (user): True;
      ``rung`` (user): (ring day, rings that day, last rung at) — the ring budget;
      ``devices`` (user): ``list[Device]``, oldest first; ``revoked`` (user): float;
      ``restriction`` (user): ``Restriction``; ``reporters`` (reported user): who reported
      them, ``dict[str, float]`` of when.
    - ``org`` (org): ``Org``; ``agent`` (org, user): ``AgentRecord`` (its stored facts; the
      live ones at their defaults); ``queue_day`` (org, day): ``QueueDayStats``;
      ``handle`` (org, queue): float.
    - ``call`` (call): ``Call``; ``history`` (user): their ended calls' ids, oldest first;
      ``feedback`` (call, user): ``Feedback``.
    - ``case`` (case id): ``Case``; ``audit`` (entry id): ``AuditEntry`` (both with their
      ``seq``); ``day`` (day): the counters by scope, ``dict[str, list[int]]``;
      ``timer`` (name): its deadline; ``mark`` (name): a sweep's mark.
    - ``circle`` (recipient, helper): member since, float; ``invite`` (key): ``Invite``.
    """

    kind: RecordKind
    key: tuple[str, ...]
    value: Any


class MigrationRefused(Exception):
    """A migration that must not run (e.g. into a store that already holds records)."""


@runtime_checkable
class Portable(Protocol):
    """An optional extension of ``Store`` for a store that keeps records worth moving (the
    durable embedded store, Redis): ``vabroker migrate`` reads every record of one and writes
    it, as it was, into another. Hot state (connections, rings in flight, pushes, queue
    positions, rate limits, resume tickets) is not a record."""

    def export_records(self) -> AsyncIterator[Record]:
        """Every record, kinds in ``RECORD_KINDS`` order; calls that ended in the order they
        ended, then open ones."""
        ...

    async def import_records(self, records: AsyncIterable[Record]) -> int:
        """Write records as they are (ids, sequence numbers and times kept) into this store,
        which must be empty; returns how many were written."""
        ...


class Store(Protocol):
    # --- lifecycle -------------------------------------------------------------------------
    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers."""

    async def close(self) -> None: ...

    # --- profiles --------------------------------------------------------------------------
    async def get_profile(self, user_id: str) -> Profile | None: ...

    async def put_profile(self, profile: Profile) -> None:
        """Create or replace a profile, and re-index the volunteer for matching."""

    # --- availability ----------------------------------------------------------------------
    async def set_on_duty(self, user_id: str, on_duty: bool) -> None: ...

    async def is_on_duty(self, user_id: str) -> bool: ...

    async def set_connected(self, user_id: str, connected: bool) -> None:
        """Whether the user holds a live WebSocket somewhere (counted per connection)."""

    async def is_connected(self, user_id: str) -> bool: ...

    async def candidates(self, language: str, now: float) -> list[Candidate]:
        """Volunteers who speak ``language`` (primary subtag), are on duty, reachable
        (connected, or with a push device) and inside their ring window at ``now``.

        Per-call rules (busy, rung before, cap, blocks) are the dispatcher's: the store only
        reports the facts it needs in each ``Candidate``.
        """

    async def candidates_sample(
        self, language: str, now: float, n: int, recent: int, rng: random.Random
    ) -> CandidateSample:
        """What ``candidates`` returns, but only: up to ``n`` of them drawn uniformly at random
        with ``rng`` from the volunteers matching language, duty and window (those unreachable
        dropped after the draw), and up to ``recent`` of them who answered a call in the last
        30 days, most recent answer first; duplicates dropped. Everyone (``complete``) when no
        more than ``n`` match language, duty and window.

        This is how a wave avoids ranking every volunteer, on every store: its cost follows
        ``n + recent``, not the population. Every policy ranks volunteers who have not answered
        lately only by facts that tie for nearly all of them, then at random, so a uniform
        sample ranks them the same way in distribution; a policy that puts recent helpers
        first (``bme2014``) asks for them by ``recent``.
        """

    async def duty_windows(self, language: str) -> list[tuple[str, RingWindow, int]]:
        """On-duty volunteers who speak ``language`` (primary subtag), counted by (time zone,
        ring window): (zone, window, how many), each pair once. Reachability is not checked.
        What a volunteer's outlook counts its competition by: its cost follows the number of
        distinct windows, not the population."""

    async def last_rung(self, user_id: str) -> float:
        """When the volunteer was last rung (``Candidate.last_rung_at``); 0.0 if never."""

    # --- devices (push) --------------------------------------------------------------------
    async def has_devices(self, user_id: str) -> bool: ...

    async def add_device(self, device: Device) -> Device:
        """Register a device, or update the one with the same ``address`` (token or endpoint)
        for this user, keeping its id; returns the device as stored. An address belongs to one
        user at a time: registering it for another user removes it from the first (a phone
        signed in to another account)."""

    async def devices(self, user_id: str) -> list[Device]:
        """The user's devices, oldest first."""

    async def remove_device(self, user_id: str, device_id: str) -> bool:
        """Forget one of the user's devices; False if they have no device with that id."""

    async def record_pushes(
        self, call_id: str, user_id: str, device_ids: list[str], expires_at: float
    ) -> list[str]:
        """Record that the user's ring for ``call_id`` is pushed to ``device_ids``; returns the
        ids not recorded before for this ring (only those are pushed). The record may be dropped
        a day after ``expires_at`` (a Redis key TTL)."""

    async def take_pushes(self, call_id: str, user_id: str) -> PushedRing | None:
        """Remove and return the record of pushes for this user's ring, atomically, so that
        however many nodes see the withdrawal, only one sends it. None if there is none."""

    # --- calls -----------------------------------------------------------------------------
    async def create_call(self, call: Call) -> bool:
        """Store a new open call, unless its recipient already has one open (then False)."""

    async def create_counted_call(
        self, call: Call, key: str, now: float, window_s: float, limit: int
    ) -> Admission:
        """``hit(key, now, window_s)``, then ``create_call(call)`` unless that count is over
        ``limit``: ``"limited"`` (nothing created), ``"open"`` (the recipient already has a
        call open) or ``"created"``. The request counts in every case, as it would with the
        two steps; on a shared store both are one round trip."""

    async def get_call(self, call_id: str) -> Call | None: ...

    async def call_peer(self, call_id: str, user_id: str) -> str | None:
        """The other party of an assigned call that ``user_id`` is a party of; None for any
        other call, user or id. Every relayed signal asks it, so it reads the call's state and
        parties only, not the whole record."""

    async def update_call(self, call_id: str, **fields: Any) -> None:
        """Set fields of a call other than its state, helper and end (those change only through
        ``assign`` and ``finish``), so that a concurrent accept is never overwritten."""

    async def current_call(self, user_id: str) -> str | None:
        """The open call a user is a party of: requested, or assigned to them."""

    # A recipient in a call with an automatic helper may ask for a person ("get me a
    # volunteer"): a second open call, ``call.replaces`` naming the first, searches while the
    # first stays up. It is the recipient's *pending handover*, not their current call, until:
    # ``assign`` of it (a volunteer accepted) makes it their current call; ``finish`` of the
    # replaced call (they hung up the reader, or it was lost) makes it their current call and
    # the search goes on; ``finish`` of it (cancelled, nobody answered) drops it. Each of
    # these moves is part of that operation's step on the recipient's own state.

    async def open_handover(self, call: Call) -> bool:
        """Store ``call`` (with ``replaces`` set) as the recipient's pending handover, only if
        their current call is ``call.replaces`` and no handover is pending (else False). Whether
        the replaced call may be handed over (assigned, with an assistant) is the broker's."""

    async def handover_of(self, user_id: str) -> str | None:
        """The recipient's pending handover call, if any."""

    async def assign(
        self, call_id: str, helper_id: str, helper_name: str, helper_role: Role, now: float
    ) -> Assignment | None:
        """First accept wins: assign the call to ``helper_id`` if it is still searching or
        queued and the helper is ringing for it. Clears every other ring of the call (returned in
        ``withdrawn``), marks the helper busy and counts the call for their fairness record.
        None when someone else won, the call ended, or the helper was not ringing."""

    async def finish(
        self, call_id: str, reason: EndReason, by: Role | None, now: float
    ) -> Finish | None:
        """End an open call once: release its rings and its parties, and file it in both
        parties' history. None if it had already ended (or never existed)."""

    async def mark_media(self, call_id: str, now: float) -> bool:
        """Record the first time media connected; False if it was already recorded."""

    # --- the lobby ---------------------------------------------------------------------------
    # An index of requests still searching, by the primary language each searches in now: hot
    # state (not a record). It may name a call that has just stopped searching; the broker's
    # lobby checks every call it reads (``broker.lobby``), so the index is never part of a race.

    async def lobby_put(self, call_id: str, language: str, requested_at: float) -> None:
        """List the call under ``language`` (its primary subtag), ordered by ``requested_at``;
        a call listed under another language moves."""

    async def lobby_drop(self, call_id: str) -> None:
        """Stop listing the call (nothing if it was not listed)."""

    async def lobby_calls(self, language: str, limit: int) -> tuple[list[Call], int]:
        """The calls listed under ``language`` (primary subtag), oldest request first, at most
        ``limit`` of them, as they are stored now (a listed call whose record is gone is dropped
        from the index), and how many the index lists under that language in all. Its cost
        follows ``limit``, not how many are listed."""

    async def lobby_facts(
        self, recipient_ids: Sequence[str], call_ids: Sequence[str]
    ) -> tuple[list[frozenset[str]], list[set[str]]]:
        """What the lobby checks each listed call against, read at once: for each recipient,
        whom they blocked (as ``Profile.blocked``; empty for an unknown user), and for each
        call, who was rung for it (as ``rung``)."""

    # --- rings -----------------------------------------------------------------------------
    async def reserve_ring(
        self, call_id: str, user_id: str, day: str, cap: int, now: float
    ) -> bool:
        """Atomically take one ring of the volunteer's budget for ``day`` (their local date):
        only if the call is still searching or queued, they are not busy, were not rung for
        this call before and are under ``cap``.
        Marks them ringing for the call and records when they were rung."""

    async def release_ring(self, call_id: str, user_id: str) -> bool:
        """Stop a volunteer ringing for a call; False if they were not ringing for it."""

    async def ringing(self, call_id: str) -> list[str]: ...

    async def ring_of(self, user_id: str) -> str | None:
        """The call a volunteer is ringing for, if any."""

    async def rung(self, call_id: str) -> set[str]:
        """Everyone ever rung for this call; kept ``RUNG_KEPT_S`` after the call ends."""

    # --- feedback and blocks ---------------------------------------------------------------
    async def add_feedback(self, feedback: Feedback) -> bool:
        """Keep one piece of feedback per party per call; False for a second one."""

    async def block(self, user_id: str, other_id: str) -> None:
        """``user_id`` never wants to be matched with ``other_id`` again."""

    # --- timers ----------------------------------------------------------------------------
    # Webhook deliveries waiting for their next attempt (``broker.outbox``): any node may
    # make it, so a node that dies leaves its deliveries to the others.
    async def add_webhook(self, delivery: WebhookDelivery) -> None:
        """Keep ``delivery`` until it is delivered or given up, due at ``delivery.due``."""
        ...

    async def claim_webhooks(
        self, now: float, lease_s: float, limit: int = 50
    ) -> list[WebhookDelivery]:
        """Atomically: the deliveries due at ``now`` (earliest first, at most ``limit``), each
        leased to the caller: its due time moved to ``now + lease_s``, so that no other claim
        returns it before then unless it is settled. Returned as claimed."""
        ...

    async def retry_webhook(self, delivery: WebhookDelivery) -> bool:
        """After a failed attempt: keep ``delivery`` (its attempts and due time as given).
        False, changing nothing, if it is no longer kept (settled elsewhere)."""
        ...

    async def drop_webhook(self, delivery_id: str) -> bool:
        """Delivered or given up: forget the delivery. False if it was not kept."""
        ...

    async def pending_webhooks(self) -> int:
        """How many deliveries are kept (claimed or waiting)."""
        ...

    async def schedule(self, key: str, at: float) -> None:
        """Set (or move) the deadline of a named timer."""

    async def unschedule(self, *keys: str) -> None:
        """Cancel named timers (those not set are no matter), in one step."""

    async def claim_due(self, now: float, limit: int = 100) -> list[str]:
        """Remove and return timers whose deadline has passed, earliest first. A timer is
        claimed by exactly one caller, however many nodes ask."""

    async def next_deadline(self) -> float | None: ...

    async def deadline(self, key: str) -> float | None:
        """When a named timer is due, or None if it is not set."""

    # --- rate limits -----------------------------------------------------------------------
    async def hit(self, key: str, now: float, window_s: float) -> int:
        """Count one event under ``key`` and return how many fell in the last ``window_s``."""

    # --- resume ----------------------------------------------------------------------------
    async def put_resume(self, token: str, ticket: ResumeTicket, expires_at: float) -> None: ...

    async def take_resume(self, token: str, now: float) -> ResumeTicket | None:
        """Use a resume token once; None if unknown, used or expired."""

    # --- sign-in revocation ----------------------------------------------------------------
    async def revoke_sessions(self, user_id: str, before: float) -> float:
        """Revoke every sign-in of the user issued before ``before`` (a token's ``iat``,
        seconds since the epoch): such tokens are refused from now on. A later revocation
        never lets an earlier one lapse: the latest time given is kept, and returned. The fact
        is kept until the user is forgotten (it must outlive any token issued before it)."""

    async def revoked_before(self, user_id: str) -> float | None:
        """The user's revocation time (tokens issued before it are refused), or None."""

    # --- history ---------------------------------------------------------------------------
    async def calls_of(self, user_id: str, limit: int = 1000) -> list[Call]:
        """Ended calls the user took part in, newest first."""

    async def ended_calls(self, since: float, until: float) -> list[Call]:
        """Every call that ended in ``[since, until)``, for statistics."""

    # --- partner organisations, queues and agents --------------------------------------------
    # A queued call stays in its queue until it is assigned or ends, so a caller never loses
    # their place when a node dies mid-way. The races are single atomic steps:
    # ``enqueue`` (the length limit), ``reserve_agent_ring`` (one agent, one ring; one call, one
    # agent at a time unless ringing all) and, as for volunteers, ``assign`` (one winner).

    async def put_org(self, org: Org) -> None:
        """Create or replace an organisation's configuration."""

    async def get_org(self, org_id: str) -> Org | None: ...

    async def list_orgs(self) -> list[Org]:
        """Every organisation, by id."""

    async def enqueue(
        self, org_id: str, queue_id: str, call_id: str, now: float, max_length: int
    ) -> int | None:
        """Put a call at the back of a queue and return its position (1 = next), or None when
        the queue already holds ``max_length`` calls. A call already queued keeps its place."""

    async def dequeue(self, org_id: str, queue_id: str, call_id: str) -> bool:
        """Take a call out of its queue; False if it was not there."""

    async def queue_entries(self, org_id: str, queue_id: str) -> list[QueueEntry]:
        """The queue in order, first in line first."""

    async def queue_calls(self, org_id: str, queue_id: str) -> list[tuple[QueueEntry, Call | None]]:
        """The queue in order with each entry's call (None if it does not exist), in one step:
        routing reads the whole queue after every change."""

    async def set_agent_state(
        self,
        org_id: str,
        user_id: str,
        state: AgentStateName,
        now: float,
        display_name: str | None = None,
    ) -> AgentRecord:
        """Record an agent of ``org_id`` as available or away (and their name, for the
        console, when given). Becoming available clears their missed-ring count and starts
        their idle time; setting the same state again changes nothing else. An agent moved to
        another organisation leaves the old one."""

    async def agents(self, org_id: str) -> list[AgentRecord]:
        """Every agent known in the organisation, by id, with their live facts."""

    async def reserve_agent_ring(
        self, call_id: str, org_id: str, user_id: str, now: float, exclusive: bool
    ) -> bool:
        """Atomically ring an agent for a queued call: only if the call is still queued, the
        agent belongs to the org, is available, connected, past their wrap-up, not in a call
        and not ringing, and (``exclusive``) nobody else is ringing for the call. Marks them
        ringing exactly as ``reserve_ring`` does (no ring budget), so ``assign``, ``finish``
        and ``release_ring`` treat agents and volunteers alike."""

    async def agent_missed(self, org_id: str, user_id: str) -> int:
        """Count a ring the agent let lapse; returns how many in a row."""

    async def agent_answered(self, org_id: str, user_id: str) -> None:
        """The agent took a call: their missed-ring run ends and the call counts."""

    async def agent_released(
        self, org_id: str, user_id: str, now: float, wrapup_until: float
    ) -> None:
        """The agent's call ended: no ring before ``wrapup_until``; idle from then."""

    async def hand_to_volunteers(self, call_id: str, now: float) -> Handover | None:
        """Atomically turn a queued call into a volunteer search (its overflow): the state
        becomes searching, ``overflowed_at`` is set and agents' rings are released. None if the
        call is no longer queued (answered, ended, or handed over by another node)."""

    async def escalate(
        self, call_id: str, org_id: str, queue_id: str, now: float
    ) -> Handover | None:
        """Atomically turn a volunteer search into a call for a help centre's queue (its
        escalation): the state becomes queued, ``org``, ``queue``, ``enqueued_at`` and
        ``escalated_at`` are set, ``escalation`` becomes ``queued`` and volunteers' rings are
        released (returned in ``withdrawn``). None if the call is no longer searching
        (answered, ended, or escalated by another node). Joining the queue is ``enqueue``."""

    async def count_queue_outcome(
        self, org_id: str, day: str, answered: bool, wait_s: float
    ) -> None:
        """File one queued call's outcome for the organisation's local ``day``: answered after
        ``wait_s``, or abandoned (the caller gave up)."""

    async def queue_day_stats(self, org_id: str, day: str) -> QueueDayStats: ...

    async def record_handle_time(
        self, org_id: str, queue_id: str, seconds: float, weight: float
    ) -> float:
        """Fold one call's handle time into the queue's moving average (exponential, the new
        call weighing ``weight``) and return the average."""

    async def handle_time(self, org_id: str, queue_id: str) -> float | None:
        """The queue's moving average handle time; None before its first call."""

    # --- duty of care: restrictions ----------------------------------------------------------
    # A restriction is kept apart from the profile, so that a profile write (which replaces the
    # whole profile) can never lift a suspension. Candidates carry it as ``restricted``.

    async def get_restriction(self, user_id: str) -> Restriction | None:
        """The user's restriction as stored, whether or not it has ended by now."""

    async def set_restriction(self, user_id: str, restriction: Restriction) -> None: ...

    async def clear_restriction(self, user_id: str) -> Restriction | None:
        """Remove the user's restriction in one step; what was removed, None if none."""

    async def note_report(
        self, reported_id: str, reporter_id: str, at: float, window_s: float
    ) -> int:
        """Record that ``reporter_id`` reported ``reported_id`` at ``at`` and return, in the
        same atomic step, how many different people reported them in ``(at - window_s, at]``.
        A person who reports the same user again counts once."""

    # --- duty of care: cases -------------------------------------------------------------------
    async def add_case(self, case: Case) -> Case:
        """File a new case; returns it with the ``id`` and ``seq`` the store gave it (``seq``
        grows with every case, so newest first is highest ``seq`` first)."""

    async def get_case(self, case_id: str) -> Case | None: ...

    async def cases(self, query: CaseQuery, before: int | None, limit: int) -> list[Case]:
        """Cases matching ``query`` with ``seq`` below ``before`` (all when None), newest
        first, at most ``limit``."""

    async def count_cases(self, query: CaseQuery) -> int: ...

    async def resolve_case(self, case_id: str, resolution: Resolution) -> Case | None:
        """Resolve an open case, once: the resolved case, or None if it does not exist or was
        already resolved (by this or another node)."""

    # --- duty of care: the audit log -----------------------------------------------------------
    async def append_audit(self, entry: AuditEntry) -> AuditEntry:
        """Append an entry; returns it with its ``id`` and ``seq``. Entries are never changed
        or removed, except by ``erase_user`` replacing the erased id with its pseudonym."""

    async def audit(self, query: AuditQuery, before: int | None, limit: int) -> list[AuditEntry]:
        """Entries matching ``query`` with ``seq`` below ``before``, newest first."""

    # --- trusted circles -------------------------------------------------------------------------
    # A recipient's circle is the helpers they trust; each membership is kept on both sides
    # (the recipient's circle, the helper's circles), written circle first.

    async def circle_add(self, recipient_id: str, helper_id: str, now: float) -> bool:
        """Add a helper to a recipient's circle, since ``now``; False if already a member."""

    async def circle_remove(self, recipient_id: str, helper_id: str) -> bool:
        """Take a helper out of a recipient's circle; False if they were not in it."""

    async def circle(self, recipient_id: str) -> dict[str, float]:
        """The recipient's circle: helper id -> member since."""

    async def circles_of(self, helper_id: str) -> dict[str, float]:
        """The circles a helper is in: recipient id -> member since."""

    async def put_invite(self, key: str, invite: Invite) -> None:
        """Keep an invitation under ``key`` (a code's digest, or a proposal's id) until it
        expires; one addressed to a helper is listed in ``proposals_for`` them."""

    async def take_invite(self, key: str, helper_id: str, now: float) -> Invite | None:
        """Use an invitation once, atomically: removed and returned if it exists, has not
        expired and is for anyone or for ``helper_id``. None otherwise (an expired one is
        removed; one addressed to someone else is left as it is)."""

    async def proposals_for(self, helper_id: str, now: float) -> list[tuple[str, Invite]]:
        """Unexpired invitations addressed to the helper, oldest first, with their keys."""

    # --- feedback --------------------------------------------------------------------------------
    async def feedback_of(self, call_id: str) -> list[Feedback]:
        """Every party's feedback on a call, oldest first."""

    # --- statistics ------------------------------------------------------------------------------
    async def add_counts(self, day: str, counts: Mapping[str, Counts]) -> None:
        """Add one ended call's counts to ``day``'s counters, per scope, in one step."""

    async def day_counts(self, days: list[str]) -> list[dict[str, Counts]]:
        """The counters of each day in ``days`` by scope (an empty dict for a day with none)."""

    async def on_duty_count(self) -> int:
        """How many volunteers are on duty now."""

    # --- people's data ---------------------------------------------------------------------------
    async def erase_user(self, user_id: str, pseudonym: str, hit_keys: list[str]) -> None:
        """Forget a person: profile, duty, devices, blocks (theirs, and their id in others'),
        resume tickets, the rate-limit keys ``hit_keys``, agent records, history lists. In the
        calls they took part in, their id becomes ``pseudonym`` and their free text goes
        (``scrub_call``); in cases, audit entries and report records their id becomes
        ``pseudonym``. A restriction and a sign-in revocation move to the pseudonym, so that
        they still apply if the same identity signs in again. Their open call must have been
        ended first."""

    async def scrub_call(self, call_id: str, pseudonyms: Mapping[str, str]) -> None:
        """In a call record and its feedback: each party named in ``pseudonyms`` is replaced by
        their pseudonym, their name removed, and the free text they wrote (the recipient's
        topic and note; each party's feedback comment) removed."""

    async def ended_between(
        self, since: float, until: float, limit: int
    ) -> list[tuple[str, float]]:
        """Calls that ended in ``[since, until)``: (id, end time), earliest first, at most
        ``limit``."""

    async def get_mark(self, name: str) -> float | None:
        """A named progress mark of a sweep (e.g. how far retention has gone)."""

    async def set_mark(self, name: str, value: float) -> None: ...
