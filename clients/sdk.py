"""The Python SDK: protocol v1 over the ``websockets`` library.

``Client`` is one connection to the broker: it says hello, matches answers to requests by ``ref``,
sends the protocol ``ping`` as a heartbeat, and after a dropped connection connects again and
resumes with the token of its last ``welcome``. Every server frame is parsed with
``signaling.messages.parse_server``, the same models the server is written with; an ``error`` in
answer to a request is raised as the ``ProtocolError`` subclass named after its code.

With a ``token_provider`` (an async callable returning a fresh token for the same user), the
client keeps its sign-in alive: when the broker says the token expires soon (``auth.expiring``)
it sends ``auth.refresh`` with a new token, and if the session was closed for an expired token
anyway (4401) it signs in again with a new one and resumes.

``Recipient`` and ``Volunteer`` (the roles) are built on top of it in ``clients.roles``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from signaling.messages import (
    AuthExpiring,
    AuthRefreshed,
    BadMessage,
    Error,
    Pong,
    Reconnect,
    ServerMessage,
    Welcome,
    parse_server,
)

if TYPE_CHECKING:  # the circles' answer models come with the HTTP side: imported when used
    from signaling.circles import (
        AnsweredBody,
        AskedBody,
        CircleBody,
        InvitationBody,
        MembershipBody,
    )

log = logging.getLogger("vabroker.sdk")

CLIENT_NAME = "vabroker-sdk/0.1"
CLOSE_UNAUTHENTICATED = 4401  # refused at hello, or the session's token expired
CLOSE_REVOKED = 4403  # the sign-in was revoked: connecting again with it is pointless
CLOSE_REPLACED = 4409  # the same user opened a newer session, which took this one's place

M = TypeVar("M")


# --- errors ------------------------------------------------------------------------------------


class SdkError(Exception):
    """Anything the SDK reports."""


class ConnectionLost(SdkError):
    """The connection dropped (and could not be resumed, or a request was in flight)."""


class ProtocolError(SdkError):
    """An ``error`` message from the broker. ``code`` is the protocol's error code."""

    code = "error"

    def __init__(self, message: str, ref: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.ref = ref
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BadMessageError(ProtocolError):
    code = "bad_message"


class Unauthenticated(ProtocolError):
    code = "unauthenticated"


class Forbidden(ProtocolError):
    code = "forbidden"


class NotFound(ProtocolError):
    code = "not_found"


class Conflict(ProtocolError):
    code = "conflict"


class RateLimited(ProtocolError):
    code = "rate_limited"


class OrgClosed(ProtocolError):
    code = "org_closed"


class QueueFull(ProtocolError):
    code = "queue_full"


class Unavailable(ProtocolError):
    code = "unavailable"


class TooLarge(ProtocolError):
    code = "too_large"


class Suspended(ProtocolError):
    """The user is suspended or banned: no going on duty, no asking for help. ``until`` is
    when it ends (ISO 8601 UTC), or None for a ban or a suspension until reinstated."""

    code = "suspended"
    until: str | None = None


ERRORS: dict[str, type[ProtocolError]] = {
    cls.code: cls
    for cls in (
        BadMessageError,
        Unauthenticated,
        Forbidden,
        NotFound,
        Conflict,
        RateLimited,
        OrgClosed,
        QueueFull,
        Unavailable,
        TooLarge,
        Suspended,
    )
}


def error_for(error: Error) -> ProtocolError:
    """The exception for an ``error`` message; an unknown code (a newer broker) keeps its code."""
    cls = ERRORS.get(error.code, ProtocolError)
    exc = cls(error.message, error.ref, None if cls is not ProtocolError else error.code)
    if isinstance(exc, Suspended):
        exc.until = error.until
    return exc


# --- the connection ----------------------------------------------------------------------------

Listener = Callable[[ServerMessage], None]
# Returns a fresh token for the same user (and role, and organisation).
TokenProvider = Callable[[], Awaitable[str]]


class Client:
    """One authenticated connection to the broker, kept alive and resumed across drops.

    ``listeners`` are called (in order, synchronously) with every server message except pongs
    and errors that answer a ``request`` (those are raised to the requester); ``on_resumed``
    after a resume, ``on_lost`` when the connection is gone for good. ``resume_within_s``
    bounds how long reconnecting is tried (clients cannot know the broker's grace period:
    20 s, its default). ``token_provider`` keeps the sign-in alive past the token's expiry
    (see the module's description); without it the session ends when its token does.
    """

    def __init__(
        self,
        ws_url: str,
        token: str,
        *,
        client_name: str = CLIENT_NAME,
        reconnect: bool = True,
        resume_within_s: float = 20.0,
        connect_timeout_s: float = 10.0,
        request_timeout_s: float = 10.0,
        token_provider: TokenProvider | None = None,
    ) -> None:
        if not ws_url.startswith(("ws://", "wss://")):
            raise ValueError(f"{ws_url!r} is not a ws:// or wss:// URL")
        if not token and token_provider is None:
            raise ValueError("a token (or a token provider) is required")
        self.ws_url = ws_url
        self.token = token
        self.client_name = client_name
        self.reconnect = reconnect
        self.resume_within_s = resume_within_s
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.welcome: Welcome | None = None
        self.listeners: list[Listener] = []
        self.on_resumed: list[Callable[[], None]] = []
        self.on_lost: list[Callable[[BaseException | None], None]] = []
        self.resumes = 0
        self.token_provider = token_provider
        self.refreshes = 0
        # When the session ends unless refreshed (seconds since the epoch, the broker's word).
        self.expires_at: float | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None
        self._refs = itertools.count(1)
        self._pending: dict[str, asyncio.Future[ServerMessage]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._closing = False
        self._pause_s = 0.0
        # Set by ``reconnect``: the node reads on only briefly and what is written after may be
        # dropped (protocol, "Shutdown"), so nothing more goes on this connection.
        self._leaving = False
        self._lost: BaseException | None = None
        self._done = asyncio.Event()

    # --- lifecycle -----------------------------------------------------------------------------
    @property
    def user_id(self) -> str:
        assert self.welcome is not None, "not connected"
        return self.welcome.user.id

    @property
    def connected(self) -> bool:
        """Whether a message can be sent now: not while reconnecting, nor from a node's
        ``reconnect`` until the resume."""
        return self._ws is not None and not self._done.is_set() and not self._leaving

    async def connect(self) -> Welcome:
        """Connect and say hello. Raises ``Unauthenticated`` for a refused token."""
        self._closing = False
        self._done.clear()
        self._lost = None
        if not self.token:
            self.token = await self._fresh_token()
        welcome = await self._open(resume=None)
        self._reader = asyncio.create_task(self._read(), name="vabroker-sdk-reader")
        self._heartbeat = asyncio.create_task(self._beat(), name="vabroker-sdk-heartbeat")
        return welcome

    async def _open(self, resume: str | None) -> Welcome:
        try:
            ws = await asyncio.wait_for(
                websockets.connect(
                    self.ws_url, proxy=None, ping_interval=None, max_size=2**20, open_timeout=None
                ),
                self.connect_timeout_s,
            )
        except TimeoutError:
            raise ConnectionLost(
                f"No answer from {self.ws_url} within {self.connect_timeout_s:g} s."
            ) from None
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            raise ConnectionLost(f"Cannot connect to {self.ws_url}: {exc}") from exc
        try:
            hello: dict[str, Any] = {"type": "hello", "token": self.token}
            hello["client"] = self.client_name
            if resume:
                hello["resume"] = resume
            await ws.send(json.dumps(hello))
            raw = await asyncio.wait_for(ws.recv(), self.connect_timeout_s)
            first = parse_server(raw)
        except (ConnectionClosed, TimeoutError, BadMessage) as exc:
            await ws.close()
            raise ConnectionLost(f"The broker did not welcome us: {exc!r}") from exc
        except BaseException:
            await ws.close()
            raise
        if isinstance(first, Error):
            await ws.close()
            raise error_for(first)
        if not isinstance(first, Welcome):
            await ws.close()
            raise ConnectionLost(f"Expected welcome, got {first.type!r}.")
        self._ws = ws
        self._leaving = False
        self.welcome = first
        self.expires_at = first.expires_at
        return first

    async def close(self) -> None:
        """Close for good (no resume); pending requests fail with ``ConnectionLost``."""
        self._closing = True
        tasks = [t for t in (self._heartbeat, self._reader, self._refresh) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._heartbeat = self._reader = self._refresh = None
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        self._fail_pending(ConnectionLost("The connection was closed."))
        self._done.set()

    async def drop(self) -> None:
        """Cut the connection without a closing handshake, as a lost network would (the broker
        starts the resume grace period); the client then reconnects if ``reconnect`` is set."""
        if self._ws is not None:
            self._ws.transport.abort()

    async def wait_closed(self) -> BaseException | None:
        """Until the connection is gone for good; what ended it (None for ``close``)."""
        await self._done.wait()
        return self._lost

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- sending -------------------------------------------------------------------------------
    async def send(self, message: dict[str, Any]) -> None:
        """Send a message that has no direct answer (``signal``), or whose answer the caller
        does not wait for. Raises ``ConnectionLost`` when there is no connection right now."""
        ws = self._ws
        if ws is None or self._done.is_set():
            raise ConnectionLost("Not connected to the broker.")
        if self._leaving:
            raise ConnectionLost("The broker asked us to reconnect: send again once resumed.")
        try:
            await ws.send(json.dumps(message, separators=(",", ":")))
        except ConnectionClosed as exc:
            raise ConnectionLost(f"The connection dropped while sending: {exc}") from exc

    async def request(
        self, message: dict[str, Any], timeout_s: float | None = None
    ) -> ServerMessage:
        """Send with a fresh ``ref`` and return the answer that carries it; an ``error`` answer
        is raised as its ``ProtocolError``."""
        ref = f"r{next(self._refs)}"
        future: asyncio.Future[ServerMessage] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        try:
            await self.send({**message, "ref": ref})
            answer = await asyncio.wait_for(future, timeout_s or self.request_timeout_s)
        except TimeoutError:
            raise ConnectionLost(
                f"No answer to {message.get('type')!r} within "
                f"{timeout_s or self.request_timeout_s:g} s."
            ) from None
        finally:
            self._pending.pop(ref, None)
        if isinstance(answer, Error):
            raise error_for(answer)
        return answer

    async def expect(
        self, message: dict[str, Any], kind: type[M], timeout_s: float | None = None
    ) -> M:
        answer = await self.request(message, timeout_s)
        if not isinstance(answer, kind):
            raise ConnectionLost(f"Expected {kind.__name__} in answer, got {answer.type!r}.")
        return answer

    async def ping(self) -> float:
        """Round trip of the protocol ``ping``, in seconds."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        await self.expect({"type": "ping"}, Pong)
        return loop.time() - start

    # --- receiving -----------------------------------------------------------------------------
    async def _read(self) -> None:
        while True:
            ws = self._ws
            assert ws is not None
            try:
                async for raw in ws:
                    self._receive(raw)
                reason: BaseException | None = None
            except ConnectionClosed as exc:
                reason = exc
            if self._closing:
                return
            rc = ws.close_code
            self._ws = None
            self._fail_pending(ConnectionLost("The connection dropped."))
            final = (CLOSE_REVOKED, CLOSE_REPLACED)
            expired = rc == CLOSE_UNAUTHENTICATED
            if rc in final or not self.reconnect or (expired and self.token_provider is None):
                self._finish(ConnectionLost(f"The connection closed ({rc}): {reason}"))
                return
            if expired:
                # The token expired before a refresh got through: sign in again and resume.
                try:
                    self.token = await self._fresh_token()
                except SdkError as exc:
                    self._finish(exc)
                    return
            if not await self._resume():
                return

    def _receive(self, raw: str | bytes) -> None:
        try:
            message = parse_server(raw)
        except BadMessage as exc:
            log.warning("ignoring a frame the SDK cannot read: %s", exc)
            return
        if message.ref is not None and message.ref in self._pending:
            future = self._pending.pop(message.ref)
            if not future.done():
                future.set_result(message)
            if isinstance(message, Pong | Error):
                return
            # An answer that is also news (call.assigned, call.ended, call.status) goes on to
            # the listeners, which run before the requester resumes.
        if isinstance(message, Reconnect):
            # The node is going away: it closes the socket next, and _read resumes (elsewhere,
            # behind the same URL) after the pause it asks for.
            log.info("the broker asked us to reconnect after %.1f s", message.after_s)
            self._pause_s = max(0.0, min(message.after_s, self.resume_within_s / 2))
            self._leaving = True
        if isinstance(message, AuthExpiring):
            self.expires_at = message.expires_at
            if self.token_provider is not None and (self._refresh is None or self._refresh.done()):
                self._refresh = asyncio.get_running_loop().create_task(
                    self._refresh_token(message.expires_in_s), name="vabroker-sdk-refresh"
                )
        for listener in list(self.listeners):
            try:
                listener(message)
            except Exception:
                log.exception("listener failed on %s", message.type)

    # --- REST --------------------------------------------------------------------------------
    async def rest(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One call of the broker's HTTP API (``/v1/...``) as this client's user, with its
        current token: the JSON answer (None for 204). A refusal is raised as the
        ``ProtocolError`` of its code (``Forbidden``, ``NotFound``, ``Conflict``,
        ``RateLimited`` ...; another code, e.g. ``bad_request``, keeps it), an unreachable
        broker as ``ConnectionLost``."""
        import aiohttp  # only clients that use the HTTP API need it

        if not path.startswith("/v1/"):
            raise ValueError(f"{path!r} is not a /v1/ path of the broker's HTTP API")
        token = self.token or await self._fresh_token()
        url = http_url(self.ws_url) + path
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout, trust_env=False) as http,
                http.request(method, url, json=body, headers=headers) as resp,
            ):
                status = resp.status
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConnectionLost(f"{method} {path}: {exc!r}") from exc
        if status == 204:
            return None
        try:
            answer = json.loads(text) if text else None
        except ValueError:
            raise ProtocolError(f"{method} {path}: not JSON (HTTP {status})") from None
        if status >= 400:
            code = answer.get("error") if isinstance(answer, dict) else None
            message = answer.get("message") if isinstance(answer, dict) else None
            cls = ERRORS.get(str(code), ProtocolError)
            raise cls(
                str(message or f"HTTP {status}"),
                None,
                str(code or status) if cls is ProtocolError else None,
            )
        return answer

    # Trusted circles (docs/protocol.md, "Trusted circles"): the REST routes, typed.
    async def circle_invite(self) -> InvitationBody:
        """A recipient's one-time invitation code into their circle."""
        from signaling.circles import InvitationBody

        return InvitationBody.model_validate(await self.rest("POST", "/v1/me/circle/invitations"))

    async def circle_join(self, code: str) -> MembershipBody:
        """A volunteer joins a recipient's circle with their invitation code."""
        from signaling.circles import MembershipBody

        answer = await self.rest("POST", "/v1/circle/join", {"code": code})
        return MembershipBody.model_validate(answer)

    async def circle(self) -> CircleBody:
        """A recipient's members; a volunteer's circles and requests to join."""
        from signaling.circles import CircleBody

        return CircleBody.model_validate(await self.rest("GET", "/v1/me/circle"))

    async def circle_remove(self, member: str) -> None:
        """A recipient takes a helper (their ``member`` handle) out of their circle."""
        await self.rest("DELETE", "/v1/me/circle/members/" + _segment(member))

    async def circle_leave(self, circle: str) -> None:
        """A volunteer leaves a circle (its ``circle`` handle)."""
        await self.rest("DELETE", "/v1/me/circle/circles/" + _segment(circle))

    async def circle_propose(self, call_id: str) -> AskedBody:
        """A recipient asks the helper of one of their ended calls into their circle."""
        from signaling.circles import AskedBody

        return AskedBody.model_validate(
            await self.rest("POST", "/v1/me/circle/proposals", {"call": call_id})
        )

    async def circle_answer(self, proposal: str, accept: bool) -> AnsweredBody:
        """A volunteer agrees to (or declines) a recipient's request to join their circle."""
        from signaling.circles import AnsweredBody

        path = "/v1/me/circle/proposals/" + _segment(proposal)
        return AnsweredBody.model_validate(await self.rest("POST", path, {"accept": accept}))

    # --- the sign-in ---------------------------------------------------------------------------
    async def _fresh_token(self) -> str:
        if self.token_provider is None:
            raise Unauthenticated("No token, and no token provider to ask for one.")
        try:
            token = await self.token_provider()
        except Exception as exc:
            raise Unauthenticated(f"The token provider failed: {exc!r}") from exc
        if not isinstance(token, str) or not token:
            raise Unauthenticated("The token provider returned no token.")
        return token

    async def refresh(self) -> AuthRefreshed:
        """Send ``auth.refresh`` with a token from the provider now; raises the broker's
        refusal (``Unauthenticated``), after which the session keeps its current token."""
        token = await self._fresh_token()
        answer = await self.expect({"type": "auth.refresh", "token": token}, AuthRefreshed)
        self.token = token
        self.expires_at = answer.expires_at
        self.refreshes += 1
        return answer

    async def _refresh_token(self, within_s: float) -> None:
        """Refresh before the session's token expires, trying again while there is time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while True:
            try:
                answer = await self.refresh()
                log.info("token refreshed; the session lasts until %.0f", answer.expires_at)
                return
            except (SdkError, ConnectionLost) as exc:
                left = deadline - loop.time()
                if left <= 0.5 or self._closing:
                    log.warning("could not refresh the token in time: %s", exc)
                    return
                log.info("token refresh failed (%s); trying again", exc)
                await asyncio.sleep(min(5.0, left / 3))

    async def _resume(self) -> bool:
        """Reconnect with the last resume token until ``resume_within_s`` has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.resume_within_s
        delay = 0.05
        assert self.welcome is not None
        token = self.welcome.resume
        last: BaseException | None = None
        if self._pause_s:
            await asyncio.sleep(self._pause_s)
            self._pause_s = 0.0
        while loop.time() < deadline:
            try:
                await self._open(resume=token)
            except Unauthenticated as exc:
                self._finish(exc)
                return False
            except (ConnectionLost, ProtocolError) as exc:
                last = exc
                await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
                delay = min(2.0, delay * 2) * (0.8 + 0.4 * random.random())
                continue
            self.resumes += 1
            log.info("resumed the session")
            for callback in list(self.on_resumed):
                callback()
            return True
        self._finish(ConnectionLost(f"Could not resume within {self.resume_within_s:g} s: {last}"))
        return False

    async def _beat(self) -> None:
        """The protocol ping every ``heartbeat_s``; an unanswered one means the connection is
        dead even if the socket looks open, so it is cut and resumed."""
        while True:
            interval = self.welcome.heartbeat_s if self.welcome else 20.0
            await asyncio.sleep(interval)
            if self._ws is None:
                continue
            try:
                await self.expect({"type": "ping"}, Pong, timeout_s=interval)
            except ConnectionLost:
                if self._ws is not None and not self._closing:
                    log.info("no pong within %.1f s: reconnecting", interval)
                    self._ws.transport.abort()
            except ProtocolError as exc:  # e.g. rate_limited: the connection is alive
                log.debug("heartbeat answered with %s", exc)

    def _fail_pending(self, exc: BaseException) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
        self._pending.clear()

    def _finish(self, exc: BaseException | None) -> None:
        self._lost = exc
        self._done.set()
        for task in (self._heartbeat, self._refresh):
            if task is not None:
                task.cancel()
        for callback in list(self.on_lost):
            callback(exc)


def _segment(value: str) -> str:
    """One path segment, every reserved character escaped (a handle never names another path)."""
    if not value:
        raise ValueError("an empty handle names nothing")
    return urllib.parse.quote(value, safe="")


def ws_url(base: str) -> str:
    """The WebSocket URL for a broker base URL: ``http://h:p`` -> ``ws://h:p/v1/ws``; a ws://
    URL is used as it is."""
    base = base.rstrip("/")
    if base.startswith(("ws://", "wss://")):
        return base
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :] + "/v1/ws"
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + "/v1/ws"
    raise ValueError(f"{base!r} is not an http(s):// or ws(s):// broker URL")


def http_url(base: str) -> str:
    """The HTTP base URL for a broker URL given either way."""
    base = base.rstrip("/")
    for scheme, http in (("wss://", "https://"), ("ws://", "http://")):
        if base.startswith(scheme):
            base = http + base[len(scheme) :]
            return base[: -len("/v1/ws")] if base.endswith("/v1/ws") else base
    if base.startswith(("http://", "https://")):
        return base
    raise ValueError(f"{base!r} is not an http(s):// or ws(s):// broker URL")
