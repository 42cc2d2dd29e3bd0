"""Wave selection with a million registered volunteers in Redis, and first ring Redis vs memory.

1. Starts a ``redis-server`` on a free loopback port, registers ``--volunteers`` volunteers
   (languages and zones spread as below) through the store's own profile script, pipelined, and
   puts ``--online`` of them on duty and connected. Then times
   ``RedisStore.candidates_sample`` (the draw a wave makes) for English, for each ``--draw``
   (a wave draws ``max(candidate_factor x wave size, candidate_sample)``: 50 for the default's
   first waves, 400 for its largest wave of 40), and the full read of everyone in window
   (``candidates``). Prints p50/p99 over ``--rounds`` selections.
2. Unless ``--skip-ring``: runs ``bench/ring.py`` (broker process, ``--ring-online`` volunteer
   WebSockets, one recipient) once on the memory store and once on a fresh Redis, and prints
   request -> first ring p50/p99 for both.

    python bench/match_scale.py --volunteers 1000000 --online 5000
    python bench/match_scale.py --skip-ring --runs 3     # three timed runs, one population
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ring import pct  # noqa: E402
from bench.ring import run as ring_run  # noqa: E402
from broker.model import Profile, RingWindow, Role  # noqa: E402
from broker.store.redis import _PUT_PROFILE, RedisStore  # noqa: E402
from tests.redis_procs import RedisServer  # noqa: E402

LANGUAGES = [("en", 50), ("es", 20), ("fr", 10), ("de", 10), ("pt", 10)]
ZONES = [
    "UTC",
    "Europe/London",
    "Europe/Dublin",
    "Europe/Lisbon",
    "Europe/Paris",
    "Europe/Berlin",
    "Europe/Madrid",
    "Europe/Rome",
    "Europe/Warsaw",
    "Europe/Athens",
    "Europe/Helsinki",
    "Africa/Lagos",
    "Africa/Nairobi",
    "Africa/Johannesburg",
    "Asia/Dubai",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Pacific/Auckland",
    "America/Sao_Paulo",
    "America/Argentina/Buenos_Aires",
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "America/Mexico_City",
    "America/Bogota",
    "America/Toronto",
    "America/Halifax",
]
WINDOWS = [("08:00", "22:00"), ("08:00", "22:00"), ("08:00", "22:00"), ("00:00", "00:00")]


def profile(i: int, rng: random.Random) -> Profile:
    lang = rng.choices([x for x, _ in LANGUAGES], [w for _, w in LANGUAGES])[0]
    languages = [lang] if rng.random() < 0.8 else [lang, "en"]
    start, end = rng.choice(WINDOWS)
    return Profile(
        user_id=f"v{i:07d}",
        role=Role.VOLUNTEER,
        display_name=f"v{i}",
        languages=languages,
        timezone=rng.choice(ZONES),
        ring_window=RingWindow.model_validate({"start": start, "end": end}),
    )


async def load(store: RedisStore, n: int, online: int, seed: int) -> float:
    """Register ``n`` volunteers through the store's own profile script, 5,000 per pipeline
    (nobody is on duty yet, so no index entry is made), then ``online`` of them on duty."""
    rng = random.Random(seed)
    sha = await store.r.script_load(_PUT_PROFILE)
    started = time.perf_counter()
    batch = 5000
    for first in range(0, n, batch):
        pipe = store.r.pipeline(transaction=False)
        for i in range(first, min(n, first + batch)):
            p = profile(i, rng)
            data = p.model_dump(mode="json", exclude={"blocked"})
            data["ring_window"] = p.ring_window.as_wire()
            langs = sorted({t.split("-")[0].lower() for t in p.languages})
            w = p.ring_window
            group = f"{p.timezone}|{w.start:%H:%M}|{w.end:%H:%M}"
            key = "vb:{u:" + p.user_id + "}"
            pipe.execute_command(
                "EVALSHA",
                sha,
                2,
                key,
                key + ":blocked",
                json.dumps(data, separators=(",", ":")),
                "volunteer",
                p.timezone,
                p.daily_ring_cap,
                " ".join(langs),
                json.dumps([[lang, group] for lang in langs], separators=(",", ":")),
            )
        await pipe.execute()
    for i in rng.sample(range(n), online):
        await store.set_on_duty(f"v{i:07d}", True)
        await store.set_connected(f"v{i:07d}", True)
    return time.perf_counter() - started


async def selection(
    store: RedisStore, rounds: int, draw: int | None, recent: int, seed: int
) -> dict[str, float]:
    """Time ``rounds`` draws of ``draw`` (None: the full read of everyone in window)."""
    times: list[float] = []
    size = 0
    now = time.time()
    rng = random.Random(seed)
    for _ in range(rounds):
        t0 = time.perf_counter()
        if draw is None:
            got = await store.candidates("en", now)
        else:
            got = (await store.candidates_sample("en", now, draw, recent, rng)).candidates
        times.append(time.perf_counter() - t0)
        size = len(got)
    return {
        "candidates": size,
        "p50_ms": round(pct(times, 50) * 1000, 3),
        "p99_ms": round(pct(times, 99) * 1000, 3),
        "mean_ms": round(statistics.fmean(times) * 1000, 3),
    }


async def wave_selection(args: argparse.Namespace) -> dict[str, Any]:
    with RedisServer.start() as server:
        store = RedisStore.from_url(server.url)
        try:
            load_s = await load(store, args.volunteers, args.online, args.seed)
            info = await store.r.info("memory")
            result: dict[str, Any] = {
                "registered": args.volunteers,
                "online": args.online,
                "load_s": round(load_s, 1),
                "redis_used_mib": round(int(info["used_memory"]) / 2**20, 1),
                "runs": [
                    {
                        "draws": {
                            str(n): await selection(store, args.rounds, n, args.recent, seed)
                            for n in args.draw
                        },
                        "everyone": await selection(store, max(10, args.rounds // 5), None, 0, 0),
                    }
                    for seed in range(args.seed, args.seed + args.runs)
                ],
            }
        finally:
            await store.close()
    return result


async def first_ring(args: argparse.Namespace) -> dict[str, Any]:
    memory = await ring_run(args.ring_online, args.calls, 10, "memory://")
    with RedisServer.start() as server:
        redis = await ring_run(args.ring_online, args.calls, 10, server.url)
    return {
        "online": args.ring_online,
        "calls": args.calls,
        "memory": memory["request_to_first_ring_ms"],
        "redis": redis["request_to_first_ring_ms"],
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--volunteers", type=int, default=1_000_000, help="registered volunteers")
    p.add_argument("--online", type=int, default=5000, help="of them on duty and connected")
    p.add_argument(
        "--draw",
        type=int,
        nargs="+",
        default=[50, 400],
        help="volunteers a wave draws (the default: 50 up to a wave of 5, 400 for a wave of 40)",
    )
    p.add_argument("--recent", type=int, default=0, help="recent helpers asked for with each draw")
    p.add_argument("--rounds", type=int, default=500, help="selections timed")
    p.add_argument("--runs", type=int, default=1, help="timed runs over the one population loaded")
    p.add_argument("--ring-online", type=int, default=5000, help="volunteers for first ring")
    p.add_argument("--calls", type=int, default=100, help="calls for first ring")
    p.add_argument("--skip-ring", action="store_true", help="only wave selection")
    p.add_argument("--skip-selection", action="store_true", help="only first ring")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result: dict[str, Any] = {}
    if not args.skip_selection:
        result["wave_selection"] = asyncio.run(wave_selection(args))
    if not args.skip_ring:
        result["first_ring"] = asyncio.run(first_ring(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    if "wave_selection" in result:
        w = result["wave_selection"]
        print(
            f"{w['registered']:,} registered, {w['online']:,} online "
            f"(loaded in {w['load_s']} s, Redis {w['redis_used_mib']} MiB)"
        )
        for k, run in enumerate(w["runs"], 1):
            rows = [(f"draw {n}", v) for n, v in run["draws"].items()]
            for label, f in [*rows, ("everyone", run["everyone"])]:
                print(
                    f"  run {k}: wave selection ({label:9s}) {f['candidates']:5d} candidates  "
                    f"p50 {f['p50_ms']:.2f} ms  p99 {f['p99_ms']:.2f} ms"
                )
    if "first_ring" in result:
        r = result["first_ring"]
        print(f"first ring at {r['online']:,} online, {r['calls']} calls:")
        for store in ("memory", "redis"):
            f = r[store]
            print(
                f"  {store:6s} p50 {f['p50']:.2f} ms  p99 {f['p99']:.2f} ms  max {f['max']:.2f} ms"
            )


if __name__ == "__main__":
    main()
