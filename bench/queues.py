"""Partner queues under load: 20 organisations, 200 agents, 2,000 queued callers.

Drives the broker core in-process (memory store; a virtual clock for the broker's own notion of
time, wall-clock timers for the measurements). Each run:

1. every agent signs in and says they are available, then every caller asks for one of the
   organisations; the first callers of each organisation are rung at once, the rest wait;
2. the rung agents accept, then, one at a time, each agent hangs up and is rung for the next
   caller in line, until every caller has been answered.

It reports, as p50/p99 over all operations of a run:

- ``enqueue_ring_ms``: a request that rings an agent at once, from ``call.request`` to the ring;
- ``enqueue_ms``: every request (most join a queue that is already long);
- ``free_ring_ms``: an agent hangs up until they are rung for the next caller (the call's end,
  the routing, the position updates to everyone behind, the console for the organisation's
  agents);
- ``*_cpu_ms``: the same two latencies in CPU time (``time.thread_time``): what the work costs,
  without the waits a busy, shared machine adds to wall time;
- fan-out: how many ``call.status`` and ``queue.update`` messages one step (a hang-up, the next
  ring and its accept) sends, and the CPU cost of the whole step per message, including turning
  each into its JSON frame as the server does. CPU time (``time.thread_time``), not wall time,
  so that other work on a shared machine does not count.

Usage: ``python -m bench.queues [--orgs 20] [--agents 200] [--callers 2000] [--runs 3] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from typing import Any

from broker.clock import VirtualClock
from broker.events import Event, QueueUpdate, Ring, Status
from broker.model import Profile, Role
from broker.orgs import WEEKDAYS, Org
from broker.service import Broker
from broker.store.memory import MemoryStore
from signaling.messages import event_message


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _org(n: int) -> Org:
    return Org.model_validate(
        {
            "id": f"org{n:02d}",
            "name": f"Organisation {n}",
            "languages": ["en"],
            "timezone": "Europe/London",
            "hours": {d: [{"open": "00:00", "close": "24:00"}] for d in WEEKDAYS},
            "queues": [
                {
                    "id": "main",
                    "name": "Main",
                    "languages": ["en"],
                    "max_length": 10_000,
                    "max_wait_s": 86_400,
                    "wrapup_s": 0,
                }
            ],
        }
    )


def _serialise(events: list[Event], now: float) -> int:
    size = 0
    for event in events:
        size += len(json.dumps(event_message(event, now, []).wire(), separators=(",", ":")))
    return size


async def one_run(orgs: int, agents: int, callers: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    clock = VirtualClock(1_781_524_800.0)
    store = MemoryStore()
    broker = Broker(store, clock, rng=rng)
    org_ids = [f"org{n:02d}" for n in range(orgs)]
    for n in range(orgs):
        await store.put_org(_org(n))
    agent_profiles: list[Profile] = []
    for n in range(agents):
        profile = Profile(
            user_id=f"agent{n:03d}",
            role=Role.AGENT,
            org=org_ids[n % orgs],
            display_name=f"Agent {n}",
        )
        await store.put_profile(profile)
        await store.set_connected(profile.user_id, True)
        await broker.queues.set_agent_status(profile, "available")
        agent_profiles.append(profile)
    by_id = {p.user_id: p for p in agent_profiles}

    enqueue_ms: list[float] = []
    enqueue_ring_ms: list[float] = []
    enqueue_ring_cpu_ms: list[float] = []
    pending_rings: list[Ring] = []
    for n in range(callers):
        profile = Profile(user_id=f"caller{n:04d}", role=Role.RECIPIENT, display_name=f"Caller {n}")
        await store.put_profile(profile)
        clock.advance(0.05)
        cpu = time.thread_time()
        started = time.perf_counter()
        out = await broker.request(profile, org=org_ids[rng.randrange(orgs)])
        elapsed = (time.perf_counter() - started) * 1000
        cpu_ms = (time.thread_time() - cpu) * 1000
        enqueue_ms.append(elapsed)
        rings = [e for e in out.events if isinstance(e, Ring)]
        if rings:
            enqueue_ring_ms.append(elapsed)
            enqueue_ring_cpu_ms.append(cpu_ms)
            pending_rings += rings

    # Rung agents accept; then agents hang up one at a time and are rung for the next caller.
    in_call: list[tuple[str, str]] = []
    for ring in pending_rings:
        await broker.accept(by_id[ring.to], ring.call_id)
        in_call.append((ring.to, ring.call_id))
    free_ring_ms: list[float] = []
    free_ring_cpu_ms: list[float] = []
    statuses_per_step: list[int] = []
    updates_per_step: list[int] = []
    per_message_us: list[float] = []
    answered = len(in_call)
    while in_call:
        agent_id, call_id = in_call.pop(rng.randrange(len(in_call)))
        clock.advance(1.0)
        cpu = time.thread_time()
        started = time.perf_counter()
        ended = await broker.end(agent_id, call_id)
        free_s = time.perf_counter() - started
        free_cpu_s = time.thread_time() - cpu
        rings = [e for e in ended.events if isinstance(e, Ring)]
        events = list(ended.events)
        for ring in rings:
            events += (await broker.accept(by_id[ring.to], ring.call_id)).events
        # One step: a hang-up, the next ring, its accept, and everything they tell people.
        fanout = [e for e in events if isinstance(e, Status | QueueUpdate)]
        _serialise(fanout, clock.now())
        cpu_s = time.thread_time() - cpu
        if rings:
            free_ring_ms.append(free_s * 1000)
            free_ring_cpu_ms.append(free_cpu_s * 1000)
        statuses_per_step.append(sum(1 for e in fanout if isinstance(e, Status)))
        updates_per_step.append(sum(1 for e in fanout if isinstance(e, QueueUpdate)))
        if fanout:
            per_message_us.append(cpu_s * 1e6 / len(fanout))
        for ring in rings:
            in_call.append((ring.to, ring.call_id))
            answered += 1
    assert answered == callers, (answered, callers)

    def pct(values: list[float]) -> dict[str, float]:
        return {"p50": round(_percentile(values, 50), 3), "p99": round(_percentile(values, 99), 3)}

    return {
        "enqueue_ring_ms": pct(enqueue_ring_ms),
        "enqueue_ring_cpu_ms": pct(enqueue_ring_cpu_ms),
        "enqueue_ms": pct(enqueue_ms),
        "free_ring_ms": pct(free_ring_ms),
        "free_ring_cpu_ms": pct(free_ring_cpu_ms),
        "status_messages_per_step": pct([float(x) for x in statuses_per_step]),
        "queue_updates_per_step": pct([float(x) for x in updates_per_step]),
        "fanout_us_per_message": pct(per_message_us),
        "answered": answered,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, dict):
            out[key] = {
                q: {
                    "min": min(r[key][q] for r in runs),
                    "median": statistics.median(r[key][q] for r in runs),
                    "max": max(r[key][q] for r in runs),
                }
                for q in value
            }
        else:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orgs", type=int, default=20)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--callers", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    for name in ("orgs", "agents", "callers", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    runs = [
        asyncio.run(one_run(args.orgs, args.agents, args.callers, args.seed + n))
        for n in range(args.runs)
    ]
    result = {
        "setup": {
            "orgs": args.orgs,
            "agents": args.agents,
            "callers": args.callers,
            "runs": args.runs,
            "store": "memory",
        },
        "figures": summarise(runs),
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    print(
        f"{args.orgs} orgs, {args.agents} agents, {args.callers} callers, "
        f"{args.runs} runs (min / median / max over runs)"
    )
    for key, value in result["figures"].items():
        if not isinstance(value, dict):
            continue
        cells = "  ".join(
            f"{q} {v['min']:.3f} / {v['median']:.3f} / {v['max']:.3f}" for q, v in value.items()
        )
        print(f"  {key:26s} {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
