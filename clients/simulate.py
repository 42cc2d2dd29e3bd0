"""``vabroker simulate``: run dispatch policies through a scenario and compare them.

A table on the terminal, the same figures as JSON with ``--json``, and plots (answer-time CDF,
calls per volunteer) as PNG files with ``--plots DIR``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI builds its parser on every start: import the simulator when it runs
    from broker.sim.engine import Result
    from broker.sim.scenario import Scenario

POLICY_NAMES = "default, bme2014, bme2014-batch, ringall, fewestcalls, leastrecent, random"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "scenario",
        help="a shipped scenario (small-town, country, worldwide) or a path to a .toml file",
    )
    p.add_argument(
        "--policy",
        action="append",
        help=f"policy to run, repeatable, or 'all' ({POLICY_NAMES}); default: bme2014 and default",
    )
    p.add_argument("--seed", type=int, help="replace the scenario's seed")
    p.add_argument("--days", type=float, help="replace the scenario's length in days")
    p.add_argument(
        "--lobby-share",
        type=float,
        help="model the lobby: this share of volunteers (0 to 1) watch it while on duty",
    )
    p.add_argument(
        "--lobby-take-after",
        type=float,
        help="median seconds after a request before a watcher takes it (default 20)",
    )
    p.add_argument(
        "--circle-share",
        type=float,
        help="replace the share of recipients with a trusted circle (0 to 1)",
    )
    p.add_argument(
        "--circle-mode",
        choices=["first", "only"],
        help="how those recipients ask their circle",
    )
    p.add_argument(
        "--store",
        default="memory://",
        help="the store the broker runs on: memory:// (default) or an empty Redis database "
        "(redis://HOST:PORT/DB, redis+cluster://HOST:PORT), emptied after each policy's run",
    )
    p.add_argument(
        "--outlook",
        type=int,
        metavar="N",
        help="instead: check the volunteer outlook (GET /v1/me/outlook) of N volunteers drawn at "
        "random against when their next call came, policy default (docs/dispatch.md)",
    )
    p.add_argument(
        "--warm-up",
        type=float,
        default=30.0,
        metavar="DAYS",
        help="with --outlook: days run before the outlook is asked (its 30 days of history); "
        "the rest of --days is the measured period (default 30)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plots", type=Path, help="write PNG plots to this folder")


def policies(chosen: list[str] | None) -> list[str]:
    from broker.policies import POLICIES

    names = chosen or ["bme2014", "default"]
    if "all" in names:
        return list(POLICIES)
    bad = [n for n in names if n not in POLICIES]
    if bad:
        raise ValueError(f"unknown policy {bad[0]!r}: expected one of {', '.join(POLICIES)} or all")
    return list(dict.fromkeys(names))


def with_circles(scenario: Scenario, share: float | None, mode: str | None) -> Scenario:
    """The scenario with its ``[circles]`` table changed by the command line."""
    from broker.sim.scenario import Circles

    if share is None and mode is None:
        return scenario
    if share is not None and not 0 <= share <= 1:
        raise ValueError(f"--circle-share must be from 0 to 1, not {share}")
    values = scenario.circles.model_dump()
    if share is not None:
        values["share"] = share
    if mode is not None:
        values["mode"] = mode
    return scenario.model_copy(update={"circles": Circles.model_validate(values)})


def with_lobby(scenario: Scenario, share: float | None, take_after: float | None) -> Scenario:
    """The scenario with its ``[lobby]`` table changed by the command line."""
    from broker.sim.scenario import Lobby

    if share is None and take_after is None:
        return scenario
    if share is not None and not 0 <= share <= 1:
        raise ValueError(f"--lobby-share must be from 0 to 1, not {share}")
    if take_after is not None and not 0 < take_after <= 3600:
        raise ValueError(f"--lobby-take-after must be above 0 and at most 3600, not {take_after}")
    values = scenario.lobby.model_dump()
    if share is not None:
        values["watch_share"] = share
    if take_after is not None:
        values["take_median_s"] = take_after
    return scenario.model_copy(update={"lobby": Lobby.model_validate(values)})


def run(args: argparse.Namespace) -> int:
    from broker.sim.engine import check_store_url, simulate
    from broker.sim.scenario import ScenarioError, load, shipped
    from broker.store import StoreUnavailable

    try:
        names = policies(args.policy)
        scenario = load(args.scenario, seed=args.seed, days=args.days)
        scenario = with_circles(scenario, args.circle_share, args.circle_mode)
        scenario = with_lobby(scenario, args.lobby_share, args.lobby_take_after)
        check_store_url(args.store)
    except (ValueError, ScenarioError) as exc:
        print(f"vabroker simulate: {exc}", file=sys.stderr)
        if isinstance(exc, ScenarioError) and "no scenario named" in str(exc):
            print(f"shipped scenarios: {', '.join(shipped())}", file=sys.stderr)
        return 2
    if args.outlook is not None:
        return run_outlook(scenario, args)
    results: list[Result] = []
    for name in names:
        if not args.json:
            print(f"simulating {name} on {scenario.scenario.name} ...", file=sys.stderr)
        try:
            results.append(simulate(scenario, name, args.store))
        except (ValueError, StoreUnavailable) as exc:
            print(f"vabroker simulate: {exc}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps({"results": [as_json(r) for r in results]}, indent=2))
    else:
        table(results)
        coverage_table(results)
    if args.plots is not None:
        for path in plot(results, args.plots):
            print(f"wrote {path}", file=sys.stderr)
    return 1 if any(r.violations.total for r in results) else 0


def run_outlook(scenario: Scenario, args: argparse.Namespace) -> int:
    """``--outlook N``: the outlook's estimates against the simulated first calls."""
    from broker.sim.outlook_check import check_outlook

    if args.store != "memory://":
        print("vabroker simulate: --outlook runs on the memory store only", file=sys.stderr)
        return 2
    if not args.json:
        print(
            f"checking the outlook of {args.outlook} volunteers on {scenario.scenario.name} ...",
            file=sys.stderr,
        )
    try:
        check = check_outlook(scenario, args.warm_up, args.outlook)
    except ValueError as exc:
        print(f"vabroker simulate: {exc}", file=sys.stderr)
        return 2
    report = check.report()
    if args.json:
        print(json.dumps({"outlook": report}, indent=2))
    else:
        outlook_table(report)
    return 0


