"""Partner organisations over HTTP: the directory, the admin API and the agents' queue view.

| route | who |
| --- | --- |
| ``GET /v1/orgs`` | any user: the directory |
| ``GET /v1/orgs/{id}``, ``PUT /v1/orgs/{id}`` | admins (an admin with an ``org`` claim: that org only) |
| ``GET /v1/orgs/{id}/queue`` | that org's agents and admins |

Also wires the webhook sender to the broker's queues for the server's lifetime.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from prometheus_client import Gauge

from broker.model import Role
from broker.moderation import AuditAction
from broker.orgs import WEEKDAYS, Org, check_id, is_open, next_closing, next_opening
from signaling.api import ApiError, authenticate, read_object, validate_body
from signaling.app import CONTEXT
from signaling.auth import Claims
from signaling.pages import DEMO_ORG
from signaling.webhooks import WebhookSender, refused_host


def _iso(ts: float | None, timezone: str) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, ZoneInfo(timezone)).isoformat(timespec="minutes")


def _org_id(request: web.Request) -> str:
    org_id = request.match_info["org_id"]
    try:
        return check_id(org_id, "organisation id")
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"id: {exc}") from None


def _may_admin(claims: Claims, org_id: str) -> bool:
    return claims.role is Role.ADMIN and claims.org in (None, org_id)


def org_body(org: Org) -> dict[str, Any]:
    body = org.public().model_dump(mode="json")
    for queue, original in zip(body["queues"], org.queues, strict=True):
        queue.pop("webhook_secret", None)
        queue["webhook_secret_set"] = original.webhook_secret is not None
    return body


def directory_entry(org: Org, now: float) -> dict[str, Any]:
    open_now = is_open(org, now)
    return {
        "id": org.id,
        "name": org.name,
        "description": org.description,
        "languages": list(org.languages),
        "timezone": org.timezone,
        "open_now": open_now,
        "closes_at": _iso(next_closing(org, now), org.timezone) if open_now else None,
        "next_opening": _iso(next_opening(org, now), org.timezone),
        "queues": [
            {"id": q.id, "name": q.name, "languages": list(q.languages)} for q in org.queues
        ],
    }


async def directory(request: web.Request) -> web.Response:
    ctx, _, _ = await authenticate(request)
    now = ctx.clock.now()
    orgs = await ctx.store.list_orgs()
    return web.json_response({"orgs": [directory_entry(org, now) for org in orgs]})


async def get_org(request: web.Request) -> web.Response:
    ctx, claims, _ = await authenticate(request)
    org_id = _org_id(request)
    if not _may_admin(claims, org_id):
        raise ApiError(403, "forbidden", "Only administrators read an organisation's settings.")
    org = await ctx.store.get_org(org_id)
    if org is None:
        raise ApiError(404, "not_found", f"There is no organisation {org_id!r}.")
    return web.json_response(org_body(org))


async def put_org(request: web.Request) -> web.Response:
    ctx, claims, _ = await authenticate(request)
    org_id = _org_id(request)
    if not _may_admin(claims, org_id):
        raise ApiError(403, "forbidden", "Only administrators change an organisation.")
    body = await read_object(request, "the organisation")
    if body.get("id", org_id) != org_id:
        raise ApiError(
            400, "bad_request", f"id: the body names {body['id']!r}, the URL {org_id!r}."
        )
    old = await ctx.store.get_org(org_id)
    queues = body.get("queues")
    if old is not None and isinstance(queues, list):
        # Secrets are write-only: a queue sent back without one keeps the one it had.
        for queue in queues:
            queue_id = queue.get("id") if isinstance(queue, dict) else None
            if (
                isinstance(queue, dict)
                and isinstance(queue_id, str)
                and "webhook_secret" not in queue
            ):
                before = old.queue(queue_id)
                if before is not None and before.webhook_secret is not None:
                    queue["webhook_secret"] = before.webhook_secret
    org = validate_body(Org, {**body, "id": org_id})
    for n, queue in enumerate(org.queues):
        host = (queue.webhook_url.host or "") if queue.webhook_url is not None else None
        refused = None
        if host is not None and not ctx.settings.webhook_allow_private:
            refused = refused_host(host)
        if refused is not None:
            raise ApiError(
                400,
                "bad_request",
                f"queues.{n}.webhook_url: {host} is a {refused} address; webhooks go to public "
                "addresses only.",
            )
        if queue.webhook_url is not None and queue.webhook_secret is None:
            raise ApiError(
                400,
                "bad_request",
                f"queues.{queue.id}.webhook_secret: a webhook needs a secret to sign with "
                "(at least 16 characters).",
            )
    await ctx.store.put_org(org)
    await ctx.broker.safety.record(
        claims.sub,
        claims.role.value,
        AuditAction.ORG_PUT,
        org.id,
        "Organisation created." if old is None else "Organisation changed.",
        org=org.id,
        detail={"queues": [q.id for q in org.queues], "created": old is None},
    )
    ctx.hub.deliver(await ctx.broker.queues.reconfigured(org.id))
    return web.json_response(org_body(org), status=200 if old else 201)


async def queue_view(request: web.Request) -> web.Response:
    ctx, claims, _ = await authenticate(request)
    org_id = _org_id(request)
    member = claims.role is Role.AGENT and claims.org == org_id
    if not (member or _may_admin(claims, org_id)):
        raise ApiError(
            403, "forbidden", "Only this organisation's agents and admins see its queue."
        )
    snapshot = await ctx.broker.queues.snapshot(org_id)
    if snapshot is None:
        raise ApiError(404, "not_found", f"There is no organisation {org_id!r}.")
    return web.json_response(snapshot.model_dump(mode="json"))


def demo_org() -> Org:
    """The organisation demo agents belong to (``--demo`` only): open round the clock."""
    return Org.model_validate(
        {
            "id": DEMO_ORG,
            "name": "Demo organisation",
            "description": "A partner queue to try: sign in a demo agent to answer it.",
            "languages": ["en"],
            "timezone": "UTC",
            "hours": {day: [{"open": "00:00", "close": "24:00"}] for day in WEEKDAYS},
            "queues": [{"id": "help", "name": "Help desk", "languages": ["en"]}],
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/orgs", directory)
    app.router.add_get("/v1/orgs/{org_id}", get_org)
    app.router.add_put("/v1/orgs/{org_id}", put_org)
    app.router.add_get("/v1/orgs/{org_id}/queue", queue_view)
    ctx = app[CONTEXT]
    s = ctx.settings
    sender = WebhookSender(
        ctx.metrics.registry,
        attempts=s.webhook_attempts,
        first_retry_s=s.webhook_first_retry_s,
        timeout_s=s.webhook_timeout_s,
        allow_private=s.webhook_allow_private,
        store=ctx.store,
        lease_s=s.webhook_lease_s,
        poll_s=s.webhook_poll_s,
        node=ctx.node_id,
    )
    ctx.extras["webhooks"] = sender
    ctx.broker.queues.webhooks.append(sender.submit)
    app.cleanup_ctx.append(sender.lifespan)
    app.on_shutdown.append(sender.stop)  # before the store closes
    waiting = Gauge(
        "vabroker_queue_waiting",
        "Calls waiting in an organisation's queues, as this node last saw them",
        ["org"],
        registry=ctx.metrics.registry,
    )
    ctx.broker.queues.lengths.append(lambda org, n: waiting.labels(org).set(n))

    if ctx.settings.demo:

        async def demo(app: web.Application) -> None:
            if await ctx.store.get_org(DEMO_ORG) is None:
                await ctx.store.put_org(demo_org())

        app.on_startup.append(demo)
