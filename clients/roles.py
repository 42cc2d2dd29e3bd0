"""The two parties of a call, on top of ``clients.sdk.Client``.

A ``Recipient`` asks for help and follows the search; a ``Volunteer`` goes on duty, hears rings
and accepts one. Once a call is assigned both hold a ``Call``: its media session (aiortc, see
``clients.media``) is started by the recipient, the offerer, and answered by the volunteer.
When the broker re-sends ``call.assigned`` with ``resumed`` after a dropped connection, the
call keeps its peer connection, so media goes on through the drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from broker.model import readable_text
from clients.sdk import Client, ConnectionLost, ProtocolError
from clients.signals import SignalLink
from signaling.messages import (
    MAX_READING,
    Ack,
    AvailabilityState,
    CallAssigned,
    CallEnded,
    CallRing,
    CallStatus,
    CallWithdrawn,
    LobbyEntryWire,
    LobbyMessage,
    ServerMessage,
    SignalAckRelay,
    SignalRelay,
)

log = logging.getLogger("vabroker.roles")


class Call:
    """An assigned call as one party sees it, with its media."""

    def __init__(self, party: Party, assigned: CallAssigned) -> None:
        from clients.media import MediaSession

        self.party = party
        self.id = assigned.call
        self.assigned = assigned
        self.peer_name = assigned.peer.display_name
        self.ended: asyncio.Future[CallEnded] = asyncio.get_running_loop().create_future()
        self.media = MediaSession(
            offerer=assigned.offerer,
            ice_servers_=assigned.ice_servers,
            options=party.media_options,
            send_signal=self._signal,
            report=self._report,
        )
        # In-call tools (clients.calltools): the helper asks with ``call.tools.torch(...)``,
        # ``photo()``...; the recipient's device answers, as the party's settings allow.
        self.tools = self.media.tools
        self.tools.allow_photos = party.allow_photos
        self.tools.on_notice = party._tool_notice
        self._start: asyncio.Task[None] | None = None
        # Signals numbered and acknowledged end to end (clients.signals): none lost or taken
        # twice when a broker node dies mid-call.
        self.link = SignalLink(self.id, joined_late=bool(assigned.resumed))
        self._resend: asyncio.Task[None] | None = None
        self._ack_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _signal(self, data: dict[str, Any]) -> None:
        message = self.link.send(data, asyncio.get_running_loop().time())
        try:
            await self.party.client.send(message)
        except ConnectionLost:
            if not (self.link.numbered and self.link.peer_acknowledges):
                raise
            # Kept by the link: sent again after the resume.

    async def _send_quietly(self, messages: list[dict[str, Any]]) -> None:
        """Send what the link says, in order; a drop leaves the rest to the link's next go."""
        for message in messages:
            try:
                await self.party.client.send(message)
            except ConnectionLost:
                return

    def _spawn(self, messages: list[dict[str, Any]]) -> None:
        if messages:
            task = asyncio.ensure_future(self._send_quietly(messages))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _resend_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.link.resend_after_s / 2)
            await self._send_quietly(self.link.due(loop.time()))

    def resumed(self) -> None:
        """The connection was resumed: say again what arrived (an acknowledgement written on
        the dead connection may be lost, the first one with it), and send again whatever the
        peer has not acknowledged."""
        if self.link.numbered:
            again = self.link.due(asyncio.get_running_loop().time(), everything=True)
            self._spawn([self.link.acknowledgement(), *again])

    def _received(self, message: SignalRelay) -> list[dict[str, Any]]:
        """A relayed signal's data to hand on now (numbered: once and in order)."""
        if message.seq is None:
            return [message.data]
        if self._ack_timer is None:
            # Acknowledged together, a little later: one ``signal.ack`` for a burst.
            self._ack_timer = asyncio.get_running_loop().call_later(0.05, self._acknowledge)
        return list(self.link.receive(message.seq, message.data))

    def _acknowledge(self) -> None:
        self._ack_timer = None
        ack = self.link.ack()
        if ack is not None:
            self._spawn([ack])

    async def _report(self, state: str) -> None:
        await self.party.client.expect({"type": "call.media", "call": self.id, "state": state}, Ack)

    def begin(self) -> None:
        self._start = asyncio.create_task(self._begin(), name=f"call-{self.id}")
        self._resend = asyncio.create_task(self._resend_loop(), name=f"resend-{self.id}")

    async def _begin(self) -> None:
        try:
            if self.link.numbered:
                await self.party.client.send(self.link.hello())
            await self.media.start()
        except (ConnectionLost, ValueError, OSError) as exc:
            log.warning("media set-up failed: %s", exc)
            await self.media._tell("failed")

    async def wait_connected(self, within_s: float) -> None:
        await asyncio.wait_for(self.media.connected.wait(), within_s)

    async def hang_up(self) -> CallEnded:
        """``call.end``; the media is closed whatever the broker answers."""
        try:
            answer = await self.party.client.expect(
                {"type": "call.end", "call": self.id}, CallEnded
            )
        except ProtocolError:
            if not self.ended.done():
                raise
            answer = self.ended.result()
        finally:
            await self.close()
        self._ended(answer)
        return answer

    def _ended(self, message: CallEnded) -> None:
        if not self.ended.done():
            self.ended.set_result(message)

    async def close(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        for task in (self._start, self._resend, *self._tasks):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.media.close()


class Party:
    """What both roles share: the connection, the current call, and a queue of events."""

    def __init__(self, client: Client, media_options: Any = None) -> None:
        from clients.media import MediaOptions

        self.client = client
        self.media_options: MediaOptions = media_options or MediaOptions()
        self.call: Call | None = None
        self.events: asyncio.Queue[ServerMessage] = asyncio.Queue()
        self.on_event: list[Callable[[ServerMessage], None]] = []
        # Media statistics of the calls this party has had, most recent last.
        self.history: deque[dict[str, Any]] = deque(maxlen=100)
        # The recipient's setting: may the helper take photos with this camera?
        self.allow_photos = True
        # What the recipient is told when the helper uses a tool ("Photo sent."), in order.
        self.tool_notices: list[str] = []
        self.on_tool_notice: list[Callable[[str], None]] = []
        self._closing: set[asyncio.Task[None]] = set()
        client.listeners.append(self._on_message)
        client.on_lost.append(self._on_lost)
        client.on_resumed.append(self._resumed)

    async def __aenter__(self) -> Party:
        if not self.client.connected:
            await self.client.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.call is not None:
            await self.call.close()
            self.call = None
        for task in list(self._closing):
            with contextlib.suppress(Exception):
                await task
        await self.client.close()

    def _tool_notice(self, text: str) -> None:
        self.tool_notices.append(text)
        for hook in self.on_tool_notice:
            hook(text)

    def _on_message(self, message: ServerMessage) -> None:
        match message:
            case CallAssigned():
                if self.call is not None and self.call.id == message.call:
                    if not message.resumed:
                        log.info("call.assigned again without resumed: keeping the session")
                else:
                    if self.call is not None:  # a call we never heard end: stop its media
                        self._close_call(self.call)
                    self.call = Call(self, message)
                    self.call.begin()
            case SignalRelay():
                if self.call is not None and self.call.id == message.call:
                    ready = self.call._received(message)
                    if ready:
                        task = asyncio.ensure_future(self._handle_signals(self.call, ready))
                        self._closing.add(task)
                        task.add_done_callback(self._closing.discard)
            case SignalAckRelay():
                if self.call is not None and self.call.id == message.call:
                    self.call.link.acknowledged(message.seq)
            case CallEnded():
                call = self.call
                if call is not None and call.id == message.call:
                    call._ended(message)
                    self.call = None
                    self._close_call(call)
        for hook in self.on_event:
            hook(message)
        self.events.put_nowait(message)

    @staticmethod
    async def _handle_signals(call: Call, ready: list[dict[str, Any]]) -> None:
        for data in ready:
            await call.media.handle_signal(data)

    def _resumed(self) -> None:
        if self.call is not None:
            self.call.resumed()

    def _close_call(self, call: Call) -> None:
        task = asyncio.ensure_future(self._finish_call(call))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _finish_call(self, call: Call) -> None:
        await call.close()
        self.history.append(call.media.stats.summary())

    def _on_lost(self, exc: BaseException | None) -> None:
        # No resume: the broker ends the call after its grace period; stop sending now.
        if self.call is not None:
            log.warning("connection lost for good during call %s: %s", self.call.id, exc)
            self._close_call(self.call)
            self.call = None

    async def next_event(
        self, kind: type[Any], within_s: float = 10.0, call: str | None = None
    ) -> Any:
        """The next queued event of ``kind`` (for ``call``), dropping the others before it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while True:
            message = await asyncio.wait_for(self.events.get(), max(0.0, deadline - loop.time()))
            if isinstance(message, kind) and (call is None or message.call == call):
                return message

    async def wait_call(self, within_s: float = 10.0) -> Call:
        """Until this party has an assigned call."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while self.call is None:
            await self.next_event(CallAssigned, max(0.0, deadline - loop.time()))
        return self.call

    async def wait_media_closed(self) -> None:
        """Until every call that ended has closed its media."""
        for task in list(self._closing):
            with contextlib.suppress(Exception):
                await task


class Recipient(Party):
    """Asks for help: ``request`` starts a search; its ``call.status`` updates and the
    assignment arrive as events."""

    async def request(
        self,
        language: str | None = None,
        topic: str | None = None,
        note: str | None = None,
        helper: str | None = None,
        circle: str | None = None,
    ) -> CallStatus:
        """``helper="assistant"``: an automatic helper first, volunteers if none is free.

        ``circle``: "first" (the trusted circle for a head start) or "only".
        """
        message: dict[str, Any] = {"type": "call.request"}
        for key, value in (
            ("language", language),
            ("topic", topic),
            ("note", note),
            ("helper", helper),
            ("circle", circle),
        ):
            if value is not None:
                message[key] = value
        return await self.client.expect(message, CallStatus)

    async def cancel(self, call_id: str) -> CallEnded:
        return await self.client.expect({"type": "call.cancel", "call": call_id}, CallEnded)

    async def hand_over(self, share_reading: bool = False) -> CallStatus:
        """ "Get me a volunteer", from the current call with the automatic reader: the
        volunteers' search starts while the reader stays on. The answer names the search
        (``call``) and the reader's call (``replaces``); when a volunteer accepts, the reader's
        call ends (``handed_over``) and the volunteer's is assigned. Cancel the search with
        ``cancel(status.call)``. ``share_reading``: the volunteer sees what the reader read
        (the most recent texts that fit ``MAX_READING``)."""
        call = self.call
        if call is None:
            raise RuntimeError("hand_over needs a call with the automatic reader")
        message: dict[str, Any] = {"type": "call.handover", "call": call.id}
        if share_reading:
            reading = shared_reading(call.tools.texts_received)
            if reading:
                message["reading"] = reading
        return await self.client.expect(message, CallStatus)


def shared_reading(texts: list[str], limit: int = MAX_READING) -> str:
    """The reader's most recent texts, oldest first, as many whole ones as fit ``limit``
    characters (a newest one longer than that is cut at its end), in text the protocol takes."""
    kept: list[str] = []
    size = 0
    for text in reversed(texts):
        text = readable_text(text).strip()
        if not text:
            continue
        if kept and size + len(text) + 2 > limit:
            break
        kept.append(text[:limit])
        size += len(text) + 2
    return "\n\n".join(reversed(kept))[:limit]


class Volunteer(Party):
    """Goes on duty and answers rings. With ``auto_accept`` every ring is accepted at once;
    otherwise rings wait in ``rings`` for the caller to ``accept`` or ``decline``."""

    def __init__(
        self,
        client: Client,
        media_options: Any = None,
        auto_accept: bool = False,
        take_after_s: float | None = None,
    ):
        super().__init__(client, media_options)
        self.auto_accept = auto_accept
        # Watch the lobby and take the oldest request once it has waited this long (None:
        # only when told to, with ``take``). The lobby is opened again after each call.
        self.take_after_s = take_after_s
        self.lobby: list[LobbyEntryWire] = []
        self.lobby_more = 0
        self.lobby_open = False
        self.taken = 0
        self._taking: asyncio.Task[None] | None = None
        self.rings: dict[str, CallRing] = {}
        self.lost_races = 0
        self._accepting: set[asyncio.Task[None]] = set()
        self.on_event.insert(0, self._on_ring)

    async def set_available(self, available: bool = True) -> None:
        await self.client.expect(
            {"type": "availability", "available": available}, AvailabilityState
        )

    def _on_ring(self, message: ServerMessage) -> None:
        if isinstance(message, CallRing):
            self.rings[message.call] = message
            if self.auto_accept and self.call is None:
                task = asyncio.ensure_future(self._auto_accept(message.call))
                self._accepting.add(task)
                task.add_done_callback(self._accepting.discard)
        elif isinstance(message, CallWithdrawn):
            self.rings.pop(message.call, None)
        elif isinstance(message, LobbyMessage):
            self._on_lobby(message)
        elif isinstance(message, CallEnded) and self.take_after_s is not None:
            self._spawn(self._reopen())

    # --- the lobby -----------------------------------------------------------------------------
    async def open_lobby(self) -> list[LobbyEntryWire]:
        """Watch the lobby: its entries now (kept up to date in ``lobby``). Raises
        ``ProtocolError`` (``conflict``) off duty or in a call."""
        first = await self.client.expect({"type": "lobby.open"}, LobbyMessage)
        self.lobby_open = True
        self._on_lobby(first)
        return self.lobby

    async def close_lobby(self) -> None:
        self.lobby_open = False
        self.lobby = []
        await self.client.expect({"type": "lobby.close"}, Ack)

    async def take(self, call_id: str) -> Call:
        """Take a request from the lobby. Raises ``Conflict`` when someone else answered
        first (or it ended), ``Forbidden`` when it is not one this volunteer may take."""
        await self.client.expect({"type": "call.take", "call": call_id}, CallAssigned)
        self.taken += 1
        assert self.call is not None and self.call.id == call_id
        return self.call

    def _on_lobby(self, message: LobbyMessage) -> None:
        self.lobby = list(message.entries)
        self.lobby_more = message.more
        if message.closed:
            self.lobby_open = False
            return
        if self.take_after_s is None or self.call is not None or not self.lobby:
            return
        if self._taking is None or self._taking.done():
            oldest = self.lobby[0]
            wait = max(0.0, self.take_after_s - oldest.waiting_s)
            self._taking = self._spawn(self._take_later(oldest.call, wait))

    async def _take_later(self, call_id: str, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        if self.call is not None or call_id not in {e.call for e in self.lobby}:
            return  # answered meanwhile, by us or by someone else
        try:
            await self.take(call_id)
        except ProtocolError as exc:  # answered elsewhere first: the usual outcome
            self.lost_races += 1
            log.debug("take of %s refused: %s", call_id, exc)
        except ConnectionLost as exc:
            log.info("take of %s lost: %s", call_id, exc)

    async def _reopen(self) -> None:
        await asyncio.sleep(0)  # after the end is filed
        with contextlib.suppress(ProtocolError, ConnectionLost):
            await self.open_lobby()

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._accepting.add(task)
        task.add_done_callback(self._accepting.discard)
        return task

    async def _auto_accept(self, call_id: str) -> None:
        try:
            await self.accept(call_id)
        except ProtocolError as exc:  # someone else was faster: the usual outcome
            self.lost_races += 1
            log.debug("accept of %s refused: %s", call_id, exc)
        except ConnectionLost as exc:
            log.info("accept of %s lost: %s", call_id, exc)

    async def accept(self, call_id: str) -> Call:
        """Accept a ring. Raises ``Conflict`` when someone else answered first."""
        self.rings.pop(call_id, None)
        await self.client.expect({"type": "call.accept", "call": call_id}, CallAssigned)
        assert self.call is not None and self.call.id == call_id
        return self.call

    async def decline(self, call_id: str) -> None:
        self.rings.pop(call_id, None)
        await self.client.expect({"type": "call.decline", "call": call_id}, Ack)

    async def close(self) -> None:
        for task in list(self._accepting):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await super().close()
