"""Protocol v1 over a real server on 127.0.0.1 with real WebSocket clients."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import aiohttp
import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from broker.model import EndReason, Role
from broker.store.base import StoreUnavailable
from broker.store.memory import MemoryStore
from signaling.auth import Authenticator, AuthError
from signaling.hub import PEER_MEMORY_S
from tests.helpers import SECRET, Server, start_server

EN_LONDON: dict[str, Any] = {"languages": ["en"], "timezone": "Europe/London"}


async def closed_with(ws: websockets.ClientConnection, timeout: float = 5.0) -> int | None:
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    return ws.close_code


async def on_duty(server: Server, sub: str, **claims: Any) -> Any:
    client = await server.connect(sub, "volunteer", **{**EN_LONDON, **claims})
    answer = await client.request({"type": "availability", "available": True})
    assert answer == {"type": "availability", "available": True, "ref": answer["ref"]}
    return client


async def in_a_call(server: Server) -> tuple[Any, Any, str]:
    """A recipient and a volunteer in an assigned call: (recipient, volunteer, call id)."""
    vol = await on_duty(server, "v1")
    rec = await server.connect("r1", "recipient", **EN_LONDON)
    call = (await rec.request({"type": "call.request"}))["call"]
    await vol.expect("call.ring")
    await vol.request({"type": "call.accept", "call": call})
    await rec.expect("call.assigned")
    return rec, vol, call


# --- authentication ---------------------------------------------------------------------------


async def test_no_hello_within_the_limit_closes_4401() -> None:
    async with start_server(hello_timeout_s=0.3) as server:
        ws = await websockets.connect(server.ws_url, proxy=None)
        msg = json.loads(await asyncio.wait_for(ws.recv(), 3))
        assert msg["type"] == "error" and msg["code"] == "unauthenticated"
        assert await closed_with(ws) == 4401


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        jwt.encode(
            {"sub": "u", "role": "volunteer", "exp": time.time() + 60},
            "wrong-secret-0123456789abcdef012345",
        ),
        jwt.encode({"sub": "u", "role": "volunteer", "exp": time.time() - 3600}, SECRET),
        jwt.encode({"sub": "u", "role": "wizard", "exp": time.time() + 60}, SECRET),
        jwt.encode({"sub": "u", "role": "volunteer"}, SECRET),  # no exp
        jwt.encode(
            {"sub": "u", "role": "agent", "exp": time.time() + 60}, SECRET
        ),  # agent without org
        jwt.encode(
            {"sub": "u", "role": "volunteer", "exp": time.time() + 60}, None, algorithm="none"
        ),
    ],
    ids=["garbage", "bad-signature", "expired", "bad-role", "no-exp", "agent-no-org", "alg-none"],
)
async def test_bad_tokens_close_4401(server: Server, token: str) -> None:
    ws = await websockets.connect(server.ws_url, proxy=None)
    await ws.send(json.dumps({"type": "hello", "token": token, "ref": "h"}))
    msg = json.loads(await asyncio.wait_for(ws.recv(), 3))
    assert msg["type"] == "error" and msg["code"] == "unauthenticated" and msg["ref"] == "h"
    assert msg["message"]
    assert await closed_with(ws) == 4401


@pytest.mark.parametrize(
    "first",
    [{"type": "ping"}, {"type": "hello"}, "not json", {"type": "call.request"}],
    ids=["ping", "hello-without-token", "bad-json", "request"],
)
async def test_anything_before_hello_closes_4401(server: Server, first: Any) -> None:
    ws = await websockets.connect(server.ws_url, proxy=None)
    await ws.send(first if isinstance(first, str) else json.dumps(first))
    msg = json.loads(await asyncio.wait_for(ws.recv(), 3))
    assert msg["code"] == "unauthenticated"
    assert await closed_with(ws) == 4401


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_public_key_tokens(alg: str) -> None:
    key: Any = (
        rsa.generate_private_key(65537, 2048)
        if alg == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    async with start_server(
        jwt_secret=None, jwt_public_key=pem.decode(), jwt_algorithms=[alg]
    ) as server:
        good = jwt.encode(
            {"sub": "u1", "role": "recipient", "exp": time.time() + 60, "name": "Una"},
            key,
            algorithm=alg,
        )
        ws = await websockets.connect(server.ws_url, proxy=None)
        await ws.send(json.dumps({"type": "hello", "token": good}))
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome" and welcome["user"]["display_name"] == "Una"
        await ws.close()
        # An HS256 token is refused when only the public key is configured.
        ws = await websockets.connect(server.ws_url, proxy=None)
        await ws.send(json.dumps({"type": "hello", "token": server.token("u2")}))
        assert json.loads(await ws.recv())["code"] == "unauthenticated"
        assert await closed_with(ws) == 4401


def test_each_refused_token_says_why_with_one_key_or_a_key_chosen_by_its_header() -> None:
    """With one HS256 secret (or one public key for one algorithm) the key does not depend on
    the header, which is then not read before verifying; a refusal says the same as when the
    key is chosen by the header."""
    rsa_key = rsa.generate_private_key(65537, 2048)
    pem = (
        rsa_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    now = time.time()
    claims = {"sub": "u", "role": "volunteer", "exp": now + 60}
    hs256 = {
        "good": (jwt.encode(claims, SECRET), None),
        "garbage": ("not-a-jwt", "The token is not a JWT."),
        "alg-none": (
            jwt.encode(claims, None, algorithm="none"),
            "Tokens signed with 'none' are not accepted.",
        ),
        "hs512": (
            jwt.encode(claims, SECRET + "-longer-for-hs512-0123456789abcdef0123", "HS512"),
            "Tokens signed with 'HS512' are not accepted.",
        ),
        "bad-signature": (
            jwt.encode(claims, "wrong-secret-0123456789abcdef012345"),
            "The token's signature is not valid.",
        ),
        "expired": (
            jwt.encode({**claims, "exp": now - 3600}, SECRET),
            "The token has expired; sign in again.",
        ),
        "no-exp": (
            jwt.encode({"sub": "u", "role": "volunteer"}, SECRET),
            'The token is not valid: Token is missing the "exp" claim.',
        ),
        "bad-role": (
            jwt.encode({**claims, "role": "wizard"}, SECRET),
            "The token's claim 'role' is not valid:",
        ),
    }
    sole = Authenticator(secret=SECRET)
    by_header = Authenticator(secret=SECRET, public_key=pem, algorithms=["HS256", "RS256"])
    assert sole._sole_key == SECRET and by_header._sole_key is None
    for name, (token, refusal) in hs256.items():
        for auth in (sole, by_header):
            if refusal is None:
                assert auth.verify(token).sub == "u", name
                continue
            with pytest.raises(AuthError) as refused:
                auth.verify(token)
            assert str(refused.value).startswith(refusal), (name, str(refused.value))
    # One public key for RS256: its own tokens pass; an HS256 token signed with the public key
    # as its secret (the algorithm confusion) does not.
    rs256 = Authenticator(public_key=pem, algorithms=["RS256"])
    assert rs256._sole_key == pem
    assert rs256.verify(jwt.encode(claims, rsa_key, algorithm="RS256")).sub == "u"

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    for token in (f"{signing_input}.{b64(mac)}", jwt.encode(claims, SECRET)):
        with pytest.raises(AuthError, match="Tokens signed with 'HS256' are not accepted"):
            rs256.verify(token)


async def test_welcome(server: Server) -> None:
    client = await server.connect("v1", "volunteer", name="Val", **EN_LONDON)
    w = client.welcome
    assert w["user"] == {"id": "v1", "role": "volunteer", "display_name": "Val"}
    assert w["session"] and w["resume"] and w["heartbeat_s"] == 20 and w["ice_servers"] == []


# --- framing and validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        "{not json",
        "[1, 2]",
        json.dumps({"no": "type"}),
        json.dumps({"type": "call.teleport"}),
        json.dumps({"type": "availability", "available": "yes"}),
        json.dumps({"type": "call.accept"}),
        json.dumps({"type": "call.request", "language": "english!"}),
        json.dumps({"type": "signal", "call": "c1", "data": {"foo": 1}}),
        json.dumps({"type": "signal", "call": "c1", "data": {"candidate": "x"}}),
        json.dumps({"type": "call.feedback", "call": "c1", "rating": "5 stars"}),
        json.dumps({"type": "ping", "ref": "x" * 65}),
    ],
)
async def test_bad_messages_get_bad_message_and_the_connection_stays(
    server: Server, frame: str
) -> None:
    client = await server.connect("v1", "volunteer")
    await client.ws.send(frame)
    msg = await client.recv()
    assert msg["type"] == "error" and msg["code"] == "bad_message", msg
    assert msg["message"]
    assert (await client.request({"type": "ping"}))["type"] == "pong"


async def test_bad_message_keeps_the_ref_when_it_can(server: Server) -> None:
    client = await server.connect("v1", "volunteer")
    await client.send({"type": "call.accept", "ref": "r-42"})
    msg = await client.recv()
    assert msg["code"] == "bad_message" and msg["ref"] == "r-42" and "call" in msg["message"]


async def test_unknown_fields_are_ignored(server: Server) -> None:
    client = await server.connect("v1", "volunteer")
    assert (await client.request({"type": "ping", "future": {"x": 1}}))["type"] == "pong"


async def test_frame_limit(server: Server) -> None:
    client = await server.connect("v1", "volunteer")
    # Exactly 65,536 bytes is accepted (and answered: it is a ping with padding).
    base = json.dumps({"type": "ping", "ref": "big", "pad": ""})
    exact = base[:-2] + "x" * (65_536 - len(base)) + '"}'
    assert len(exact.encode()) == 65_536
    await client.ws.send(exact)
    assert (await client.recv())["type"] == "pong"
    await client.ws.send(exact[:-2] + 'x"}')  # 65,537 bytes
    msg = await client.recv()
    assert msg["code"] == "too_large"
    assert await closed_with(client.ws) == 1009


async def test_binary_frames_are_refused(server: Server) -> None:
    client = await server.connect("v1", "volunteer")
    await client.ws.send(b'{"type":"ping"}')
    assert (await client.recv())["code"] == "bad_message"


async def test_message_rate_limit() -> None:
    async with start_server(messages_per_s=5, message_burst=5) as server:
        client = await server.connect("v1", "volunteer")
        for n in range(12):
            await client.send({"type": "ping", "ref": str(n)})
        got = [await client.recv() for _ in range(12)]
        assert [m["type"] for m in got].count("pong") == 5
        limited = [m for m in got if m["type"] == "error"]
        assert len(limited) == 7 and all(m["code"] == "rate_limited" for m in limited)


async def test_hello_twice_is_a_conflict(server: Server) -> None:
    client = await server.connect("v1", "volunteer")
    answer = await client.request({"type": "hello", "token": server.token("v1")})
    assert answer["code"] == "conflict"


# --- roles and parties ------------------------------------------------------------------------


async def test_a_volunteer_cannot_ask_for_help(server: Server) -> None:
    vol = await server.connect("v1", "volunteer")
    assert (await vol.request({"type": "call.request"}))["code"] == "forbidden"


async def test_a_recipient_cannot_go_on_duty_or_accept(server: Server) -> None:
    rec = await server.connect("r1", "recipient")
    assert (await rec.request({"type": "availability", "available": True}))["code"] == "forbidden"
    assert (await rec.request({"type": "agent.status", "state": "available"}))[
        "code"
    ] == "forbidden"
    assert (await rec.request({"type": "call.accept", "call": "c_x"}))["code"] == "forbidden"


async def test_signalling_is_for_the_two_parties_only(server: Server) -> None:
    vol = await on_duty(server, "v1")
    eve = await server.connect("eve", "volunteer", **EN_LONDON)
    rec = await server.connect("r1", "recipient", **EN_LONDON)
    call = (await rec.request({"type": "call.request"}))["call"]
    await vol.expect("call.ring")
    signal = {"type": "signal", "call": call, "data": {"candidate": None}}
    assert (await rec.request(signal))["code"] == "forbidden"  # not assigned yet
    await vol.request({"type": "call.accept", "call": call})
    assert (await eve.request(signal))["code"] == "forbidden"
    assert (await eve.request({**signal, "call": "c_does_not_exist"}))["code"] == "forbidden"
    await vol.send(
        {
            "type": "signal",
            "call": call,
            "data": {"candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}},
        }
    )
    relayed = await rec.expect("signal")
    assert relayed["data"]["candidate"]["candidate"].startswith("candidate:1")
    await rec.send({"type": "signal", "call": call, "data": {"candidate": None}})
    assert (await vol.expect("signal"))["data"] == {"candidate": None}
    assert await eve.quiet(0.2) == []


async def test_numbered_signals_and_their_acknowledgements_are_relayed(server: Server) -> None:
    """``seq`` goes on with its signal and ``signal.ack`` goes to the peer, both checked like
    any input and allowed only to the call's parties (docs/protocol.md, "Numbered signals")."""
    vol = await on_duty(server, "v1")
    eve = await server.connect("eve", "volunteer", **EN_LONDON)
    rec = await server.connect("r1", "recipient", **EN_LONDON)
    call = (await rec.request({"type": "call.request"}))["call"]
    await vol.expect("call.ring")
    ack = {"type": "signal.ack", "call": call, "seq": 0}
    assert (await rec.request(ack))["code"] == "forbidden"  # not assigned yet
    await vol.request({"type": "call.accept", "call": call})
    await rec.expect("call.assigned")
    await rec.send(ack)
    assert await vol.expect("signal.ack") == ack
    signal = {"type": "signal", "call": call, "seq": 1, "data": {"candidate": None}}
    await vol.send(signal)
    assert await rec.expect("signal") == signal
    await vol.send({**signal, "seq": 2**53 - 1})
    assert (await rec.expect("signal"))["seq"] == 2**53 - 1
    await rec.send({**ack, "seq": 2**53 - 1})
    assert (await vol.expect("signal.ack"))["seq"] == 2**53 - 1
    assert (await eve.request(ack))["code"] == "forbidden"
    assert (await eve.request({**ack, "call": "c_does_not_exist"}))["code"] == "forbidden"
    for bad in (0, -1, 2**53, 1.0, 1.5, "1", True, [1]):
        answer = await vol.request({**signal, "seq": bad})
        assert answer["code"] == "bad_message" and "seq" in answer["message"], (bad, answer)
    for bad in (-1, 2**53, 0.0, "0", False, None, {}):
        answer = await rec.request({**ack, "seq": bad})
        assert answer["code"] == "bad_message" and "seq" in answer["message"], (bad, answer)
    answer = await rec.request({"type": "signal.ack", "call": call})
    assert answer["code"] == "bad_message" and "seq" in answer["message"], answer
    assert await rec.quiet(0.2) == [] and await vol.quiet(0.0) == []
    assert await eve.quiet(0.0) == []


