"""Duty of care: reports become cases, helpers reported by several people are suspended, and
every administrative act is written to the audit log.

The rules. A report after a call opens a case (the pairwise block stays, in ``Broker``). A
helper reported by ``suspend_after_reports`` different people within ``report_window_days`` is
suspended at once, pending review, with the system as the actor; recipients are never
suspended automatically. Restrictions are kept apart from profiles and end by a timer (a
suspension with days) or by an administrator. A ban also records that sign-ins before it are
revoked (``Store.revoked_before``).

Erased people keep their restriction under their pseudonym (a keyed hash of their id), so a ban
survives an erasure: ``restriction`` looks there too and puts it back under the id.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from broker.clock import Clock
from broker.model import BrokerError, Call, ErrorCode, Feedback, Profile, Role
from broker.moderation import (
    AuditAction,
    AuditEntry,
    Case,
    CaseAction,
    CaseQuery,
    Party,
    ReportReason,
    Resolution,
    Restriction,
    RestrictionKind,
)
from broker.store.base import Store

log = logging.getLogger("vabroker.safety")

DAY = 86400.0
SYSTEM = "system"
RESTRICTION_END = "restriction_end"  # timer kind: a suspension with an end date ends

SUSPENDED_MESSAGE = (
    "Your account is suspended while our team reviews reports about a call. "
    "You can still sign in and see your history."
)
BANNED_MESSAGE = "Your account has been closed by our team for breaking the community rules."


class SafetySettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    suspend_after_reports: int = Field(
        default=3, ge=1, le=1000, description="different reporters that suspend a helper"
    )
    report_window_days: int = Field(
        default=90, ge=1, le=3650, description="how far back reports count"
    )
    retention_days: int = Field(
        default=365, ge=1, le=36500, description="days before a call's free text is removed"
    )


@dataclass(frozen=True, slots=True)
class CaseDetail:
    """A case with the facts it is about, read when it is shown."""

    case: Case
    call: Call | None
    feedback: list[Feedback]

    @property
    def comment(self) -> str | None:
        for fb in self.feedback:
            if fb.user_id == self.case.reporter.id:
                return fb.comment
        return None


def pseudonym_of(key: bytes, user_id: str) -> str:
    """A stable, non-reversible stand-in for a user id (HMAC-SHA256 under the server's key)."""
    return "p_" + hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()[:32]


class Safety:
    def __init__(
        self, store: Store, clock: Clock, settings: SafetySettings, pseudonym_key: bytes
    ) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self.key = pseudonym_key

    def pseudonym(self, user_id: str) -> str:
        return pseudonym_of(self.key, user_id)

    # --- restrictions --------------------------------------------------------------------------
    async def restriction(self, user_id: str) -> Restriction | None:
        """The user's restriction in force now, or None."""
        now = self.clock.now()
        # Both at once (on a shared store, one round trip): an erased person who signs in
        # again finds their restriction waiting under the pseudonym.
        current, kept = await asyncio.gather(
            self.store.get_restriction(user_id),
            self.store.get_restriction(self.pseudonym(user_id)),
        )
        if current is None:
            if kept is not None and kept.active(now):
                await self.store.set_restriction(user_id, kept)
                current = kept
        if current is None or not current.active(now):
            return None
        return current

    async def check(self, user_id: str) -> None:
        """Refuse with ``suspended`` if the user is restricted now."""
        self.refuse(await self.restriction(user_id))

    @staticmethod
    def refuse(current: Restriction | None) -> None:
        """Refuse with ``suspended`` if ``current`` (``restriction()``'s answer) is in force."""
        if current is not None:
            raise BrokerError(ErrorCode.SUSPENDED, current.message, until=current.until)

    async def restrict(
        self,
        target: Profile,
        kind: RestrictionKind,
        reason: str,
        actor: str,
        actor_role: str,
        days: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Restriction:
        now = self.clock.now()
        until = now + days * DAY if days is not None and kind is RestrictionKind.SUSPENDED else None
        message = BANNED_MESSAGE if kind is RestrictionKind.BANNED else SUSPENDED_MESSAGE
        if until is not None:
            # Said in words too: a screen reader reads the message, not the ``until`` field.
            ends = datetime.fromtimestamp(until, UTC)
            message += f" It ends on {ends.day} {ends:%B %Y} at {ends:%H:%M} UTC."
        restriction = Restriction(
            kind=kind, since=now, until=until, message=message, reason=reason, by=actor
        )
        await self.store.set_restriction(target.user_id, restriction)
        key = _end_timer(target.user_id)
        if until is not None:
            await self.store.schedule(key, until)
        else:
            await self.store.unschedule(key)
        if kind is RestrictionKind.BANNED:
            await self.store.revoke_sessions(target.user_id, now)
        action = (
            AuditAction.USER_BAN if kind is RestrictionKind.BANNED else AuditAction.USER_SUSPEND
        )
        await self.record(
            actor,
            actor_role,
            action,
            target.user_id,
            reason,
            org=target.org,
            detail={"until": until, **(detail or {})},
        )
        log.info("user restricted", extra={"user": target.user_id, "kind": kind.value, "by": actor})
        return restriction

    async def reinstate(
        self, target: Profile, reason: str, actor: str, actor_role: str
    ) -> Restriction:
        gone = await self.store.clear_restriction(target.user_id)
        if gone is None or not gone.active(self.clock.now()):
            raise BrokerError(ErrorCode.CONFLICT, "That user is not restricted.")
        await self.store.unschedule(_end_timer(target.user_id))
        await self.record(
            actor,
            actor_role,
            AuditAction.USER_REINSTATE,
            target.user_id,
            reason,
            org=target.org,
            detail={"was": gone.kind.value},
        )
        return gone

    async def lapse(self, user_id: str) -> None:
        """A suspension's end date came (its timer fired)."""
        current = await self.store.get_restriction(user_id)
        if current is not None and not current.active(self.clock.now()):
            await self.store.clear_restriction(user_id)
            await self.record(
                SYSTEM,
                SYSTEM,
                AuditAction.USER_REINSTATE,
                user_id,
                "The suspension reached its end date.",
            )

    # --- reports and cases ---------------------------------------------------------------------
    async def report(self, call: Call, reporter_id: str, reason: ReportReason) -> tuple[Case, bool]:
        """Open a case for a report; True with it when the reported helper has now been
        reported by enough different people to be suspended (the caller restricts them)."""
        reported_id = call.peer_of(reporter_id)
        reporter_role = call.party_of(reporter_id)
        assert reported_id is not None and reporter_role is not None
        reported_role = call.party_of(reported_id) or Role.VOLUNTEER
        now = self.clock.now()
        case = await self.store.add_case(
            Case(
                reason=reason,
                opened_at=now,
                org=call.org,
                call_id=call.id,
                reporter=Party(id=reporter_id, role=reporter_role),
                reported=Party(id=reported_id, role=reported_role),
            )
        )
        log.info("case opened", extra={"case": case.id, "call": call.id, "reason": reason.value})
        if not reported_role.is_helper:
            return case, False  # recipients' cases wait for a person
        reporters = await self.store.note_report(
            reported_id, reporter_id, now, self.settings.report_window_days * DAY
        )
        if reporters < self.settings.suspend_after_reports:
            return case, False
        if await self.restriction(reported_id) is not None:
            return case, False  # already suspended or banned
        return case, True

    async def detail(self, case: Case) -> CaseDetail:
        call = await self.store.get_call(case.call_id)
        return CaseDetail(case, call, await self.store.feedback_of(case.call_id))

    async def get_case(self, case_id: str, org: str | None) -> Case:
        case = await self.store.get_case(case_id)
        if case is None or (org is not None and case.org != org):
            raise BrokerError(ErrorCode.NOT_FOUND, "There is no case with that id.")
        return case

    async def resolve(
        self,
        case_id: str,
        action: CaseAction,
        note: str,
        days: int | None,
        actor: str,
        org: str | None,
    ) -> Case:
        """Record a case's resolution, once. The caller restricts the reported person for
        ``suspend`` and ``ban`` (after this, so that a second resolution restricts nobody)."""
        await self.get_case(case_id, org)
        resolution = Resolution(
            action=action,
            note=note,
            by=actor,
            at=self.clock.now(),
            days=days if action is CaseAction.SUSPEND else None,
        )
        resolved = await self.store.resolve_case(case_id, resolution)
        if resolved is None:
            raise BrokerError(ErrorCode.CONFLICT, "That case is already resolved.")
        await self.record(
            actor,
            Role.ADMIN.value,
            AuditAction.CASE_RESOLVE,
            resolved.reported.id,
            note,
            org=resolved.org,
            detail={"case": resolved.id, "decision": action.value, "days": resolution.days},
        )
        return resolved

    async def warnings(self, user_id: str) -> int:
        return sum(
            1
            for c in await self.store.cases(CaseQuery(user=user_id), None, 10_000)
            if c.reported.id == user_id
            and c.resolution is not None
            and c.resolution.action is CaseAction.WARN
        )

    # --- the audit log -----------------------------------------------------------------------------
    async def record(
        self,
        actor: str,
        actor_role: str,
        action: AuditAction,
        target: str,
        reason: str,
        org: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AuditEntry:
        return await self.store.append_audit(
            AuditEntry(
                at=self.clock.now(),
                actor=actor,
                actor_role=actor_role,
                action=action,
                target=target,
                reason=reason,
                org=org,
                detail=detail or {},
            )
        )


def _end_timer(user_id: str) -> str:
    return f"{RESTRICTION_END}|{user_id}"
