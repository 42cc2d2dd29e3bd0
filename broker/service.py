"""The broker: every decision the edge asks for, in one place.

The signalling edge calls one method per thing a user did (asked for help, accepted, hung up,
lost their connection) and one per tick of its timer loop (``fire_due``). Each method returns the
``Event``s to deliver; none touches a socket or sleeps. The simulator and the tests call the very
same methods with a virtual clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from broker.circle import Circles, CircleSettings
from broker.clock import Clock
from broker.dispatch import (
    EXPIRE,
    RING,
    WAVE,
    Dispatcher,
    DispatchSettings,
    Policy,
    both,
    search_languages,
    timer,
)
from broker.escalation import Decision, EscalationSettings, Escalator
from broker.events import (
    AgentStatusChanged,
    Assigned,
    AvailabilityChanged,
    Ended,
    Event,
    Ring,
    Status,
    Withdrawn,
)
from broker.lobby import Lobby, inside_window, listable
from broker.model import (
    BrokerError,
    Call,
    CallState,
    CircleMode,
    EndReason,
    ErrorCode,
    EscalationOutcome,
    Feedback,
    Profile,
    Role,
    WithdrawReason,
    local_datetime,
    primary_language,
)
from broker.moderation import (
    Case,
    CaseAction,
    ReportReason,
    Restriction,
    RestrictionKind,
)
from broker.orgs import AgentStateName
from broker.privacy import RETENTION, Privacy, request_hit_key
from broker.queues import QROUTE, QWAIT, Queues, QueueSettings
from broker.safety import RESTRICTION_END, SYSTEM, Safety, SafetySettings
from broker.stats import counts_of, day_of, scopes_of
from broker.store.base import Assignment, Store

log = logging.getLogger("vabroker.broker")

_TOO_MANY_REQUESTS = "Too many calls in the last hour. Please wait a few minutes and try again."
_REQUEST_WINDOW_S = 3600.0  # requests_per_hour counts in the last hour


GRACE = "grace"


class LimitSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    requests_per_hour: int = Field(
        default=30, ge=1, description="call requests per recipient per hour"
    )


@dataclass(slots=True)
class Outcome:
    """A method's result: the call it concerns (if any) and what to tell whom."""

    call: Call | None
    events: list[Event]


def new_call_id() -> str:
    return "c_" + secrets.token_urlsafe(12)


