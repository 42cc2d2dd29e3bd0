"""Node-to-node traffic under trouble: a Redis restarted from its AOF, a Redis Cluster entered
through different masters, and a failover of the master the nodes' URL names, all during calls.

Clients count: both parties of each call send numbered signals all along and each counts what
it receives. Every signal accepted without an error must arrive exactly once; a signal refused
must be refused with ``unavailable`` (never silence). Nodes are real ``vabroker serve``
processes; Redis is a real ``redis-server`` (or a local Redis Cluster with replicas).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import redis.asyncio as aioredis
import websockets
from redis.crc import key_slot

from broker.store.redis import RedisStore
from clients.signals import SignalLink
from signaling.routing import BeatWatch, HeardNumbers, RedisRouter, Unacked
from tests.helpers import Client
from tests.nodes import BrokerNode, broker_nodes, wait_for
from tests.redis_procs import RedisClusterProcs, RedisServer

EN = {"languages": ["en"], "timezone": "Europe/London"}
SETTINGS: dict[str, Any] = {
    "grace_s": 30,
    "messages_per_s": 200,
    "message_burst": 200,
    "ring_timeout_s": 60,
    "wave_interval_s": 60,
}


# --- judging liveness (no Redis needed) --------------------------------------------------------


def test_a_beat_left_old_by_an_outage_is_no_sign_of_death() -> None:
    watch = BeatWatch(ttl_s=4.0, gap_s=2.0)
    assert watch.look({"a": 100.0, "b": 100.0}, now=0.0) == []
    assert watch.look({"a": 100.5, "b": 100.0}, now=0.5) == []
    watch.lost_sight()  # Redis went away for ten seconds; nobody could beat
    assert watch.look({"a": 100.5, "b": 100.0}, now=10.5) == []
    assert watch.look({"a": 111.0, "b": 100.0}, now=11.0) == []
    # b's beat has now stood still for the whole ttl of uninterrupted watching: dead.
    for step in range(1, 9):
        dead = watch.look({"a": 111.0 + step, "b": 100.0}, now=11.0 + step / 2)
    assert dead == ["b"]


def test_a_gap_in_watching_starts_the_watch_again() -> None:
    watch = BeatWatch(ttl_s=4.0, gap_s=2.0)
    watch.look({"b": 1.0}, now=0.0)
    # A look 5 s later (the loop was stalled, or Redis answered after retrying): not dead.
    assert watch.look({"b": 1.0}, now=5.0) == []
    assert watch.look({"b": 1.0}, now=6.5) == []
    assert watch.look({"b": 1.0}, now=8.0) == []
    assert watch.look({"b": 1.0}, now=9.5) == ["b"]


def test_a_beat_going_back_counts_as_a_beat() -> None:
    watch = BeatWatch(ttl_s=2.0, gap_s=1.0)
    watch.look({"b": 5.0}, now=0.0)
    watch.look({"b": 5.0}, now=1.0)
    assert watch.look({"b": 4.0}, now=2.0) == []  # Redis restarted from an older AOF


async def test_a_message_heard_live_and_also_parked_is_handed_on_once() -> None:
    """A failover can lose the reply to a live SPUBLISH that was heard; the sender sends the
    same envelope again and, finding nobody listening now, parks it. Parked numbered, it is
    known again when the user's node takes what was parked."""
    with RedisServer.start() as server:
        sender_store = RedisStore.from_url(server.url)
        receiver_store = RedisStore.from_url(server.url)
        sender = RedisRouter(sender_store, server.url, "a", cast(Any, None), grace_s=30)
        receiver = RedisRouter(receiver_store, server.url, "b", cast(Any, None), grace_s=30)
        try:
            heard = {"type": "signal", "call": "c1", "data": {"seq": 1}}
            only_parked = {"type": "signal", "call": "c1", "data": {"seq": 2}}
            items = [sender._outgoing("u1", m, None) for m in (heard, only_parked)]
            receiver._arrived(items[0].text)  # the first was heard live (its reply lost)
            await sender._park_or_refresh(items, {}, force=True)
            # Parked bare by a node of an earlier release: still handed on.
            await receiver_store.r.rpush("vb:parked:{u:u1}", json.dumps({"type": "ping"}))
            assert await receiver.take_parked("u1") == [only_parked, {"type": "ping"}]
            assert await receiver.take_parked("u1") == []
        finally:
            for router in (sender, receiver):
                if router.pubsub_client is not None:
                    await router.pubsub_client.aclose()
                await router.beat_store.close()
            await sender_store.close()
            await receiver_store.close()


def test_copies_are_known_by_number_in_any_order() -> None:
    heard = HeardNumbers(keep=3)
    # One batch in rounds: 5 and 6 went out first, 4 was found on this node at a second look.
    assert [heard.first_time(n) for n in (5, 6, 4)] == [True, True, True]
    assert [heard.first_time(n) for n in (4, 5, 6)] == [False, False, False]  # sent again
    assert heard.first_time(7)
    assert not heard.first_time(4)
    assert heard.first_time(5)  # heard before the last 3 numbers: no longer remembered


