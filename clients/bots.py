"""Command-line bots: a volunteer who goes on duty and answers, a recipient who asks for help,
and the demo that runs a broker with both. ``clients.cli`` registers them as commands."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from clients.media import MediaOptions
from clients.roles import Recipient, Volunteer
from clients.sdk import Client, ProtocolError, SdkError, http_url, ws_url
from signaling.messages import (
    CallAssigned,
    CallEnded,
    CallRing,
    CallStatus,
    CallWithdrawn,
    EscalationInfo,
    LobbyMessage,
    ServerMessage,
)

log = logging.getLogger("vabroker.bots")


class BotError(Exception):
    """Something the person running a bot must fix; the message says what."""


async def update_profile(broker: str, token: str, changes: dict[str, Any]) -> dict[str, Any]:
    """``PUT /v1/me/profile``; a refusal is a ``BotError`` with the broker's explanation."""
    url = http_url(broker) + "/v1/me/profile"
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, trust_env=False) as http,
            http.put(url, json=changes, headers=headers) as resp,
        ):
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise BotError(f"Could not update the profile at {url}: {exc}") from exc
    if resp.status != 200:
        message = body.get("message") if isinstance(body, dict) else None
        raise BotError(f"The broker refused the profile ({resp.status}): {message or body}")
    return dict(body)


# --- the volunteer -----------------------------------------------------------------------------


async def run_volunteer(
    party: Volunteer,
    console: Console,
    *,
    name: str = "",
    ask: bool = False,
    stop: asyncio.Event | None = None,
) -> None:
    """Go on duty and answer until ``stop`` is set (or forever), printing what happens. With
    ``ask`` every ring is put to the person at the terminal; otherwise ``party.auto_accept``
    decides."""
    tag = f"[cyan]{name}[/] " if name else ""
    prompt = _Prompt(party, console) if ask else None

    def show(message: ServerMessage) -> None:
        match message:
            case CallRing():
                what = f" about {message.topic!r}" if message.topic else ""
                if message.circle:
                    what += " [your circle]"
                console.print(
                    f"{tag}ring from {message.requester.display_name or 'someone'}"
                    f" ({message.language}){what}, {message.expires_in_s:.0f} s to answer"
                )
                if prompt is not None:
                    prompt(message)
            case CallWithdrawn():
                console.print(f"{tag}[dim]ring withdrawn: {message.reason}[/]")
            case CallAssigned():
                again = " (resumed)" if message.resumed else ""
                console.print(f"{tag}[green]in a call with {message.peer.display_name}{again}[/]")
            case CallEnded():
                console.print(f"{tag}call ended: {message.reason} (by {message.by or 'broker'})")
            case LobbyMessage() if message.closed:
                console.print(f"{tag}[dim]lobby closed: {message.reason}[/]")
            case LobbyMessage():
                more = f" and {message.more} more" if message.more else ""
                console.print(f"{tag}[dim]lobby: {len(message.entries)} waiting{more}[/]")

    party.on_event.append(show)
    party.client.on_resumed.append(lambda: console.print(f"{tag}[yellow]reconnected[/]"))
    await party.set_available(True)
    me = party.client.welcome.user.display_name if party.client.welcome else "?"
    console.print(f"{tag}on duty" if tag else f"on duty as {me}")
    if party.take_after_s is not None:
        await party.open_lobby()
    media_seen: set[str] = set()
    try:
        while stop is None or not stop.is_set():
            call = party.call
            if call is not None and call.id not in media_seen and call.media.connected.is_set():
                media_seen.add(call.id)
                s = call.media.stats
                took = (s.connected_at or 0) - s.started_at
                console.print(f"{tag}media connected in {took * 1000:.0f} ms")
            if stop is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.1)
            else:
                await asyncio.sleep(0.1)
    finally:
        with contextlib.suppress(SdkError):
            await party.set_available(False)


class _Prompt:
    """Asks the person at the terminal whether to accept a ring."""

    def __init__(self, party: Volunteer, console: Console) -> None:
        self.party = party
        self.console = console
        self.task: asyncio.Task[None] | None = None

    def __call__(self, ring: CallRing) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._ask(ring))

    async def _ask(self, ring: CallRing) -> None:
        answer = await _read_line("Accept? [y/N] ")
        if ring.call not in self.party.rings:
            self.console.print("[dim]that ring is gone[/]")
            return
        try:
            if answer.strip().lower() in ("y", "yes"):
                await self.party.accept(ring.call)
            else:
                await self.party.decline(ring.call)
        except ProtocolError as exc:
            self.console.print(f"[red]{exc}[/]")


