"""Broker nodes as real processes (``vabroker serve``) for scale-out tests.

Each node listens on a free loopback port, writes its log to a file (a pipe nobody reads would
freeze it), and is stopped by its PID: SIGTERM for a clean stop, SIGKILL to play a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import websockets

from signaling.auth import mint
from tests.helpers import SECRET, Client
from tests.redis_procs import free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class BrokerNode:
    name: str
    port: int
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clients.cli", "serve", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.name} exited:\n{self.log_path.read_text()[-3000:]}")
            if self.ready() == 200:
                return
            time.sleep(0.05)
        raise TimeoutError(f"node {self.name} not ready:\n{self.log_path.read_text()[-3000:]}")

    def ready(self) -> int:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    async def connect(
        self, sub: str, role: str = "volunteer", resume: str | None = None, **claims: Any
    ) -> Client:
        return await connect(self.ws_url, sub, role, resume=resume, **claims)


def node_env(store_url: str, name: str, **settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VABROKER_")}
    values: dict[str, Any] = {
        "jwt_secret": SECRET,
        "host": "127.0.0.1",
        "store_url": store_url,
        "node_id": name,
        "log_json": "false",
        "ring_window_start": "00:00",
        "ring_window_end": "00:00",
        "node_beat_s": 0.5,
        "node_ttl_s": 4,
    }
    values.update(settings)
    env.update({f"VABROKER_{k.upper()}": str(v) for k, v in values.items()})
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    return env


@contextlib.contextmanager
def broker_nodes(
    store_url: str | list[str],
    logdir: Path,
    count: int = 2,
    names: list[str] | None = None,
    **settings: Any,
) -> Any:
    """``count`` nodes on one store; ``store_url`` may give each node its own URL (a cluster
    entered through different nodes), ``names`` their node ids."""
    nodes = []
    try:
        for i in range(count):
            name = names[i] if names else f"node-{'ABCDEFGH'[i]}"
            url = store_url[i] if isinstance(store_url, list) else store_url
            node = BrokerNode(
                name, free_port(), logdir / f"{name}.log", node_env(url, name, **settings)
            )
            node.start()
            nodes.append(node)
        yield nodes
    finally:
        for node in nodes:
            node.kill(signal.SIGTERM)


async def connect(
    ws_url: str, sub: str, role: str = "volunteer", resume: str | None = None, **claims: Any
) -> Client:
    ws = await websockets.connect(ws_url, proxy=None, max_size=2**20, ping_interval=None)
    client = Client(ws, sub)
    hello: dict[str, Any] = {"type": "hello", "token": mint(SECRET, sub, role, **claims)}
    if resume:
        hello["resume"] = resume
    welcome = await client.request(hello, timeout=15)
    assert welcome["type"] == "welcome", welcome
    client.welcome = welcome
    return client


async def wait_for(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message)
