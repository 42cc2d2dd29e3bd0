"""A volunteer's outlook: the dispatcher's chance of ringing them, the figures from the store
on each store at a virtual clock, and ``GET /v1/me/outlook`` over the wire."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import aiohttp
import pytest

from broker.clock import VirtualClock
from broker.dispatch import DispatchSettings
from broker.model import Call, EndReason, Profile, RingWindow, Role
from broker.outlook import (
    PRIOR_ANSWER_SHARE,
    Bucket,
    RequestHistory,
    bucket_of,
    expected_wait,
    hour_of_week,
    outlook,
    reach_per_request,
    request_history,
    ring_answer_chance,
    rings_per_search,
)
from broker.store.base import Store
from tests.helpers import start_server

DEFAULT = DispatchSettings()


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


def test_buckets() -> None:
    assert bucket_of(0.5) is Bucket.DAY and bucket_of(1.0) is Bucket.DAY
    assert bucket_of(1.01) is Bucket.THREE_DAYS and bucket_of(3.0) is Bucket.THREE_DAYS
    assert bucket_of(6.9) is Bucket.WEEK and bucket_of(29.0) is Bucket.MONTH
    assert bucket_of(31.0) is Bucket.LONGER and bucket_of(None) is Bucket.LONGER


def test_hours_of_the_week_start_on_monday_utc() -> None:
    assert hour_of_week(utc(2026, 6, 15, 0, 30)) == 0  # a Monday
    assert hour_of_week(utc(2026, 6, 16, 13)) == 24 + 13
    assert hour_of_week(utc(2026, 6, 21, 23, 59)) == 167


@pytest.mark.parametrize("pool", [2, 5, 30, 51, 400, 50_000])
@pytest.mark.parametrize("answer", [0.2, 0.45, 0.9])
def test_when_everyone_ties_each_has_the_same_share_of_a_calls_rings(
    pool: int, answer: float
) -> None:
    """Summed over a pool of equals, the chance of being rung is the rings one request sends:
    the waves' sizes while nobody has answered, as the dispatcher sends them."""
    reach = reach_per_request(DEFAULT, pool, 0.0, pool - 1.0, answer)
    rings, searching, rung, wave = 0.0, 1.0, 0, 0
    while rung < pool and wave < math.ceil(DEFAULT.max_wait_s / DEFAULT.wave_interval_s):
        k = min(pool - rung, min(DEFAULT.max_wave, round(DEFAULT.first_wave * 2**wave)))
        rings += searching * k
        searching *= (1 - answer) ** k
        rung += k
        wave += 1
    # (The model stops counting once the search is on with a chance below one in a million.)
    assert reach * pool == pytest.approx(rings, rel=1e-5)


def test_the_order_decides_who_is_rung() -> None:
    # Everyone ranked (a pool no larger than a draw): the first is rung by the first wave.
    assert reach_per_request(DEFAULT, 10, 0.0, 0.0, 0.5) == 1.0
    # Ninth of ten, nobody tied: reached only if the first waves (1, 2, 4) all went unanswered.
    assert reach_per_request(DEFAULT, 10, 8.0, 0.0, 0.5) == pytest.approx(0.5**7)
    # A country: the first of 50,000 is rung only when a wave's draw (50, 50, 50, 80 ...)
    # finds them, while nobody has answered the rings before (1, 2, 4 ...).
    first = reach_per_request(DEFAULT, 50_000, 0.0, 0.0, 0.45)
    draws, searching, expected = [50, 50, 50, 80, 160, 320, 400], 1.0, 0.0
    for wave, drawn in enumerate(draws):
        expected += searching * drawn / (50_000 - (2**wave - 1))
        searching *= 0.55 ** (2**wave)
    assert first == pytest.approx(expected, rel=1e-3)
    behind = reach_per_request(DEFAULT, 50_000, 25_000.0, 0.0, 0.45)
    tied = reach_per_request(DEFAULT, 50_000, 0.0, 49_999.0, 0.45)
    assert behind < tied < first
    # Every wave ranking everyone (candidate_factor 0) rings the first at once too.
    everyone = DispatchSettings(candidate_factor=0)
    assert reach_per_request(everyone, 50_000, 0.0, 0.0, 0.45) == 1.0
    assert reach_per_request(DEFAULT, 0, 0.0, 0.0, 0.45) == 0.0


@pytest.mark.parametrize("observed", [1.0, 1.3, 2.2, 4.0, 9.5])
def test_the_chance_per_ring_is_fitted_to_the_rings_a_search_sent(observed: float) -> None:
    chance = ring_answer_chance(DEFAULT, observed)
    assert 0 < chance <= 1
    assert rings_per_search(DEFAULT, chance) == pytest.approx(observed, rel=1e-6)
    # More rings a search, a lower chance per ring.
    assert ring_answer_chance(DEFAULT, observed + 0.5) < chance