async def test_a_signal_after_the_call_ended_is_refused_at_once(server: Server) -> None:
    """Each session remembers its call's peer for a moment (no store read per signal); the
    end, heard by both parties' sessions, forgets it there and then."""
    rec, vol, call = await in_a_call(server)
    signal = {"type": "signal", "call": call, "data": {"candidate": None}}
    for sender, receiver in ((rec, vol), (vol, rec)):
        await sender.send(signal)
        assert await receiver.expect("signal") == signal
    assert (await rec.request({"type": "call.end", "call": call}))["type"] == "call.ended"
    await vol.expect("call.ended")
    for sender in (rec, vol):
        assert (await sender.request(signal))["code"] == "forbidden"
        answer = await sender.request({"type": "signal.ack", "call": call, "seq": 0})
        assert answer["code"] == "forbidden"
    assert await rec.quiet(0.2) == [] and await vol.quiet(0.0) == []


async def test_a_call_ended_unheard_stops_relaying_within_the_peer_memory(
    server: Server,
) -> None:
    """An end this node has not heard of (decided on another node, its news on the way) is
    found by the next store read: at most ``PEER_MEMORY_S`` after the peer was last read."""
    rec, vol, call = await in_a_call(server)
    signal = {"type": "signal", "call": call, "data": {"candidate": None}}
    await rec.send(signal)
    assert await vol.expect("signal") == signal
    # Ended in the store only: no event reaches either session.
    store = server.ctx.store
    assert await store.finish(call, EndReason.COMPLETED, Role.VOLUNTEER, time.time()) is not None
    await asyncio.sleep(PEER_MEMORY_S + 0.1)
    assert (await rec.request(signal))["code"] == "forbidden"
    assert await vol.quiet(0.2) == []


