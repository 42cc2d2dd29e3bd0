"""Hostile input at the edge, over a real server on 127.0.0.1: what an attacker sends gets a
clear 400 or ``bad_message``, never a 500, a dropped socket or a silently coerced value."""

from __future__ import annotations

import aiohttp
import pytest

from signaling.jsonin import MAX_DEPTH, JsonRejected, decode, depth_exceeds
from tests.helpers import Server, start_server

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


async def test_the_send_path_drops_an_unencodable_message_not_the_connection(
    server: Server,
) -> None:
    client = await server.connect("v1", "volunteer")
    (session,) = server.ctx.hub.sessions["v1"]
    session.send({"type": "odd", "value": {1, 2}})  # a set is not JSON
    assert (await client.request({"type": "ping"}))["type"] == "pong"
