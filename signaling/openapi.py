"""The machine-readable API contract: OpenAPI 3.1 for the REST routes, AsyncAPI 3.0 for the
WebSocket protocol, both generated from the pydantic models the broker validates with.

Served at ``/v1/openapi.json`` and ``/v1/asyncapi.json``.

**Adding a REST route?** Add its entry to ``ROUTES`` below, keyed ``"METHOD /path"`` exactly as
the route is registered (path parameters in braces, as in ``add_get``): a summary, who may call
it, the request body's pydantic model, the answer's model (or schema), query parameters and the
error statuses it answers with. ``tests/test_api_contract.py`` fails, naming the route, for a
registered route without an entry and for an entry without a registered route.

The WebSocket messages need nothing: every member of ``ClientMessage`` and ``ServerMessage``
(``signaling.messages``) is described, by its ``type``.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from broker.coverage import Coverage
from broker.impact import Impact
from broker.notify.devices import DeviceRegistration
from broker.orgs import Org, QueueSnapshot
from broker.outlook import Outlook
from signaling import messages
from signaling.admin import Because, Resolve, Suspend
from signaling.api import ProfileUpdate
from signaling.circles import (
    AnsweredBody,
    AskedBody,
    CircleBody,
    InvitationBody,
    JoinRequest,
    MembershipBody,
    ProposalAnswer,
    ProposalRequest,
)
from signaling.pages import PAGES, DemoSignIn

VERSION = "1"
COMPONENTS = "#/components/schemas/{model}"

Auth = Literal["none", "user", "admin", "metrics"]

# --- answers: the shapes handlers build as dicts ----------------------------------------------


class Problem(BaseModel):
    """Every error answer: a code a program can act on, and a message for people."""

    error: str = Field(
        description="bad_request, unauthenticated, forbidden, not_found, timeout, unavailable"
    )
    message: str


class Health(BaseModel):
    status: Literal["ok"]
    node: str


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    node: str | None = None
    store: str | None = Field(default=None, description="why the store is unavailable")
    router: str | None = Field(default=None, description="why node routing is unavailable")


class RingWindowOut(BaseModel):
    start: str = Field(description="HH:MM, local time")
    end: str = Field(description="HH:MM, local time")


class DeviceOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    platform: str
    voip: bool
    created: int
    topic: str | None = None
    token_end: str | None = Field(default=None, description="the token's last 8 characters")


class ProfileOut(BaseModel):
    id: str
    role: Literal["recipient", "volunteer", "agent", "admin"]
    display_name: str
    languages: list[str]
    timezone: str
    org: str | None = None
    ring_window: RingWindowOut | None = Field(default=None, description="volunteers only")
    daily_ring_cap: int | None = Field(default=None, description="volunteers only")
    note: str | None = Field(default=None, description="recipients only")
    available: bool | None = Field(default=None, description="volunteers only (GET)")
    devices: list[DeviceOut] | None = Field(default=None, description="helpers only (GET)")


class CallRow(BaseModel):
    call: str
    role: str | None
    language: str
    topic: str | None
    requested: str | None = Field(description="ISO 8601, UTC")
    answered: str | None
    ended: str | None
    reason: str | None
    duration_s: float | None
    answer_s: float | None


class CallHistory(BaseModel):
    calls: list[CallRow]


class IceServers(BaseModel):
    ice_servers: list[dict[str, Any]] = Field(
        description="RTCIceServer dictionaries (urls, and for TURN username and credential)"
    )
    ttl_s: float = Field(description="how long the TURN credentials are valid")


class Directory(BaseModel):
    orgs: list[dict[str, Any]] = Field(description="organisations open to calls, and their queues")


class Page(BaseModel):
    """One page of a list; ``next`` is the ``cursor`` of the following page (null: the last)."""

    model_config = ConfigDict(extra="allow")

    next: str | None


class Restricted(BaseModel):
    restriction: dict[str, Any] | None


class Erased(BaseModel):
    erased: Literal[True]


class WebPushKey(BaseModel):
    public_key: str = Field(
        description="the VAPID public key (base64url, uncompressed P-256) to pass as "
        "applicationServerKey to pushManager.subscribe"
    )


class DemoToken(BaseModel):
    token: str
    user: dict[str, str]


class AnyObject(BaseModel):
    """A JSON object; its fields are described in docs/protocol.md."""

    model_config = ConfigDict(extra="allow")


# --- the routes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class RouteDoc:
    summary: str
    auth: Auth = "user"
    body: type[BaseModel] | None = None  # the JSON request body
    answer: type[BaseModel] | None = None  # the JSON answer (None: no JSON body)
    status: int = 200
    also: dict[int, str] = field(default_factory=dict)  # other success statuses
    query: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()  # beyond those ``auth`` implies
    content: str = "application/json"  # of the answer
    formats: tuple[str, ...] = ()  # other answer media types (format=csv)
    tag: str = "broker"


LIMIT = Param("limit", "page size, 1-200", {"type": "integer", "minimum": 1, "maximum": 200})
CURSOR = Param("cursor", "the previous page's 'next'", {"type": "string", "pattern": "^[0-9]+$"})
FORMAT = Param("format", "json (default) or csv", {"type": "string", "enum": ["json", "csv"]})
UNIX_DAY = {"type": "number", "minimum": 0}

ROUTES: dict[str, RouteDoc] = {
    # operations
    "GET /healthz": RouteDoc("The process is up", auth="none", answer=Health, tag="operations"),
    "GET /readyz": RouteDoc(
        "The node can serve: its store answers and it listens for other nodes",
        auth="none",
        answer=Readiness,
        errors=(503,),
        tag="operations",
    ),
    "GET /metrics": RouteDoc(
        "Prometheus metrics (text exposition format)",
        auth="metrics",
        content="text/plain",
        tag="operations",
    ),
    "GET /v1/openapi.json": RouteDoc(
        "This document: the REST API (OpenAPI 3.1)", auth="none", answer=AnyObject, tag="contract"
    ),
    "GET /v1/asyncapi.json": RouteDoc(
        "The WebSocket protocol's messages (AsyncAPI 3.0)",
        auth="none",
        answer=AnyObject,
        tag="contract",
    ),
    "GET /v1/ws": RouteDoc(
        "The WebSocket: upgrade, then 'hello' with a token (see /v1/asyncapi.json)",
        auth="none",
        status=101,
        errors=(400,),
        tag="websocket",
    ),
    # the signed-in user
    "GET /v1/me/profile": RouteDoc("Your profile", answer=ProfileOut, tag="me"),
    "PUT /v1/me/profile": RouteDoc(
        "Change your profile (the fields sent)",
        body=ProfileUpdate,
        answer=ProfileOut,
        errors=(400, 408),
        tag="me",
    ),
    "GET /v1/me/calls": RouteDoc(
        "Your call history, newest first",
        answer=CallHistory,
        query=(FORMAT,),
        formats=("text/csv",),
        errors=(400,),
        tag="me",
    ),
    "GET /v1/ice-servers": RouteDoc(
        "STUN and TURN servers, with time-limited TURN credentials", answer=IceServers, tag="me"
    ),
    "GET /v1/me/export": RouteDoc("Everything kept about you", answer=AnyObject, tag="me"),
    "DELETE /v1/me": RouteDoc("Erase your account and data", answer=Erased, tag="me"),
    "POST /v1/me/devices": RouteDoc(
        "Register a device to be rung by push",
        body=DeviceRegistration,
        answer=DeviceOut,
        also={201: "registered"},
        errors=(400, 403, 408),
        tag="me",
    ),
    "GET /v1/push/webpush": RouteDoc(
        "The key browsers subscribe to this broker's Web Push with (404: no Web Push)",
        auth="none",
        answer=WebPushKey,
        errors=(404,),
        tag="me",
    ),
    "DELETE /v1/me/devices/{device_id}": RouteDoc(
        "Remove one of your devices", status=204, errors=(404,), tag="me"
    ),
    "GET /v1/me/impact": RouteDoc(
        "A helper's record: calls answered, minutes and people helped, by month",
        answer=Impact,
        query=(FORMAT,),
        formats=("text/csv",),
        errors=(400, 403),
        tag="me",
    ),
    "GET /v1/me/outlook": RouteDoc(
        "A volunteer's outlook: expected time to their next call while on duty, and why",
        answer=Outlook,
        errors=(400, 403),
        tag="me",
    ),
    # trusted circles
    "POST /v1/me/circle/invitations": RouteDoc(
        "Make a one-time invitation code into your circle (recipients)",
        answer=InvitationBody,
        status=201,
        errors=(403, 429),
        tag="circle",
    ),
    "POST /v1/circle/join": RouteDoc(
        "Join a recipient's circle with an invitation code (volunteers)",
        body=JoinRequest,
        answer=MembershipBody,
        errors=(400, 403, 404, 408, 409, 429),
        tag="circle",
    ),
    "GET /v1/me/circle": RouteDoc(
        "Your circle: a recipient's members; a volunteer's circles and requests to join",
        answer=CircleBody,
        errors=(403,),
        tag="circle",
    ),
    "DELETE /v1/me/circle/members/{member}": RouteDoc(
        "Remove a helper from your circle (recipients)", status=204, errors=(403, 404), tag="circle"
    ),
    "DELETE /v1/me/circle/circles/{circle}": RouteDoc(
        "Leave a recipient's circle (volunteers)", status=204, errors=(403, 404), tag="circle"
    ),
    "POST /v1/me/circle/proposals": RouteDoc(
        "Ask the helper of one of your ended calls to join your circle (recipients)",
        body=ProposalRequest,
        answer=AskedBody,
        status=201,
        errors=(400, 403, 404, 408, 409, 429),
        tag="circle",
    ),
    "POST /v1/me/circle/proposals/{proposal}": RouteDoc(
        "Accept or decline a request to join a circle (volunteers)",
        body=ProposalAnswer,
        answer=AnsweredBody,
        errors=(400, 403, 404, 408, 409),
        tag="circle",
    ),
    # organisations
    "GET /v1/orgs": RouteDoc(
        "Organisations to call, with their queues", answer=Directory, tag="orgs"
    ),
    "GET /v1/orgs/{org_id}": RouteDoc(
        "An organisation's settings (webhook secrets are never shown)",
        auth="admin",
        answer=Org,
        errors=(400, 404),
        tag="orgs",
    ),
    "PUT /v1/orgs/{org_id}": RouteDoc(
        "Create or replace an organisation (its id is the path's)",
        auth="admin",
        body=Org,
        answer=Org,
        also={201: "created"},
        errors=(400, 408),
        tag="orgs",
    ),
    "GET /v1/orgs/{org_id}/queue": RouteDoc(
        "An organisation's queues as they are (its agents and admins)",
        answer=QueueSnapshot,
        errors=(400, 403, 404),
        tag="orgs",
    ),
    # administration
    "GET /v1/admin/overview": RouteDoc(
        "Open cases, restrictions and today's figures", auth="admin", answer=AnyObject, tag="admin"
    ),
    "GET /v1/admin/cases": RouteDoc(
        "Cases, newest first",
        auth="admin",
        answer=Page,
        query=(
            LIMIT,
            CURSOR,
            Param("state", "open or resolved"),
            Param("reason", "the report's reason"),
            Param("user", "cases involving this user"),
        ),
        errors=(400,),
        tag="admin",
    ),
    "GET /v1/admin/cases/{id}": RouteDoc(
        "A case, with its call and reports",
        auth="admin",
        answer=AnyObject,
        errors=(404,),
        tag="admin",
    ),
    "POST /v1/admin/cases/{id}/resolve": RouteDoc(
        "Decide a case",
        auth="admin",
        body=Resolve,
        answer=AnyObject,
        errors=(400, 404, 408),
        tag="admin",
    ),
    "GET /v1/admin/users/{id}": RouteDoc(
        "A user: profile, restriction, cases",
        auth="admin",
        answer=AnyObject,
        errors=(404,),
        tag="admin",
    ),
    "POST /v1/admin/users/{id}/suspend": RouteDoc(
        "Suspend a user for some days",
        auth="admin",
        body=Suspend,
        answer=Restricted,
        errors=(400, 404, 408),
        tag="admin",
    ),
    "POST /v1/admin/users/{id}/ban": RouteDoc(
        "Ban a user (and revoke their sign-ins)",
        auth="admin",
        body=Because,
        answer=Restricted,
        errors=(400, 404, 408),
        tag="admin",
    ),
    "POST /v1/admin/users/{id}/reinstate": RouteDoc(
        "Lift a user's restriction",
        auth="admin",
        body=Because,
        answer=Restricted,
        errors=(400, 404, 408),
        tag="admin",
    ),
    "GET /v1/admin/audit": RouteDoc(
        "The audit log, newest first",
        auth="admin",
        answer=Page,
        query=(
            LIMIT,
            CURSOR,
            FORMAT,
            Param("actor", "entries by this admin"),
            Param("target", "entries about this user"),
        ),
        formats=("text/csv",),
        errors=(400,),
        tag="admin",
    ),
    "GET /v1/stats/coverage": RouteDoc(
        "Coverage gaps: requests, answered share, p90 answer time and volunteers on duty by"
        " language and local hour of the week (administrators without an organisation)",
        auth="admin",
        answer=Coverage,
        query=(
            Param(
                "days",
                "days back, 1-90 (default 30)",
                {"type": "integer", "minimum": 1, "maximum": 90},
            ),
            Param("tz", "an IANA time zone for the hours (default UTC)"),
        ),
        errors=(400,),
        tag="admin",
    ),
    "GET /v1/stats": RouteDoc(
        "Daily statistics (global; administrators without an organisation)",
        auth="admin",
        answer=AnyObject,
        query=(
            Param("since", "Unix time; default: a year before 'until'", UNIX_DAY),
            Param("until", "Unix time; default: the end of today", UNIX_DAY),
        ),
        errors=(400,),
        tag="admin",
    ),
    # pages and demo
    "GET /": RouteDoc("Redirects to the browser pages", auth="none", status=302, tag="pages"),
    f"GET {PAGES}": RouteDoc(
        "The browser pages' entry", auth="none", content="text/html", tag="pages"
    ),
    f"GET {PAGES}{{filename}}": RouteDoc(
        "The browser pages' files (scripts, styles, images)",
        auth="none",
        content="application/octet-stream",
        errors=(404,),
        tag="pages",
    ),
    "POST /v1/demo/token": RouteDoc(
        "Demo mode only: a token for anyone (404 otherwise)",
        auth="none",
        body=DemoSignIn,
        answer=DemoToken,
        errors=(400, 404, 408, 429),
        tag="pages",
    ),
}

_ERROR_TEXT = {
    400: "The request is not valid; the message names what is wrong",
    401: "No token, or a token that is not valid",
    403: "Not allowed for this user",
    404: "Not found",
    408: "The body did not arrive in time",
    409: "In conflict with the current state (already used, already a member, full)",
    429: "Too many requests",
    503: "The service is briefly unavailable; try again",
}


# --- registered routes ------------------------------------------------------------------------


def registered_routes(app: web.Application) -> set[str]:
    """ "METHOD /path" of every route the app serves (HEAD, which aiohttp adds beside each GET,
    left out); a static directory as ``/prefix/{filename}``."""
    found: set[str] = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS"):
            continue
        resource = route.resource
        if resource is None:
            continue
        path = resource.canonical
        if isinstance(resource, web.StaticResource):
            path = path.rstrip("/") + "/{filename}"
        found.add(f"{route.method} {path}")
    return found


# --- OpenAPI --------------------------------------------------------------------------------


def _models() -> list[type[BaseModel]]:
    seen: dict[str, type[BaseModel]] = {"Problem": Problem}
    for doc in ROUTES.values():
        for model in (doc.body, doc.answer):
            if model is not None:
                seen.setdefault(model.__name__, model)
    return list(seen.values())


def _schemas(
    models: list[type[BaseModel]], mode: Literal["validation", "serialization"] = "validation"
) -> dict[str, Any]:
    """The components' schemas of ``models`` and of the models they use, each under its class
    name (two models of one name are an error: rename one)."""
    names = [m.__name__ for m in models]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two models share the name(s) {', '.join(twice)}: rename one")
    found, top = models_json_schema([(m, mode) for m in models], ref_template=COMPONENTS)
    defs = dict(top.get("$defs", {}))
    for (model, _), schema in found.items():
        ref = schema.get("$ref")
        if ref is None:
            defs[model.__name__] = schema
        elif ref != COMPONENTS.format(model=model.__name__):
            raise ValueError(f"{model.__name__} is described as {ref}: rename one of the models")
    return defs


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": COMPONENTS.format(model=model.__name__)}


def _path_params(path: str) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
    return [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string", "maxLength": 128}}
        for n in names
    ]


def _operation(key: str, doc: RouteDoc) -> dict[str, Any]:
    method, path = key.split(" ", 1)
    op: dict[str, Any] = {
        "operationId": _operation_id(method, path),
        "summary": doc.summary,
        "tags": [doc.tag],
    }
    params = _path_params(path) + [
        {
            "name": p.name,
            "in": "query",
            "required": p.required,
            "description": p.description,
            "schema": p.schema,
        }
        for p in doc.query
    ]
    if params:
        op["parameters"] = params
    if doc.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(doc.body)}},
        }
    responses: dict[str, Any] = {}
    success: dict[str, Any] = {"description": doc.summary}
    if doc.answer is not None:
        content = {doc.content: {"schema": _ref(doc.answer)}}
        for media in doc.formats:
            content[media] = {"schema": {"type": "string"}}
        success["content"] = content
    elif doc.status not in (101, 204, 302):
        success["content"] = {doc.content: {"schema": {"type": "string"}}}
    responses[str(doc.status)] = success
    for status, what in doc.also.items():
        responses[str(status)] = {**success, "description": what}
    errors = set(doc.errors)
    if doc.auth in ("user", "admin"):
        errors |= {401, 503}
        op["security"] = [{"bearer": []}]
    if doc.auth == "admin":
        errors.add(403)
    if doc.auth == "metrics":
        errors |= {401, 403}
        op["security"] = [{"metrics": []}, {}]
    for status in sorted(errors):
        responses[str(status)] = {
            "description": _ERROR_TEXT[status],
            "content": {"application/json": {"schema": _ref(Problem)}},
        }
    op["responses"] = responses
    return op


def _operation_id(method: str, path: str) -> str:
    words = [w.strip("{}").replace(".", "_").replace("-", "_") for w in path.split("/") if w]
    return "_".join([method.lower(), *words]) or method.lower()


def openapi_document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for key, doc in sorted(ROUTES.items(), key=lambda kv: kv[0].split(" ", 1)[::-1]):
        method, path = key.split(" ", 1)
        paths.setdefault(path, {})[method.lower()] = _operation(key, doc)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vabroker",
            "version": VERSION,
            "description": (
                "The live video-assistance broker's HTTP API. Calls themselves run over the "
                "WebSocket at /v1/ws, described at /v1/asyncapi.json."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(_models()),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A token from the identity provider",
                },
                "metrics": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "VABROKER_METRICS_TOKEN, when set",
                },
            },
        },
    }


# --- AsyncAPI -------------------------------------------------------------------------------


def message_models(union: Any) -> dict[str, type[BaseModel]]:
    """The members of a discriminated union of messages, by their ``type``."""
    members = typing.get_args(typing.get_args(union)[0])
    found: dict[str, type[BaseModel]] = {}
    for model in members:
        (kind,) = typing.get_args(model.model_fields["type"].annotation)
        found[str(kind)] = model
    return found


def _message_id(kind: str) -> str:
    return kind.replace(".", "_")


def asyncapi_document() -> dict[str, Any]:
    client = message_models(messages.ClientMessage)
    server = message_models(messages.ServerMessage)
    # A type may name a message each way (``availability``: asked, and the state told back).
    models = list(dict.fromkeys([*client.values(), *server.values()]))
    schemas = _schemas(models)
    components: dict[str, Any] = {}
    for direction, found in (("client", client), ("server", server)):
        for kind, model in found.items():
            components[f"{direction}_{_message_id(kind)}"] = {
                "name": kind,
                "title": f"{kind} ({'client to broker' if direction == 'client' else 'broker to client'})",
                "summary": (model.__doc__ or kind).strip().split("\n")[0],
                "contentType": "application/json",
                "payload": _ref(model),
            }
    channel_messages = {mid: {"$ref": f"#/components/messages/{mid}"} for mid in components}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "vabroker WebSocket protocol",
            "version": VERSION,
            "description": (
                "One JSON object per text frame, each with a 'type'. The first client message "
                "is 'hello' with a token; a request may carry 'ref', echoed in its answer. "
                "See docs/protocol.md."
            ),
        },
        "defaultContentType": "application/json",
        "channels": {
            "session": {
                "address": "/v1/ws",
                "description": "A signed-in user's session",
                "messages": channel_messages,
            }
        },
        "operations": {
            "fromClient": {
                "action": "receive",
                "channel": {"$ref": "#/channels/session"},
                "summary": "Messages a client sends the broker",
                "messages": [
                    {"$ref": f"#/channels/session/messages/client_{_message_id(k)}"} for k in client
                ],
            },
            "toClient": {
                "action": "send",
                "channel": {"$ref": "#/channels/session"},
                "summary": "Messages the broker sends a client",
                "messages": [
                    {"$ref": f"#/channels/session/messages/server_{_message_id(k)}"} for k in server
                ],
            },
        },
        "components": {"messages": components, "schemas": schemas},
    }


# --- serving --------------------------------------------------------------------------------

OPENAPI = web.AppKey[dict[str, Any]]("openapi")
ASYNCAPI = web.AppKey[dict[str, Any]]("asyncapi")


async def serve_openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


async def serve_asyncapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[ASYNCAPI])


def add_routes(app: web.Application) -> None:
    app[OPENAPI] = openapi_document()
    app[ASYNCAPI] = asyncapi_document()
    app.router.add_get("/v1/openapi.json", serve_openapi)
    app.router.add_get("/v1/asyncapi.json", serve_asyncapi)


def contract_gaps(app: web.Application) -> list[str]:
    """What keeps ``ROUTES`` from describing exactly the routes ``app`` registers, one line per
    route, saying what to do."""
    registered = registered_routes(app)
    gaps = [
        f"{key} is registered but not documented: add ROUTES[{key!r}] = RouteDoc(...) "
        "in signaling/openapi.py"
        for key in sorted(registered - ROUTES.keys())
    ]
    gaps += [
        f"{key} is documented in signaling/openapi.py ROUTES but the app does not register it: "
        "remove or correct the entry"
        for key in sorted(ROUTES.keys() - registered)
    ]
    return gaps