class _Here:
    """A router's host that only records what it is given to deliver."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str, dict[str, Any]]] = []

    def deliver_here(self, user_id: str, message: dict[str, Any]) -> bool:
        self.delivered.append((user_id, message))
        return True


async def test_a_message_sent_again_is_for_the_life_that_acknowledged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What a node did not acknowledge goes again addressed to the life of that node which
    acknowledged earlier messages: a node restarted since under the same name drops it (its
    previous life may have delivered it), and acknowledges it all the same. Acknowledgements
    are checked like any input."""
    with RedisServer.start() as server:
        stores = [RedisStore.from_url(server.url) for _ in range(2)]
        sender = RedisRouter(stores[0], server.url, "a", cast(Any, None), grace_s=30)
        receiver = RedisRouter(stores[1], server.url, "b", cast(Any, None), grace_s=30)
        here = _Here()
        receiver._host = cast(Any, here)
        try:
            msg = {"type": "signal", "call": "c1", "data": {"seq": 1}}
            item = sender._outgoing("u1", msg, None)
            sender.unacked.sent("b", item.number, item.text, now=0.0)

            def again(life: str) -> str:
                return item.text[:-1] + ',"for":' + json.dumps(life) + "}"

            receiver._arrived(again("a-previous-life"))
            assert here.delivered == []
            receiver._arrived(again(receiver._life))
            receiver._arrived(item.text)  # a copy
            assert here.delivered == [("u1", msg)]
            assert receiver._acks == {("a", sender._life): [item.number] * 3}

            ack = {"ack": sender._life, "by": "b", "life": receiver._life}
            with caplog.at_level("ERROR", logger="vabroker.routing"):
                for bad in ({**ack, "n": [str(item.number)]}, {**ack, "by": 7, "n": []}):
                    sender._arrived(json.dumps(bad))
            assert len(sender.unacked) == 1
            assert caplog.text.count("malformed message on the node channel") == 2
            sender._arrived(json.dumps({**ack, "ack": "another-life", "n": [item.number]}))
            assert len(sender.unacked) == 1  # for a previous life of the sender
            sender._arrived(json.dumps({**ack, "n": [item.number]}))
            assert len(sender.unacked) == 0
            assert sender._lives == {"b": receiver._life}
        finally:
            if receiver._ack_timer is not None:
                receiver._ack_timer.cancel()
            for router in (sender, receiver):
                if router.pubsub_client is not None:
                    await router.pubsub_client.aclose()
                await router.beat_store.close()
            for store in stores:
                await store.close()


async def test_one_round_trip_looks_at_presence_and_publishes_a_batch_on_one_redis() -> None:
    """On one Redis a batch's first round is one script: it reads each user's presence and
    publishes on the channel of every node named but the sender's; the sender hands on here
    what is for a user presence puts here, and parks what no node heard."""
    with RedisServer.start() as server:
        store = RedisStore.from_url(server.url)
        sender = RedisRouter(store, server.url, "a", cast(Any, None), grace_s=30)
        here = _Here()
        sender._host = cast(Any, here)
        listener = aioredis.Redis.from_url(server.url, decode_responses=True)
        pubsub = listener.pubsub()
        try:
            await pubsub.subscribe("vb:node:b", "vb:node:c")
            for _ in range(2):
                assert (await pubsub.get_message(timeout=5.0) or {}).get("type") == "subscribe"
            for uid, nodes in (("u1", ["a", "b", "c"]), ("u2", ["b", "gone"])):
                await store.r.sadd(f"vb:where:{{u:{uid}}}", *nodes)
            messages = [{"type": "signal", "call": "c1", "data": {"seq": n}} for n in range(4)]
            items = [
                sender._outgoing(uid, msg, None)
                for uid, msg in zip(["u1", "u2", "u3", "u1"], messages, strict=True)
            ]
            # The scripts loaded first (by a batch of its own), so that what is counted is
            # what every batch after the first costs.
            await sender._route([sender._outgoing("u3", {"type": "ping"}, None)])
            here.delivered.clear()
            await store.r.delete("vb:parked:{u:u3}")
            sender.unacked = Unacked(wait_s=1.0, give_up_s=5.0)
            before = await _commands(store)
            await sender._route(items)
            # One script for the presence and every publish; one more to park u3's message.
            assert await _commands(store) - before == {"evalsha": 2}
            assert here.delivered == [("u1", messages[0]), ("u1", messages[3])]
            heard: dict[str, list[int]] = {}
            while (msg := await pubsub.get_message(timeout=1.0)) is not None:
                envelope = json.loads(msg["data"])
                heard.setdefault(msg["channel"], []).append(envelope["msg"]["data"]["seq"])
            assert heard == {"vb:node:b": [0, 1, 3], "vb:node:c": [0, 3]}
            assert [(i.reached, i.parked) for i in items] == [
                (True, False),
                (True, False),
                (False, True),
                (True, False),
            ]
            assert len(sender.unacked) == 5  # b: three, c: two; "gone" heard none
            parked = await store.r.lrange("vb:parked:{u:u3}", 0, -1)
            assert [json.loads(p)["msg"] for p in parked] == [messages[2]]
        finally:
            await pubsub.aclose()
            await listener.aclose()
            if sender.pubsub_client is not None:
                await sender.pubsub_client.aclose()
            await sender.beat_store.close()
            await store.close()


