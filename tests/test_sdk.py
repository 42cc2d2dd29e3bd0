"""The SDK against a real server: typed errors, heartbeat, bad input; the test pattern's stamp."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from broker.model import ErrorCode
from broker.moderation import RestrictionKind
from clients.media import (
    BLOCK,
    STAMP_BITS,
    MediaOptions,
    MediaSession,
    TestPatternTrack,
    read_stamp,
    stamp,
)
from clients.sdk import (
    ERRORS,
    BadMessageError,
    Client,
    Conflict,
    ConnectionLost,
    Forbidden,
    NotFound,
    ProtocolError,
    RateLimited,
    Suspended,
    Unauthenticated,
    error_for,
    http_url,
    ws_url,
)
from signaling.messages import CallStatus, Error, Pong
from tests.calls import recipient, until, volunteer
from tests.helpers import Server, start_server


def test_every_protocol_error_code_has_its_exception() -> None:
    assert set(ERRORS) == {code.value for code in ErrorCode}
    for code, cls in ERRORS.items():
        exc = error_for(Error(code=code, message="words", ref="r1"))
        assert type(exc) is cls and exc.code == code and exc.ref == "r1"
        assert str(exc) == f"{code}: words"
    unknown = error_for(Error(code="from_the_future", message="m"))
    assert type(unknown) is ProtocolError and unknown.code == "from_the_future"


async def test_a_suspended_volunteer_is_told_until_when(server: Server) -> None:
    vol = await volunteer(server, "v-held", auto_accept=False)
    profile = await server.ctx.store.get_profile("v-held")
    assert profile is not None
    _, events = await server.ctx.broker.restrict(
        profile, RestrictionKind.SUSPENDED, "under review", "boss", "admin", days=3
    )
    server.ctx.hub.deliver(events)
    with pytest.raises(Suspended) as caught:
        await vol.set_available(True)
    assert caught.value.until is not None and caught.value.until.startswith("20")
    await vol.client.close()


async def test_protocol_errors_are_raised_typed(server: Server) -> None:
    vol = await volunteer(server, "v1", auto_accept=False)
    other = await volunteer(server, "v2", auto_accept=False)
    rec = await recipient(server)
    try:
        with pytest.raises(NotFound):
            await vol.accept("c_does_not_exist")
        with pytest.raises(Forbidden):
            await rec.client.request({"type": "call.accept", "call": "c_x"})
        with pytest.raises(Forbidden):  # signal on a call that is not ours
            await vol.client.request({"type": "signal", "call": "c_x", "data": {"candidate": None}})
        status = await rec.request()
        with pytest.raises(RateLimited):
            await rec.request()
        await until(lambda: status.call in vol.rings and status.call in other.rings)
        await vol.accept(status.call)
        with pytest.raises(Conflict):
            await other.accept(status.call)
        # The connection stays usable after every refusal.
        assert isinstance(await rec.client.expect({"type": "ping"}, Pong), Pong)
    finally:
        await rec.close()
        await vol.close()
        await other.close()


async def test_bad_token_is_unauthenticated_and_not_retried(server: Server) -> None:
    client = Client(server.ws_url, "not-a-jwt")
    with pytest.raises(Unauthenticated):
        await client.connect()
    expired = server.token("v1", "volunteer", ttl_s=-3600)
    with pytest.raises(Unauthenticated):
        await Client(server.ws_url, expired).connect()


async def test_unreachable_broker_is_connection_lost() -> None:
    async with start_server() as srv:
        url = srv.ws_url
    with pytest.raises(ConnectionLost):
        await Client(url, "t", connect_timeout_s=2).connect()


def test_bad_urls_and_tokens_are_refused() -> None:
    with pytest.raises(ValueError, match="ws://"):
        Client("http://127.0.0.1:1/v1/ws", "t")
    with pytest.raises(ValueError, match="token"):
        Client("ws://127.0.0.1:1/v1/ws", "")
    assert ws_url("http://127.0.0.1:8080/") == "ws://127.0.0.1:8080/v1/ws"
    assert ws_url("https://b.example") == "wss://b.example/v1/ws"
    assert http_url("ws://127.0.0.1:8080/v1/ws") == "http://127.0.0.1:8080"
    for bad in ("127.0.0.1:8080", "ftp://x"):
        with pytest.raises(ValueError, match="broker URL"):
            ws_url(bad)
        with pytest.raises(ValueError, match="broker URL"):
            http_url(bad)


async def test_heartbeat_pings_and_garbage_frames_are_ignored() -> None:
    async with start_server(heartbeat_s=0.2) as srv:
        rec = await recipient(srv)
        seen: list[str] = []
        rec.client.listeners.append(lambda m: seen.append(m.type))
        try:
            pings = srv.ctx.metrics.messages.labels("ping")
            await until(lambda: pings._value.get() >= 3, 5, "three heartbeat pings")
            # A frame the SDK cannot read is dropped without reaching listeners or breaking it.
            rec.client._receive('{"type":"call.status"}')
            rec.client._receive("not json")
            rec.client._receive('{"type":"from_the_future","x":1}')
            assert seen == []
            rec.client._receive('{"type":"call.status","call":"c1","state":"searching"}')
            assert seen == ["call.status"]
            assert isinstance(await rec.next_event(CallStatus, 1), CallStatus)
            assert rec.client.connected
        finally:
            await rec.close()


async def test_bad_signals_from_the_peer_do_not_break_media() -> None:
    sent: list[dict[str, object]] = []
    states: list[str] = []

    async def send(data: dict[str, object]) -> None:
        sent.append(data)

    async def report(state: str) -> None:
        states.append(state)

    session = MediaSession(
        offerer=False,
        ice_servers_=[],
        options=MediaOptions(loopback_ice=True),
        send_signal=send,
        report=report,
    )
    try:
        await session.handle_signal({"sdp": {"type": "answer", "sdp": "v=0"}})  # answerer
        await session.handle_signal({"sdp": {"type": "rollback"}})
        await session.handle_signal({"sdp": {"type": "offer", "sdp": 5}})
        await session.handle_signal({"sdp": {"type": "offer", "sdp": "not sdp"}})
        await session.handle_signal({"candidate": {"candidate": 7, "sdpMid": "0"}})
        assert sent == [] and states == [] and not session.closed
        assert session.pc.signalingState == "stable"
    finally:
        await session.close()
    assert all(t.readyState == "ended" for t in session.tracks)


def test_stamp_reads_back_and_damage_is_detected() -> None:
    luma = np.full((480, 640), 100, dtype=np.uint8)
    for number in (0, 1, 12345, (1 << STAMP_BITS) - 1):
        stamp(luma, number)
        assert read_stamp(luma) == number
    stamp(luma, 0b1010)
    flipped = luma.copy()  # one bit flipped in the number row but not in its complement
    flipped[BLOCK : 2 * BLOCK, 0:BLOCK] = 235
    assert read_stamp(flipped) is None
    grey = luma.copy()  # a block neither black nor white
    grey[2 * BLOCK : 3 * BLOCK, BLOCK : 2 * BLOCK] = 128
    assert read_stamp(grey) is None
    unsynced = luma.copy()
    unsynced[0:BLOCK, 0:BLOCK] = 16
    assert read_stamp(unsynced) is None
    assert read_stamp(luma[:50, :]) is None


async def test_trickled_candidates_and_end_of_candidates_connect() -> None:
    """A peer that trickles (as browsers do): descriptions without candidates, then each
    candidate as its own signal, then end-of-candidates."""
    sessions: dict[str, MediaSession] = {}
    # One queue per receiving side, pumped in order: signals travel as they would on the wire.
    wires: dict[str, asyncio.Queue[dict[str, Any]]] = {
        "vol": asyncio.Queue(),
        "rec": asyncio.Queue(),
    }

    trickled = {"vol": 0, "rec": 0}

    def trickle(to: str) -> Callable[[dict[str, Any]], Awaitable[None]]:
        async def send(data: dict[str, Any]) -> None:
            wire = wires[to]
            if "sdp" not in data:
                return  # our own end-of-candidates is sent below, after the trickle
            lines = data["sdp"]["sdp"].split("\r\n")
            kept = [x for x in lines if not x.startswith(("a=candidate:", "a=end-of-candidates"))]
            wire.put_nowait({"sdp": {**data["sdp"], "sdp": "\r\n".join(kept)}})
            mid, index = None, -1
            for line in lines:
                if line.startswith("m="):
                    index += 1
                elif line.startswith("a=mid:"):
                    mid = line[len("a=mid:") :]
                elif line.startswith("a=candidate:"):
                    cand = {"candidate": line[2:], "sdpMid": mid, "sdpMLineIndex": index}
                    wire.put_nowait({"candidate": cand})
                    trickled[to] += 1
            wire.put_nowait({"candidate": None})

        return send

    async def pump(side: str) -> None:
        while True:
            await sessions[side].handle_signal(await wires[side].get())

    async def report(state: str) -> None:
        return None

    loopback = MediaOptions(loopback_ice=True)
    sessions["vol"] = MediaSession(
        offerer=False, ice_servers_=[], options=loopback, send_signal=trickle("rec"), report=report
    )
    sessions["rec"] = MediaSession(
        offerer=True, ice_servers_=[], options=loopback, send_signal=trickle("vol"), report=report
    )
    pumps = [asyncio.create_task(pump("vol")), asyncio.create_task(pump("rec"))]
    try:
        await sessions["vol"].start()
        await sessions["rec"].start()
        for s in sessions.values():
            await asyncio.wait_for(s.connected.wait(), 10)
        await asyncio.wait_for(sessions["vol"].first_frame.wait(), 5)
        # Every candidate travelled as its own signal, none inside a description.
        assert trickled["vol"] >= 1 and trickled["rec"] >= 1
    finally:
        for task in pumps:
            task.cancel()
        for s in sessions.values():
            await s.close()


async def test_test_pattern_numbers_frames_at_any_rate() -> None:
    for fps in (30, 50):
        track = TestPatternTrack(512, 96, fps=fps)
        pts = []
        try:
            for n in range(6):
                frame = await track.recv()
                assert read_stamp(frame.to_ndarray(format="yuv420p")[:96]) == n
                pts.append(frame.pts)
        finally:
            track.stop()
        assert pts == sorted(set(pts)) and track.sent == 6
    for width, height in ((500, 96), (512, 90), (513, 96)):
        with pytest.raises(ValueError, match="test pattern"):
            TestPatternTrack(width, height)


async def test_media_setup_has_its_own_timeout() -> None:
    """A peer that never answers: the session reports failed and closes after its timeout."""
    states: list[str] = []

    async def nowhere(data: dict[str, Any]) -> None:
        return None

    async def report(state: str) -> None:
        states.append(state)

    session = MediaSession(
        offerer=True,
        ice_servers_=[],
        options=MediaOptions(loopback_ice=True, connect_timeout_s=0.3),
        send_signal=nowhere,
        report=report,
    )
    await session.start()
    await until(lambda: session.stats.state == "closed", 5, "the set-up timeout")
    assert states == ["failed"] and not session.connected.is_set()
    assert all(t.readyState == "ended" for t in session.tracks)


class _SilentBroker:
    """A stand-in broker on loopback that welcomes every hello and then never answers a ping;
    or (``reconnect``) asks the client to reconnect right after the first welcome, and answers
    pings after that."""

    def __init__(self, reconnect: bool = False) -> None:
        self.reconnect = reconnect
        self.hellos: list[dict[str, Any]] = []

    async def handle(self, ws: ServerConnection) -> None:
        hello = json.loads(await ws.recv())
        self.hellos.append(hello)
        welcome = {
            "type": "welcome",
            "user": {"id": "u1", "role": "volunteer"},
            "session": "s1",
            "resume": f"resume-{len(self.hellos)}",
            "heartbeat_s": 0.2,
        }
        await ws.send(json.dumps(welcome))
        if self.reconnect and len(self.hellos) == 1:
            await ws.send(json.dumps({"type": "reconnect", "after_s": 0.1}))
            await ws.close(1012)
            return
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                message = json.loads(raw)
                if self.reconnect and message.get("type") == "ping":  # otherwise silent
                    await ws.send(json.dumps({"type": "pong", "ref": message.get("ref")}))


async def test_unanswered_heartbeat_reconnects_with_resume() -> None:
    fake = _SilentBroker()
    async with serve(fake.handle, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = Client(f"ws://127.0.0.1:{port}/v1/ws", "token")
        await client.connect()
        try:
            await until(lambda: client.resumes >= 1, 5, "a resume after a missed pong")
            assert fake.hellos[1]["resume"] == "resume-1"
        finally:
            await client.close()


async def test_reconnect_message_pauses_then_resumes() -> None:
    fake = _SilentBroker(reconnect=True)
    async with serve(fake.handle, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = Client(f"ws://127.0.0.1:{port}/v1/ws", "token")
        await client.connect()
        try:
            await until(lambda: client.resumes == 1, 5, "a resume after reconnect")
            await client.ping()
            assert client.resumes == 1
            assert [h.get("resume") for h in fake.hellos] == [None, "resume-1"]
            assert client.welcome is not None and client.welcome.resume == "resume-2"
        finally:
            await client.close()


# --- the sign-in's lifetime ---------------------------------------------------------------------


class _Tokens:
    """A token provider that counts its calls; each token lives ``ttl_s``."""

    def __init__(self, server: Server, sub: str, ttl_s: float) -> None:
        self.server, self.sub, self.ttl_s, self.calls = server, sub, ttl_s, 0

    async def __call__(self) -> str:
        self.calls += 1
        return self.server.token(self.sub, "volunteer", ttl_s=self.ttl_s)


async def test_the_sdk_refreshes_its_token_before_it_expires() -> None:
    async with start_server(jwt_leeway_s=0, token_warning_s=1.5) as srv:
        tokens = _Tokens(srv, "v1", ttl_s=3)
        client = Client(srv.ws_url, srv.token("v1", ttl_s=2), token_provider=tokens)
        welcome = await client.connect()
        try:
            first_expiry = client.expires_at
            await until(lambda: client.refreshes >= 2, 8, "two refreshes")
            assert client.expires_at is not None and first_expiry is not None
            assert client.expires_at > first_expiry + 1
            assert client.resumes == 0 and client.connected  # never dropped
            assert client.welcome is not None and client.welcome.session == welcome.session
            assert isinstance(await client.expect({"type": "ping"}, Pong), Pong)
        finally:
            await client.close()


async def test_an_expired_session_signs_in_again_and_resumes() -> None:
    # No warning: the token runs out, the broker closes with 4401 and the SDK comes back.
    async with start_server(jwt_leeway_s=0, token_warning_s=0, grace_s=10) as srv:
        tokens = _Tokens(srv, "v1", ttl_s=3600)
        client = Client(srv.ws_url, srv.token("v1", ttl_s=2), token_provider=tokens)
        welcome = await client.connect()
        try:
            await until(lambda: client.resumes == 1, 6, "a resume with a fresh token")
            assert tokens.calls == 1 and client.refreshes == 0
            assert client.welcome is not None and client.welcome.session == welcome.session
            assert isinstance(await client.expect({"type": "ping"}, Pong), Pong)
        finally:
            await client.close()


async def test_without_a_provider_the_session_ends_with_its_token() -> None:
    async with start_server(jwt_leeway_s=0, token_warning_s=1) as srv:
        client = Client(srv.ws_url, srv.token("v1", ttl_s=2))
        await client.connect()
        lost = await asyncio.wait_for(client.wait_closed(), 6)
        assert isinstance(lost, ConnectionLost) and "4401" in str(lost)
        assert client.resumes == 0


async def test_a_revoked_or_replaced_session_is_not_reconnected() -> None:
    async with start_server(max_sessions_per_user=1) as srv:
        tokens = _Tokens(srv, "v1", ttl_s=3600)
        revoked = Client(srv.ws_url, srv.token("v1"), token_provider=tokens)
        await revoked.connect()
        await srv.ctx.hub.revoke("v1")
        lost = await asyncio.wait_for(revoked.wait_closed(), 5)
        assert isinstance(lost, ConnectionLost) and "4403" in str(lost)
        assert revoked.resumes == 0 and tokens.calls == 0
        older = Client(srv.ws_url, srv.token("v2"), token_provider=_Tokens(srv, "v2", 3600))
        await older.connect()
        newer = Client(srv.ws_url, srv.token("v2"))
        await newer.connect()
        lost = await asyncio.wait_for(older.wait_closed(), 5)
        assert isinstance(lost, ConnectionLost) and "4409" in str(lost)
        assert older.resumes == 0 and newer.connected
        await newer.close()


class _LeavingBroker:
    """A stand-in node that, after the first welcome, says ``reconnect`` and reads on for a
    moment before it closes (as a stopping node does); it records what each connection got."""

    def __init__(self) -> None:
        self.got: list[list[dict[str, Any]]] = []

    async def handle(self, ws: ServerConnection) -> None:
        await ws.recv()  # hello
        got: list[dict[str, Any]] = []
        self.got.append(got)
        welcome = {
            "type": "welcome",
            "user": {"id": "u1", "role": "volunteer"},
            "session": "s1",
            "resume": f"resume-{len(self.got)}",
            "heartbeat_s": 30,
        }
        await ws.send(json.dumps(welcome))
        leaving = len(self.got) == 1
        if leaving:
            await ws.send(json.dumps({"type": "reconnect", "after_s": 0}))
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            async with asyncio.timeout(0.5 if leaving else None):
                async for raw in ws:
                    got.append(json.loads(raw))
        await ws.close(1012)


async def test_nothing_is_sent_on_a_connection_told_to_reconnect() -> None:
    fake = _LeavingBroker()
    signal = {"type": "signal", "call": "c1", "data": {"candidate": None}}
    async with serve(fake.handle, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = Client(f"ws://127.0.0.1:{port}/v1/ws", "token")
        told = asyncio.Event()
        client.listeners.append(lambda m: told.set() if m.type == "reconnect" else None)
        await client.connect()
        try:
            await asyncio.wait_for(told.wait(), 5)
            assert not client.connected
            # The node still reads, but may drop it: the SDK sends it after the resume instead.
            with pytest.raises(ConnectionLost, match="reconnect"):
                await client.send(signal)
            await until(lambda: client.resumes == 1, 5, "a resume after reconnect")
            await client.send(signal)
            await until(lambda: len(fake.got) == 2 and fake.got[1] == [signal], 5, "the signal")
            assert fake.got[0] == []
        finally:
            await client.close()


# --- trusted circles over the HTTP API ---------------------------------------------------------


async def test_circle_routes_through_the_sdk(server: Server) -> None:
    rae = Client(server.ws_url, server.token("r1", "recipient", name="Rae"))
    val = Client(server.ws_url, server.token("v1", "volunteer", name="Val"))
    made = await rae.circle_invite()
    assert made.link == f"/app/volunteer.html#circle={made.code}"
    joined = await val.circle_join(made.code)
    assert joined.display_name == "Rae"
    [member] = (await rae.circle()).members
    assert member.display_name == "Val"
    mine = await val.circle()
    assert [c.display_name for c in mine.circles] == ["Rae"] and mine.proposals == []
    assert await val.circle_leave(mine.circles[0].circle) is None
    assert (await rae.circle()).members == []
    with pytest.raises(NotFound):
        await val.circle_leave(mine.circles[0].circle)
    # A code is used once.
    with pytest.raises(NotFound):
        await val.circle_join(made.code)


async def test_a_past_helper_is_asked_and_agrees_through_the_sdk(server: Server) -> None:
    rec = await server.connect("r2", "recipient", name="Rae", languages=["en"])
    vol = await server.connect("v2", "volunteer", name="Val", languages=["en"])
    await vol.request({"type": "availability", "available": True})
    call = (await rec.request({"type": "call.request"}))["call"]
    await vol.expect("call.ring", call=call)
    await vol.request({"type": "call.accept", "call": call})
    await rec.request({"type": "call.end", "call": call})
    rae = Client(server.ws_url, server.token("r2", "recipient", name="Rae"))
    val = Client(server.ws_url, server.token("v2", "volunteer", name="Val"))
    asked = await rae.circle_propose(call)
    [proposal] = (await val.circle()).proposals
    assert proposal.proposal == asked.proposal and proposal.display_name == "Rae"
    answered = await val.circle_answer(asked.proposal, True)
    assert answered.joined is not None and answered.joined.display_name == "Rae"
    [member] = (await rae.circle()).members
    assert await rae.circle_remove(member.member) is None
    with pytest.raises(NotFound):
        await rae.circle_remove(member.member)
    # Declined: nobody joins.
    again = await rae.circle_propose(call)
    assert (await val.circle_answer(again.proposal, False)).joined is None
    assert (await rae.circle()).members == []


async def test_circle_refusals_are_raised_typed(server: Server) -> None:
    val = Client(server.ws_url, server.token("v3", "volunteer"))
    rae = Client(server.ws_url, server.token("r3", "recipient"))
    with pytest.raises(Forbidden, match="recipients"):
        await val.circle_invite()
    with pytest.raises(Forbidden):
        await rae.circle_join("KM7P-3XQA-9RTW")
    with pytest.raises(BadMessageError, match="12 letters"):
        await val.circle_join("ABC")
    # A code another broker version would send keeps its name.
    with pytest.raises(ProtocolError) as bad:
        await val.rest("POST", "/v1/circle/join", {"code": 7})
    assert type(bad.value) is ProtocolError and bad.value.code == "bad_request"
    with pytest.raises(NotFound, match="ended"):
        await rae.circle_propose("c_none")
    # A handle is one path segment: a slash cannot reach another route.
    with pytest.raises(NotFound):
        await rae.circle_remove("../circles/x")
    with pytest.raises(ValueError, match="empty handle"):
        await rae.circle_remove("")
    with pytest.raises(ValueError, match="/v1/"):
        await rae.rest("GET", "/healthz")
    with pytest.raises(Unauthenticated):
        await Client(server.ws_url, "not-a-jwt").circle()


async def test_an_unreachable_broker_is_connection_lost_over_http() -> None:
    async with start_server() as srv:
        url, token = srv.ws_url, srv.token("v1", "volunteer")
    with pytest.raises(ConnectionLost):
        await Client(url, token, request_timeout_s=2).circle()
