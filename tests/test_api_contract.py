"""The API contract: the OpenAPI 3.1 document is valid (openapi-spec-validator), describes
exactly the routes the app registers, and the answers the broker really gives match it; the
AsyncAPI document names every message of the protocol, and real messages match their schemas."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from signaling import messages
from signaling.app import create_app
from signaling.config import Settings
from signaling.openapi import (
    ROUTES,
    asyncapi_document,
    contract_gaps,
    message_models,
    openapi_document,
    registered_routes,
)
from tests.helpers import SECRET, Server


def test_the_openapi_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    validate(document, cls=OpenAPIV31SpecValidator)  # raises, naming the fault, if not


def test_a_broken_document_is_caught_by_the_validator() -> None:
    document = openapi_document()
    document["paths"]["/healthz"]["get"]["responses"] = {"200": {"content": {}}}  # no description
    with pytest.raises(Exception, match="description"):
        validate(document, cls=OpenAPIV31SpecValidator)


def _app(**overrides: Any) -> web.Application:
    return create_app(Settings(jwt_secret=SECRET, **overrides))


def test_every_registered_route_is_documented_and_every_documented_route_registered() -> None:
    gaps = contract_gaps(_app())
    assert gaps == [], "\n".join(gaps)
    # Demo mode and push settings add no routes of their own beyond those documented.
    assert contract_gaps(_app(demo=True)) == []


def test_a_missing_doc_is_named_with_what_to_do() -> None:
    app = _app()

    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_patch("/v1/me/widgets/{widget_id}", handler)
    (gap,) = contract_gaps(app)
    assert gap.startswith("PATCH /v1/me/widgets/{widget_id} is registered but not documented")
    assert "ROUTES['PATCH /v1/me/widgets/{widget_id}']" in gap and "signaling/openapi.py" in gap


def test_the_paths_are_the_routes() -> None:
    document = openapi_document()
    documented = {
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method in operations
    }
    assert documented == registered_routes(_app()) == set(ROUTES)


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Validator:
    """A validator for ``schema``, whose ``$ref``s point into ``document``'s components."""
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:contract", resource)
    wrapped = {"$ref": "urn:contract" + schema["$ref"]} if "$ref" in schema else schema
    return jsonschema.Draft202012Validator(wrapped, registry=registry)


def _answer_schema(document: dict[str, Any], method: str, path: str, status: int) -> Any:
    response = document["paths"][path][method.lower()]["responses"][str(status)]
    return response["content"]["application/json"]["schema"]


async def test_real_answers_match_the_documented_schemas(server: Server) -> None:
    document = openapi_document()
    checks: list[tuple[str, str, int, dict[str, str]]] = [
        ("GET", "/healthz", 200, {}),
        ("GET", "/readyz", 200, {}),
        ("GET", "/v1/me/profile", 200, server.auth("v1", "volunteer")),
        ("GET", "/v1/me/profile", 200, server.auth("r1", "recipient")),
        ("GET", "/v1/me/profile", 401, {}),
        ("GET", "/v1/me/calls", 200, server.auth("v1", "volunteer")),
        ("GET", "/v1/ice-servers", 200, server.auth("v1", "volunteer")),
        ("GET", "/v1/me/outlook", 200, server.auth("v1", "volunteer")),
        ("GET", "/v1/me/outlook", 403, server.auth("r1", "recipient")),
        ("GET", "/v1/orgs", 200, server.auth("r1", "recipient")),
        ("GET", "/v1/admin/cases", 200, server.auth("boss", "admin")),
        ("GET", "/v1/admin/cases", 403, server.auth("v1", "volunteer")),
        ("GET", "/v1/admin/audit", 200, server.auth("boss", "admin")),
        ("GET", "/v1/openapi.json", 200, {}),
        ("GET", "/v1/asyncapi.json", 200, {}),
    ]
    async with aiohttp.ClientSession() as http:
        for method, path, status, headers in checks:
            async with http.request(method, server.url + path, headers=headers) as resp:
                assert resp.status == status, (path, await resp.text())
                body = await resp.json()
            schema = _answer_schema(document, method, path, status)
            errors = [e.message for e in _validator(document, schema).iter_errors(body)]
            assert errors == [], (method, path, status, errors)
        async with http.get(server.url + "/v1/openapi.json") as resp:
            assert await resp.json() == openapi_document()
        async with http.put(
            server.url + "/v1/me/profile",
            json={"display_name": ""},
            headers=server.auth("v1", "volunteer"),
        ) as resp:
            assert resp.status == 400
            schema = _answer_schema(document, "PUT", "/v1/me/profile", 400)
            assert list(_validator(document, schema).iter_errors(await resp.json())) == []


