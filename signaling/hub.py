"""Sessions on this node, and delivery of the broker's events to them.

A ``Session`` is one authenticated WebSocket. Its outgoing messages go through a bounded queue
drained by one writer task, so a slow client can never stall the broker or another client: when
its queue is full it is disconnected (and may resume). The ``Hub`` knows every session of this
node by user, runs the timer loop that fires the store's due timers, and pings every session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, web

from broker.dispatch import timer
from broker.events import Assigned, Event, Ring, Withdrawn
from broker.model import Profile
from broker.service import GRACE, Broker
from broker.store.base import Store, StoreUnavailable
from signaling.messages import Message, Reconnect, event_message
from signaling.metrics import Metrics
from signaling.routing import LocalRouter, Router

log = logging.getLogger("vabroker.hub")

OUTBOX_LIMIT = 1000
PARKED_LIMIT = 200
CLOSE_SLOW = 4008  # private-use code: the client did not read fast enough
CLOSE_RESTART = 1012  # service restart: reconnect elsewhere and resume


class Session:
    def __init__(
        self, session_id: str, profile: Profile, ws: web.WebSocketResponse, resume_token: str
    ) -> None:
        self.id = session_id
        self.profile = profile
        self.ws = ws
        self.resume_token = resume_token
        self.last_seen = time.monotonic()
        self._out: asyncio.Queue[str | None] = asyncio.Queue(OUTBOX_LIMIT)
        self._writer = asyncio.create_task(self._write(), name=f"writer-{session_id}")

    @property
    def user_id(self) -> str:
        return self.profile.user_id

    def send(self, message: Message | dict[str, Any]) -> None:
        data = message.wire() if isinstance(message, Message) else message
        try:
            self._out.put_nowait(json.dumps(data, separators=(",", ":")))
        except asyncio.QueueFull:
            log.warning("session too slow, disconnecting", extra={"user": self.user_id})
            self._out = asyncio.Queue(1)
            asyncio.get_running_loop().create_task(
                self.ws.close(code=CLOSE_SLOW, message=b"too slow")
            )

    async def _write(self) -> None:
        while True:
            text = await self._out.get()
            if text is None or self.ws.closed:
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return

    async def close(self) -> None:
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer


# Called for an event whose user has no session on this node (push delivery hooks in here).
Undelivered = Callable[[Event], Awaitable[None]]
# Told of every event delivered, and whether it reached a session on this node (push: a
# withdrawal must reach the devices a ring was pushed to even when the user has come online).
Observer = Callable[[Event, bool], None]


class Hub:
    def __init__(
        self,
        broker: Broker,
        store: Store,
        metrics: Metrics,
        ice_servers: Callable[[str], list[dict[str, Any]]],
        heartbeat_s: float,
        grace_s: float = 20.0,
    ) -> None:
        self.broker = broker
        self.store = store
        self.metrics = metrics
        self.ice_servers = ice_servers
        self.heartbeat_s = heartbeat_s
        self.grace_s = grace_s
        self.sessions: dict[str, set[Session]] = defaultdict(set)
        # Messages for users who dropped and may resume: (when they dropped, messages).
        self.parked: dict[str, tuple[float, deque[Message]]] = {}
        self.undelivered: list[Undelivered] = []
        self.observers: list[Observer] = []
        # Where messages for users without a session here go (another node, in scale-out).
        self.router: Router = LocalRouter()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._background: set[asyncio.Task[object]] = set()

    # --- sessions ----------------------------------------------------------------------------
    def attach(self, session: Session) -> None:
        self.sessions[session.user_id].add(session)
        self.metrics.connected.labels(session.profile.role.value).inc()

    def detach(self, session: Session, park: bool) -> None:
        sessions = self.sessions.get(session.user_id)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self.sessions[session.user_id]
        self.metrics.connected.labels(session.profile.role.value).dec()
        if park and session.user_id not in self.sessions:
            self.parked[session.user_id] = (time.monotonic(), deque(maxlen=PARKED_LIMIT))

    def unpark(self, user_id: str) -> list[Message]:
        entry = self.parked.pop(user_id, None)
        return list(entry[1]) if entry else []

    async def unpark_all(self, user_id: str) -> list[dict[str, Any]]:
        """Messages kept for a user who resumes: parked on this node, then by the router."""
        here = [m.wire() for m in self.unpark(user_id)]
        return here + await self.router.take_parked(user_id)

    def _purge_parked(self) -> None:
        limit = time.monotonic() - self.grace_s
        for user_id in [u for u, (since, _) in self.parked.items() if since < limit]:
            del self.parked[user_id]

    def is_here(self, user_id: str) -> bool:
        return user_id in self.sessions

    # --- delivery ----------------------------------------------------------------------------
    def send(self, user_id: str, message: Message) -> bool:
        """Send to every session of a user on this node, or through the router to the node
        that holds them; park it if they are reconnecting. False if it reached nobody here
        (through the router: True, as it may reach them elsewhere)."""
        sessions = self.sessions.get(user_id)
        if sessions:
            for session in sessions:
                session.send(message)
            return True
        if self.router.remote:
            return self.router.forward(user_id, message.wire(), None)
        parked = self.parked.get(user_id)
        if parked is not None:
            parked[1].append(message)
        return False

    def deliver(
        self, events: list[Event], answer: tuple[str, str, str | None] | None = None
    ) -> None:
        """Send each event to its user. ``answer`` = (user, wire type, ref): the first such
        message to that user is the direct answer to a client message and carries its ref."""
        if not events:
            return
        self.metrics.count_events(events)
        now = self.broker.clock.now()
        for event in events:
            message = event_message(
                event, now, self.ice_servers(event.to) if isinstance(event, Assigned) else []
            )
            if answer is not None and event.to == answer[0] and message.wire()["type"] == answer[1]:
                message = message.model_copy(update={"ref": answer[2]})
                answer = None
            if self.router.remote and event.to not in self.sessions:
                # Another node may hold them: the router reports the outcome (``routed``).
                self.router.forward(event.to, message.wire(), event)
                continue
            self.routed(event, self.send(event.to, message))
        self._wake.set()

    def deliver_here(self, user_id: str, message: dict[str, Any]) -> bool:
        """A message another node routed to a session of this one."""
        sessions = self.sessions.get(user_id)
        if not sessions:
            return False
        for session in sessions:
            session.send(message)
        return True

    async def redeliver_parked(self) -> None:
        """Messages the router parked for users whose sockets are here (sent while this node
        could not hear its channel)."""
        for user_id in list(self.sessions):
            for message in await self.router.take_parked(user_id):
                self.deliver_here(user_id, message)

    async def reassert(self) -> None:
        """After other nodes took this one's sessions for lost: they are connected here."""
        for sessions in list(self.sessions.values()):
            for session in list(sessions):
                await self.store.set_connected(session.user_id, True)
                await self.router.attached(session.user_id, session.id)
                await self.store.unschedule(timer(GRACE, session.user_id, session.id))

    def routed(self, event: Event, here: bool) -> None:
        """An event was delivered: ``here`` says whether it reached a session (of this node,
        or of the node the router handed it to). Observers hear of every event; rings and
        withdrawals that reached nobody go to the undelivered hooks."""
        for observe in self.observers:
            observe(event, here)
        if not here and isinstance(event, Ring | Withdrawn):
            for hook in self.undelivered:
                self._spawn(hook(event))

    def _spawn(self, coro: Awaitable[object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def wake(self) -> None:
        """A timer may have been scheduled earlier than the loop's next look."""
        self._wake.set()

    # --- background loops --------------------------------------------------------------------
    def start(self) -> None:
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._timer_loop(), name="timers"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
        ]

    async def stop(self) -> None:
        # The flag as well as the cancel: a cancellation that lands inside a store call can be
        # lost there (seen with the Redis client at shutdown), and the loop must end anyway.
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for bg in list(self._background):
            bg.cancel()

    async def _timer_loop(self) -> None:
        while not self._stopping:
            delay = 0.25
            try:
                self.deliver(await self.broker.fire_due())
                next_at = await self.store.next_deadline()
                if next_at is not None:
                    delay = min(delay, max(0.0, next_at - self.broker.clock.now()))
            except StoreUnavailable:
                delay = 1.0
            except Exception:
                log.exception("timer loop")
                delay = 1.0
            self._wake.clear()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            self._purge_parked()
            limit = time.monotonic() - 2 * self.heartbeat_s
            for n, session in enumerate([s for group in self.sessions.values() for s in group]):
                if n % 100 == 99:
                    await asyncio.sleep(0)  # thousands of pings must not hold up a ring
                if session.last_seen < limit:
                    log.info(
                        "no pong for two heartbeats, dropping", extra={"user": session.user_id}
                    )
                    self._spawn(
                        session.ws.close(code=WSCloseCode.GOING_AWAY, message=b"no heartbeat")
                    )
                else:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await session.ws.ping()

    async def shutdown(self) -> None:
        """Tell every client to reconnect elsewhere, then close their sockets."""
        closing = []
        for sessions in list(self.sessions.values()):
            for session in list(sessions):
                session.send(Reconnect())
                closing.append(session.ws.close(code=CLOSE_RESTART, message=b"server restarting"))
        if closing:
            await asyncio.sleep(0.05)  # let the writers flush the reconnect message
            await asyncio.gather(*closing, return_exceptions=True)
