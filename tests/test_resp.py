"""The node channels' own Redis client (signaling/resp.py) against a real ``redis-server``:
replies in order, errors as redis-py's, a Redis that stops answering, goes away or comes back,
a request given up half-way, a subscription, and a URL's password and database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
import redis.exceptions as rex

from broker.store.redis_common import REDIS_DOWN
from signaling.resp import RespClient
from tests.redis_procs import RedisServer, free_port


@contextlib.asynccontextmanager
async def served(timeout_s: float = 2.0) -> AsyncIterator[tuple[RedisServer, RespClient]]:
    """A Redis of the test's own and a client of it, both closed after."""
    with RedisServer.start() as server:
        client = RespClient(server.url, timeout_s=timeout_s)
        try:
            yield server, client
        finally:
            await client.aclose()


async def until(condition: Callable[[], bool]) -> None:
    """Waits up to 2 s for ``condition``: a subscription's messages arrive in the background.
    The assertion after says what was expected."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0.02)


async def test_replies_come_back_in_order_and_reply_errors_are_redis_pys() -> None:
    async with served() as (_server, client):
        assert await client.call("SET", "k", "v") == "OK"
        replies = await client.pipeline(
            [("RPUSH", "l", "a", "b"), ("LRANGE", "l", 0, -1), ("INCRBY", "n", 5)]
        )
        assert replies == [2, ["a", "b"], 5]
        with pytest.raises(rex.ResponseError, match="WRONGTYPE"):
            await client.call("INCR", "l")
        with pytest.raises(rex.NoScriptError):
            await client.call("EVALSHA", "0" * 40, 0)
        # An error in a pipeline is raised once every reply has come: the next request's
        # reply is its own.
        with pytest.raises(rex.ResponseError):
            await client.pipeline([("INCR", "l"), ("SET", "after", "1")])
        assert await client.call("GET", "after") == "1"
        assert await client.call("GET", "k") == "v"


async def test_a_redis_that_stops_answering_times_out_and_is_used_again_when_it_answers() -> None:
    async with served(0.5) as (server, client):
        assert await client.call("PING") == "PONG"
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(rex.TimeoutError, match=r"did not answer within 0\.5 s"):
                await client.call("SET", "k", "v")
            assert time.monotonic() - started < 5
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        # The late reply to the SET is not taken for the GET's: a connection of its own.
        assert await client.call("GET", "k") == "v"
        assert await client.call("PING") == "PONG"


async def test_a_request_given_up_half_way_leaves_no_reply_for_the_next() -> None:
    async with served(5.0) as (_server, client):
        await client.call("SET", "k", "v")
        blocked = asyncio.create_task(client.call("BLPOP", "nothing", 1))
        await asyncio.sleep(0.1)
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        assert await client.call("GET", "k") == "v"


async def test_redis_away_is_a_connection_error_and_back_is_used_again() -> None:
    async with served() as (server, client):
        assert await client.call("PING") == "PONG"
        server.stop()
        with pytest.raises(REDIS_DOWN):
            await client.call("PING")
        with pytest.raises(rex.ConnectionError, match="cannot connect to Redis"):
            await client.call("PING")
        server.run()
        assert await client.call("PING") == "PONG"
    nowhere = RespClient(f"redis://127.0.0.1:{free_port()}/0", timeout_s=2.0)
    with pytest.raises(rex.ConnectionError, match=r"cannot connect to Redis at 127\.0\.0\.1"):
        await nowhere.call("PING")


async def test_a_subscription_hands_each_message_on_as_read_and_says_when_it_is_lost() -> None:
    async with served() as (server, client):
        publisher = aioredis.Redis.from_url(server.url)
        got: list[str] = []
        try:
            subscription = await client.subscribe("vb:node:b", got.append)
            assert await publisher.publish("vb:node:b", "one") == 1
            assert await publisher.publish("vb:node:other", "not for b") == 0
            # Not UTF-8: read with a replacement character, and what follows still read.
            assert await publisher.publish("vb:node:b", b"\xff\xfe") == 1
            assert await publisher.publish("vb:node:b", '{"two": "\u00e9"}') == 1
            await until(lambda: len(got) == 3)
            assert got == ["one", "\ufffd\ufffd", '{"two": "\u00e9"}']
            assert not subscription.lost.done()
            server.restart()
            await asyncio.wait_for(subscription.lost, 5.0)
            again = await client.subscribe("vb:node:b", got.append)
            await publisher.aclose()
            publisher = aioredis.Redis.from_url(server.url)  # its connection went with Redis
            await publisher.publish("vb:node:b", "three")
            await until(lambda: got[-1] == "three")
            assert got[-1] == "three"
            again.close()
            await asyncio.wait_for(again.lost, 5.0)
        finally:
            await publisher.aclose()


async def test_a_subscriber_that_raises_is_logged_and_the_next_message_still_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with served() as (server, client):
        publisher = aioredis.Redis.from_url(server.url)
        got: list[str] = []

        def handle(data: str) -> None:
            if data == "bad":
                raise RuntimeError("a bug in the handler")
            got.append(data)

        try:
            subscription = await client.subscribe("c", handle)
            with caplog.at_level("ERROR", logger="vabroker.routing"):
                await publisher.publish("c", "bad")
                await publisher.publish("c", "good")
                await until(lambda: bool(got))
            assert got == ["good"]
            assert "handling a message of a node channel" in caplog.text
            assert not subscription.lost.done()
            subscription.close()
        finally:
            await publisher.aclose()


async def test_the_urls_password_and_database_are_used() -> None:
    with RedisServer.start() as server:
        admin = aioredis.Redis.from_url(server.url)
        await admin.config_set("requirepass", "s3cret")
        await admin.aclose()
        base = f"127.0.0.1:{server.port}"
        client = RespClient(f"redis://:s3cret@{base}/2", timeout_s=2.0)
        wrong = RespClient(f"redis://:wrong@{base}/0", timeout_s=2.0)
        none = RespClient(f"redis://{base}/0", timeout_s=2.0)
        check = aioredis.Redis.from_url(f"redis://:s3cret@{base}/2", decode_responses=True)
        try:
            assert await client.call("SET", "in-db-2", "yes") == "OK"
            assert await check.get("in-db-2") == "yes"
            with pytest.raises(rex.AuthenticationError, match="refused"):
                await wrong.call("PING")
            assert isinstance(rex.AuthenticationError("x"), REDIS_DOWN)
            with pytest.raises(rex.ResponseError, match="NOAUTH"):
                await none.call("GET", "in-db-2")
        finally:
            await check.aclose()
            for c in (client, wrong, none):
                await c.aclose()
