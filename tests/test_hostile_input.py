"""Hostile input at the edge, over a real server on 127.0.0.1: what an attacker sends gets a
clear 400 or ``bad_message``, never a 500, a dropped socket or a silently coerced value."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import socket
import time
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from prometheus_client import CollectorRegistry

from broker.model import ErrorCode, _check_timezone
from broker.queues import WebhookEvent
from signaling.config import Settings
from signaling.csvout import write_csv
from signaling.jsonin import MAX_DEPTH, JsonRejected, decode, depth_exceeds
from signaling.logs import MAX_FIELD, MAX_MESSAGE, MAX_TRACEBACK, JsonFormatter
from signaling.server import make_runner
from signaling.webhooks import PublicResolver, WebhookSender, refused_address, refused_host
from signaling.ws import error_message
from tests.helpers import SECRET, Server, start_server

DEEP_ARRAY = "[" * 30_000 + "]" * 30_000  # 60 KB: inside the frame limit
DEEP_OBJECT = '{"a":' * 10_000 + "1" + "}" * 10_000


def test_depth_is_counted_outside_strings() -> None:
    assert not depth_exceeds('{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', 2)
    assert not depth_exceeds('["\\"[[[[", [1]]', 2)
    assert depth_exceeds("[[[1]]]", 2) and not depth_exceeds("[[1]]", 2)
    assert decode("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    with pytest.raises(JsonRejected, match="deep"):
        decode("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))


def test_unpaired_surrogates_are_refused_and_pairs_are_fine() -> None:
    assert decode('{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}
    with pytest.raises(JsonRejected, match=r"in a\.b\.1"):
        decode('{"a": {"b": ["ok", "\\udc00"]}}')
    with pytest.raises(JsonRejected, match="NaN"):
        decode('{"a": NaN}')
    with pytest.raises(JsonRejected, match="UTF-8"):
        decode(b'{"a": "\xff"}')


def test_numbers_a_double_cannot_hold_are_refused_not_rounded() -> None:
    for literal in ("1e-400", "-2.5e-999", "1e309", "-1e400"):
        with pytest.raises(JsonRejected, match="out of range"):
            decode('{"wrapup_s": ' + literal + "}")
    # Zero written any way is zero, and small numbers a double holds are kept.
    assert decode("[0.0e-999, -0e5, 1e-300, 2.5]") == [0.0, 0.0, 1e-300, 2.5]


async def test_a_number_out_of_range_on_the_websocket_is_a_bad_message(server: Server) -> None:
    client = await server.connect("v1", "volunteer")
    await client.ws.send('{"type": "ping", "ref": "p1", "at": 1e-400}')
    msg = await client.recv()
    assert msg["code"] == "bad_message" and "out of range" in msg["message"], msg
    assert (await client.request({"type": "ping"}))["type"] == "pong"


# --- 1. nesting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [DEEP_ARRAY, DEEP_OBJECT])
async def test_deep_nesting_on_the_websocket_is_a_bad_message(server: Server, frame: str) -> None:
    client = await server.connect("v1", "volunteer")
    await client.ws.send(frame)
    msg = await client.recv()
    assert msg["code"] == "bad_message" and "deep" in msg["message"], msg
    assert (await client.request({"type": "ping"}))["type"] == "pong"


async def test_deep_nesting_inside_signal_data_is_refused_before_the_relay(server: Server) -> None:
    client = await server.connect("v1", "volunteer")
    data = '{"candidate":' + '{"a":' * 5000 + "1" + "}" * 5000 + "}"
    await client.ws.send('{"type":"signal","call":"c_1","ref":"s1","data":' + data + "}")
    msg = await client.recv()
    # Refused before it is parsed, so there is no ref to echo.
    assert msg["code"] == "bad_message" and "deep" in msg["message"], msg
    assert (await client.request({"type": "ping"}))["type"] == "pong"


def rest_routes(server: Server) -> list[tuple[str, str, dict[str, str]]]:
    return [
        ("PUT", "/v1/me/profile", server.auth("v1")),
        ("PUT", "/v1/orgs/bank", server.auth("boss", "admin")),
        ("POST", "/v1/me/devices", server.auth("v1")),
        ("POST", "/v1/demo/token", {}),
    ]


@pytest.mark.parametrize("body", [DEEP_ARRAY, DEEP_OBJECT])
async def test_deep_nesting_in_every_rest_body_is_a_400(body: str) -> None:
    async with start_server(demo=True) as server, aiohttp.ClientSession() as http:
        for method, path, headers in rest_routes(server):
            async with http.request(
                method,
                server.url + path,
                data=body,
                headers={**headers, "Content-Type": "application/json"},
            ) as resp:
                problem = await resp.json()
                assert resp.status == 400, (path, problem)
                assert problem["error"] == "bad_request" and "deep" in problem["message"]


# --- 2. text that is not Unicode ------------------------------------------------------------------


async def test_a_lone_surrogate_ref_gets_an_error_without_it(server: Server) -> None:
    client = await server.connect("v1", "volunteer")
    await client.ws.send('{"type":"ping","ref":"\\ud800"}')
    msg = await client.recv()
    assert msg["code"] == "bad_message" and "ref" not in msg and "ref" in msg["message"], msg
    assert (await client.request({"type": "ping"}))["type"] == "pong"


async def test_a_lone_surrogate_before_hello_is_refused_with_a_close(server: Server) -> None:
    client = await server.connect("v1", "volunteer", hello=False)
    await client.ws.send('{"type":"hello","token":"x","ref":"\\udfff"}')
    msg = await client.recv()
    assert msg["code"] == "unauthenticated" and "ref" not in msg
    await client.ws.wait_closed()
    assert client.ws.close_code == 4401


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ('{"type":"call.request","ref":"q","topic":"\\ud800"}', "topic"),
        ('{"type":"call.request","ref":"q","note":"a\\udbffb"}', "note"),
        ('{"type":"signal","ref":"q","call":"c","data":{"candidate":{"c":"\\ud800"}}}', "data"),
        ('{"type":"ping","ref":"q","\\ud800":1}', "a key"),
    ],
)
async def test_lone_surrogates_anywhere_are_a_bad_message_naming_the_field(
    server: Server, frame: str, field: str
) -> None:
    client = await server.connect("r1", "recipient")
    await client.ws.send(frame)
    msg = await client.recv()
    assert msg["code"] == "bad_message" and msg["ref"] == "q" and field in msg["message"], msg
    assert (await client.request({"type": "ping"}))["type"] == "pong"


async def test_a_lone_surrogate_in_a_rest_body_is_a_400_naming_the_field(server: Server) -> None:
    async with aiohttp.ClientSession(headers=server.auth("v1")) as http:
        async with http.put(
            server.url + "/v1/me/profile",
            data='{"display_name": "Val\\ud800"}',
            headers={"Content-Type": "application/json"},
        ) as resp:
            problem = await resp.json()
            assert resp.status == 400 and "display_name" in problem["message"], problem


def test_an_error_reply_leaves_out_a_ref_it_cannot_echo() -> None:
    for ref in ("\ud800", "x" * 65):
        wire = error_message(ErrorCode.BAD_MESSAGE, "Bad \udfff text.", ref).wire()
        assert "ref" not in wire and wire["code"] == "bad_message"
        json.dumps(wire, ensure_ascii=False).encode()  # encodable as UTF-8
    assert error_message(ErrorCode.BAD_MESSAGE, "ok", "r1").wire()["ref"] == "r1"


async def test_the_send_path_drops_an_unencodable_message_not_the_connection(
    server: Server,
) -> None:
    client = await server.connect("v1", "volunteer")
    (session,) = server.ctx.hub.sessions["v1"]
    session.send({"type": "odd", "value": {1, 2}})  # a set is not JSON
    assert (await client.request({"type": "ping"}))["type"] == "pong"


# --- 3. time zone names -------------------------------------------------------------------------

LONG_ZONE = "A/" * 500 + "A"


async def test_a_long_time_zone_is_a_short_400_on_profile_and_organisation(server: Server) -> None:
    org = {
        "name": "Bank",
        "languages": ["en"],
        "timezone": LONG_ZONE,
        "queues": [{"id": "main", "name": "Main"}],
    }
    async with aiohttp.ClientSession() as http:
        for path, who, body in (
            ("/v1/me/profile", server.auth("v1"), {"timezone": LONG_ZONE}),
            ("/v1/orgs/bank", server.auth("boss", "admin"), org),
        ):
            async with http.put(server.url + path, json=body, headers=who) as resp:
                problem = await resp.json()
                assert resp.status == 400 and "timezone" in problem["message"], problem
                assert len(problem["message"]) < 400  # the name is not echoed whole


@pytest.mark.parametrize(
    "zone", [LONG_ZONE, "../../etc/passwd", "Europe//London", "/UTC", "A" * 65]
)
def test_time_zone_shape_is_checked_before_any_look_up(zone: str) -> None:
    with pytest.raises(ValueError, match="IANA"):
        _check_timezone(zone)


# --- 4. strict types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"daily_ring_cap": True}, "daily_ring_cap"),
        ({"daily_ring_cap": "5"}, "daily_ring_cap"),
        ({"daily_ring_cap": 5.0}, "daily_ring_cap"),
        ({"languages": "en"}, "languages"),
        ({"display_name": 7}, "display_name"),
    ],
)
async def test_profile_types_are_not_coerced(server: Server, body: Any, field: str) -> None:
    async with aiohttp.ClientSession(headers=server.auth("v1")) as http:
        async with http.put(server.url + "/v1/me/profile", json=body) as resp:
            problem = await resp.json()
            assert resp.status == 400 and field in problem["message"], problem
        async with http.get(server.url + "/v1/me/profile") as resp:
            assert (await resp.json())["daily_ring_cap"] == 10


async def test_strict_profile_still_reads_times_of_day(server: Server) -> None:
    body = {"ring_window": {"start": "09:30", "end": "21:00"}, "daily_ring_cap": 3}
    async with aiohttp.ClientSession(headers=server.auth("v1")) as http:
        async with http.put(server.url + "/v1/me/profile", json=body) as resp:
            got = await resp.json()
            assert resp.status == 200 and got["ring_window"] == body["ring_window"], got


@pytest.mark.parametrize(
    ("queue", "field"),
    [
        ({"max_length": "5"}, "queues.0.max_length"),
        ({"ring_timeout_s": "20"}, "queues.0.ring_timeout_s"),
        ({"max_length": True}, "queues.0.max_length"),
    ],
)
async def test_organisation_types_are_not_coerced(
    server: Server, queue: dict[str, Any], field: str
) -> None:
    body = {
        "name": "Bank",
        "languages": ["en"],
        "timezone": "Europe/London",
        "closures": ["2026-12-25"],  # dates are strings in JSON and still read
        "queues": [{"id": "main", "name": "Main", **queue}],
    }
    async with (
        aiohttp.ClientSession(headers=server.auth("boss", "admin")) as http,
        http.put(server.url + "/v1/orgs/bank", json=body) as resp,
    ):
        problem = await resp.json()
        assert resp.status == 400 and field in problem["message"], problem


async def test_device_and_demo_bodies_are_strict() -> None:
    async with start_server(demo=True) as server, aiohttp.ClientSession() as http:
        device = {"platform": "webpush", "voip": "false"}
        async with http.post(
            server.url + "/v1/me/devices", json=device, headers=server.auth("v1")
        ) as resp:
            assert resp.status == 400 and "voip" in (await resp.json())["message"]
        async with http.post(
            server.url + "/v1/demo/token", json={"role": "recipient", "languages": "en"}
        ) as resp:
            assert resp.status == 400 and "languages" in (await resp.json())["message"]


# --- 7. text a person sees ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "char"),
    [
        ({"display_name": "Val\x00"}, "display_name", "U+0000"),
        ({"display_name": "\u202eLAV"}, "display_name", "U+202E"),
        ({"display_name": "Val\u2066x"}, "display_name", "U+2066"),
        ({"display_name": "Val\nSecond line"}, "display_name", "U+000A"),
        ({"display_name": "Val\x9b"}, "display_name", "U+009B"),
    ],
)
async def test_names_refuse_controls_and_bidi_overrides(
    server: Server, body: Any, field: str, char: str
) -> None:
    async with aiohttp.ClientSession(headers=server.auth("v1")) as http:
        async with http.put(server.url + "/v1/me/profile", json=body) as resp:
            problem = await resp.json()
            assert resp.status == 400, problem
            assert field in problem["message"] and char in problem["message"], problem


async def test_a_note_may_run_over_lines_but_not_hold_controls(server: Server) -> None:
    async with aiohttp.ClientSession(headers=server.auth("r1", "recipient")) as http:
        note = "Line one\n\tLine two\r\n"
        async with http.put(server.url + "/v1/me/profile", json={"note": note}) as resp:
            assert resp.status == 200 and (await resp.json())["note"] == note
        async with http.put(server.url + "/v1/me/profile", json={"note": "a\x07b"}) as resp:
            assert resp.status == 400 and "note" in (await resp.json())["message"]


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"type": "call.request", "topic": "post\u202e"}, "topic"),
        ({"type": "call.request", "topic": "a\tb"}, "topic"),
        ({"type": "call.request", "note": "a\x00b"}, "note"),
        ({"type": "call.feedback", "call": "c_1", "rating": "up", "comment": "\u2068"}, "comment"),
    ],
)
async def test_wire_text_refuses_controls(
    server: Server, message: dict[str, Any], field: str
) -> None:
    client = await server.connect("r1", "recipient")
    answer = await client.request(message)
    assert answer["code"] == "bad_message" and field in answer["message"], answer


@pytest.mark.parametrize(
    ("frame", "field", "echoed"),
    [
        ('{"type":"call.take","ref":"q"}', "call", True),
        ('{"type":"call.take","ref":"q","call":null}', "call", True),
        ('{"type":"call.take","ref":"q","call":["c_1"]}', "call", True),
        ('{"type":"call.take","ref":"q","call":{"id":"c_1"}}', "call", True),
        ('{"type":"call.take","ref":"q","call":12}', "call", True),
        ('{"type":"call.take","ref":"q","call":true}', "call", True),
        ('{"type":"call.take","ref":"q","call":""}', "call", True),
        ('{"type":"call.take","ref":"q","call":"' + "c" * 65 + '"}', "call", True),
        ('{"type":"call.take","ref":"q","call":"c\\ud800"}', "call", True),
        ('{"type":"call.take","ref":"q","call":"c_1","call":"c_2"}', "call", False),
        ('{"type":"lobby.open","ref":"q","\\udc00":1}', "a key", True),
        ('{"type":"lobby.open","ref":"q","type":"lobby.close"}', "type", False),
        ('{"type":"lobby.close","ref":"q","x":' + "[" * 100 + "]" * 100 + "}", "deep", False),
    ],
)
async def test_lobby_messages_refuse_hostile_input_naming_the_field(
    server: Server, frame: str, field: str, echoed: bool
) -> None:
    """``echoed``: the frame could be parsed far enough to read its ``ref`` (a repeated key
    or nesting too deep is refused before)."""
    client = await server.connect("v1", "volunteer")
    await client.ws.send(frame)
    msg = await client.recv()
    assert msg["code"] == "bad_message" and field in msg["message"], msg
    assert msg.get("ref") == ("q" if echoed else None)
    assert (await client.request({"type": "ping"}))["type"] == "pong"


async def test_lobby_messages_ignore_unknown_fields_and_a_bad_ref_is_not_echoed(
    server: Server,
) -> None:
    client = await server.connect("v1", "volunteer")
    await client.request({"type": "availability", "available": True})
    answer = await client.request({"type": "lobby.open", "entries": [{"call": "c_x"}], "all": 1})
    assert answer["type"] == "lobby" and answer["entries"] == []  # sent fields change nothing
    await client.send({"type": "lobby.close", "ref": 7})
    msg = await client.recv()
    assert msg["code"] == "bad_message" and "ref" not in msg and "ref" in msg["message"]


async def test_organisation_names_refuse_controls(server: Server) -> None:
    body = {
        "name": "Bank\u202e",
        "languages": ["en"],
        "timezone": "Europe/London",
        "queues": [{"id": "main", "name": "Main"}],
    }
    async with (
        aiohttp.ClientSession(headers=server.auth("boss", "admin")) as http,
        http.put(server.url + "/v1/orgs/bank", json=body) as resp,
    ):
        problem = await resp.json()
        assert resp.status == 400 and "name" in problem["message"], problem
    body = {**body, "name": "Bank", "queues": [{"id": "main", "name": "M\x1b[31m"}]}
    async with (
        aiohttp.ClientSession(headers=server.auth("boss", "admin")) as http,
        http.put(server.url + "/v1/orgs/bank", json=body) as resp,
    ):
        problem = await resp.json()
        assert resp.status == 400 and "queues.0.name" in problem["message"], problem


async def test_a_token_name_with_a_bidi_override_is_refused(server: Server) -> None:
    client = await server.connect("v1", "volunteer", hello=False)
    answer = await client.request(
        {"type": "hello", "token": server.token("v1", "volunteer", name="\u202eVal")}
    )
    assert answer["code"] == "unauthenticated" and "name" in answer["message"], answer


# --- 5. CSV formula injection -------------------------------------------------------------------


def test_csv_cells_that_could_start_a_formula_get_a_quote() -> None:
    text = write_csv(
        ["a", "b", "c"],
        [
            {"a": "=1+2", "b": "+SUM(A1)", "c": "-cmd"},
            {"a": "@A1", "b": "\tx", "c": "\rx"},
            {"a": "plain", "b": -1.5, "c": None},
        ],
    )
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[1] == ["'=1+2", "'+SUM(A1)", "'-cmd"]
    assert rows[2] == ["'@A1", "'\tx", "'\rx"]
    assert rows[3] == ["plain", "-1.5", ""]  # numbers stay numbers
    assert text.split("\r\n")[3] == '"plain","-1.5",""'  # every field quoted


@pytest.mark.parametrize("topic", ['=HYPERLINK("http://x","y")', "+1+1", "-1+1", "@SUM(1)"])
async def test_call_history_csv_defuses_formulas(topic: str) -> None:
    async with start_server() as server:
        vol = await server.connect("v1", "volunteer", name="Val", languages=["en"])
        await vol.request({"type": "availability", "available": True})
        rec = await server.connect("r1", "recipient", name="Rae", languages=["en"])
        call = (await rec.request({"type": "call.request", "topic": topic}))["call"]
        await vol.expect("call.ring")
        await rec.request({"type": "call.cancel", "call": call})
        async with (
            aiohttp.ClientSession(headers=server.auth("r1", "recipient")) as http,
            http.get(server.url + "/v1/me/calls?format=csv") as resp,
        ):
            (row,) = list(csv.DictReader(io.StringIO(await resp.text())))
        assert row["topic"] == "'" + topic


# --- 6. a decline crossing the end of the call ------------------------------------------------


@pytest.mark.parametrize("ending", ["answered", "cancelled", "no_answer"])
async def test_a_late_decline_is_acknowledged(ending: str) -> None:
    async with start_server(max_wait_s=1.0) as server:
        vols = []
        for sub in ("v1", "v2"):
            vol = await server.connect(sub, "volunteer", languages=["en"])
            await vol.request({"type": "availability", "available": True})
            vols.append(vol)
        rec = await server.connect("r1", "recipient", languages=["en"])
        call = (await rec.request({"type": "call.request"}))["call"]
        for vol in vols:
            await vol.expect("call.ring")
        if ending == "answered":
            await vols[1].request({"type": "call.accept", "call": call})
        elif ending == "cancelled":
            await rec.request({"type": "call.cancel", "call": call})
        else:
            assert (await rec.expect("call.ended"))["reason"] == "no_answer"
        answer = await vols[0].request({"type": "call.decline", "call": call})
        assert answer["type"] == "ack", answer
        stranger = await server.connect("v3", "volunteer", languages=["en"])
        answer = await stranger.request({"type": "call.decline", "call": call})
        assert answer["code"] == "not_found", answer


# --- 8. what one request can write to the log ---------------------------------------------------


def _record(msg: str, exc: BaseException | None = None, **extra: object) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, msg, None, exc_info)
    record.__dict__.update(extra)
    return record


def _raised(text: str) -> BaseException:
    try:
        raise ValueError(text)
    except ValueError as exc:
        return exc


def test_log_lines_are_bounded() -> None:
    formatter = JsonFormatter()
    line = formatter.format(_record("x" * 100_000, _raised("y" * 100_000), url="z" * 100_000, n=3))
    entry = json.loads(line)
    assert len(line) < MAX_MESSAGE + MAX_FIELD + MAX_TRACEBACK + 1000
    assert entry["msg"].startswith("xxx") and "more characters" in entry["msg"]
    assert len(entry["url"]) < MAX_FIELD + 50 and entry["n"] == 3
    assert entry["exc"].endswith("y") and "characters before" in entry["exc"]


def test_a_repeated_traceback_is_written_once() -> None:
    formatter = JsonFormatter()
    exc = _raised("the same failure")
    first = json.loads(formatter.format(_record("boom", exc)))
    second = json.loads(formatter.format(_record("boom", exc)))
    third = json.loads(formatter.format(_record("boom", exc)))
    assert "Traceback" in first["exc"] and "exc_repeated" not in first
    assert "exc" not in second and second["exc_repeated"] == 1
    assert third["exc_repeated"] == 2 and "the same failure" in third["exc_last"]
    other = json.loads(formatter.format(_record("boom", _raised("another failure"))))
    assert "another failure" in other["exc"]


# --- slow and silent HTTP clients ---------------------------------------------------------------


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sent until it closed the connection (fails after ``seconds``)."""
    return await asyncio.wait_for(reader.read(), seconds)


