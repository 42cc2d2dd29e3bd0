"""An automatic reader: a helper peer that reads the text in the caller's video aloud.

It answers calls like a volunteer does (``Assistant`` is a ``Volunteer`` that accepts every
ring), then for each call:

- samples the decoded video a few times a second and scores each sample: sharp (variance of
  the Laplacian) and steady (little change from the sample before);
- reads the best recent frame with Tesseract OCR (the ``tesseract`` binary, TSV output, the
  call language's trained data), keeping words it is confident of;
- speaks what it read into the call's audio with espeak-ng in the call's language, and sends
  the same text over the call's tools channel (``assistant.text``, clients/calltools.py), so
  that a screen reader can read it too;
- says when it cannot read anything, and suggests moving the camera.

Optionally a vision-language model behind an HTTP API describes the frame or answers a
question (``VisionBackend``); it is never required.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import io
import json
import logging
import time
import wave
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError
from av import AudioFrame, VideoFrame

from clients.roles import Call, Volunteer
from clients.sdk import Client
from signaling.messages import CallAssigned, CallRing, ServerMessage

log = logging.getLogger("vabroker.assistant")

RATE = 48_000
FRAME_SAMPLES = RATE // 50  # 20 ms

# Tesseract's trained data and espeak-ng's voice for each language the reader speaks.
LANGUAGES: dict[str, tuple[str, str]] = {
    "en": ("eng", "en"),
    "es": ("spa", "es"),
    "ar": ("ara", "ar"),
}

# What the reader says when it reads nothing, in each language.
CANNOT_READ = {
    "en": "I cannot read any text yet. Hold the camera about thirty centimetres away, "
    "point it at the text, and keep it still.",
    "es": "Todavía no puedo leer ningún texto. Sostenga la cámara a unos treinta centímetros, "
    "apunte al texto y manténgala quieta.",
    "ar": "لا أستطيع قراءة أي نص بعد. أمسك الكاميرا على بعد ثلاثين سنتيمترا تقريبا ووجهها نحو النص وثبتها.",
}


def primary(language: str) -> str:
    lang = language.split("-", 1)[0].lower()
    return lang if lang in LANGUAGES else "en"


# --- speech ---------------------------------------------------------------------------------------


class SpeechTrack(AudioStreamTrack):
    """The reader's voice: queued speech at 48 kHz mono, silence in between, paced in real
    time. ``first_sound_at`` is when the first non-silent frame left (``time.monotonic()``)."""

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[np.ndarray[Any, np.dtype[np.int16]]] = deque()
        self._buffer = np.zeros(0, dtype=np.int16)
        self._samples = 0
        self._began: float | None = None
        self.first_sound_at: float | None = None
        self.spoken_samples = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def say(self, pcm: np.ndarray[Any, np.dtype[np.int16]]) -> None:
        self._queue.append(pcm)
        self.idle.clear()

    @property
    def speaking(self) -> bool:
        return bool(self._queue) or self._buffer.size > 0

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._began is None:
            self._began = time.monotonic()
        else:
            wait = self._began + self._samples / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        while self._buffer.size < FRAME_SAMPLES and self._queue:
            self._buffer = np.concatenate([self._buffer, self._queue.popleft()])
        chunk = self._buffer[:FRAME_SAMPLES]
        self._buffer = self._buffer[FRAME_SAMPLES:]
        if not self.speaking:
            self.idle.set()
        if chunk.size:
            self.spoken_samples += chunk.size
            if self.first_sound_at is None and int(np.abs(chunk).max()) > 0:
                self.first_sound_at = time.monotonic()
        pcm = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        pcm[: chunk.size] = chunk
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, RATE)
        self._samples += FRAME_SAMPLES
        return frame


async def synthesize(text: str, language: str) -> np.ndarray[Any, np.dtype[np.int16]]:
    """``text`` spoken by espeak-ng in ``language``, as 48 kHz mono samples."""
    voice = LANGUAGES[primary(language)][1]
    proc = await asyncio.create_subprocess_exec(
        "espeak-ng",
        "-v",
        voice,
        "-s",
        "165",
        "--stdout",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(text.encode())
    if proc.returncode != 0:
        raise RuntimeError(f"espeak-ng failed ({proc.returncode}): {err.decode(errors='replace')}")
    with wave.open(io.BytesIO(out)) as wav:
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    # Linear resampling to the call's rate: speech, not music.
    n = int(len(samples) * RATE / rate)
    positions = np.linspace(0, len(samples) - 1, n)
    return np.interp(positions, np.arange(len(samples)), samples).astype(np.int16)


# --- reading --------------------------------------------------------------------------------------


@dataclass
class Sample:
    at: float
    gray: np.ndarray[Any, np.dtype[np.uint8]]
    sharpness: float
    motion: float

    @property
    def score(self) -> float:
        # Sharp and still: motion blurs print more than anything else does.
        return self.sharpness / (1.0 + self.motion)


def sharpness(gray: np.ndarray[Any, Any]) -> float:
    """Variance of the Laplacian: high when edges (print) are crisp."""
    g = gray.astype(np.float32)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


@dataclass
class Reading:
    text: str
    words: list[str]
    confidence: float


def legible(reading: Reading) -> bool:
    """Print worth saying: at least two words of two letters or more. Digits alone are what a
    camera's own overlay (a clock, a frame count) or noise gives, and a stray short "word" read
    from shapes is no text either; a card's numbers are still said, among its words."""
    return sum(1 for w in reading.words if sum(ch.isalpha() for ch in w) >= 2) >= 2