class Broker:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        dispatch: DispatchSettings | None = None,
        limits: LimitSettings | None = None,
        policy: Policy | None = None,
        rng: random.Random | None = None,
        new_id: Callable[[], str] = new_call_id,
        queues: QueueSettings | None = None,
        safety: SafetySettings | None = None,
        pseudonym_key: bytes | None = None,
        escalation: EscalationSettings | None = None,
        circle: CircleSettings | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.settings = dispatch or DispatchSettings()
        self.limits = limits or LimitSettings()
        self.dispatcher = Dispatcher(store, clock, self.settings, policy, rng)
        self.new_id = new_id
        self.queues = Queues(store, clock, self.dispatcher, queues)
        self.safety_settings = safety or SafetySettings()
        # Without a configured key (tests, the simulator) pseudonyms are still keyed, by a
        # fixed key: the server always passes one derived from its secrets.
        key = pseudonym_key or hashlib.sha256(b"vabroker pseudonym key").digest()
        self.safety = Safety(store, clock, self.safety_settings, key)
        self.privacy = Privacy(store, clock, self.safety)
        self.escalator = Escalator(store, clock, escalation or EscalationSettings())
        self.circles = Circles(store, clock, circle or CircleSettings(), key)
        self.lobby = Lobby(store, clock, self.settings)

    async def start(self) -> None:
        """Put the daily timers in place (once, whichever node starts first)."""
        if await self.store.deadline(RETENTION) is None:
            await self.store.schedule(RETENTION, self.clock.now() + 60.0)

    # --- helpers' availability ---------------------------------------------------------------
    async def set_available(self, profile: Profile, available: bool) -> None:
        if not profile.role.is_on_duty_helper:
            raise BrokerError(
                ErrorCode.FORBIDDEN,
                "Only volunteers and assistants set their availability this way.",
            )
        if available:
            await self.safety.check(profile.user_id)  # going off duty is always allowed
        await self.store.set_on_duty(profile.user_id, available)

    async def set_agent_status(self, profile: Profile, state: AgentStateName) -> list[Event]:
        if state == "available" and profile.role is Role.AGENT:
            await self.safety.check(profile.user_id)
        return await self.queues.set_agent_status(profile, state)

    # --- asking for help ---------------------------------------------------------------------
    async def request(
        self,
        profile: Profile,
        language: str | None = None,
        topic: str | None = None,
        note: str | None = None,
        org: str | None = None,
        queue: str | None = None,
        helper: str | None = None,
        circle: CircleMode | None = None,
    ) -> Outcome:
        if profile.role is not Role.RECIPIENT:
            raise BrokerError(ErrorCode.FORBIDDEN, "Only recipients can ask for help.")
        if circle is not None and org is not None:
            raise BrokerError(
                ErrorCode.BAD_MESSAGE,
                "circle asks your trusted circle of volunteers: it cannot go with org.",
            )
        if circle is CircleMode.ONLY and not await self.store.circle(profile.user_id):
            raise BrokerError(
                ErrorCode.NOT_FOUND,
                "Your circle has nobody in it yet: invite someone first, or ask everyone.",
            )
        # Both reads at once (on a shared store each is a round trip before the first ring);
        # a restriction is still the answer when both refuse.
        restriction, open_call = await asyncio.gather(
            self.safety.restriction(profile.user_id), self.store.current_call(profile.user_id)
        )
        self.safety.refuse(restriction)
        now = self.clock.now()
        if open_call:
            raise BrokerError(
                ErrorCode.RATE_LIMITED,
                "You already have a call open. End or cancel it before asking again.",
            )
        if org is not None:
            # Specialised help: refused before it counts against the rate limit when the
            # organisation is unknown or closed.
            partner, line = await self.queues.admit(profile, org, queue, language)
            await self._count_request(profile.user_id, now)
            queued, events = await self.queues.request(
                profile, partner, line, self.new_id(), language, topic, note
            )
            return Outcome(queued, events)
        languages = search_languages(language, profile.languages)
        call = Call(
            id=self.new_id(),
            recipient_id=profile.user_id,
            recipient_name=profile.display_name,
            language=languages[0],
            languages=languages,
            topic=topic,
            note=note if note is not None else profile.note,
            helper="assistant" if helper == "assistant" else None,
            state=CallState.SEARCHING,
            requested_at=now,
            circle=circle,
        )
        # Counted against the hourly limit and created in one step (one round trip on a shared
        # store): the count as ``_count_request`` keeps it.
        admitted = await self.store.create_counted_call(
            call,
            request_hit_key(profile.user_id),
            now,
            _REQUEST_WINDOW_S,
            self.limits.requests_per_hour,
        )
        if admitted == "limited":
            raise BrokerError(ErrorCode.RATE_LIMITED, _TOO_MANY_REQUESTS)
        if admitted == "open":
            raise BrokerError(
                ErrorCode.RATE_LIMITED,
                "You already have a call open. End or cancel it before asking again.",
            )
        log.info("call requested", extra={"call": call.id, "language": call.language})
        # The lobby lists the new call beside the first wave's reads (on a shared store, one
        # round trip fewer before the first ring), and again after only if the wave changed
        # how it is listed (an escalation).
        listed = self.lobby.entry(call)
        (call, events), _ = await both(self.dispatcher.start(call), self.lobby.track(call))
        escalated, more = await self._after_wave(call, events)
        if self.lobby.entry(escalated or call) != listed:
            await self.lobby.track(escalated or call)
        return Outcome(escalated or call, events + more)

    async def cancel(self, user_id: str, call_id: str) -> Outcome:
        call = await self._own_call(user_id, call_id)
        if call.recipient_id != user_id:
            raise BrokerError(ErrorCode.FORBIDDEN, "Only the person who asked for help can cancel.")
        if call.state is CallState.ASSIGNED:
            raise BrokerError(ErrorCode.CONFLICT, "The call was already answered; hang up instead.")
        return await self._finish(call_id, EndReason.CANCELLED, Role.RECIPIENT)

    # --- a person one tap away -------------------------------------------------------------
    async def hand_over(
        self, profile: Profile, call_id: str, reading: str | None = None
    ) -> Outcome:
        """ "Get me a volunteer": from a call with an automatic helper, start the volunteers'
        search (the call's languages, topic, note and circle; every rule of a search) while
        the automatic helper stays on. When a volunteer accepts, the first call ends
        (``handed_over``); ``reading`` (what the helper read, if the recipient shares it) goes
        to the volunteer with the ring. The outcome's call is the new search."""
        call = await self._own_call(profile.user_id, call_id)
        if call.recipient_id != profile.user_id:
            raise BrokerError(
                ErrorCode.FORBIDDEN, "Only the person who asked for help can ask for a volunteer."
            )
        if call.state is not CallState.ASSIGNED:
            raise BrokerError(
                ErrorCode.CONFLICT,
                "That call is not in progress: a volunteer is asked for from a call with the "
                "automatic reader.",
            )
        if call.helper_role is not Role.ASSISTANT:
            raise BrokerError(
                ErrorCode.CONFLICT,
                "That call is already with a person: a volunteer is asked for from a call "
                "with the automatic reader.",
            )
        pending = await self.store.handover_of(profile.user_id)
        if pending is not None:
            raise BrokerError(
                ErrorCode.CONFLICT,
                f"A volunteer is already being looked for (call {pending}); cancel that search "
                "before asking again.",
            )
        await self.safety.check(profile.user_id)
        now = self.clock.now()
        await self._count_request(profile.user_id, now)
        search = self._search_after(
            call, now, circle=call.circle, replaces=call.id, reading=reading
        )
        if not await self.store.open_handover(search):
            # Lost a race: the call ended, or another handover was opened, meanwhile.
            raise BrokerError(
                ErrorCode.CONFLICT,
                "That call changed meanwhile (it ended, or a volunteer is already being "
                "looked for).",
            )
        log.info("handover: searching volunteers", extra={"call": search.id})
        search, events = await self.dispatcher.start(search)
        escalated, more = await self._after_wave(search, events)
        search = escalated or search
        await self.lobby.track(search)  # a search for a person like any: open to the lobby
        status = Status(
            to=search.recipient_id,
            call_id=search.id,
            state=search.state,
            notified=search.notified,
            replaces=call.id,
        )
        return Outcome(search, [status, *events, *more])

    async def _count_request(self, user_id: str, now: float) -> None:
        """Count a request for help against the recipient's hourly limit; refuse one over it."""
        hits = await self.store.hit(request_hit_key(user_id), now, _REQUEST_WINDOW_S)
        if hits > self.limits.requests_per_hour:
            raise BrokerError(ErrorCode.RATE_LIMITED, _TOO_MANY_REQUESTS)

    def _search_after(self, call: Call, now: float, **fields: Any) -> Call:
        """A new volunteers' search for the recipient of ``call``, in its languages, with its
        topic and note (a handover, or the search that replaces a lost assistant)."""
        return Call(
            id=self.new_id(),
            recipient_id=call.recipient_id,
            recipient_name=call.recipient_name,
            language=call.language,
            languages=call.languages,
            topic=call.topic,
            note=call.note,
            state=CallState.SEARCHING,
            requested_at=now,
            **fields,
        )

    async def _handed_over(self, answered: Call) -> list[Event]:
        """A volunteer accepted a handover: the call it replaces ends, ``handed_over``, by the
        recipient (who asked). Nothing when it had ended already (they hung up meanwhile)."""
        assert answered.replaces is not None
        return (await self._finish(answered.replaces, EndReason.HANDED_OVER, Role.RECIPIENT)).events

    async def _drop_handover(self, user_id: str) -> list[Event]:
        """End the recipient's pending handover search (they are gone: lost, or erased)."""
        pending = await self.store.handover_of(user_id)
        if pending is None:
            return []
        return (await self._finish(pending, EndReason.CANCELLED, Role.RECIPIENT)).events

    # --- a ring ------------------------------------------------------------------------------
    async def accept(self, profile: Profile, call_id: str) -> Outcome:
        if not profile.role.is_helper:
            raise BrokerError(ErrorCode.FORBIDDEN, "Only volunteers and agents answer calls.")
        now = self.clock.now()
        won = await self.store.assign(
            call_id, profile.user_id, profile.display_name, profile.role, now
        )
        if won is None:
            call = await self.store.get_call(call_id)
            if call is None:
                raise BrokerError(ErrorCode.NOT_FOUND, "That call does not exist.")
            if call.state is CallState.ASSIGNED:
                raise BrokerError(ErrorCode.CONFLICT, "Someone else answered this call first.")
            if call.state is CallState.ENDED:
                raise BrokerError(ErrorCode.CONFLICT, "This call has already ended.")
            if profile.user_id in await self.store.rung(call_id):
                raise BrokerError(ErrorCode.CONFLICT, "Your ring for this call has expired.")
            raise BrokerError(ErrorCode.FORBIDDEN, "You were not rung for this call.")
        return await self._answered(won, profile, now)

    async def _answered(self, won: Assignment, profile: Profile, now: float) -> Outcome:
        """The helper's accept (or take) won: stop the search and tell everyone."""
        call = won.call
        call_id = call.id
        queued = call.org is not None
        # Every timer of the search in one step, beside the lobby's: the helper's
        # ``call.assigned`` waits for both (a thousand rung, one step all the same).
        await asyncio.gather(
            self.store.unschedule(
                timer(WAVE, call_id),
                timer(EXPIRE, call_id),
                *(timer(RING, call_id, u) for u in (*won.withdrawn, profile.user_id)),
            ),
            self.store.lobby_drop(call_id),
        )
        events: list[Event] = [
            Withdrawn(to=u, call_id=call_id, reason=WithdrawReason.ANSWERED) for u in won.withdrawn
        ]
        if call.replaces is not None:
            # The recipient hears that the reader's call ended before the volunteer's begins.
            events += await self._handed_over(call)
        events += self._assigned(call)
        if queued:
            events += await self.queues.assigned(call)
        log.info(
            "call assigned",
            extra={"call": call_id, "answer_s": round(now - call.requested_at, 3)},
        )
        return Outcome(call, events)

    # --- the lobby ---------------------------------------------------------------------------
    async def take(self, profile: Profile, call_id: str) -> Outcome:
        """A volunteer takes a request from the lobby: the same first accept as a ring's. They
        are reserved a ring for the call (the cap, busy and "rung before" decided atomically by
        the store), then ``assign`` decides between them and every accept racing them."""
        if profile.role is not Role.VOLUNTEER:
            raise BrokerError(ErrorCode.FORBIDDEN, "Only volunteers take requests from the lobby.")
        now = self.clock.now()
        user_id = profile.user_id
        call = await self.store.get_call(call_id)
        if call is None:
            raise BrokerError(ErrorCode.NOT_FOUND, "That call does not exist.")
        self._still_waiting(call)
        if await self.safety.restriction(user_id) is not None:
            raise BrokerError(ErrorCode.FORBIDDEN, "You cannot take calls while suspended.")
        if not await self.store.is_on_duty(user_id):
            raise BrokerError(ErrorCode.CONFLICT, "Go on duty to take a request.")
        ringing_for_it = await self.store.ring_of(user_id) == call_id
        if not ringing_for_it:
            await self._may_take(profile, call, now)
            day = local_datetime(profile.timezone, now).date().isoformat()
            if not await self.store.reserve_ring(
                call_id, user_id, day, profile.daily_ring_cap, now
            ):
                await self._reserve_refused(profile, call_id, now)
        won = await self.store.assign(call_id, user_id, profile.display_name, profile.role, now)
        if won is None:
            if not ringing_for_it:
                await self.store.release_ring(call_id, user_id)
            later = await self.store.get_call(call_id)
            self._still_waiting(later or call)
            # Still searching, yet the assign refused: the ring just reserved lapsed or was
            # withdrawn in between (the search ended and began again is not possible).
            raise BrokerError(ErrorCode.CONFLICT, "This request is no longer waiting.")
        log.info("call taken from the lobby", extra={"call": call_id})
        return await self._answered(won, profile, now)

    @staticmethod
    def _still_waiting(call: Call) -> None:
        if call.state is CallState.ASSIGNED:
            raise BrokerError(ErrorCode.CONFLICT, "Someone else answered this call first.")
        if call.state is CallState.ENDED:
            raise BrokerError(ErrorCode.CONFLICT, "This call has already ended.")
        if call.state is CallState.QUEUED and call.escalated_at is not None:
            # Handed to a help centre: it was listed until then.
            raise BrokerError(ErrorCode.CONFLICT, "This request went to a help centre.")

    async def _may_take(self, profile: Profile, call: Call, now: float) -> None:
        """Refuse (``forbidden``) a take the lobby would never have offered this volunteer."""
        if not listable(call, self.settings, now):
            raise BrokerError(ErrorCode.FORBIDDEN, "This request is not open to the lobby.")
        spoken = {primary_language(tag) for tag in profile.languages}
        reached = call.languages[: call.language_index + 1] or [call.language]
        if not spoken.intersection(primary_language(tag) for tag in reached):
            raise BrokerError(
                ErrorCode.FORBIDDEN, "This request is in a language you do not speak."
            )
        if not inside_window(profile, now):
            raise BrokerError(ErrorCode.FORBIDDEN, "You are outside your ring window.")
        recipient = await self.store.get_profile(call.recipient_id)
        if call.recipient_id in profile.blocked or (
            recipient is not None and profile.user_id in recipient.blocked
        ):
            raise BrokerError(ErrorCode.FORBIDDEN, "You cannot take this request.")

    async def _reserve_refused(self, profile: Profile, call_id: str, now: float) -> None:
        """Say why the store would not reserve the taker a ring (it decides atomically; this
        only reads the facts again to explain)."""
        user_id = profile.user_id
        call = await self.store.get_call(call_id)
        if call is not None:
            self._still_waiting(call)
        if await self.store.current_call(user_id) or await self.store.ring_of(user_id):
            raise BrokerError(ErrorCode.FORBIDDEN, "You are busy with another call.")
        if user_id in await self.store.rung(call_id):
            raise BrokerError(
                ErrorCode.FORBIDDEN,
                "You were rung for this request already; it is not offered again.",
            )
        raise BrokerError(
            ErrorCode.FORBIDDEN, "You have reached your daily number of calls. Thank you!"
        )

    async def decline(self, user_id: str, call_id: str) -> Outcome:
        return await self._release(user_id, call_id, WithdrawReason.DECLINED)

    async def _release(self, user_id: str, call_id: str, reason: WithdrawReason) -> Outcome:
        """Stop a helper ringing for a call that is not answered yet, and move the call on."""
        if not await self.store.release_ring(call_id, user_id):
            call = await self.store.get_call(call_id)
            if call is None or user_id not in await self.store.rung(call_id):
                raise BrokerError(ErrorCode.NOT_FOUND, "You are not being rung for that call.")
            # Withdrawn, lapsed, or the call was answered elsewhere or ended: a decline that
            # crosses any of these is an ordinary race, acknowledged (protocol: "decline").
            return Outcome(call, [])
        await self.store.unschedule(timer(RING, call_id, user_id))
        # Every session and pushed device of the helper stops ringing, not only the one that
        # declined: another tab, a phone rung by push.
        events: list[Event] = [Withdrawn(to=user_id, call_id=call_id, reason=reason)]
        call = await self._ring_freed(call_id)
        if call is not None and call.state is CallState.QUEUED and call.org is not None:
            events += await self.queues.settle(call.org)
        return Outcome(call, events)

    # --- the call ----------------------------------------------------------------------------
    async def peer(self, user_id: str, call_id: str) -> str:
        """The other party of an assigned call, for relaying signals. Anyone else, and any call
        id that does not exist, gets the same ``forbidden``: the broker does not reveal calls."""
        peer = await self.store.call_peer(call_id, user_id)
        if peer is None:
            raise BrokerError(ErrorCode.FORBIDDEN, "You are not a party of that call.")
        return peer

    async def media(self, user_id: str, call_id: str, connected: bool) -> Outcome:
        call = await self._own_call(user_id, call_id)
        if call.state is not CallState.ASSIGNED:
            raise BrokerError(ErrorCode.CONFLICT, "That call is not in progress.")
        if connected and await self.store.mark_media(call_id, self.clock.now()):
            call = await self.store.get_call(call_id) or call
            if call.media_at is not None and call.assigned_at is not None:
                log.info(
                    "media connected",
                    extra={
                        "call": call_id,
                        "time_to_media_s": round(call.media_at - call.assigned_at, 3),
                    },
                )
        elif not connected:
            log.warning("media failed", extra={"call": call_id, "user": user_id})
        return Outcome(call, [])

    async def end(self, user_id: str, call_id: str) -> Outcome:
        call = await self._own_call(user_id, call_id)
        role = call.party_of(user_id)
        if call.state is CallState.ENDED:
            raise BrokerError(ErrorCode.CONFLICT, "That call has already ended.")
        if call.state is not CallState.ASSIGNED:
            return await self._finish(call_id, EndReason.CANCELLED, role)
        return await self._finish(call_id, EndReason.COMPLETED, role)

    async def feedback(
        self,
        user_id: str,
        call_id: str,
        rating: str,
        report: ReportReason | None = None,
        comment: str | None = None,
    ) -> list[Event]:
        """Keep a party's feedback. A report opens a case, blocks the pair, and may suspend
        the reported helper (whose withdrawals and notices are returned)."""
        call = await self._own_call(user_id, call_id)
        if call.state is not CallState.ENDED:
            raise BrokerError(ErrorCode.CONFLICT, "Feedback is given after the call has ended.")
        entry = Feedback(
            call_id=call_id,
            user_id=user_id,
            rating=rating,
            report=report.value if report else None,
            comment=comment,
            at=self.clock.now(),
        )
        if not await self.store.add_feedback(entry):
            raise BrokerError(ErrorCode.CONFLICT, "You have already given feedback on this call.")
        other = call.peer_of(user_id)
        if report is None or other is None:
            return []
        # A report means "never match me with this person again".
        await self.store.block(user_id, other)
        case, suspend = await self.safety.report(call, user_id, report)
        if not suspend:
            return []
        target = await self.store.get_profile(other)
        if target is None:
            return []
        limit = self.safety_settings
        _, events = await self.restrict(
            target,
            RestrictionKind.SUSPENDED,
            f"Reported by {limit.suspend_after_reports} or more different people within "
            f"{limit.report_window_days} days; pending review.",
            SYSTEM,
            SYSTEM,
            detail={"case": case.id},
        )
        return events

    # --- duty of care --------------------------------------------------------------------------
    async def restrict(
        self,
        target: Profile,
        kind: RestrictionKind,
        reason: str,
        actor: str,
        actor_role: str,
        days: int | None = None,
        detail: dict[str, object] | None = None,
    ) -> tuple[Restriction, list[Event]]:
        """Suspend or ban someone: recorded, and a helper stops being rung at once. Ending a
        banned person's live sessions is the edge's (it holds them)."""
        restriction = await self.safety.restrict(
            target, kind, reason, actor, actor_role, days, dict(detail or {})
        )
        return restriction, await self._restricted(target)

    async def reinstate(
        self, target: Profile, reason: str, actor: str, actor_role: str
    ) -> Restriction:
        return await self.safety.reinstate(target, reason, actor, actor_role)

    async def resolve_case(
        self,
        case_id: str,
        action: CaseAction,
        note: str,
        days: int | None,
        actor: str,
        org: str | None,
    ) -> tuple[Case, list[Event]]:
        case = await self.safety.resolve(case_id, action, note, days, actor, org)
        if action not in (CaseAction.SUSPEND, CaseAction.BAN):
            return case, []
        target = await self.store.get_profile(case.reported.id)
        if target is None:
            return case, []  # erased since: their pseudonym has nothing left to restrict
        kind = RestrictionKind.BANNED if action is CaseAction.BAN else RestrictionKind.SUSPENDED
        _, events = await self.restrict(
            target, kind, note, actor, Role.ADMIN.value, days, {"case": case.id}
        )
        return case, events

    async def _restricted(self, profile: Profile) -> list[Event]:
        """Stop ringing a helper who was just restricted, and tell their sessions."""
        uid = profile.user_id
        events: list[Event] = []
        if profile.role is Role.VOLUNTEER:
            await self.store.set_on_duty(uid, False)
            events.append(AvailabilityChanged(to=uid, available=False, reason="suspended"))
        elif profile.role is Role.AGENT and profile.org:
            events += await self.queues.set_agent_status(profile, "away")
            events.append(AgentStatusChanged(to=uid, state="away", reason="suspended"))
        ring = await self.store.ring_of(uid)
        if ring is not None:
            try:
                events += (await self._release(uid, ring, WithdrawReason.EXPIRED)).events
            except BrokerError:
                pass  # the ring lapsed or was answered meanwhile
        return events

    async def erase(self, profile: Profile) -> tuple[str, list[Event]]:
        """``DELETE /v1/me``: end the person's open call, then forget them."""
        events: list[Event] = []
        uid = profile.user_id
        ring = await self.store.ring_of(uid)
        if ring is not None:
            try:
                events += (await self._release(uid, ring, WithdrawReason.EXPIRED)).events
            except BrokerError:
                pass
        events += await self._drop_handover(uid)
        call_id = await self.store.current_call(uid)
        call = await self.store.get_call(call_id) if call_id else None
        if call is not None and call.state.is_open:
            reason = EndReason.CLOSED if call.state is CallState.ASSIGNED else EndReason.CANCELLED
            events += (await self._finish(call.id, reason, call.party_of(uid))).events
        if profile.role is Role.AGENT and profile.org:
            events += await self.queues.set_agent_status(profile, "away")
        pseudonym = await self.privacy.erase(profile)
        return pseudonym, [e for e in events if e.to != uid]

    # --- connections -------------------------------------------------------------------------
    async def disconnected(self, user_id: str, session_id: str, grace_s: float) -> None:
        """A connection dropped: the user has ``grace_s`` to resume before their call ends."""
        await self.store.schedule(timer(GRACE, user_id, session_id), self.clock.now() + grace_s)

    async def resumed(self, user_id: str, session_id: str) -> list[Event]:
        """The user came back within the grace period: what they must be told again."""
        await self.store.unschedule(timer(GRACE, user_id, session_id))
        return await self.replay(user_id)

    async def replay(self, user_id: str) -> list[Event]:
        events: list[Event] = await self._interrupted(user_id)
        call_id = await self.store.current_call(user_id)
        call = await self.store.get_call(call_id) if call_id else None
        if call is not None and call.state is CallState.ASSIGNED:
            events += [e for e in self._assigned(call, resumed=True) if e.to == user_id]
        elif call is not None:
            events += await self._searching(call)
        pending = await self.store.handover_of(user_id)
        handover = await self.store.get_call(pending) if pending else None
        if handover is not None:
            events += await self._searching(handover)
        ring_call_id = await self.store.ring_of(user_id)
        ring_call = await self.store.get_call(ring_call_id) if ring_call_id else None
        if ring_call is not None and ring_call.state.is_open:
            events.append(await self.dispatcher.pending_ring(ring_call, user_id))
        profile = await self.store.get_profile(user_id)
        if profile is not None and profile.role is Role.AGENT:
            events += await self.queues.replay(profile)
        return events

    async def _searching(self, call: Call) -> list[Event]:
        """What the recipient of an open call not answered yet is told again on resuming."""
        if call.state is CallState.SEARCHING:
            status = Status(
                to=call.recipient_id,
                call_id=call.id,
                state=call.state,
                notified=call.notified,
                escalation=await self.escalator.told(call),
                replaces=call.replaces,
            )
        elif call.state is CallState.QUEUED:
            status = Status(
                to=call.recipient_id,
                call_id=call.id,
                state=call.state,
                position=call.queue_position,
                eta_s=call.queue_eta_s,
                escalation=await self.escalator.told(call),
                replaces=call.replaces,
            )
        else:
            return []
        return [status]

    async def lost(self, user_id: str) -> list[Event]:
        """The grace period passed without the user coming back."""
        if await self.store.is_connected(user_id):
            return []  # they came back on a new connection
        events: list[Event] = []
        ring_call = await self.store.ring_of(user_id)
        if ring_call is not None and not await self.store.has_devices(user_id):
            events += (await self._release(user_id, ring_call, WithdrawReason.EXPIRED)).events
        # A recipient gone for good no longer waits for the volunteer they asked for.
        events += await self._drop_handover(user_id)
        call_id = await self.store.current_call(user_id)
        call = await self.store.get_call(call_id) if call_id else None
        if call is not None and call.state.is_open:
            role = call.party_of(user_id)
            reason = (
                EndReason.PEER_LOST if call.state is CallState.ASSIGNED else EndReason.CANCELLED
            )
            events += (await self._finish(call.id, reason, role)).events
            if role is Role.ASSISTANT and reason is EndReason.PEER_LOST:
                events += await self._replace_assistant(call)
        return events

    async def _replace_assistant(self, lost: Call) -> list[Event]:
        """An automatic helper vanished mid-call (it crashed): the recipient did not hang up,
        so the volunteers' search starts at once for them, with the same language, topic and
        note, without their asking again. Their ``call.status`` names the new call."""
        call = self._search_after(lost, self.clock.now())
        if not await self.store.create_call(call):
            # They asked again themselves meanwhile, or had asked for a volunteer already:
            # that search, which outlived the lost call, is the one they are told of.
            current = await self.store.current_call(lost.recipient_id)
            searching = await self.store.get_call(current) if current else None
            if searching is None or searching.replaces != lost.id or not searching.state.is_open:
                return []
            return [
                Status(
                    to=searching.recipient_id,
                    call_id=searching.id,
                    state=searching.state,
                    notified=searching.notified,
                    replaces=lost.id,
                )
            ]
        log.info("assistant lost: searching volunteers", extra={"call": call.id})
        call, events = await self.dispatcher.start(call)
        await self.lobby.track(call)
        status = Status(
            to=call.recipient_id,
            call_id=call.id,
            state=call.state,
            notified=call.notified,
            language=call.languages[call.language_index],
        )
        return [status, *events]

    async def _interrupted(self, user_id: str) -> list[Event]:
        """``call.ended`` (``failed``, by nobody) for each of the user's calls that a restart of
        a durable store ended while they were away (``RecoveringStore``)."""
        take = getattr(self.store, "take_interrupted", None)
        if take is None:
            return []
        events: list[Event] = []
        for call_id in await take(user_id):
            call = await self.store.get_call(call_id)
            party = call.party_of(user_id) if call is not None else None
            if call is None or party is None or call.end_reason is None:
                continue
            events.append(Ended(to=user_id, call_id=call_id, reason=call.end_reason, party=party))
        return events

    # --- timers ------------------------------------------------------------------------------
    async def fire_due(self, limit: int = 100) -> list[Event]:
        """Fire every timer that is due (claimed so that only one node fires each)."""
        events: list[Event] = []
        for key in await self.store.claim_due(self.clock.now(), limit):
            kind, *args = key.split("|")
            try:
                events += await self._fire(kind, args)
            except BrokerError:
                log.exception("timer %s failed", key)
        return events

    async def _fire(self, kind: str, args: list[str]) -> list[Event]:
        if kind == WAVE:
            call = await self.store.get_call(args[0])
            if call is None:
                return []
            call, rings = await self.dispatcher.wave(call)
            escalated, more = await self._after_wave(call, rings)
            await self.lobby.track(escalated or call)
            return rings + more
        if kind == EXPIRE:
            return await self._search_expired(args[0])
        if kind == RING:
            call_id, user_id = args
            if not await self.store.release_ring(call_id, user_id):
                return []
            events: list[Event] = [
                Withdrawn(to=user_id, call_id=call_id, reason=WithdrawReason.EXPIRED)
            ]
            call = await self._ring_freed(call_id)
            if call is not None and call.state is CallState.QUEUED:
                events += await self.queues.ring_lapsed(call, user_id)
            return events
        if kind == GRACE:
            return await self.lost(args[0])
        if kind == QWAIT:
            reason, events = await self.queues.deadline(args[0])
            if reason is not None:
                events += (await self._finish(args[0], reason, None)).events
            else:
                overflowed = await self.store.get_call(args[0])
                if overflowed is not None and overflowed.state is CallState.SEARCHING:
                    events += (await self._after_wave(overflowed, events))[1]
            return events
        if kind == QROUTE:
            return await self.queues.wrapup_ended(args[0])
        if kind == RESTRICTION_END:
            await self.safety.lapse(args[0])
            return []
        if kind == RETENTION:
            _, again = await self.privacy.sweep(self.safety_settings.retention_days)
            await self.store.schedule(RETENTION, again)
            return []
        log.error("unknown timer kind %r", kind)
        return []

    # --- escalation ----------------------------------------------------------------------------
    async def _after_wave(self, call: Call, events: list[Event]) -> tuple[Call | None, list[Event]]:
        """A wave rang nobody and nobody is ringing: nobody is eligible in any of the
        recipient's languages. Escalate, or tell the recipient once that nobody is free (the
        search goes on: a volunteer may come on duty). The call as escalated, if it was."""
        if (
            call.state is not CallState.SEARCHING
            or call.escalation is not None
            or any(isinstance(e, Ring) for e in events)
            or self.clock.now() >= call.search_started_at + self.settings.max_wait_s
            or await self.store.ringing(call.id)
        ):
            return None, []
        decision = await self.escalator.decide(call)
        if decision.outcome is EscalationOutcome.QUEUED:
            return await self._escalate(call, decision)
        await self.store.update_call(
            call.id,
            escalated_at=self.clock.now(),
            escalation=decision.outcome,
            retry_after_s=decision.retry_after_s,
        )
        log.info(
            "nobody eligible and no help centre to escalate to",
            extra={"call": call.id, "outcome": decision.outcome.value},
        )
        told = Status(
            to=call.recipient_id,
            call_id=call.id,
            state=CallState.SEARCHING,
            notified=call.notified,
            escalation=decision.told(),
        )
        return None, [told]

    async def _search_expired(self, call_id: str) -> list[Event]:
        """The search reached its maximum wait: escalate, or end it and tell the recipient
        when to try again."""
        call = await self.store.get_call(call_id)
        if call is None or call.state is not CallState.SEARCHING:
            return (await self._finish(call_id, EndReason.NO_ANSWER, None)).events
        decision = await self.escalator.decide(call)
        if decision.outcome is EscalationOutcome.QUEUED:
            escalated, events = await self._escalate(call, decision)
            if escalated is not None or events:
                return events
            call = await self.store.get_call(call_id)
            if call is None or call.state is not CallState.SEARCHING:
                return []  # answered or ended meanwhile
            decision = Decision(
                EscalationOutcome.FULL, retry_after_s=self.escalator.settings.retry_after_s
            )
        await self.store.update_call(
            call_id,
            escalated_at=call.escalated_at or self.clock.now(),
            escalation=decision.outcome,
            retry_after_s=decision.retry_after_s,
        )
        return (await self._finish(call_id, EndReason.NO_ANSWER, None)).events

    async def _escalate(self, call: Call, decision: Decision) -> tuple[Call | None, list[Event]]:
        """Hand a search to the help centre's queue. The call as queued (None, with events,
        when the queue filled up meanwhile and the call ended instead; None and no events when
        it was answered or ended first)."""
        assert decision.org is not None and decision.queue is not None
        handed = await self.store.escalate(
            call.id, decision.org.id, decision.queue.id, self.clock.now()
        )
        if handed is None:
            return None, []
        await self.store.lobby_drop(call.id)
        for key in (timer(WAVE, call.id), timer(EXPIRE, call.id)):
            await self.store.unschedule(key)
        events: list[Event] = []
        for user_id in handed.withdrawn:
            await self.store.unschedule(timer(RING, call.id, user_id))
            events.append(Withdrawn(to=user_id, call_id=call.id, reason=WithdrawReason.EXPIRED))
        joined = await self.queues.join_escalated(handed.call, decision.org, decision.queue)
        if joined is None:
            retry = self.escalator.settings.retry_after_s
            await self.store.update_call(
                call.id, escalation=EscalationOutcome.FULL, retry_after_s=retry
            )
            events += (await self._finish(call.id, EndReason.NO_ANSWER, None)).events
            return None, events
        queued, more = joined
        events.append(
            Status(
                to=queued.recipient_id,
                call_id=queued.id,
                state=CallState.QUEUED,
                position=queued.queue_position,
                eta_s=queued.queue_eta_s,
                escalation=decision.told(),
            )
        )
        return queued, events + more

    # --- internals -----------------------------------------------------------------------------
    async def _ring_freed(self, call_id: str) -> Call | None:
        """A ring of the call ended without an answer. With nobody else ringing, bring the next
        wave forward rather than leave the recipient waiting for its interval."""
        call = await self.store.get_call(call_id)
        if (
            call is not None
            and call.state is CallState.SEARCHING
            and not await self.store.ringing(call_id)
        ):
            await self.store.schedule(timer(WAVE, call_id), self.clock.now())
        return call

    async def _own_call(self, user_id: str, call_id: str) -> Call:
        call = await self.store.get_call(call_id)
        if call is None or call.party_of(user_id) is None:
            raise BrokerError(ErrorCode.NOT_FOUND, "You have no call with that id.")
        return call

    async def _finish(self, call_id: str, reason: EndReason, by: Role | None) -> Outcome:
        done = await self.store.finish(call_id, reason, by, self.clock.now())
        if done is None:
            return Outcome(await self.store.get_call(call_id), [])
        call = done.call
        if call.reading is not None:
            # What the reader read was for the volunteer during the call, not for the record.
            await self.store.update_call(call_id, reading=None)

        await self.store.lobby_drop(call_id)
        # Counted here because a call ends once: ``finish`` answers None the second time.
        counts = counts_of(call)
        await self.store.add_counts(
            day_of(call.requested_at), {scope: counts for scope in scopes_of(call)}
        )
        for key in (timer(WAVE, call_id), timer(EXPIRE, call_id)):
            await self.store.unschedule(key)
        withdraw = (
            WithdrawReason.CANCELLED if reason is EndReason.CANCELLED else WithdrawReason.EXPIRED
        )
        events: list[Event] = []
        for user_id in done.withdrawn:
            await self.store.unschedule(timer(RING, call_id, user_id))
            events.append(Withdrawn(to=user_id, call_id=call_id, reason=withdraw))
        retry = call.retry_after_s if reason is EndReason.NO_ANSWER else None
        events.append(
            Ended(to=call.recipient_id, call_id=call_id, reason=reason, by=by, retry_after_s=retry)
        )
        if call.helper_id is not None:
            events.append(
                Ended(
                    to=call.helper_id,
                    call_id=call_id,
                    reason=reason,
                    by=by,
                    party=call.helper_role or Role.VOLUNTEER,
                )
            )
        if call.org is not None:
            events += await self.queues.finished(call)
        log.info("call ended", extra={"call": call_id, "reason": reason.value})
        return Outcome(call, events)

    def _assigned(self, call: Call, resumed: bool = False) -> list[Event]:
        assert call.helper_id is not None
        return [
            Assigned(
                to=call.recipient_id,
                call_id=call.id,
                peer_name=call.helper_name,
                offerer=True,
                resumed=resumed,
                peer_assistant=call.helper_role is Role.ASSISTANT,
            ),
            Assigned(
                to=call.helper_id,
                call_id=call.id,
                peer_name=call.recipient_name,
                offerer=False,
                resumed=resumed,
                reading=call.reading,
            ),
        ]
