"""The dispatch simulator: deterministic, its invariants hold for every policy, bad scenarios
are refused by name, and the command writes a table, JSON and plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from broker.events import Ring
from broker.policies import POLICIES
from broker.sim.engine import World, even_gini, gini, percentile, simulate
from broker.sim.scenario import Scenario, ScenarioError, load, parse, shipped
from clients.cli import main

SMALL = load("small-town", days=2)


def test_shipped_scenarios_load_by_name() -> None:
    assert {"small-town", "country", "worldwide"} <= set(shipped())
    for name in shipped():
        assert load(name).scenario.name == name
    assert load("country").volunteers.count >= 100_000


def test_same_seed_same_report_and_another_seed_differs() -> None:
    first = simulate(SMALL, "default").report()
    again = simulate(load("small-town", days=2), "default").report()
    assert first == again
    other = simulate(load("small-town", days=2, seed=7), "default").report()
    assert other != first
    assert first["calls"] > 5 and first["answered"] > 0


@pytest.mark.parametrize("policy", list(POLICIES))
def test_invariants_hold_for_every_policy(policy: str) -> None:
    result = simulate(SMALL, policy)
    report = result.report()
    assert report["violations"] == {
        "outside_window": 0,
        "outside_policy_hours": 0,
        "over_cap": 0,
        "off_duty": 0,
        "two_winners": 0,
    }
    assert result.calls > 5 and result.rings >= result.answered > 0
    # A volunteer active only after the period ends is not counted, never one too many.
    assert result.answered >= sum(result.calls_per_volunteer) > 0


async def test_the_world_counts_a_ring_the_broker_should_not_have_sent() -> None:
    world = World(SMALL, "default")
    world._people()
    world.on_duty = [False] * len(world.vol_profiles)
    world.last_ring = [-math.inf] * len(world.vol_profiles)
    night = SMALL.start + 2 * 3600  # 03:00 in Copenhagen: outside every window but "any time"
    world.clock.set(night)
    target = next(
        i for i, w in enumerate(world.vol_window) if w.start != w.end and world.vol_cap[i] == 3
    )
    for _ in range(4):
        world._rung(
            Ring(
                to=f"v{target}",
                call_id="c1",
                language="da",
                requester_name="r",
                expires_at=night + 30,
            )
        )
    assert world.violations.outside_window == 4
    assert world.violations.off_duty == 4
    assert world.violations.over_cap == 1  # the fourth ring of a cap of 3


def test_statistics_helpers() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.9) == 90.0
    assert gini([1, 1, 1, 1]) == 0.0
    assert gini([0, 0, 0, 4]) == pytest.approx(0.75)
    assert even_gini(2, 4) == pytest.approx(0.5)
    assert even_gini(8, 4) == 0.0


GOOD = (Path(__file__).parent.parent / "broker/sim/scenarios/small-town.toml").read_text()


def _with(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (GOOD + "\nsurprise = 1\n", "surprise", "unknown key"),
        (
            _with("on_duty_share = 0.5", "on_duty_share = 0.5\nmood = 1"),
            "volunteers.mood",
            "unknown",
        ),
        (_with("count = 400", "count = -5"), "volunteers.count", "greater than or equal to 1"),
        (_with('zone = "Europe/Copenhagen"', 'zone = "Mars/Olympus"'), "regions.0.zone", "IANA"),
        (_with("da = 0.9", "'d@' = 0.9"), "regions.0.languages", "BCP 47"),
        (
            _with('start = "08:00", end = "22:00"', 'start = "8am", end = "22:00"'),
            "volunteers.ring_windows.0",
            "HH:MM",
        ),
        (
            _with("hourly_profile = [0.2, 0.1,", "hourly_profile = ["),
            "recipients.hourly_profile",
            "24 values",
        ),
        (
            _with("hourly_factor = [0.2,", "hourly_factor = [1.5,"),
            "response.hourly_factor",
            "at most 1",
        ),
        (_with("duration_max_s = 300.0", "duration_max_s = 30.0"), "calls", "below"),
        (_with("days = 7", "days = 0"), "scenario.days", "greater than 0"),
        (
            _with("start = 2026-03-02T00:00:00Z", "start = 2026-03-02T00:00:00"),
            "scenario.start",
            "offset",
        ),
        (
            _with("second_languages = { en = 1.0 }", "second_languages = {}"),
            "volunteers",
            "second_languages is empty",
        ),
        (_with("accept_mean = 0.75", "accept_mean = 'high'"), "response.accept_mean", "number"),
        (GOOD + "\n[dispatch]\nfirst_wave = 0\n", "dispatch.first_wave", "greater than"),
        (GOOD + "\n[dispatch]\nwaves = 3\n", "dispatch.waves", "unknown key"),
        (GOOD.split("[calls]")[0], "calls", "missing"),
        (_with("recipients = 1", "recipients = 0"), "regions", "no region has recipients"),
    ],
)
def test_bad_scenarios_are_refused_naming_the_key(text: str, key: str, message: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse(text, "bad.toml")
    assert key in str(info.value) and message in str(info.value), str(info.value)


def test_unreadable_or_unknown_scenarios(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="not valid TOML"):
        parse("[scenario\n", "x.toml")
    with pytest.raises(ScenarioError, match="cannot read scenario"):
        load(tmp_path / "missing.toml")
    with pytest.raises(ScenarioError, match="no scenario named 'atlantis'"):
        load("atlantis")
    path = tmp_path / "mine.toml"
    path.write_text(_with('name = "small-town"', 'name = "mine"'))
    assert isinstance(load(path), Scenario) and load(path).scenario.name == "mine"


def test_command_prints_json_and_writes_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "simulate",
            "small-town",
            "--days",
            "1",
            "--json",
            "--plots",
            str(tmp_path),
            "--policy",
            "default",
            "--policy",
            "bme2014",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["policy"] for r in out["results"]] == ["default", "bme2014"]
    assert out["results"][0]["speed"]["events"] > 0
    pngs = sorted(p.name for p in tmp_path.iterdir())
    assert pngs == ["small-town-answer-time-cdf.png", "small-town-calls-per-volunteer.png"]
    assert all((tmp_path / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_command_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "small-town", "--days", "1", "--policy", "random"]) == 0
    out = capsys.readouterr().out
    assert "random" in out and "events/s" in out and "rings/answered" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--policy", "fastest"], "unknown policy 'fastest'"),
        (["--days", "-1"], "scenario.days"),
        (["--days", "100"], "scenario.days"),
        (["--circle-share", "1.5"], "--circle-share must be from 0 to 1"),
        (["--lobby-share", "-0.1"], "--lobby-share must be from 0 to 1"),
        (["--lobby-share", "0.2", "--lobby-take-after", "0"], "--lobby-take-after must be"),
        (["--store", "sqlite:///tmp/x.db"], "runs on memory:// or an empty Redis database"),
        (["--store", "postgres://db"], "not 'postgres://db'"),
        (["--store", "redis://127.0.0.1:6379/0?pool=9"], "unknown option(s) pool"),
        (["--store", "redis://:secret@127.0.0.1:notaport/0"], "redis://:***@"),
    ],
)
def test_command_refuses_bad_options(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "small-town", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_report_has_the_coverage_gaps_of_the_run() -> None:
    from clients.simulate import as_json, coverage_gaps

    result = simulate(SMALL, "default")
    cov = result.coverage
    assert cov is not None and cov.timezone == "Europe/Copenhagen"
    # Every call of the run is in it once, in the hour it was asked for, answered or not.
    assert sum(c.requests for c in cov.cells) == result.calls
    assert sum(c.answered for c in cov.cells) == result.answered
    assert set(cov.languages) <= {"da", "en"} and len(cov.cells) == 168 * len(cov.languages)
    assert max(c.volunteers for c in cov.cells) > 0
    gaps = coverage_gaps(result, limit=5)
    assert 0 < len(gaps) <= 5 and all(c.requests for c in gaps)
    shares = [c.answered_pct for c in gaps]
    assert shares == sorted(shares)  # the worst first
    rest = [c for c in cov.cells if c.requests and c not in gaps]
    assert all((c.answered_pct or 0.0) >= (shares[-1] or 0.0) for c in rest)
    assert as_json(result)["coverage"] == cov.model_dump(mode="json")


def test_the_command_reports_coverage_as_a_table_and_in_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["simulate", "small-town", "--days", "1", "--policy", "default"]) == 0
    out = capsys.readouterr().out
    assert "coverage gaps" in out and "p90 s" in out and "volunteers" in out
    assert main(["simulate", "small-town", "--days", "1", "--policy", "default", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["results"][0]
    cells = report["coverage"]["cells"]
    assert sum(c["requests"] for c in cells) == report["calls"]
    assert {"weekday", "hour", "answered_pct", "p90_answer_s", "volunteers"} <= set(cells[0])


def test_the_outlook_is_compared_with_the_first_calls_that_came() -> None:
    """The outlook asked of a sample at the end of a warm-up, against the calls that came:
    every figure of the report follows from the volunteers' own records."""
    from broker.outlook import bucket_of
    from broker.sim.outlook_check import check_outlook

    check = check_outlook(load("small-town", days=14), 8, 80)
    report = check.report()
    people = check.volunteers
    assert report["sampled"] == len(people) == 80 and len({c.user_id for c in people}) == 80
    assert report["measured_days"] == 6
    called = [c for c in people if c.wait_days is not None]
    assert report["first_calls"] == len(called) > 0
    for c in people:
        assert 0 <= c.on_duty_days <= 6 + 1e-9
        assert c.wait_days is None or 0 <= c.wait_days <= c.on_duty_days
        assert c.bucket is bucket_of(c.estimate_days)
        cut = c.on_duty_days
        estimate = cut if c.estimate_days is None else min(c.estimate_days, cut)
        assert c.error_days == pytest.approx(abs(estimate - (c.wait_days or cut)))
    errors = sorted(c.error_days for c in people)
    assert report["median_abs_error_days"] == round((errors[39] + errors[40]) / 2, 1)
    expected = sum(
        1 - math.exp(-c.on_duty_days / c.estimate_days) for c in people if c.estimate_days
    )
    assert report["expected_first_calls"] == round(expected, 1)
    # By band of the estimate: everyone once, the predictions and the calls summed.
    bands = report["calibration"]
    assert sum(b["volunteers"] for b in bands) == 80
    assert sum(b["first_calls"] for b in bands) == report["first_calls"]
    assert sum(b["expected_first_calls"] for b in bands) == pytest.approx(expected, abs=0.5)
    for band in bands:
        top = band["estimate_days_up_to"]
        inside = [
            c
            for c in people
            if (c.estimate_days is None and top is None)
            or (
                c.estimate_days is not None
                and band["estimate_days_above"] < c.estimate_days <= (top or math.inf)
            )
        ]
        assert band["volunteers"] == len(inside)
    # The estimates are the volunteers' own, not one figure for all.
    assert len({c.estimate_days for c in people}) > 5
    assert sum(report["estimated_buckets"].values()) == 80
    # The same seed, the same comparison; another seed, another.
    assert check_outlook(load("small-town", days=14), 8, 80).report() == report
    assert check_outlook(load("small-town", days=14, seed=5), 8, 80).report() != report