def _settle(future: asyncio.Future[str], value: str) -> None:
    if not future.done():
        future.set_result(value)


async def _read_line(prompt: str) -> str:
    """A line from the terminal without blocking the loop. The reading thread is a daemon, so
    Ctrl-C does not wait for someone to press Enter; end of input reads as no."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()

    def read() -> None:
        try:
            line = input(prompt)
        except (EOFError, OSError):
            line = ""
        loop.call_soon_threadsafe(_settle, answer, line)

    threading.Thread(target=read, name="prompt", daemon=True).start()
    return await answer


# --- the recipient -----------------------------------------------------------------------------


@dataclass
class CallReport:
    outcome: str
    waited_s: float
    notified: int
    waves: int
    peer: str | None = None
    media: dict[str, Any] | None = None
    peer_media: dict[str, Any] | None = None
    # Nobody answered the search: what became of it (escalation), and the suggested delay.
    escalation: str | None = None
    retry_after_s: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _escalation_line(escalation: EscalationInfo) -> str:
    if escalation.outcome == "queued":
        where = escalation.org_name or escalation.org or "the help centre"
        return f"[yellow]nobody answered: handed to {where} ({escalation.queue})[/]"
    later = f"; try again in {escalation.retry_after_s} s" if escalation.retry_after_s else ""
    return f"[yellow]no volunteer free and no help centre ({escalation.outcome}){later}[/]"


def _search_view(started: float, notified: int, waves: int, state: str) -> Text:
    waited = time.monotonic() - started
    return Text.assemble(
        ("searching ", "bold"),
        f"notified {notified} volunteer{'s' if notified != 1 else ''}, ",
        f"wave {waves}, ",
        f"waiting {waited:4.1f} s  ",
        (state, "dim"),
    )


def _media_view(peer: str, stats: dict[str, Any], left: float) -> Text:
    return Text.assemble(
        ("in a call with ", "bold"),
        (peer, "bold green"),
        f"  video sent {stats.get('video_frames_sent', 0)}, ",
        f"audio received {stats.get('audio_frames_received', 0)}, ",
        (f"{max(0.0, left):.1f} s left", "dim"),
    )


async def run_call(
    party: Recipient,
    console: Console,
    *,
    language: str | None = None,
    topic: str | None = None,
    duration_s: float = 10.0,
    wait_s: float = 200.0,
    circle: str | None = None,
) -> CallReport:
    """Ask for help, show the search live, hold the call for ``duration_s`` once media is
    connected, hang up, and report what happened."""
    started = time.monotonic()
    status = await party.request(language, topic, circle=circle)
    notified, waves = status.notified or 0, 1
    escalation: str | None = None
    view = _search_view(started, notified, waves, status.state)
    with Live(view, console=console, transient=True) as live:
        deadline = started + wait_s
        while party.call is None:
            try:
                event = await party.next_event(
                    object, max(0.0, min(0.25, deadline - time.monotonic()))
                )
            except TimeoutError:
                if time.monotonic() > deadline:
                    with contextlib.suppress(SdkError):
                        await party.cancel(status.call)
                    return CallReport("gave up", time.monotonic() - started, notified, waves)
                live.update(_search_view(started, notified, waves, status.state))
                continue
            if isinstance(event, CallStatus) and event.call == status.call and event.ref is None:
                # Each later status is a wave that rang more people or widened the search (the
                # one with our ref is the answer to the request, already counted).
                waves += 1
                notified = max(notified, event.notified or 0)
                if event.escalation is not None:
                    escalation = event.escalation.outcome
                    console.print(_escalation_line(event.escalation))
            elif isinstance(event, CallEnded) and event.call == status.call:
                if event.retry_after_s:
                    console.print(f"nobody answered: try again in {event.retry_after_s} s")
                return CallReport(
                    event.reason,
                    time.monotonic() - started,
                    notified,
                    waves,
                    escalation=escalation,
                    retry_after_s=event.retry_after_s,
                )
            live.update(_search_view(started, notified, waves, status.state))
        call = party.call
        waited = time.monotonic() - started
        live.update(Text(f"answered by {call.peer_name} after {waited:.1f} s; connecting media"))
        try:
            await call.wait_connected(call.media.options.connect_timeout_s)
        except TimeoutError:
            await call.hang_up()
            return CallReport("media failed", waited, notified, waves, call.peer_name)
        end_at = time.monotonic() + duration_s
        while time.monotonic() < end_at and not call.ended.done():
            live.update(
                _media_view(call.peer_name, call.media.stats.summary(), end_at - time.monotonic())
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(call.ended), 0.2)
        if call.ended.done():
            ended = call.ended.result()
            await party.wait_media_closed()
        else:
            ended = await call.hang_up()
    console.print(
        f"answered by [bold]{call.peer_name}[/] after {waited:.1f} s"
        f" (notified {notified}, {waves} wave{'s' if waves != 1 else ''}); "
        f"call ended: {ended.reason}"
    )
    return CallReport(
        ended.reason,
        waited,
        notified,
        waves,
        call.peer_name,
        call.media.stats.summary(),
        escalation=escalation,
    )


def media_table(title: str, stats: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False)
    for key, value in stats.items():
        table.add_row(key.replace("_", " "), str(value))
    return table


# --- the demo ----------------------------------------------------------------------------------


@dataclass
class LocalBroker:
    url: str
    secret: str

    def token(self, sub: str, role: str, **claims: Any) -> str:
        from signaling.auth import mint

        return mint(self.secret, sub, role, **claims)


@contextlib.asynccontextmanager
async def local_broker(**settings: Any) -> AsyncIterator[LocalBroker]:
    """A broker in this process on a free port of 127.0.0.1, with a secret made for it. Rings at
    any hour: a demo or benchmark must not depend on the time of day."""
    from aiohttp import web

    from signaling.app import create_app
    from signaling.config import Settings
    from signaling.server import make_runner

    secret = secrets.token_urlsafe(32)
    values: dict[str, Any] = {
        "jwt_secret": secret,
        "host": "127.0.0.1",
        "port": 0,
        "ring_window_start": "00:00",
        "ring_window_end": "00:00",
        "daily_ring_cap": 1000,
        "requests_per_hour": 1000,
    }
    values.update(settings)
    broker_settings = Settings(**values)
    app = create_app(broker_settings)
    runner = make_runner(app, broker_settings, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield LocalBroker(f"http://{host}:{port}", secret)
    finally:
        await runner.cleanup()


VOLUNTEER_NAMES = ["Val", "Noor", "Kai", "Ines", "Tom", "Mia", "Raj", "Lea", "Sam", "Ada"]


async def run_demo(console: Console, volunteers: int = 3, duration_s: float = 5.0) -> int:
    options = MediaOptions(loopback_ice=True)
    async with local_broker(first_wave=volunteers) as broker:
        console.rule("[bold]vabroker demo")
        console.print(f"broker on {broker.url} (in this process, embedded store)")
        stop = asyncio.Event()
        bots: list[Volunteer] = []
        runs: list[asyncio.Task[None]] = []
        rec: Recipient | None = None
        try:
            for i in range(volunteers):
                name = VOLUNTEER_NAMES[i % len(VOLUNTEER_NAMES)] + ("" if i < 10 else str(i))
                token = broker.token(
                    f"vol{i}", "volunteer", name=name, languages=["en"], timezone="Europe/London"
                )
                bot = Volunteer(Client(ws_url(broker.url), token), options, auto_accept=True)
                await bot.client.connect()
                bots.append(bot)
                runs.append(asyncio.create_task(run_volunteer(bot, console, name=name, stop=stop)))
            await asyncio.sleep(0.1)
            token = broker.token("rec", "recipient", name="Rae", languages=["en"])
            rec = Recipient(Client(ws_url(broker.url), token), options)
            await rec.client.connect()
            console.print("[bold]Rae[/] asks for help reading a label")
            report = await run_call(
                rec, console, language="en", topic="reading a label", duration_s=duration_s
            )
            winners: dict[str, dict[str, Any]] = {}
            for bot in bots:
                await bot.wait_media_closed()
                if bot.history and bot.client.welcome:
                    winners[bot.client.welcome.user.display_name] = bot.history[-1]
            console.print(
                media_table("Rae's media (sent video, received audio)", report.media or {})
            )
            for who, stats in winners.items():
                console.print(media_table(f"{who}'s media (decoded video stamps)", stats))
            ok = report.outcome == "completed" and any(
                s.get("video_frames_received", 0) > 0 and s.get("damaged_frames", 1) == 0
                for s in winners.values()
            )
            console.print(
                "[bold green]whole call done[/]" if ok else "[bold red]the call did not complete[/]"
            )
            return 0 if ok else 1
        finally:
            stop.set()
            for run in runs:
                with contextlib.suppress(Exception):
                    await run
            if rec is not None:
                await rec.close()
            for bot in bots:
                await bot.close()


def dump(report: CallReport) -> str:
    return json.dumps(report.as_dict(), indent=2, sort_keys=True)