def outlook_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(
        title=f"outlook on {report['scenario']}: warm-up {report['warm_up_days']:g} days, "
        f"measured {report['measured_days']:g} days, seed {report['seed']}"
    )
    out.add_column("figure")
    out.add_column("value", justify="right")
    for key, value in report.items():
        if key in ("scenario", "seed", "warm_up_days", "measured_days"):
            continue
        if key == "calibration":
            for band in value:
                top, bottom = band["estimate_days_up_to"], band["estimate_days_above"]
                out.add_row(
                    f"estimate over {bottom:g} days or none"
                    if top is None
                    else f"estimate {bottom:g}-{top:g} days",
                    f"{band['volunteers']} volunteers, {band['on_duty_days']:g} days on duty: "
                    f"{band['first_calls']} first calls, {band['expected_first_calls']:g} expected",
                )
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        out.add_row(key.replace("_", " "), "-" if value is None else str(value))
    Console(width=max(Console().width, 100)).print(out)


def as_json(result: Result) -> dict[str, Any]:
    out = {**result.report(), "speed": result.speed()}
    if result.coverage is not None:
        out["coverage"] = result.coverage.model_dump(mode="json")
    return out


# The text report lists the worst hours of the week; the JSON has every one.
GAPS_SHOWN = 10


def coverage_gaps(result: Result, limit: int = GAPS_SHOWN) -> list[Any]:
    """The run's hours of the week with requests where coverage was worst: the lowest share
    answered, then the longest 90th percentile answer time, then the most requests."""
    if result.coverage is None:
        return []
    cells = [c for c in result.coverage.cells if c.requests]
    cells.sort(
        key=lambda c: (
            c.answered_pct if c.answered_pct is not None else 0.0,
            -(c.p90_answer_s if c.p90_answer_s is not None else float("inf")),
            -c.requests,
            c.language,
        )
    )
    return cells[:limit]