# --- the call over the wire -------------------------------------------------------------------


async def test_accept_after_answered_is_a_conflict(server: Server) -> None:
    a = await on_duty(server, "a")
    b = await on_duty(server, "b")
    rec = await server.connect("r1", "recipient", name="Rae", **EN_LONDON)
    status = await rec.request({"type": "call.request"})
    assert status["notified"] == 2
    call = status["call"]
    await a.expect("call.ring")
    await b.expect("call.ring")
    assert (await a.request({"type": "call.accept", "call": call}))["type"] == "call.assigned"
    withdrawn = await b.expect("call.withdrawn")
    assert withdrawn == {"type": "call.withdrawn", "call": call, "reason": "answered"}
    late = await b.request({"type": "call.accept", "call": call})
    assert late["type"] == "error" and late["code"] == "conflict"


async def test_decline_is_acknowledged(server: Server) -> None:
    vol = await on_duty(server, "v1")
    rec = await server.connect("r1", "recipient", **EN_LONDON)
    call = (await rec.request({"type": "call.request"}))["call"]
    await vol.expect("call.ring")
    assert (await vol.request({"type": "call.decline", "call": call}))["type"] == "ack"
    assert (await vol.request({"type": "call.decline", "call": "c_nope"}))["code"] == "not_found"


