"""A signal relayed between two broker nodes: latency at a steady rate, and the Redis transports
a node channel could use, measured side by side.

``nodes`` (the default): starts a ``redis-server`` (or, with ``--cluster``, a local three-master
Redis Cluster) on free loopback ports and two ``vabroker serve`` nodes on it; sets up ``--calls``
calls, each recipient on node A and its volunteer on node B; then both parties of every call
send numbered signals, ``--rate`` messages a second in all, for ``--seconds``: one signal every
1/rate, the senders taking turns (``--aligned``: every sender at once, a burst of all of them
every ``2 * calls / rate``, as this bench sent before the turns were added). Each signal's
latency is from the sender's ``send`` to the other party's receipt (both in this process, one
clock): client -> node A -> Redis -> node B -> client (``--same-node``: both parties on node A,
the baseline without node-to-node traffic). Every signal is counted: copies, and those not
arrived 30 s after the last was sent (a node behind the rate drains its backlog meanwhile).
Prints p50/p99/max per run and min/median/max over ``--runs`` runs.

``redis``: the transport alone, without nodes: one publisher and one subscriber on a Redis
Cluster's master, ``--rate`` messages a second, for sharded pub/sub (SPUBLISH -> SSUBSCRIBE)
and for a stream (XADD -> XREAD BLOCK), one-way latency in this process.

    python bench/relay.py --rate 2000 --seconds 10 --runs 3
    python bench/relay.py --cluster --rate 2000 --seconds 10 --runs 3
    python bench/relay.py redis --rate 2000 --seconds 10 --runs 3
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serving import SECRET, broker_process  # noqa: E402
from signaling.auth import mint  # noqa: E402
from tests.redis_procs import RedisClusterProcs, RedisServer  # noqa: E402

EN = {"languages": ["en"], "timezone": "Europe/London"}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(latencies_ms: list[float]) -> dict[str, float]:
    return {
        "count": len(latencies_ms),
        "p50_ms": round(pct(latencies_ms, 50), 3),
        "p99_ms": round(pct(latencies_ms, 99), 3),
        "max_ms": round(max(latencies_ms), 3),
    }


@contextlib.contextmanager
def redis_for(cluster: bool) -> Iterator[str]:
    if cluster:
        with RedisClusterProcs.start() as procs:
            yield procs.url
    else:
        with RedisServer.start() as server:
            yield server.url


# --- nodes ---------------------------------------------------------------------------------------


class Peer:
    """One party's WebSocket: requests answered by ref; signals timed on arrival."""

    def __init__(self, ws: Any, sub: str) -> None:
        self.ws = ws
        self.sub = sub
        self.refs = 0
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.kinds: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self.arrived: list[tuple[int, float]] = []
        self.errors: list[dict[str, Any]] = []
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, sub: str, role: str) -> Peer:
        ws = await websockets.connect(url, proxy=None, max_size=2**20, ping_interval=None)
        peer = cls(ws, sub)
        welcome = await peer.request({"type": "hello", "token": mint(SECRET, sub, role, **EN)})
        assert welcome["type"] == "welcome", welcome
        return peer

    async def _read(self) -> None:
        async for raw in self.ws:
            now = time.perf_counter()
            msg = json.loads(raw)
            kind = msg.get("type")
            if kind == "signal":
                seq = int(msg["data"]["candidate"]["candidate"].split()[0].split(":")[1])
                self.arrived.append((seq, now))
            elif msg.get("ref") in self.waiting:
                self.waiting.pop(msg["ref"]).set_result(msg)
            elif kind == "error":
                self.errors.append(msg)
            else:
                self.kinds.setdefault(kind, asyncio.Queue()).put_nowait(msg)

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.refs += 1
        ref = f"q{self.refs}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[ref] = future
        await self.ws.send(json.dumps({**message, "ref": ref}))
        return await asyncio.wait_for(future, 15)

    async def next(self, kind: str) -> dict[str, Any]:
        return await asyncio.wait_for(self.kinds.setdefault(kind, asyncio.Queue()).get(), 15)

    async def close(self) -> None:
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
            await self.reader
        with contextlib.suppress(TimeoutError, websockets.ConnectionClosed):
            await asyncio.wait_for(self.ws.close(), 5)


async def _call(a_url: str, b_url: str, i: int) -> tuple[Peer, Peer, str]:
    vol = await Peer.connect(b_url, f"v{i}", "volunteer")
    assert (await vol.request({"type": "availability", "available": True}))["available"]
    rec = await Peer.connect(a_url, f"r{i}", "recipient")
    status = await rec.request({"type": "call.request"})
    call = status["call"]
    while (await vol.next("call.ring"))["call"] != call:
        pass
    assigned = await vol.request({"type": "call.accept", "call": call})
    assert assigned["type"] == "call.assigned", assigned
    await rec.next("call.assigned")
    return rec, vol, call


