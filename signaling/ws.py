"""``GET /v1/ws``: one WebSocket session, from ``hello`` to close.

Every frame is parsed into a message model here; the broker is called with typed values only,
and its events go back out through the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from pydantic import ValidationError

from broker.lobby import LobbyClosed
from broker.model import BrokerError, CallState, CircleMode, ErrorCode
from broker.moderation import ReportReason
from broker.privacy import iso, restriction_body
from broker.store.base import ResumeTicket, StoreUnavailable
from signaling.app import CONTEXT, Context
from signaling.auth import AuthError, Claims, revoked
from signaling.hub import Session
from signaling.messages import (
    MAX_FRAME,
    Ack,
    AgentState,
    AgentStatus,
    AuthRefresh,
    AuthRefreshed,
    Availability,
    AvailabilityState,
    BadMessage,
    CallAccept,
    CallCancel,
    CallDecline,
    CallEnd,
    CallFeedback,
    CallHandover,
    CallMedia,
    CallRequest,
    CallStatus,
    CallTake,
    ClientMessage,
    Error,
    Hello,
    LobbyClose,
    LobbyOpen,
    Ping,
    Pong,
    RestrictionInfo,
    Signal,
    SignalAck,
    UserInfo,
    Welcome,
    parse_client,
)

log = logging.getLogger("vabroker.ws")

CLOSE_UNAUTHENTICATED = 4401  # hello refused; also a session whose token expired (hub)
SESSION_TOKEN_TTL_S = 86400.0


class TokenBucket:
    """Per-connection message rate limit: ``rate`` per second, bursts up to ``burst``."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


async def handle(request: web.Request) -> web.WebSocketResponse:
    ctx = request.app[CONTEXT]
    # aiohttp's own limit is a backstop; frames over MAX_FRAME are refused below with a reason.
    # No permessage-deflate: messages are small, and a zlib context per connection costs far
    # more memory than it saves bandwidth.
    ws = web.WebSocketResponse(max_msg_size=2 * MAX_FRAME, autoping=False, compress=False)
    await ws.prepare(request)
    session = await _hello(ctx, ws)
    if session is None:
        return ws
    try:
        await _serve(ctx, session)
    finally:
        await _goodbye(ctx, session)
    return ws


async def _refuse(ws: web.WebSocketResponse, message: str, ref: str | None = None) -> None:
    error = error_message(ErrorCode.UNAUTHENTICATED, message, ref)
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_json(error.wire())
    await ws.close(code=CLOSE_UNAUTHENTICATED, message=b"unauthenticated")


def _too_large(text: str) -> bool:
    # Characters are at most 4 bytes: only long texts need encoding to be measured.
    return len(text) * 4 > MAX_FRAME and len(text.encode()) > MAX_FRAME


async def _close_too_large(ws: web.WebSocketResponse) -> None:
    error = Error(
        code=ErrorCode.TOO_LARGE.value, message=f"Messages are limited to {MAX_FRAME} bytes."
    )
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_json(error.wire())
    await ws.close(code=WSCloseCode.MESSAGE_TOO_BIG, message=b"message too big")


