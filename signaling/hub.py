"""Sessions on this node, and delivery of the broker's events to them.

A ``Session`` is one authenticated WebSocket. Its outgoing messages go through a bounded queue
drained by one writer task, so a slow client can never stall the broker or another client: when
its queue is full it is disconnected (and may resume). The ``Hub`` knows every session of this
node by user, runs the timer loop that fires the store's due timers, and pings every session.

A session lives as long as its sign-in: the hub closes it when its token expires unrefreshed
(4401, after an ``auth.expiring`` warning), when the user's sign-ins are revoked (``revoke``,
4403, on every node through the router) and when the user opens more sessions than allowed
(``enforce_cap``: the oldest, 4409). ``end_sessions`` is the one way to end a user's sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, web

from broker.dispatch import timer
from broker.events import Assigned, Event, Ring, Withdrawn
from broker.model import ErrorCode, Profile
from broker.service import GRACE, Broker
from broker.store.base import Store, StoreUnavailable
from signaling.messages import (
    AuthExpiring,
    Error,
    Message,
    Reconnect,
    encode,
    event_message,
)
from signaling.metrics import Metrics
from signaling.routing import LocalRouter, Router

log = logging.getLogger("vabroker.hub")

OUTBOX_LIMIT = 1000
PARKED_LIMIT = 200
CLOSE_SLOW = 4008  # private-use code: the client did not read fast enough
CLOSE_RESTART = 1012  # service restart: reconnect elsewhere and resume
RECONNECT_DRAIN_S = 0.5  # a stopping node reads on this long after telling clients to go
# Private-use close codes of a session's sign-in (docs/protocol.md, "Session lifetime").
CLOSE_EXPIRED = 4401  # the token expired unrefreshed: sign in again, and resume
CLOSE_REVOKED = 4403  # the sign-in was revoked (or the user banned): no resume
CLOSE_REPLACED = 4409  # the user opened more sessions than allowed: this, the oldest, closed
# How long a session relays its call's signals to the peer it last read from the store, unless
# it hears of the call sooner (docs/operations.md, "A call's peer, remembered").
PEER_MEMORY_S = 1.0

Wire = dict[str, Any]


class _Close:
    """The writer's last item: close the socket with ``code`` once everything before is sent."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class Session:
    # Slots: one per connection, thousands per node.
    __slots__ = (
        "_call_news",
        "_expiry",
        "_out",
        "_peers",
        "_wakeup",
        "_welcomed",
        "_writer",
        "ending",
        "expires_at",
        "gone",
        "id",
        "issued_at",
        "last_seen",
        "opened",
        "profile",
        "resumable",
        "resume_token",
        "ws",
    )

    def __init__(
        self,
        session_id: str,
        profile: Profile,
        ws: web.WebSocketResponse,
        resume_token: str,
        issued_at: float | None = None,
    ) -> None:
        self.id = session_id
        self.profile = profile
        self.ws = ws
        self.resume_token = resume_token
        self.last_seen = time.monotonic()
        self.opened = time.monotonic()
        # The sign-in: when its token was issued (``iat``) and when the session must end
        # unless refreshed (seconds since the epoch, like the token's claims).
        self.issued_at = issued_at
        self.expires_at: float | None = None
        # One timer at a time: the warning, which then sets the end (a handle each would be
        # another 370 bytes per connection).
        self._expiry: asyncio.TimerHandle | None = None
        # Set once the server decided to close the session (a close code above): what the
        # client sends meanwhile is ignored, and the close decides whether it may resume.
        self.ending: int | None = None
        self.resumable = True
        loop = asyncio.get_running_loop()
        # Done when the session has closed and its bookkeeping in the store is done.
        self.gone: asyncio.Future[None] = loop.create_future()
        # The outbox: a list and a future to wake the writer, not an asyncio.Queue, whose
        # four deques and event are about 2 KB more per connection.
        self._out: list[str | _Close] = []
        self._wakeup: asyncio.Future[None] | None = None
        # Held until ``welcome`` is written first: between attaching the session and welcoming
        # it (store round trips), a peer's signal may already be sent to it, and a client that
        # reads anything before its welcome takes the connection for failed.
        self._welcomed = False
        # The peer of each call this session signals in, and until when (monotonic) it is
        # taken without a store read: every relayed signal would read the call otherwise, a
        # round trip on a shared store. Any ``call.*`` message to the session about the call
        # forgets it, and ``_call_news`` counts them, so a read overtaken by one is not kept.
        self._peers: dict[str, tuple[str, float]] | None = None
        self._call_news = 0
        self._writer = loop.create_task(self._write(), name=f"writer-{session_id}")

    @property
    def user_id(self) -> str:
        return self.profile.user_id

    def known_peer(self, call_id: str) -> str | None:
        """The peer remembered for ``call_id``, if still fresh."""
        if self._peers is None:
            return None
        known = self._peers.get(call_id)
        if known is None or known[1] < time.monotonic():
            return None
        return known[0]

    def call_news(self) -> int:
        """How many ``call.*`` messages the session was sent: ``remember_peer`` takes it as
        read before the store was."""
        return self._call_news

    def remember_peer(self, call_id: str, peer: str, news: int) -> None:
        if news != self._call_news:
            return  # the call changed while its peer was being read
        if self._peers is None or len(self._peers) >= 8:
            self._peers = {}
        self._peers[call_id] = (peer, time.monotonic() + PEER_MEMORY_S)

    def send(self, message: Message | dict[str, Any]) -> None:
        try:
            data = message.wire() if isinstance(message, Message) else message
            kind = data.get("type")
            if isinstance(kind, str) and kind.startswith("call."):
                self._call_news += 1
                if self._peers is not None:
                    self._peers.pop(str(data.get("call")), None)
            text = encode(data)
        except (ValueError, TypeError, RecursionError) as exc:
            # A message that cannot be encoded is dropped, never the connection: the edge
            # refuses unencodable client text, so this is a backstop, logged to be fixed.
            log.error(
                "message not sent: cannot be encoded",
                extra={"user": self.user_id, "why": f"{type(exc).__name__}: {exc}"},
            )
            return
        if len(self._out) >= OUTBOX_LIMIT:
            log.warning("session too slow, disconnecting", extra={"user": self.user_id})
            self._out.clear()
            asyncio.get_running_loop().create_task(
                self.ws.close(code=CLOSE_SLOW, message=b"too slow")
            )
            return
        self._queue(text)

    def welcome(self, message: Message) -> None:
        """Send ``welcome`` ahead of whatever was sent to the session before it, and start
        writing."""
        self._out.insert(0, encode(message.wire()))
        self._welcomed = True
        self._wake()

    def _queue(self, item: str | _Close) -> None:
        self._out.append(item)
        if self._welcomed:
            self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def end(self, code: int, error: Wire, resumable: bool = True) -> None:
        """Close the session with ``code`` after sending ``error`` (and everything queued
        before it). Only the first decision counts."""
        if self.ending is not None:
            return
        self.ending = code
        self.resumable = resumable
        self.stop_expiry()
        reason = str(error.get("code", ""))
        if len(self._out) + 2 > OUTBOX_LIMIT:  # a client this far behind gets no explanation
            asyncio.get_running_loop().create_task(
                self.ws.close(code=code, message=reason.encode())
            )
            return
        self._queue(encode(error))
        self._queue(_Close(code, reason))

    def stop_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._out:
                self._wakeup = loop.create_future()
                await self._wakeup
            item = self._out.pop(0)
            if self.ws.closed:
                return
            try:
                if isinstance(item, _Close):
                    await self.ws.close(code=item.code, message=item.reason.encode())
                    return
                await self.ws.send_str(item)
            except (ConnectionError, RuntimeError):
                return

    async def close(self) -> None:
        self.stop_expiry()
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
        max_sessions: int = 5,
        warning_s: float = 60.0,
    ) -> None:
        self.broker = broker
        self.store = store
        self.metrics = metrics
        self.ice_servers = ice_servers
        self.heartbeat_s = heartbeat_s
        self.grace_s = grace_s
        self.max_sessions = max_sessions
        self.warning_s = warning_s
        self.sessions: dict[str, set[Session]] = defaultdict(set)
        # Messages for users who dropped and may resume: (when they dropped, messages).
        self.parked: dict[str, tuple[float, deque[Message | Wire]]] = {}
        self.undelivered: list[Undelivered] = []
        self.observers: list[Observer] = []
        # Where messages for users without a session here go (another node, in scale-out).
        self.router: Router = LocalRouter()
        self._wake = asyncio.Event()
        self._stopping = False
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

    def unpark(self, user_id: str) -> list[Message | Wire]:
        entry = self.parked.pop(user_id, None)
        return list(entry[1]) if entry else []

    async def unpark_all(self, user_id: str) -> list[dict[str, Any]]:
        """Messages kept for a user who resumes: parked on this node, then by the router."""
        here = [m.wire() if isinstance(m, Message) else m for m in self.unpark(user_id)]
        return here + await self.router.take_parked(user_id)

    def _purge_parked(self) -> None:
        limit = time.monotonic() - self.grace_s
        for user_id in [u for u, (since, _) in self.parked.items() if since < limit]:
            del self.parked[user_id]

    def is_here(self, user_id: str) -> bool:
        return user_id in self.sessions

    # --- sign-in lifetime --------------------------------------------------------------------
    # Token times are wall-clock times (``exp``/``iat`` are checked against the system clock),
    # so these use time.time(), not the broker's clock (virtual in the simulator).
    def expire_at(self, session: Session, deadline: float) -> None:
        """End ``session`` with 4401 at ``deadline`` unless this is called again with a later
        one (``auth.refresh``); warn it with ``auth.expiring`` ``warning_s`` before."""
        session.stop_expiry()
        session.expires_at = deadline
        loop = asyncio.get_running_loop()
        left = deadline - time.time()
        if self.warning_s > 0:
            warn_in = max(0.0, left - self.warning_s)
            session._expiry = loop.call_later(warn_in, self._warn, session)
        else:
            session._expiry = loop.call_later(max(0.0, left), self._expired, session)

    def _warn(self, session: Session) -> None:
        deadline = session.expires_at
        if deadline is None or session.ending is not None:
            return
        left = max(0.0, deadline - time.time())
        session._expiry = asyncio.get_running_loop().call_later(left, self._expired, session)
        session.send(AuthExpiring(expires_at=deadline, expires_in_s=round(left, 3)))

    def _expired(self, session: Session) -> None:
        log.info("token expired, closing the session", extra={"user": session.user_id})
        error = Error(
            code=ErrorCode.UNAUTHENTICATED.value,
            message="Your sign-in has expired. Sign in again to carry on; a call in progress "
            "waits for you for a short while.",
        )
        session.end(CLOSE_EXPIRED, error.wire(), resumable=True)

    async def end_sessions(
        self,
        user_id: str,
        code: int,
        error_code: str,
        message: str,
        extra: Wire | None = None,
        *,
        before: float | None = None,
        resumable: bool = False,
    ) -> int:
        """End a user's live sessions on every node: each gets ``error`` (``error_code``,
        ``message`` and any ``extra`` fields) and is closed with ``code``. With ``before``,
        only sessions signed in with a token issued before that time (or without ``iat``).
        A session ended with ``resumable`` False cannot be resumed: its call ends at once.
        Returns how many were ended on this node (other nodes are told through the router)."""
        end: Wire = {
            "code": code,
            "error": {**(extra or {}), "type": "error", "code": error_code, "message": message},
            "resumable": resumable,
        }
        if before is not None:
            end["before"] = before
        ended = self.end_here(user_id, end)
        if self.router.remote:
            await self.router.end_sessions(user_id, end)
        return ended

    async def revoke(
        self,
        user_id: str,
        before: float | None = None,
        error_code: str = ErrorCode.UNAUTHENTICATED.value,
        message: str = "Your sign-in was revoked. Sign in again.",
        extra: Wire | None = None,
    ) -> float:
        """Revoke the user's sign-ins issued before ``before`` (default: now): the fact goes
        to the store, so that such tokens are refused at ``hello`` and ``auth.refresh`` on
        every node, and every live session signed in with one is ended with 4403 and the
        given ``error``, with no resume. Returns the revocation time now in force."""
        when = time.time() if before is None else before
        latest = await self.store.revoke_sessions(user_id, when)
        await self.end_sessions(
            user_id, CLOSE_REVOKED, error_code, message, extra, before=latest, resumable=False
        )
        return latest

    async def sign_out(
        self, user_id: str, error_code: str, message: str, timeout_s: float = 5.0
    ) -> None:
        """End all the user's sessions on every node for good (4403, no resume), and wait
        (at most ``timeout_s``) until this node's have closed and written their last facts to
        the store, so that what the caller does next (an erasure) comes after them."""
        here = list(self.sessions.get(user_id, ()))
        await self.end_sessions(user_id, CLOSE_REVOKED, error_code, message, resumable=False)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                for session in here:
                    await asyncio.shield(session.gone)

    def end_here(self, user_id: str, end: Wire) -> int:
        """End sessions of this node as ``end`` says (see ``end_sessions``); ``end`` may also
        name one ``session``. Returns how many."""
        try:
            code = int(end["code"])
            error = dict(end["error"])
            only = end.get("session")
            before = end.get("before")
            before = None if before is None else float(before)
            resumable = bool(end.get("resumable", False))
        except (KeyError, TypeError, ValueError):
            log.error("malformed request to end sessions: %.200r", end)
            return 0
        ended = 0
        for session in list(self.sessions.get(user_id, ())):
            if only is not None and session.id != only:
                continue
            if before is not None and session.issued_at is not None and session.issued_at >= before:
                continue  # signed in again after the revocation
            if session.ending is None:
                session.end(code, error, resumable)
                ended += 1
        return ended

    async def enforce_cap(self, user_id: str) -> None:
        """A user who opened more than ``max_sessions`` sessions: the oldest close (4409).
        Across all nodes when the router knows every node's sessions; else on this node.
        Runs at every hello: the error is only made when a session is over the cap."""
        over = await self.router.oldest_over(user_id, self.max_sessions)
        if over is not None:
            for session_id in over:
                end = {**self._over_cap(), "session": session_id}
                await self.router.end_sessions(user_id, end)
                self.end_here(user_id, end)
            return
        live = [s for s in self.sessions.get(user_id, ()) if s.ending is None]
        if len(live) <= self.max_sessions:
            return
        live.sort(key=lambda s: s.opened)
        for session in live[: len(live) - self.max_sessions]:
            session.end(CLOSE_REPLACED, self._over_cap()["error"], resumable=False)

    def _over_cap(self) -> Wire:
        error = Error(
            code=ErrorCode.CONFLICT.value,
            message=f"You have more than {self.max_sessions} sessions open; this one, the "
            "oldest, was closed. Carry on in the newest.",
        )
        return {"code": CLOSE_REPLACED, "error": error.wire(), "resumable": False}

    # --- delivery ----------------------------------------------------------------------------
    def send(self, user_id: str, message: Message | Wire) -> bool:
        """Send to every session of a user on this node, or through the router to the node
        that holds them; park it if they are reconnecting. False if it reached nobody here
        (through the router: True, as it may reach them elsewhere). ``message`` is a model,
        or its wire form when that is already at hand (a relayed signal)."""
        sessions = self.sessions.get(user_id)
        if sessions:
            for session in sessions:
                session.send(message)
            return True
        if self.router.remote:
            wire = message.wire() if isinstance(message, Message) else message
            return self.router.forward(user_id, wire, None)
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
        # A flag as well as cancel(): redis-py can swallow a CancelledError that arrives
        # inside one of its calls, and a loop that lost its cancel would run on for ever.
        self._stopping = True
        self._wake.set()
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
        while not self._stopping:
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
        told = [s for sessions in list(self.sessions.values()) for s in list(sessions)]
        for session in told:
            session.send(Reconnect())
        if told:
            # Go on acting on what the clients send until they have heard: a signal written
            # before the client read ``reconnect`` is relayed, not dropped with the socket
            # (its sender was told nothing). What is sent after ``reconnect`` is the client's
            # to send again after its resume.
            await asyncio.sleep(RECONNECT_DRAIN_S)
            closing = [s.ws.close(code=CLOSE_RESTART, message=b"server restarting") for s in told]
            await asyncio.gather(*closing, return_exceptions=True)
