"""In-call tools over the call's WebRTC data channel: the helper asks the recipient's device
for the torch, the other camera, zoom, or a photo at the camera's full resolution.

Everything here goes peer to peer on a negotiated data channel (label ``vabroker-tools``,
stream id 0) that both parties open with every call; the broker relays only the SDP that sets
it up and never sees a message. The wire format is in docs/protocol.md ("In-call tools") and
has one JavaScript twin, ``clients/web/calltools.js``.

Text messages are JSON objects with a ``type``; a photo's bytes follow its ``photo.begin`` as
binary messages of at most ``CHUNK_BYTES`` each, in order (the channel is reliable and
ordered), and the receiver checks the total size and the SHA-256 before it accepts them.

The recipient's side answers through a ``Device``: the SDK's own devices are the built-in test
pattern (zoom, and a photo rendered at the source's native size) and any other video track (a
photo is the last frame the source produced, at its own size). An application with a real
torch or a second camera subclasses ``Device``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import av
from aiortc import RTCDataChannel
from av import VideoFrame

log = logging.getLogger("vabroker.calltools")

TOOLS_LABEL = "vabroker-tools"
TOOLS_CHANNEL_ID = 0
CHUNK_BYTES = 16 * 1024  # safe for every browser's SCTP message size
MAX_PHOTO_BYTES = 16 * 1024 * 1024  # the protocol's ceiling for one photo
DEFAULT_PHOTO_LIMIT = 8 * 1024 * 1024
MAX_TEXT_BYTES = 16384  # a control message is small; anything longer is refused unread
TOOLS = ("torch", "camera", "zoom", "photo")
ERRORS = ("unsupported", "refused", "too_large", "failed", "bad_request", "busy")
PHOTO_TYPES = ("image/jpeg", "image/png", "image/webp")
ZOOM_RANGE = (1.0, 10.0)
MAX_READ_TEXT = 3000  # what an automatic reader read, sent as text: fits one message
ANSWER_TIMEOUT_S = 15.0
PHOTO_TIMEOUT_S = 60.0


class ToolFailed(Exception):
    """A tool the peer could not or would not use: ``code`` is one of ``ERRORS``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class BadToolMessage(ValueError):
    """A data-channel message that does not follow the in-call tools format."""


