"""A helper's impact record: the figures from their answered calls, and ``GET /v1/me/impact``
(JSON and CSV) over the wire."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import aiohttp

from broker.impact import impact_of
from broker.model import Call, CallState, EndReason
from tests.helpers import start_server
from tests.test_http import call_once


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


def ended(
    cid: str,
    recipient: str,
    helper: str | None,
    assigned: float | None,
    talk_s: float = 0.0,
    language: str = "en",
) -> Call:
    requested = (assigned or utc(2026, 1, 1)) - 20
    return Call(
        id=cid,
        recipient_id=recipient,
        language=language,
        languages=[language],
        state=CallState.ENDED,
        helper_id=helper,
        requested_at=requested,
        assigned_at=assigned,
        ended_at=(assigned or requested) + talk_s,
        end_reason=EndReason.COMPLETED if assigned else EndReason.NO_ANSWER,
    )


def test_only_calls_the_helper_answered_count_by_month_in_their_time_zone() -> None:
    calls = [
        ended("c1", "r1", "v1", utc(2026, 5, 3, 10), 300, "en"),
        ended("c2", "r2", "v1", utc(2026, 5, 20, 9), 90, "pt-BR"),
        ended("c3", "r1", "v1", utc(2026, 6, 1, 8), 30, "en"),
        # 23:30 UTC on 31 May is 00:30 on 1 June in London: a June call there.
        ended("c4", "r3", "v1", utc(2026, 5, 31, 23, 30), 60, "en"),
        ended("c5", "r4", "v2", utc(2026, 6, 2, 8), 600),  # someone else's
        ended("c6", "r5", None, None),  # nobody answered
    ]
    impact = impact_of("v1", reversed(calls), "Europe/London")
    assert impact.calls_answered == 4
    assert impact.minutes_helped == round(480 / 60, 1)
    assert impact.people_helped == 3
    assert impact.languages == ["en", "pt"]
    assert impact.first_call == "2026-05-03T10:00:00+00:00"
    assert impact.latest_call == "2026-06-01T08:00:00+00:00"
    assert [(m.month, m.calls, m.minutes, m.people) for m in impact.by_month] == [
        ("2026-05", 2, 6.5, 2),
        ("2026-06", 2, 1.5, 2),
    ]
    utc_months = impact_of("v1", calls, "UTC").by_month
    assert [(m.month, m.calls) for m in utc_months] == [("2026-05", 3), ("2026-06", 1)]


def test_no_calls_yet() -> None:
    impact = impact_of("v1", [])
    assert (impact.calls_answered, impact.minutes_helped, impact.people_helped) == (0, 0.0, 0)
    assert impact.first_call is None and impact.latest_call is None and impact.by_month == []


async def test_impact_over_the_wire_json_and_csv() -> None:
    async with start_server() as server:
        await call_once(server)
        async with aiohttp.ClientSession(headers=server.auth("v1", "volunteer")) as http:
            async with http.get(f"{server.url}/v1/me/impact") as resp:
                assert resp.status == 200
                body = await resp.json()
            assert body["calls_answered"] == 1 and body["people_helped"] == 1
            assert body["languages"] == ["en"] and body["first_call"] == body["latest_call"]
            [month] = body["by_month"]
            assert month["calls"] == 1 and month["people"] == 1
            async with http.get(f"{server.url}/v1/me/impact?format=csv") as resp:
                assert resp.status == 200 and resp.content_type == "text/csv"
                assert "impact.csv" in resp.headers["Content-Disposition"]
                rows = list(csv.DictReader(io.StringIO(await resp.text())))
            assert [r["month"] for r in rows] == [month["month"], "total"]
            assert rows[-1]["calls"] == "1" and rows[-1]["people"] == "1"
            async with http.get(f"{server.url}/v1/me/impact?format=xml") as resp:
                assert resp.status == 400
                assert "format must be json or csv" in (await resp.json())["message"]
        async with aiohttp.ClientSession(headers=server.auth("r1", "recipient")) as http:
            async with http.get(f"{server.url}/v1/me/impact") as resp:
                assert resp.status == 403
                assert "Only volunteers and agents" in (await resp.json())["message"]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/v1/me/impact") as resp:
                assert resp.status == 401