async def test_cancel(server: Server) -> None:
    vol = await on_duty(server, "v1")
    rec = await server.connect("r1", "recipient", **EN_LONDON)
    call = (await rec.request({"type": "call.request"}))["call"]
    await vol.expect("call.ring")
    ended = await rec.request({"type": "call.cancel", "call": call})
    assert (
        ended["type"] == "call.ended" and ended["reason"] == "cancelled" and ended["call"] == call
    )
    assert (await vol.expect("call.withdrawn"))["reason"] == "cancelled"
    assert (await rec.request({"type": "call.cancel", "call": "c_nope"}))["code"] == "not_found"
    assert (await vol.request({"type": "call.cancel", "call": call}))["code"] == "not_found"


async def test_second_request_while_one_is_open_is_rate_limited(server: Server) -> None:
    rec = await server.connect("r1", "recipient", **EN_LONDON)
    first = await rec.request({"type": "call.request"})
    assert first["type"] == "call.status" and first["notified"] == 0
    again = await rec.request({"type": "call.request"})
    assert again["code"] == "rate_limited"


async def test_media_end_and_feedback(server: Server) -> None:
    vol = await on_duty(server, "v1", name="Val")
    rec = await server.connect("r1", "recipient", name="Rae", **EN_LONDON)
    call = (await rec.request({"type": "call.request", "note": "I use a cane"}))["call"]
    ring = await vol.expect("call.ring")
    assert ring["note"] == "I use a cane" and 44 < ring["expires_in_s"] <= 45
    assert "recipient" not in json.dumps(ring) and "r1" not in json.dumps(ring["requester"])
    await vol.request({"type": "call.accept", "call": call})
    assigned = await rec.expect("call.assigned")
    assert assigned["peer"] == {"display_name": "Val"} and assigned["offerer"] is True
    assert (await rec.request({"type": "call.media", "call": call, "state": "connected"}))[
        "type"
    ] == "ack"
    early = await rec.request({"type": "call.feedback", "call": call, "rating": "up"})
    assert early["code"] == "conflict"
    ended = await vol.request({"type": "call.end", "call": call})
    assert ended == {
        "type": "call.ended",
        "call": call,
        "reason": "completed",
        "by": "volunteer",
        "ref": ended["ref"],
    }
    assert (await rec.expect("call.ended"))["by"] == "volunteer"
    assert (
        await rec.request(
            {"type": "call.feedback", "call": call, "rating": "up", "comment": "thanks"}
        )
    )["type"] == "ack"
    assert (await rec.request({"type": "call.feedback", "call": call, "rating": "up"}))[
        "code"
    ] == "conflict"
    assert (await vol.request({"type": "call.media", "call": call, "state": "failed"}))[
        "code"
    ] == "conflict"