async def _hello(ctx: Context, ws: web.WebSocketResponse) -> Session | None:
    s = ctx.settings
    deadline = time.monotonic() + s.hello_timeout_s
    while True:
        try:
            msg = await ws.receive(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            await _refuse(ws, f"Say hello with a token within {s.hello_timeout_s:g} seconds.")
            return None
        if msg.type == WSMsgType.PING:
            await ws.pong(msg.data)
            continue
        if msg.type == WSMsgType.PONG:
            continue
        break
    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
        return None
    if msg.type != WSMsgType.TEXT:
        await _refuse(ws, "Messages are JSON text frames; the first must be hello.")
        return None
    if _too_large(msg.data):
        await _close_too_large(ws)
        return None
    try:
        hello = parse_client(msg.data)
    except BadMessage as exc:
        await _refuse(ws, f"The first message must be hello. {exc}", exc.ref)
        return None
    if not isinstance(hello, Hello):
        await _refuse(ws, "The first message must be hello, with a token.", hello.ref)
        return None
    try:
        claims = await ctx.auth.check(hello.token)
    except AuthError as exc:
        await _refuse(ws, str(exc), hello.ref)
        return None
    attached: Session | None = None
    connected = False
    try:
        if revoked(claims, await ctx.store.revoked_before(claims.sub)):
            await _refuse(ws, _REVOKED, hello.ref)
            return None
        profile = await ctx.profile_for(claims)
        ticket = (
            await ctx.store.take_resume(hello.resume, ctx.clock.now()) if hello.resume else None
        )
        resumed = ticket is not None and ticket.user_id == claims.sub
        session_id = ticket.session_id if ticket and resumed else "s_" + secrets.token_urlsafe(12)
        token = secrets.token_urlsafe(24)
        await ctx.store.put_resume(
            token, ResumeTicket(claims.sub, session_id), ctx.clock.now() + SESSION_TOKEN_TTL_S
        )
        session = attached = Session(session_id, profile, ws, token, claims.iat)
        ctx.hub.attach(session)
        await ctx.store.set_connected(profile.user_id, True)
        connected = True
        await ctx.hub.router.attached(profile.user_id, session_id)
        restriction = await ctx.broker.safety.restriction(profile.user_id)
    except StoreUnavailable:
        if attached is not None:  # the store failed half-way: take back what was done
            ctx.hub.detach(attached, park=False)
            await attached.close()
            if connected:
                with contextlib.suppress(StoreUnavailable):
                    await ctx.store.set_connected(attached.user_id, False)
        error = error_message(ErrorCode.UNAVAILABLE, _UNAVAILABLE, hello.ref)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_json(error.wire())
        await ws.close(code=1013, message=b"try again later")
        return None
    session.welcome(
        Welcome(
            ref=hello.ref,
            user=UserInfo(
                id=profile.user_id,
                role=profile.role.value,
                org=profile.org,
                display_name=profile.display_name,
            ),
            session=session_id,
            resume=token,
            heartbeat_s=ctx.settings.heartbeat_s,
            ice_servers=ctx.ice_servers(profile.user_id),
            expires_at=_deadline(ctx, claims),
            restriction=(
                RestrictionInfo.model_validate(restriction_body(restriction))
                if restriction is not None
                else None
            ),
        )
    )
    ctx.hub.expire_at(session, _deadline(ctx, claims))
    try:
        await ctx.hub.enforce_cap(profile.user_id)
    except StoreUnavailable:
        log.warning("store unavailable: session cap not checked", extra={"user": profile.user_id})
    try:
        parked = await ctx.hub.unpark_all(profile.user_id)
    except StoreUnavailable:
        parked = []
    try:
        if resumed:
            events = await ctx.broker.resumed(profile.user_id, session_id)
        else:
            events = await ctx.broker.replay(profile.user_id)
    except StoreUnavailable:
        events = []
    ctx.hub.deliver(events)
    # What happened while they were away, less what the replay just told them again.
    for message in parked:
        if message.get("type") not in ("call.ring", "call.assigned", "call.status"):
            session.send(message)
    log.info(
        "session open",
        extra={"user": profile.user_id, "role": profile.role.value, "resumed": resumed},
    )
    return session


_UNAVAILABLE = "The service is briefly unavailable. Please try again in a moment."
_REVOKED = "This sign-in was revoked. Sign in again for a new token."


def _deadline(ctx: Context, claims: Claims) -> float:
    """When a session signed in with ``claims`` ends unless refreshed: the token's expiry
    plus the leeway the token is verified with, so that a token accepted at hello is never
    cut off at once for the clock skew that leeway forgives."""
    return claims.exp + ctx.auth.leeway_s


async def _refresh(ctx: Context, session: Session, message: AuthRefresh) -> None:
    """``auth.refresh``: a new token for the same user, role and organisation. A refused
    token changes nothing: the session keeps its current expiry."""
    try:
        claims = await ctx.auth.check(message.token)
    except AuthError as exc:
        raise BrokerError(
            ErrorCode.UNAUTHENTICATED, f"{exc} The session keeps its token."
        ) from None
    profile = session.profile
    if claims.sub != profile.user_id:
        raise BrokerError(
            ErrorCode.UNAUTHENTICATED,
            "The new token is for another user; a session keeps its user. Connect again to "
            "sign in as someone else.",
        )
    if claims.role is not profile.role or claims.org != profile.org:
        raise BrokerError(
            ErrorCode.UNAUTHENTICATED,
            "The new token gives another role or organisation; connect again with it to "
            "change them.",
        )
    if revoked(claims, await ctx.store.revoked_before(claims.sub)):
        raise BrokerError(ErrorCode.UNAUTHENTICATED, _REVOKED)
    deadline = _deadline(ctx, claims)
    session.issued_at = claims.iat
    ctx.hub.expire_at(session, deadline)
    session.send(AuthRefreshed(expires_at=deadline, ref=message.ref))


async def _serve(ctx: Context, session: Session) -> None:
    bucket = TokenBucket(ctx.settings.messages_per_s, ctx.settings.message_burst)
    async for frame in session.ws:
        if not await _act_on(ctx, session, bucket, frame):
            break
        # Not kept while waiting for the next frame: a connection would hold its last frame's
        # text and message model (about 1.3 KB) for as long as it is idle.
        del frame


async def _act_on(ctx: Context, session: Session, bucket: TokenBucket, msg: WSMessage) -> bool:
    """Acts on one frame of a session; False when the session is to end."""
    ws = session.ws
    session.last_seen = time.monotonic()
    if session.ending is not None:
        return True  # closing (expired, revoked, over the cap): nothing more is acted on
    if msg.type == WSMsgType.PING:
        await ws.pong(msg.data)
        return True
    if msg.type == WSMsgType.PONG:
        return True
    if msg.type == WSMsgType.BINARY:
        _error(ctx, session, ErrorCode.BAD_MESSAGE, "Messages are JSON text frames, not binary.")
        return True
    if msg.type != WSMsgType.TEXT:
        return False
    if _too_large(msg.data):
        await _close_too_large(ws)
        return False
    if not bucket.take():
        _error(ctx, session, ErrorCode.RATE_LIMITED, "Too many messages; slow down.")
        return True
    try:
        message = parse_client(msg.data)
    except BadMessage as exc:
        _error(ctx, session, ErrorCode.BAD_MESSAGE, str(exc), exc.ref)
        return True
    ctx.metrics.count_message(message.type)
    try:
        await _dispatch(ctx, session, message)
    except BrokerError as exc:
        _error(ctx, session, exc.code, exc.message, message.ref, exc.until)
    except StoreUnavailable:
        _error(ctx, session, ErrorCode.UNAVAILABLE, _UNAVAILABLE, message.ref)
    if message.type not in _SETS_NO_TIMER:
        ctx.hub.wake()
    return True


# Messages that never schedule a timer: they need not wake the hub's timer loop, which would
# otherwise run a look at the store's timers for every relayed signal.
_SETS_NO_TIMER = frozenset({"signal", "signal.ack", "ping"})


def _error(
    ctx: Context,
    session: Session,
    code: ErrorCode,
    text: str,
    ref: str | None = None,
    until: float | None = None,
) -> None:
    ctx.metrics.errors.labels(code.value).inc()
    session.send(error_message(code, text, ref, until))


def error_message(
    code: ErrorCode, text: str, ref: str | None = None, until: float | None = None
) -> Error:
    """An ``error`` that can always be sent: a ``ref`` that cannot be echoed is left out."""
    try:
        return Error(code=code.value, message=text, ref=ref, until=iso(until))
    except ValidationError:
        return Error(
            code=code.value, message=text.encode("utf-8", "replace").decode(), until=iso(until)
        )


async def _dispatch(ctx: Context, session: Session, message: ClientMessage) -> None:
    broker = ctx.broker
    user = session.user_id
    profile = session.profile
    ref = message.ref
    match message:
        case Ping():
            session.send(Pong(ref=ref))
        case AuthRefresh():
            await _refresh(ctx, session, message)
        case Hello():
            raise BrokerError(ErrorCode.CONFLICT, "You are already signed in on this connection.")
        case Availability():
            await broker.set_available(profile, message.available)
            session.send(AvailabilityState(available=message.available, ref=ref))
            if not message.available:
                ctx.lobby.closed_for(user, LobbyClosed.OFF_DUTY)
        case AgentStatus():
            events = await broker.set_agent_status(profile, message.state)
            session.send(AgentState(state=message.state, ref=ref))
            ctx.hub.deliver(events)
        case CallRequest():
            fresh = await ctx.store.get_profile(user) or profile
            outcome = await broker.request(
                fresh,
                message.language,
                message.topic,
                message.note,
                message.org,
                message.queue,
                helper=message.helper,
                circle=CircleMode(message.circle) if message.circle else None,
            )
            call = outcome.call
            assert call is not None
            ctx.metrics.calls_requested.inc()
            queued = call.state is CallState.QUEUED
            session.send(
                CallStatus(
                    call=call.id,
                    state=call.state.value,
                    notified=None if queued else call.notified,
                    position=call.queue_position if queued else None,
                    eta_s=call.queue_eta_s if queued else None,
                    ref=ref,
                )
            )
            ctx.hub.deliver(outcome.events)
        case CallCancel():
            outcome = await broker.cancel(user, message.call)
            ctx.hub.deliver(outcome.events, answer=(user, "call.ended", ref))
        case CallHandover():
            fresh = await ctx.store.get_profile(user) or profile
            outcome = await broker.hand_over(fresh, message.call, message.reading)
            ctx.metrics.calls_requested.inc()
            ctx.hub.deliver(outcome.events, answer=(user, "call.status", ref))
        case CallAccept():
            fresh = await ctx.store.get_profile(user) or profile
            outcome = await broker.accept(fresh, message.call)
            if outcome.call and outcome.call.answer_time_s is not None:
                ctx.metrics.answer_time.observe(outcome.call.answer_time_s)
            ctx.hub.deliver(outcome.events, answer=(user, "call.assigned", ref))
            ctx.lobby.closed_for(user, LobbyClosed.IN_CALL)
        case CallTake():
            fresh = await ctx.store.get_profile(user) or profile
            outcome = await broker.take(fresh, message.call)
            if outcome.call and outcome.call.answer_time_s is not None:
                ctx.metrics.answer_time.observe(outcome.call.answer_time_s)
            ctx.hub.deliver(outcome.events, answer=(user, "call.assigned", ref))
            ctx.lobby.closed_for(user, LobbyClosed.IN_CALL)
        case LobbyOpen():
            await ctx.lobby.open(session, ref)
        case LobbyClose():
            ctx.lobby.close(session)
            session.send(Ack(ref=ref))
        case CallDecline():
            outcome = await broker.decline(user, message.call)
            session.send(Ack(ref=ref))
            ctx.hub.deliver(outcome.events)
        case Signal():
            peer = await _peer(ctx, session, message.call)
            # ``data`` was checked with the frame (size, depth, shape, text) and is opaque to
            # the broker: it goes on as it came, with no model to build and dump again.
            relayed: dict[str, object] = {
                "type": "signal",
                "call": message.call,
                "data": message.data,
            }
            if message.seq is not None:
                relayed["seq"] = message.seq
            ctx.hub.send(peer, relayed)
            ctx.metrics.relayed.inc()
        case SignalAck():
            peer = await _peer(ctx, session, message.call)
            ctx.hub.send(peer, {"type": "signal.ack", "call": message.call, "seq": message.seq})
        case CallMedia():
            outcome = await broker.media(user, message.call, message.state == "connected")
            call = outcome.call
            if message.state == "connected" and call and call.media_at and call.assigned_at:
                ctx.metrics.time_to_media.observe(call.media_at - call.assigned_at)
            session.send(Ack(ref=ref))
        case CallEnd():
            outcome = await broker.end(user, message.call)
            ctx.hub.deliver(outcome.events, answer=(user, "call.ended", ref))
        case CallFeedback():
            report = ReportReason(message.report) if message.report else None
            events = await broker.feedback(
                user, message.call, message.rating, report, message.comment
            )
            session.send(Ack(ref=ref))
            ctx.hub.deliver(events)


async def _peer(ctx: Context, session: Session, call_id: str) -> str:
    """Whom a session's signal for ``call_id`` goes to: the broker's answer, remembered by the
    session for a moment (``Session.known_peer``)."""
    peer = session.known_peer(call_id)
    if peer is None:
        news = session.call_news()
        peer = await ctx.broker.peer(session.user_id, call_id)
        session.remember_peer(call_id, peer, news)
    return peer


async def _goodbye(ctx: Context, session: Session) -> None:
    user = session.user_id
    # A session the server ended for good (revoked, over the cap) is not resumed: its resume
    # token goes, and with no other session its call ends now rather than after the grace.
    grace = ctx.settings.grace_s if session.resumable else 0.0
    ctx.lobby.close(session)
    ctx.hub.detach(session, park=grace > 0)
    await session.close()
    try:
        await ctx.store.set_connected(user, False)
        await ctx.hub.router.detached(user, session.id, last=not ctx.hub.is_here(user))
        if not session.resumable:
            await ctx.store.take_resume(session.resume_token, ctx.clock.now())
        if ctx.hub.is_here(user):
            return  # the same user still has another session open
        now = ctx.clock.now()
        if grace > 0:
            await ctx.store.put_resume(
                session.resume_token, ResumeTicket(user, session.id), now + grace
            )
            await ctx.broker.disconnected(user, session.id, grace)
            ctx.hub.wake()
        else:
            ctx.hub.deliver(await ctx.broker.lost(user))
    except StoreUnavailable:
        log.warning("store unavailable while closing a session", extra={"user": user})
    except asyncio.CancelledError:
        raise
    finally:
        if not session.gone.done():
            session.gone.set_result(None)
    log.info("session closed", extra={"user": user})
