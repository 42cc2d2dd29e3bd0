"""``GET /v1/stats`` for a year over a million ended calls: latency and memory, on the memory
store and on a redis-server this script starts on a free loopback port.

The store is filled through the store contract, not over the wire: a million synthetic ended
calls (a year, ten languages, one call in ten to one of five organisations, 70% answered with a
long-tailed answer time) are counted exactly as ``Broker`` counts a call when it ends
(``broker.stats.counts_of``'s rules), summed per day and scope first, then written with
``add_counts`` (counters add, so the store holds what a call-by-call fill would leave). Then an
in-process server on 127.0.0.1 answers ``GET /v1/stats`` for the year, ``--requests`` times per
run; each run's p99 is reported, with the min, median and max over ``--runs``. Memory is the RSS
the counters add: this process's for the memory store, the redis-server's for Redis.

Usage: ``python -m bench.stats [--calls 1000000] [--runs 3] [--requests 200] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from broker.clock import VirtualClock
from broker.stats import ANSWER_BUCKETS, Counts, bucket_of, days_between
from broker.store import Store, open_store
from signaling.app import create_app
from signaling.auth import mint
from signaling.config import Settings

SECRET = "bench-secret-0123456789abcdef0123456789"
YEAR_START = 1_767_225_600.0  # 2026-01-01 00:00 UTC
DAY = 86400.0
LANGUAGES = ["en", "es", "fr", "de", "it", "pt", "ar", "zh", "ja", "nl"]
ORGS = [f"org{i}" for i in range(5)]


def rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def synthetic_counts(calls: int, seed: int) -> dict[str, dict[str, Counts]]:
    """day -> scope -> counts of ``calls`` ended calls spread over a year."""
    rng = random.Random(seed)
    days = days_between(YEAR_START, YEAR_START + 365 * DAY)
    out: dict[str, dict[str, Counts]] = {d: {} for d in days}
    for _ in range(calls):
        day = days[rng.randrange(len(days))]
        scopes = ["all", "lang:" + LANGUAGES[min(int(rng.expovariate(0.5)), 9)]]
        if rng.random() < 0.1:
            scopes.append("org:" + ORGS[rng.randrange(len(ORGS))])
        one = Counts(created=1)
        outcome = rng.random()
        if outcome < 0.7:
            one.count("answered")
            one.count_answer(bucket_of(rng.lognormvariate(2.5, 0.9)))
            if outcome < 0.65:
                one.count("completed")
        elif outcome < 0.85:
            one.count("unanswered")
        else:
            one.count("cancelled")
        for scope in scopes:
            out[day].setdefault(scope, Counts()).add(one)
    return out


async def fill(store: Store, counts: dict[str, dict[str, Counts]]) -> None:
    for day, scopes in counts.items():
        await store.add_counts(day, scopes)


async def time_stats(
    store: Store, url: str, runs: int, requests: int, counts: dict[str, dict[str, Counts]], rss: Any
) -> tuple[float, int, list[float]]:
    """Fill the store once the server runs (so that the counters are made as a live server
    makes them), then each run's p99 of GET /v1/stats for the year, in milliseconds. Returns
    the fill time, the RSS it added (KiB, from ``rss()``) and the p99s."""
    settings = Settings(
        jwt_secret=SECRET, log_json=False, log_level="WARNING", port=0, store_url=url
    )
    clock = VirtualClock(YEAR_START + 365 * DAY - 3600)
    app = create_app(settings, store=store, clock=clock)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    before = rss()
    started = time.perf_counter()
    await fill(store, counts)
    fill_s = time.perf_counter() - started
    rss_delta = rss() - before
    token = mint(SECRET, "bench-admin", "admin", ttl_s=3600, now=time.time())
    year = f"since={YEAR_START:.0f}&until={YEAR_START + 365 * DAY:.0f}"
    url = f"http://{host}:{port}/v1/stats?{year}"
    p99s: list[float] = []
    try:
        async with aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {token}"}, trust_env=False
        ) as http:
            async with http.get(url) as resp:  # warm-up, and a check of the figures
                body = await resp.json()
                assert resp.status == 200, body
            for _ in range(runs):
                took: list[float] = []
                for _ in range(requests):
                    start = time.perf_counter()
                    async with http.get(url) as resp:
                        await resp.read()
                    took.append((time.perf_counter() - start) * 1000.0)
                p99s.append(statistics.quantiles(took, n=100, method="inclusive")[98])

    finally:
        await runner.cleanup()
    total = body["total"]["created"]
    if total != EXPECTED["calls"]:
        raise AssertionError(f"/v1/stats counted {total} calls, expected {EXPECTED['calls']}")
    return fill_s, rss_delta, p99s


EXPECTED: dict[str, int] = {"calls": 0}


@contextlib.contextmanager
def redis_server() -> Any:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="vabroker-bench-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=workdir,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.02)
        yield proc, f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


async def bench_store(kind: str, counts: dict[str, dict[str, Counts]], args: Any) -> dict[str, Any]:
    if kind == "memory":
        store: Store = open_store("memory://")
        fill_s, rss_delta, p99s = await time_stats(
            store, "memory://", args.runs, args.requests, counts, rss_kib
        )
        return _result(kind, fill_s, rss_delta, p99s)
    with redis_server() as (proc, url):
        store = open_store(url)
        await store.ping()
        fill_s, rss_delta, p99s = await time_stats(
            store, url, args.runs, args.requests, counts, lambda: rss_kib(proc.pid)
        )
        return _result(kind, fill_s, rss_delta, p99s)


def _result(kind: str, fill_s: float, rss_delta_kib: int, p99s: list[float]) -> dict[str, Any]:
    return {
        "store": kind,
        "fill_s": round(fill_s, 2),
        "rss_delta_mib": round(rss_delta_kib / 1024, 1),
        "p99_ms": {
            "min": round(min(p99s), 2),
            "median": round(statistics.median(p99s), 2),
            "max": round(max(p99s), 2),
            "runs": [round(p, 2) for p in p99s],
        },
    }


async def amain(args: Any) -> dict[str, Any]:
    started = time.perf_counter()
    counts = synthetic_counts(args.calls, args.seed)
    EXPECTED["calls"] = sum(s["all"].created for s in counts.values() if "all" in s)
    generate_s = time.perf_counter() - started
    results = [await bench_store(kind, counts, args) for kind in args.stores]
    return {
        "calls": EXPECTED["calls"],
        "days": len(counts),
        "scopes_per_day": round(statistics.mean(len(s) for s in counts.values()), 1),
        "answer_buckets": len(ANSWER_BUCKETS) + 1,
        "requests_per_run": args.requests,
        "runs": args.runs,
        "generate_s": round(generate_s, 1),
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200, help="requests per run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--stores", nargs="+", default=["memory", "redis"], choices=["memory", "redis"]
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.runs < 1 or args.requests < 2:
        parser.error("--calls and --runs must be at least 1, --requests at least 2")
    out = asyncio.run(amain(args))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"{out['calls']:,} ended calls over {out['days']} days, "
        f"{out['scopes_per_day']} scopes a day; GET /v1/stats for the year, "
        f"{out['requests_per_run']} requests x {out['runs']} runs"
    )
    print(f"{'store':<8} {'fill s':>7} {'RSS +MiB':>9} {'p99 ms min':>11} {'median':>8} {'max':>8}")
    for r in out["results"]:
        p = r["p99_ms"]
        print(
            f"{r['store']:<8} {r['fill_s']:>7} {r['rss_delta_mib']:>9} "
            f"{p['min']:>11} {p['median']:>8} {p['max']:>8}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
