"""Running the server: ``vabroker serve``."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

from aiohttp import web
from pydantic import SecretStr

from broker.store.sqlite_file import sqlite_path
from signaling.app import create_app
from signaling.config import Settings

log = logging.getLogger("vabroker.server")


def secret_or_generated(settings: Settings) -> Settings:
    """Without a configured secret (or public key, or JWKS URL), generate one and say how to mint tokens
    with it. Unsigned tokens are never accepted. On the durable store the generated secret is
    kept beside the store's file (readable by its owner only), so that tokens stay valid and
    erased people's pseudonyms (keyed by it) stay the same across restarts; on the in-memory
    store it is for this run only."""
    if (
        settings.jwt_secret is not None
        or settings.jwt_public_key is not None
        or settings.jwt_jwks_url is not None
    ):
        return settings
    kept = _secret_file(settings.store_url)
    if kept is not None and kept.exists():
        secret = kept.read_text().strip()
        where = f"read from {kept}"
    else:
        secret = secrets.token_urlsafe(32)
        where = "generated for this run"
        if kept is not None:
            kept.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secret + "\n")
            where = f"generated and kept in {kept}"
    print(
        f"No VABROKER_JWT_SECRET configured: {where}.\n"
        f"  export VABROKER_JWT_SECRET={secret}\n"
        "  vabroker token --role volunteer --sub vol1 --name 'Val' --lang en --tz Europe/London\n"
        "mints a development token for it (set the same variable in that shell first).",
        file=sys.stderr,
        flush=True,
    )
    return settings.model_copy(update={"jwt_secret": SecretStr(secret)})


def _secret_file(store_url: str) -> Path | None:
    """Where a generated secret is kept: beside the durable store's file; None in memory."""
    if not store_url.startswith("sqlite://"):
        return None
    path, _ = sqlite_path(store_url)
    return Path(path).absolute().parent / "jwt_secret"


def make_runner(
    app: web.Application, settings: Settings, shutdown_timeout: float = 5.0
) -> web.AppRunner:
    """The runner with the edge's timeouts. aiohttp's keep-alive timer runs from the moment a
    connection opens and closes it while no whole request head has arrived, so it is the header
    timeout (and the idle timeout between requests); a body left unread by a handler is drained
    for at most the body timeout before the connection closes."""
    return web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=settings.http_header_timeout_s,
        lingering_time=settings.http_body_timeout_s,
    )


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    settings = secret_or_generated(settings)
    app = create_app(settings)
    runner = make_runner(app, settings)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    await site.start()
    for sock in runner.addresses:
        log.info("listening", extra={"address": str(sock)})
    print(
        f"vabroker listening on http://{settings.host}:{settings.port}", file=sys.stderr, flush=True
    )
    if settings.demo:
        print(
            f"demo mode: open http://{settings.host}:{settings.port}/app/ in two tabs and use the "
            "demo sign-in (never run --demo where real people sign in)",
            file=sys.stderr,
            flush=True,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("shutting down: closing sessions so that clients reconnect elsewhere")
    await runner.cleanup()
