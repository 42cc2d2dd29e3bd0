"""Coverage gaps: requests, answered share, p90 answer time and volunteers on duty whose window
covers each local hour of the week, by language; and ``GET /v1/stats/coverage`` over the wire."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import aiohttp
import pytest

from broker.clock import VirtualClock
from broker.coverage import Coverage, coverage, p90
from broker.dispatch import DispatchSettings
from broker.model import Profile, RingWindow, Role
from broker.service import Broker
from broker.store.memory import MemoryStore
from tests.helpers import start_server


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


def cell(report: Coverage, language: str, weekday: str, hour: int) -> tuple[object, ...]:
    [found] = [
        c for c in report.cells if (c.language, c.weekday, c.hour) == (language, weekday, hour)
    ]
    return (
        found.requests,
        found.answered,
        found.answered_pct,
        found.p90_answer_s,
        found.volunteers,
    )


def test_p90_is_the_nearest_rank() -> None:
    assert p90([]) is None
    assert p90([5.0]) == 5.0
    assert p90([float(x) for x in range(1, 11)]) == 9.0
    assert p90([float(x) for x in range(1, 12)]) == 10.0


async def test_requests_answers_and_volunteers_by_local_hour_of_the_week() -> None:
    store = MemoryStore()
    # Monday 15 June 2026, 08:10 UTC = 09:10 in London.
    clock = VirtualClock(utc(2026, 6, 15, 8, 10))
    broker = Broker(store, clock, DispatchSettings(max_wait_s=60), rng=random.Random(1))
    day = Profile(
        user_id="v-day",
        role=Role.VOLUNTEER,
        languages=["en"],
        timezone="Europe/London",
        ring_window=RingWindow.model_validate({"start": "08:00", "end": "18:00"}),
    )
    night = Profile(
        user_id="v-night",
        role=Role.VOLUNTEER,
        languages=["en", "fr"],
        timezone="America/New_York",  # 22:00-02:00 there is 03:00-07:00 in London (summer)
        ring_window=RingWindow.model_validate({"start": "22:00", "end": "02:00"}),
    )
    for v in (day, night):
        await store.put_profile(v)
        await store.set_on_duty(v.user_id, True)
        await store.set_connected(v.user_id, True)
    rec = Profile(user_id="r1", role=Role.RECIPIENT, languages=["en"])
    await store.put_profile(rec)
    answered = await broker.request(rec)
    assert answered.call is not None
    clock.advance(30)
    await broker.accept(day, answered.call.id)
    clock.advance(60)
    await broker.end("r1", answered.call.id)
    clock.advance(600)  # 09:21 London: nobody answers this one
    await store.set_on_duty("v-day", False)
    missed = await broker.request(rec)
    assert missed.call is not None
    clock.advance(60)
    await broker.fire_due()
    await store.set_on_duty("v-day", True)
    report = await coverage(store, clock.now(), 30, "Europe/London")
    assert report.languages == ["en"] and len(report.cells) == 7 * 24
    assert cell(report, "en", "mon", 9) == (2, 1, 50.0, 30.0, 1)
    assert cell(report, "en", "mon", 2) == (0, 0, None, None, 0)  # 21:30 in New York
    assert cell(report, "en", "tue", 4)[-1] == 1  # the New York volunteer's night
    assert cell(report, "en", "sun", 17)[-1] == 1 and cell(report, "en", "sun", 18)[-1] == 0
    # In New York's hours the same requests fall at 04:00 on Monday.
    there = await coverage(store, clock.now(), 30, "America/New_York")
    assert cell(there, "en", "mon", 4)[:2] == (2, 1)
    # Nothing older than the period counts.
    assert (await coverage(store, clock.now() + 31 * 86400, 30, "UTC")).languages == []


async def test_coverage_over_the_wire() -> None:
    async with start_server() as server:
        headers = server.auth("boss", "admin")
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(f"{server.url}/v1/stats/coverage?days=7&tz=Europe/London") as r:
                assert r.status == 200
                body = await r.json()
            assert (body["timezone"], body["days"], body["cells"]) == ("Europe/London", 7, [])
            for query, named in (
                ("days=0", "days"),
                ("days=91", "days"),
                ("days=x", "days"),
                ("tz=Mars/Base", "tz"),
                ("colour=red", "colour"),
            ):
                async with http.get(f"{server.url}/v1/stats/coverage?{query}") as r:
                    assert r.status == 400, query
                    assert named in (await r.json())["message"]
        for sub, role, claims in (("own", "admin", {"org": "bank"}), ("r1", "recipient", {})):
            headers = server.auth(sub, role, **claims)
            async with (
                aiohttp.ClientSession(headers=headers) as http,
                http.get(f"{server.url}/v1/stats/coverage") as r,
            ):
                assert r.status == 403


@pytest.mark.parametrize("tz", ["UTC", "Europe/London", "Australia/Lord_Howe"])
async def test_every_hour_of_the_week_is_there_once(tz: str) -> None:
    from broker.coverage import _hour_starts

    starts = _hour_starts(tz, utc(2026, 10, 24, 12))  # a week across the autumn change
    assert len(starts) == 168 and len(set(starts)) == 168
