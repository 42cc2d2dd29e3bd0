"""Call set-up time with real aiortc media on 127.0.0.1.

The broker runs as its own process (``vabroker serve``, embedded store); a few SDK volunteers
and one SDK recipient run in this one, with loopback-only ICE and the stamped test pattern.
For each of ``--calls`` calls the recipient asks for help, the first volunteer rung accepts,
and the figures are taken from the accept:

- accept -> media connected: until both peer connections report ``connected``;
- accept -> first frame: until the volunteer decodes the first video frame (its stamp read);
- request -> ring, and accept -> ``call.assigned`` answered, for context.

Prints p50/p95 (and min/max) of each; ``--json`` prints them as JSON.

    python bench/call_setup.py --calls 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serving import SECRET, broker_process  # noqa: E402
from clients.media import MediaOptions  # noqa: E402
from clients.roles import Recipient, Volunteer  # noqa: E402
from clients.sdk import Client, ConnectionLost  # noqa: E402
from signaling.auth import mint  # noqa: E402
from signaling.messages import CallEnded, CallRing  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@contextlib.asynccontextmanager
async def setup_broker(volunteers: int) -> AsyncIterator[str]:
    settings = {
        "VABROKER_FIRST_WAVE": str(volunteers),
        "VABROKER_DAILY_RING_CAP": "1000",
        "VABROKER_REQUESTS_PER_HOUR": "1000",
    }
    async with broker_process(settings) as broker:
        yield broker.url


async def bench(calls: int, volunteers: int) -> dict[str, Any]:
    options = MediaOptions(loopback_ice=True, connect_timeout_s=10)
    async with setup_broker(volunteers) as url:
        vols = []
        for i in range(volunteers):
            token = mint(SECRET, f"v{i}", "volunteer", name=f"v{i}", languages=["en"])
            vol = Volunteer(Client(url, token), options)
            await vol.client.connect()
            await vol.set_available(True)
            vols.append(vol)
        rec = Recipient(Client(url, mint(SECRET, "rec", "recipient", languages=["en"])), options)
        await rec.client.connect()
        ring_s, assigned_s, media_s, frame_s = [], [], [], []
        try:
            for _ in range(calls):
                rung: asyncio.Future[tuple[Volunteer, float]] = (
                    asyncio.get_running_loop().create_future()
                )

                def on_ring(message: Any, vol: Volunteer, fut: Any = rung) -> None:
                    if isinstance(message, CallRing) and not fut.done():
                        fut.set_result((vol, time.monotonic()))

                hooks = []
                for vol in vols:
                    hook = (lambda v: lambda m: on_ring(m, v))(vol)
                    vol.on_event.append(hook)
                    hooks.append((vol, hook))
                asked = time.monotonic()
                status = await rec.request()
                winner, rang = await asyncio.wait_for(rung, 10)
                for vol, hook in hooks:
                    vol.on_event.remove(hook)
                ring_s.append(rang - asked)
                accepted = time.monotonic()
                call = await winner.accept(status.call)
                assigned_s.append(time.monotonic() - accepted)
                rcall = await rec.wait_call(10)
                await asyncio.wait_for(call.media.connected.wait(), 10)
                await asyncio.wait_for(rcall.media.connected.wait(), 10)
                await asyncio.wait_for(call.media.first_frame.wait(), 10)
                both = max(call.media.stats.connected_at or 0, rcall.media.stats.connected_at or 0)
                media_s.append(both - accepted)
                frame_s.append((call.media.stats.first_video_at or 0) - accepted)
                await rcall.hang_up()
                await winner.next_event(CallEnded, 10, call=status.call)
                for vol in vols:
                    await vol.wait_media_closed()
                    while not vol.events.empty():
                        vol.events.get_nowait()
                while not rec.events.empty():
                    rec.events.get_nowait()
        finally:
            await rec.close()
            for vol in vols:
                with contextlib.suppress(ConnectionLost):
                    await vol.close()

    def figures(values: list[float]) -> dict[str, float]:
        return {
            "p50_ms": round(pct(values, 50) * 1000, 1),
            "p95_ms": round(pct(values, 95) * 1000, 1),
            "min_ms": round(min(values) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1),
        }

    return {
        "calls": calls,
        "volunteers": volunteers,
        "accept_to_media_connected": figures(media_s),
        "accept_to_first_frame": figures(frame_s),
        "request_to_ring": figures(ring_s),
        "accept_to_assigned": figures(assigned_s),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--volunteers", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args()
    if args.calls < 1 or args.volunteers < 1:
        p.error("--calls and --volunteers must be at least 1")
    result = asyncio.run(bench(args.calls, args.volunteers))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['calls']} calls, {result['volunteers']} volunteers, loopback, aiortc")
    for key in (
        "accept_to_media_connected",
        "accept_to_first_frame",
        "request_to_ring",
        "accept_to_assigned",
    ):
        f = result[key]
        print(
            f"{key.replace('_', ' '):28} p50 {f['p50_ms']:7.1f} ms  p95 {f['p95_ms']:7.1f} ms"
            f"  (min {f['min_ms']:.1f}, max {f['max_ms']:.1f})"
        )


if __name__ == "__main__":
    main()
