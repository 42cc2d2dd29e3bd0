"""Call statistics from per-day counters.

Each call is counted once, when it ends, in the UTC day it was requested: created, answered,
unanswered (nobody answered in time), cancelled, completed, and its answer time in a histogram
of fixed buckets. Counters are kept per scope: ``all``, ``lang:<primary tag>`` and
``org:<id>``. A summary of any period reads one set of counters per day, however many calls
there were, and answer-time percentiles are estimated from the histogram: linearly within the
bucket the rank falls in (the last bucket, which has no upper bound, answers its lower bound).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from broker.model import Call, EndReason, primary_language

# Upper bounds of the answer-time buckets, in seconds; one more bucket holds the rest.
ANSWER_BUCKETS: tuple[float, ...] = (5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)
FIELDS = ("created", "answered", "unanswered", "cancelled", "completed")
DAY = 86400.0


@dataclass(slots=True)
class Counts:
    created: int = 0
    answered: int = 0
    unanswered: int = 0
    cancelled: int = 0
    completed: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * (len(ANSWER_BUCKETS) + 1))

    def add(self, other: Counts) -> None:
        self.created += other.created
        self.answered += other.answered
        self.unanswered += other.unanswered
        self.cancelled += other.cancelled
        self.completed += other.completed
        hist = self.histogram
        for i, n in enumerate(other.histogram):
            hist[i] += n

    def as_fields(self) -> dict[str, int]:
        """Flat ``name -> count`` (histogram buckets as ``h0``, ``h1`` ...), zeros left out."""
        out = {name: getattr(self, name) for name in FIELDS}
        out.update({f"h{i}": n for i, n in enumerate(self.histogram)})
        return {k: v for k, v in out.items() if v}

    @classmethod
    def from_fields(cls, fields: Mapping[str, int | str]) -> Counts:
        counts = cls()
        for name, value in fields.items():
            if name.startswith("h"):
                index = int(name[1:])
                if index < len(counts.histogram):
                    counts.histogram[index] += int(value)
            elif name in FIELDS:
                setattr(counts, name, getattr(counts, name) + int(value))
        return counts


def day_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).date().isoformat()


def days_between(since: float, until: float) -> list[str]:
    """The UTC days that ``[since, until)`` touches, oldest first."""
    if until <= since:
        return []
    first = datetime.fromtimestamp(since, UTC).date()
    last = datetime.fromtimestamp(until - 1e-6, UTC).date()
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def bucket_of(answer_s: float) -> int:
    for i, bound in enumerate(ANSWER_BUCKETS):
        if answer_s <= bound:
            return i
    return len(ANSWER_BUCKETS)


def counts_of(call: Call) -> Counts:
    """What one ended call adds to its day's counters."""
    counts = Counts(created=1)
    if call.assigned_at is not None:
        counts.answered = 1
        counts.histogram[bucket_of(max(0.0, call.assigned_at - call.requested_at))] = 1
    if call.end_reason is EndReason.NO_ANSWER:
        counts.unanswered = 1
    elif call.end_reason is EndReason.CANCELLED:
        counts.cancelled = 1
    elif call.end_reason is EndReason.COMPLETED:
        counts.completed = 1
    return counts


def scopes_of(call: Call) -> list[str]:
    scopes = ["all", "lang:" + primary_language(call.language)]
    if call.org is not None:
        scopes.append("org:" + call.org)
    return scopes


def percentile(histogram: list[int], q: float) -> float | None:
    """The ``q``-th percentile (0-100) estimated from bucket counts; None when empty."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = q / 100.0 * total
    seen = 0
    for i, n in enumerate(histogram):
        if n and seen + n >= rank:
            low = ANSWER_BUCKETS[i - 1] if i > 0 else 0.0
            if i == len(ANSWER_BUCKETS):
                return float(low)
            high = ANSWER_BUCKETS[i]
            return round(low + (high - low) * max(0.0, rank - seen) / n, 2)
        seen += n
    return float(ANSWER_BUCKETS[-1])


def _pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


def summary(c: Counts) -> dict[str, Any]:
    return {
        "created": c.created,
        "answered": c.answered,
        "unanswered": c.unanswered,
        "cancelled": c.cancelled,
        "completed": c.completed,
        "completed_pct": _pct(c.completed, c.created),
        "answer_s": {
            "p50": percentile(c.histogram, 50),
            "p90": percentile(c.histogram, 90),
            "p99": percentile(c.histogram, 99),
        },
    }


def histogram_body(c: Counts) -> list[dict[str, Any]]:
    bounds: list[float | None] = [*ANSWER_BUCKETS, None]
    return [{"le": b, "count": n} for b, n in zip(bounds, c.histogram, strict=True)]


def report(days: Iterable[tuple[str, Mapping[str, Counts]]], scope: str | None) -> dict[str, Any]:
    """``GET /v1/stats``'s body from each day's counters by scope. ``scope`` set (an
    organisation's admin): only that scope's figures, no breakdown by organisation."""
    total = Counts()
    by_month: dict[str, Counts] = {}
    by_language: dict[str, Counts] = {}
    by_org: dict[str, Counts] = {}
    for day, scopes in days:
        main = scopes.get(scope or "all")
        if main is None:
            continue
        total.add(main)
        by_month.setdefault(day[:7], Counts()).add(main)
        if scope is not None:
            continue
        for name, counts in scopes.items():
            if name.startswith("lang:"):
                by_language.setdefault(name[5:], Counts()).add(counts)
            elif name.startswith("org:"):
                by_org.setdefault(name[4:], Counts()).add(counts)
    return {
        "total": summary(total),
        "by_month": {k: summary(v) for k, v in sorted(by_month.items())},
        "by_language": {k: summary(v) for k, v in sorted(by_language.items())},
        "by_org": {k: summary(v) for k, v in sorted(by_org.items())},
        "monthly": [
            {
                "month": k,
                "created": v.created,
                "completed": v.completed,
                "completed_pct": _pct(v.completed, v.created),
            }
            for k, v in sorted(by_month.items())
        ],
        "answer_histogram": histogram_body(total),
    }


def today(now: float) -> str:
    return day_of(now)


def midnight(day: str) -> float:
    return datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC).timestamp()
