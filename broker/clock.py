"""Time as the broker sees it.

The broker never reads the system clock itself: it is handed a ``Clock``. The server passes a
``RealClock``; tests and the simulator pass a ``VirtualClock`` and move it by hand, so the same
dispatch code runs a month of calls in seconds and a test of a 2-minute timeout needs no sleep.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch (UTC)."""
        ...


class RealClock:
    def now(self) -> float:
        return time.time()


class VirtualClock:
    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a virtual clock only moves forward")
        self._now += seconds
        return self._now

    def set(self, when: float) -> None:
        if when < self._now:
            raise ValueError("a virtual clock only moves forward")
        self._now = when
