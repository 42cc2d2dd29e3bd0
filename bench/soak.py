"""A bounded soak: many recipients and volunteers calling for minutes, to see growth.

The broker runs as its own process (``vabroker serve``, embedded store) on a free 127.0.0.1
port; SDK clients in this process play the people. Recipients ask for help, and once answered
hold the call a moment and hang up, or cancel while it is still searching; volunteers go on
duty and accept, decline or let rings time out, hold the call and hang up. Now and then a
client cuts its connection without a goodbye (as a lost network would) and the SDK resumes it.

Every ``--every`` seconds a line: calls made / answered / ended, errors, resumes, and the broker
process's resident memory (VmRSS) and open file descriptors, read from /proc. At the end a
summary (after all clients have closed, so that leaked sockets would show), and with
``--json`` the whole series as JSON. It stops by itself after ``--duration`` seconds.

    python bench/soak.py --duration 120 --recipients 20 --volunteers 40
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serving import SECRET, BrokerProcess, broker_process  # noqa: E402
from clients.sdk import Client, ConnectionLost, ProtocolError  # noqa: E402
from signaling.auth import mint  # noqa: E402
from signaling.messages import (  # noqa: E402
    CallAssigned,
    CallEnded,
    CallRing,
    CallStatus,
    ServerMessage,
)


@contextlib.asynccontextmanager
async def soak_broker(first_wave: int, grace_s: float) -> AsyncIterator[BrokerProcess]:
    async with broker_process(
        {
            "VABROKER_FIRST_WAVE": str(first_wave),
            "VABROKER_DAILY_RING_CAP": "1000",
            "VABROKER_REQUESTS_PER_HOUR": "1000000",
            "VABROKER_RING_TIMEOUT_S": "6",
            "VABROKER_WAVE_INTERVAL_S": "2",
            "VABROKER_MAX_WAIT_S": "20",
            "VABROKER_GRACE_S": str(grace_s),
        }
    ) as broker:
        yield broker


@dataclass
class Tally:
    requested: int = 0
    answered: int = 0
    ended: Counter[str] = field(default_factory=Counter)
    cancelled: int = 0
    accepts: int = 0
    declines: int = 0
    drops: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def error(self, exc: BaseException) -> None:
        code = exc.code if isinstance(exc, ProtocolError) and exc.code else type(exc).__name__
        self.errors[code] += 1


class Person:
    def __init__(self, client: Client, rng: random.Random, tally: Tally, drop_p: float) -> None:
        self.client = client
        self.rng = rng
        self.tally = tally
        self.drop_p = drop_p
        self.inbox: asyncio.Queue[ServerMessage] = asyncio.Queue()
        client.listeners.append(self.inbox.put_nowait)

    async def maybe_drop(self) -> None:
        """Now and then cut the connection, then wait until the SDK has resumed it."""
        if self.rng.random() < self.drop_p and self.client.connected:
            self.tally.drops += 1
            resumed = asyncio.Event()
            self.client.on_resumed.append(resumed.set)
            await self.client.drop()
            try:
                await asyncio.wait_for(resumed.wait(), self.client.resume_within_s + 2)
            except TimeoutError:
                self.tally.errors["bench:not_resumed"] += 1
            finally:
                self.client.on_resumed.remove(resumed.set)

    async def end(self, call: str) -> None:
        """Hang up; once more if the connection was being resumed at that moment."""
        for _ in range(2):
            try:
                await self.client.request({"type": "call.end", "call": call})
                return
            except ConnectionLost:
                await asyncio.sleep(0.5)
            except ProtocolError as exc:
                self.tally.error(exc)
                return

    async def run(self, until: float) -> None:
        raise NotImplementedError

    async def request(self, message: dict[str, Any]) -> ServerMessage | None:
        try:
            return await self.client.request(message)
        except (ProtocolError, ConnectionLost) as exc:
            self.tally.error(exc)
            return None


class RecipientRole(Person):
    async def run(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            status = await self.request({"type": "call.request", "language": "en"})
            if not isinstance(status, CallStatus):
                await asyncio.sleep(0.5)
                continue
            self.tally.requested += 1
            call = status.call
            cancel_after = self.rng.uniform(0.2, 4.0) if self.rng.random() < 0.2 else None
            await self.follow(call, cancel_after)
            await asyncio.sleep(self.rng.uniform(0.1, 1.0))

    async def follow(self, call: str, cancel_after: float | None) -> None:
        loop = asyncio.get_running_loop()
        cancel_at = loop.time() + cancel_after if cancel_after is not None else None
        deadline = loop.time() + 40
        while loop.time() < deadline:
            timeout = (cancel_at - loop.time()) if cancel_at is not None else deadline - loop.time()
            try:
                msg = await asyncio.wait_for(self.inbox.get(), max(0.01, timeout))
            except TimeoutError:
                if cancel_at is not None and loop.time() >= cancel_at:
                    cancel_at = None
                    if await self.request({"type": "call.cancel", "call": call}):
                        self.tally.cancelled += 1
                        return
                continue
            if isinstance(msg, CallAssigned) and msg.call == call:
                if msg.resumed:  # sent again after a resume: the same answer
                    continue
                self.tally.answered += 1
                cancel_at = None
                await asyncio.sleep(self.rng.uniform(0.2, 3.0))
                await self.maybe_drop()
                if self.rng.random() < 0.7:
                    await self.end(call)
            elif isinstance(msg, CallEnded) and msg.call == call:
                self.tally.ended[msg.reason] += 1
                return
        self.tally.errors["bench:call_not_ended_in_40s"] += 1
        await self.end(call)


class VolunteerRole(Person):
    async def run(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        await self.request({"type": "availability", "available": True})
        while loop.time() < until:
            try:
                msg = await asyncio.wait_for(self.inbox.get(), max(0.01, until - loop.time()))
            except TimeoutError:
                return
            if not isinstance(msg, CallRing):
                continue
            choice = self.rng.random()
            await asyncio.sleep(self.rng.uniform(0.05, 1.0))
            if choice < 0.55:
                self.tally.accepts += 1
                if isinstance(
                    await self.request({"type": "call.accept", "call": msg.call}), CallAssigned
                ):
                    await asyncio.sleep(self.rng.uniform(0.2, 3.0))
                    await self.maybe_drop()
                    await self.end(msg.call)
            elif choice < 0.85:
                self.tally.declines += 1
                await self.request({"type": "call.decline", "call": msg.call})
            # otherwise the ring times out


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    tally = Tally()
    samples: list[dict[str, Any]] = []
    async with soak_broker(args.first_wave, args.grace) as broker:
        loop = asyncio.get_running_loop()
        start = loop.time()
        baseline = {"rss_mb": round(broker.rss_mb(), 1), "fds": broker.fds()}

        def sample(phase: str) -> dict[str, Any]:
            row = {
                "t_s": round(loop.time() - start, 1),
                "phase": phase,
                "rss_mb": round(broker.rss_mb(), 1),
                "fds": broker.fds(),
                "requested": tally.requested,
                "answered": tally.answered,
                "ended": sum(tally.ended.values()),
                "errors": sum(tally.errors.values()),
                "resumes": sum(p.client.resumes for p in people),
            }
            samples.append(row)
            if not args.json:
                print(
                    f"t={row['t_s']:6.1f}s {phase:5} rss={row['rss_mb']:6.1f} MB fds={row['fds']:4}"
                    f"  calls {row['requested']} made, {row['answered']} answered,"
                    f" {row['ended']} ended; {row['errors']} errors, {row['resumes']} resumes",
                    flush=True,
                )
            return row

        people: list[Person] = []
        for i in range(args.volunteers):
            token = mint(SECRET, f"sv{i}", "volunteer", name=f"v{i}", languages=["en"])
            client = Client(broker.url, token, resume_within_s=args.grace)
            await client.connect()
            people.append(VolunteerRole(client, random.Random(rng.random()), tally, args.drop))
        for i in range(args.recipients):
            token = mint(SECRET, f"sr{i}", "recipient", name=f"r{i}", languages=["en"])
            client = Client(broker.url, token, resume_within_s=args.grace)
            await client.connect()
            people.append(RecipientRole(client, random.Random(rng.random()), tally, args.drop))
        sample("open")
        until = loop.time() + args.duration
        runs = [asyncio.create_task(p.run(until)) for p in people]

        async def sampler() -> None:
            while True:
                await asyncio.sleep(args.every)
                sample("run")

        ticker = asyncio.create_task(sampler())
        # The last calls get a few seconds to finish; then everyone stops.
        await asyncio.wait(runs, timeout=args.duration + 5)
        ticker.cancel()
        for task in runs:
            task.cancel()
        for outcome in await asyncio.gather(*runs, return_exceptions=True):
            if isinstance(outcome, Exception):  # a bug in this script, not the broker's answer
                tally.errors[f"bench:{type(outcome).__name__}"] += 1
        sample("load")
        for person in people:
            await person.client.close()
        await asyncio.sleep(args.grace + 2)  # parked sessions expire after the grace period
        closed = sample("after")

    run_rows = [s for s in samples if s["phase"] in ("run", "load")]
    rss = [s["rss_mb"] for s in run_rows] or [closed["rss_mb"]]
    fds = [s["fds"] for s in run_rows] or [closed["fds"]]
    return {
        "command": " ".join(["python", "bench/soak.py", *sys.argv[1:]]),
        "duration_s": args.duration,
        "recipients": args.recipients,
        "volunteers": args.volunteers,
        "calls": {
            "requested": tally.requested,
            "answered": tally.answered,
            "ended": dict(tally.ended),
            "cancelled": tally.cancelled,
        },
        "volunteer_actions": {"accepts": tally.accepts, "declines": tally.declines},
        "drops": tally.drops,
        "resumes": samples[-1]["resumes"],
        "errors": dict(tally.errors),
        "rss_mb": {
            "baseline": baseline["rss_mb"],
            "min": min(rss),
            "median": round(statistics.median(rss), 1),
            "max": max(rss),
            "first_sample": rss[0],
            "last_sample": rss[-1],
            "after_close": closed["rss_mb"],
        },
        "fds": {
            "baseline": baseline["fds"],
            "min": min(fds),
            "median": statistics.median(fds),
            "max": max(fds),
            "after_close": closed["fds"],
        },
        "samples": samples,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    p.add_argument("--recipients", type=int, default=20)
    p.add_argument("--volunteers", type=int, default=40)
    p.add_argument("--every", type=float, default=10.0, help="seconds between lines")
    p.add_argument("--drop", type=float, default=0.05, help="chance to cut a call's connection")
    p.add_argument("--first-wave", type=int, default=3)
    p.add_argument("--grace", type=float, default=5.0, help="resume grace period, seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.duration <= 0 or args.duration > 3600:
        p.error("--duration is 1 to 3600 seconds")
    result = asyncio.run(soak(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    r = result
    print(
        f"\n{r['calls']['requested']} calls made, {r['calls']['answered']} answered, "
        f"{sum(r['calls']['ended'].values())} ended {r['calls']['ended']}, "
        f"{r['calls']['cancelled']} cancelled; {r['drops']} connections cut, {r['resumes']} resumed"
    )
    print(f"errors by code: {r['errors'] or 'none'}")
    m, f = r["rss_mb"], r["fds"]
    print(
        f"broker RSS MB: baseline {m['baseline']}, under load min {m['min']} / median "
        f"{m['median']} / max {m['max']} (first {m['first_sample']}, last {m['last_sample']}), "
        f"after close {m['after_close']}"
    )
    print(
        f"broker fds: baseline {f['baseline']}, under load min {f['min']} / median {f['median']} "
        f"/ max {f['max']}, after close {f['after_close']}"
    )


if __name__ == "__main__":
    main()