async def _pump(
    sender: Peer,
    call: str,
    rate: float,
    due: float,
    until: float,
    first: int,
    sent: dict[int, float],
) -> int:
    """Send numbered signals from ``first`` on at ``rate``, the first at ``due``, until
    ``until``; returns the next number (numbers go on across the warm-up, so that a late
    warm-up signal is told apart)."""
    period = 1.0 / rate
    seq = first
    while due < until:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        text = f"candidate:{seq} 1 udp 1 127.0.0.1 9 typ host"
        sent[seq] = time.perf_counter()
        data = {"candidate": {"candidate": text, "sdpMid": "0"}}
        await sender.ws.send(json.dumps({"type": "signal", "call": call, "data": data}))
        seq += 1
        due += period
    return seq


async def nodes_run(
    store_url: str,
    calls: int,
    rate: float,
    seconds: float,
    same_node: bool = False,
    aligned: bool = False,
) -> dict[str, Any]:
    settings = {
        "VABROKER_STORE_URL": store_url,
        "VABROKER_MESSAGES_PER_S": str(rate),
        "VABROKER_MESSAGE_BURST": str(int(rate)),
        "VABROKER_FIRST_WAVE": str(calls),
        "VABROKER_DAILY_RING_CAP": "1000",
        "VABROKER_REQUESTS_PER_HOUR": "100000",
        "VABROKER_RING_TIMEOUT_S": "60",
        "VABROKER_WAVE_INTERVAL_S": "60",
    }
    async with (
        broker_process({**settings, "VABROKER_NODE_ID": "bench-a"}) as a,
        broker_process({**settings, "VABROKER_NODE_ID": "bench-b"}) as b,
    ):
        # With same_node, both parties on node A: the baseline without node-to-node traffic.
        pairs = [await _call(a.url, a.url if same_node else b.url, i) for i in range(calls)]
        per_sender = rate / (2 * calls)
        senders = [peer for rec, vol, _ in pairs for peer in (rec, vol)]
        calls_of = [call for _, _, call in pairs for _ in (0, 1)]
        # The other party of sender k is sender k ^ 1.
        next_seq = [1] * len(senders)
        # Warm up for a second at the rate (not counted), then measure.
        for phase in ("warm-up", "measured"):
            cpu_before = _cpu_s(a.pid) + _cpu_s(b.pid)
            clients_before = time.process_time()
            start = time.perf_counter()
            end = start + (1.0 if phase == "warm-up" else seconds)
            # Sender k first sends k / rate after the start, so that the senders together
            # send one signal every 1 / rate; with ``aligned``, all at once every
            # len(senders) / rate (bursts, as this bench sent before).
            step = 0.0 if aligned else 1.0 / rate
            sent: list[dict[int, float]] = [{} for _ in senders]
            for peer in senders:
                peer.arrived.clear()
            next_seq = list(
                await asyncio.gather(
                    *(
                        _pump(
                            peer,
                            calls_of[k],
                            per_sender,
                            start + k * step,
                            end,
                            next_seq[k],
                            sent[k],
                        )
                        for k, peer in enumerate(senders)
                    )
                )
            )
            # The last ones arrive (a node behind the rate drains its backlog); what has not
            # arrived after 30 s is counted lost.
            expected = sum(len(times) for times in sent)
            deadline = time.perf_counter() + 30
            while time.perf_counter() < deadline:
                got = sum(
                    sum(1 for seq, _ in senders[k ^ 1].arrived if seq in sent[k])
                    for k in range(len(senders))
                )
                if got >= expected:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # copies, if any
            cpu_used = _cpu_s(a.pid) + _cpu_s(b.pid) - cpu_before
            clients_used = time.process_time() - clients_before
        latencies: list[float] = []
        lost = copies = 0
        for k in range(len(senders)):
            receiver = senders[k ^ 1]
            first = min(sent[k], default=0)
            seqs = [s for s, _ in receiver.arrived if s >= first]
            copies += len(seqs) - len(set(seqs))
            lost += len(set(sent[k]) - set(seqs))
            latencies += [(t - sent[k][s]) * 1000 for s, t in receiver.arrived if s in sent[k]]
        errors = sum(len(peer.errors) for peer in senders)
        for rec, vol, _ in pairs:
            await rec.close()
            await vol.close()
    return {
        **summary(latencies),
        "achieved_rate": round(len(latencies) / seconds, 1),
        "not_arrived_30s": lost,
        "copies": copies,
        "errors": errors,
        # Both nodes' CPU time (user + system) per signal relayed, backlog included.
        "node_cpu_ms_per_signal": round(cpu_used * 1000 / max(1, len(latencies)), 3),
        # This process's (every party's socket, sending and timing): on the same machine, it
        # competes with the nodes for the CPUs.
        "client_cpu_ms_per_signal": round(clients_used * 1000 / max(1, len(latencies)), 3),
    }


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the transports alone -----------------------------------------------------------------------