def test_what_the_run_can_tell_of_one_volunteer() -> None:
    from broker.outlook import Bucket
    from broker.sim.outlook_check import Checked

    # Told "within 3 days" (2.5 on average), called after 1.5 days on duty: held, same range.
    soon = Checked("v1", 2.5, Bucket.THREE_DAYS, on_duty_days=6.0, wait_days=1.5)
    assert (soon.same_bucket, soon.sentence_held, soon.error_days) == (True, True, 1.0)
    assert soon.expected_first_call == pytest.approx(1 - math.exp(-6 / 2.5))
    # Called within the day: what was said held, in another range.
    sooner = Checked("v2", 2.5, Bucket.THREE_DAYS, on_duty_days=6.0, wait_days=0.5)
    assert (sooner.same_bucket, sooner.sentence_held) == (False, True)
    # No call in 6 days on duty after "within 3 days": wrong, by at least 3.5 days.
    late = Checked("v3", 2.5, Bucket.THREE_DAYS, on_duty_days=6.0, wait_days=None)
    assert (late.same_bucket, late.sentence_held, late.error_days) == (False, False, 3.5)
    # "More than a month" and no call in 6 days: the run cannot tell yet, and sees no error.
    long = Checked("v4", 90.0, Bucket.LONGER, on_duty_days=6.0, wait_days=None)
    assert (long.same_bucket, long.sentence_held, long.error_days) == (None, None, 0.0)
    # ... but a call after 2 days says it was wrong.
    wrong = Checked("v5", None, Bucket.LONGER, on_duty_days=6.0, wait_days=2.0)
    assert (wrong.same_bucket, wrong.sentence_held, wrong.error_days) == (False, False, 4.0)
    assert wrong.expected_first_call == 0.0


