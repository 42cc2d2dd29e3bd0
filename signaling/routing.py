"""Delivery to users whose socket is not on this node, and the liveness of nodes.

The hub delivers to its own sessions; a message for anyone else goes to its ``Router``:

- ``LocalRouter`` (one process, the memory store): there is no elsewhere. A message for a user
  who dropped is parked in this process until they resume or their grace period passes.
- ``RedisRouter`` (many nodes on one Redis or Redis Cluster): presence says which nodes hold a
  user's sockets (``vb:where:{u:ID}``, a set of node ids); the message is published on each such
  node's channel ``vb:node:NODE`` and that node hands it to its sessions. A user held nowhere,
  or held by a node that no longer listens, gets the message parked in Redis
  (``vb:parked:{u:ID}``, kept for the grace period), so that it reaches them on whichever node
  they resume.

Nodes heartbeat into ``vb:nodes`` (a zset of node -> last beat). A node whose beat is older than
``node_ttl_s`` is dead: the first live node to remove it from the zset (ZREM answers 1 to one
caller only) takes over its sessions (``vb:node:NODE:sessions``): they are no longer connected,
leave presence, and their grace timers are scheduled in the store like any dropped connection.
So a SIGKILLed node's calls still end if their parties never come back, and resume works on any
node because resume tokens live in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions as rex

from broker.events import Event
from broker.store.base import StoreUnavailable
from broker.store.redis import RedisStore, parse_redis_url
from broker.store.redis_common import REDIS_DOWN

if TYPE_CHECKING:
    from broker.service import Broker

log = logging.getLogger("vabroker.routing")

Wire = dict[str, Any]
T = TypeVar("T")
PARKED_LIMIT = 200


class RouterHost(Protocol):
    """What a router needs of the hub."""

    def deliver_here(self, user_id: str, message: Wire) -> bool: ...

    def routed(self, event: Event, here: bool) -> None: ...

    def deliver(self, events: list[Event]) -> None: ...

    async def redeliver_parked(self) -> None: ...

    async def reassert(self) -> None: ...


class Router(Protocol):
    remote: bool

    @property
    def listening(self) -> bool: ...

    async def start(self, host: RouterHost) -> None: ...

    async def stop(self) -> None: ...

    def forward(self, user_id: str, message: Wire, event: Event | None) -> bool:
        """Deliver to a user with no session here; True if it may reach them."""
        ...

    async def attached(self, user_id: str, session_id: str) -> None: ...

    async def detached(self, user_id: str, session_id: str, last: bool) -> None: ...

    async def take_parked(self, user_id: str) -> list[Wire]: ...


class LocalRouter:
    """One process: there is no other node."""

    remote = False
    listening = True

    async def start(self, host: RouterHost) -> None:
        return None

    async def stop(self) -> None:
        return None

    def forward(self, user_id: str, message: Wire, event: Event | None) -> bool:
        return False

    async def attached(self, user_id: str, session_id: str) -> None:
        return None

    async def detached(self, user_id: str, session_id: str, last: bool) -> None:
        return None

    async def take_parked(self, user_id: str) -> list[Wire]:
        return []


def _where(uid: str) -> str:
    return "vb:where:{u:" + uid + "}"


def _parked(uid: str) -> str:
    return "vb:parked:{u:" + uid + "}"


def _channel(node: str) -> str:
    return "vb:node:" + node


def _sessions(node: str) -> str:
    return "vb:node:{" + node + "}:sessions"


_NODES = "vb:nodes"
_DOWN: tuple[type[BaseException], ...] = (StoreUnavailable, *REDIS_DOWN)

# KEYS: parked list. ARGV: limit, ttl seconds, messages...
_PARK = """
for i = 3, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


# KEYS: parked list. Everything parked, taken at once.
_TAKE = """
local got = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return got
"""