async def redis_run(cluster_url: str, kind: str, rate: float, seconds: float) -> dict[str, Any]:
    from broker.store.redis import RedisStore

    store = RedisStore.from_url(cluster_url)
    await store.ping()  # reads the cluster's topology
    channel = "vb:node:bench"
    owner = store.r.get_node_from_key(channel)
    reader = aioredis.Redis(host=owner.host, port=int(owner.port), decode_responses=True)
    sent: dict[int, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()

    async def subscribe() -> None:
        pubsub = reader.pubsub()
        await pubsub.ssubscribe(channel)
        ready.set()
        while not done.is_set():
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if msg is not None:
                latencies.append((time.perf_counter() - sent[int(msg["data"])]) * 1000)
        await pubsub.aclose()

    async def read_stream() -> None:
        last = "$"
        ready.set()
        while not done.is_set():
            got = await reader.xread({channel: last}, block=500, count=1000)
            now = time.perf_counter()
            for _, entries in got:
                for entry_id, fields in entries:
                    last = entry_id
                    latencies.append((now - sent[int(fields["n"])]) * 1000)

    ready = asyncio.Event()
    await store.r.delete(channel)
    task = asyncio.create_task(subscribe() if kind == "sharded" else read_stream())
    await ready.wait()
    await asyncio.sleep(0.2)
    period = 1.0 / rate
    due = start = time.perf_counter()
    n = 0
    while due < start + seconds:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        n += 1
        sent[n] = time.perf_counter()
        if kind == "sharded":
            await store.r.execute_command("SPUBLISH", channel, str(n))
        else:
            await store.r.xadd(channel, {"n": str(n)}, maxlen=10000, approximate=True)
        due += period
    await asyncio.sleep(1.0)
    done.set()
    await task
    await store.r.delete(channel)
    await reader.aclose()
    await store.close()
    return {**summary(latencies), "lost": n - len(latencies)}


# --- runs ---------------------------------------------------------------------------------------


def spread(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
    values = [float(r[key]) for r in runs]
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=["nodes", "redis"], default="nodes")
    parser.add_argument("--cluster", action="store_true", help="nodes on a Redis Cluster")
    parser.add_argument(
        "--same-node", action="store_true", help="both parties on one node (the baseline)"
    )
    parser.add_argument(
        "--aligned",
        action="store_true",
        help="every sender at once, in bursts, instead of one signal every 1/rate in all",
    )
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--rate", type=float, default=2000.0, help="signals per second in all")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {"mode": args.mode, "rate": args.rate, "seconds": args.seconds}
    if args.mode == "nodes":
        runs = []
        with redis_for(args.cluster) as url:
            for i in range(args.runs):
                run = await nodes_run(
                    url, args.calls, args.rate, args.seconds, args.same_node, args.aligned
                )
                runs.append(run)
                if not args.json:
                    print(f"run {i + 1}: {run}")
                await _flush(url)
        result.update(
            store="redis cluster" if args.cluster else "redis",
            same_node=args.same_node,
            aligned=args.aligned,
            calls=args.calls,
            runs=runs,
            p50_ms=spread(runs, "p50_ms"),
            p99_ms=spread(runs, "p99_ms"),
            max_ms=spread(runs, "max_ms"),
        )
    else:
        with redis_for(True) as url:
            for kind in ("sharded", "stream"):
                runs = []
                for i in range(args.runs):
                    run = await redis_run(url, kind, args.rate, args.seconds)
                    runs.append(run)
                    if not args.json:
                        print(f"{kind} run {i + 1}: {run}")
                result[kind] = {
                    "runs": runs,
                    "p50_ms": spread(runs, "p50_ms"),
                    "p99_ms": spread(runs, "p99_ms"),
                }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key in ("p50_ms", "p99_ms", "max_ms"):
            if key in result:
                print(f"{key}: min/median/max {result[key]}")
        for kind in ("sharded", "stream"):
            if kind in result:
                print(f"{kind}: p50 {result[kind]['p50_ms']}, p99 {result[kind]['p99_ms']}")


async def _flush(url: str) -> None:
    from broker.store.redis import RedisStore

    store = RedisStore.from_url(url)
    try:
        if store.cluster:
            await store.r.flushall(target_nodes="primaries")
        else:
            await store.r.flushall()
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