async def _commands(store: RedisStore) -> Counter[str]:
    """The commands Redis has run, by name, but those run inside scripts and INFO (this
    count's own)."""
    stats = await store.r.info("commandstats")
    inside = ("smembers", "publish", "rpush", "ltrim", "expire", "info")
    return Counter(
        {
            name: int(v["calls"])
            for k, v in stats.items()
            if (name := k.removeprefix("cmdstat_")) not in inside
        }
    )


def test_unacknowledged_messages_go_again_until_acknowledged_or_given_up() -> None:
    unacked = Unacked(wait_s=1.0, give_up_s=5.0, limit=3)
    unacked.sent("b", 1, "one", now=0.0)
    unacked.sent("c", 1, "one-to-c", now=0.0)
    unacked.sent("b", 2, "two", now=0.5)
    assert unacked.due(0.9) == []
    assert unacked.due(1.0) == [("b", 1, "one"), ("c", 1, "one-to-c")]
    assert unacked.due(1.5) == [("b", 2, "two")]  # each waits again after going again
    unacked.acked("b", [1, 2, 99])
    assert unacked.due(2.0) == [("c", 1, "one-to-c")]
    assert unacked.due(5.0) == []  # given up: five seconds since first sent
    assert len(unacked) == 0 and unacked.given_up == 1
    for n in range(1, 5):  # over the limit: the oldest is given up
        unacked.sent("b", n, str(n), now=10.0)
    assert len(unacked) == 3 and unacked.given_up == 2
    assert [n for _, n, _ in unacked.due(11.0)] == [2, 3, 4]


# --- counting signals ----------------------------------------------------------------------------


def _candidate(seq: int) -> dict[str, Any]:
    return {
        "candidate": {"candidate": f"candidate:{seq} 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"}
    }