async def test_no_answer_over_the_wire() -> None:
    async with start_server(max_wait_s=0.6, wave_interval_s=0.2) as server:
        vol = await on_duty(server, "v1")
        rec = await server.connect("r1", "recipient", **EN_LONDON)
        call = (await rec.request({"type": "call.request"}))["call"]
        await vol.expect("call.ring")
        assert (await rec.expect("call.ended", timeout=3))["reason"] == "no_answer"
        assert (await vol.expect("call.withdrawn"))["reason"] == "expired"
        assert (await vol.request({"type": "call.accept", "call": call}))["code"] == "conflict"


async def test_ping_pong(server: Server) -> None:
    client = await server.connect("v1", "volunteer")
    await client.send({"type": "ping", "ref": "p-1"})
    assert await client.recv() == {"type": "pong", "ref": "p-1"}
    await client.send({"type": "ping"})
    assert await client.recv() == {"type": "pong"}


# --- resume and liveness ----------------------------------------------------------------------


async def test_resume_restores_the_call_and_relays_again() -> None:
    async with start_server(grace_s=5) as server:
        vol = await on_duty(server, "v1")
        rec = await server.connect("r1", "recipient", **EN_LONDON)
        call = (await rec.request({"type": "call.request"}))["call"]
        await vol.expect("call.ring")
        await vol.request({"type": "call.accept", "call": call})
        resume = vol.welcome["resume"]
        await vol.ws.close()
        await asyncio.sleep(0.1)
        await rec.send(
            {"type": "signal", "call": call, "data": {"candidate": None}}
        )  # parked for v1
        back = await server.connect("v1", "volunteer", hello=False)
        welcome = await back.request(
            {"type": "hello", "token": server.token("v1"), "resume": resume}
        )
        assert welcome["type"] == "welcome" and welcome["session"] == vol.welcome["session"]
        assert welcome["resume"] != resume
        again = await back.expect("call.assigned")
        assert again["call"] == call and again["resumed"] is True
        assert (await back.expect("signal"))["data"] == {"candidate": None}
        await back.send({"type": "signal", "call": call, "data": {"candidate": None}})
        assert (await rec.expect("signal"))["call"] == call
        # A resume token is used once.
        third = await server.connect("v1", "volunteer", hello=False)
        w3 = await third.request({"type": "hello", "token": server.token("v1"), "resume": resume})
        assert w3["session"] != welcome["session"]