class RedisRouter:
    """Presence, cross-node delivery and node liveness on the Redis the store uses.

    Keys go through the store's client (a cluster client on a cluster). Pub/sub goes through a
    plain connection to the URL's node: Redis Cluster broadcasts PUBLISH to every node, so
    subscribing at one node hears messages published at any.
    """

    remote = True

    def __init__(
        self,
        store: RedisStore,
        url: str,
        node_id: str,
        broker: Broker,
        grace_s: float,
        beat_s: float = 1.0,
        ttl_s: float = 5.0,
    ) -> None:
        self.store = store
        self.r: Any = store.r
        target, cluster, options = parse_redis_url(url)
        if cluster:
            parts = urlsplit(target)
            target = f"{parts.scheme}://{parts.netloc}/0"
        self.pubsub_client = aioredis.Redis.from_url(
            target, decode_responses=True, **{**options, "socket_timeout": None}
        )
        # Beats on connections of their own: behind a burst of a thousand queued requests in the
        # store's pool, a beat would be late and the node taken for dead.
        self.beat_store = RedisStore.from_url(url)
        self.node_id = node_id
        self.broker = broker
        self.grace_s = grace_s
        self.beat_s = beat_s
        self.ttl_s = ttl_s
        self._park = self.r.register_script(_PARK)
        self._take = self.r.register_script(_TAKE)
        self._out: asyncio.Queue[tuple[str, Wire, Event | None]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._host: RouterHost | None = None
        self._subscribed = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self, host: RouterHost) -> None:
        self._host = host
        self._tasks = [
            asyncio.create_task(self._listen(), name="route-listen"),
            asyncio.create_task(self._send_loop(), name="route-send"),
            asyncio.create_task(self._beat_loop(), name="node-beat"),
        ]
        # A restarted node of the same name: what its previous life held is gone.
        with contextlib.suppress(*_DOWN):
            await self._take_over(self.node_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), 5.0)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(*REDIS_DOWN):
            await self.r.zrem(_NODES, self.node_id)
        await self.pubsub_client.aclose()
        await self.beat_store.close()

    # --- presence --------------------------------------------------------------------------
    async def attached(self, user_id: str, session_id: str) -> None:
        await _guard(self._attached(user_id, session_id))

    async def _attached(self, user_id: str, session_id: str) -> None:
        await self.r.sadd(_where(user_id), self.node_id)
        await self.r.sadd(_sessions(self.node_id), f"{user_id}|{session_id}")

    async def detached(self, user_id: str, session_id: str, last: bool) -> None:
        await _guard(self._detached(user_id, session_id, last))

    async def _detached(self, user_id: str, session_id: str, last: bool) -> None:
        await self.r.srem(_sessions(self.node_id), f"{user_id}|{session_id}")
        if last:
            await self.r.srem(_where(user_id), self.node_id)

    async def take_parked(self, user_id: str) -> list[Wire]:
        async def take() -> list[Wire]:
            got = await self._take(keys=[_parked(user_id)])
            return [dict(json.loads(m)) for m in got]

        return await _guard(take())

    # --- delivery --------------------------------------------------------------------------
    def forward(self, user_id: str, message: Wire, event: Event | None) -> bool:
        self._out.put_nowait((user_id, message, event))
        return True

    async def _send_loop(self) -> None:
        """One sender, so that messages to a user leave in the order they were sent; each
        round takes everything queued and looks presence up in one pipeline."""
        while True:
            batch = [await self._out.get()]
            while not self._out.empty() and len(batch) < 1000:
                batch.append(self._out.get_nowait())
            while True:
                try:
                    await self._route(batch)
                    break
                except _DOWN:
                    log.warning("Redis unavailable: holding %d messages", len(batch))
                    await asyncio.sleep(0.5)
                except Exception:
                    log.exception("routing failed; %d messages dropped", len(batch))
                    break

    async def _route(self, batch: list[tuple[str, Wire, Event | None]]) -> None:
        users = list(dict.fromkeys(u for u, _, _ in batch))
        pipe = self.r.pipeline(transaction=False)
        for uid in users:
            pipe.smembers(_where(uid))
        where = dict(zip(users, await pipe.execute(), strict=True))
        sends: list[tuple[str, str]] = []  # (node, envelope)
        owners: list[int] = []  # the batch entry each send belongs to
        park: dict[str, list[str]] = {}
        for i, (uid, message, _) in enumerate(batch):
            text = json.dumps({"to": uid, "msg": message}, separators=(",", ":"))
            for node in where[uid]:
                if node != self.node_id:
                    sends.append((node, text))
                    owners.append(i)
        heard = await self._publish(sends) if sends else []
        reached = [False] * len(batch)
        for i, n in zip(owners, heard, strict=True):
            reached[i] = reached[i] or n > 0
        outcomes: list[tuple[Event, bool]] = []
        for i, (uid, message, event) in enumerate(batch):
            if event is not None:
                outcomes.append((event, reached[i]))
            if not reached[i]:
                # Held by no live node: park it for wherever they resume.
                park.setdefault(uid, []).append(json.dumps(message, separators=(",", ":")))
        if park:
            ttl = max(1, int(self.grace_s) + 5)
            pipe = self.r.pipeline(transaction=False)
            for uid, texts in park.items():
                pipe.execute_command(
                    "EVALSHA", self._park.sha, 1, _parked(uid), PARKED_LIMIT, ttl, *texts
                )
            try:
                await pipe.execute()
            except rex.NoScriptError:
                await self.r.script_load(_PARK)
                pipe = self.r.pipeline(transaction=False)
                for uid, texts in park.items():
                    pipe.execute_command(
                        "EVALSHA", self._park.sha, 1, _parked(uid), PARKED_LIMIT, ttl, *texts
                    )
                await pipe.execute()
        if self._host is not None:
            for event, here in outcomes:
                self._host.routed(event, here)

    async def _publish(self, items: list[tuple[str, str]]) -> list[int]:
        pipe = self.pubsub_client.pipeline(transaction=False)
        for node, text in items:
            pipe.publish(_channel(node), text)
        return [int(n) for n in await pipe.execute()]

    @property
    def listening(self) -> bool:
        """Whether this node hears its channel; a node that does not is not ready."""
        return self._subscribed.is_set()

    async def _listen(self) -> None:
        """Messages other nodes publish for this node's sessions. After the channel was lost
        (Redis went away), subscribes again and hands on what was parked meanwhile for the
        users whose sockets are here."""
        while True:
            pubsub = self.pubsub_client.pubsub(ignore_subscribe_messages=True)
            try:
                await asyncio.wait_for(pubsub.subscribe(_channel(self.node_id)), 5.0)
                self._subscribed.set()
                if self._host is not None:
                    await self._host.redeliver_parked()
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        self._arrived(msg["data"])
            except asyncio.CancelledError:
                await self._close_quietly(pubsub)
                raise
            except Exception as exc:
                self._subscribed.clear()
                log.warning("node channel lost (%s); subscribing again", exc)
                await self._close_quietly(pubsub)
                await asyncio.sleep(0.5)

    @staticmethod
    async def _close_quietly(pubsub: Any) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pubsub.aclose(), 1.0)

    def _arrived(self, data: str) -> None:
        try:
            envelope = json.loads(data)
            user_id, message = str(envelope["to"]), dict(envelope["msg"])
        except (ValueError, KeyError, TypeError):
            log.error("malformed message on the node channel: %.200s", data)
            return
        if self._host is not None and not self._host.deliver_here(user_id, message):
            # They left this node since the sender looked: route it again from here.
            self.forward(user_id, message, None)

    # --- liveness --------------------------------------------------------------------------
    async def _beat_loop(self) -> None:
        first = True
        while True:
            try:
                beat = self.beat_store.r
                added = await beat.zadd(_NODES, {self.node_id: time.time()})
                if added and not first and self._host is not None:
                    # Another node thought this one dead (it was too busy or cut off to beat)
                    # and took its sessions over: they are still here, so say so again.
                    log.warning("this node was taken for dead: re-registering its sessions")
                    await self._host.reassert()
                first = False
                dead = await beat.zrangebyscore(_NODES, "-inf", time.time() - self.ttl_s)
                for node in dead:
                    if node != self.node_id and await beat.zrem(_NODES, node):
                        log.warning("node %s stopped beating: taking over its sessions", node)
                        await self._take_over(node)
            except _DOWN:
                pass
            except Exception:
                log.exception("node heartbeat")
            await asyncio.sleep(self.beat_s)

    async def _take_over(self, node: str) -> None:
        """The sessions of a dead node dropped: as if each had closed without a word."""
        entries = await self.r.smembers(_sessions(node))
        events: list[Event] = []
        for entry in entries:
            user_id, _, session_id = entry.partition("|")
            await self.store.set_connected(user_id, False)
            await self.r.srem(_where(user_id), node)
            if self.grace_s > 0:
                await self.broker.disconnected(user_id, session_id, self.grace_s)
            else:
                events += await self.broker.lost(user_id)
            await self.r.srem(_sessions(node), entry)
        if events and self._host is not None:
            self._host.deliver(events)


async def _guard(aw: Awaitable[T]) -> T:
    try:
        return await aw
    except REDIS_DOWN as exc:
        raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc
