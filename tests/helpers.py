"""Test helpers: an in-process server on a free loopback port, and a protocol client."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import websockets
from aiohttp import web
from websockets.asyncio.client import ClientConnection

from signaling.app import CONTEXT, Context, create_app
from signaling.auth import mint
from signaling.config import Settings
from signaling.server import make_runner

SECRET = "test-secret-0123456789abcdef0123456789"


@dataclass
class Server:
    url: str
    app: web.Application
    settings: Settings

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/ws"

    @property
    def ctx(self) -> Context:
        return self.app[CONTEXT]

    def token(self, sub: str, role: str = "volunteer", **claims: Any) -> str:
        return mint(SECRET, sub, role, **claims)

    def auth(self, sub: str, role: str = "volunteer", **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub, role, **claims)}"}

    async def connect(
        self, sub: str, role: str = "volunteer", hello: bool = True, **claims: Any
    ) -> Client:
        ws = await websockets.connect(self.ws_url, proxy=None, max_size=2**20)
        client = Client(ws, sub)
        if hello:
            welcome = await client.request(
                {"type": "hello", "token": self.token(sub, role, **claims)}
            )
            assert welcome["type"] == "welcome", welcome
            client.welcome = welcome
        return client


@contextlib.asynccontextmanager
async def start_server(**overrides: Any) -> AsyncIterator[Server]:
    # Ring windows open all day by default, so that tests pass at any hour of the real clock;
    # tests of the window set one explicitly.
    values: dict[str, Any] = {
        "jwt_secret": SECRET,
        "host": "127.0.0.1",
        "port": 0,
        "log_json": False,
        "ring_window_start": "00:00",
        "ring_window_end": "00:00",
        # The protocol tests expect a first wave of several volunteers; the production defaults
        # (one volunteer, then 2, 4... every 15 s) are tuned by the simulator, docs/dispatch.md.
        "first_wave": 5,
        "wave_interval_s": 8.0,
    }
    values.update(overrides)
    settings = Settings(**values)
    app = create_app(settings)
    runner = make_runner(app, settings, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Server(f"http://{host}:{port}", app, settings)
    finally:
        await runner.cleanup()


@dataclass
class Client:
    ws: ClientConnection
    sub: str
    welcome: dict[str, Any] = field(default_factory=dict)
    inbox: list[dict[str, Any]] = field(default_factory=list)
    _refs: itertools.count[int] = field(default_factory=itertools.count)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        if self.inbox:
            return self.inbox.pop(0)
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        return dict(json.loads(raw))

    async def expect(self, type_: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        """The next message of ``type_`` (matching ``match``); others are kept for later."""
        kept: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                if self.inbox:
                    msg = self.inbox.pop(0)
                else:
                    raw = await asyncio.wait_for(self.ws.recv(), max(0.0, deadline - loop.time()))
                    msg = dict(json.loads(raw))
                if msg.get("type") == type_ and all(msg.get(k) == v for k, v in match.items()):
                    return msg
                kept.append(msg)
        finally:
            self.inbox[:0] = kept

    async def request(self, message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Send with a fresh ref and return the answer carrying it."""
        ref = f"r{next(self._refs)}"
        await self.send({**message, "ref": ref})
        kept: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                raw = await asyncio.wait_for(self.ws.recv(), max(0.0, deadline - loop.time()))
                msg = dict(json.loads(raw))
                if msg.get("ref") == ref:
                    return msg
                kept.append(msg)
        finally:
            self.inbox.extend(kept)

    async def quiet(self, seconds: float = 0.3) -> list[dict[str, Any]]:
        """Everything that arrives within ``seconds``."""
        got = list(self.inbox)
        self.inbox.clear()
        with contextlib.suppress(TimeoutError):
            while True:
                raw = await asyncio.wait_for(self.ws.recv(), seconds)
                got.append(dict(json.loads(raw)))
        return got

    async def until_closed(self, timeout: float = 5.0) -> tuple[list[dict[str, Any]], int]:
        """Everything received until the server closed the connection, and its close code."""
        got = list(self.inbox)
        self.inbox.clear()
        try:
            while True:
                got.append(await self.recv(timeout))
        except websockets.ConnectionClosed:
            pass
        code = self.ws.close_code
        assert code is not None, "closed without a close code"
        return got, code

    async def close(self) -> None:
        await self.ws.close()