async def test_welcome_comes_first_even_when_a_signal_overtakes_the_resume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer's signal sent while the resuming session is attached but not yet welcomed (the
    hello is between its store round trips) is written after the welcome, not before it."""
    async with start_server(grace_s=5) as server:
        vol = await on_duty(server, "v1")
        rec = await server.connect("r1", "recipient", **EN_LONDON)
        call = (await rec.request({"type": "call.request"}))["call"]
        await vol.expect("call.ring")
        await vol.request({"type": "call.accept", "call": call})
        await vol.ws.close()
        await asyncio.sleep(0.1)
        safety = server.ctx.broker.safety
        restriction = safety.restriction
        reached, go_on = asyncio.Event(), asyncio.Event()

        async def held(user_id: str) -> Any:
            if user_id == "v1":
                reached.set()
                await go_on.wait()
            return await restriction(user_id)

        monkeypatch.setattr(safety, "restriction", held)
        back = await server.connect("v1", "volunteer", hello=False)
        await back.send(
            {"type": "hello", "token": server.token("v1"), "resume": vol.welcome["resume"]}
        )
        await asyncio.wait_for(reached.wait(), 5)
        assert server.ctx.hub.is_here("v1")  # attached: a relay now goes straight to it
        await rec.send({"type": "signal", "call": call, "data": {"candidate": None}})
        await asyncio.sleep(0.2)
        go_on.set()
        first = await back.recv()
        assert first["type"] == "welcome", first
        assert (await back.expect("signal"))["data"] == {"candidate": None}


async def test_peer_lost_after_the_grace_period() -> None:
    async with start_server(grace_s=0.3) as server:
        vol = await on_duty(server, "v1")
        rec = await server.connect("r1", "recipient", **EN_LONDON)
        call = (await rec.request({"type": "call.request"}))["call"]
        await vol.expect("call.ring")
        await vol.request({"type": "call.accept", "call": call})
        await vol.ws.close()
        ended = await rec.expect("call.ended", timeout=3)
        assert ended["reason"] == "peer_lost" and ended["by"] == "volunteer"


async def test_a_client_that_answers_no_ping_is_dropped() -> None:
    async with start_server(heartbeat_s=0.2) as server:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(server.ws_url, autoping=False)
            await ws.send_json({"type": "hello", "token": server.token("v1")})
            assert (await ws.receive_json())["type"] == "welcome"
            pings = 0
            async with asyncio.timeout(3):
                while True:
                    msg = await ws.receive()
                    if msg.type == aiohttp.WSMsgType.PING:
                        pings += 1
                        continue
                    break
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert pings >= 1


async def test_shutdown_tells_clients_to_reconnect() -> None:
    async with start_server() as server:
        client = await server.connect("v1", "volunteer")
        await server.ctx.hub.shutdown()
        assert (await client.expect("reconnect"))["type"] == "reconnect"
        assert await closed_with(client.ws) == 1012


# --- the store is down ------------------------------------------------------------------------


class SwitchableStore(MemoryStore):
    """The embedded store with an off switch, to show how the edge reports an outage."""

    down = False

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if (
            name != "down"
            and not name.startswith("_")
            and callable(attr)
            and super().__getattribute__("down")
        ):

            async def unavailable(*args: Any, **kwargs: Any) -> Any:
                raise StoreUnavailable("store is down")

            return unavailable
        return attr


async def test_store_outage_is_reported_as_unavailable() -> None:
    from aiohttp import web

    from signaling.app import create_app
    from signaling.config import Settings

    store = SwitchableStore()
    app = create_app(Settings(jwt_secret=SECRET, log_json=False), store=store)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server = Server(f"http://{host}:{port}", app, Settings(jwt_secret=SECRET))
    try:
        rec = await server.connect("r1", "recipient")
        store.down = True
        answer = await rec.request({"type": "call.request"})
        assert answer["code"] == "unavailable" and "try again" in answer["message"]
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + "/readyz") as resp:
                assert resp.status == 503
        store.down = False
        assert (await rec.request({"type": "call.request"}))["type"] == "call.status"
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + "/readyz") as resp:
                assert resp.status == 200
    finally:
        await runner.cleanup()