@dataclass(frozen=True)
class Photo:
    """A photo as it crossed the channel: the encoded bytes and what the sender said of them."""

    data: bytes
    mime: str
    width: int
    height: int
    sha256: str

    def save(self, path: str | Path) -> Path:
        """Write the image file as it was sent (the extension follows the type if ``path``
        has none)."""
        target = Path(path)
        if not target.suffix:
            target = target.with_suffix(
                {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp"}[self.mime]
            )
        target.write_bytes(self.data)
        return target


@dataclass(frozen=True)
class ToolAnswer:
    """A tool the recipient's device used: ``state`` is what it is now (e.g. ``{"torch":
    true}``, ``{"zoom": 2.0, "min": 1.0, "max": 5.0}``, ``{"facing": "user"}``)."""

    tool: str
    state: dict[str, Any]


# --- messages -----------------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_message(raw: str) -> dict[str, Any]:
    """A text message from the channel, checked field by field; raises ``BadToolMessage``
    naming what is wrong."""
    if len(raw.encode()) > MAX_TEXT_BYTES:
        raise BadToolMessage(f"a tools message is at most {MAX_TEXT_BYTES} bytes")
    try:
        message = json.loads(raw)
    except ValueError:
        raise BadToolMessage("a tools message must be JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise BadToolMessage("a tools message must be an object with a type")
    ident = message.get("id")
    if not isinstance(ident, str) or not 1 <= len(ident) <= 64:
        raise BadToolMessage("id must be a string of 1 to 64 characters")
    kind = message["type"]
    if kind == "tool.request":
        tool = message.get("tool")
        if tool not in TOOLS:
            raise BadToolMessage(f"tool must be one of {', '.join(TOOLS)}")
        if tool == "torch" and not isinstance(message.get("on"), bool):
            raise BadToolMessage("torch needs on: true or false")
        if tool == "zoom":
            level: Any = message.get("level")
            if not _finite(level) or not ZOOM_RANGE[0] <= level <= ZOOM_RANGE[1]:
                raise BadToolMessage(
                    f"zoom needs a level from {ZOOM_RANGE[0]:g} to {ZOOM_RANGE[1]:g}"
                )
        if tool == "photo":
            limit = message.get("max_bytes", DEFAULT_PHOTO_LIMIT)
            if (
                not isinstance(limit, int)
                or isinstance(limit, bool)
                or not 1 <= limit <= MAX_PHOTO_BYTES
            ):
                raise BadToolMessage(f"max_bytes must be an integer from 1 to {MAX_PHOTO_BYTES}")
    elif kind == "tool.result":
        ok = message.get("ok")
        # A request too malformed to name its tool is answered without one (bad_request).
        unnamed = ok is False and message.get("error") == "bad_request" and "tool" not in message
        if message.get("tool") not in TOOLS and not unnamed:
            raise BadToolMessage(f"tool must be one of {', '.join(TOOLS)}")
        if ok is True:
            if not isinstance(message.get("state", {}), dict):
                raise BadToolMessage("state must be an object")
        elif ok is False:
            if message.get("error") not in ERRORS:
                raise BadToolMessage(f"error must be one of {', '.join(ERRORS)}")
            if not isinstance(message.get("message"), str):
                raise BadToolMessage("message must be a string")
        else:
            raise BadToolMessage("ok must be true or false")
    elif kind == "photo.begin":
        if message.get("mime") not in PHOTO_TYPES:
            raise BadToolMessage(f"mime must be one of {', '.join(PHOTO_TYPES)}")
        for name, top in (("size", MAX_PHOTO_BYTES), ("width", 1 << 15), ("height", 1 << 15)):
            value = message.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                raise BadToolMessage(f"{name} must be an integer from 1 to {top}")
        digest = message.get("sha256")
        if not isinstance(digest, str) or len(digest) != 64 or not _is_hex(digest):
            raise BadToolMessage("sha256 must be 64 lowercase hex digits")
    elif kind == "assistant.text":
        text = message.get("text")
        if not isinstance(text, str) or not 1 <= len(text) <= MAX_READ_TEXT:
            raise BadToolMessage(f"text must be a string of 1 to {MAX_READ_TEXT} characters")
        if not isinstance(message.get("language"), str) or len(message["language"]) > 64:
            raise BadToolMessage("language must be a language tag")
    else:
        raise BadToolMessage(f"unknown tools message type {kind!r}")
    return message


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def chunks(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]


def encode_jpeg(frame: VideoFrame, quality: int = 3) -> bytes:
    """One frame as a JPEG file (``quality`` is the encoder's qscale: 2 best, 31 worst)."""
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height = frame.width, frame.height
    codec.pix_fmt = "yuvj420p"
    codec.time_base = Fraction(1, 30)
    codec.options = {"qmin": str(quality), "qmax": str(quality)}
    source = frame.reformat(format="yuvj420p")
    source.pts = 0
    packets = [*codec.encode(source), *codec.encode(None)]
    return b"".join(bytes(p) for p in packets)


def image_size(data: bytes) -> tuple[int, int]:
    """Width and height of an encoded JPEG or PNG, decoded (not read from a header the sender
    wrote), so a test can prove the resolution of what arrived."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        name = "png"
    elif data[:2] == b"\xff\xd8":
        name = "mjpeg"
    else:
        raise ValueError("not a JPEG or PNG image")
    codec: Any = av.CodecContext.create(name, "r")
    try:
        frames = [*codec.decode(av.Packet(data)), *codec.decode(None)]
    except av.FFmpegError as exc:
        raise ValueError(f"the image did not decode: {exc}") from None
    for frame in frames:
        if isinstance(frame, VideoFrame):
            return frame.width, frame.height
    raise ValueError("the image did not decode")


# --- the recipient's device -------------------------------------------------------------------


class Device:
    """What the recipient's device can do. Each method returns the tool's new state or raises
    ``ToolFailed("unsupported", ...)``; this base class supports nothing."""

    async def torch(self, on: bool) -> dict[str, Any]:
        raise ToolFailed("unsupported", "This camera has no torch.")

    async def switch_camera(self) -> dict[str, Any]:
        raise ToolFailed("unsupported", "This device has only one camera.")

    async def zoom(self, level: float) -> dict[str, Any]:
        raise ToolFailed("unsupported", "This camera cannot zoom.")

    async def photo(self) -> Photo:
        raise ToolFailed("unsupported", "This camera cannot take photos.")


class FrameSource(Protocol):
    """A video source that remembers its last frame at its own (native) size."""

    last_frame: VideoFrame | None


def photo_of(frame: VideoFrame) -> Photo:
    data = encode_jpeg(frame)
    return Photo(data, "image/jpeg", frame.width, frame.height, hashlib.sha256(data).hexdigest())


class SourceDevice(Device):
    """A camera or media file: a photo is the newest frame the source produced, at the size it
    produced it (before any scaling for the call)."""

    def __init__(self, source: FrameSource) -> None:
        self.source = source

    async def photo(self) -> Photo:
        frame = self.source.last_frame
        if frame is None:
            raise ToolFailed("failed", "The camera has not produced a picture yet.")
        return await asyncio.to_thread(photo_of, frame)


class PatternDevice(Device):
    """The SDK's test pattern as a camera: it zooms (the picture changes), and a photo is the
    current picture rendered at the pattern's native size, which may be larger than the video
    sent in the call (as a phone camera's sensor is)."""

    def __init__(self, pattern: Any) -> None:
        self.pattern = pattern

    async def zoom(self, level: float) -> dict[str, Any]:
        self.pattern.zoom = max(ZOOM_RANGE[0], min(self.pattern.max_zoom, level))
        return {"zoom": self.pattern.zoom, "min": ZOOM_RANGE[0], "max": self.pattern.max_zoom}

    async def photo(self) -> Photo:
        width, height = self.pattern.native_size
        frame = self.pattern.render(width, height)
        return await asyncio.to_thread(photo_of, frame)


# --- the channel --------------------------------------------------------------------------------


@dataclass
class _Incoming:
    ident: str
    mime: str
    size: int
    width: int
    height: int
    sha256: str
    parts: list[bytes] = field(default_factory=list)
    received: int = 0


# What the recipient hears when the helper uses a tool (said in the page's live region; the SDK
# passes it to ``on_notice``).
def notice(tool: str, request: dict[str, Any], result: dict[str, Any]) -> str:
    if result.get("ok"):
        state = result.get("state", {})
        if tool == "torch":
            return (
                "The helper turned on your torch."
                if state.get("torch")
                else "The helper turned off your torch."
            )
        if tool == "camera":
            return "The helper switched to your other camera."
        if tool == "zoom":
            return f"The helper zoomed your camera to {state.get('zoom', request.get('level')):g} times."
        return "Photo sent."
    error = result.get("error")
    what = {
        "torch": "your torch",
        "camera": "your other camera",
        "zoom": "zoom",
        "photo": "a photo",
    }[tool]
    if error == "refused":
        return "The helper asked for a photo. Photos are off in your settings, so none was sent."
    if error == "too_large":
        return "The helper asked for a photo, but it was too large to send."
    if error == "unsupported":
        return f"The helper asked for {what}, but your device does not support it. {result.get('message', '')}".strip()
    return f"The helper asked for {what}, but it did not work. {result.get('message', '')}".strip()


class CallTools:
    """Both ends of the tools channel of one call.

    The helper's end asks (``torch``, ``switch_camera``, ``zoom``, ``photo``); the recipient's
    end answers with its ``device`` and says what happened through ``on_notice``. With
    ``allow_photos`` false a photo request is refused. ``photo_limit`` bounds a photo either
    end will send or accept.
    """

    def __init__(
        self,
        channel: RTCDataChannel,
        *,
        device: Device | None = None,
        allow_photos: bool = True,
        photo_limit: int = DEFAULT_PHOTO_LIMIT,
        on_notice: Callable[[str], None] | None = None,
    ) -> None:
        self.channel = channel
        self.device = device or Device()
        self.allow_photos = allow_photos
        self.photo_limit = photo_limit
        self.on_notice = on_notice
        self.notices: list[str] = []
        self.photos_sent: list[Photo] = []
        self.photos_received: list[Photo] = []
        self.refused_messages: list[str] = []
        # What an automatic reader sent as text (the recipient's screen reader reads it).
        self.texts_received: list[str] = []
        self.on_text: Callable[[str], None] | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._photos: dict[str, asyncio.Future[Photo]] = {}
        self._incoming: _Incoming | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = asyncio.Event()
        self._drained = asyncio.Event()
        # Sending a photo waits below 8 chunks queued and resumes when 4 or fewer are left.
        channel.bufferedAmountLowThreshold = 4 * CHUNK_BYTES
        if channel.readyState == "open":
            self._open.set()
        channel.on("open", self._open.set)
        channel.on("message", self._on_message)
        channel.on("bufferedamountlow", self._drained.set)
        channel.on("close", self._on_close)

    # --- the helper's end ------------------------------------------------------------------------
    async def torch(self, on: bool) -> ToolAnswer:
        return await self._ask("torch", {"on": on})

    async def switch_camera(self) -> ToolAnswer:
        return await self._ask("camera", {})

    async def zoom(self, level: float) -> ToolAnswer:
        return await self._ask("zoom", {"level": level})

    async def photo(self, max_bytes: int | None = None, within_s: float = PHOTO_TIMEOUT_S) -> Photo:
        """A photo at the recipient camera's full resolution, checked (size, SHA-256)."""
        limit = min(max_bytes or self.photo_limit, MAX_PHOTO_BYTES)
        ident = f"p{next(self._ids)}"
        arrived: asyncio.Future[Photo] = asyncio.get_running_loop().create_future()
        self._photos[ident] = arrived
        try:
            answer = await self._ask("photo", {"max_bytes": limit}, ident=ident, within_s=within_s)
            del answer
            return await asyncio.wait_for(arrived, within_s)
        finally:
            self._photos.pop(ident, None)

    async def wait_open(self, within_s: float = 10.0) -> None:
        await asyncio.wait_for(self._open.wait(), within_s)

    async def _ask(
        self,
        tool: str,
        args: dict[str, Any],
        ident: str | None = None,
        within_s: float = ANSWER_TIMEOUT_S,
    ) -> ToolAnswer:
        try:
            await self.wait_open()
        except TimeoutError:
            raise ToolFailed("failed", "The call's tools channel did not open.") from None
        if self.channel.readyState != "open":
            raise ToolFailed("failed", "The call's tools channel is closed.")
        ident = ident or f"t{next(self._ids)}"
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = answer
        try:
            self.channel.send(
                json.dumps({"type": "tool.request", "id": ident, "tool": tool, **args})
            )
            result = await asyncio.wait_for(answer, within_s)
        except TimeoutError:
            raise ToolFailed("failed", f"No answer to {tool} within {within_s:g} s.") from None
        finally:
            self._waiting.pop(ident, None)
        if not result["ok"]:
            raise ToolFailed(result["error"], result["message"])
        return ToolAnswer(tool, dict(result.get("state", {})))

    # --- receiving --------------------------------------------------------------------------------
    def _on_message(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            self._on_chunk(raw)
            return
        try:
            message = parse_message(raw)
        except BadToolMessage as exc:
            self.refused_messages.append(str(exc))
            log.warning("refusing a tools message: %s", exc)
            ident = _loose_id(raw)
            if ident is not None and '"tool.request"' in raw:
                answer = {"type": "tool.result", "id": ident, "ok": False}
                tool = _loose_tool(raw)
                if tool is not None:
                    answer["tool"] = tool
                self._send({**answer, "error": "bad_request", "message": str(exc)})
            return
        kind = message["type"]
        if kind == "tool.request":
            task = asyncio.ensure_future(self._serve(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif kind == "tool.result":
            waiting = self._waiting.get(message["id"])
            if message["ok"] is False and message["id"] in self._photos:
                photo = self._photos[message["id"]]
                if not photo.done():
                    photo.set_exception(ToolFailed(message["error"], message["message"]))
            if waiting is not None and not waiting.done():
                waiting.set_result(message)
        elif kind == "photo.begin":
            self._begin_photo(message)
        elif kind == "assistant.text":
            self.texts_received.append(message["text"])
            if self.on_text is not None:
                self.on_text(message["text"])

    def _begin_photo(self, message: dict[str, Any]) -> None:
        ident = message["id"]
        waiting = self._photos.get(ident)
        if waiting is None:
            log.warning("a photo nobody asked for (%s): ignored", ident)
            self._incoming = None
            return
        if message["size"] > self.photo_limit:
            self._incoming = None
            waiting.set_exception(
                ToolFailed(
                    "too_large",
                    f"The photo is {message['size']} bytes, over the limit of {self.photo_limit}.",
                )
            )
            return
        self._incoming = _Incoming(
            ident,
            message["mime"],
            message["size"],
            message["width"],
            message["height"],
            message["sha256"],
        )

    def _on_chunk(self, data: bytes) -> None:
        incoming = self._incoming
        if incoming is None:
            return  # the rest of a photo that was refused or nobody asked for
        waiting = self._photos.get(incoming.ident)
        incoming.parts.append(data)
        incoming.received += len(data)
        if incoming.received < incoming.size:
            return
        self._incoming = None
        if waiting is None or waiting.done():
            return
        body = b"".join(incoming.parts)
        digest = hashlib.sha256(body).hexdigest()
        if incoming.received > incoming.size or digest != incoming.sha256:
            waiting.set_exception(
                ToolFailed("failed", "The photo arrived damaged (size or SHA-256 differ).")
            )
            return
        photo = Photo(body, incoming.mime, incoming.width, incoming.height, digest)
        self.photos_received.append(photo)
        waiting.set_result(photo)

    def _on_close(self) -> None:
        futures: list[asyncio.Future[Any]] = [*self._waiting.values(), *self._photos.values()]
        for future in futures:
            if not future.done():
                future.set_exception(ToolFailed("failed", "The call's tools channel closed."))

    # --- the recipient's end ---------------------------------------------------------------------
    async def _serve(self, request: dict[str, Any]) -> None:
        tool, ident = request["tool"], request["id"]
        result: dict[str, Any]
        try:
            if tool == "photo":
                result = await self._send_photo(
                    ident, request.get("max_bytes", DEFAULT_PHOTO_LIMIT)
                )
            else:
                if tool == "torch":
                    state = await self.device.torch(request["on"])
                elif tool == "camera":
                    state = await self.device.switch_camera()
                else:
                    state = await self.device.zoom(float(request["level"]))
                result = {"ok": True, "state": state}
        except ToolFailed as exc:
            result = {"ok": False, "error": exc.code, "message": exc.message}
        except Exception as exc:  # a device error is the peer's answer, never a crash here
            log.exception("tool %s failed", tool)
            result = {"ok": False, "error": "failed", "message": f"The device failed: {exc}"}
        self._send({"type": "tool.result", "id": ident, "tool": tool, **result})
        self._say(notice(tool, request, result))

    async def _send_photo(self, ident: str, asked_limit: int) -> dict[str, Any]:
        if not self.allow_photos:
            raise ToolFailed("refused", "The recipient does not allow photos.")
        photo = await self.device.photo()
        limit = min(asked_limit, self.photo_limit)
        if len(photo.data) > limit:
            raise ToolFailed(
                "too_large", f"The photo is {len(photo.data)} bytes, over the limit of {limit}."
            )
        self._send(
            {
                "type": "photo.begin",
                "id": ident,
                "mime": photo.mime,
                "size": len(photo.data),
                "width": photo.width,
                "height": photo.height,
                "sha256": photo.sha256,
            }
        )
        for part in chunks(photo.data):
            # Keep at most a few chunks queued: a large photo never balloons the buffer.
            while self.channel.bufferedAmount > 8 * CHUNK_BYTES:
                self._drained.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._drained.wait(), 1.0)
            self.channel.send(part)
        self.photos_sent.append(photo)
        return {
            "ok": True,
            "state": {"size": len(photo.data), "width": photo.width, "height": photo.height},
        }

    def send_text(self, text: str, language: str) -> None:
        """What an automatic reader read, as text beside its speech."""
        text = text[:MAX_READ_TEXT]
        ident = f"a{next(self._ids)}"
        self._send({"type": "assistant.text", "id": ident, "text": text, "language": language})

    def _send(self, message: dict[str, Any]) -> None:
        if self.channel.readyState == "open":
            self.channel.send(json.dumps(message, separators=(",", ":")))

    def _say(self, text: str) -> None:
        self.notices.append(text)
        if self.on_notice is not None:
            try:
                self.on_notice(text)
            except Exception:
                log.exception("on_notice failed")

    async def close(self) -> None:
        self._on_close()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _loose_id(raw: str) -> str | None:
    with contextlib.suppress(ValueError):
        message = json.loads(raw)
        if (
            isinstance(message, dict)
            and isinstance(message.get("id"), str)
            and len(message["id"]) <= 64
        ):
            return str(message["id"])
    return None


def _loose_tool(raw: str) -> str | None:
    with contextlib.suppress(ValueError):
        message = json.loads(raw)
        if isinstance(message, dict) and message.get("tool") in TOOLS:
            return str(message["tool"])
    return None


__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_PHOTO_LIMIT",
    "MAX_PHOTO_BYTES",
    "TOOLS_CHANNEL_ID",
    "TOOLS_LABEL",
    "BadToolMessage",
    "CallTools",
    "Device",
    "PatternDevice",
    "Photo",
    "SourceDevice",
    "ToolAnswer",
    "ToolFailed",
    "image_size",
]
