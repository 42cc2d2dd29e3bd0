"""Partner-organisation queues: callers wait in line, the organisation's agents answer in turn.

This follows what call-centre software does well (Asterisk app_queue, FreeSWITCH
mod_callcenter, Twilio TaskRouter):

- A caller joins a queue only while the organisation is open and the queue is not full, and
  hears their position and an estimated wait, again whenever either changes enough to matter.
- Waiting calls are offered in the order they arrived, across the organisation's queues, each
  to one free agent chosen by the queue's strategy (``ringall``: to every free agent at once).
  A ring that lapses moves the call on to the next agent; an agent who lets three rings in a
  row lapse is set away and told (Asterisk's autopause); after a call an agent has a wrap-up
  time before the next ring.
- A call waits at most the queue's maximum wait and never past closing time; then it ends, or
  overflows to volunteer help if the queue says so.

Everything here is a decision on the store's data given a clock: one ``settle`` after every
change routes what can be routed, tells callers what changed and refreshes the agents' console.
The atomic steps (joining a full queue, ringing an agent, the first accept) are the store's.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from broker.clock import Clock
from broker.dispatch import RING, Dispatcher, search_languages, timer
from broker.events import AgentStatusChanged, Event, QueueUpdate, Ring, Status, Withdrawn
from broker.model import (
    BrokerError,
    Call,
    CallState,
    EndReason,
    ErrorCode,
    Profile,
    Role,
    WithdrawReason,
    local_datetime,
)
from broker.orgs import (
    AgentRecord,
    AgentStateName,
    AgentView,
    Org,
    QueueConfig,
    QueueEntry,
    QueueSnapshot,
    TodayStats,
    WaitingCall,
    closed_message,
    is_open,
    next_closing,
)
from broker.store.base import Store

log = logging.getLogger("vabroker.queues")

# Timer names (see ``broker.dispatch.timer``): a queued call's deadline (its maximum wait, or
# the organisation's closing, whichever is first), and the end of an agent's wrap-up.
QWAIT = "qwait"
QROUTE = "qroute"


class QueueSettings(BaseModel):
    """Numbers of the queue logic that are not per queue."""

    model_config = ConfigDict(frozen=True)

    default_handle_s: float = Field(
        default=240.0, gt=0, description="handle time assumed before a queue has its own average"
    )
    handle_weight: float = Field(
        default=0.2, gt=0, le=1, description="weight of the newest call in the moving average"
    )
    autopause_after: int = Field(default=3, ge=1, description="missed rings in a row -> away")
    eta_step_s: float = Field(
        default=30.0, ge=0, description="an ETA change smaller than this is not news"
    )
    eta_step_ratio: float = Field(
        default=0.25, ge=0, description="nor is one smaller than this share of the last ETA"
    )


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """Something an organisation's systems are told about (``call.queued``, ``call.assigned``,
    ``call.ended``). The broker only describes it; the edge signs and sends it."""

    kind: str
    url: str
    secret: str | None
    body: dict[str, Any] = field(default_factory=dict)


WebhookSink = Callable[[WebhookEvent], None]


def news(
    old_position: int | None,
    old_eta: int | None,
    position: int,
    eta: int | None,
    step_s: float,
    step_ratio: float,
) -> bool:
    """Whether a caller should hear about their place again: the position moved, the ETA became
    known or unknown, or it moved by at least ``step_s`` and ``step_ratio`` of what they heard."""
    if old_position != position or (old_eta is None) != (eta is None):
        return True
    if eta is None or old_eta is None:
        return False
    change = abs(eta - old_eta)
    return change >= step_s and change >= step_ratio * max(old_eta, 1)


def estimate_wait(position: int, serving: int, staffed: int, handle_s: float) -> int | None:
    """Seconds until a caller at ``position`` is answered: the calls ahead of the ``serving``
    ones (being rung, or about to be: free agents) finish at ``staffed`` agents' combined pace.
    None when no agent is signed in: nobody can say."""
    if staffed == 0:
        return None
    return math.ceil(max(0, position - serving) * handle_s / staffed)


def pick_order(free: Sequence[AgentRecord], strategy: str, rung: set[str]) -> list[AgentRecord]:
    """Free agents in the order a strategy rings them. Agents already rung for this call come
    last, so that a lapsed ring moves on to someone else before trying them again."""
    if strategy == "fewest_calls":
        return sorted(free, key=lambda a: (a.user_id in rung, a.calls, a.idle_since, a.user_id))
    if strategy == "round_robin":  # Asterisk's rrmemory: whoever was rung least recently
        return sorted(free, key=lambda a: (a.user_id in rung, a.last_rung_at, a.user_id))
    # longest_idle (and ringall, which rings them all anyway)
    return sorted(free, key=lambda a: (a.user_id in rung, a.idle_since, a.user_id))


class Queues:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        dispatcher: Dispatcher,
        settings: QueueSettings | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.dispatcher = dispatcher
        self.settings = settings or QueueSettings()
        self.webhooks: list[WebhookSink] = []
        # Told (organisation, calls waiting) after every settle: the edge's queue-length gauge.
        self.lengths: list[Callable[[str, int], None]] = []

    # --- callers -------------------------------------------------------------------------------
    async def admit(
        self, profile: Profile, org_id: str, queue_id: str | None, language: str | None
    ) -> tuple[Org, QueueConfig]:
        """The organisation and queue a request goes to, if it may: refuses unknown ones and
        a closed organisation (naming its next opening)."""
        org = await self.store.get_org(org_id)
        if org is None:
            raise BrokerError(ErrorCode.NOT_FOUND, f"There is no partner organisation {org_id!r}.")
        if queue_id is not None:
            queue = org.queue(queue_id)
            if queue is None:
                raise BrokerError(ErrorCode.NOT_FOUND, f"{org.name} has no queue {queue_id!r}.")
        else:
            queue = org.pick_queue(
                language or (profile.languages[0] if profile.languages else None)
            )
        now = self.clock.now()
        if not is_open(org, now):
            raise BrokerError(ErrorCode.ORG_CLOSED, closed_message(org, now, profile.timezone))
        return org, queue

    async def request(
        self,
        profile: Profile,
        org: Org,
        queue: QueueConfig,
        call_id: str,
        language: str | None,
        topic: str | None,
        note: str | None,
    ) -> tuple[Call, list[Event]]:
        """Put a caller in the queue: their call (queued, with position and ETA) and what to tell
        others (rings, the console). The caller's own status is the request's direct answer."""
        now = self.clock.now()
        if language is None:
            language = next(
                (t for t in profile.languages if queue.serves(t)),
                queue.languages[0] if queue.languages else profile.languages[0],
            )
        position = await self.store.enqueue(org.id, queue.id, call_id, now, queue.max_length)
        if position is None:
            raise BrokerError(
                ErrorCode.QUEUE_FULL,
                f"The {queue.name} queue of {org.name} is full. Please try again in a few minutes.",
            )
        call = Call(
            id=call_id,
            recipient_id=profile.user_id,
            recipient_name=profile.display_name,
            language=language,
            languages=search_languages(language, profile.languages),
            topic=topic,
            note=note if note is not None else profile.note,
            org=org.id,
            queue=queue.id,
            state=CallState.QUEUED,
            requested_at=now,
            enqueued_at=now,
        )
        if not await self.store.create_call(call):
            await self.store.dequeue(org.id, queue.id, call_id)
            raise BrokerError(
                ErrorCode.RATE_LIMITED,
                "You already have a call open. End or cancel it before asking again.",
            )
        await self.store.schedule(timer(QWAIT, call.id), self._deadline(org, queue, call, now))
        log.info(
            "call queued",
            extra={"call": call.id, "org": org.id, "queue": queue.id, "position": position},
        )
        self._hook(org, queue, "call.queued", call, position=position)
        events = await self.settle(org.id)
        events = [e for e in events if not (isinstance(e, Status) and e.call_id == call.id)]
        return await self.store.get_call(call.id) or call, events

    async def join_escalated(
        self, call: Call, org: Org, queue: QueueConfig
    ) -> tuple[Call, list[Event]] | None:
        """A search just escalated to this queue (``Store.escalate``) takes its place at the
        back: its call as it now is (position, ETA) and what to tell others. None when the
        queue filled up meanwhile (another node's caller took the last place)."""
        now = self.clock.now()
        position = await self.store.enqueue(org.id, queue.id, call.id, now, queue.max_length)
        if position is None:
            return None
        await self.store.schedule(timer(QWAIT, call.id), self._deadline(org, queue, call, now))
        log.info(
            "search escalated to a help centre",
            extra={"call": call.id, "org": org.id, "queue": queue.id, "position": position},
        )
        self._hook(org, queue, "call.queued", call, position=position, escalated=True)
        events = await self.settle(org.id)
        events = [e for e in events if not (isinstance(e, Status) and e.call_id == call.id)]
        return await self.store.get_call(call.id) or call, events

    def _deadline(self, org: Org, queue: QueueConfig, call: Call, now: float) -> float:
        enqueued = call.enqueued_at if call.enqueued_at is not None else call.requested_at
        deadline = enqueued + queue.max_wait_s
        closing = next_closing(org, now)
        return min(deadline, closing) if closing is not None else deadline

    async def deadline(self, call_id: str) -> tuple[EndReason | None, list[Event]]:
        """A queued call's deadline passed: the reason to end it with, or (for a queue that
        overflows to volunteers) None and the events of the hand-over."""
        call = await self.store.get_call(call_id)
        if call is None or call.state is not CallState.QUEUED or call.org is None:
            return None, []
        org = await self.store.get_org(call.org)
        queue = org.queue(call.queue) if org and call.queue else None
        now = self.clock.now()
        if org is None or queue is None:
            return EndReason.CLOSED, []  # the organisation or queue was removed meanwhile
        open_now = is_open(org, now)
        enqueued = call.enqueued_at if call.enqueued_at is not None else call.requested_at
        if open_now and now < enqueued + queue.max_wait_s:
            # The hours changed since the deadline was set: wait on.
            await self.store.schedule(timer(QWAIT, call.id), self._deadline(org, queue, call, now))
            return None, []
        reason = EndReason.NO_ANSWER if open_now else EndReason.CLOSED
        if queue.overflow != "volunteers" or call.escalated_at is not None:
            # An escalated call has had its volunteer search already: it does not go back.
            return reason, []
        handed = await self.store.hand_to_volunteers(call.id, now)
        if handed is None:
            return None, []
        await self.store.dequeue(org.id, queue.id, call.id)
        events: list[Event] = []
        for agent in handed.withdrawn:
            await self.store.unschedule(timer(RING, call.id, agent))
            events.append(Withdrawn(to=agent, call_id=call.id, reason=WithdrawReason.EXPIRED))
        log.info(
            "queued call overflows to volunteers",
            extra={"call": call.id, "org": org.id, "why": reason.value},
        )
        call, rings = await self.dispatcher.start(handed.call)
        events.append(
            Status(
                to=call.recipient_id,
                call_id=call.id,
                state=CallState.SEARCHING,
                notified=call.notified,
                language=call.languages[call.language_index],
            )
        )
        events += rings
        events += await self.settle(org.id)
        return None, events

    async def reconfigured(self, org_id: str) -> list[Event]:
        """The organisation's settings changed: waiting calls get deadlines by the new hours and
        maximum waits, and routing follows the new strategies."""
        org = await self.store.get_org(org_id)
        if org is None:
            return []
        now = self.clock.now()
        for queue in org.queues:
            for _, call in await self.store.queue_calls(org.id, queue.id):
                if call is not None and call.state is CallState.QUEUED:
                    deadline = self._deadline(org, queue, call, now)
                    await self.store.schedule(timer(QWAIT, call.id), max(now, deadline))
        return await self.settle(org_id)

    # --- agents --------------------------------------------------------------------------------
    async def set_agent_status(self, profile: Profile, state: AgentStateName) -> list[Event]:
        if profile.role is not Role.AGENT or not profile.org:
            raise BrokerError(ErrorCode.FORBIDDEN, "Only agents set an agent status.")
        now = self.clock.now()
        record = await self.store.set_agent_state(
            profile.org, profile.user_id, state, now, profile.display_name
        )
        events: list[Event] = []
        if state == "away" and record.ringing is not None:
            # Away means away: the call they were rung for goes to someone else.
            call_id = record.ringing
            if await self.store.release_ring(call_id, profile.user_id):
                await self.store.unschedule(timer(RING, call_id, profile.user_id))
                events.append(
                    Withdrawn(to=profile.user_id, call_id=call_id, reason=WithdrawReason.EXPIRED)
                )
        log.info(
            "agent status", extra={"user": profile.user_id, "org": profile.org, "state": state}
        )
        return events + await self.settle(profile.org)

    async def ring_lapsed(self, call: Call, user_id: str) -> list[Event]:
        """An agent let a ring for a queued call lapse (the ring is already released)."""
        if call.org is None:
            return []
        events: list[Event] = []
        missed = await self.store.agent_missed(call.org, user_id)
        if missed >= self.settings.autopause_after:
            await self.store.set_agent_state(call.org, user_id, "away", self.clock.now())
            events.append(AgentStatusChanged(to=user_id, state="away", reason="missed_rings"))
            log.info(
                "agent set away after missed rings",
                extra={"user": user_id, "org": call.org, "missed": missed},
            )
        return events + await self.settle(call.org)

    async def wrapup_ended(self, org_id: str) -> list[Event]:
        return await self.settle(org_id)

    # --- the call's course ---------------------------------------------------------------------
    async def assigned(self, call: Call) -> list[Event]:
        """A queued call was answered (by an agent who won ``assign``)."""
        if call.org is None or call.queue is None or call.overflowed_at is not None:
            return []
        await self.store.dequeue(call.org, call.queue, call.id)
        await self.store.unschedule(timer(QWAIT, call.id))
        org = await self.store.get_org(call.org)
        queue = org.queue(call.queue) if org else None
        if call.helper_id is not None:
            await self.store.agent_answered(call.org, call.helper_id)
        wait = (call.assigned_at or self.clock.now()) - (call.enqueued_at or call.requested_at)
        if org is not None:
            await self.store.count_queue_outcome(call.org, self._day(org), True, wait)
            if queue is not None:
                self._hook(
                    org, queue, "call.assigned", call, agent=call.helper_id, wait_s=round(wait, 3)
                )
        return await self.settle(call.org)

    async def finished(self, call: Call) -> list[Event]:
        """A call of an organisation ended, however it ended."""
        if call.org is None or call.queue is None:
            return []
        org = await self.store.get_org(call.org)
        queue = org.queue(call.queue) if org else None
        now = self.clock.now()
        if call.overflowed_at is None:
            was_waiting = await self.store.dequeue(call.org, call.queue, call.id)
            await self.store.unschedule(timer(QWAIT, call.id))
            if was_waiting and call.end_reason is EndReason.CANCELLED and org is not None:
                wait = now - (call.enqueued_at or call.requested_at)
                await self.store.count_queue_outcome(call.org, self._day(org), False, wait)
            if call.helper_id is not None and call.helper_role is Role.AGENT:
                wrapup = queue.wrapup_s if queue else 0.0
                await self.store.agent_released(call.org, call.helper_id, now, now + wrapup)
                if call.duration_s is not None:
                    await self.store.record_handle_time(
                        call.org, call.queue, call.duration_s + wrapup, self.settings.handle_weight
                    )
                if wrapup > 0:
                    await self.store.schedule(timer(QROUTE, call.org, call.helper_id), now + wrapup)
        if org is not None and queue is not None:
            enqueued = call.enqueued_at or call.requested_at
            answered = call.assigned_at
            self._hook(
                org,
                queue,
                "call.ended",
                call,
                reason=call.end_reason.value if call.end_reason else None,
                agent=call.helper_id if call.helper_role is Role.AGENT else None,
                wait_s=round((answered if answered is not None else now) - enqueued, 3),
                talk_s=round(call.duration_s, 3) if call.duration_s is not None else 0.0,
                overflowed=call.overflowed_at is not None,
            )
        return await self.settle(call.org)

    # --- routing and telling -------------------------------------------------------------------
    async def settle(self, org_id: str) -> list[Event]:
        """Ring free agents for waiting calls, tell callers whose place changed, refresh the
        console. Safe to run on any node at any time: every ring is an atomic reservation."""
        org = await self.store.get_org(org_id)
        if org is None:
            return []
        now = self.clock.now()
        lines: dict[str, list[QueueEntry]] = {}
        calls: dict[str, Call] = {}
        for queue in org.queues:
            kept = []
            for entry, call in await self.store.queue_calls(org.id, queue.id):
                if call is None:
                    # Created just after it joined the queue (on another node), or lost with a
                    # node that died between the two steps: only the second is removed.
                    if now - entry.enqueued_at > 60:
                        await self.store.dequeue(org.id, queue.id, entry.call_id)
                    continue
                if call.state is not CallState.QUEUED:
                    await self.store.dequeue(org.id, queue.id, entry.call_id)  # left half-way
                    continue
                calls[call.id] = call
                kept.append(entry)
            lines[queue.id] = kept
        for report in self.lengths:
            report(org.id, sum(len(entries) for entries in lines.values()))
        events = await self._route(org, lines, calls, now)
        agents = await self.store.agents(org.id)
        events += await self._tell_callers(org, lines, calls, agents)
        watchers = [a.user_id for a in agents if a.connected]
        if watchers:
            snapshot = await self._snapshot(org, lines, calls, agents, now)
            events += [QueueUpdate(to=user_id, snapshot=snapshot) for user_id in watchers]
        return events

    async def _route(
        self, org: Org, lines: dict[str, list[QueueEntry]], calls: dict[str, Call], now: float
    ) -> list[Event]:
        free = [a for a in await self.store.agents(org.id) if a.free(now)]
        if not free:
            return []
        by_id = {q.id: q for q in org.queues}
        # First come, first served across the organisation's queues; within a queue, its order.
        waiting = sorted(
            (entry.enqueued_at, n, position, entry.call_id, queue_id)
            for n, (queue_id, entries) in enumerate(lines.items())
            for position, entry in enumerate(entries)
        )
        events: list[Event] = []
        for *_, call_id, queue_id in waiting:
            if not free:
                break
            queue = by_id[queue_id]
            ringall = queue.strategy == "ringall"
            if not ringall and await self.store.ringing(call_id):
                continue  # already offered to someone
            call = calls[call_id]
            order = pick_order(free, queue.strategy, await self.store.rung(call_id))
            expires_at = now + queue.ring_timeout_s
            for agent in order:
                free.remove(agent)
                if not await self.store.reserve_agent_ring(
                    call_id, org.id, agent.user_id, now, exclusive=not ringall
                ):
                    continue  # taken by another node meanwhile, or no longer free
                await self.store.schedule(timer(RING, call_id, agent.user_id), expires_at)
                events.append(
                    Ring(
                        to=agent.user_id,
                        call_id=call_id,
                        language=call.language,
                        requester_name=call.recipient_name,
                        expires_at=expires_at,
                        topic=call.topic,
                        note=call.note,
                        org=org.id,
                        queue=queue_id,
                    )
                )
                if call.first_ring_at is None:
                    await self.store.update_call(call_id, first_ring_at=now)
                    calls[call_id] = call = call.model_copy(update={"first_ring_at": now})
                if not ringall:
                    break
        return events

    async def _tell_callers(
        self,
        org: Org,
        lines: dict[str, list[QueueEntry]],
        calls: dict[str, Call],
        agents: list[AgentRecord],
    ) -> list[Event]:
        now = self.clock.now()
        staffed = [a for a in agents if a.state == "available" and a.connected]
        ringing_calls = {a.ringing for a in agents if a.ringing in calls}
        serving = len(ringing_calls) + sum(1 for a in staffed if a.free(now))
        s = self.settings
        events: list[Event] = []
        for queue in org.queues:
            handle = await self.store.handle_time(org.id, queue.id) or s.default_handle_s
            for position, entry in enumerate(lines.get(queue.id, []), 1):
                call = calls[entry.call_id]
                eta = estimate_wait(position, serving, len(staffed), handle)
                if not news(
                    call.queue_position,
                    call.queue_eta_s,
                    position,
                    eta,
                    s.eta_step_s,
                    s.eta_step_ratio,
                ):
                    continue
                await self.store.update_call(call.id, queue_position=position, queue_eta_s=eta)
                calls[call.id] = call.model_copy(
                    update={"queue_position": position, "queue_eta_s": eta}
                )
                events.append(
                    Status(
                        to=call.recipient_id,
                        call_id=call.id,
                        state=CallState.QUEUED,
                        position=position,
                        eta_s=eta,
                    )
                )
        return events

    # --- the console ---------------------------------------------------------------------------
    async def snapshot(self, org_id: str) -> QueueSnapshot | None:
        org = await self.store.get_org(org_id)
        if org is None:
            return None
        lines: dict[str, list[QueueEntry]] = {}
        calls: dict[str, Call] = {}
        for queue in org.queues:
            lines[queue.id] = []
            for entry, call in await self.store.queue_calls(org.id, queue.id):
                if call is not None and call.state is CallState.QUEUED:
                    calls[call.id] = call
                    lines[queue.id].append(entry)
        agents = await self.store.agents(org.id)
        return await self._snapshot(org, lines, calls, agents, self.clock.now())

    async def _snapshot(
        self,
        org: Org,
        lines: dict[str, list[QueueEntry]],
        calls: dict[str, Call],
        agents: list[AgentRecord],
        now: float,
    ) -> QueueSnapshot:
        ringing: dict[str, list[str]] = {}
        for agent in agents:
            if agent.ringing is not None:
                ringing.setdefault(agent.ringing, []).append(agent.user_id)
        waiting = [
            WaitingCall(
                call=entry.call_id,
                queue=queue_id,
                position=position,
                wait_s=max(0, round(now - entry.enqueued_at)),
                language=calls[entry.call_id].language,
                topic=calls[entry.call_id].topic,
                ringing=ringing.get(entry.call_id, []),
            )
            for queue_id, entries in lines.items()
            for position, entry in enumerate(entries, 1)
        ]
        views = []
        for agent in agents:
            views.append(
                AgentView(
                    id=agent.user_id,
                    display_name=agent.display_name,
                    state=agent.state,
                    activity=_activity(agent, now),
                    calls=agent.calls,
                    missed=agent.missed,
                )
            )
        day = self._day(org)
        stats = await self.store.queue_day_stats(org.id, day)
        avg = stats.average_wait_s
        return QueueSnapshot(
            org=org.id,
            open_now=is_open(org, now),
            waiting=waiting,
            agents=views,
            today=TodayStats(
                date=day,
                answered=stats.answered,
                abandoned=stats.abandoned,
                average_wait_s=round(avg, 1) if avg is not None else None,
            ),
        )

    async def replay(self, profile: Profile) -> list[Event]:
        """What an agent sees on (re)connecting: the console as it is."""
        if profile.role is not Role.AGENT or not profile.org:
            return []
        known = {a.user_id for a in await self.store.agents(profile.org)}
        if profile.user_id not in known:
            # Signed in means known to the organisation: away until they say they are available.
            await self.store.set_agent_state(
                profile.org, profile.user_id, "away", self.clock.now(), profile.display_name
            )
        snapshot = await self.snapshot(profile.org)
        return [QueueUpdate(to=profile.user_id, snapshot=snapshot)] if snapshot else []

    # --- internals -----------------------------------------------------------------------------
    def _day(self, org: Org) -> str:
        return local_datetime(org.timezone, self.clock.now()).date().isoformat()

    def _hook(self, org: Org, queue: QueueConfig, kind: str, call: Call, **extra: Any) -> None:
        if queue.webhook_url is None or not self.webhooks:
            return
        body: dict[str, Any] = {
            "id": "wh_" + secrets.token_urlsafe(12),
            "event": kind,
            "at": round(self.clock.now(), 3),
            "org": org.id,
            "queue": queue.id,
            "call": call.id,
            "language": call.language,
            "topic": call.topic,
            **extra,
        }
        event = WebhookEvent(kind, str(queue.webhook_url), queue.webhook_secret, body)
        for sink in self.webhooks:
            try:
                sink(event)
            except Exception:  # a broken sink must never stop routing
                log.exception("webhook sink failed", extra={"call": call.id, "org": org.id})


def _activity(agent: AgentRecord, now: float) -> Any:
    if agent.busy:
        return "in_call"
    if agent.ringing is not None:
        return "ringing"
    if not agent.connected:
        return "offline"
    if agent.state == "away":
        return "away"
    if agent.wrapup_until > now:
        return "wrap_up"
    return "idle"
