"""Push fan-out: ring pushes per second from one broker node to APNs over one HTTP/2
connection pool.

The APNs stand-in (the tests' h2 server, checking every provider token, header and payload)
runs in a child process on 127.0.0.1 so that it does not share this process's core. This process
runs the production push path: ``Ring`` events go through the ``Pusher`` (planning against the
memory store, recording each pushed device) into aioapns, with ``--connections`` HTTP/2
connections (default 1) multiplexing up to 1,000 streams each.

For each of ``--runs`` runs it rings ``--pushes`` volunteers (one device each) and measures from
the first event observed to the last push answered. Prints pushes/s per run and min/median/max;
``--json`` prints the figures as JSON.

    python bench/push_fanout.py --pushes 20000 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker.clock import RealClock  # noqa: E402
from broker.events import Ring  # noqa: E402
from broker.notify.devices import Device, Platform  # noqa: E402
from broker.notify.outcome import Backoff  # noqa: E402
from broker.notify.planner import PushPlanner  # noqa: E402
from broker.store.memory import MemoryStore  # noqa: E402
from signaling.metrics import Metrics  # noqa: E402
from signaling.push.apns import ApnsSender  # noqa: E402
from signaling.push.pusher import Pusher  # noqa: E402
from tests.push_standins import ApnsCredentials, ApnsStandIn, TestTLS, make_tls  # noqa: E402


async def serve(directory: Path) -> None:
    """Child process: the APNs stand-in; prints its port, then serves until stdin closes."""
    creds = ApnsCredentials(**json.loads((directory / "creds.json").read_text()))
    standin = ApnsStandIn(creds, TestTLS.load(directory))
    await standin.start()
    print(standin.port, flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    problems = sorted(set(standin.problems))
    print(json.dumps({"accepted": len(standin.pushes), "problems": problems}), flush=True)
    await standin.stop()


async def one_run(
    port: int,
    creds: ApnsCredentials,
    ca_file: str,
    pushes: int,
    connections: int,
    concurrency: int,
) -> tuple[float, float]:
    store = MemoryStore()
    tls = TestTLS.load(Path(ca_file).parent)
    sender = ApnsSender(
        creds.key_pem,
        creds.key_id,
        creds.team_id,
        creds.topic,
        base_url=f"https://127.0.0.1:{port}",
        ssl_context=tls.client(),
        max_connections=connections,
    )
    metrics = Metrics()
    pusher = Pusher(
        PushPlanner(store, frozenset({Platform.APNS})),
        {Platform.APNS: sender},
        store,
        RealClock(),
        metrics,
        concurrency=concurrency,
        timeout_s=30.0,
        backoff=Backoff(retries=0),
    )
    for n in range(pushes):
        await store.add_device(
            Device(
                id=f"d{n}", user_id=f"v{n}", platform=Platform.APNS, token=f"{n:064x}", voip=True
            )
        )
    await pusher.start()
    expires = time.time() + 45
    rings = [Ring(f"v{n}", "c_bench", "en", "Rae", expires) for n in range(pushes)]
    # Warm the connection (TLS handshake, provider token) outside the measurement.
    await store.add_device(
        Device(id="warm", user_id="warm", platform=Platform.APNS, token="f" * 64)
    )
    pusher.observe(Ring("warm", "c_warm", "en", "Rae", expires), False)
    await pusher.drain(30)
    started, cpu = time.perf_counter(), time.process_time()
    for ring in rings:
        pusher.observe(ring, False)
    await pusher.drain(300)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    sent = metrics.registry.get_sample_value(
        "vabroker_push_total", {"platform": "apns", "result": "sent"}
    )
    await pusher.close()
    if sent != pushes + 1:
        raise SystemExit(f"only {sent} of {pushes + 1} pushes were accepted")
    return pushes / elapsed, pushes / cpu


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--connections", type=int, default=1, help="HTTP/2 connections")
    parser.add_argument(
        "--concurrency", type=int, default=200, help="sends in flight (push_concurrency)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        await serve(Path(args.serve))
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        tls = make_tls(directory)
        creds = ApnsCredentials.generate()
        (directory / "creds.json").write_text(json.dumps(creds.__dict__))
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", tmp],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            assert child.stdout is not None and child.stdin is not None
            port = int(child.stdout.readline())
            results = [
                await one_run(
                    port, creds, tls.ca_file, args.pushes, args.connections, args.concurrency
                )
                for _ in range(args.runs)
            ]
            rates = [r[0] for r in results]
            cpu_rates = [r[1] for r in results]
            child.stdin.close()
            report: dict[str, Any] = json.loads(child.stdout.readline())
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
    if report["problems"]:
        raise SystemExit(f"the stand-in refused pushes: {report['problems']}")
    figures = {
        "pushes_per_run": args.pushes,
        "runs": args.runs,
        "connections": args.connections,
        "concurrency": args.concurrency,
        "pushes_per_s": {
            "min": round(min(rates)),
            "median": round(statistics.median(rates)),
            "max": round(max(rates)),
            "each": [round(r) for r in rates],
        },
        # Pushes per second of this process's CPU time: what one free core would sustain,
        # and a steadier figure than wall time on a shared machine.
        "pushes_per_cpu_s": {
            "min": round(min(cpu_rates)),
            "median": round(statistics.median(cpu_rates)),
            "max": round(max(cpu_rates)),
        },
        "load_average_1m": round(os.getloadavg()[0], 2),
        "accepted_by_standin": report["accepted"],
    }
    if args.json:
        print(json.dumps(figures))
    else:
        p, c = figures["pushes_per_s"], figures["pushes_per_cpu_s"]
        print(
            f"{args.pushes} ring pushes x {args.runs} runs over {args.connections} HTTP/2 "
            f"connection(s), {args.concurrency} in flight: {p['min']} / {p['median']} / "
            f"{p['max']} pushes/s; {c['min']} / {c['median']} / {c['max']} pushes per CPU "
            f"second (min/median/max); load average {figures['load_average_1m']}"
        )


if __name__ == "__main__":
    asyncio.run(main())