def test_command_checks_the_outlook(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "small-town", "--days", "10", "--warm-up", "7", "--outlook", "30"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["outlook"]
    assert out["sampled"] == 30 and out["warm_up_days"] == 7 and out["policy"] == "default"
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "median abs error days" in table and "expected first calls" in table
    assert "estimate 7-30 days" in table and "estimate over 240 days or none" in table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--outlook", "0"], "the sample must be at least 1 volunteer, not 0"),
        (["--outlook", "5", "--warm-up", "7"], "shorter than the run (7 days)"),
        (["--outlook", "5", "--warm-up", "0"], "the warm-up (0 days) must be above 0"),
        (["--outlook", "5", "--store", "redis://127.0.0.1:1/0"], "the memory store only"),
    ],
)
def test_the_outlook_check_refuses_bad_options(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "small-town", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["first", "only"])
def test_circles_are_modelled_and_the_rules_still_hold(mode: str) -> None:
    from broker.sim.scenario import Circles

    scenario = SMALL.model_copy(update={"circles": Circles(share=0.4, size=3, mode=mode)})
    result = simulate(scenario, "default")
    report = result.report()
    assert sum(report["violations"].values()) == 0
    assert 0 < report["circle_answered_by_member"] <= report["circle_calls"] <= report["calls"]
    # Deterministic, and a scenario without circles reports none and runs as before.
    assert simulate(scenario, "default").report() == report
    plain = simulate(SMALL, "default").report()
    assert "circle_calls" not in plain
    assert plain == simulate(load("small-town", days=2), "default").report()


