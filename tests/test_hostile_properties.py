"""Hostile input against a real server on 127.0.0.1: every client message and every REST body,
generated from the models that parse them, then broken in every way a client can break them.

What must hold for every frame and body:
- valid examples are accepted (the generator is known to work);
- a refused one gets a 4xx JSON ``{"error","message"}`` or a WebSocket ``error`` with a
  documented code (``bad_message``, or ``too_large`` and close 1009 for an oversized frame);
- the WebSocket stays open (a ``ping`` on the same socket gets its ``pong``), ``/healthz`` is
  healthy, and a refused write changed nothing (the profile, the organisation, the devices, the
  user's calls and duty read back the same).

One server serves the whole module; it runs on this module's own event loop, driven example by
example. Its rate limits (messages, demo sign-ins) are lifted: the limiters have their own
tests, and here every frame and body must reach the parser.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from broker.model import ErrorCode
from broker.notify.devices import DeviceRegistration
from broker.orgs import Org
from broker.store.memory import MemoryStore
from signaling.admin import Because, Suspend
from signaling.api import ProfileUpdate
from signaling.auth import mint
from signaling.messages import MAX_FRAME, ClientMessage
from signaling.pages import DEMO_ORG, DemoSignIn
from tests.helpers import SECRET, Server, start_server
from tests.model_strategies import (
    ABSENT,
    ACCEPT,
    REJECT,
    Mutant,
    Schema,
    frame_mutants,
    mutants,
    text,
    unhinted_validators,
)
from tests.push_standins import ApnsCredentials, FcmCredentials, pem_private

T = TypeVar("T")

WS_CODES = {code.value for code in ErrorCode}
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],  # a shared machine; the server is real
    database=None,
)
ORG_ID = "fz-org"
TARGET = "fz-target"  # the user the administration bodies suspend, ban and reinstate
UNDO = ("POST", f"/v1/admin/users/{TARGET}/reinstate", {"reason": "Test over"})
UNREAD_FRAME = 2 * MAX_FRAME  # docs/protocol.md, "Framing and validation"


# --- the server and its clients ---------------------------------------------------------------


@dataclass
class Socket:
    """A signed-in WebSocket of one role, reopened when a test closes it on purpose."""

    sub: str
    role: str
    claims: dict[str, Any]
    ws: Any = None
    probes: itertools.count[int] = field(default_factory=itertools.count)


@dataclass(repr=False)
class Harness:
    loop: asyncio.AbstractEventLoop
    server: Server
    http: aiohttp.ClientSession
    sockets: dict[str, Socket]

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(f"Harness({self.server.url})")

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 60))

    @property
    def store(self) -> Any:
        return self.server.ctx.store

    async def healthy(self) -> None:
        async with self.http.get(self.server.url + "/healthz") as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ok"

    # WebSocket

    async def open(self, sock: Socket) -> None:
        ws = await websockets.connect(self.server.ws_url, proxy=None, max_size=2**22)
        token = self.server.token(sock.sub, sock.role, **sock.claims)
        await ws.send(json.dumps({"type": "hello", "token": token}))
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert welcome["type"] == "welcome", welcome
        sock.ws = ws

    async def exchange(self, sock: Socket, frame: str | bytes) -> Exchange:
        """Send ``frame``, then a ``ping``: everything before the ``pong`` answers the frame."""
        if sock.ws is None:
            await self.open(sock)
        ref = f"probe-{next(sock.probes)}"
        got: list[dict[str, Any]] = []
        try:
            await sock.ws.send(frame)
            await sock.ws.send(json.dumps({"type": "ping", "ref": ref}))
            while True:
                msg = json.loads(await asyncio.wait_for(sock.ws.recv(), 10))
                if msg == {"type": "pong", "ref": ref}:
                    return Exchange(got, closed=None)
                got.append(msg)
        except websockets.ConnectionClosed as exc:
            sock.ws = None
            code = exc.rcvd.code if exc.rcvd else None
            return Exchange(got, closed=code)

    async def snapshot(self, sock: Socket) -> tuple[Any, ...]:
        """What a refused message must not change for this user."""
        store = self.store
        calls = await store.calls_of(sock.sub)
        agents = await store.agents(DEMO_ORG) if sock.role == "agent" else []
        return (
            await store.get_profile(sock.sub),
            await store.current_call(sock.sub),
            await store.ring_of(sock.sub),
            await store.is_on_duty(sock.sub),
            [(c.id, c.state) for c in calls],
            [(a.user_id, a.state) for a in agents if a.user_id == sock.sub],
        )

    async def settle(self, sock: Socket, answers: list[dict[str, Any]]) -> None:
        """Undo what an accepted message started: a requested call is cancelled."""
        for msg in answers:
            if msg.get("type") == "call.status" and msg.get("state") in ("searching", "queued"):
                gone = await self.exchange(
                    sock, json.dumps({"type": "call.cancel", "call": msg["call"]})
                )
                assert gone.closed is None and not gone.errors(), gone

    # HTTP

    async def send(
        self, method: str, path: str, body: str | bytes, headers: dict[str, str]
    ) -> tuple[int, Any]:
        data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        async with self.http.request(
            method,
            self.server.url + path,
            data=data,
            headers={**headers, "Content-Type": "application/json"},
        ) as resp:
            raw = await resp.read()
            try:
                return resp.status, json.loads(raw)
            except ValueError:
                return resp.status, raw[:200]


@dataclass
class Exchange:
    answers: list[dict[str, Any]]
    closed: int | None  # the close code, when the server closed the socket

    def errors(self) -> list[dict[str, Any]]:
        return [m for m in self.answers if m.get("type") == "error"]

    def refused(self) -> bool:
        if self.closed == 1009:  # too large: refused, with or without the error first
            return True
        return any(e["code"] in ("bad_message", "too_large") for e in self.errors())


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    tmp: Path = tmp_path_factory.mktemp("hostile")
    apns = ApnsCredentials.generate()
    account = FcmCredentials.generate().write(tmp / "sa.json", "https://127.0.0.1:1/token")
    loop = asyncio.new_event_loop()
    server_cm = start_server(
        demo=True,
        messages_per_s=1_000_000.0,
        message_burst=1_000_000,
        demo_signins_per_hour=10_000,
        webhook_allow_private=True,  # webhooks name 127.0.0.1 only (port 9: nothing listens)
        apns_key=apns.key_pem,
        apns_key_id=apns.key_id,
        apns_team_id=apns.team_id,
        apns_topic=apns.topic,
        fcm_service_account=account,
        vapid_private_key=pem_private(ec.generate_private_key(ec.SECP256R1())),
        vapid_subject="https://example.org/contact",
        webpush_hosts=["push.example.org"],
    )

    async def start() -> Harness:
        server = await server_cm.__aenter__()
        assert isinstance(server.ctx.store, MemoryStore)
        http = aiohttp.ClientSession()
        en = {"languages": ["en"], "timezone": "Europe/London"}
        sockets = {
            "recipient": Socket("fz-recipient", "recipient", en),
            "volunteer": Socket("fz-volunteer", "volunteer", en),
            "agent": Socket("fz-agent", "agent", {**en, "org": DEMO_ORG}),
        }
        h = Harness(loop, server, http, sockets)
        target = server.auth(TARGET, "recipient")
        async with http.get(server.url + "/v1/me/profile", headers=target) as resp:
            assert resp.status == 200  # the administration bodies' target now exists
        for sock in sockets.values():
            await h.open(sock)
        return h

    h = loop.run_until_complete(start())
    try:
        yield h
    finally:

        async def stop() -> None:
            for sock in h.sockets.values():
                if sock.ws is not None:
                    await sock.ws.close()
            await h.http.close()
            await server_cm.__aexit__(None, None, None)

        loop.run_until_complete(stop())
        loop.close()


# --- what is generated ------------------------------------------------------------------------

MESSAGES = Schema(ClientMessage)


BY_TYPE = MESSAGES.branches()


def message_types() -> list[str]:
    return sorted(BY_TYPE)


def _message_of(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    return BY_TYPE[kind]


def valid_messages() -> st.SearchStrategy[dict[str, Any]]:
    # One branch per message type, so that every type is drawn as often as any other.
    return st.one_of([_message_of(kind) for kind in message_types()])


@dataclass(frozen=True)
class Body:
    """A REST route taking a JSON body, the model that parses it, and who sends it."""

    name: str
    method: str
    path: str
    model: type[BaseModel]
    role: str
    variants: list[dict[tuple[str, str], Any]] = field(default_factory=lambda: [{}])
    claims: dict[str, Any] = field(default_factory=dict)
    supplied: frozenset[str] = frozenset()  # required fields the route fills in itself
    state: str = "/v1/me/profile"  # what a refused body must leave unchanged (GET)
    prepare: tuple[str, str, dict[str, Any]] | None = None  # sent before each example
    undo: tuple[str, str, dict[str, Any]] | None = None  # sent after an accepted one

    def schema(self) -> Schema:
        return Schema(self.model)

    def valid(self) -> st.SearchStrategy[dict[str, Any]]:
        return st.one_of([Schema(self.model, pins).valid() for pins in self.variants])


_BUNDLE = st.from_regex(r"[a-z]{2,8}\.[a-z]{2,8}\.[a-z]{2,8}", fullmatch=True)
BODIES = [
    Body(
        "profile-volunteer",
        "PUT",
        "/v1/me/profile",
        ProfileUpdate,
        "volunteer",
        [{("ProfileUpdate", "note"): ABSENT}],
    ),
    Body(
        "profile-recipient",
        "PUT",
        "/v1/me/profile",
        ProfileUpdate,
        "recipient",
        [{("ProfileUpdate", "ring_window"): ABSENT, ("ProfileUpdate", "daily_ring_cap"): ABSENT}],
    ),
    Body(
        "org",
        "PUT",
        f"/v1/orgs/{ORG_ID}",
        Org,
        "admin",
        [
            {("Org", "id"): ORG_ID, ("QueueConfig", "webhook_url"): ABSENT},
            {
                ("Org", "id"): ORG_ID,
                ("QueueConfig", "webhook_url"): "http://127.0.0.1:9/hook",
                ("QueueConfig", "webhook_secret"): text(16, 64),
            },
        ],
        supplied=frozenset({"id"}),  # from the URL
        state=f"/v1/orgs/{ORG_ID}",
    ),
    Body(
        "device",
        "POST",
        "/v1/me/devices",
        DeviceRegistration,
        "volunteer",
        [
            {
                ("DeviceRegistration", "platform"): "apns",
                ("DeviceRegistration", "token"): st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
                ("DeviceRegistration", "subscription"): ABSENT,
                ("DeviceRegistration", "topic"): _BUNDLE,
            },
            {
                ("DeviceRegistration", "platform"): "fcm",
                ("DeviceRegistration", "token"): st.from_regex(
                    r"[A-Za-z0-9_:.-]{20,80}", fullmatch=True
                ),
                ("DeviceRegistration", "subscription"): ABSENT,
                ("DeviceRegistration", "voip"): ABSENT,
                ("DeviceRegistration", "topic"): ABSENT,
            },
            {
                ("DeviceRegistration", "platform"): "webpush",
                ("DeviceRegistration", "token"): ABSENT,
                ("DeviceRegistration", "voip"): ABSENT,
                ("DeviceRegistration", "topic"): ABSENT,
            },
        ],
    ),
    Body(
        "demo-sign-in",
        "POST",
        "/v1/demo/token",
        DemoSignIn,
        "none",
        [{("DemoSignIn", "org"): st.sampled_from([None, DEMO_ORG])}],  # the demo org only
    ),
    Body(
        "admin-suspend",
        "POST",
        f"/v1/admin/users/{TARGET}/suspend",
        Suspend,
        "admin",
        state=f"/v1/admin/users/{TARGET}",
        undo=UNDO,
    ),
    Body(
        "admin-ban",
        "POST",
        f"/v1/admin/users/{TARGET}/ban",
        Because,
        "admin",
        state=f"/v1/admin/users/{TARGET}",
        undo=UNDO,
    ),
    Body(
        "admin-reinstate",
        "POST",
        f"/v1/admin/users/{TARGET}/reinstate",
        Because,
        "admin",
        state=f"/v1/admin/users/{TARGET}",
        prepare=("POST", f"/v1/admin/users/{TARGET}/suspend", {"reason": "Test", "days": 1}),
        undo=UNDO,
    ),
]


def test_every_validated_field_has_a_generator() -> None:
    for annotation in [ClientMessage, *(b.model for b in BODIES)]:
        assert unhinted_validators(annotation) == [], (
            "a field has a validator the generator does not know: add it to VALIDATOR_HINTS"
        )


# The generators are filters over the schema: each one must yield valid examples (and not
# only after many tries, which Hypothesis reports as a failed health check).
GENERATES = settings(max_examples=5, deadline=None, database=None)


@pytest.mark.parametrize("kind", message_types())
@GENERATES
@given(data=st.data())
def test_every_client_message_is_generated_valid(kind: str, data: st.DataObject) -> None:
    example = data.draw(_message_of(kind))
    assert example["type"] == kind and MESSAGES.is_valid(example)


@pytest.mark.parametrize(
    ("body", "pins"),
    [(b, pins) for b in BODIES for pins in b.variants],
    ids=[f"{b.name}-{i}" for b in BODIES for i in range(len(b.variants))],
)
@GENERATES
@given(data=st.data())
def test_every_body_is_generated_valid(
    body: Body, pins: dict[tuple[str, str], Any], data: st.DataObject
) -> None:
    example = data.draw(Schema(body.model, pins).valid())
    assert body.model.model_validate(example)


# --- the WebSocket ----------------------------------------------------------------------------


def _check_answers(ex: Exchange, frame: str | bytes) -> None:
    for error in ex.errors():
        assert error["code"] in WS_CODES, error
        assert isinstance(error["message"], str) and error["message"], error
    size = len(frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else frame)
    if size > MAX_FRAME:
        assert ex.closed == 1009, (ex, size)
        # Past twice the limit the frame is not read at all: the close comes alone.
        expected = ["too_large"] if size <= UNREAD_FRAME else []
        assert [e["code"] for e in ex.errors()] == expected, (ex, size)
    else:
        assert ex.closed is None, f"the server closed the socket ({ex.closed}): {ex.answers}"


async def _one(h: Harness, role: str, mutant: Mutant) -> None:
    sock = h.sockets[role]
    if sock.ws is None:
        await h.open(sock)
    before = await h.snapshot(sock)
    ex = await h.exchange(sock, mutant.frame)
    _check_answers(ex, mutant.frame)
    refused = ex.refused()
    if mutant.expect == REJECT:
        assert refused, f"{mutant!r} was not refused: {ex.answers}"
    elif mutant.expect == ACCEPT:
        assert not refused, f"{mutant!r} was refused: {ex.answers}"
    if refused:
        assert await h.snapshot(sock) == before, f"{mutant!r} was refused but changed state"
    else:
        await h.settle(sock, ex.answers)
    await h.healthy()


ROLES = st.sampled_from(["recipient", "volunteer", "agent"])


@FUZZ
@given(role=ROLES, message=valid_messages())
def test_valid_client_messages_are_understood(
    harness: Harness, role: str, message: dict[str, Any]
) -> None:
    harness.run(_one(harness, role, Mutant("valid", (), ACCEPT, json.dumps(message))))


@settings(FUZZ, max_examples=500)
@given(role=ROLES, mutant=mutants(MESSAGES, valid_messages(), open_objects=True))
def test_broken_client_messages_are_refused_and_the_socket_stays(
    harness: Harness, role: str, mutant: Mutant
) -> None:
    harness.run(_one(harness, role, mutant))


@FUZZ
@given(role=ROLES, mutant=frame_mutants(valid_messages()))
def test_broken_frames_are_refused_and_the_socket_stays(
    harness: Harness, role: str, mutant: Mutant
) -> None:
    harness.run(_one(harness, role, mutant))


async def _first_frame(h: Harness, mutant: Mutant) -> None:
    """A hostile first frame: ``welcome``, or ``unauthenticated`` and close 4401 (or, for an
    oversized frame, ``too_large`` and close 1009)."""
    ws = await websockets.connect(h.server.ws_url, proxy=None, max_size=2**22)
    try:
        await ws.send(mutant.frame)
        frame = mutant.frame
        size = len(frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else frame)
        if size > UNREAD_FRAME:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1009
            return
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if first["type"] == "welcome":
            assert mutant.expect != REJECT, mutant
            await ws.send(json.dumps({"type": "ping", "ref": "p"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong", "ref": "p"}
            return
        assert mutant.expect != ACCEPT, (mutant, first)
        assert first["type"] == "error" and first["message"], first
        assert first["code"] in ("unauthenticated", "too_large"), first
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == (4401 if first["code"] == "unauthenticated" else 1009)
    finally:
        await ws.close()
    await h.healthy()


def _hellos(h_token: str) -> st.SearchStrategy[Mutant]:
    schema = Schema(ClientMessage, {("Hello", "token"): h_token, ("Hello", "resume"): ABSENT})
    hellos = schema.branches()["hello"]
    valid = hellos.map(lambda m: Mutant("valid", (), ACCEPT, json.dumps(m)))
    return st.one_of(valid, mutants(schema, hellos, open_objects=True), frame_mutants(hellos))


FIRST_TOKEN = mint(SECRET, "fz-first", "volunteer")


@settings(FUZZ, max_examples=100)
@given(mutant=_hellos(FIRST_TOKEN))
def test_a_broken_hello_is_refused_with_4401(harness: Harness, mutant: Mutant) -> None:
    harness.run(_first_frame(harness, mutant))


# --- the REST bodies --------------------------------------------------------------------------


def _subject(body: Body) -> str:
    return f"fz-{body.name}"


async def _state(h: Harness, body: Body, auth: dict[str, str]) -> Any:
    """What a refused body must leave as it was."""
    if body.name == "demo-sign-in":
        return len(h.store._profiles)  # demo sign-in creates a profile for a fresh user
    async with h.http.get(h.server.url + body.state, headers=auth) as resp:
        assert resp.status in (200, 404), (body.state, resp.status)  # 404: no organisation yet
        return resp.status, await resp.json()


async def _send_json(
    h: Harness, step: tuple[str, str, dict[str, Any]], auth: dict[str, str]
) -> None:
    method, path, data = step
    status, answer = await h.send(method, path, json.dumps(data), auth)
    assert status in (200, 409), (step, status, answer)  # 409: nothing to reinstate


async def _post(h: Harness, body: Body, mutant: Mutant) -> None:
    auth = {} if body.role == "none" else h.server.auth(_subject(body), body.role, **body.claims)
    if body.prepare is not None:
        await _send_json(h, body.prepare, auth)
    before = await _state(h, body, auth)
    status, answer = await h.send(body.method, body.path, mutant.frame, auth)
    assert status < 500, (mutant, status, answer)
    if status >= 400:
        assert isinstance(answer, dict) and set(answer) == {"error", "message"}, answer
        assert isinstance(answer["error"], str) and isinstance(answer["message"], str), answer
        assert answer["message"], answer
        assert mutant.expect != ACCEPT, f"{mutant!r} was refused: {answer}"
        assert await _state(h, body, auth) == before, f"{mutant!r} was refused but changed state"
    else:
        assert mutant.expect != REJECT, f"{mutant!r} was accepted: {status} {answer}"
        await _accepted(h, body, mutant, answer, auth)
    await h.healthy()


async def _accepted(
    h: Harness, body: Body, mutant: Mutant, answer: Any, auth: dict[str, str]
) -> None:
    """What was accepted reads back as sent, and is undone where it would pile up."""
    sent = json.loads(mutant.frame)
    if body.undo is not None:
        if "reason" in sent:
            _, after = await _state(h, body, auth)
            restriction = after["restriction"]
            kind = {"admin-suspend": "suspended", "admin-ban": "banned"}.get(body.name)
            assert (restriction and restriction["kind"]) == kind, after
        await _send_json(h, body.undo, auth)
    elif body.name.startswith("profile"):
        _, after = await _state(h, body, auth)
        for key in ("display_name", "languages", "timezone", "daily_ring_cap", "note"):
            if sent.get(key) is not None:
                assert after[key] == sent[key], (key, sent, after)
        if sent.get("ring_window") is not None:
            assert after["ring_window"] == sent["ring_window"], (sent, after)
    elif body.name == "org":
        _, after = await _state(h, body, auth)
        for key in ("name", "languages", "timezone"):
            assert after[key] == sent[key], (key, sent, after)
        assert [q["id"] for q in after["queues"]] == [q["id"] for q in sent["queues"]]
    elif body.name == "device":
        assert answer["platform"] == sent["platform"], answer
        async with h.http.delete(
            f"{h.server.url}/v1/me/devices/{answer['id']}", headers=auth
        ) as resp:
            assert resp.status == 204
    elif body.name == "demo-sign-in":
        token = answer["token"]
        async with h.http.get(
            h.server.url + "/v1/me/profile", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 200
            profile = await resp.json()
        assert profile["role"] == sent["role"], profile
        if sent.get("name") is not None:
            assert profile["display_name"] == sent["name"], profile


@pytest.mark.parametrize("body", BODIES, ids=lambda b: b.name)
@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_valid_bodies_are_accepted(harness: Harness, body: Body, data: st.DataObject) -> None:
    example = data.draw(body.valid(), label="body")
    harness.run(_post(harness, body, Mutant("valid", (), ACCEPT, json.dumps(example))))


@pytest.mark.parametrize("body", BODIES, ids=lambda b: b.name)
@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_broken_bodies_are_refused_and_change_nothing(
    harness: Harness, body: Body, data: st.DataObject
) -> None:
    valid = body.valid()
    mutant = data.draw(
        st.one_of(
            mutants(body.schema(), valid, open_objects=False, supplied=body.supplied),
            frame_mutants(valid),
        ),
        label="mutant",
    )
    harness.run(_post(harness, body, mutant))


# --- what the properties found, pinned as examples --------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"ping","type":"call.request","ref":"d"}',
        '{"type":"call.end","call":"c_1","ref":"d","ref":"e"}',
        '{"type":"signal","call":"c_1","data":{"sdp":{"type":"offer"},"sdp":null},"ref":"d"}',
    ],
)
async def test_a_key_named_twice_is_a_bad_message(server: Server, frame: str) -> None:
    client = await server.connect("v1")
    await client.ws.send(frame)
    error = await client.expect("error")
    assert error["code"] == "bad_message" and "twice" in error["message"], error
    assert (await client.request({"type": "ping"}))["type"] == "pong"


async def test_a_key_named_twice_in_a_body_is_a_400_and_changes_nothing(server: Server) -> None:
    url = server.url + "/v1/me/profile"
    async with aiohttp.ClientSession(headers=server.auth("v1", "volunteer")) as http:
        async with http.get(url) as resp:
            before = await resp.json()
        body = '{"display_name": "Ann", "display_name": "Bob"}'
        headers = {"Content-Type": "application/json"}
        async with http.put(url, data=body, headers=headers) as resp:
            assert resp.status == 400
            problem = await resp.json()
        assert problem["error"] == "bad_request" and "'display_name' twice" in problem["message"]
        async with http.get(url) as resp:
            assert await resp.json() == before
