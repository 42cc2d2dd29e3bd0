"""The duty of care's values: reports, cases, restrictions and the audit log's entries.

Plain data, kept by the store behind its contract; ``broker.safety`` makes the decisions. A case
holds who reported whom about which call and why, never the call's texts: those are read from
the call record and the feedback when the case is shown, so that an erasure or the retention
sweep that removes them from there removes them from every case too.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from broker.model import Call, Feedback, Role


class ReportReason(enum.StrEnum):
    INAPPROPRIATE = "inappropriate"
    ABUSIVE = "abusive"
    UNSAFE = "unsafe"
    PRIVACY = "privacy"
    POOR_QUALITY = "poor_quality"
    OTHER = "other"


class RestrictionKind(enum.StrEnum):
    SUSPENDED = "suspended"
    BANNED = "banned"


class Restriction(BaseModel):
    """A helper who may not be rung, or a recipient who may not call, from ``since`` until
    ``until`` (None: until an administrator reinstates them; a ban has no end)."""

    model_config = ConfigDict(frozen=True)

    kind: RestrictionKind
    since: float
    until: float | None = None
    message: str  # what the person is told
    reason: str = ""  # why, for administrators
    by: str = "system"

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until


class CaseState(enum.StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


class CaseAction(enum.StrEnum):
    DISMISS = "dismiss"
    WARN = "warn"
    SUSPEND = "suspend"
    BAN = "ban"


class Party(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    role: Role


class Resolution(BaseModel):
    model_config = ConfigDict(frozen=True)

    action: CaseAction
    note: str
    by: str
    at: float
    days: int | None = None


class Case(BaseModel):
    """A report to review. ``seq`` orders cases (newest first) and is the pagination cursor;
    the store assigns it and the id when the case is added."""

    id: str = ""
    seq: int = 0
    state: CaseState = CaseState.OPEN
    reason: ReportReason
    opened_at: float
    org: str | None = None
    call_id: str
    reporter: Party
    reported: Party
    resolution: Resolution | None = None

    def involves(self, user_id: str) -> bool:
        return user_id in (self.reporter.id, self.reported.id)


class CaseQuery(BaseModel):
    """A filter over cases; every field that is set must match."""

    model_config = ConfigDict(frozen=True)

    state: CaseState | None = None
    reason: ReportReason | None = None
    user: str | None = None
    org: str | None = None  # an organisation's admin: only that organisation's cases

    def matches(self, case: Case) -> bool:
        return (
            (self.state is None or case.state is self.state)
            and (self.reason is None or case.reason is self.reason)
            and (self.user is None or case.involves(self.user))
            and (self.org is None or case.org == self.org)
        )


class AuditAction(enum.StrEnum):
    CASE_RESOLVE = "case.resolve"
    USER_SUSPEND = "user.suspend"
    USER_BAN = "user.ban"
    USER_REINSTATE = "user.reinstate"
    USER_ERASE = "user.erase"
    ORG_PUT = "org.put"
    RETENTION_SWEEP = "retention.sweep"


class AuditEntry(BaseModel):
    """One administrative act. The store assigns ``seq`` and ``id`` when it appends the entry;
    no operation of the contract changes an entry afterwards, except an erasure replacing the
    erased person's id with their pseudonym."""

    id: str = ""
    seq: int = 0
    at: float
    actor: str  # an administrator's id, or "system"
    actor_role: str
    action: AuditAction
    target: str
    reason: str = ""
    org: str | None = None  # the organisation the act concerns, for that organisation's admins
    detail: dict[str, Any] = Field(default_factory=dict)


class AuditQuery(BaseModel):
    model_config = ConfigDict(frozen=True)

    actor: str | None = None
    target: str | None = None
    action: AuditAction | None = None
    org: str | None = None

    def matches(self, entry: AuditEntry) -> bool:
        return (
            (self.actor is None or entry.actor == self.actor)
            and (self.target is None or entry.target == self.target)
            and (self.action is None or entry.action is self.action)
            and (self.org is None or entry.org == self.org)
        )


# --- pseudonymisation (erasure and retention) --------------------------------------------------


def scrubbed_call(call: Call, pseudonyms: Mapping[str, str]) -> Call:
    """A call with the named parties pseudonymised and the free text they wrote removed."""
    update: dict[str, Any] = {}
    if call.recipient_id in pseudonyms:
        update.update(
            recipient_id=pseudonyms[call.recipient_id],
            recipient_name="",
            topic=None,
            note=None,
            reading=None,
        )
    if call.helper_id is not None and call.helper_id in pseudonyms:
        update.update(helper_id=pseudonyms[call.helper_id], helper_name="")
    return call.model_copy(update=update) if update else call


def pseudonymised_case(case: Case, user_id: str, pseudonym: str) -> Case:
    update: dict[str, Any] = {}
    if case.reporter.id == user_id:
        update["reporter"] = case.reporter.model_copy(update={"id": pseudonym})
    if case.reported.id == user_id:
        update["reported"] = case.reported.model_copy(update={"id": pseudonym})
    return case.model_copy(update=update)


def pseudonymised_entry(entry: AuditEntry, user_id: str, pseudonym: str) -> AuditEntry:
    raw = entry.model_dump_json()
    quoted = json.dumps(user_id)
    if quoted not in raw:
        return entry
    return AuditEntry.model_validate_json(raw.replace(quoted, json.dumps(pseudonym)))


def scrubbed_feedback(fb: Feedback, pseudonyms: Mapping[str, str]) -> Feedback:
    if fb.user_id not in pseudonyms:
        return fb
    return fb.model_copy(update={"user_id": pseudonyms[fb.user_id], "comment": None})
