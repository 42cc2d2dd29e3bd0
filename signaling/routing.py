"""Delivery to users whose socket is not on this node, and the liveness of nodes.

The hub delivers to its own sessions; a message for anyone else goes to its ``Router``:

- ``LocalRouter`` (one process, the memory store): there is no elsewhere. A message for a user
  who dropped is parked in this process until they resume or their grace period passes.
- ``RedisRouter`` (many nodes on one Redis or Redis Cluster): presence says which nodes hold a
  user's sockets (``vb:where:{u:ID}``, a set of node ids); the message is published on each such
  node's channel ``vb:node:NODE`` and that node hands it to its sessions. A user held nowhere,
  or held by a node that no longer listens, gets the message parked in Redis
  (``vb:parked:{u:ID}``, kept for the grace period), so that it reaches them on whichever node
  they resume. A request to end a user's sessions (their sign-in was revoked, or they opened
  more than the session cap allows) goes the same way to every node holding them;
  ``vb:sessions:{u:ID}`` (a zset of "node|session" -> opened at) lets the cap count all nodes.

On a Redis Cluster the node channels are sharded channels (SPUBLISH/SSUBSCRIBE): a node
subscribes at the master that owns its channel's slot, and follows the cluster's topology (a
failover, a slot moved) by subscribing again wherever the slot went. Plain PUBLISH would not do:
its count of receivers only counts subscribers of the Redis node that ran it, so a message heard
elsewhere would also be parked and delivered twice.

What is accepted without an error is not dropped on the way (parked messages still expire
with the grace period, at most ``PARKED_LIMIT`` kept per user). A publish's count of receivers
is only Redis's word (a master killed between its replies, a subscription cut with the message
unread), so the receiving node acknowledges what its channel brought and the sender sends again
what was not acknowledged (``Unacked``). The sender's one loop holds a
batch while Redis is unreachable and tries again; an envelope carries its sender's running
number, kept when it is parked, so that a batch sent again after a partial failure is not
handed on twice, live or from the parked list. A message
is parked by one script on the user's slot that first looks at presence again: a node that
registered the user since the sender looked gets it live instead. A node that subscribes
again, or finds that others took it for dead, takes what was parked for its users right away,
and once more after every sender has had time to finish a round it began while this node could
not hear (such a late message comes after newer ones).

Nodes heartbeat into ``vb:nodes`` (a zset of node -> last beat). A node is dead when this node has
watched its beat stand still for ``node_ttl_s`` without losing sight of Redis itself: a beat left
old by an outage of the store (Redis restarted from its AOF, or a failover) is no sign of death,
since no node could beat meanwhile. The first live node to remove a dead one from the zset (ZREM
answers 1 to one caller only) takes over its sessions (``vb:node:NODE:sessions``): they are no
longer connected, leave presence, and their grace timers are scheduled in the store like any
dropped connection. So a SIGKILLed node's calls still end if their parties never come back, and
resume works on any node because resume tokens live in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions as rex

from broker.events import Event
from broker.store.base import StoreUnavailable
from broker.store.redis import RedisStore, parse_redis_url
from broker.store.redis_common import REDIS_DOWN
from signaling.messages import encode
from signaling.resp import RespClient, Subscription

if TYPE_CHECKING:
    from broker.service import Broker

log = logging.getLogger("vabroker.routing")

Wire = dict[str, Any]
T = TypeVar("T")
PARKED_LIMIT = 200
ACK_DELAY_S = 0.02  # acknowledgements to one sender go together, at most this late
ACK_WAIT_S = 1.0  # then an envelope not acknowledged goes again
_ROUNDS = 4  # of sending and parking, for one batch


class RouterHost(Protocol):
    """What a router needs of the hub."""

    def deliver_here(self, user_id: str, message: Wire) -> bool: ...

    def routed(self, event: Event, here: bool) -> None: ...

    def deliver(self, events: list[Event]) -> None: ...

    async def redeliver_parked(self) -> None: ...

    async def reassert(self) -> None: ...

    def end_here(self, user_id: str, end: Wire) -> int: ...


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

    async def end_sessions(self, user_id: str, end: Wire) -> None:
        """Ask every other node holding the user to end their sessions as ``end`` says."""
        ...

    async def oldest_over(self, user_id: str, cap: int) -> list[str] | None:
        """Ids of the user's oldest sessions beyond ``cap`` on all nodes together; None when
        this router does not know other nodes' sessions (then this node's are all there is)."""
        ...


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

    async def end_sessions(self, user_id: str, end: Wire) -> None:
        return None

    async def oldest_over(self, user_id: str, cap: int) -> list[str] | None:
        return None


def _where(uid: str) -> str:
    return "vb:where:{u:" + uid + "}"


def _parked(uid: str) -> str:
    return "vb:parked:{u:" + uid + "}"


def _user_sessions(uid: str) -> str:
    return "vb:sessions:{u:" + uid + "}"


def _channel(node: str) -> str:
    return "vb:node:" + node


def _sessions(node: str) -> str:
    return "vb:node:{" + node + "}:sessions"


_NODES = "vb:nodes"
_DOWN: tuple[type[BaseException], ...] = (StoreUnavailable, *REDIS_DOWN)

# KEYS: parked list, presence set (one slot: the user's). ARGV: limit, ttl seconds, '1' to park
# whatever presence says, number of nodes already tried, those nodes..., messages... Parks the
# messages unless presence now names a node not tried (it registered the user since the sender
# looked): then returns those nodes.
_PARK = """
local tried = {}
local n = tonumber(ARGV[4])
for i = 5, 4 + n do tried[ARGV[i]] = true end
local fresh = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if not tried[node] then fresh[#fresh + 1] = node end
end
if #fresh > 0 and ARGV[3] ~= '1' then return fresh end
for i = 5 + n, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


# One Redis only (a cluster would need every key and channel on one slot). KEYS: each user's
# presence set. ARGV: this node, the node channels' prefix, then (user's place in KEYS,
# envelope) for each message. Publishes each envelope on the channel of every node presence
# names but this one, in one round trip with the look at presence; returns each user's nodes
# as presence named them and the count of receivers of each publish, in that order.
_ROUTE = """
local where = {}
for i, key in ipairs(KEYS) do where[i] = redis.call('SMEMBERS', key) end
local me, prefix, heard = ARGV[1], ARGV[2], {}
for j = 3, #ARGV, 2 do
  for _, node in ipairs(where[tonumber(ARGV[j])]) do
    if node ~= me then heard[#heard + 1] = redis.call('PUBLISH', prefix .. node, ARGV[j + 1]) end
  end
end
return {where, heard}
"""


# KEYS: parked list. Everything parked, taken at once.
_TAKE = """
local got = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return got
"""


class _Outgoing:
    """One message on its way to a user on another node."""

    __slots__ = ("event", "message", "number", "parked", "reached", "text", "user_id")

    def __init__(
        self, user_id: str, message: Wire, event: Event | None, number: int, text: str
    ) -> None:
        self.user_id = user_id
        self.message = message
        self.event = event
        self.number = number
        self.text = text  # the envelope, numbered once: sent again, it is known again
        self.reached = False
        self.parked = False


class HeardNumbers:
    """The envelope numbers lately heard from one sender. Not just the highest: one batch is
    sent in rounds (a user found on another node at the second look goes out after users with
    higher numbers), so numbers from one sender do not arrive in order. A sender's numbers only
    advance as its batches go through, and a batch is at most 1,000, so the last ``keep``
    numbers cover any batch sent again."""

    def __init__(self, keep: int = 50_000) -> None:
        self.keep = keep
        self._numbers: set[int] = set()
        self._order: deque[int] = deque()

    def first_time(self, number: int) -> bool:
        if number in self._numbers:
            return False
        self._numbers.add(number)
        self._order.append(number)
        if len(self._order) > self.keep:
            self._numbers.discard(self._order.popleft())
        return True


class Unacked:
    """Envelopes a node's channel said it heard (SPUBLISH/PUBLISH counted a receiver) and that
    node has not acknowledged yet. A count is only Redis's word: a master killed between
    answering the publisher and writing to the subscriber, or a subscription dropped with the
    message still unread, loses it. So each is sent again, to the same node, until that node
    acknowledges it or ``give_up_s`` passes (the node died: what it held is in doubt, and sending
    it anywhere else could hand the user a copy of what that node did deliver). Keyed by
    (node, number): a user with sockets on two nodes is two deliveries."""

    def __init__(self, wait_s: float, give_up_s: float, limit: int = 50_000) -> None:
        self.wait_s = wait_s
        self.give_up_s = give_up_s
        self.limit = limit
        self.given_up = 0
        # (node, number) -> [envelope, first sent, last sent]
        self._out: dict[tuple[str, int], list[Any]] = {}

    def __len__(self) -> int:
        return len(self._out)

    def sent(self, node: str, number: int, text: str, now: float) -> None:
        self._out[(node, number)] = [text, now, now]
        if len(self._out) > self.limit:  # a long outage: the oldest are in doubt
            del self._out[next(iter(self._out))]
            self.given_up += 1

    def acked(self, node: str, numbers: list[int]) -> None:
        for number in numbers:
            self._out.pop((node, number), None)

    def due(self, now: float) -> list[tuple[str, int, str]]:
        """What to send again now (marked sent again); drops what waited past ``give_up_s``."""
        due: list[tuple[str, int, str]] = []
        for key, entry in list(self._out.items()):
            if now - entry[1] >= self.give_up_s:
                del self._out[key]
                self.given_up += 1
            elif now - entry[2] >= self.wait_s:
                entry[2] = now
                due.append((key[0], key[1], entry[0]))
        return due


class BeatWatch:
    """Which nodes stopped beating, judged only on what this node has watched itself.

    A node is dead when its beat has stood still for ``ttl_s`` of this node's uninterrupted
    watching. Comparing a beat's time with the clock would take every node for dead after an
    outage of the store longer than ``ttl_s`` (their last beats in the AOF are old, and none
    could beat meanwhile); watching restarts instead whenever this node lost sight of Redis:
    an error, or a gap between two looks longer than ``gap_s``."""

    def __init__(self, ttl_s: float, gap_s: float) -> None:
        self.ttl_s = ttl_s
        self.gap_s = gap_s
        self._seen: dict[str, tuple[float, float]] = {}  # node -> (beat, watched since)
        self._last_look: float | None = None

    def lost_sight(self) -> None:
        self._seen.clear()
        self._last_look = None

    def look(self, beats: dict[str, float], now: float) -> list[str]:
        """Record the beats read at ``now`` (a monotonic time); the nodes now dead."""
        if self._last_look is not None and now - self._last_look > self.gap_s:
            self._seen.clear()
        self._last_look = now
        dead = []
        for node, beat in beats.items():
            seen = self._seen.get(node)
            if seen is None or seen[0] != beat:
                self._seen[node] = (beat, now)
            elif now - seen[1] >= self.ttl_s:
                dead.append(node)
        for node in [n for n in self._seen if n not in beats]:
            del self._seen[node]
        return dead


class RedisRouter:
    """Presence, cross-node delivery and node liveness on the Redis the store uses.

    Keys go through the store's client (a cluster client on a cluster, which follows failovers).
    On one Redis, the node channels go through a client of their own (``RespClient``: a
    batch's first round is one script that reads presence and publishes; a subscription
    hands each message on as it is read); on a cluster, through sharded channels at the
    master owning this node's channel, found anew in the cluster's current topology each time
    the subscription is lost or its slot moves.
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
        self.cluster = store.cluster
        target, _cluster, options = parse_redis_url(url)
        self._target = target
        self._pubsub_options: dict[str, Any] = {
            **{k: v for k, v in options.items() if k != "startup_nodes"},
            "socket_timeout": None,
        }
        # One Redis: the node channels (and the script that publishes on them) on connections
        # of their own, driven directly (see signaling/resp.py). A cluster: redis-py, one
        # connection per subscription, to whichever master owns the channel then (see
        # _subscribe).
        self.pubsub_client: RespClient | None = (
            None if self.cluster else RespClient(target, float(options["socket_timeout"]))
        )
        self._subscriber: Any = None
        # Beats on connections of their own: behind a burst of a thousand queued requests in the
        # store's pool, a beat would be late and the node taken for dead.
        self.beat_store = RedisStore.from_url(url)
        self.node_id = node_id
        self.broker = broker
        self.grace_s = grace_s
        self.beat_s = beat_s
        self.ttl_s = ttl_s
        # A sender's round (a look at presence, then up to _ROUNDS of publishing and parking)
        # ends within that many request timeouts or fails and starts again: what it parked for
        # this node's users while this node could not hear is taken once more after this long.
        self.settle_s = (1 + 2 * _ROUNDS + 1) * float(options["socket_timeout"])
        self.watch = BeatWatch(ttl_s, gap_s=max(2 * beat_s, ttl_s / 2))
        self._park = self.r.register_script(_PARK)
        self._take = self.r.register_script(_TAKE)
        self._route_sha = hashlib.sha1(_ROUTE.encode()).hexdigest()
        self._out: asyncio.Queue[tuple[str, Wire, Event | None]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._host: RouterHost | None = None
        self._subscribed = asyncio.Event()
        # While parked messages are handed on, live ones arriving meanwhile are held, so that
        # they do not overtake the older parked ones.
        self._redelivering = 0
        self._held: list[str] = []
        self._stopping = False
        # Envelopes are numbered by (this node's life, running number); the numbers heard
        # lately from each sender drop a copy of a batch sent again.
        self._life = secrets.token_hex(4)
        self._sent = 0
        self._heard: dict[str, HeardNumbers] = {}
        # Acknowledgements: what this node's channel brought, by (sender node, sender life),
        # sent back in one message per sender every ACK_DELAY_S; what other nodes have not
        # acknowledged yet, sent again to them; and each node's life, as its acknowledgements
        # name it (a message is only sent again to the life that acknowledged before).
        self._acks: dict[tuple[str, str], list[int]] = {}
        self._ack_timer: asyncio.TimerHandle | None = None
        self.unacked = Unacked(wait_s=ACK_WAIT_S, give_up_s=min(30.0, max(5.0, self.settle_s)))
        self._lives: dict[str, str] = {}

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self, host: RouterHost) -> None:
        self._host = host
        self._tasks = [
            asyncio.create_task(self._listen(), name="route-listen"),
            asyncio.create_task(self._send_loop(), name="route-send"),
            asyncio.create_task(self._beat_loop(), name="node-beat"),
            asyncio.create_task(self._resend_loop(), name="route-resend"),
        ]
        # A restarted node of the same name: what its previous life held is gone.
        with contextlib.suppress(*_DOWN):
            await self._take_over(self.node_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), 5.0)

    async def stop(self) -> None:
        self._stopping = True  # redis-py may swallow a cancel that lands inside its calls
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        tasks = [*self._tasks, *self._background]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(*REDIS_DOWN):
            await self.r.zrem(_NODES, self.node_id)
        if self.pubsub_client is not None:
            await self.pubsub_client.aclose()
        await self.beat_store.close()

    # --- presence --------------------------------------------------------------------------
    async def attached(self, user_id: str, session_id: str) -> None:
        await _guard(self._attached(user_id, session_id))

    async def _attached(self, user_id: str, session_id: str) -> None:
        await self.r.sadd(_where(user_id), self.node_id)
        await self.r.sadd(_sessions(self.node_id), f"{user_id}|{session_id}")
        # NX: a session re-registered after a takeover keeps its age for the session cap.
        await self.r.zadd(
            _user_sessions(user_id), {f"{self.node_id}|{session_id}": time.time()}, nx=True
        )

    async def detached(self, user_id: str, session_id: str, last: bool) -> None:
        await _guard(self._detached(user_id, session_id, last))

    async def _detached(self, user_id: str, session_id: str, last: bool) -> None:
        await self.r.srem(_sessions(self.node_id), f"{user_id}|{session_id}")
        await self.r.zrem(_user_sessions(user_id), f"{self.node_id}|{session_id}")
        if last:
            await self.r.srem(_where(user_id), self.node_id)

    # --- ending sessions -------------------------------------------------------------------
    async def end_sessions(self, user_id: str, end: Wire) -> None:
        async def publish() -> None:
            nodes = [n for n in await self.r.smembers(_where(user_id)) if n != self.node_id]
            if nodes:
                text = encode({"to": user_id, "end": end})
                await self._publish([(node, text) for node in nodes])

        await _guard(publish())

    async def oldest_over(self, user_id: str, cap: int) -> list[str] | None:
        async def read() -> list[str]:
            key = _user_sessions(user_id)
            entries = [str(e) for e in await self.r.zrange(key, 0, -1)]
            if len(entries) <= cap:
                return []
            # Over the cap: drop entries their node no longer holds (left behind while Redis
            # was unreachable), so that they neither count nor stand in for a live session.
            pipe = self.r.pipeline(transaction=False)
            for entry in entries:
                node, _, session_id = entry.partition("|")
                pipe.sismember(_sessions(node), f"{user_id}|{session_id}")
            held = await pipe.execute()
            stale = [e for e, h in zip(entries, held, strict=True) if not h]
            if stale:
                await self.r.zrem(key, *stale)
            live = [e.partition("|")[2] for e, h in zip(entries, held, strict=True) if h]
            return live[: max(0, len(live) - cap)]

        return await _guard(read())

    async def take_parked(self, user_id: str) -> list[Wire]:
        async def take() -> list[Wire]:
            got = await self._take(keys=[_parked(user_id)])
            out: list[Wire] = []
            for text in got:
                parked = json.loads(text)
                if "type" in parked:  # parked bare by a node of an earlier release
                    out.append(dict(parked))
                elif self._first_time(parked.get("from"), parked.get("n")):
                    out.append(dict(parked["msg"]))
            return out

        return await _guard(take())

    def _first_time(self, sender: object, number: object) -> bool:
        """False for an envelope already heard, live or parked: one sent live whose reply was
        lost (a master failing over) is sent again, and may then be parked as well."""
        if not isinstance(sender, str) or not isinstance(number, int):
            return True
        heard = self._heard.get(sender)
        if heard is None:
            heard = self._heard[sender] = HeardNumbers()
        return heard.first_time(number)

    # --- delivery --------------------------------------------------------------------------
    def forward(self, user_id: str, message: Wire, event: Event | None) -> bool:
        self._out.put_nowait((user_id, message, event))
        return True

    def _outgoing(self, user_id: str, message: Wire, event: Event | None) -> _Outgoing:
        self._sent += 1
        text = encode(
            {"from": self._life, "by": self.node_id, "n": self._sent, "to": user_id, "msg": message}
        )
        return _Outgoing(user_id, message, event, self._sent, text)

    async def _send_loop(self) -> None:
        """One sender, so that messages to a user leave in the order they were sent; each
        round takes everything queued and looks presence up in one pipeline. A round that
        fails for want of Redis is held and tried again until it goes through."""
        while not self._stopping:
            batch = [await self._out.get()]
            while not self._out.empty() and len(batch) < 1000:
                batch.append(self._out.get_nowait())
            items = [self._outgoing(u, m, e) for u, m, e in batch]
            while not self._stopping:
                try:
                    await self._route(items)
                    break
                except _DOWN:
                    log.warning("Redis unavailable: holding %d messages", len(items))
                    await asyncio.sleep(0.5)
                except Exception:
                    log.exception("routing failed; %d messages dropped", len(items))
                    break

    async def _route(self, items: list[_Outgoing]) -> None:
        todo = [i for i in items if not (i.reached or i.parked)]
        users = list(dict.fromkeys(i.user_id for i in todo))
        tried: dict[str, set[str]] = {u: set() for u in users}
        if self.cluster:
            pipe = self.r.pipeline(transaction=False)
            for uid in users:
                pipe.smembers(_where(uid))
            where = {u: set(nodes) for u, nodes in zip(users, await pipe.execute(), strict=True)}
            await self._send_to(todo, where, tried)
        else:
            await self._look_and_send(todo, users, tried)
        # Then rounds: park what reached none, unless presence changed meanwhile (then send
        # again to the nodes it names now); presence changing round after round: park at last
        # rather than go on.
        for round_ in range(1, _ROUNDS + 1):
            todo = [i for i in todo if not i.reached]
            if not todo:
                break
            fresh = await self._park_or_refresh(todo, tried, force=round_ == _ROUNDS)
            todo = [i for i in todo if i.user_id in fresh]
            if not todo or round_ == _ROUNDS:
                break
            await self._send_to(todo, fresh, tried)
        if self._host is not None:
            for item in items:
                if item.event is not None:
                    self._host.routed(item.event, item.reached)

    async def _look_and_send(
        self, items: list[_Outgoing], users: list[str], tried: dict[str, set[str]]
    ) -> None:
        """A batch's first round on one Redis: presence looked at and the envelopes published
        by one script (see ``_send_to`` for the rounds after it, and for a cluster)."""
        place = {uid: k for k, uid in enumerate(users, start=1)}
        args: list[str | int] = [self.node_id, _channel("")]
        for item in items:
            args += (place[item.user_id], item.text)
        now = time.monotonic()
        where, heard = await self._run_route([_where(u) for u in users], args)
        counts = iter(heard)
        for uid, nodes in zip(users, where, strict=True):
            tried[uid].update(nodes)
        for item in items:
            for node in where[place[item.user_id] - 1]:
                if node == self.node_id:
                    self._deliver_here(item)
                elif next(counts) > 0:
                    item.reached = True
                    self.unacked.sent(node, item.number, item.text, now)

    async def _run_route(self, keys: list[str], args: list[str | int]) -> Any:
        assert self.pubsub_client is not None
        command = ("EVALSHA", self._route_sha, len(keys), *keys, *args)
        try:
            return await self.pubsub_client.call(*command)
        except rex.NoScriptError:  # a Redis restarted, or flushed its scripts
            await self.pubsub_client.call("SCRIPT", "LOAD", _ROUTE)
            return await self.pubsub_client.call(*command)

    def _deliver_here(self, item: _Outgoing) -> None:
        # The user connected here since the hub looked.
        if self._host is not None and self._host.deliver_here(item.user_id, item.message):
            item.reached = True

    async def _send_to(
        self, items: list[_Outgoing], where: dict[str, set[str]], tried: dict[str, set[str]]
    ) -> None:
        sends: list[tuple[str, str]] = []  # (node, envelope)
        owners: list[_Outgoing] = []
        for item in items:
            for node in sorted(where.get(item.user_id, ())):
                if node == self.node_id:
                    self._deliver_here(item)
                    continue
                sends.append((node, item.text))
                owners.append(item)
        for uid, nodes in where.items():
            tried.setdefault(uid, set()).update(nodes)
        if sends:
            now = time.monotonic()
            heard_by = await self._publish(sends)
            for (node, text), item, heard in zip(sends, owners, heard_by, strict=True):
                if heard > 0:
                    item.reached = True
                    self.unacked.sent(node, item.number, text, now)

    async def _park_or_refresh(
        self, items: list[_Outgoing], tried: dict[str, set[str]], force: bool
    ) -> dict[str, set[str]]:
        """Park messages held by no live node for wherever their users resume; returns, by
        user, the nodes presence names that were not tried yet (their messages not parked).
        Parked messages are marked so, so that a round tried again does not park them twice
        (on a cluster, where one master failing leaves the others' replies good)."""
        by_user: dict[str, list[_Outgoing]] = {}
        for item in items:
            by_user.setdefault(item.user_id, []).append(item)
        ttl = max(1, int(self.grace_s) + 5)
        fresh: dict[str, set[str]] = {}
        for _attempt in (1, 2):
            pipe = self.r.pipeline(transaction=False)
            users = list(by_user)
            for uid in users:
                nodes = sorted(tried.get(uid, ()))
                # Parked numbered, as sent live: a message both heard and parked (its
                # reply lost in a failover, then sent again) is handed on once.
                texts = [i.text for i in by_user[uid]]
                pipe.execute_command(
                    "EVALSHA",
                    self._park.sha,
                    2,
                    _parked(uid),
                    _where(uid),
                    PARKED_LIMIT,
                    ttl,
                    "1" if force else "0",
                    len(nodes),
                    *nodes,
                    *texts,
                )
            replies = await pipe.execute(raise_on_error=False)
            failed: BaseException | None = None
            for uid, reply in zip(users, replies, strict=True):
                if isinstance(reply, rex.NoScriptError):
                    continue  # loaded below, then tried again
                if isinstance(reply, BaseException):
                    failed = failed or reply
                    continue
                if isinstance(reply, list):
                    fresh[uid] = {str(n) for n in reply}
                else:
                    for item in by_user[uid]:
                        item.parked = True
                del by_user[uid]
            if failed is not None:
                raise failed
            if not by_user:
                break
            await self.r.script_load(_PARK)
        return fresh

    async def _publish(self, items: list[tuple[str, str]]) -> list[int]:
        if self.cluster:
            # Sharded: routed by the channel's slot to the master its subscriber listens at,
            # whose count of receivers is then the whole truth.
            pipe = self.r.pipeline(transaction=False)
            for node, text in items:
                pipe.execute_command("SPUBLISH", _channel(node), text)
            return [int(n) for n in await pipe.execute()]
        assert self.pubsub_client is not None
        replies = await self.pubsub_client.pipeline(
            [("PUBLISH", _channel(node), text) for node, text in items]
        )
        return [int(n) for n in replies]

    @property
    def listening(self) -> bool:
        """Whether this node hears its channel; a node that does not is not ready."""
        return self._subscribed.is_set()

    async def _subscribe(self) -> tuple[Any, str]:
        """On a cluster, a subscription to this node's channel at the master the current
        topology says owns the channel's slot (returned by name)."""
        channel = _channel(self.node_id)
        # Read the topology afresh: after a failover the cached one names a dead master.
        await asyncio.wait_for(self.r.nodes_manager.initialize(), 5.0)
        owner = self.r.get_node_from_key(channel)
        self._subscriber = aioredis.Redis.from_url(
            _at(self._target, owner.host, int(owner.port)),
            decode_responses=True,
            **self._pubsub_options,
        )
        pubsub = self._subscriber.pubsub(ignore_subscribe_messages=False)
        try:
            await asyncio.wait_for(pubsub.ssubscribe(channel), 5.0)
        except BaseException:
            await self._close_quietly(pubsub)
            raise
        return pubsub, str(owner.name)

    def _moved(self, owner: str) -> bool:
        """Whether the channel's slot is no longer where this node subscribed (as far as the
        store's cluster client, which follows MOVED replies, knows)."""
        try:
            return bool(self.r.get_node_from_key(_channel(self.node_id)).name != owner)
        except Exception:
            return True

    async def _listen(self) -> None:
        """Messages other nodes publish for this node's sessions. After the channel was lost
        (Redis went away, the master failed over, the slot moved), subscribes again and hands
        on what was parked meanwhile for the users whose sockets are here."""
        while not self._stopping:
            pubsub: Any = None
            subscription: Subscription | None = None
            try:
                if self.pubsub_client is not None:  # one Redis: messages handed on as read
                    subscription = await self.pubsub_client.subscribe(
                        _channel(self.node_id), self._incoming
                    )
                    self._subscribed.set()
                    await self._redeliver()
                    self._spawn(self._redeliver(after=self.settle_s))
                    await subscription.lost
                    raise ConnectionError("the connection to Redis was lost")
                pubsub, owner = await self._subscribe()
                self._subscribed.set()
                await self._redeliver()
                self._spawn(self._redeliver(after=self.settle_s))
                checked = time.monotonic()
                while not self._stopping:
                    msg = await pubsub.get_message(timeout=1.0)
                    # What was read is handed on before the topology is looked at: a message
                    # read and then dropped with the subscription would be lost.
                    kind = msg.get("type") if msg is not None else None
                    if kind in ("message", "smessage"):
                        self._incoming(msg["data"])
                    elif kind == "sunsubscribe":  # the slot left that master
                        raise ConnectionError("the master dropped this node's channel")
                    if time.monotonic() - checked >= 1.0:
                        checked = time.monotonic()
                        if self._moved(owner):
                            raise ConnectionError("this node's channel moved to another master")
            except asyncio.CancelledError:
                if pubsub is not None:
                    await self._close_quietly(pubsub)
                raise
            except Exception as exc:
                self._subscribed.clear()
                log.warning("node channel lost (%s); subscribing again", exc)
                if pubsub is not None:
                    await self._close_quietly(pubsub)
                await asyncio.sleep(0.5)
            finally:
                if subscription is not None:
                    subscription.close()
                if self._subscriber is not None:
                    subscriber, self._subscriber = self._subscriber, None
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(subscriber.aclose(), 1.0)

    async def _redeliver(self, after: float = 0.0, reassert: bool = False) -> None:
        """Hand on what was parked for this node's users (after re-registering them first,
        with ``reassert``), with live messages held back meanwhile."""
        if after:
            await asyncio.sleep(after)
        if self._host is None:
            return
        self._redelivering += 1
        try:
            if reassert:
                await self._host.reassert()
            await self._host.redeliver_parked()
        finally:
            self._redelivering -= 1
            if not self._redelivering:
                held, self._held = self._held, []
                for data in held:
                    self._arrived(data)

    def _incoming(self, data: str) -> None:
        """A message read from this node's channel: handed on, or held while parked ones
        are (see ``_redeliver``)."""
        if self._redelivering:
            self._held.append(data)
        else:
            self._arrived(data)

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except _DOWN:
                pass  # the next subscription takes them
            except Exception:
                log.exception("handing on parked messages")

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _close_quietly(pubsub: Any) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pubsub.aclose(), 1.0)

    def _arrived(self, data: str) -> None:
        try:
            envelope = json.loads(data)
            if "ack" in envelope:
                self._acknowledged(envelope)
                return
            user_id = str(envelope["to"])
            sender, by, number = envelope.get("from"), envelope.get("by"), envelope.get("n")
            if isinstance(sender, str) and isinstance(by, str) and isinstance(number, int):
                self._ack(by, sender, number)  # a copy too: the first acknowledgement was lost
            meant = envelope.get("for")
            if meant is not None and meant != self._life:
                return  # sent again for this node's previous life, which may have delivered it
            if not self._first_time(sender, number):
                return  # a copy: sent again after failing half-way, or not acknowledged in time
            if "end" in envelope:  # end the user's sessions here (revoked, over the cap)
                if self._host is not None:
                    self._host.end_here(user_id, dict(envelope["end"]))
                return
            message = dict(envelope["msg"])
        except (ValueError, KeyError, TypeError):
            log.error("malformed message on the node channel: %.200s", data)
            return
        if self._host is not None and not self._host.deliver_here(user_id, message):
            # They left this node since the sender looked: route it again from here.
            self.forward(user_id, message, None)

    # --- acknowledgements ------------------------------------------------------------------
    def _ack(self, node: str, life: str, number: int) -> None:
        self._acks.setdefault((node, life), []).append(number)
        if self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY_S, self._send_acks)

    def _send_acks(self) -> None:
        self._ack_timer = None
        acks, self._acks = self._acks, {}
        items = [
            (
                node,
                encode({"ack": life, "by": self.node_id, "life": self._life, "n": numbers}),
            )
            for (node, life), numbers in acks.items()
        ]

        async def send() -> None:
            # A lost acknowledgement only costs a message sent again, known again as a copy.
            await self._publish(items)

        self._spawn(send())

    def _acknowledged(self, envelope: Wire) -> None:
        if envelope["ack"] != self._life:
            return  # for this node's previous life
        by, life, numbers = envelope["by"], envelope["life"], envelope["n"]
        if not (
            isinstance(by, str)
            and isinstance(life, str)
            and isinstance(numbers, list)
            and all(isinstance(n, int) for n in numbers)
        ):
            raise ValueError("malformed acknowledgement")
        self._lives[by] = life
        self.unacked.acked(by, numbers)

    async def _resend_loop(self) -> None:
        """Envelopes not acknowledged in time go again to the node that was to get them, now
        addressed to the life that acknowledged earlier ones (a node restarted since under
        the same name drops them: its previous life may have delivered them)."""
        given_up = 0
        while not self._stopping:
            await asyncio.sleep(self.unacked.wait_s / 2)
            due = self.unacked.due(time.monotonic())
            if self.unacked.given_up > given_up:
                # Their node died with them or never came back within give_up_s: in doubt.
                log.warning(
                    "gave up %d messages no node acknowledged",
                    self.unacked.given_up - given_up,
                )
                given_up = self.unacked.given_up
            sends = [
                (node, text[:-1] + ',"for":' + json.dumps(self._lives[node]) + "}")
                for node, _number, text in due
                if node in self._lives
            ]
            if sends:
                log.info("sending %d unacknowledged messages again", len(sends))
                try:
                    await self._publish(sends)
                except _DOWN:
                    pass  # still kept: sent again at the next round
                except Exception:
                    log.exception("sending unacknowledged messages again")

    # --- liveness --------------------------------------------------------------------------
    async def _beat_loop(self) -> None:
        first = True
        reassert = False
        while not self._stopping:
            try:
                beat = self.beat_store.r
                added = await beat.zadd(_NODES, {self.node_id: time.time()})
                if added and not first:
                    # Another node thought this one dead (it was too busy or cut off to beat)
                    # and took its sessions over: they are still here, so say so again, and
                    # take what was parked for them meanwhile (until done, across failures).
                    log.warning("this node was taken for dead: re-registering its sessions")
                    reassert = True
                first = False
                if reassert and self._host is not None:
                    await self._redeliver(reassert=True)
                    reassert = False
                beats = {
                    str(n): float(b) for n, b in await beat.zrange(_NODES, 0, -1, withscores=True)
                }
                for node in self.watch.look(beats, time.monotonic()):
                    if node != self.node_id and await beat.zrem(_NODES, node):
                        log.warning("node %s stopped beating: taking over its sessions", node)
                        await self._take_over(node)
            except _DOWN:
                self.watch.lost_sight()
            except Exception:
                self.watch.lost_sight()
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
            await self.r.zrem(_user_sessions(user_id), f"{node}|{session_id}")
            if self.grace_s > 0:
                await self.broker.disconnected(user_id, session_id, self.grace_s)
            else:
                events += await self.broker.lost(user_id)
            await self.r.srem(_sessions(node), entry)
        if events and self._host is not None:
            self._host.deliver(events)


def _at(target: str, host: str, port: int) -> str:
    """``target`` (a Redis URL) pointed at another server, keeping scheme and credentials."""
    parts = urlsplit(target)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, "/0", "", ""))


async def _guard(aw: Awaitable[T]) -> T:
    try:
        return await aw
    except REDIS_DOWN as exc:
        raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc
