"""What every part of the Redis store shares: key names of users and calls, value encoding,
and turning Redis being unreachable into ``StoreUnavailable``."""

from __future__ import annotations

import asyncio
import functools
import json
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, ParamSpec, TypeVar, cast

import redis.asyncio as aioredis
import redis.exceptions as rex

from broker.orgs import AgentRecord
from broker.store.base import StoreUnavailable

P = ParamSpec("P")
T = TypeVar("T")

REDIS_DOWN: tuple[type[BaseException], ...] = (
    rex.ConnectionError,
    rex.TimeoutError,
    rex.ClusterDownError,
    rex.ClusterError,
    rex.TryAgainError,
    rex.MasterDownError,
    rex.ReadOnlyError,
    rex.SlotNotCoveredError,  # a failover under way: the dead master's slots have no owner yet
    OSError,
)


def unavailable_on_redis_errors(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except REDIS_DOWN as exc:
            errors = getattr(args[0], "errors", None) if args else None
            if isinstance(errors, Counter):  # the store's count of failed operations
                errors[method.__name__] += 1
            raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc

    return wrapper


class _PromptWrites:
    """redis-py's connection, except that a command the socket takes at once (every command,
    short of a backlog) is written without a timer. With a socket timeout set, redis-py
    wraps every write in ``asyncio.wait_for``, which in Python 3.11 runs the write as a task
    of its own: about 17 µs and two more turns of the event loop per command. A write that
    must wait for the socket to drain still waits at most the socket timeout."""

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        connection = cast(aioredis.Connection, self)
        if not (
            connection.socket_timeout
            and connection.is_connected
            and not (check_health and connection.health_check_interval)
        ):
            # Connecting, a health check due, or no timeout: redis-py's own way.
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
            return
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        writer: Any = connection._writer
        try:
            writer.writelines(command)
            if writer.transport.get_write_buffer_size():  # the socket did not take it all
                await asyncio.wait_for(writer.drain(), connection.socket_timeout)
            else:
                await writer.drain()  # raises if the connection was lost
        except TimeoutError as exc:
            await connection.disconnect(nowait=True)
            if exc.errno is not None:  # ETIMEDOUT from the kernel: the peer is gone, not slow
                raise rex.ConnectionError(f"Error while writing to socket: {exc}") from exc
            raise rex.TimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await connection.disconnect(nowait=True)
            raise rex.ConnectionError(f"Error while writing to socket: {exc}") from exc
        except BaseException:
            # Part of a command may have been written: the connection cannot be used again.
            await connection.disconnect(nowait=True)
            raise


class PromptConnection(_PromptWrites, aioredis.Connection):
    pass


class PromptSSLConnection(_PromptWrites, aioredis.SSLConnection):
    pass


class WaitingPool(aioredis.ConnectionPool):
    """redis-py's connection pool, except that a command finding all ``max_connections`` in
    use waits up to ``wait_s`` for one to be given back, instead of failing at once: a burst
    of a thousand accepts is load, not an outage.

    redis-py's ``BlockingConnectionPool`` waits too, but takes a condition variable, a timeout
    scope and a wait-time record on every checkout and a lock on every release, whether the
    pool is short or not: about 16 µs of CPU per command, which every command pays. Here a
    checkout with a connection free takes it from a list, and only a command that must wait
    makes a future. Waiters are woken in turn as connections come back; the count of connections in
    use is redis-py's own (a weak set), so a connection dropped without being given back is
    not counted against the limit for ever.
    """

    def __init__(self, wait_s: float = 5.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Over TLS (rediss://, which names redis-py's SSL connection) or not, writes without a
        # timer per command.
        tls = issubclass(self.connection_class, aioredis.SSLConnection)
        self.connection_class = PromptSSLConnection if tls else PromptConnection
        self.wait_s = wait_s
        self._waiters: deque[asyncio.Future[None]] = deque()

    def _free(self) -> bool:
        return bool(self._available_connections) or (
            len(self._in_use_connections) < self.max_connections
        )

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if not self._free():
            await self._wait()
        connection = self.get_available_connection()  # type: ignore[no-untyped-call]
        try:
            # Made again if the server closed it (a Redis restarted), as redis-py's pools do.
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.wait_s):
                while not self._free():
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    except BaseException:
                        if waiter.done() and not waiter.cancelled():
                            self._wake_one()  # woken but leaving: the turn goes on
                        elif waiter in self._waiters:
                            self._waiters.remove(waiter)
                        raise
        except TimeoutError:
            raise rex.ConnectionError(
                f"No Redis connection was free within {self.wait_s:g} seconds "
                f"({self.max_connections} in use)."
            ) from None

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def release(self, connection: Any) -> None:
        try:
            await super().release(connection)
        finally:
            self._wake_one()


def user_key(uid: str) -> str:
    return "vb:{u:" + uid + "}"


def call_key(cid: str) -> str:
    return "vb:{" + cid + "}"


# One encoder for everything stored: ``json.dumps`` with separators builds a new encoder on
# every call, most of the cost of a small value (a call record is 34 of them).
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def enc(value: Any) -> str:
    return _ENCODER.encode(value)


def agent_record(user_id: str, h: dict[str, str], **live: Any) -> AgentRecord:
    """An agent's stored hash as a record; ``live`` adds the facts read elsewhere (connected,
    busy, ringing, last rung)."""
    return AgentRecord(
        user_id=user_id,
        state="available" if h.get("state") == "available" else "away",
        display_name=h.get("display_name", ""),
        since=float(h.get("since", 0)),
        idle_since=float(h.get("idle_since", 0)),
        wrapup_until=float(h.get("wrapup_until", 0)),
        missed=int(h.get("missed", 0)),
        calls=int(h.get("calls", 0)),
        **live,
    )
