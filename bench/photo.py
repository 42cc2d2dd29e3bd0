"""In-call photo transfer time with real aiortc peers on 127.0.0.1.

The broker runs as its own process (``vabroker serve``, embedded store); one SDK volunteer and
one SDK recipient run in this one with loopback-only ICE. Once their call is connected (video
at 640x480), the volunteer asks the recipient's device for ``--photos`` photos over the call's
data channel and each is timed from the request to its last byte checked (size and SHA-256).

Two kinds of photo, both at ``--size`` (1920x1080 by default):

- ``pattern``: the SDK's test pattern rendered at its native size (a smooth gradient: small);
- ``detailed``: a picture full of fine detail, like a page of small print, which JPEG cannot
  squeeze (large: the transfer's worst case).

Prints min/median/max per kind, the photo's size, the throughput and the median time the
device alone takes to make the photo (render and JPEG-encode, no channel); ``--json`` prints them as
JSON.

    python -m bench.photo --photos 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from av import VideoFrame

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serving import SECRET, broker_process  # noqa: E402
from clients.calltools import Device, Photo, encode_jpeg, image_size  # noqa: E402
from clients.media import MediaOptions  # noqa: E402
from clients.roles import Recipient, Volunteer  # noqa: E402
from clients.sdk import Client, ConnectionLost  # noqa: E402
from signaling.auth import mint  # noqa: E402


class DetailedDevice(Device):
    """A camera looking at fine detail: random dots at full resolution, seeded per photo."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.taken = 0

    async def photo(self) -> Photo:
        self.taken += 1
        rng = np.random.default_rng(self.taken)
        luma = rng.integers(16, 236, (self.height, self.width), dtype=np.uint8)
        chroma = np.full((self.height // 2, self.width), 128, dtype=np.uint8)
        frame = VideoFrame.from_ndarray(np.vstack([luma, chroma]), format="yuv420p")
        data = await asyncio.to_thread(encode_jpeg, frame)
        return Photo(data, "image/jpeg", self.width, self.height, hashlib.sha256(data).hexdigest())


def figures(values: list[float]) -> dict[str, float]:
    return {
        "min_ms": round(min(values) * 1000, 1),
        "median_ms": round(statistics.median(values) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


async def bench(photos: int, size: tuple[int, int]) -> dict[str, Any]:
    settings = {"VABROKER_DAILY_RING_CAP": "1000", "VABROKER_REQUESTS_PER_HOUR": "1000"}
    options = MediaOptions(loopback_ice=True, connect_timeout_s=10)
    async with broker_process(settings) as broker:
        token = mint(SECRET, "v", "volunteer", name="v", languages=["en"])
        vol = Volunteer(Client(broker.url, token), options, auto_accept=True)
        await vol.client.connect()
        await vol.set_available(True)
        rtoken = mint(SECRET, "rec", "recipient", languages=["en"])
        rec = Recipient(Client(broker.url, rtoken), replace(options, photo_size=size))
        await rec.client.connect()
        out: dict[str, Any] = {"photos": photos, "size": f"{size[0]}x{size[1]}", "video": "640x480"}
        try:
            await rec.request()
            rcall = await rec.wait_call(10)
            await rcall.wait_connected(10)
            await asyncio.wait_for(vol.wait_call(10), 10)
            assert vol.call is not None
            vcall = vol.call
            await vcall.wait_connected(10)
            await vcall.tools.wait_open(10)
            pattern_device = rcall.tools.device
            for kind, device in (("pattern", pattern_device), ("detailed", DetailedDevice(*size))):
                rcall.tools.device = device
                times, sizes = [], []
                for _ in range(photos):
                    began = time.monotonic()
                    photo = await vcall.tools.photo()
                    times.append(time.monotonic() - began)
                    sizes.append(len(photo.data))
                    if image_size(photo.data) != size:
                        raise SystemExit(f"a {kind} photo arrived at {image_size(photo.data)}")
                # The device's own share (render and encode), without the channel.
                taking = []
                for _ in range(photos):
                    began = time.monotonic()
                    await device.photo()
                    taking.append(time.monotonic() - began)
                mib_s = sum(sizes) / sum(times) / (1 << 20)
                out[kind] = {
                    **figures(times),
                    "device_median_ms": round(statistics.median(taking) * 1000, 1),
                    "bytes_median": int(statistics.median(sizes)),
                    "throughput_mib_s": round(mib_s, 2),
                }
            await rcall.hang_up()
        finally:
            await rec.close()
            with contextlib.suppress(ConnectionLost):
                await vol.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--photos", type=int, default=10)
    p.add_argument("--size", default="1920x1080", help="the photo's width x height")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args()
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error("--size must look like 1920x1080")
    if args.photos < 1:
        p.error("--photos must be at least 1")
    if width < 512 or height < 96 or width % 2 or height % 2:
        p.error("--size must be even and at least 512x96 (the test pattern's stamp)")
    result = asyncio.run(bench(args.photos, (width, height)))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['photos']} photos of {result['size']} per kind, video {result['video']}")
    for kind in ("pattern", "detailed"):
        f = result[kind]
        print(
            f"{kind:9} {f['bytes_median'] / 1024:8.0f} KiB  min {f['min_ms']:7.1f} ms"
            f"  median {f['median_ms']:7.1f} ms  max {f['max_ms']:7.1f} ms"
            f"  ({f['throughput_mib_s']:.2f} MiB/s; taking the photo {f['device_median_ms']:.0f} ms)"
        )


if __name__ == "__main__":
    main()
