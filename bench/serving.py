"""A broker as a process of its own for the benchmarks: ``vabroker serve`` on a free 127.0.0.1
port, on the in-memory store unless told otherwise, with a bench secret, ring windows open all
day and quiet logs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-0123456789abcdef0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class BrokerProcess:
    url: str  # the WebSocket endpoint
    pid: int

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS for the broker process")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


@contextlib.asynccontextmanager
async def broker_process(settings: dict[str, str]) -> AsyncIterator[BrokerProcess]:
    """Start the broker with these ``VABROKER_*`` settings on top of the bench's own, wait until
    it accepts connections, and stop it afterwards."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "VABROKER_JWT_SECRET": SECRET,
            # The in-memory store unless a bench asks for another: nothing left on disk.
            "VABROKER_STORE_URL": "memory://",
            "VABROKER_RING_WINDOW_START": "00:00",
            "VABROKER_RING_WINDOW_END": "00:00",
            "VABROKER_LOG_LEVEL": "WARNING",
            "NO_PROXY": "127.0.0.1,localhost,::1",
            **settings,
        }
    )
    # The broker's log goes to a file: a pipe nobody reads would freeze it once full.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clients.cli", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        log.seek(0)
                        raise RuntimeError(
                            f"the broker did not start: {log.read()[-2000:]!r}"
                        ) from None
                    await asyncio.sleep(0.05)
            yield BrokerProcess(f"ws://127.0.0.1:{port}/v1/ws", proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)