async def ocr(gray: np.ndarray[Any, np.dtype[np.uint8]], language: str) -> Reading:
    """Tesseract on one grey frame (scaled up twice: small video print reads better)."""
    from PIL import Image

    image = Image.fromarray(gray)
    image = image.resize((image.width * 2, image.height * 2), Image.Resampling.BICUBIC)
    png = io.BytesIO()
    image.save(png, "PNG")
    proc = await asyncio.create_subprocess_exec(
        "tesseract",
        "-",
        "-",
        "-l",
        LANGUAGES[primary(language)][0],
        "--psm",
        "6",
        "tsv",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(png.getvalue())
    if proc.returncode != 0:
        raise RuntimeError(f"tesseract failed ({proc.returncode}): {err.decode(errors='replace')}")
    return parse_tsv(out.decode())


def parse_tsv(tsv: str, min_confidence: float = 50.0) -> Reading:
    """Tesseract's TSV as lines of confident words, in reading order."""
    lines: dict[tuple[int, int, int], list[str]] = {}
    confidences = []
    for row in tsv.splitlines()[1:]:
        cols = row.split("\t")
        if len(cols) < 12 or cols[0] != "5":
            continue
        word = cols[11].strip()
        try:
            conf = float(cols[10])
        except ValueError:
            continue
        if not word or conf < min_confidence:
            continue
        if not any(ch.isalnum() for ch in word):
            continue
        key = (int(cols[2]), int(cols[3]), int(cols[4]))
        lines.setdefault(key, []).append(word)
        confidences.append(conf)
    text_lines = [" ".join(words) for _, words in sorted(lines.items())]
    words = [w for line in text_lines for w in line.split()]
    return Reading(
        "\n".join(text_lines), words, sum(confidences) / len(confidences) if confidences else 0.0
    )


def word_accuracy(read: list[str], printed: list[str]) -> float:
    """The share of printed words read right, in order (longest common subsequence of the
    words, compared without case and surrounding punctuation)."""

    def norm(words: list[str]) -> list[str]:
        return [w.strip(".,;:!?()\"'").lower() for w in words if w.strip(".,;:!?()\"'")]

    a, b = norm(read), norm(printed)
    if not b:
        return 1.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1] / len(b)


@dataclass
class ReaderStats:
    started_at: float = field(default_factory=time.monotonic)
    first_text_at: float | None = None
    readings: int = 0
    cannot_read: int = 0
    spoken: list[str] = field(default_factory=list)
    ocr_s: list[float] = field(default_factory=list)