def test_command_takes_circles(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "small-town", "--days", "1", "--policy", "default", "--json"]
    assert main([*argv, "--circle-share", "0.5", "--circle-mode", "only"]) == 0
    [report] = json.loads(capsys.readouterr().out)["results"]
    assert report["circle_calls"] > 0


def test_the_lobby_is_modelled_and_the_rules_still_hold() -> None:
    """Watchers take requests (through the broker's ``take``, which refuses what they may not
    take); every rule holds, nobody is assigned twice, and the run is deterministic."""
    from broker.sim.scenario import Lobby

    busy = SMALL.model_copy(
        update={"lobby": Lobby(watch_share=0.5, take_median_s=3.0, take_sigma=0.3)}
    )
    report = simulate(busy, "default").report()
    assert sum(report["violations"].values()) == 0
    assert 0 < report["lobby_taken"] <= report["answered"]
    assert report["lobby_taken_share"] == round(report["lobby_taken"] / report["answered"], 4)
    assert 0 < report["share_rung"] <= 1
    assert simulate(busy, "default").report() == report
    # Modelled with nobody watching: no take, and the same calls as the plain run.
    nobody = simulate(SMALL.model_copy(update={"lobby": Lobby(watch_share=0.0)}), "default")
    base = nobody.report()
    assert base["lobby_taken"] == 0
    plain = simulate(SMALL, "default").report()
    assert "lobby_taken" not in plain and "share_rung" not in plain
    assert {k: v for k, v in base.items() if not k.startswith(("lobby", "share_rung"))} == plain
    # Takes answer calls that rings would otherwise have answered: fewer rings per answer.
    assert report["rings_per_answered_call"] < base["rings_per_answered_call"]


