"""A Redis client of the node channels' own, for one Redis (not a Cluster): commands written
straight to the socket with their replies matched in order, and a subscription whose messages
are handed to a callback as they are read.

Every signal relayed between two nodes costs one script on the sending node (presence read
and the publishes) and one message read on the receiving node. Through redis-py's asyncio
client each costs about 150 µs of CPU (a pool checkout, a retry wrapper, a timeout scope or a
task per write, and on the reading side a task switch and a timeout scope per message); the
same socket driven by a protocol and hiredis reads a message for about 45 µs. The store keeps
redis-py for everything else (and a Cluster, whose topology it follows).

Errors are redis-py's, so that callers treat them alike: a reply error is a
``ResponseError`` (``NoScriptError`` for a script Redis does not hold), a connection refused,
lost or timed out is a ``ConnectionError`` or a ``TimeoutError``. A request that times out
leaves its reply unread: the connection is closed (what else was waiting on it fails too) and
the next request connects again.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
import redis.exceptions as rex
from redis.asyncio.connection import SSLConnection, parse_url

Arg = str | bytes | int | float
OnMessage = Callable[[str], None]

log = logging.getLogger("vabroker.routing")


def _pack(command: Sequence[Arg]) -> bytes:
    # hiredis's type stubs say a tuple of one item; it packs any number.
    packed: bytes = hiredis.pack_command(cast(Any, tuple(command)))
    return packed


def _reply_error(error: rex.ResponseError) -> rex.ResponseError:
    text = str(error)
    if text.startswith("NOSCRIPT"):
        return rex.NoScriptError(text)
    return error


class _Protocol(asyncio.Protocol):
    """One socket: replies handed to the requests waiting for them, in order; on a subscribed
    socket, messages handed to ``on_message`` instead."""

    def __init__(self, on_message: OnMessage | None) -> None:
        # Text that is not UTF-8 is read with replacement characters, to be refused by
        # whoever parses it, rather than failing the socket for every message behind it.
        self._reader = hiredis.Reader(
            encoding="utf-8", errors="replace", replyError=rex.ResponseError
        )
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                if (
                    self._on_message is not None
                    and type(reply) is list
                    and len(reply) == 3
                    and reply[0] == "message"
                ):
                    try:
                        self._on_message(reply[2])
                    except Exception:
                        log.exception("handling a message of a node channel")
                elif self._waiting:
                    waiter = self._waiting.popleft()
                    if not waiter.done():  # its caller may have given up
                        waiter.set_result(reply)
                else:
                    raise rex.ConnectionError(f"a reply no request was waiting for: {reply!r:.80}")
        except (hiredis.ProtocolError, rex.ConnectionError) as exc:
            self.close(rex.ConnectionError(f"Redis connection out of step: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(rex.ConnectionError(f"Redis connection lost: {exc or 'closed by Redis'}"))

    def send(self, data: bytes, replies: int) -> list[asyncio.Future[Any]]:
        if self.transport is None or self.transport.is_closing():
            raise rex.ConnectionError("Redis connection closed")
        loop = asyncio.get_running_loop()
        waiters = [loop.create_future() for _ in range(replies)]
        self._waiting.extend(waiters)
        self.transport.write(data)
        return waiters

    def close(self, why: Exception) -> None:
        if self.transport is not None:
            self.transport.close()
        self._fail(why)

    def _fail(self, why: Exception) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(why)
        if not self.lost.done():
            self.lost.set_result(None)


class Subscription:
    """A socket subscribed to one channel. ``lost`` is done when it no longer hears it."""

    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol
        self.lost = protocol.lost

    def close(self) -> None:
        self._protocol.close(rex.ConnectionError("subscription closed"))


class RespClient:
    """One connection to the Redis a ``redis://`` or ``rediss://`` URL names (its user,
    password and database too), made when first needed and again after it was lost; each
    request fails as ``TimeoutError`` after ``timeout_s``."""

    def __init__(self, url: str, timeout_s: float) -> None:
        options = parse_url(url)
        self._host = str(options.get("host", "localhost"))
        self._port = int(options.get("port", 6379))
        self._tls = options.get("connection_class") is SSLConnection
        self._setup: list[tuple[Arg, ...]] = []
        if options.get("password") is not None:
            user = options.get("username")
            auth = (user, options["password"]) if user else (options["password"],)
            self._setup.append(("AUTH", *auth))
        if int(options.get("db", 0)):
            self._setup.append(("SELECT", int(options["db"])))
        self.timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def call(self, *args: Arg) -> Any:
        """One command's reply."""
        return (await self.pipeline([args]))[0]

    async def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Commands written at once, their replies in order; the first reply error is raised
        once every reply has come."""
        protocol = await self._connected()
        data = b"".join(_pack(c) for c in commands)
        waiters = protocol.send(data, len(commands))
        try:
            async with asyncio.timeout(self.timeout_s):
                replies = [await w for w in waiters]
        except TimeoutError:
            why = rex.TimeoutError(f"Redis did not answer within {self.timeout_s} s")
            protocol.close(why)
            raise why from None
        except asyncio.CancelledError:
            # Replies still to come would be read as answers to later requests: start afresh.
            protocol.close(rex.ConnectionError("a request was cancelled"))
            raise
        for reply in replies:
            if isinstance(reply, rex.ResponseError):
                raise _reply_error(reply)
        return replies

    async def subscribe(self, channel: str, on_message: OnMessage) -> Subscription:
        """A connection of its own subscribed to ``channel``, handing each message's data to
        ``on_message`` as it is read."""
        protocol = await self._open(on_message)
        try:
            confirmed = protocol.send(_pack(("SUBSCRIBE", channel)), 1)[0]
            async with asyncio.timeout(self.timeout_s):
                reply = await confirmed
            if isinstance(reply, rex.ResponseError):
                raise _reply_error(reply)
        except TimeoutError:
            why = rex.TimeoutError(
                f"Redis did not confirm the subscription within {self.timeout_s} s"
            )
            protocol.close(why)
            raise why from None
        except BaseException as exc:
            protocol.close(rex.ConnectionError(f"subscribing failed: {exc}"))
            raise
        return Subscription(protocol)

    async def aclose(self) -> None:
        if self._protocol is not None:
            self._protocol.close(rex.ConnectionError("client closed"))
            self._protocol = None

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.lost.done():
            return protocol
        # Requests arriving while a connection is being made wait for that one (shielded: one
        # of them cancelled does not cancel it for the others).
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open(None))
        protocol = self._protocol = await asyncio.shield(self._connecting)
        return protocol

    async def _open(self, on_message: OnMessage | None) -> _Protocol:
        loop = asyncio.get_running_loop()
        # As redis-py's default for rediss://: the server's certificate and name checked.
        context = ssl.create_default_context() if self._tls else None
        where = f"{self._host}:{self._port}"
        protocol: _Protocol | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                _transport, protocol = await loop.create_connection(
                    lambda: _Protocol(on_message), self._host, self._port, ssl=context
                )
                if self._setup:
                    data = b"".join(_pack(c) for c in self._setup)
                    for waiter in protocol.send(data, len(self._setup)):
                        reply = await waiter
                        if isinstance(reply, rex.ResponseError):
                            raise rex.AuthenticationError(f"Redis at {where} refused: {reply}")
        except BaseException as exc:
            if protocol is not None:
                protocol.close(rex.ConnectionError("setting the connection up failed"))
            if isinstance(exc, TimeoutError):
                raise rex.TimeoutError(
                    f"Redis at {where} did not answer within {self.timeout_s} s"
                ) from None
            if isinstance(exc, OSError):
                raise rex.ConnectionError(f"cannot connect to Redis at {where}: {exc}") from exc
            raise
        return protocol