async def test_partial_headers_then_silence_are_closed() -> None:
    async with start_server(http_header_timeout_s=0.5) as server:
        port = int(server.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        await writer.drain()
        started = time.monotonic()
        assert await _closed_within(reader, 5.0) == b""
        assert time.monotonic() - started < 3.0
        writer.close()


async def test_a_body_that_stops_arriving_gets_408_and_a_close() -> None:
    async with start_server(http_body_timeout_s=0.5) as server:
        port = int(server.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        token = server.token("v1")
        writer.write(
            b"PUT /v1/me/profile HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n\r\n" + b'{"display_name'
        )
        await writer.drain()
        started = time.monotonic()
        answer = await _closed_within(reader, 5.0)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"timeout"' in answer
        assert time.monotonic() - started < 3.0
        writer.close()


def test_http_timeouts_are_settings() -> None:
    settings = Settings(jwt_secret="x" * 32, http_header_timeout_s=3, http_body_timeout_s=4)
    runner = make_runner(web.Application(), settings)
    assert runner._kwargs["keepalive_timeout"] == 3
    assert runner._kwargs["lingering_time"] == 4


# --- demo sign-in -------------------------------------------------------------------------------


async def test_demo_sign_in_is_for_the_demo_organisation_only() -> None:
    async with start_server(demo=True) as server, aiohttp.ClientSession() as http:
        async with http.post(
            server.url + "/v1/demo/token", json={"role": "agent", "org": "northbank"}
        ) as resp:
            problem = await resp.json()
            assert resp.status == 403 and "demo-org" in problem["message"], problem
        async with http.post(
            server.url + "/v1/demo/token", json={"role": "agent", "org": "demo-org"}
        ) as resp:
            token = (await resp.json())["token"]
        claims = jwt.decode(token, SECRET, algorithms=["HS256"])
        assert claims["org"] == "demo-org" and claims["exp"] - claims["iat"] == 3600


async def test_demo_sign_in_is_rate_limited_per_address() -> None:
    async with (
        start_server(demo=True, demo_signins_per_hour=3, demo_token_ttl_s=600) as server,
        aiohttp.ClientSession() as http,
    ):
        statuses = []
        for _ in range(5):
            async with http.post(server.url + "/v1/demo/token", json={"role": "recipient"}) as resp:
                statuses.append(resp.status)
                body = await resp.json()
                if resp.status == 200:
                    claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"])
                    assert claims["exp"] - claims["iat"] == 600
        assert statuses == [200, 200, 200, 429, 429]
        assert body["error"] == "rate_limited"


# --- headers, metrics, statistics ---------------------------------------------------------------


async def test_api_answers_are_not_cached_or_sniffed(server: Server) -> None:
    async with aiohttp.ClientSession(headers=server.auth("v1")) as http:
        for path in ("/v1/me/profile", "/v1/me/calls?format=csv", "/v1/nothing-here"):
            async with http.get(server.url + path) as resp:
                assert resp.headers["Cache-Control"] == "no-store", path
                assert resp.headers["X-Content-Type-Options"] == "nosniff", path
        async with http.get(server.url + "/app/") as resp:
            csp = resp.headers["Content-Security-Policy"]
            assert "connect-src 'self';" in csp and "ws:" not in csp


async def test_metrics_can_need_a_token() -> None:
    async with start_server(metrics_token="m" * 24) as server, aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "m" * 24}):
            async with http.get(server.url + "/metrics", headers=headers) as resp:
                assert resp.status == 401 and (await resp.json())["error"] == "unauthenticated"
        async with http.get(
            server.url + "/metrics", headers={"Authorization": "Bearer " + "m" * 24}
        ) as resp:
            assert resp.status == 200 and "vabroker_" in await resp.text()