def test_command_takes_the_lobby(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "small-town", "--days", "1", "--policy", "default", "--json"]
    assert main([*argv, "--lobby-share", "0.5", "--lobby-take-after", "3"]) == 0
    [report] = json.loads(capsys.readouterr().out)["results"]
    assert report["lobby_taken"] > 0


def _two_stores_scenario(seed: int) -> Scenario:
    """A town busy enough for figures (about 140 calls in a day) with few duty changes."""
    text = GOOD
    for old, new in [
        ('name = "small-town"', 'name = "two-stores"'),
        ("days = 7", "days = 1"),
        ("count = 400", "count = 1000"),
        ("count = 25", "count = 150"),
        ("calls_per_day = 6.0", "calls_per_day = 150.0"),
        ("on_duty_session_h = 24.0", "on_duty_session_h = 500.0"),
    ]:
        assert old in text, old
        text = text.replace(old, new, 1)
    return parse(text, "two-stores", seed=seed)


FIGURES = (
    "answer_p50_s",
    "answered_within_30s_share",
    "rings_per_answered_call",
    "share_with_call",
    "gini_among_helpers",
)


def test_a_redis_store_gives_the_same_figures_as_memory_within_the_seeds_noise() -> None:
    """The dispatcher draws its candidates through the store contract, so on Redis a policy
    ranks as in memory: each figure of a run on Redis lies in the spread that other seeds give
    in memory. ``bme2014`` rings recent helpers first (few volunteers get the calls, unevenly),
    which needs ``last_call_at`` and the recent helpers from the store."""
    from tests.redis_procs import RedisServer

    with RedisServer.start() as server:
        for policy in ("bme2014", "default"):
            memory = [simulate(_two_stores_scenario(seed), policy).report() for seed in range(1, 6)]
            redis = simulate(_two_stores_scenario(1), policy, server.url).report()
            assert (
                redis["violations"]
                == memory[0]["violations"]
                == dict.fromkeys(memory[0]["violations"], 0)
            )
            assert redis["calls"] == memory[0]["calls"] > 100  # the same world
            for figure in FIGURES:
                values = [m[figure] for m in memory]
                low, high = min(values), max(values)
                slack = max((high - low) / 2, 0.01)
                assert low - slack <= redis[figure] <= high + slack, (policy, figure, redis, values)
            if policy == "bme2014":
                bme = redis
        assert bme["gini_among_helpers"] > 0.2 and redis["gini_among_helpers"] < 0.05
        assert bme["share_with_call"] < redis["share_with_call"] / 2


def test_command_refuses_a_redis_database_that_holds_keys_or_does_not_answer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import redis

    from tests.redis_procs import RedisServer

    with RedisServer.start() as server:
        client = redis.Redis(port=server.port)
        client.set("someone-else", "1")
        argv = ["simulate", "small-town", "--days", "0.1", "--policy", "random"]
        assert main([*argv, "--store", server.url]) == 2
        assert "holds keys: the simulator needs an empty one" in capsys.readouterr().err
        assert client.get("someone-else") == b"1"  # never emptied: it was not ours
        client.delete("someone-else")
        assert main([*argv, "--store", server.url]) == 0
        assert client.dbsize() == 0  # what the run wrote is gone
        client.close()
        port = server.port
    assert main([*argv, "--store", f"redis://127.0.0.1:{port}/0?timeout=0.5"]) == 2
    assert "Redis" in capsys.readouterr().err
