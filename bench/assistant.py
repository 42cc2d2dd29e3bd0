"""The automatic reader: time from accept to the first words spoken, word accuracy, and CPU
per call, with real aiortc calls on 127.0.0.1.

The broker runs as its own process (``vabroker serve``, embedded store); each assistant runs as
its own process (``vabroker assistant``), so that its CPU (with its Tesseract and espeak-ng
children) can be read from /proc. SDK recipients in this process send 640x480 video of a
printed card (the test pattern's ``card``): a medicine label, a timetable and a letter.

1. Latency and accuracy: one assistant; ``--runs`` calls per card, one at a time. For each:
   accept -> the text arriving on the tools channel, and accept -> the first loud audio
   after it (the words spoken, as the recipient decodes them); the share of the card's
   printed words in the text, in order.
2. CPU: ``--concurrent`` assistants each in a call at once; once each has read its card, the
   CPU seconds their process trees use over ``--seconds``, per call, and how many such calls
   two cores hold; also the same counted from the calls' start (set-up and first reading).

    python -m bench.assistant --runs 5 --concurrent 4 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serving import SECRET, broker_process  # noqa: E402
from clients.assistant import word_accuracy  # noqa: E402
from clients.media import MediaOptions  # noqa: E402
from clients.roles import Call, Recipient  # noqa: E402
from clients.sdk import Client  # noqa: E402
from signaling.auth import mint  # noqa: E402

CARDS: dict[str, tuple[str, ...]] = {
    "medicine label": (
        "IBUPROFEN 200 mg TABLETS",
        "Adults: take one tablet with water",
        "every four to six hours if needed.",
        "Do not take more than six tablets",
        "in twenty four hours.",
    ),
    "timetable": (
        "Bus 42 to Central Station",
        "Monday to Friday",
        "06:15 07:05 07:45 08:30 09:10",
        "Saturday 08:00 10:00 12:00",
        "No service on Sunday",
    ),
    "letter": (
        "Dear Ms Patel,",
        "Your appointment at the eye clinic",
        "is on Tuesday 14 May at 10:30.",
        "Please bring your glasses and",
        "this letter with you. Thank you.",
    ),
}
LOUD = 2000  # the assistant sends silence except when it speaks


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process and its waited-for children (Tesseract, espeak-ng)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def assistants(url: str, count: int, logdir: Path) -> AsyncIterator[list[int]]:
    procs = []
    try:
        for i in range(count):
            token = mint(SECRET, f"reader-{i}", "assistant", name=f"Reader {i}", languages=["en"])
            log = (logdir / f"assistant-{i}.log").open("w")
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "clients.cli",
                        "assistant",
                        "--url",
                        url,
                        "--token",
                        token,
                        "--loopback",
                        "--connect-timeout",
                        "30",
                        "--lang",
                        "en",
                    ],
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "NO_PROXY": "127.0.0.1,localhost,::1"},
                )
            )
        for i, proc in enumerate(procs):
            log_file = logdir / f"assistant-{i}.log"
            deadline = time.monotonic() + 60
            while "on duty" not in log_file.read_text():  # signed in and on duty
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"assistant {i} is not on duty: {log_file.read_text()}")
                await asyncio.sleep(0.1)
        yield [p.pid for p in procs]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


async def one_call(url: str, sub: str, card: tuple[str, ...]) -> tuple[Recipient, Call, float]:
    options = MediaOptions(loopback_ice=True, connect_timeout_s=30, card=card)
    rec = Recipient(Client(url, mint(SECRET, sub, "recipient", languages=["en"])), options)
    await rec.client.connect()
    await rec.request(topic="read this", helper="assistant")
    call = await rec.wait_call(20)
    return rec, call, time.monotonic()


async def until(check: Any, within_s: float) -> float:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.01)
    return time.monotonic()


def figures(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


async def bench(runs: int, concurrent: int, seconds: float) -> dict[str, Any]:
    settings = {
        "VABROKER_DAILY_RING_CAP": "1000",
        "VABROKER_REQUESTS_PER_HOUR": "1000",
        "VABROKER_FIRST_WAVE": str(max(1, concurrent)),
    }
    out: dict[str, Any] = {"video": "640x480", "runs_per_card": runs}
    with tempfile.TemporaryDirectory() as tmp:
        async with broker_process(settings) as broker:
            text_s, words_s, accuracy = [], [], []
            per_card: dict[str, list[float]] = {}
            async with assistants(broker.url, 1, Path(tmp)):
                n = 0
                for name, card in CARDS.items():
                    for _ in range(runs):
                        n += 1
                        rec, call, assigned = await one_call(broker.url, f"r{n}", card)
                        try:
                            texts = call.tools.texts_received
                            arrived = await until(lambda t=texts: bool(t), 20)
                            call.media.stats.audio_peak = 0
                            stats = call.media.stats
                            spoken = await until(lambda s=stats: s.audio_peak > LOUD, 20)
                            text_s.append(arrived - assigned)
                            words_s.append(spoken - assigned)
                            share = word_accuracy(texts[0].split(), " ".join(card).split())
                            accuracy.append(share)
                            per_card.setdefault(name, []).append(share)
                            await call.hang_up()
                        finally:
                            await rec.close()
            out["accept_to_text_s"] = figures(text_s)
            out["accept_to_first_words_s"] = figures(words_s)
            out["word_accuracy"] = figures(accuracy)
            out["word_accuracy_by_card"] = {
                k: round(statistics.mean(v), 3) for k, v in per_card.items()
            }

            if concurrent:
                async with assistants(broker.url, concurrent, Path(tmp)) as pids:
                    cards = list(CARDS.values())
                    start_cpu, started = sum(cpu_seconds(p) for p in pids), time.monotonic()
                    calls = [
                        await one_call(broker.url, f"c{i}", cards[i % len(cards)])
                        for i in range(concurrent)
                    ]
                    try:
                        # The window starts once every card was read (or a minute passed).
                        with contextlib.suppress(TimeoutError):
                            await until(
                                lambda: all(c.tools.texts_received for _, c, _ in calls), 60
                            )
                        read = sum(1 for _, c, _ in calls if c.tools.texts_received)
                        before = sum(cpu_seconds(p) for p in pids)
                        began = time.monotonic()
                        await asyncio.sleep(seconds)
                        after = sum(cpu_seconds(p) for p in pids)
                        used = after - before
                        elapsed = time.monotonic() - began
                        per_call = used / elapsed / concurrent
                        # From the calls' start: media set-up and the first reading included.
                        whole = (after - start_cpu) / (time.monotonic() - started) / concurrent
                        out["cpu"] = {
                            "concurrent_calls": concurrent,
                            "calls_read": read,
                            "seconds": round(elapsed, 1),
                            "cores_per_call": round(per_call, 3),
                            "cores_per_call_with_first_reading": round(whole, 3),
                            "calls_per_2_cores": round(2 / per_call, 1) if per_call else None,
                        }
                        for _, call, _ in calls:
                            await call.hang_up()
                    finally:
                        for rec, _, _ in calls:
                            await rec.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=5, help="calls per card (default 5)")
    p.add_argument("--concurrent", type=int, default=4, help="calls at once for the CPU (0: skip)")
    p.add_argument("--seconds", type=float, default=20.0, help="CPU window (default 20)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args()
    if args.runs < 1 or args.concurrent < 0 or args.seconds <= 0:
        p.error("--runs must be at least 1, --concurrent 0 or more, --seconds positive")
    result = asyncio.run(bench(args.runs, args.concurrent, args.seconds))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.runs} calls per card, {len(CARDS)} cards, video {result['video']}")
    for key in ("accept_to_text_s", "accept_to_first_words_s", "word_accuracy"):
        f = result[key]
        print(
            f"{key.replace('_', ' '):26} min {f['min']:6.3f}  median {f['median']:6.3f}  max {f['max']:6.3f}"
        )
    for name, share in result["word_accuracy_by_card"].items():
        print(f"  {name:16} {share:.1%} of the printed words")
    if "cpu" in result:
        c = result["cpu"]
        print(
            f"CPU: {c['concurrent_calls']} calls at once ({c['calls_read']} read) "
            f"for {c['seconds']} s: "
            f"{c['cores_per_call']:.3f} cores per call, {c['calls_per_2_cores']} calls per 2 cores"
            f" ({c['cores_per_call_with_first_reading']:.3f} counting from the calls' start)"
        )


if __name__ == "__main__":
    main()
