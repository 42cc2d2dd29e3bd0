"""Redis round trips per call: how many commands the broker sends, and in how many sequential
rounds (commands sent while another is still in flight share its round), for a request (up to
its first ring), an accept and an end.

Starts its own ``redis-server`` on a free loopback port, puts ``--online`` volunteers on duty
through the store, and drives ``Broker`` in this process for ``--calls`` calls. Counts are exact
and do not depend on the machine's load, unlike latencies: each round is one network round
trip that a request waits for.

    python bench/round_trips.py --online 300 --calls 30 [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio.client as redis_client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker.clock import RealClock  # noqa: E402
from broker.events import Ring  # noqa: E402
from broker.model import Profile, RingWindow, Role  # noqa: E402
from broker.service import Broker, LimitSettings  # noqa: E402
from broker.store.redis import RedisStore  # noqa: E402
from tests.redis_procs import RedisServer  # noqa: E402


class Meter:
    """Counts commands and rounds by wrapping redis-py's single-command and pipeline calls."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.in_flight = 0

    def wrap(self, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.counts["commands"] += 1
            if self.in_flight == 0:
                self.counts["rounds"] += 1
            self.in_flight += 1
            try:
                return await call(*args, **kwargs)
            finally:
                self.in_flight -= 1

        return counted

    def take(self) -> Counter[str]:
        got, self.counts = self.counts, Counter()
        return got


async def run(online: int, calls: int) -> dict[str, dict[str, float]]:
    meter = Meter()
    redis_client.Redis.execute_command = meter.wrap(redis_client.Redis.execute_command)  # type: ignore[method-assign,assignment]
    redis_client.Pipeline.execute = meter.wrap(redis_client.Pipeline.execute)  # type: ignore[method-assign,assignment]
    with RedisServer.start() as server:
        store = RedisStore.from_url(server.url)
        try:
            always = RingWindow.model_validate({"start": "00:00", "end": "00:00"})
            for i in range(online):
                uid = f"v{i:05d}"
                await store.put_profile(
                    Profile(
                        user_id=uid,
                        role=Role.VOLUNTEER,
                        languages=["en"],
                        ring_window=always,
                        daily_ring_cap=1000,
                    )
                )
                await store.set_on_duty(uid, True)
                await store.set_connected(uid, True)
            broker = Broker(store, RealClock(), limits=LimitSettings(requests_per_hour=100_000))
            recipient = Profile(user_id="recipient", role=Role.RECIPIENT, languages=["en"])
            await store.put_profile(recipient)
            totals: dict[str, Counter[str]] = {k: Counter() for k in ("request", "accept", "end")}
            meter.take()
            for _ in range(calls):
                outcome = await broker.request(recipient)
                totals["request"] += meter.take()
                assert outcome.call is not None
                ring = next(e for e in outcome.events if isinstance(e, Ring))
                helper = Profile(user_id=ring.to, role=Role.VOLUNTEER, languages=["en"])
                await broker.accept(helper, outcome.call.id)
                totals["accept"] += meter.take()
                await broker.end(recipient.user_id, outcome.call.id)
                totals["end"] += meter.take()
        finally:
            await store.close()
    return {
        step: {k: round(v / calls, 2) for k, v in sorted(counts.items())}
        for step, counts in totals.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--online", type=int, default=300, help="volunteers on duty")
    p.add_argument("--calls", type=int, default=30)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result = asyncio.run(run(args.online, args.calls))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for step, counts in result.items():
        print(f"{step:8s} {counts['commands']:6.2f} commands in {counts['rounds']:6.2f} rounds")


if __name__ == "__main__":
    main()
