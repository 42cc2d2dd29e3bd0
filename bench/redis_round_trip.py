"""What one Redis round trip costs the broker: the floor under every figure on Redis.

Starts its own ``redis-server`` on a free loopback port and times ``--commands`` sequential
``HGET`` of one small hash, each waiting for its reply, through three clients in turn, for
each of ``--runs`` runs:

- ``store``: the store's own client (``RedisStore.from_url``: its connection pool, socket
  timeout and checks, as the broker runs it);
- ``redis-py, blocking pool``: redis-py's ``BlockingConnectionPool`` with the same options
  (the pool the store had before ``WaitingPool``);
- ``redis-py, no timeout``: redis-py's default client (no socket timeout, its plain pool), the
  least the library does per command.

Prints, per client, the wall time of a round trip (p50, p99, p99.9, max over all runs) and the
client's CPU per command (``time.process_time``; min / median / max over the runs). A request
waits for about eight such round trips before its first ring (``bench/round_trips.py``).

    python bench/redis_round_trip.py --commands 20000 --runs 3 [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ring import pct  # noqa: E402
from broker.store.redis import _CHECKED_ON_CHECKOUT, RedisStore  # noqa: E402
from tests.redis_procs import RedisServer  # noqa: E402


async def time_client(client: Any, commands: int) -> tuple[list[float], float]:
    """Round trips in ms, and the CPU per command in µs."""
    await client.hset("bench:h", "f", "v")
    for _ in range(200):  # connections made, scripts and caches warm
        await client.hget("bench:h", "f")
    walls: list[float] = []
    cpu0 = time.process_time()
    for _ in range(commands):
        started = time.perf_counter()
        await client.hget("bench:h", "f")
        walls.append((time.perf_counter() - started) * 1000)
    return walls, (time.process_time() - cpu0) * 1e6 / commands


async def run(commands: int, runs: int) -> dict[str, dict[str, Any]]:
    walls: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    with RedisServer.start() as server:
        for _ in range(runs):
            store = RedisStore.from_url(server.url + "?timeout=2")
            blocking = aioredis.Redis(
                connection_pool=aioredis.BlockingConnectionPool.from_url(
                    server.url,
                    decode_responses=True,
                    max_connections=128,
                    timeout=8.0,
                    socket_timeout=2.0,
                    socket_connect_timeout=2.0,
                    **_CHECKED_ON_CHECKOUT,
                )
            )
            bare = aioredis.Redis.from_url(server.url, decode_responses=True)
            clients = {
                "store": store.r,
                "redis-py, blocking pool": blocking,
                "redis-py, no timeout": bare,
            }
            try:
                for name, client in clients.items():
                    wall, cpu = await time_client(client, commands)
                    walls.setdefault(name, []).extend(wall)
                    cpus.setdefault(name, []).append(cpu)
            finally:
                await store.close()
                await blocking.aclose()
                await bare.aclose()
    return {
        name: {
            "round_trip_ms": {
                "p50": round(pct(walls[name], 50), 3),
                "p99": round(pct(walls[name], 99), 3),
                "p99.9": round(pct(walls[name], 99.9), 3),
                "max": round(max(walls[name]), 3),
            },
            "cpu_us_per_command": {
                "min": round(min(cpus[name]), 1),
                "median": round(statistics.median(cpus[name]), 1),
                "max": round(max(cpus[name]), 1),
            },
        }
        for name in walls
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--commands", type=int, default=20000, help="round trips per client and run")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result = asyncio.run(run(args.commands, args.runs))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.commands} sequential HGET per client and run, {args.runs} runs")
    for name, figures in result.items():
        rt, cpu = figures["round_trip_ms"], figures["cpu_us_per_command"]
        print(
            f"{name:26s} round trip p50 {rt['p50']:.3f} p99 {rt['p99']:.3f} "
            f"p99.9 {rt['p99.9']:.3f} max {rt['max']:.3f} ms; client CPU per command "
            f"{cpu['min']:.0f} / {cpu['median']:.0f} / {cpu['max']:.0f} µs"
        )


if __name__ == "__main__":
    main()
