"""The HTTP API: health, metrics, the user's profile and history, ICE servers, statistics."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from broker.impact import IMPACT_CALLS, impact_of
from broker.model import (
    BrokerError,
    Call,
    ErrorCode,
    Language,
    MultilineText,
    PlainText,
    Profile,
    RingWindow,
    Role,
    TimeZone,
)
from broker.outlook import RequestHistory, outlook, request_history
from broker.store.base import StoreUnavailable
from signaling import jsonin
from signaling.app import CONTEXT, Context
from signaling.auth import AuthError, Claims, revoked
from signaling.csvout import write_csv

M = TypeVar("M", bound=BaseModel)


def problem(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    @classmethod
    def refused(cls, exc: BrokerError) -> ApiError:
        """The broker's refusal as an HTTP answer, its code and words kept."""
        return cls(_REFUSAL_STATUS.get(exc.code, 400), exc.code.value, exc.message)


_REFUSAL_STATUS = {
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.RATE_LIMITED: 429,
}


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as exc:
        return problem(exc.status, exc.code, exc.message)
    except StoreUnavailable:
        return problem(
            503, "unavailable", "The service is briefly unavailable. Please try again in a moment."
        )
    except web.HTTPException as exc:
        if exc.status < 400 or request.path == "/v1/ws":
            raise
        code = {401: "unauthenticated", 403: "forbidden", 404: "not_found"}.get(
            exc.status, "bad_request"
        )
        return problem(exc.status, code, exc.reason)


async def authenticate(request: web.Request) -> tuple[Context, Claims, Profile]:
    ctx = request.app[CONTEXT]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthenticated", "Send 'Authorization: Bearer <token>'.")
    try:
        claims = await ctx.auth.check(token.strip())
    except AuthError as exc:
        raise ApiError(401, "unauthenticated", str(exc)) from None
    if revoked(claims, await ctx.store.revoked_before(claims.sub)):
        raise ApiError(401, "unauthenticated", "This sign-in was revoked. Sign in again.")
    return ctx, claims, await ctx.profile_for(claims)


