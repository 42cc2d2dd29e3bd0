"""The broker's own cost per connection, per relayed signal and per byte of memory.

A broker process (``vabroker serve``, in-memory store, see ``bench/serving.py``) pinned to the
second CPU, and this process, pinned to the first, holding ``--connections`` WebSocket clients.
For each of ``--runs`` runs, on a fresh broker:

1. connect: every client says ``hello`` and waits for ``welcome`` (50 at a time); the server's
   CPU time over the phase divided by the connections, and its RSS growth per idle connection;
2. match: the clients pair up (volunteer ``availability``, recipient ``call.request``, ring,
   ``call.accept``, both told ``call.assigned``), one pair at a time so that each ring reaches
   its own volunteer; the RSS a matched pair adds;
3. relay, closed loop: every pair at once exchanges ``--signals`` signals, each side answering
   the other's (an offer of about 4 KB, an answer of about 3 KB, then candidates of about
   130 bytes, the shapes a browser sends); server CPU per relayed signal and one-way latency;
4. relay, paced: the same at ``--rate`` signals/s in total, spread over the pairs.

Server CPU is the process's user + system time from ``/proc`` (10 ms ticks: the phases are
long enough for that to be under 2%). Each figure is printed as min / median / max over the
runs; ``--json`` prints every run and the summary as JSON.

    python -m bench.signal_cost --connections 1000 --signals 120 --runs 3
    python -m bench.signal_cost --connections 5000 --signals 12 --runs 3 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from bench.ring import pct, raise_fd_limit, token
from bench.serving import broker_process

OFFER_SDP = "v=0\r\n" + "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n" * 70
ANSWER_SDP = "v=0\r\n" + "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n" * 52
CANDIDATE = "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host generation 0 ufrag abcd"


def server_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def signal_data(n: int, sent_at: float) -> dict[str, Any]:
    """The n-th signal of a negotiation: offer, answer, then candidates; ``t`` (inside the
    candidate or the session description, which the broker relays unchanged) is when it was
    sent, for the one-way latency."""
    if n == 0:
        return {"sdp": {"type": "offer", "sdp": OFFER_SDP, "t": sent_at}}
    if n == 1:
        return {"sdp": {"type": "answer", "sdp": ANSWER_SDP, "t": sent_at}}
    return {"candidate": {"candidate": CANDIDATE, "sdpMid": "0", "sdpMLineIndex": 0, "t": sent_at}}


async def expect(ws: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(await ws.recv())
        if message.get("type") == kind:
            return message
        if message.get("type") == "error":
            raise RuntimeError(f"the broker refused: {message}")


async def connect(url: str, sub: str, role: str) -> ClientConnection:
    ws = await websockets.connect(
        url, proxy=None, max_queue=None, ping_interval=None, max_size=2**20
    )
    await ws.send(json.dumps({"type": "hello", "token": token(sub, role)}))
    await expect(ws, "welcome")
    return ws


async def relay(
    pairs: list[tuple[ClientConnection, ClientConnection, str]], signals: int, rate: float
) -> list[float]:
    """Each pair exchanges ``signals`` signals, alternating sides; closed loop (each waits for
    the last one to arrive) or, with ``rate``, one every ``len(pairs) / rate`` seconds per pair.
    Returns the one-way latencies in ms."""
    latencies: list[float] = []
    gap = len(pairs) / rate if rate > 0 else 0.0

    async def exchange(index: int, a: ClientConnection, b: ClientConnection, call: str) -> None:
        if gap:
            await asyncio.sleep(gap * index / len(pairs))  # spread the pairs over one period
        next_at = time.monotonic()
        for n in range(signals):
            sender, receiver = (a, b) if n % 2 == 0 else (b, a)
            data = signal_data(n, time.monotonic())
            await sender.send(json.dumps({"type": "signal", "call": call, "data": data}))
            got = await expect(receiver, "signal")
            inner = got["data"].get("sdp") or got["data"]["candidate"]
            latencies.append((time.monotonic() - inner["t"]) * 1000)
            if gap:
                next_at += gap
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    await asyncio.gather(*(exchange(i, *pair) for i, pair in enumerate(pairs)))
    return latencies


async def one_run(n: int, signals: int, rate: float, cpu: int | None) -> dict[str, Any]:
    settings = {
        "VABROKER_MESSAGES_PER_S": "1000000",
        "VABROKER_MESSAGE_BURST": "1000000",
        "VABROKER_REQUESTS_PER_HOUR": "100000",
        "VABROKER_DAILY_RING_CAP": "1000",
    }
    async with broker_process(settings) as broker:
        if cpu is not None:
            os.sched_setaffinity(broker.pid, {cpu})
        await asyncio.sleep(0.5)
        out: dict[str, Any] = {}
        clients: list[ClientConnection] = []
        try:
            rss0, cpu0 = rss_kib(broker.pid), server_cpu_s(broker.pid)
            subs = [
                (f"r{i:05d}", "recipient") if i % 2 else (f"v{i:05d}", "volunteer")
                for i in range(n)
            ]
            limit = asyncio.Semaphore(50)

            async def open_one(sub: str, role: str) -> ClientConnection:
                async with limit:
                    return await connect(broker.url, sub, role)

            clients = list(await asyncio.gather(*(open_one(s, r) for s, r in subs)))
            cpu1 = server_cpu_s(broker.pid)
            await asyncio.sleep(1.0)
            rss1 = rss_kib(broker.pid)
            out["connect_cpu_us"] = (cpu1 - cpu0) / n * 1e6
            out["rss_per_connection_kb"] = (rss1 - rss0) / n

            pairs: list[tuple[ClientConnection, ClientConnection, str]] = []
            cpu2 = server_cpu_s(broker.pid)
            for vol, rec in zip(clients[0::2], clients[1::2], strict=True):
                await vol.send(json.dumps({"type": "availability", "available": True}))
                await expect(vol, "availability")
                await rec.send(json.dumps({"type": "call.request", "language": "en"}))
                ring = await expect(vol, "call.ring")
                await vol.send(json.dumps({"type": "call.accept", "call": ring["call"]}))
                await expect(vol, "call.assigned")
                await expect(rec, "call.assigned")
                pairs.append((rec, vol, ring["call"]))
            out["match_cpu_us_per_pair"] = (server_cpu_s(broker.pid) - cpu2) / len(pairs) * 1e6
            await asyncio.sleep(1.0)
            out["rss_per_pair_kb"] = (rss_kib(broker.pid) - rss1) / len(pairs)

            for mode, pace in (("closed", 0.0), ("paced", rate)):
                before = server_cpu_s(broker.pid)
                started = time.monotonic()
                latencies = await relay(pairs, signals, pace)
                wall = time.monotonic() - started
                count = len(latencies)
                out[mode] = {
                    "signals": count,
                    "signals_per_s": count / wall,
                    "cpu_us_per_signal": (server_cpu_s(broker.pid) - before) / count * 1e6,
                    "p50_ms": pct(latencies, 50),
                    "p99_ms": pct(latencies, 99),
                }
        finally:
            for ws in clients:
                with contextlib.suppress(Exception):
                    await ws.close()
        return out


FIGURES = [
    ("connect_cpu_us", "server CPU per connection set-up, µs"),
    ("rss_per_connection_kb", "RSS per idle connection, KB"),
    ("match_cpu_us_per_pair", "server CPU per match (request to both assigned), µs"),
    ("rss_per_pair_kb", "RSS a matched pair adds, KB"),
    ("closed.cpu_us_per_signal", "server CPU per relayed signal, closed loop, µs"),
    ("closed.signals_per_s", "signals relayed per second, closed loop"),
    ("closed.p50_ms", "relay latency p50, closed loop, ms"),
    ("paced.cpu_us_per_signal", "server CPU per relayed signal, paced, µs"),
    ("paced.p50_ms", "relay latency p50, paced, ms"),
    ("paced.p99_ms", "relay latency p99, paced, ms"),
]


def figure(run: dict[str, Any], key: str) -> float:
    value: Any = run
    for part in key.split("."):
        value = value[part]
    return float(value)


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for key, _ in FIGURES:
        values = [figure(run, key) for run in runs]
        out[key] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    raise_fd_limit()
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu = cpus[1] if len(cpus) > 1 else None
    if server_cpu is not None:
        os.sched_setaffinity(0, {cpus[0]})  # the clients on one CPU, the broker on another
    runs = [
        await one_run(args.connections, args.signals, args.rate, server_cpu)
        for _ in range(args.runs)
    ]
    return {
        "connections": args.connections,
        "signals_per_pair": args.signals,
        "rate": args.rate,
        "runs": runs,
        "summary": summary(runs),
        "load_average": os.getloadavg(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=1000, help="clients, paired (even)")
    p.add_argument("--signals", type=int, default=120, help="signals each pair exchanges")
    p.add_argument("--rate", type=float, default=2000.0, help="paced phase: signals/s in all")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.connections < 2 or args.connections % 2:
        p.error("--connections must be an even number, at least 2")
    if args.signals < 2 or args.rate <= 0 or args.runs < 1:
        p.error("--signals must be at least 2, --rate above 0 and --runs at least 1")
    result = asyncio.run(main_async(args))
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    print(
        f"{args.connections} connections, {args.signals} signals per pair, paced at "
        f"{args.rate:g}/s; {args.runs} runs (min / median / max); load average "
        + " ".join(f"{x:.2f}" for x in result["load_average"])
    )
    for key, label in FIGURES:
        s = result["summary"][key]
        print(f"  {label}: {s['min']:.3f} / {s['median']:.3f} / {s['max']:.3f}")


if __name__ == "__main__":
    main()
