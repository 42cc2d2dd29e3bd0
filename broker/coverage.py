"""Coverage gaps: where and when requests outrun the volunteers who could answer them.

For each language and local hour of the week (in the operator's time zone): how many volunteer
requests came in over the last days, the share answered, the 90th percentile of answer time,
and how many volunteers now on duty have a ring window covering that hour (each in their own
time zone) — the shortages an operator recruits for. Calls to a partner organisation's queue
are not volunteer requests and are left out (unless they overflowed to volunteers).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field

from broker.model import local_datetime, primary_language
from broker.store.base import Store

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class CoverageCell(BaseModel):
    language: str
    weekday: str = Field(description="mon ... sun")
    hour: int = Field(description="0-23, local to the report's time zone")
    requests: int
    answered: int
    answered_pct: float | None = Field(description="null without requests")
    p90_answer_s: float | None = Field(description="nearest rank; null without answers")
    volunteers: int = Field(description="on duty now, with a ring window covering that hour")


class Coverage(BaseModel):
    """``GET /v1/stats/coverage``."""

    timezone: str
    days: int
    languages: list[str]
    cells: list[CoverageCell] = Field(description="every language x 168 hours, mon 00 first")


def p90(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)], 1)


def _hour_starts(timezone: str, now: float) -> list[float]:
    """For each local hour of the week (Monday 00:00 first), its next start after ``now``,
    half past the hour (so that a ring window edge on the hour counts as covering it)."""
    zone = ZoneInfo(timezone)
    local = datetime.fromtimestamp(now, zone)
    monday = (local - timedelta(days=local.weekday())).replace(
        hour=0, minute=30, second=0, microsecond=0
    )
    starts = []
    for n in range(7 * 24):
        wall = monday + timedelta(hours=n)
        if wall.timestamp() <= now:
            wall += timedelta(days=7)
        # Wall-clock arithmetic, then the instant: across a DST change the hour still exists
        # (an hour that does not exist that day reads as the next one).
        starts.append(wall.replace(tzinfo=zone).timestamp())
    return starts


async def coverage(store: Store, now: float, days: int, timezone: str) -> Coverage:
    # ``ended_calls`` is half-open: a call that ended at this very instant counts too.
    calls = await store.ended_calls(now - days * 86400.0, math.nextafter(now, math.inf))
    seen: dict[tuple[str, int], tuple[int, list[float]]] = {}
    languages: set[str] = set()
    for call in calls:
        if call.org is not None and call.overflowed_at is None and call.escalated_at is None:
            continue  # a partner queue's call, not a volunteer request
        language = primary_language(call.language)
        languages.add(language)
        local = local_datetime(timezone, call.requested_at)
        key = (language, local.weekday() * 24 + local.hour)
        n, answers = seen.get(key, (0, []))
        if call.answer_time_s is not None and call.helper_role is not None:
            answers.append(call.answer_time_s)
        seen[key] = (n + 1, answers)
    starts = _hour_starts(timezone, now)
    cells: list[CoverageCell] = []
    for language in sorted(languages):
        for slot, at in enumerate(starts):
            n, answers = seen.get((language, slot), (0, []))
            volunteers = len(await store.candidates(language, at))
            cells.append(
                CoverageCell(
                    language=language,
                    weekday=WEEKDAYS[slot // 24],
                    hour=slot % 24,
                    requests=n,
                    answered=len(answers),
                    answered_pct=round(100.0 * len(answers) / n, 1) if n else None,
                    p90_answer_s=p90(answers),
                    volunteers=volunteers,
                )
            )
    return Coverage(timezone=timezone, days=days, languages=sorted(languages), cells=cells)