def test_the_expected_wait_through_changing_rates() -> None:
    assert expected_wait([0.5], []) == pytest.approx(2.0)
    assert expected_wait([0.0], []) is None
    # No chance for 10 days (calls too recent), then one a week: 10 + 7 days.
    assert expected_wait([0.0, 1 / 7], [10.0]) == pytest.approx(17.0)
    # A rate of 1 a day for 2 days, then none: the mean of what comes, or never.
    assert expected_wait([1.0, 0.0], [2.0]) is None
    # Two segments: (1 - e^-2) / 1 + e^-2 * 1 / 0.5.
    assert expected_wait([1.0, 0.5], [2.0]) == pytest.approx(
        (1 - math.exp(-2)) + math.exp(-2) * 2.0
    )


def volunteer(uid: str, languages: list[str], zone: str = "UTC", window: str = "") -> Profile:
    start, _, end = (window or "08:00-22:00").partition("-")
    return Profile(
        user_id=uid,
        role=Role.VOLUNTEER,
        display_name=uid,
        languages=languages,
        timezone=zone,
        ring_window=RingWindow.model_validate({"start": start, "end": end}),
    )


async def on_duty(st: Store, *profiles: Profile) -> None:
    for p in profiles:
        await st.put_profile(p)
        await st.set_on_duty(p.user_id, True)
        await st.set_connected(p.user_id, True)


async def past_call(
    st: Store,
    cid: str,
    at: float,
    language: str,
    helper: str | None = None,
    rings: int = 0,
    org: str | None = None,
) -> None:
    call = Call(
        id=cid, recipient_id="r-" + cid, language=language, languages=[language], requested_at=at
    )
    if org is not None:
        call = call.model_copy(update={"org": org, "queue": "q"})
    assert await st.create_call(call)
    await st.update_call(cid, notified=rings)
    if helper is not None:
        day = datetime.fromtimestamp(at, UTC).date().isoformat()
        assert await st.reserve_ring(cid, helper, day, 10, at + 1)
        assert await st.assign(cid, helper, helper, Role.VOLUNTEER, at + 5) is not None
        assert await st.finish(cid, EndReason.COMPLETED, Role.RECIPIENT, at + 65) is not None
    else:
        assert await st.finish(cid, EndReason.NO_ANSWER, None, at + 180) is not None


async def test_the_figures_on_each_store_at_a_virtual_clock(each_store: Store) -> None:
    st = each_store
    clock = VirtualClock(utc(2026, 6, 15, 12))  # a Monday, noon UTC
    now = clock.now()
    me = volunteer("me", ["en-GB", "fr"], window="09:00-17:00")
    await on_duty(
        st,
        me,
        volunteer("a", ["en"]),
        volunteer("b", ["en"]),
        volunteer("tokyo", ["en"], "Asia/Tokyo", "09:00-17:00"),  # 00:00-08:00 UTC: apart
        volunteer("d", ["fr"]),
        volunteer("p", ["pt"]),
    )
    # Six English requests at 10:00 UTC, in my window, each answered by "a" after two rings;
    # two at 20:00, after my window, unanswered; three in Portuguese; a partner queue's call
    # and one older than 30 days, neither counted.
    for day in range(6):
        await past_call(st, f"en{day}", utc(2026, 6, 1 + day, 10), "en", helper="a", rings=2)
    await past_call(st, "late1", utc(2026, 6, 9, 20), "en")
    await past_call(st, "late2", utc(2026, 6, 10, 20), "en")
    for day in range(3):
        await past_call(st, f"pt{day}", utc(2026, 6, 2 + day, 14), "pt")
    await past_call(st, "org", utc(2026, 6, 3, 10), "en", org="clinic")
    await past_call(st, "old", utc(2026, 5, 1, 10), "en", helper="a", rings=1)

    history = await request_history(st, now)
    assert history.answered == 6 and history.rings == 12
    assert history.answer_share == 0.5
    report = await outlook(st, me, now, DEFAULT, history, random.Random(1))

    assert report.on_duty and report.window_hours_per_week == 7 * 8
    assert report.answer_share == 0.5
    en, fr = report.languages
    assert (en.language, fr.language) == ("en", "fr")
    # "a" and "b" share my window in English; Tokyo's window never overlaps it.
    assert en.sharing_window == 2 and fr.sharing_window == 1
    assert en.requests_30d == 6 and fr.requests_30d == 0
    # At noon: me, "a" (behind me: six calls) and "b" (tied with me: none, never rung).
    assert (en.in_window, en.place, en.tied) == (3, 1, 1)
    assert (fr.in_window, fr.place, fr.tied) == (2, 1, 1)
    # Two rings a search: the waves stop with the chance that makes them send two.
    assert history.rings_per_search == 2.0
    stops = ring_answer_chance(DEFAULT, 2.0)
    reach = reach_per_request(DEFAULT, 3, 0.0, 1.0, stops)
    assert en.rings_per_week == pytest.approx(6 / (30 / 7) * reach, abs=1e-3)
    assert en.calls_per_week == pytest.approx(en.rings_per_week * 0.5, abs=1e-3)
    assert fr.rings_per_week == 0.0
    assert report.calls_per_week == pytest.approx(en.calls_per_week, abs=1e-3)
    assert report.expected_days == pytest.approx(7 / report.calls_per_week, abs=0.1)
    assert report.bucket is bucket_of(report.expected_days)
    assert report.bucket is Bucket.MONTH
    # Over a week: where help is short. Portuguese (three requests, one volunteer), and the
    # English hour after my window with requests (20:00, "a" and "b" covering it).
    by_kind = {s.kind: s for s in report.suggestions}
    assert by_kind["language"].language == "pt" and by_kind["language"].requests_30d == 3
    assert by_kind["language"].volunteers == 1
    hours = by_kind["hours"]
    assert (hours.language, hours.hours, hours.requests_30d, hours.volunteers) == (
        "en",
        [20],
        2,
        2,
    )

    # A call of mine moves me behind "b" (and tied with nobody), a month on it counts no more.
    await past_call(st, "mine", now - 3600, "en", helper="me", rings=1)
    clock.advance(60)
    history = await request_history(st, clock.now())
    moved = await outlook(st, me, clock.now(), DEFAULT, history, random.Random(1))
    assert (moved.languages[0].place, moved.languages[0].tied) == (2, 0)
    assert moved.languages[0].requests_30d == 7

    # Off duty: counted as if on duty (the outlook is "while on duty"), among the others.
    await st.set_on_duty("me", False)
    away = await outlook(st, me, clock.now(), DEFAULT, history, random.Random(1))
    assert not away.on_duty
    assert (away.languages[0].sharing_window, away.languages[0].in_window) == (2, 3)


