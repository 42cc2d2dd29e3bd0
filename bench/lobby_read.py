"""What one node's lobby pass costs with many requests searching, on memory and on Redis.

Files ``--calls`` searching requests (English mostly, some Portuguese and Spanish), each listed
in the lobby as the broker lists them, then times, ``--rounds`` times each:

- ``read``: ``Lobby.read`` for three languages, the store reads one pass makes for the
  whole node whatever its number of watchers (the listed calls, their recipients' blocks and
  who was rung for them);
- ``views``: ``Lobby.view`` for ``--watchers`` watchers (in memory, no store);
- ``watcher_checks``: the per-watcher reads of a pass (duty, open call),
  for ``--watchers`` watchers at once.

Redis is a real ``redis-server`` on a free loopback port. Prints JSON.

    python bench/lobby_read.py --calls 1000 --watchers 100
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ring import pct  # noqa: E402
from broker.clock import VirtualClock  # noqa: E402
from broker.dispatch import DispatchSettings  # noqa: E402
from broker.lobby import Lobby  # noqa: E402
from broker.model import Call, Profile, Role  # noqa: E402
from broker.store import MemoryStore, Store  # noqa: E402
from broker.store.redis import RedisStore  # noqa: E402
from tests.redis_procs import RedisServer  # noqa: E402

NOW = 1_781_524_800.0  # 2026-06-15 12:00 UTC
LANGUAGES = ["en"] * 7 + ["pt"] * 2 + ["es"]


async def fill(store: Store, calls: int, watchers: int) -> list[Profile]:
    for i in range(calls):
        language = LANGUAGES[i % len(LANGUAGES)]
        rec = Profile(user_id=f"r{i}", role=Role.RECIPIENT, languages=[language])
        await store.put_profile(rec)
        call = Call(
            id=f"c_{i:06}",
            recipient_id=rec.user_id,
            language=language,
            languages=[language],
            topic="reading a letter",
            requested_at=NOW - calls + i,
        )
        assert await store.create_call(call)
        await store.lobby_put(call.id, language, call.requested_at)
    out = []
    for i in range(watchers):
        vol = Profile(
            user_id=f"v{i}", role=Role.VOLUNTEER, languages=["en", "pt"], timezone="Europe/London"
        )
        await store.put_profile(vol)
        await store.set_on_duty(vol.user_id, True)
        out.append(vol)
    return out


def summary(times: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(pct(times, 50) * 1000, 3),
        "p99_ms": round(pct(times, 99) * 1000, 3),
        "mean_ms": round(statistics.fmean(times) * 1000, 3),
    }


async def measure(store: Store, args: argparse.Namespace) -> dict[str, Any]:
    watchers = await fill(store, args.calls, args.watchers)
    lobby = Lobby(store, VirtualClock(NOW), DispatchSettings())
    reads, views, checks = [], [], []
    shown = 0
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        listing = await lobby.read(["en", "pt", "es"])
        t1 = time.perf_counter()
        for profile in watchers:
            shown = len(lobby.view(profile, listing).entries)
        t2 = time.perf_counter()
        await asyncio.gather(*(lobby.why_closed(p) for p in watchers))
        t3 = time.perf_counter()
        reads.append(t1 - t0)
        views.append(t2 - t1)
        checks.append(t3 - t2)
    return {
        "searching": args.calls,
        "watchers": args.watchers,
        "entries_shown": shown,
        "read": summary(reads),
        "views": summary(views),
        "watcher_checks": summary(checks),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"memory": await measure(MemoryStore(), args)}
    with RedisServer.start() as server:
        store = RedisStore.from_url(server.url)
        try:
            result["redis"] = await measure(store, args)
        finally:
            await store.close()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="requests searching")
    parser.add_argument("--watchers", type=int, default=100, help="watchers on the node")
    parser.add_argument("--rounds", type=int, default=50)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