@pytest.mark.parametrize(("allow", "status"), [(["10.0.0.0/8"], 403), (["127.0.0.0/8"], 200)])
async def test_metrics_can_be_kept_to_some_addresses(allow: list[str], status: int) -> None:
    async with (
        start_server(metrics_allow=allow) as server,
        aiohttp.ClientSession() as http,
        http.get(server.url + "/metrics") as resp,
    ):
        assert resp.status == status


def test_metrics_networks_are_checked_at_start_up() -> None:
    with pytest.raises(ValueError, match="metrics_allow"):
        Settings(jwt_secret="x" * 32, metrics_allow=["not a network"])


async def test_an_organisation_admin_reads_only_its_own_statistics(server: Server) -> None:
    rec = await server.connect("stats-rec", "recipient", languages=["en"])
    call = (await rec.request({"type": "call.request", "topic": "post"}))["call"]
    await rec.request({"type": "call.cancel", "call": call})
    async with aiohttp.ClientSession() as http:
        async with http.get(
            server.url + "/v1/stats", headers=server.auth("boss", "admin", org="bank")
        ) as resp:
            assert resp.status == 200
            theirs = await resp.json()
        async with http.get(server.url + "/v1/stats", headers=server.auth("root", "admin")) as resp:
            assert resp.status == 200
            everyone = await resp.json()
    # The volunteer call is not the bank's: its admin sees none of the global figures.
    assert theirs["total"]["created"] == 0 and theirs["by_language"] == {}
    assert everyone["total"]["created"] >= 1 and "en" in everyone["by_language"]
    await rec.close()


