"""Writes per second and memory after many ended calls: the durable store against memory.

Each store runs in a fresh process of its own (so that its resident memory is its own). It
files ``--calls`` whole calls one after another, each with the store writes a real call makes:
create, ring one volunteer, assign, mark media, finish, the day's counters, feedback from
both parties. The clock moves 30 s per call, so the durable store's ended calls leave memory
as they pass its horizon (ten minutes) while the memory store keeps every one.

Prints, per store: calls per second, store writes per second (the operations above that
change durable state; each is one SQLite commit in the durable store), resident memory
(RSS) before and after, and the file's size. ``--json`` prints the figures as JSON.

    python bench/durable.py --calls 200000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_781_524_800.0
WRITES_PER_CALL = 8  # create, reserve_ring, assign, mark_media, finish, add_counts, 2 feedback
VOLUNTEERS = 1000


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def file_calls(store_url: str, calls: int) -> dict[str, Any]:
    from broker.model import Call, CallState, EndReason, Feedback, Profile, Role
    from broker.stats import counts_of, day_of, scopes_of
    from broker.store import open_store

    store = open_store(store_url)
    for i in range(VOLUNTEERS):
        await store.put_profile(Profile(user_id=f"v{i}", role=Role.VOLUNTEER))
    rss_before = rss_kib()
    started = time.perf_counter()
    for i in range(calls):
        now = NOW + 30.0 * i
        cid, rec, vol = f"c{i}", f"r{i % 50_000}", f"v{i % VOLUNTEERS}"
        call = Call(
            id=cid,
            recipient_id=rec,
            language="en",
            languages=["en"],
            state=CallState.SEARCHING,
            requested_at=now,
            topic="reading a letter",
        )
        assert await store.create_call(call)
        assert await store.reserve_ring(cid, vol, day_of(now), 1_000_000, now)
        assert await store.assign(cid, vol, vol.upper(), Role.VOLUNTEER, now + 5)
        await store.mark_media(cid, now + 6)
        done = await store.finish(cid, EndReason.COMPLETED, Role.RECIPIENT, now + 20)
        assert done is not None
        counts = counts_of(done.call)
        await store.add_counts(day_of(now), {s: counts for s in scopes_of(done.call)})
        for party in (rec, vol):
            await store.add_feedback(Feedback(call_id=cid, user_id=party, rating="up", at=now))
    elapsed = time.perf_counter() - started
    rss_after = rss_kib()
    await store.close()
    return {
        "calls": calls,
        "seconds": round(elapsed, 2),
        "calls_per_s": round(calls / elapsed),
        "writes_per_s": round(calls * WRITES_PER_CALL / elapsed),
        "rss_before_mib": round(rss_before / 1024, 1),
        "rss_after_mib": round(rss_after / 1024, 1),
        "rss_growth_bytes_per_call": round((rss_after - rss_before) * 1024 / calls),
    }


def measure(store_url: str, calls: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--role", "run", "--store", store_url, "--calls", str(calls)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--calls", type=int, default=200_000)
    p.add_argument("--json", action="store_true")
    p.add_argument("--role", choices=["bench", "run"], default="bench", help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.role == "run":
        print(json.dumps(asyncio.run(file_calls(args.store, args.calls))))
        return
    folder = Path(tempfile.mkdtemp(prefix="vabroker-bench-"))
    results: dict[str, Any] = {}
    for name, url in (("memory", "memory://"), ("sqlite", f"sqlite://{folder}/broker.db")):
        results[name] = measure(url, args.calls)
    db = folder / "broker.db"
    results["sqlite"]["file_mib"] = round(db.stat().st_size / 2**20, 1)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, r in results.items():
        extra = f", file {r['file_mib']} MiB" if "file_mib" in r else ""
        print(
            f"{name:7s} {r['calls']} calls in {r['seconds']} s: {r['calls_per_s']} calls/s, "
            f"{r['writes_per_s']} writes/s; RSS {r['rss_before_mib']} -> {r['rss_after_mib']} "
            f"MiB ({r['rss_growth_bytes_per_call']} B per call){extra}"
        )


if __name__ == "__main__":
    main()
