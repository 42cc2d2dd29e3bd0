"""Media for a call, with aiortc: the recipient offers and sends video and audio, the helper
answers and sends audio.

Video comes from a camera device, a media file (``MediaPlayer``) or the built-in test pattern,
which stamps each frame's number into its pixels in blocks large enough to survive the codec, so
that the receiver can read the numbers back and prove the frames it decoded are the frames sent.

aiortc gathers every candidate inside ``setLocalDescription`` (its SDP is complete), so a
session sends its description and then end-of-candidates; it accepts trickled candidates from
peers that send them (browsers).

Loopback-only ICE (``MediaOptions.loopback_ice``) is for tests, benchmarks and the demo on one
machine: aioice never offers 127.0.0.1 as a host candidate, and its module-level
``get_host_addresses`` is the only hook. The hook installed here answers 127.0.0.1 only inside
a session that asked for it (a context variable), and the real addresses everywhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fractions
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import aioice.ice
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaPlayer, MediaRecorder
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from aiortc.sdp import candidate_from_sdp
from av import AudioFrame, VideoFrame

from clients.calltools import (
    TOOLS_CHANNEL_ID,
    TOOLS_LABEL,
    CallTools,
    PatternDevice,
    SourceDevice,
)

log = logging.getLogger("vabroker.media")

# --- loopback-only ICE -------------------------------------------------------------------------

_loopback_only: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "vabroker_loopback_ice", default=False
)
_real_get_host_addresses = aioice.ice.get_host_addresses


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if _loopback_only.get():
        return ["127.0.0.1"] if use_ipv4 else ["::1"]
    return list(_real_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6))


def _install_loopback_hook() -> None:
    if aioice.ice.get_host_addresses is not _get_host_addresses:
        aioice.ice.get_host_addresses = _get_host_addresses


# --- the test pattern --------------------------------------------------------------------------

STAMP_BITS = 16
BLOCK = 32  # pixels per side of one stamped bit: survives VP8/H.264 at modest bitrates
SYNC = [1, 0] * (STAMP_BITS // 2)


def _bits(value: int) -> list[int]:
    return [(value >> (STAMP_BITS - 1 - i)) & 1 for i in range(STAMP_BITS)]


def stamp(luma: np.ndarray[Any, np.dtype[np.uint8]], number: int) -> None:
    """Write ``number`` into the top rows of a luma plane: a sync row, the number's bits, and
    their complement, one ``BLOCK``-sized square per bit (white 1, black 0)."""
    rows = (SYNC, _bits(number), [1 - b for b in _bits(number)])
    for r, bits in enumerate(rows):
        for i, bit in enumerate(bits):
            y, x = r * BLOCK, i * BLOCK
            luma[y : y + BLOCK, x : x + BLOCK] = 235 if bit else 16


def read_stamp(luma: np.ndarray[Any, Any]) -> int | None:
    """The number stamped into a decoded luma plane, or None if the stamp is damaged (the
    sync row is wrong or a bit disagrees with its complement)."""
    if luma.shape[0] < 3 * BLOCK or luma.shape[1] < STAMP_BITS * BLOCK:
        return None
    q = BLOCK // 4

    def row(r: int) -> list[int]:
        out = []
        for i in range(STAMP_BITS):
            y, x = r * BLOCK + q, i * BLOCK + q
            mean = float(luma[y : y + 2 * q, x : x + 2 * q].mean())
            if 60 < mean < 190:
                out.append(-1)  # neither black nor white: the block is damaged
            else:
                out.append(1 if mean >= 190 else 0)
        return out

    sync, bits, inverse = row(0), row(1), row(2)
    if sync != SYNC or any(b < 0 or b + c != 1 for b, c in zip(bits, inverse, strict=True)):
        return None
    value = 0
    for b in bits:
        value = (value << 1) | b
    return value


class TestPatternTrack(VideoStreamTrack):
    """Synthetic video: a moving gradient with the frame number stamped in (see ``stamp``)."""

    __test__ = False  # a media source, not a test class to collect

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        fps: int = 30,
        native_size: tuple[int, int] | None = None,
        card: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()
        for w, h in ((width, height), native_size or (width, height)):
            if w < STAMP_BITS * BLOCK or h < 3 * BLOCK or w % 2 or h % 2:
                raise ValueError(
                    f"test pattern needs an even size of at least {STAMP_BITS * BLOCK}x{3 * BLOCK}"
                )
        self.width, self.height, self.fps = width, height, fps
        # The "sensor": a photo (clients.calltools.PatternDevice) is rendered at this size,
        # while the call's video goes at width x height.
        self.native_size = native_size or (width, height)
        self.zoom = 1.0
        self.max_zoom = 5.0
        # Printed lines shown on a white card under the stamp (a label, a letter): what an
        # automatic reader must read from the call's video.
        self.card = card
        self._cards: dict[tuple[int, int], np.ndarray[Any, np.dtype[np.uint8]]] = {}
        self.sent = 0
        self._t0: float | None = None
        self._pts = 0
        self._chroma = np.full((height // 2, width), 128, dtype=np.uint8)

    def picture(self, width: int, height: int, number: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
        """The luma plane of frame ``number`` at any size: the same picture (a gradient that
        the zoom widens) at more or fewer pixels, with the stamp; or the printed card."""
        if self.card:
            luma = self._card_at(width, height).copy()
            stamp(luma, number)
            return luma
        x = np.arange(width, dtype=np.float32) * (self.width / width)
        ramp = ((x - self.width / 2) / self.zoom + self.width / 2).astype(np.int32)
        row = ((ramp + 4 * number) % 220 + 16).astype(np.uint8)
        luma = np.tile(row, (height, 1))
        stamp(luma, number)
        return luma

    def _card_at(self, width: int, height: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
        cached = self._cards.get((width, height))
        if cached is None:
            assert self.card is not None
            cached = self._cards[(width, height)] = render_card(self.card, width, height)
        return cached

    def render(self, width: int, height: int) -> VideoFrame:
        """The current picture as a frame of ``width`` x ``height`` (grey chroma)."""
        luma = self.picture(width, height, self.sent % (1 << STAMP_BITS))
        chroma = np.full((height // 2, width), 128, dtype=np.uint8)
        return VideoFrame.from_ndarray(np.vstack([luma, chroma]), format="yuv420p")

    async def recv(self) -> VideoFrame:
        pts, time_base = await self._tick()
        number = self.sent % (1 << STAMP_BITS)
        luma = self.picture(self.width, self.height, number)
        frame = VideoFrame.from_ndarray(np.vstack([luma, self._chroma]), format="yuv420p")
        frame.pts, frame.time_base = pts, time_base
        self.sent += 1
        return frame

    async def _tick(self) -> tuple[int, Fraction]:
        # VideoStreamTrack.next_timestamp paces at 30 fps; other rates pace themselves.
        if self.fps == 30:
            pts, time_base = await self.next_timestamp()
            return int(pts), time_base
        if self.readyState != "live":
            raise MediaStreamError
        clock = 90_000
        if self._t0 is None:
            self._t0 = time.monotonic()
        else:
            self._pts += clock // self.fps
            wait = self._t0 + self._pts / clock - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        return self._pts, fractions.Fraction(1, clock)


def render_card(lines: tuple[str, ...], width: int, height: int) -> np.ndarray[Any, Any]:
    """Black print on a white card filling a luma plane, below the stamp's rows; the font is
    as large as lets the longest line fit (Pillow's built-in scalable font)."""
    from PIL import Image, ImageDraw, ImageFont

    top = 3 * BLOCK + height // 40
    image = Image.new("L", (width, height), 235)
    draw = ImageDraw.Draw(image)
    margin = width // 32
    room = height - top - margin
    size = max(8, min(room // max(1, len(lines)) * 3 // 4, height // 8))
    font = ImageFont.load_default(size=size)
    while size > 8 and max(font.getlength(line) for line in lines) > width - 2 * margin:
        size -= 1
        font = ImageFont.load_default(size=size)
    step = room // max(1, len(lines))
    for i, line in enumerate(lines):
        draw.text((margin, top + i * step), line, fill=16, font=font)
    return np.asarray(image, dtype=np.uint8)


class FrameTap(MediaStreamTrack):
    """Passes a video source's frames on unchanged and keeps the newest one, at the source's
    own size: the photo of a camera or a media file (clients.calltools.SourceDevice)."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.source = source
        self.last_frame: VideoFrame | None = None

    async def recv(self) -> Any:
        frame = await self.source.recv()
        if isinstance(frame, VideoFrame):
            self.last_frame = frame
        return frame

    def stop(self) -> None:
        super().stop()
        self.source.stop()


class ToneTrack(AudioStreamTrack):
    """Synthetic audio: a sine tone, 20 ms frames of 48 kHz mono, paced in real time."""

    def __init__(self, hz: float = 440.0, rate: int = 48_000) -> None:
        super().__init__()
        self.hz = hz
        self.rate = rate
        self._samples = 0
        self._began: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        n = self.rate // 50
        if self._began is None:
            self._began = time.monotonic()
        else:
            wait = self._began + self._samples / self.rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        t = (np.arange(n) + self._samples) / self.rate
        pcm = (np.sin(2 * math.pi * self.hz * t) * 8000).astype(np.int16).reshape(1, -1)
        frame = AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, self.rate)
        self._samples += n
        return frame


# --- options and statistics --------------------------------------------------------------------


@dataclass(frozen=True)
class MediaOptions:
    """How a party's media is made.

    ``video``: ``None`` (the test pattern), a media file path, or a camera device
    (``/dev/video0``, read with v4l2). ``photo_size``: the test pattern's native size, at
    which an in-call photo is taken while the video goes at ``width`` x ``height``. ``card``:
    lines of print the test pattern shows on a white card (for the automatic reader). ``loopback_ice``: gather only 127.0.0.1 (tests, the
    demo and benchmarks on one machine). ``connect_timeout_s`` bounds ICE and DTLS set-up:
    past it the session reports ``failed`` and closes. ``record``: write what is received to
    this file (MediaRecorder picks the container from the extension).
    """

    video: str | None = None
    width: int = 640
    height: int = 480
    fps: int = 30
    photo_size: tuple[int, int] | None = None
    card: tuple[str, ...] | None = None
    tone_hz: float = 440.0
    loopback_ice: bool = False
    connect_timeout_s: float = 10.0
    record: str | None = None
    read_stamps: bool = True


@dataclass
class MediaStats:
    """What one party's media did, for reports and tests (times are ``time.monotonic()``)."""

    started_at: float = 0.0
    connected_at: float | None = None
    first_video_at: float | None = None
    video_frames: int = 0
    stamps: list[int] = field(default_factory=list)
    damaged_frames: int = 0
    video_size: tuple[int, int] | None = None
    audio_frames: int = 0
    audio_peak: int = 0
    video_sent: int = 0
    state: str = "new"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state,
            "video_frames_received": self.video_frames,
            "audio_frames_received": self.audio_frames,
            "video_frames_sent": self.video_sent,
        }
        if self.connected_at is not None:
            out["connect_s"] = round(self.connected_at - self.started_at, 3)
        if self.first_video_at is not None:
            out["first_frame_s"] = round(self.first_video_at - self.started_at, 3)
        if self.stamps:
            out["stamps_in_order"] = all(
                a < b for a, b in zip(self.stamps, self.stamps[1:], strict=False)
            )
            out["damaged_frames"] = self.damaged_frames
        if self.video_size:
            out["video_size"] = f"{self.video_size[0]}x{self.video_size[1]}"
        return out


def ice_servers(servers: list[dict[str, Any]]) -> list[RTCIceServer]:
    """RTCIceServer objects from the broker's list (``urls`` may be a string or a list)."""
    out = []
    for server in servers:
        urls = server.get("urls")
        if not urls:
            continue
        out.append(
            RTCIceServer(
                urls=urls, username=server.get("username"), credential=server.get("credential")
            )
        )
    return out


SignalSender = Callable[[dict[str, Any]], Awaitable[None]]
StateReporter = Callable[[str], Awaitable[None]]


class MediaSession:
    """One party's peer connection for one call.

    ``send_signal`` sends a ``signal`` payload to the peer; ``report`` is told ``connected`` or
    ``failed`` once (for ``call.media``). ``close`` stops every track, player, recorder and
    task, and closes the peer connection.
    """

    def __init__(
        self,
        *,
        offerer: bool,
        ice_servers_: list[dict[str, Any]],
        options: MediaOptions,
        send_signal: SignalSender,
        report: StateReporter,
    ) -> None:
        self.offerer = offerer
        self.options = options
        self._stats = MediaStats(started_at=time.monotonic())
        self._send_signal = send_signal
        self._report = report
        self._reported = False
        if options.loopback_ice:
            _install_loopback_hook()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers(ice_servers_)))
        self._tracks: list[MediaStreamTrack] = []
        self.remote_tracks: list[MediaStreamTrack] = []
        self._player: MediaPlayer | None = None
        self._recorder: MediaRecorder | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending_candidates: list[dict[str, Any] | None] = []
        self._remote_set = False
        self._signals = asyncio.Lock()
        self.connected = asyncio.Event()
        self.first_frame = asyncio.Event()
        self.closed = False
        self._closed_task: asyncio.Future[None] | None = None
        self.pc.on("connectionstatechange", self._on_state)
        self.pc.on("track", self._on_track)
        self.pattern: TestPatternTrack | None = None
        # The in-call tools channel (clients.calltools): negotiated, so both peers open it
        # before the offer and answer, and the offer carries the data section.
        self.tools_channel = self.pc.createDataChannel(
            TOOLS_LABEL, negotiated=True, id=TOOLS_CHANNEL_ID
        )
        # The helper's tools act on the sender's camera (its device is set with the tracks).
        self.tools = CallTools(self.tools_channel)
        # The answerer's audio (a tone unless set before the offer arrives, e.g. a reader's
        # voice), and callables that see every decoded video frame (e.g. a reader).
        self.local_audio: MediaStreamTrack | None = None
        self.frame_sinks: list[Callable[[VideoFrame], None]] = []

    @property
    def stats(self) -> MediaStats:
        if self.pattern is not None:
            self._stats.video_sent = self.pattern.sent
        return self._stats

    # --- set-up --------------------------------------------------------------------------------
    def _add_local_tracks(self) -> None:
        o = self.options
        if self.offerer:
            video: MediaStreamTrack
            audio: MediaStreamTrack | None = None
            if o.video is None:
                self.pattern = TestPatternTrack(o.width, o.height, o.fps, o.photo_size, o.card)
                video = self.pattern
                self.tools.device = PatternDevice(self.pattern)
            else:
                if o.video.startswith("/dev/video"):
                    self._player = MediaPlayer(
                        o.video, format="v4l2", options={"video_size": f"{o.width}x{o.height}"}
                    )
                else:
                    self._player = MediaPlayer(o.video, loop=True)
                player_video = self._player.video
                if player_video is None:
                    raise ValueError(f"{o.video!r} has no video")
                tap = FrameTap(player_video)
                video = tap
                self.tools.device = SourceDevice(tap)
                audio = self._player.audio
            self._add(video)
            self._add(audio or ToneTrack(o.tone_hz))
        else:
            self._add(self.local_audio or ToneTrack(o.tone_hz))

    def _add(self, track: MediaStreamTrack) -> None:
        self._tracks.append(track)
        self.pc.addTrack(track)

    async def start(self) -> None:
        """The offerer's first step: tracks, offer, local description (gathers), send."""
        if o := self.options.record:
            self._recorder = MediaRecorder(o)
        self._arm_timeout()
        if not self.offerer:
            return
        self._add_local_tracks()
        async with self._signals:
            await self._with_context(self.pc.setLocalDescription(await self.pc.createOffer()))
            await self._send_local()

    def _arm_timeout(self) -> None:
        self._spawn(self._watch_setup())

    async def _watch_setup(self) -> None:
        try:
            await asyncio.wait_for(self.connected.wait(), self.options.connect_timeout_s)
        except TimeoutError:
            log.warning(
                "media did not connect within %.1f s (ICE %s)",
                self.options.connect_timeout_s,
                self.pc.iceConnectionState,
            )
            await self._tell("failed")
            await self.close()

    async def _with_context(self, op: Awaitable[None]) -> None:
        # Gathering happens inside setLocalDescription, in this task: the hook reads this.
        token = _loopback_only.set(self.options.loopback_ice)
        try:
            await op
        finally:
            _loopback_only.reset(token)

    async def _send_local(self) -> None:
        desc = self.pc.localDescription
        await self._send_signal({"sdp": {"type": desc.type, "sdp": desc.sdp}})
        await self._send_signal({"candidate": None})

    # --- signals from the peer -----------------------------------------------------------------
    async def handle_signal(self, data: dict[str, Any]) -> None:
        """An offer, answer, candidate or end-of-candidates from the peer. Bad data is logged
        and dropped: it never breaks the session."""
        if self.closed:
            return
        try:
            async with self._signals:
                if "sdp" in data and data["sdp"] is not None:
                    await self._remote_description(data["sdp"])
                elif "candidate" in data:
                    await self._candidate(data["candidate"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring a bad signal from the peer: %s", exc)

    async def _remote_description(self, sdp: dict[str, Any]) -> None:
        kind, text = sdp.get("type"), sdp.get("sdp")
        if kind not in ("offer", "answer") or not isinstance(text, str):
            raise ValueError(f"unsupported session description type {kind!r}")
        if kind == "offer" and self.offerer:
            raise ValueError("the offerer received an offer")
        if kind == "answer" and not self.offerer:
            raise ValueError("the answerer received an answer")
        if kind == "offer" and self.pc.remoteDescription is not None:
            # A second offer on resume is not how this SDK renegotiates: keep the session.
            raise ValueError("already have the peer's offer")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=text, type=kind))
        self._remote_set = True
        for cand in self._pending_candidates:
            await self._candidate(cand)
        self._pending_candidates.clear()
        if kind == "offer":
            self._add_local_tracks()
            await self._with_context(self.pc.setLocalDescription(await self.pc.createAnswer()))
            await self._send_local()

    async def _candidate(self, cand: dict[str, Any] | None) -> None:
        if not self._remote_set:
            self._pending_candidates.append(cand)
            return
        text = cand.get("candidate") if cand else None
        if not text:  # null or "": end-of-candidates
            await self.pc.addIceCandidate(None)
            return
        if not isinstance(text, str):
            raise ValueError("candidate.candidate must be a string")
        candidate = candidate_from_sdp(text.split(":", 1)[1] if ":" in text else text)
        candidate.sdpMid = cand.get("sdpMid") if cand else None
        candidate.sdpMLineIndex = cand.get("sdpMLineIndex") if cand else None
        if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
            candidate.sdpMLineIndex = 0
        await self.pc.addIceCandidate(candidate)

    # --- state and received media --------------------------------------------------------------
    async def _on_state(self) -> None:
        state = self.pc.connectionState
        self.stats.state = state
        if state == "connected" and not self.connected.is_set():
            self.stats.connected_at = time.monotonic()
            self.connected.set()
            await self._tell("connected")
        elif state == "failed":
            await self._tell("failed")

    async def _tell(self, state: str) -> None:
        if self._reported and state == "connected":
            return
        self._reported = True
        try:
            await self._report(state)
        except Exception as exc:  # the call may be over or the connection resuming
            log.info("could not report media %s: %s", state, exc)

    @property
    def tracks(self) -> list[MediaStreamTrack]:
        """Every track of this session: sent and received."""
        return [*self._tracks, *self.remote_tracks]

    def _on_track(self, track: MediaStreamTrack) -> None:
        self.remote_tracks.append(track)
        if self._recorder is not None:
            self._recorder.addTrack(track)
            if not getattr(self, "_recording", False):
                self._recording = True
                self._spawn(self._recorder.start())
        self._spawn(self._consume(track))

    async def _consume(self, track: MediaStreamTrack) -> None:
        # With a recorder the recorder reads the track; a relay would double-decode, so the
        # counters are only kept without one.
        if self._recorder is not None:
            return
        s = self.stats
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, VideoFrame | AudioFrame):
                continue
            if isinstance(frame, VideoFrame):
                s.video_frames += 1
                if s.first_video_at is None:
                    s.first_video_at = time.monotonic()
                    self.first_frame.set()
                s.video_size = (frame.width, frame.height)
                if self.options.read_stamps:
                    luma = frame.to_ndarray(format="yuv420p")[: frame.height]
                    number = read_stamp(luma)
                    if number is None:
                        s.damaged_frames += 1
                    else:
                        s.stamps.append(number)
                for sink in self.frame_sinks:
                    try:
                        sink(frame)
                    except Exception:
                        log.exception("a frame sink failed")
            else:
                s.audio_frames += 1
                pcm = frame.to_ndarray()
                s.audio_peak = max(s.audio_peak, int(np.abs(pcm).max()) if pcm.size else 0)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- teardown ------------------------------------------------------------------------------
    async def close(self) -> None:
        """Close everything; a second caller waits for the first one's close to finish."""
        if self._closed_task is None:
            self.closed = True
            self._closed_task = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closed_task)

    async def _close(self) -> None:
        await self.tools.close()
        if self._recorder is not None and getattr(self, "_recording", False):
            with contextlib.suppress(Exception):
                await self._recorder.stop()
        await self.pc.close()
        for track in self.tracks:
            track.stop()
        if self._player is not None:
            for played in (self._player.video, self._player.audio):
                if played is not None:
                    played.stop()
        tasks = list(self._tasks)  # the close runs in its own task, never one of these
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.stats.state = "closed"
