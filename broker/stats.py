"""Call statistics from per-day counters.

Each call is counted once, when it ends, in the UTC day it was requested: created, answered,
unanswered (nobody answered in time), cancelled, completed, and its answer time in a histogram
of fixed buckets. Counters are kept per scope: ``all``, ``lang:<primary tag>`` and
``org:<id>``. A summary of any period reads one set of counters per day, however many calls
there were, and answer-time percentiles are estimated from the histogram: linearly within the
bucket the rank falls in (the last bucket, which has no upper bound, answers its lower bound).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from broker.model import Call, EndReason, EscalationOutcome, primary_language

# Upper bounds of the answer-time buckets, in seconds; one more bucket holds the rest.
ANSWER_BUCKETS: tuple[float, ...] = (5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)
FIELDS = ("created", "answered", "unanswered", "cancelled", "completed")
# Counters added later go after the histogram, so that vectors stored before they existed
# still read right (they are padded with zeros).
LATER_FIELDS = ("escalated", "told_to_retry")
DAY = 86400.0


_HISTOGRAM_END = len(FIELDS) + len(ANSWER_BUCKETS) + 1
_SIZE = _HISTOGRAM_END + len(LATER_FIELDS)


def _index(name: str) -> int:
    if name in FIELDS:
        return FIELDS.index(name)
    return _HISTOGRAM_END + LATER_FIELDS.index(name)


class Counts:
    """One scope's counters: the five counts, then the answer-time histogram, as one vector of
    integers (summing a year of them is then a column sum, not thousands of method calls)."""

    __slots__ = ("v",)

    def __init__(self, v: list[int] | None = None, **named: int) -> None:
        self.v = list(v)[:_SIZE] + [0] * (_SIZE - len(v)) if v is not None else [0] * _SIZE
        for name, value in named.items():
            self.v[_index(name)] = value

    created = property(lambda self: self.v[0])
    answered = property(lambda self: self.v[1])
    unanswered = property(lambda self: self.v[2])
    cancelled = property(lambda self: self.v[3])
    completed = property(lambda self: self.v[4])
    escalated = property(lambda self: self.v[_HISTOGRAM_END])
    told_to_retry = property(lambda self: self.v[_HISTOGRAM_END + 1])

    @property
    def histogram(self) -> list[int]:
        return self.v[len(FIELDS) : _HISTOGRAM_END]

    def count(self, name: str, n: int = 1) -> None:
        self.v[_index(name)] += n

    def count_answer(self, bucket: int, n: int = 1) -> None:
        self.v[len(FIELDS) + bucket] += n

    def add(self, other: Counts) -> None:
        theirs = other.v if len(other.v) == _SIZE else Counts(other.v).v
        self.v = list(map(operator.add, self.v, theirs))

    @classmethod
    def total(cls, many: Iterable[Counts]) -> Counts:
        vectors = [c.v for c in many]
        if not vectors:
            return cls()
        return cls([sum(column) for column in zip(*vectors, strict=True)])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Counts) and self.v == other.v

    def __repr__(self) -> str:
        return f"Counts({self.v})"

    def packed(self) -> str:
        """The vector as text, for a store: comma-separated integers."""
        return ",".join(map(str, self.v))

    @classmethod
    def unpacked(cls, text: str) -> Counts:
        values = [int(x) for x in text.split(",")][:_SIZE]
        return cls(values + [0] * (_SIZE - len(values)))


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
        counts.count("answered")
        counts.count_answer(bucket_of(max(0.0, call.assigned_at - call.requested_at)))
    if call.end_reason is EndReason.NO_ANSWER:
        counts.count("unanswered")
    elif call.end_reason is EndReason.CANCELLED:
        counts.count("cancelled")
    elif call.end_reason is EndReason.COMPLETED:
        counts.count("completed")
    if call.escalation is EscalationOutcome.QUEUED:
        counts.count("escalated")
    elif call.escalation is not None:
        counts.count("told_to_retry")
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
        "escalated": c.escalated,
        "told_to_retry": c.told_to_retry,
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
    months: dict[str, list[Counts]] = {}
    languages: dict[str, list[Counts]] = {}
    orgs: dict[str, list[Counts]] = {}
    for day, scopes in days:
        main = scopes.get(scope or "all")
        if main is None:
            continue
        months.setdefault(day[:7], []).append(main)
        if scope is not None:
            continue
        for name, counts in scopes.items():
            if name.startswith("lang:"):
                languages.setdefault(name[5:], []).append(counts)
            elif name.startswith("org:"):
                orgs.setdefault(name[4:], []).append(counts)
    by_month = {k: Counts.total(v) for k, v in months.items()}
    by_language = {k: Counts.total(v) for k, v in languages.items()}
    by_org = {k: Counts.total(v) for k, v in orgs.items()}
    total = Counts.total(by_month.values())
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
