"""People's rights over their data: export, erasure, and the retention sweep.

Export gathers everything the store holds about one person. Erasure (after the broker has
ended their open call) removes what is theirs and replaces their id with a pseudonym wherever a
record must stay (calls, cases, the audit log): a keyed hash, so the same person signing in
again is still subject to a ban. The retention sweep does to old calls what erasure does to one
person's: it runs from a timer kept in the store like the others, one bounded batch per firing,
and puts itself back for the next day when it has caught up.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

from broker.clock import Clock
from broker.model import Call, Profile
from broker.moderation import AuditAction, CaseQuery
from broker.safety import DAY, SYSTEM, Safety
from broker.store.base import Store

log = logging.getLogger("vabroker.privacy")

RETENTION = "retention"  # timer kind
RETENTION_TIMER = RETENTION
SWEEP_BATCH = 500
_PSEUDONYM = re.compile(r"^p_[0-9a-f]{32}$")


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts is not None else None


def is_pseudonym(user_id: str) -> bool:
    return bool(_PSEUDONYM.match(user_id))


def request_hit_key(user_id: str) -> str:
    """The rate-limit key of a recipient's call requests (``Broker.request``)."""
    return f"request|{user_id}"


class Privacy:
    def __init__(self, store: Store, clock: Clock, safety: Safety) -> None:
        self.store = store
        self.clock = clock
        self.safety = safety

    async def export(self, profile: Profile) -> dict[str, Any]:
        uid = profile.user_id
        calls = await self.store.calls_of(uid)
        feedback: list[dict[str, Any]] = []
        for call in calls:
            for fb in await self.store.feedback_of(call.id):
                if fb.user_id == uid:
                    feedback.append(
                        {
                            "call": fb.call_id,
                            "rating": fb.rating,
                            "report": fb.report,
                            "comment": fb.comment,
                            "at": iso(fb.at),
                        }
                    )
        restriction = await self.safety.restriction(uid)
        reports = [
            {
                "case": c.id,
                "call": c.call_id,
                "reason": c.reason.value,
                "opened_at": iso(c.opened_at),
                "state": c.state.value,
            }
            for c in await self.store.cases(CaseQuery(user=uid), None, 10_000)
            if c.reporter.id == uid
        ]
        devices = [
            {
                "id": d.id,
                "platform": d.platform.value,
                "address": d.address[-8:],
                "created_at": iso(d.created_at),
            }
            for d in await self.store.devices(uid)
        ]
        body = profile.model_dump(mode="json", exclude={"blocked"})
        body["on_duty"] = await self.store.is_on_duty(uid)
        return {
            "exported_at": iso(self.clock.now()),
            "profile": body,
            "devices": devices,
            "calls": [_call_export(c, uid) for c in calls],
            "feedback_given": feedback,
            "blocks": sorted(profile.blocked),
            "restriction": restriction_body(restriction) if restriction else None,
            "reports_made": reports,
        }

    async def erase(self, profile: Profile) -> str:
        """Forget the person (their open call already ended); returns their pseudonym."""
        uid = profile.user_id
        pseudonym = self.safety.pseudonym(uid)
        await self.store.erase_user(uid, pseudonym, [request_hit_key(uid)])
        await self.safety.record(
            pseudonym,
            profile.role.value,
            AuditAction.USER_ERASE,
            pseudonym,
            "Erasure requested by the person.",
            org=profile.org,
        )
        log.info("user erased", extra={"user": pseudonym})
        return pseudonym

    async def sweep(self, retention_days: int) -> tuple[int, float]:
        """One batch of the retention sweep; returns how many calls it scrubbed and when it
        should run again (soon while there is more to do, else in a day)."""
        now = self.clock.now()
        cutoff = now - retention_days * DAY
        since = await self.store.get_mark(RETENTION) or 0.0
        batch = await self.store.ended_between(since, cutoff, SWEEP_BATCH)
        for call_id, ended_at in batch:
            call = await self.store.get_call(call_id)
            if call is not None:
                parties = [p for p in (call.recipient_id, call.helper_id) if p is not None]
                await self.store.scrub_call(
                    call_id,
                    {p: self.safety.pseudonym(p) for p in parties if not is_pseudonym(p)},
                )
            since = ended_at
        if batch:
            await self.store.set_mark(RETENTION, since)
            await self.safety.record(
                SYSTEM,
                SYSTEM,
                AuditAction.RETENTION_SWEEP,
                "calls",
                f"Calls that ended more than {retention_days} days ago.",
                detail={"calls": len(batch), "ended_before": iso(cutoff)},
            )
            log.info("retention sweep", extra={"calls": len(batch)})
        more = len(batch) >= SWEEP_BATCH
        return len(batch), now + (1.0 if more else DAY)


def restriction_body(r: Any) -> dict[str, Any]:
    return {
        "kind": r.kind.value,
        "since": iso(r.since),
        "until": iso(r.until),
        "message": r.message,
    }


def _call_export(call: Call, user_id: str) -> dict[str, Any]:
    role = call.party_of(user_id)
    mine = role is not None and call.recipient_id == user_id
    return {
        "call": call.id,
        "role": role.value if role else None,
        "language": call.language,
        "topic": call.topic if mine else None,
        "note": call.note if mine else None,
        "org": call.org,
        "requested": iso(call.requested_at),
        "answered": iso(call.assigned_at),
        "ended": iso(call.ended_at),
        "reason": call.end_reason.value if call.end_reason else None,
    }
