"""A minimal aiortc volunteer for the browser tests: goes on duty, accepts the first ring,
answers the page's offer with a 440 Hz tone, and counts the video frames it decodes."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp

from tests.helpers import Client

RATE = 48_000
SAMPLES = 960  # 20 ms


class ToneTrack(MediaStreamTrack):  # type: ignore[misc]
    """A 440 Hz sine at about -9 dBFS, paced in real time: audio the page can measure."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pts / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (np.arange(SAMPLES) + self._pts) / RATE
        pcm = (np.sin(2 * np.pi * 440 * t) * 12_000).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        self._pts += SAMPLES
        return frame


@dataclass
class Bot:
    client: Client
    pc: RTCPeerConnection = field(
        default_factory=lambda: RTCPeerConnection(RTCConfiguration(iceServers=[]))
    )
    frames: int = 0
    sizes: set[tuple[int, int]] = field(default_factory=set)
    call: str | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def answer_first_ring(self) -> None:
        """Accept the first ring and answer the offer; then serve signals until the call ends."""
        ring = await self.client.expect("call.ring", timeout=20)
        self.call = ring["call"]
        assigned = await self.client.request({"type": "call.accept", "call": self.call})
        assert assigned["type"] == "call.assigned", assigned

        @self.pc.on("track")  # type: ignore[untyped-decorator]
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video":
                self._tasks.append(asyncio.ensure_future(self._count(track)))

        while True:
            message = await self.client.recv(timeout=30)
            if message["type"] == "call.ended":
                self.ended.set()
                return
            if message["type"] != "signal":
                continue
            data = message["data"]
            if data.get("sdp"):
                await self.pc.setRemoteDescription(RTCSessionDescription(**data["sdp"]))
                self.pc.addTrack(ToneTrack())
                await self.pc.setLocalDescription(await self.pc.createAnswer())
                local = self.pc.localDescription
                await self.client.send(
                    {
                        "type": "signal",
                        "call": self.call,
                        "data": {"sdp": {"type": local.type, "sdp": local.sdp}},
                    }
                )
            elif data.get("candidate"):
                init = data["candidate"]
                candidate = candidate_from_sdp(init["candidate"].split(":", 1)[1])
                candidate.sdpMid = init.get("sdpMid")
                candidate.sdpMLineIndex = init.get("sdpMLineIndex")
                await self.pc.addIceCandidate(candidate)

    async def _count(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(Exception):  # the track ends with MediaStreamError on close
            while True:
                frame = await track.recv()
                self.frames += 1
                self.sizes.add((frame.width, frame.height))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()
        await self.client.close()
