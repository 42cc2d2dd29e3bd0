"""Structured logs: one JSON object per line, with the call id on every line about a call.

What one request can write is bounded, so that hostile input cannot fill the disk or drown the
log: a message is cut at ``MAX_MESSAGE`` characters, any other field at ``MAX_FIELD``, a
traceback at ``MAX_TRACEBACK`` (its end is kept: the exception itself is at the end). The same
traceback again within ``REPEAT_WINDOW_S`` is not written again: the line says
``"exc_repeated": N`` and gives the exception's last line only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from datetime import UTC, datetime

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

MAX_MESSAGE = 2000
MAX_FIELD = 500
MAX_TRACEBACK = 8000
REPEAT_WINDOW_S = 60.0
_REPEATS_KEPT = 1000


def clip(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text) - limit} more characters]"


def clip_tail(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"[{len(text) - limit} characters before]...{text[-limit:]}"


class RepeatLimiter:
    """Counts identical tracebacks; only the first in each window is written whole."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S) -> None:
        self.window_s = window_s
        self._seen: dict[str, tuple[float, int]] = {}

    def repeats(self, text: str, now: float) -> int:
        """0 for a traceback to write whole; otherwise how many times it was seen this window."""
        key = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()
        first, count = self._seen.get(key, (0.0, 0))
        if now - first >= self.window_s:
            if len(self._seen) >= _REPEATS_KEPT:
                self._seen.clear()
            self._seen[key] = (now, 0)
            return 0
        self._seen[key] = (first, count + 1)
        return count + 1


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self.repeats = RepeatLimiter()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": clip(record.getMessage(), MAX_MESSAGE),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key[:64]] = _bounded(value)
        if record.exc_info:
            text = self.formatException(record.exc_info)
            seen = self.repeats.repeats(text, time.monotonic())
            if seen:
                entry["exc_repeated"] = seen
                entry["exc_last"] = clip(text.rstrip().rsplit("\n", 1)[-1], MAX_FIELD)
            else:
                entry["exc"] = clip_tail(text, MAX_TRACEBACK)
        return json.dumps(entry, default=str)


def _bounded(value: object) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    return clip(value if isinstance(value, str) else str(value), MAX_FIELD)


class TextFormatter(logging.Formatter):
    """The plain-text form (``log_json = false``), bounded the same way as a whole line."""

    def format(self, record: logging.LogRecord) -> str:
        return clip(super().format(record), MAX_MESSAGE + MAX_TRACEBACK)


def setup_logging(level: str = "INFO", json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