def coverage_table(results: list[Result]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    for r in results:
        if r.coverage is None:
            continue
        out = Table(
            title=f"{r.policy}: coverage gaps, the {GAPS_SHOWN} worst hours of the week "
            f"({r.coverage.timezone}, requests over the run)"
        )
        for column in ("language", "day", "hour", "requests", "answered", "p90 s", "volunteers"):
            out.add_column(column, justify="left" if column in ("language", "day") else "right")
        for c in coverage_gaps(r):
            out.add_row(
                c.language,
                c.weekday,
                f"{c.hour:02d}:00",
                str(c.requests),
                "-" if c.answered_pct is None else f"{c.answered_pct:.1f}%",
                "-" if c.p90_answer_s is None else f"{c.p90_answer_s:.1f}",
                str(c.volunteers),
            )
        console.print(out)


def table(results: list[Result]) -> None:
    from rich.console import Console
    from rich.table import Table

    first = results[0]
    out = Table(
        title=f"{first.scenario}: {first.volunteers:,} volunteers, {first.days:g} days, "
        f"seed {first.seed}"
    )
    columns = [
        "policy",
        "calls",
        "unanswered",
        "p50 s",
        "p90 s",
        "p99 s",
        "<=30 s",
        "rings/answered",
        "share with call",
        "Gini",
        "Gini helpers",
        "violations",
        "events/s",
    ]
    for column in columns:
        out.add_column(column, justify="left" if column == "policy" else "right")

    def num(x: Any, fmt: str = "{:.1f}") -> str:
        return "-" if x is None else fmt.format(x)

    for r in results:
        rep = r.report()
        out.add_row(
            r.policy,
            f"{r.calls:,}",
            num(rep["unanswered_share"], "{:.1%}"),
            num(rep["answer_p50_s"]),
            num(rep["answer_p90_s"]),
            num(rep["answer_p99_s"]),
            num(rep["answered_within_30s_share"], "{:.1%}"),
            num(rep["rings_per_answered_call"], "{:.2f}"),
            num(rep["share_with_call"], "{:.2%}"),
            num(rep["gini_calls_per_volunteer"], "{:.3f}"),
            num(rep["gini_among_helpers"], "{:.3f}"),
            str(r.violations.total),
            f"{r.speed()['events_per_s']:,.0f}",
        )
    console = Console(width=max(Console().width, 150))  # the table stays legible in a log
    console.print(out)
    floor = results[0].report()["gini_floor"]
    console.print(
        f"share with call: of the volunteers on duty at some time in the {first.days:g} "
        f"simulated days. Gini over all of them; the most even spread of these calls would "
        f"score {floor}. Gini helpers: among those who got a call."
    )
    for r in results:
        s = r.speed()
        console.print(
            f"{r.policy}: {s['events']:,} events in {s['wall_s']:.1f} s "
            f"= {s['events_per_s']:,.0f} events/s ({s['cpu_s']:.1f} s of CPU, "
            f"{s['events_per_cpu_s']:,.0f} events per CPU second)"
        )


def plot(results: list[Result], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    name = results[0].scenario
    written = []

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        times = r.answer_times
        if times:
            ax.step(
                times, [(i + 1) / r.calls for i in range(len(times))], where="post", label=r.policy
            )
    ax.axvline(30, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("seconds from request to answer")
    ax.set_ylabel("share of calls answered")
    ax.set_xlim(0, max((max(r.answer_times, default=0) for r in results), default=1) or 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{name}: answer time (unanswered calls never reach 1)")
    ax.legend()
    path = folder / f"{name}-answer-time-cdf.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(8, 5))
    width = 0.8 / len(results)
    for k, r in enumerate(results):
        counts = Counter(r.calls_per_volunteer)
        xs = sorted(counts)
        ax.bar([x + k * width for x in xs], [counts[x] for x in xs], width=width, label=r.policy)
    ax.set_yscale("log")
    ax.set_xlabel("calls answered by one volunteer")
    ax.set_ylabel("volunteers on duty in the period (log)")
    ax.set_title(f"{name}: calls per volunteer")
    ax.legend()
    path = folder / f"{name}-calls-per-volunteer.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)
    return written