def test_a_history_without_rings_answers_with_the_prior() -> None:
    now = utc(2026, 6, 15)
    history = RequestHistory.of([], now)
    assert history.answer_share == PRIOR_ANSWER_SHARE and history.requests == {}
    # A call answered with no ring recorded says nothing of how rings are answered.
    unrung = Call(
        id="c1",
        recipient_id="r1",
        language="pt-BR",
        languages=["pt-BR"],
        requested_at=now - 7200,
        assigned_at=now - 7190,
        helper_id="v1",
        helper_role=Role.VOLUNTEER,
    )
    history = RequestHistory.of([unrung], now)
    assert history.answer_share == PRIOR_ANSWER_SHARE
    assert sum(history.requests["pt"]) == 1 and history.requests["pt"][hour_of_week(now - 7200)]
    rung = unrung.model_copy(update={"id": "c2", "notified": 4})
    assert RequestHistory.of([unrung, rung], now).answer_share == 0.25


async def test_a_volunteer_who_covers_a_shortage_alone_hears_soon() -> None:
    from broker.store import MemoryStore

    st = MemoryStore()
    now = utc(2026, 6, 15, 12)
    me = volunteer("me", ["pt"], window="00:00-00:00")
    await on_duty(st, me)
    for n in range(60):  # two Portuguese requests a day, all answered at the first ring
        await past_call(st, f"pt{n}", now - (n + 1) * 43_200, "pt", helper="me", rings=1)
    history = await request_history(st, now)
    report = await outlook(st, me, now, DEFAULT, history, random.Random(1))
    # The oldest is 30 days old to the second: the period includes its start.
    assert report.languages[0].requests_30d == 60
    assert report.languages[0].calls_per_week == 14.0  # alone, answering every ring
    assert report.bucket is Bucket.DAY and report.suggestions == []


async def test_outlook_over_the_wire() -> None:
    async with start_server() as server:
        async with aiohttp.ClientSession() as http:
            url = f"{server.url}/v1/me/outlook"
            async with http.get(url, headers=server.auth("v1", "volunteer")) as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.json()
            assert [lo["language"] for lo in body["languages"]] == ["en"]
            assert body["bucket"] == "longer" and body["expected_days"] is None
            assert body["ring_window"] == {"start": "00:00", "end": "00:00"}
            assert {s["kind"] for s in body["suggestions"]} <= {"language", "hours"}
            for role in ("recipient", "agent", "admin"):
                async with http.get(url, headers=server.auth("x", role, org="o")) as resp:
                    assert resp.status == 403, role
                    assert (await resp.json())["error"] == "forbidden"
            async with http.get(url + "?days=7", headers=server.auth("v1")) as resp:
                assert resp.status == 400
                assert "days" in (await resp.json())["message"]
            async with http.get(url) as resp:
                assert resp.status == 401