async def read_json(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise ApiError(
            400, "bad_request", "Send a JSON body with 'Content-Type: application/json'."
        )
    limit = request.app[CONTEXT].settings.http_body_timeout_s
    try:
        async with asyncio.timeout(limit):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(
            408, "timeout", f"The body did not arrive within {limit:g} seconds."
        ) from None
    try:
        return jsonin.decode(raw)
    except jsonin.JsonRejected as exc:
        raise ApiError(400, "bad_request", f"The body {exc}") from None


async def read_object(request: web.Request, what: str) -> dict[str, Any]:
    """The body as a JSON object; ``what`` says what it should describe, for the error."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", f"The body must be a JSON object: {what}.")
    return body


async def read_model(request: web.Request, model: type[M], what: str) -> M:
    """The body parsed into ``model``; a 400 naming each bad field otherwise."""
    return validate_body(model, await read_object(request, what))


def validate_body(model: type[M], body: dict[str, Any]) -> M:
    """``body`` (decoded JSON) as ``model``, strictly: JSON's own types only, so ``true`` is not
    1 and ``"5"`` is not 5. Validated as JSON text, where strict mode still reads the types JSON
    lacks from their usual strings ("2026-12-25", "09:30", an enum's value, a URL)."""
    try:
        return model.model_validate_json(json.dumps(body), strict=True)
    except ValidationError as exc:
        raise validation_problem(exc) from None


def validation_problem(exc: ValidationError) -> ApiError:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        # A field name comes from the client (an unknown key): never echo a long one whole.
        parts.append(f"{where[:100]}: {err['msg'][:300]}")
    return ApiError(400, "bad_request", "; ".join(parts))


# --- health and metrics -----------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "node": request.app[CONTEXT].node_id})


async def readyz(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    try:
        await ctx.store.ping()
    except StoreUnavailable as exc:
        return web.json_response({"status": "unavailable", "store": str(exc)}, status=503)
    if not ctx.hub.router.listening:
        return web.json_response(
            {"status": "unavailable", "router": "not subscribed to this node's channel"},
            status=503,
        )
    return web.json_response({"status": "ready", "node": ctx.node_id})


async def metrics(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    allow = ctx.settings.metrics_allow
    if allow and not _address_in(request.remote, allow):
        raise ApiError(403, "forbidden", "Metrics are not served to this address.")
    token = ctx.settings.metrics_token
    if token is not None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        expected = token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise ApiError(401, "unauthenticated", "Metrics need 'Authorization: Bearer <token>'.")
    body = ctx.metrics.render()
    return web.Response(
        body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


def _address_in(remote: str | None, networks: list[str]) -> bool:
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in networks)


# --- profile ----------------------------------------------------------------------------------


class ProfileUpdate(BaseModel):
    """``PUT /v1/me/profile``: replaces the fields it names. Unknown fields are an error, so a
    misspelt field is reported rather than silently dropped."""

    model_config = ConfigDict(extra="forbid")

    display_name: PlainText | None = Field(default=None, min_length=1, max_length=120)
    languages: list[Language] | None = Field(default=None, min_length=1, max_length=10)
    timezone: TimeZone | None = None
    ring_window: RingWindow | None = None
    daily_ring_cap: int | None = Field(default=None, ge=0, le=1000)
    note: MultilineText | None = Field(default=None, max_length=1000)

    @model_validator(mode="before")
    @classmethod
    def _no_null_for_kept_fields(cls, data: Any) -> Any:
        # ``None`` is the "not sent" default; a profile always has these, so an explicit null
        # would otherwise reach the store as a profile without a name or languages.
        if isinstance(data, dict):
            nulls = sorted(k for k, v in data.items() if v is None and k in _NOT_NULL)
            if nulls:
                raise ValueError(
                    f"{', '.join(nulls)}: may not be null; leave a field out to keep it"
                )
            window = data.get("ring_window")
            if isinstance(window, dict) and not {"start", "end"} <= window.keys():
                # A window replaces the whole window: a missing end would become 22:00.
                raise ValueError("ring_window: give both start and end, as HH:MM")
        return data


_NOT_NULL = frozenset({"display_name", "languages", "timezone", "ring_window", "daily_ring_cap"})


def profile_body(profile: Profile) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": profile.user_id,
        "role": profile.role.value,
        "display_name": profile.display_name,
        "languages": list(profile.languages),
        "timezone": profile.timezone,
    }
    if profile.org:
        body["org"] = profile.org
    if profile.role.is_on_duty_helper:
        body["ring_window"] = profile.ring_window.as_wire()
        body["daily_ring_cap"] = profile.daily_ring_cap
    if profile.role is Role.RECIPIENT:
        body["note"] = profile.note
    return body


async def get_profile(request: web.Request) -> web.Response:
    ctx, _, profile = await authenticate(request)
    body = profile_body(profile)
    if profile.role.is_on_duty_helper:
        # On duty survives a reload of the page and a reconnect: a client shows it from here.
        body["available"] = await ctx.store.is_on_duty(profile.user_id)
    if profile.role.is_helper:
        body["devices"] = [d.wire() for d in await ctx.store.devices(profile.user_id)]
    return web.json_response(body)


async def put_profile(request: web.Request) -> web.Response:
    ctx, _, profile = await authenticate(request)
    update = await read_model(request, ProfileUpdate, "the profile fields to change")
    fields = update.model_dump(exclude_unset=True)
    volunteer_only = {"ring_window", "daily_ring_cap"} & fields.keys()
    if volunteer_only and not profile.role.is_on_duty_helper:
        raise ApiError(
            400,
            "bad_request",
            f"{', '.join(sorted(volunteer_only))}: only volunteers and assistants have these.",
        )
    if "note" in fields and profile.role is not Role.RECIPIENT:
        raise ApiError(400, "bad_request", "note: only recipients leave a note for helpers.")
    if "ring_window" in fields:
        fields["ring_window"] = update.ring_window
    profile = profile.model_copy(update=fields)
    await ctx.store.put_profile(profile)
    return web.json_response(profile_body(profile))


# --- history ----------------------------------------------------------------------------------

CSV_COLUMNS = [
    "call",
    "role",
    "language",
    "topic",
    "requested",
    "answered",
    "ended",
    "reason",
    "duration_s",
    "answer_s",
    "escalation",
    "retry_after_s",
]


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts is not None else None


def call_row(call: Call, user_id: str) -> dict[str, Any]:
    role = call.party_of(user_id)
    duration = call.duration_s
    answer = call.answer_time_s
    return {
        "call": call.id,
        "role": role.value if role else None,
        "language": call.language,
        "topic": call.topic,
        "requested": _iso(call.requested_at),
        "answered": _iso(call.assigned_at),
        "ended": _iso(call.ended_at),
        "reason": call.end_reason.value if call.end_reason else None,
        "duration_s": round(duration, 1) if duration is not None else None,
        "answer_s": round(answer, 1) if answer is not None else None,
        # Nobody answered the volunteer search: handed to a help centre, or told to retry.
        "escalation": call.escalation.value if call.escalation else None,
        "retry_after_s": call.retry_after_s,
    }


async def my_calls(request: web.Request) -> web.StreamResponse:
    ctx, claims, _ = await authenticate(request)
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise ApiError(400, "bad_request", "format must be json or csv.")
    rows = [call_row(c, claims.sub) for c in await ctx.store.calls_of(claims.sub)]
    if fmt == "json":
        return web.json_response({"calls": rows})
    return web.Response(
        text=write_csv(CSV_COLUMNS, rows),
        content_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="calls.csv"'},
    )


IMPACT_CSV_COLUMNS = ["month", "calls", "minutes", "people"]


async def my_impact(request: web.Request) -> web.Response:
    """``GET /v1/me/impact``: what the helper did, from their own answered calls."""
    ctx, claims, profile = await authenticate(request)
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise ApiError(400, "bad_request", "format must be json or csv.")
    if not profile.role.is_helper:
        raise ApiError(
            403, "forbidden", "Only volunteers and agents have a record of calls answered."
        )
    calls = await ctx.store.calls_of(claims.sub, limit=IMPACT_CALLS)
    impact = impact_of(claims.sub, calls, profile.timezone)
    if fmt == "json":
        return web.json_response(impact.model_dump(mode="json"))
    rows: list[dict[str, object]] = [m.model_dump() for m in impact.by_month]
    rows.append(
        {
            "month": "total",
            "calls": impact.calls_answered,
            "minutes": impact.minutes_helped,
            "people": impact.people_helped,
        }
    )
    return web.Response(
        text=write_csv(IMPACT_CSV_COLUMNS, rows),
        content_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="impact.csv"'},
    )


# How long a node reuses the period's request history for outlooks: the figures move with
# days of calls, and one read of a month of calls per volunteer would be a country's load.
OUTLOOK_HISTORY_TTL_S = 300.0


class OutlookQuery(BaseModel):
    """``GET /v1/me/outlook`` takes no parameters: anything sent is refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


async def my_outlook(request: web.Request) -> web.Response:
    """``GET /v1/me/outlook``: a volunteer's expected time to their next call while on duty,
    and the figures it comes from (``broker.outlook``)."""
    ctx, _, profile = await authenticate(request)
    try:
        OutlookQuery.model_validate(dict(request.query))
    except ValidationError as exc:
        raise validation_problem(exc) from None
    if profile.role is not Role.VOLUNTEER:
        raise ApiError(403, "forbidden", "Only volunteers are rung by the volunteer search.")
    now = ctx.clock.now()
    history = ctx.extras.get("outlook_history")
    if not isinstance(history, RequestHistory) or not (
        now - OUTLOOK_HISTORY_TTL_S <= history.now <= now
    ):
        history = await request_history(ctx.store, now)
        ctx.extras["outlook_history"] = history
    report = await outlook(ctx.store, profile, now, ctx.broker.settings, history)
    return web.json_response(report.model_dump(mode="json"))


async def my_ice_servers(request: web.Request) -> web.Response:
    ctx, claims, _ = await authenticate(request)
    return web.json_response(
        {"ice_servers": ctx.ice_servers(claims.sub), "ttl_s": ctx.settings.turn_ttl_s}
    )


# API answers carry a bearer's data: never cached, never sniffed as another type.
API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


async def _api_headers(request: web.Request, response: web.StreamResponse) -> None:
    # Not on a WebSocket's 101, which is neither cached nor sniffed: its headers are kept as
    # long as the connection, and these two cost 0.4 to 0.7 KB of memory per connection.
    if isinstance(response, web.WebSocketResponse):
        return
    if request.path.startswith("/v1/"):
        for name, value in API_HEADERS.items():
            response.headers.setdefault(name, value)


def add_routes(app: web.Application) -> None:
    app.on_response_prepare.append(_api_headers)
    app.middlewares.append(errors)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/me/profile", get_profile)
    app.router.add_put("/v1/me/profile", put_profile)
    app.router.add_get("/v1/me/calls", my_calls)
    app.router.add_get("/v1/me/impact", my_impact)
    app.router.add_get("/v1/me/outlook", my_outlook)
    app.router.add_get("/v1/ice-servers", my_ice_servers)
