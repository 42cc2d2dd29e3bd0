"""Ring latency with N volunteers online.

Three processes on 127.0.0.1: the broker (``vabroker serve``, embedded store), N volunteer
WebSocket clients in a second process, and one recipient in this one. For each of ``--calls``
calls the recipient asks for help; the volunteer process reports when the first ring arrives
and accepts it; the recipient then relays a burst of signals and hangs up.

Prints request -> first ring, accept -> assigned and signal relay (one way) p50/p99, relay
messages/s, and the broker's resident memory per idle connection. Times are CLOCK_MONOTONIC,
which every process on the machine shares. ``--json`` prints the figures as JSON.

    python bench/ring.py --volunteers 5000 --calls 200
    python bench/ring.py --volunteers 5000 --calls 200 --store sqlite   # the durable store
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import websockets

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-0123456789abcdef0123456789"


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def token(sub: str, role: str) -> str:
    from signaling.auth import mint

    return mint(SECRET, sub, role, name=sub, languages=["en"], timezone="UTC")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


# --- the volunteer process --------------------------------------------------------------------


async def volunteers(url: str, n: int) -> None:
    raise_fd_limit()
    accepted: set[str] = set()
    relay_times: list[float] = []

    async def one(i: int, ready: asyncio.Event) -> None:
        async with websockets.connect(url, proxy=None, max_queue=None, ping_interval=None) as ws:
            await ws.send(json.dumps({"type": "hello", "token": token(f"v{i:05d}", "volunteer")}))
            json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "availability", "available": True}))
            json.loads(await ws.recv())
            ready.set()
            accept_sent = 0.0
            async for raw in ws:
                now = time.monotonic()
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "call.ring":
                    call = msg["call"]
                    if call not in accepted:
                        accepted.add(call)
                        emit({"ev": "ring", "call": call, "t": now})
                        accept_sent = time.monotonic()
                        await ws.send(json.dumps({"type": "call.accept", "call": call}))
                elif kind == "call.assigned":
                    emit({"ev": "assigned", "call": msg["call"], "dt": now - accept_sent})
                elif kind == "signal":
                    sent = msg["data"]["candidate"]["t"]
                    relay_times.append(now - sent)
                    if msg["data"]["candidate"].get("last"):
                        emit({"ev": "relay", "dts": relay_times[:], "last_at": now})
                        relay_times.clear()

    tasks = []
    for start in range(0, n, 200):
        events = [asyncio.Event() for _ in range(start, min(n, start + 200))]
        tasks += [asyncio.create_task(one(start + k, e)) for k, e in enumerate(events)]
        await asyncio.gather(*(e.wait() for e in events))
    emit({"ev": "ready", "n": n})
    await asyncio.gather(*tasks)


# --- the recipient and the coordinator --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_http(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("broker did not start")


async def run(n: int, calls: int, burst: int, store_url: str = "memory://") -> dict[str, Any]:
    raise_fd_limit()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VABROKER_")}
    env.update(
        VABROKER_JWT_SECRET=SECRET,
        VABROKER_LOG_LEVEL="WARNING",
        VABROKER_DAILY_RING_CAP="1000",
        VABROKER_RING_WINDOW_START="00:00",
        VABROKER_RING_WINDOW_END="00:00",
        VABROKER_REQUESTS_PER_HOUR="100000",
        VABROKER_MESSAGES_PER_S="1000000",
        VABROKER_MESSAGE_BURST="1000000",
        VABROKER_STORE_URL=store_url,
        NO_PROXY="127.0.0.1,localhost",
    )
    logdir = Path(tempfile.mkdtemp(prefix="vabroker-bench-"))
    log = logdir / "broker.log"
    with log.open("w") as sink:
        broker = subprocess.Popen(
            [sys.executable, "-m", "clients.cli", "serve", "--port", str(port)],
            stdout=sink,
            stderr=sink,
            env=env,
            cwd=ROOT,
            preexec_fn=raise_fd_limit,
        )
    url = f"ws://127.0.0.1:{port}/v1/ws"
    vols: asyncio.subprocess.Process | None = None
    try:
        await wait_http(port, broker, log)
        await asyncio.sleep(0.3)
        rss_before = rss_kib(broker.pid)
        vols = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--role",
            "volunteers",
            "--url",
            url,
            "--volunteers",
            str(n),
            stdout=asyncio.subprocess.PIPE,
            env=env,
            cwd=ROOT,
            limit=2**24,
        )
        assert vols.stdout is not None
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def pump() -> None:
            assert vols is not None and vols.stdout is not None
            async for line in vols.stdout:
                await inbox.put(json.loads(line))

        pumping = asyncio.create_task(pump())
        t_connect = time.monotonic()
        while (await asyncio.wait_for(inbox.get(), 600))["ev"] != "ready":
            pass
        connect_s = time.monotonic() - t_connect
        await asyncio.sleep(1.0)
        rss_after = rss_kib(broker.pid)

        first_ring: list[float] = []
        accept: list[float] = []
        relay: list[float] = []
        rates: list[float] = []
        async with websockets.connect(url, proxy=None, max_queue=None, ping_interval=None) as rec:
            await rec.send(json.dumps({"type": "hello", "token": token("recipient", "recipient")}))
            json.loads(await rec.recv())
            for _ in range(calls):
                t0 = time.monotonic()
                await rec.send(json.dumps({"type": "call.request"}))
                status = json.loads(await rec.recv())
                call = status["call"]
                ring = await asyncio.wait_for(inbox.get(), 10)
                assert ring["ev"] == "ring" and ring["call"] == call, ring
                first_ring.append(ring["t"] - t0)
                while json.loads(await rec.recv())["type"] != "call.assigned":
                    pass
                assigned = await asyncio.wait_for(inbox.get(), 10)
                accept.append(assigned["dt"])
                t_burst = time.monotonic()
                for k in range(burst):
                    cand = {
                        "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host",
                        "t": time.monotonic(),
                    }
                    if k == burst - 1:
                        cand["last"] = True
                    await rec.send(
                        json.dumps({"type": "signal", "call": call, "data": {"candidate": cand}})
                    )
                done = await asyncio.wait_for(inbox.get(), 30)
                relay += done["dts"]
                rates.append(burst / (done["last_at"] - t_burst))
                await rec.send(json.dumps({"type": "call.end", "call": call}))
                while json.loads(await rec.recv())["type"] != "call.ended":
                    pass
        pumping.cancel()
        ms = 1000.0
        return {
            "volunteers_online": n,
            "calls": calls,
            "connect_all_s": round(connect_s, 2),
            "request_to_first_ring_ms": {
                "p50": round(pct(first_ring, 50) * ms, 2),
                "p99": round(pct(first_ring, 99) * ms, 2),
                "max": round(max(first_ring) * ms, 2),
            },
            "accept_to_assigned_ms": {
                "p50": round(pct(accept, 50) * ms, 2),
                "p99": round(pct(accept, 99) * ms, 2),
            },
            "signal_relay_ms": {
                "p50": round(pct(relay, 50) * ms, 2),
                "p99": round(pct(relay, 99) * ms, 2),
            },
            "relay_messages_per_s": round(statistics.median(rates)),
            "rss_per_idle_connection_kib": round((rss_after - rss_before) / n, 1),
            "broker_rss_mib": round(rss_after / 1024, 1),
        }
    finally:
        if vols is not None and vols.returncode is None:
            vols.kill()
            await vols.wait()
        broker.send_signal(signal.SIGTERM)
        try:
            broker.wait(10)
        except subprocess.TimeoutExpired:
            broker.kill()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--volunteers", type=int, default=5000)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--burst", type=int, default=200, help="signals relayed per call")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--store",
        default="memory://",
        help="the broker's store URL (default memory://); 'sqlite' for the durable store "
        "in a fresh temporary file",
    )
    p.add_argument(
        "--role", choices=["bench", "volunteers"], default="bench", help=argparse.SUPPRESS
    )
    p.add_argument("--url", help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.role == "volunteers":
        asyncio.run(volunteers(args.url, args.volunteers))
        return
    store_url = args.store
    if store_url == "sqlite":
        store_url = f"sqlite://{tempfile.mkdtemp(prefix='vabroker-bench-')}/broker.db"
    result = asyncio.run(run(args.volunteers, args.calls, args.burst, store_url))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{result['volunteers_online']} volunteers online, {result['calls']} calls (connected in {result['connect_all_s']} s)"
    )
    for key in ("request_to_first_ring_ms", "accept_to_assigned_ms", "signal_relay_ms"):
        figures = result[key]
        print(f"  {key:28s} " + "  ".join(f"{k} {v:7.2f}" for k, v in figures.items()))
    print(f"  {'relay_messages_per_s':28s} {result['relay_messages_per_s']}")
    print(
        f"  {'rss_per_idle_connection_kib':28s} {result['rss_per_idle_connection_kib']}  (broker RSS {result['broker_rss_mib']} MiB)"
    )


if __name__ == "__main__":
    main()