@dataclass
class Party:
    """One side of a call sending numbered signals and counting the other side's. With a
    ``link`` (the SDK's ``SignalLink``) the signals also carry ``seq`` and are acknowledged end
    to end (docs/protocol.md, "Numbered signals"): what arrives is counted as the link hands
    it on, so a copy the link dropped is not counted and one it let through is."""

    client: Client
    call: str
    sent: int = 0
    refused: dict[int, str] = field(default_factory=dict)
    got: list[int] = field(default_factory=list)
    sent_at: dict[int, float] = field(default_factory=dict)
    got_at: dict[int, float] = field(default_factory=dict)  # each signal's first arrival
    others: list[dict[str, Any]] = field(default_factory=list)
    link: SignalLink | None = None

    def signal(self, seq: int) -> dict[str, Any]:
        if self.link is None:
            return {"type": "signal", "call": self.call, "data": _candidate(seq)}
        message = self.link.send(_candidate(seq), time.monotonic())
        assert message["seq"] == seq
        return message

    def next_signal(self) -> dict[str, Any]:
        """The next numbered signal, its sending time noted."""
        self.sent += 1
        self.sent_at[self.sent] = time.monotonic()
        return {**self.signal(self.sent), "ref": f"s{self.sent}"}

    async def pump(self, stop: asyncio.Event, period_s: float) -> None:
        while not stop.is_set():
            await self.client.send(self.next_signal())
            await asyncio.sleep(period_s)

    async def keep_link(self) -> None:
        """What the SDK's call does beside: acknowledge a burst 50 ms later, send again what
        the peer has not acknowledged within a second."""
        assert self.link is not None
        await self.send_quietly([self.link.hello()])
        while True:
            await asyncio.sleep(0.05)
            ack = self.link.ack()
            await self.send_quietly([*([ack] if ack else []), *self.link.due(time.monotonic())])

    async def send_quietly(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            try:
                await self.client.send(message)
            except websockets.ConnectionClosed:
                return  # the link keeps it: sent again after the resume

    async def read(self) -> None:
        for msg in self.client.inbox:
            self._take(msg)
        self.client.inbox.clear()
        async for raw in self.client.ws:
            self._take(dict(json.loads(raw)))

    def _take(self, msg: dict[str, Any]) -> None:
        ref = str(msg.get("ref") or "")
        if msg.get("type") == "signal" and msg.get("call") == self.call:
            if self.link is not None and "seq" in msg:
                ready = self.link.receive(msg["seq"], msg["data"])
            else:
                ready = [msg["data"]]
            for data in ready:
                text = data["candidate"]["candidate"]
                seq = int(text.split()[0].removeprefix("candidate:"))
                self.got.append(seq)
                self.got_at.setdefault(seq, time.monotonic())
        elif msg.get("type") == "signal.ack" and self.link is not None:
            self.link.acknowledged(msg["seq"])
        elif msg.get("type") == "error" and ref.startswith("s"):
            self.refused[int(ref[1:])] = str(msg.get("code"))
        else:
            self.others.append(msg)

    def accepted(self) -> set[int]:
        return set(range(1, self.sent + 1)) - set(self.refused)


async def _calls(rec_node: BrokerNode, vol_node: BrokerNode, n: int) -> list[tuple[Party, Party]]:
    """``n`` calls, each recipient on ``rec_node`` and its volunteer on ``vol_node``."""
    pairs = []
    for i in range(n):
        vol = await vol_node.connect(f"v{i}", "volunteer", **EN)
        assert (await vol.request({"type": "availability", "available": True}))["available"]
        rec = await rec_node.connect(f"r{i}", "recipient", **EN)
        status = await rec.request({"type": "call.request"})
        assert status["type"] == "call.status", status
        ring = await vol.expect("call.ring", timeout=10, call=status["call"])
        assigned = await vol.request({"type": "call.accept", "call": ring["call"]}, timeout=10)
        assert assigned["type"] == "call.assigned", assigned
        await rec.expect("call.assigned", timeout=10, call=status["call"])
        # Any other volunteer rung for this call is withdrawn; nothing else is pending.
        pairs.append((Party(rec, status["call"]), Party(vol, status["call"])))
    return pairs


class Traffic:
    """Both parties of every call send a numbered signal every ``period_s``."""

    def __init__(self, pairs: list[tuple[Party, Party]], period_s: float = 0.05) -> None:
        self.pairs = pairs
        self.parties = [p for pair in pairs for p in pair]
        self.stop = asyncio.Event()
        self.period_s = period_s
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Traffic:
        for party in self.parties:
            self.tasks.append(asyncio.create_task(party.read()))
            self.tasks.append(asyncio.create_task(party.pump(self.stop, self.period_s)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def settle(self, timeout: float = 15.0) -> None:
        """Stop sending; wait until every accepted signal arrived (or the timeout)."""
        self.stop.set()
        await asyncio.sleep(self.period_s * 2)

        async def arrived() -> bool:
            return all(
                set(b.got) >= a.accepted() and set(a.got) >= b.accepted() for a, b in self.pairs
            )

        with contextlib.suppress(TimeoutError):
            await wait_for(arrived, "every accepted signal to arrive", timeout=timeout)
        await asyncio.sleep(0.5)  # copies, if any, would come now

    def check(self, in_doubt: dict[str, set[int]] | None = None) -> dict[str, int]:
        """Every signal accepted arrived once; every refusal was ``unavailable`` (or ``lost``:
        the connection was gone when the sender wrote it, and told so). Signals ``in_doubt``
        (by sender) may be missing, but never arrive twice."""
        figures = {"sent": 0, "refused": 0, "delivered": 0, "lost": 0, "copies": 0, "doubt": 0}
        slowest_s = 0.0  # the longest a delivered signal took
        for a, b in self.pairs:
            for src, dst in ((a, b), (b, a)):
                doubt = (in_doubt or {}).get(src.client.sub, set())
                figures["doubt"] += len(doubt - set(dst.got))
                accepted = src.accepted() - doubt
                figures["sent"] += src.sent
                figures["refused"] += len(src.refused)
                figures["delivered"] += len(dst.got)
                missing = accepted - set(dst.got)
                if missing:
                    errors = [m for m in src.others if m.get("type") == "error"]
                    print(f"lost {src.client.sub} -> {dst.client.sub}: {sorted(missing)}")
                    print(f"of {src.sent}; errors without a ref: {errors}")
                figures["lost"] += len(missing)
                figures["copies"] += len(dst.got) - len(set(dst.got))
                slowest_s = max(
                    [slowest_s, *(at - src.sent_at[seq] for seq, at in dst.got_at.items())]
                )
                assert set(src.refused.values()) <= {"unavailable", "lost"}, src.refused
                # Nothing refused arrives (it was refused before being routed).
                assert not set(dst.got) & set(src.refused), (src.call, sorted(src.refused))
        figures["slowest_ms"] = round(slowest_s * 1000)
        print(figures)
        assert figures["lost"] == 0, figures
        assert figures["copies"] == 0, figures
        return figures


async def _parked_nothing(store: RedisStore, pairs: list[tuple[Party, Party]]) -> None:
    for a, b in pairs:
        for party in (a, b):
            key = "vb:parked:{u:" + party.client.sub + "}"
            assert await store.r.llen(key) == 0, key


def _log(node: BrokerNode) -> str:
    return node.log_path.read_text(errors="replace")


def _ready(*nodes: BrokerNode) -> Any:
    async def check() -> bool:
        codes = await asyncio.gather(*(asyncio.to_thread(n.ready) for n in nodes))
        return all(code == 200 for code in codes)

    return check


# --- a Redis restarted from its AOF ------------------------------------------------------------


@pytest.fixture
def redis_with_aof() -> Iterator[RedisServer]:
    with RedisServer.start(aof=True) as server:
        yield server


async def test_redis_restarted_from_its_aof_during_calls_loses_no_signal(
    redis_with_aof: RedisServer, tmp_path: Path
) -> None:
    """Redis is away for longer than a node's ttl: the beats in its AOF are old when it comes
    back, and must not make a live node dead (its sessions taken over, its signals parked and
    stranded)."""
    url = redis_with_aof.url + "?timeout=1"
    with broker_nodes(url, tmp_path, **SETTINGS) as (a, b):
        pairs = await _calls(a, b, 3)
        async with Traffic(pairs) as traffic:
            await asyncio.sleep(1.0)
            redis_with_aof.stop()
            await asyncio.sleep(5.0)  # longer than node_ttl_s (4)
            redis_with_aof.run()
            await wait_for(_ready(a, b), "both nodes ready again", timeout=15)
            await asyncio.sleep(3.0)  # long enough for a stale beat to be judged
            await traffic.settle()
            figures = traffic.check()
        assert figures["refused"] > 0  # the outage was seen, and answered
        for node in (a, b):
            assert "taking over its sessions" not in _log(node), node.name
            assert "was taken for dead" not in _log(node), node.name
        store = RedisStore.from_url(url)
        try:
            await _parked_nothing(store, pairs)
            assert {str(n) for n in await store.r.zrange("vb:nodes", 0, -1)} == {
                "node-A",
                "node-B",
            }
        finally:
            await store.close()


async def test_a_message_redis_counted_as_heard_but_never_handed_on_goes_again(
    redis_with_aof: RedisServer, tmp_path: Path
) -> None:
    """A publish's count of receivers is only Redis's word: a master killed between answering
    the publisher and writing to the subscriber, or a subscription dropped with the message
    unread, loses what it counted. Here both nodes' subscriptions are cut and a stranger
    subscribes to their channels before they come back: for a moment every message is counted
    heard (by the stranger) and reaches no node. Each node sends again what the other did not
    acknowledge: every signal arrives, once."""
    url = redis_with_aof.url + "?timeout=1"
    with broker_nodes(url, tmp_path, **SETTINGS) as (a, b):
        pairs = await _calls(a, b, 3)
        admin = aioredis.Redis.from_url(redis_with_aof.url, decode_responses=True)
        stranger = aioredis.Redis.from_url(redis_with_aof.url, decode_responses=True)
        swallow = stranger.pubsub()  # keeps subscribe replies: None means nothing more
        try:
            async with Traffic(pairs) as traffic:
                await asyncio.sleep(1.0)
                cut = await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                await swallow.subscribe(*(f"vb:node:{n.name}" for n in (a, b)))
                assert cut >= 2, cut
                # The nodes subscribe again half a second after losing their channel.
                await asyncio.sleep(1.0)
                await traffic.settle()
                figures = traffic.check()
            swallowed = 0
            for _ in range(1000):
                msg = await swallow.get_message(timeout=0.2)
                if msg is None:
                    break
                swallowed += msg["type"] == "message"
            assert swallowed > 0  # the stranger did take messages meant for the nodes
            assert figures["refused"] == 0
            sent_again = sum(
                int(line.split("sending ")[1].split()[0])
                for node in (a, b)
                for line in _log(node).splitlines()
                if "unacknowledged messages again" in line
            )
            assert sent_again > 0
            print(figures, {"swallowed": swallowed, "sent again": sent_again})
        finally:
            await swallow.aclose()
            await stranger.aclose()
            await admin.aclose()


async def test_a_node_frozen_past_its_ttl_gets_what_was_parked_for_its_users(
    redis_with_aof: RedisServer, tmp_path: Path
) -> None:
    """Node A stops (SIGSTOP) for longer than its ttl: node B takes it for dead and takes over
    its sessions, so signals for A's users are parked. When A runs again it re-registers its
    sessions and hands on what was parked: nothing B accepted is lost."""
    url = redis_with_aof.url + "?timeout=1"
    with broker_nodes(url, tmp_path, **SETTINGS) as (a, b):
        pairs = await _calls(a, b, 2)
        async with Traffic(pairs) as traffic:
            await asyncio.sleep(1.0)
            assert a.proc is not None
            os.kill(a.proc.pid, signal.SIGSTOP)
            try:
                await wait_for(
                    _async(lambda: "node node-A stopped beating" in _log(b)),
                    "node B to take node A for dead",
                    timeout=15,
                )
                await asyncio.sleep(1.0)  # signals for A's users are parked meanwhile
            finally:
                os.kill(a.proc.pid, signal.SIGCONT)
            await wait_for(
                _async(lambda: "was taken for dead" in _log(a)), "node A to notice", timeout=10
            )
            await asyncio.sleep(1.0)
            await traffic.settle()
            traffic.check()
        store = RedisStore.from_url(url)
        try:
            await _parked_nothing(store, pairs)
            for rec, _vol in pairs:  # A's users are A's again
                assert await store.r.smembers("vb:where:{u:" + rec.client.sub + "}") == {"node-A"}
        finally:
            await store.close()


def _async(check: Any) -> Any:
    async def run() -> bool:
        return bool(check())

    return run


# --- Redis Cluster -----------------------------------------------------------------------------


def _slots_of(port: int) -> list[tuple[int, int]]:
    """The slot ranges the master at ``port`` serves."""
    with redis.Redis(host="127.0.0.1", port=port) as client:
        slots = client.execute_command("CLUSTER", "SLOTS")
    ranges = [(int(r[0]), int(r[1])) for r in slots if int(r[2][1]) == port]
    assert ranges, slots
    return ranges


def _names_on(port: int, count: int, exclude: tuple[int, ...] = ()) -> list[str]:
    """Node ids whose channel (``vb:node:ID``) lives on the master at ``port`` (or, with
    ``exclude``, on any master but those)."""
    if exclude:
        owned = [r for p in exclude for r in _slots_of(p)]
        inside = lambda slot: not any(lo <= slot <= hi for lo, hi in owned)  # noqa: E731
    else:
        owned = _slots_of(port)
        inside = lambda slot: any(lo <= slot <= hi for lo, hi in owned)  # noqa: E731
    names = []
    for i in range(1000):
        name = f"node-{i}"
        if inside(key_slot(f"vb:node:{name}".encode())):
            names.append(name)
            if len(names) == count:
                return names
    raise LookupError("no node id found for that master")


async def test_a_call_across_nodes_entering_a_cluster_through_different_masters(
    tmp_path: Path,
) -> None:
    """Each node's URL names another master, and each node's channel lives on a third: every
    signal, ring and withdrawal crosses masters, and arrives once (PUBLISH's count only counts
    the receivers on the master that ran it: the message was also parked and came again at
    the next ``hello``)."""
    with RedisClusterProcs.start() as cluster:
        names = _names_on(cluster.nodes[2].port, 2)
        urls = [cluster.url_at(0) + "?timeout=2", cluster.url_at(1) + "?timeout=2"]
        with broker_nodes(urls, tmp_path, names=names, **SETTINGS) as (a, b):
            pairs = await _calls(a, b, 2)
            async with Traffic(pairs) as traffic:
                await asyncio.sleep(1.5)
                await traffic.settle()
                figures = traffic.check()
            assert figures["refused"] == 0 and figures["delivered"] > 50
            # A hello again (resume) brings nothing twice.
            rec, vol = pairs[0][0].client, pairs[0][1].client
            tokens = rec.welcome["resume"], vol.welcome["resume"]
            await rec.ws.close()
            await vol.ws.close()
            rec2 = await a.connect("r0", "recipient", resume=tokens[0], **EN)
            vol2 = await b.connect("v0", "volunteer", resume=tokens[1], **EN)
            again = [m for c in (rec2, vol2) for m in await c.quiet(1.0)]
            assert [m for m in again if m["type"] == "signal"] == []
            assert {m["type"] for m in again} <= {"call.assigned"}, again
            store = RedisStore.from_url(urls[0])
            try:
                await _parked_nothing(store, pairs)
            finally:
                await store.close()


@pytest.mark.parametrize("how", ["killed", "manual"])
async def test_the_seed_master_fails_over_during_calls(how: str, tmp_path: Path) -> None:
    """The master named in the nodes' URL is killed (its replica promoted), or hands over to
    its replica (``CLUSTER FAILOVER``: the old master lives on as a replica and drops the
    subscriptions to its channels). The nodes follow the topology: ready again, their channels
    (which lived on that master) subscribed at the new one, every signal accepted delivered
    once, every refusal ``unavailable``."""
    with RedisClusterProcs.start(replicas=1) as cluster:
        seed = cluster.nodes[0]
        names = _names_on(seed.port, 2)
        url = cluster.url_at(0) + "?timeout=1"
        with broker_nodes(url, tmp_path, names=names, **SETTINGS) as (a, b):
            pairs = await _calls(a, b, 3)
            async with Traffic(pairs) as traffic:
                await asyncio.sleep(1.0)
                started = time.monotonic()
                switch = cluster.kill_master if how == "killed" else cluster.fail_over
                promoted = await asyncio.to_thread(switch, seed)
                promoted_after = time.monotonic() - started
                await wait_for(_ready(a, b), "both nodes ready after the failover", timeout=20)
                ready_after = time.monotonic() - started
                await asyncio.sleep(2.0)
                await traffic.settle(timeout=20)
                figures = traffic.check()
            if how == "killed":
                # The failover was seen: the channels lived on the master killed, so signals
                # between the nodes were held until they moved, and a signal whose call lived
                # there was refused while redis-py's retries could not reach it (which of the
                # two happens depends on where the calls' keys fell, and on how soon the
                # replica was promoted).
                assert figures["refused"] > 0 or figures["slowest_ms"] >= 1000, figures
            print(f"promoted after {promoted_after:.1f} s, nodes ready after {ready_after:.1f} s")
            # The channels now live on the promoted master, and the nodes listen there.
            direct = aioredis.Redis(host="127.0.0.1", port=promoted.port, decode_responses=True)
            try:
                listening = await direct.execute_command(
                    "PUBSUB", "SHARDNUMSUB", *(f"vb:node:{n}" for n in names)
                )
                assert listening[1::2] == [1, 1], listening
            finally:
                await direct.aclose()
            # The URL's node is only a seed: a node started now, its URL naming the dead master
            # first, starts from the next seed and serves.
            seeds = f"redis+cluster://127.0.0.1:{seed.port},127.0.0.1:{promoted.port}?timeout=1"
            with broker_nodes(seeds, tmp_path, count=1, names=["node-late"], **SETTINGS) as (c,):
                assert c.ready() == 200
            # Calls carry on: a new call crosses the nodes after the failover.
            vol = await b.connect("v-after", "volunteer", **EN)
            await vol.request({"type": "availability", "available": True})
            rec = await a.connect("r-after", "recipient", **EN)
            status = await rec.request({"type": "call.request"}, timeout=10)
            ring = await vol.expect("call.ring", timeout=10, call=status["call"])
            assert (await vol.request({"type": "call.accept", "call": ring["call"]}))[
                "type"
            ] == "call.assigned"
            await rec.expect("call.assigned", timeout=10, call=status["call"])


# --- a node stopped or killed during calls -----------------------------------------------------


class Resuming:
    """A party whose node goes away: on ``reconnect`` or a lost connection it connects to
    ``elsewhere`` with its ``resume`` token (as the SDK does) and carries on sending. A send
    that fails because the connection is gone is reported to the sender (``refused`` with
    ``lost``), which may send it again. Each connection's signals are kept apart, so that the
    check can tell which were in flight on a connection that died without a close."""

    def __init__(self, party: Party, elsewhere: BrokerNode, role: str) -> None:
        self.party = party
        self.elsewhere = elsewhere
        self.role = role
        self.links: list[list[int]] = [[]]  # the signals sent on each connection, in order
        self.closes: list[int | None] = []  # each lost connection's close code (None: none)
        self.back = asyncio.Event()
        self.back.set()
        # Sent when ``reconnect`` had already come: the sender's to send again after resuming.
        self.after_reconnect: set[int] = set()

    async def pump(self, stop: asyncio.Event, period_s: float) -> None:
        party = self.party
        while not stop.is_set():
            await self.back.wait()
            message = party.next_signal()
            seq = party.sent
            try:
                if not self.back.is_set():
                    self.after_reconnect.add(seq)
                await party.client.send(message)
                self.links[-1].append(seq)
            except websockets.ConnectionClosed:
                if party.link is None:
                    party.refused[seq] = "lost"
            await asyncio.sleep(period_s)

    async def read(self) -> None:
        party = self.party
        while True:
            for msg in party.client.inbox:
                party._take(msg)
            party.client.inbox.clear()
            told = False
            try:
                async for raw in party.client.ws:
                    msg = dict(json.loads(raw))
                    party._take(msg)
                    # After ``reconnect`` the node still writes what it had for us, then
                    # closes: read on until the close (as the SDK does).
                    if msg.get("type") == "reconnect":
                        told = True
                        self.back.clear()  # send nothing more on this connection
            except websockets.ConnectionClosed:
                pass
            self.back.clear()
            ws = party.client.ws
            await ws.close()
            rcvd = ws.protocol.close_rcvd
            self.closes.append(None if rcvd is None else rcvd.code)
            if told and rcvd is None:
                self.closes[-1] = 1000  # we closed first, after the node's reconnect
            token = party.client.welcome["resume"]
            party.client = await self.elsewhere.connect(
                party.client.sub, self.role, resume=token, **EN
            )
            self.links.append([])
            if party.link is not None:  # as the SDK's call does after a resume
                again = party.link.due(time.monotonic(), everything=True)
                await party.send_quietly([party.link.acknowledgement(), *again])
            self.back.set()


async def _node_goes_away(how: str, tmp_path: Path, redis_url: str, numbered: bool) -> None:
    with broker_nodes(redis_url, tmp_path, **SETTINGS) as (a, b):
        pairs = await _calls(a, b, 3)
        resuming = {id(rec): Resuming(rec, b, "recipient") for rec, _vol in pairs}
        traffic = Traffic(pairs)
        for party in traffic.parties:
            if numbered:
                party.link = SignalLink(party.call)
                traffic.tasks.append(asyncio.create_task(party.keep_link()))
            r = resuming.get(id(party))
            traffic.tasks.append(asyncio.create_task(r.read() if r else party.read()))
            pump = r.pump if r else party.pump
            traffic.tasks.append(asyncio.create_task(pump(traffic.stop, traffic.period_s)))
        try:
            await asyncio.sleep(1.0)
            before = {vol.client.sub: vol.sent for _rec, vol in pairs}
            if how == "hung, then killed":
                # Everything written to node A meanwhile, by its clients and by node B through
                # its channel (Redis counts A as hearing), is lost with it.
                assert a.proc is not None
                os.kill(a.proc.pid, signal.SIGSTOP)
                await asyncio.sleep(1.0)
            await asyncio.to_thread(a.kill, signal.SIGTERM if how == "stopped" else signal.SIGKILL)
            around = {
                vol.client.sub: range(before[vol.client.sub] - 4, vol.sent + 1) for _r, vol in pairs
            }
            await wait_for(
                _async(
                    lambda: all(len(r.links) == 2 and r.back.is_set() for r in resuming.values())
                ),
                "every client of the node gone to resume on the other",
                timeout=20,
            )
            await asyncio.sleep(1.5)
            await traffic.settle(timeout=20)
            in_doubt = {} if numbered else _in_doubt(pairs, resuming, how)
            if how == "killed" and not numbered:
                # Relayed to the killed node a moment before the kill, taken from its channel
                # and not yet written to its client: lost with it (nothing acknowledges a
                # relayed message; docs/protocol.md, "Shutdown").
                in_doubt.update({sub: set(seqs) for sub, seqs in around.items()})
            figures = traffic.check(in_doubt)
        finally:
            for task in traffic.tasks:
                if task.done() and not task.cancelled() and task.exception():
                    print("task failed:", repr(task.exception()))
            await traffic.__aexit__()
        print(how, figures, {k: sorted(v) for k, v in in_doubt.items() if v})
        links = [p.link for p in traffic.parties if p.link is not None]
        if numbered:
            print(
                "numbered:",
                {
                    "sent again": sum(link.sent_again for link in links),
                    "copies dropped": sum(link.copies for link in links),
                    "unacknowledged": sum(link.unacknowledged for link in links),
                },
            )
            assert sum(link.gaps_given_up for link in links) == 0
        for r in resuming.values():
            # A stop closes with the node's reconnect (1012) or the client's own close after it.
            assert r.closes[0] in ({1012, 1000} if how == "stopped" else {None, 1006}), r.closes
        if how == "hung, then killed":
            assert sum(link.sent_again for link in links) > 0
        store = RedisStore.from_url(redis_url)
        try:
            await _parked_nothing(store, pairs)
        finally:
            await store.close()


def _in_doubt(
    pairs: list[tuple[Party, Party]], resuming: dict[int, Resuming], how: str
) -> dict[str, set[int]]:
    """Signals a sender cannot know the fate of: on a connection that died without a close
    (a killed node), the last ones it wrote may never have been read. They can only be the
    connection's tail: the node reads a connection in order, so a signal missing before one
    that arrived is a loss all the same."""
    doubt: dict[str, set[int]] = {}
    if how != "killed":
        return {rec.client.sub: resuming[id(rec)].after_reconnect for rec, _vol in pairs}
    for rec, vol in pairs:
        links = resuming[id(rec)].links
        arrived = set(vol.got) & set(links[0])
        last = max(arrived, default=0)
        doubt[rec.client.sub] = {s for s in links[0] if s > last}
    return doubt


@pytest.fixture
def redis_plain() -> Iterator[RedisServer]:
    with RedisServer.start() as server:
        yield server


@pytest.mark.parametrize("how", ["stopped", "killed"])
@pytest.mark.parametrize("numbered", [False, True], ids=["unnumbered", "numbered"])
async def test_a_node_stopped_or_killed_during_calls_loses_no_signal(
    how: str, numbered: bool, redis_plain: RedisServer, tmp_path: Path
) -> None:
    """Three calls, each recipient on node A and its volunteer on node B, both sides sending
    numbered signals all along. Node A is stopped (SIGTERM: it tells its clients to reconnect)
    or killed (SIGKILL); its clients resume on B and carry on. Every signal sent without an
    error arrives exactly once; a stop leaves nothing in doubt, a kill only the tail of what
    the killed node's clients wrote on their dead connections (at most once, never twice).
    Numbered (the parties number and acknowledge their signals end to end, as the SDK does):
    nothing is in doubt, even on a kill: every signal arrives once, in order."""
    await _node_goes_away(how, tmp_path, redis_plain.url + "?timeout=1", numbered)


async def test_numbered_signals_survive_a_node_that_hangs_and_is_killed(
    redis_plain: RedisServer, tmp_path: Path
) -> None:
    """Node A hangs (SIGSTOP) for a second and is then killed: what its clients wrote to it
    meanwhile, and what node B published on its channel, is all lost with it (unnumbered, that
    is a second of signals both ways). Numbered and acknowledged end to end, every signal
    arrives once and in order."""
    await _node_goes_away("hung, then killed", tmp_path, redis_plain.url + "?timeout=1", True)