def test_the_asyncapi_document_names_every_message_of_the_protocol() -> None:
    document = asyncapi_document()
    assert document["asyncapi"] == "3.0.0"
    client = set(message_models(messages.ClientMessage))
    server = set(message_models(messages.ServerMessage))
    assert {"hello", "signal", "call.request", "call.accept"} <= client
    assert {"welcome", "error", "call.ring", "call.assigned", "call.ended"} <= server
    ops = document["operations"]
    channel = document["channels"]["session"]
    assert channel["address"] == "/v1/ws"

    def names(operation: str) -> set[str]:
        found = set()
        for ref in ops[operation]["messages"]:
            message_id = ref["$ref"].removeprefix("#/channels/session/messages/")
            target = channel["messages"][message_id]["$ref"].removeprefix("#/components/messages/")
            found.add(document["components"]["messages"][target]["name"])
        return found

    assert ops["fromClient"]["action"] == "receive" and names("fromClient") == client
    assert ops["toClient"]["action"] == "send" and names("toClient") == server
    # Every payload is a schema that exists, is valid JSON Schema, and pins its message type.
    schemas = document["components"]["schemas"]
    for message in document["components"]["messages"].values():
        name = message["payload"]["$ref"].removeprefix("#/components/schemas/")
        schema = schemas[name]
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["properties"]["type"]["const"] == message["name"], name


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "hello", "token": "t", "client": "sdk/1"},
        {"type": "call.request", "language": "en", "ref": "r1"},
        {"type": "signal", "call": "c_1", "data": {"sdp": {"type": "offer", "sdp": "v=0"}}},
        {"type": "call.end", "call": "c_1"},
    ],
)
def test_client_messages_the_broker_accepts_match_their_asyncapi_schema(
    frame: dict[str, Any],
) -> None:
    messages.parse_client(json.dumps(frame))  # the broker accepts it
    document = asyncapi_document()
    name = next(
        m["payload"]["$ref"]
        for m in document["components"]["messages"].values()
        if m["name"] == frame["type"] and m["title"].endswith("(client to broker)")
    )
    assert list(_validator(document, {"$ref": name}).iter_errors(frame)) == []
    bad = {**frame, "type": "something.else"}
    assert list(_validator(document, {"$ref": name}).iter_errors(bad)) != []


async def test_server_messages_match_their_asyncapi_schema(server: Server) -> None:
    document = asyncapi_document()
    by_type = {
        m["name"]: m["payload"]
        for m in document["components"]["messages"].values()
        if m["title"].endswith("(broker to client)")
    }
    vol = await server.connect("v1", "volunteer", languages=["en"])
    await vol.request({"type": "availability", "available": True})
    rec = await server.connect("r1", "recipient", languages=["en"])
    status = await rec.request({"type": "call.request"})
    ring = await vol.expect("call.ring")
    assigned = await vol.request({"type": "call.accept", "call": ring["call"]})
    pong = await rec.request({"type": "ping"})
    error = await rec.request({"type": "call.accept", "call": "c_nope"})
    seen = [vol.welcome, rec.welcome, status, ring, assigned, pong, error]
    for frame in seen:
        errors = list(_validator(document, by_type[frame["type"]]).iter_errors(frame))
        assert errors == [], (frame["type"], [e.message for e in errors])
    await vol.close()
    await rec.close()
