"""A helper's record of what they did: calls answered, minutes helped, people helped,
languages, first and latest call, by month.

Volunteers asked for a record of their help; this is it, computed from their own call history
(the calls they answered), never from anyone else's data. People are counted by the
recipient's id in the call record, which erasure replaces by a pseudonym: an erased person
still counts once.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from broker.model import Call, local_datetime, primary_language

# How many of a helper's latest calls the record reads (``Store.calls_of``'s limit).
IMPACT_CALLS = 10_000


class MonthImpact(BaseModel):
    month: str = Field(description="YYYY-MM, in the helper's own time zone")
    calls: int = Field(description="calls answered that month")
    minutes: float = Field(description="minutes in those calls, to a tenth")
    people: int = Field(description="different people helped that month")


class Impact(BaseModel):
    """``GET /v1/me/impact``."""

    calls_answered: int
    minutes_helped: float
    people_helped: int
    languages: list[str] = Field(description="primary language tags of the calls answered")
    first_call: str | None = Field(description="ISO 8601 UTC; null before the first call")
    latest_call: str | None
    by_month: list[MonthImpact] = Field(description="oldest first; months without calls left out")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def impact_of(user_id: str, calls: Iterable[Call], timezone: str = "UTC") -> Impact:
    """The record of ``user_id`` from their ended calls (any order): only calls they answered
    count, each by when it was answered."""
    answered = sorted(
        (c for c in calls if c.helper_id == user_id and c.assigned_at is not None),
        key=lambda c: c.assigned_at or 0.0,
    )
    months: dict[str, tuple[int, float, set[str]]] = {}
    for call in answered:
        assert call.assigned_at is not None
        month = local_datetime(timezone, call.assigned_at).strftime("%Y-%m")
        n, seconds, people = months.get(month, (0, 0.0, set()))
        people.add(call.recipient_id)
        months[month] = (n + 1, seconds + (call.duration_s or 0.0), people)
    total_s = sum(c.duration_s or 0.0 for c in answered)
    return Impact(
        calls_answered=len(answered),
        minutes_helped=round(total_s / 60, 1),
        people_helped=len({c.recipient_id for c in answered}),
        languages=sorted({primary_language(c.language) for c in answered}),
        first_call=_iso(answered[0].assigned_at or 0.0) if answered else None,
        latest_call=_iso(answered[-1].assigned_at or 0.0) if answered else None,
        by_month=[
            MonthImpact(month=m, calls=n, minutes=round(s / 60, 1), people=len(p))
            for m, (n, s, p) in sorted(months.items())
        ],
    )