class Reader:
    """Reads one call's video aloud (see the module's docstring)."""

    def __init__(
        self,
        call: Call,
        speech: SpeechTrack,
        language: str,
        *,
        sample_every_s: float = 0.2,
        min_samples: int = 2,
        cannot_read_after: int = 2,
        retry_every_s: float = 1.0,
        change_threshold: float = 6.0,
    ) -> None:
        self.call = call
        self.speech = speech
        self.language = primary(language)
        self.sample_every_s = sample_every_s
        self.min_samples = min_samples
        self.cannot_read_after = cannot_read_after
        self.samples: deque[Sample] = deque(maxlen=8)
        self.stats = ReaderStats()
        self._last_sample_at = 0.0
        self._last_spoken: set[str] = set()
        self._misses = 0
        self.retry_every_s = retry_every_s
        self.change_threshold = change_threshold
        self._last_read: tuple[Sample, bool] | None = None
        self._new_sample = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def on_frame(self, frame: VideoFrame) -> None:
        """Called with every decoded frame; keeps a scored sample a few times a second."""
        now = time.monotonic()
        if now - self._last_sample_at < self.sample_every_s:
            return
        self._last_sample_at = now
        gray: np.ndarray[Any, np.dtype[np.uint8]] = frame.to_ndarray(format="gray").astype(np.uint8)
        previous = self.samples[-1].gray if self.samples else None
        motion = (
            float(np.abs(gray[::4, ::4].astype(np.int16) - previous[::4, ::4]).mean())
            if previous is not None and previous.shape == gray.shape
            else 0.0
        )
        self.samples.append(Sample(now, gray, sharpness(gray[::2, ::2]), motion))
        self._new_sample.set()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def best(self) -> Sample | None:
        if len(self.samples) < self.min_samples:
            return None
        return max(self.samples, key=lambda s: s.score)

    async def _run(self) -> None:
        try:
            while True:
                await self._new_sample.wait()
                self._new_sample.clear()
                sample = self.best()
                if sample is None or not self._worth_reading(sample):
                    continue
                began = time.monotonic()
                reading = await ocr(sample.gray, self.language)
                self.stats.ocr_s.append(time.monotonic() - began)
                self.stats.readings += 1
                self.samples.clear()  # read next from fresh frames
                self._last_read = (sample, bool(reading.words))
                await self._act(reading)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the reader stopped")

    def _worth_reading(self, sample: Sample) -> bool:
        """OCR is the cost of a call: once text was read, read again only when the picture
        changed (the camera moved on); while nothing was read, try again at most every
        ``retry_every_s``."""
        if self._last_read is None:
            return True
        last, found = self._last_read
        if not found:
            return sample.at - last.at >= self.retry_every_s
        if last.gray.shape != sample.gray.shape:
            return True
        change = float(np.abs(sample.gray[::4, ::4].astype(np.int16) - last.gray[::4, ::4]).mean())
        return change >= self.change_threshold

    async def _act(self, reading: Reading) -> None:
        words = {w.lower() for w in reading.words}
        if not legible(reading):
            self._misses += 1
            if self._misses == self.cannot_read_after:
                self.stats.cannot_read += 1
                await self.say(CANNOT_READ[self.language])
            return
        self._misses = 0
        # Say a text once: only when most of its words are new (the camera moved on).
        if self._last_spoken and len(words & self._last_spoken) >= 0.6 * len(words):
            return
        self._last_spoken = words
        if self.stats.first_text_at is None:
            self.stats.first_text_at = time.monotonic()
        self.call.tools.send_text(reading.text, self.language)
        await self.say(reading.text.replace("\n", ". "))

    async def say(self, text: str) -> None:
        self.stats.spoken.append(text)
        self.speech.say(await synthesize(text, self.language))
        # Read on only once this is said: new print is not talked over.
        await self.speech.idle.wait()


class Assistant(Volunteer):
    """Goes on duty and answers every ring with a ``Reader``."""

    def __init__(self, client: Client, media_options: Any = None) -> None:
        super().__init__(client, media_options, auto_accept=True)
        self.languages: dict[str, str] = {}
        self.readers: dict[str, Reader] = {}
        self.finished: list[ReaderStats] = []
        self._stopping: set[asyncio.Task[None]] = set()
        self.on_event.insert(0, self._on_assistant_event)

    def _on_assistant_event(self, message: ServerMessage) -> None:
        if isinstance(message, CallRing):
            self.languages[message.call] = message.language
        elif isinstance(message, CallAssigned) and self.call is not None:
            call = self.call
            if call.id in self.readers:
                return
            speech = SpeechTrack()
            call.media.local_audio = speech
            reader = Reader(call, speech, self.languages.get(call.id, "en"))
            call.media.frame_sinks.append(reader.on_frame)
            self.readers[call.id] = reader
            reader.start()
        for call_id in [c for c in self.readers if self.call is None or self.call.id != c]:
            reader = self.readers.pop(call_id)
            self.finished.append(reader.stats)
            task = asyncio.ensure_future(reader.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def close(self) -> None:
        for reader in self.readers.values():
            await reader.stop()
        await super().close()


# --- an optional vision-language model ------------------------------------------------------------


class VisionBackend:
    """A vision-language model behind an HTTP API: ``POST {url}`` with JSON ``{"image":
    base64 PNG, "prompt": text, "language": tag}`` and ``Authorization: Bearer {key}``,
    answered with JSON ``{"text": ...}``. Describes a frame or answers a question about it."""

    def __init__(self, url: str, key: str | None = None, timeout_s: float = 20.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not an http(s):// URL")
        self.url = url
        self.key = key
        self.timeout_s = timeout_s

    async def ask(self, gray: np.ndarray[Any, Any], prompt: str, language: str) -> str:
        import base64

        import aiohttp
        from PIL import Image

        png = io.BytesIO()
        Image.fromarray(gray).save(png, "PNG")
        body = {
            "image": base64.b64encode(png.getvalue()).decode(),
            "prompt": prompt,
            "language": language,
        }
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout, trust_env=False) as session,
            session.post(self.url, json=body, headers=headers) as response,
        ):
            raw = await response.read()
            if response.status != 200:
                raise RuntimeError(f"the vision model answered {response.status}")
        try:
            answer = json.loads(raw)
        except ValueError:
            raise RuntimeError("the vision model's answer is not JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
            raise RuntimeError("the vision model's answer has no text")
        return str(answer["text"])

    async def describe(self, gray: np.ndarray[Any, Any], language: str) -> str:
        return await self.ask(gray, "Describe what the camera shows, for a blind person.", language)