# --- webhook addresses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "http://100.64.0.1/hook",
        "http://[fe80::1]/hook",
    ],
)
async def test_webhooks_to_special_addresses_are_refused(server: Server, url: str) -> None:
    body = {
        "name": "Bank",
        "languages": ["en"],
        "timezone": "Europe/London",
        "queues": [{"id": "main", "name": "Main", "webhook_url": url, "webhook_secret": "s" * 16}],
    }
    async with (
        aiohttp.ClientSession(headers=server.auth("boss", "admin")) as http,
        http.put(server.url + "/v1/orgs/bank", json=body) as resp,
    ):
        problem = await resp.json()
        assert resp.status == 400 and "queues.0.webhook_url" in problem["message"], problem


def test_public_addresses_are_allowed() -> None:
    assert refused_address("93.184.215.14") is None
    assert refused_address("2606:4700::1111") is None
    assert refused_host("hooks.example.org") is None  # a name is checked when resolved
    assert refused_address("127.0.0.2") == "loopback"
    assert refused_address("::ffff:10.0.0.1") == "private"


class FixedResolver(AbstractResolver):
    """Names resolve to what the test says: a rebinding DNS server, in effect."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {"hostname": host, "host": a, "port": port, "family": family, "proto": 0, "flags": 0}
            for a in self.answers[host]
        ]

    async def close(self) -> None:
        return None


async def test_resolved_addresses_are_checked() -> None:
    resolver = PublicResolver(
        FixedResolver(
            {"inside.test": ["127.0.0.1", "10.0.0.5"], "mixed.test": ["10.0.0.5", "93.184.215.14"]}
        )
    )
    with pytest.raises(OSError, match="refused addresses"):
        await resolver.resolve("inside.test", 80)
    assert [r["host"] for r in await resolver.resolve("mixed.test", 80)] == ["93.184.215.14"]


async def _deliver(
    url: str, resolver: AbstractResolver, allow_private: bool = False
) -> tuple[WebhookSender, int]:
    """One webhook to ``url``; returns the sender and the number of requests the receiver on
    127.0.0.1 got."""
    got: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.read())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sender = WebhookSender(
        CollectorRegistry(),
        attempts=1,
        timeout_s=2,
        resolver=resolver,
        allow_private=allow_private,
    )
    lifespan = sender.lifespan(web.Application())
    await anext(lifespan)
    try:
        sender.submit(WebhookEvent("call.queued", url.format(port=port), "s" * 16, {"id": "w1"}))
        await sender.drain()
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await anext(lifespan)
        await runner.cleanup()
    return sender, len(got)


@pytest.mark.parametrize("url", ["http://rebound.test:{port}/hook", "http://127.0.0.1:{port}/hook"])
async def test_a_webhook_is_not_sent_to_a_private_address_at_connection_time(url: str) -> None:
    sender, got = await _deliver(url, FixedResolver({"rebound.test": ["127.0.0.1"]}))
    assert got == 0
    assert sender.results.labels("failed")._value.get() == 1


async def test_errors_never_echo_a_long_input_whole(server: Server) -> None:
    async with aiohttp.ClientSession(headers=server.auth("boss", "admin")) as http:
        async with http.get(server.url + "/v1/orgs/" + "a" * 5000) as resp:
            problem = await resp.json()
            assert resp.status == 400 and len(problem["message"]) < 400, problem
        body = {"x" * 50_000: 1, "ring_window": {"start": "9" * 50_000}}
        async with http.put(server.url + "/v1/me/profile", json=body) as resp:
            problem = await resp.json()
            assert resp.status == 400 and len(problem["message"]) < 1000, problem
    client = await server.connect("v1", "volunteer")
    answer = await client.request({"type": "x" * 50_000})
    assert answer["code"] == "bad_message" and len(answer["message"]) < 400
