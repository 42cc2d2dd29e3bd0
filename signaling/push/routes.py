"""``POST /v1/me/devices`` and ``DELETE /v1/me/devices/{id}``: helpers register the phones and
browsers they want to be rung on."""

from __future__ import annotations

from aiohttp import web

from broker.notify.devices import MAX_DEVICES, Device, DeviceRegistration, Platform
from signaling.api import ApiError, authenticate, read_model
from signaling.push.webpush import host_allowed

ENABLED = web.AppKey("push_platforms", frozenset[Platform])
WEBPUSH_HOSTS = web.AppKey("webpush_hosts", list[str])
# The VAPID public key (base64url, uncompressed P-256) browsers subscribe with; None without
# Web Push.
WEBPUSH_KEY: web.AppKey[str | None] = web.AppKey("webpush_key")


async def webpush_key(request: web.Request) -> web.Response:
    """``GET /v1/push/webpush``: the key a browser passes as ``applicationServerKey`` to
    ``pushManager.subscribe``, so that this broker's pushes reach it. Public, like any VAPID
    key; 404 when this broker sends no Web Push."""
    key = request.app[WEBPUSH_KEY]
    if key is None:
        raise ApiError(404, "not_found", "This server does not send Web Push.")
    return web.json_response({"public_key": key})


async def add_device(request: web.Request) -> web.Response:
    ctx, claims, profile = await authenticate(request)
    if not profile.role.is_helper:
        raise ApiError(403, "forbidden", "Only volunteers and agents register devices to be rung.")
    reg = await read_model(request, DeviceRegistration, "the device to register")
    if reg.platform not in request.app[ENABLED]:
        raise ApiError(
            400,
            "bad_request",
            f"platform: this server does not send {reg.platform.value} pushes "
            f"(it sends: {', '.join(sorted(p.value for p in request.app[ENABLED])) or 'none'}).",
        )
    if reg.subscription is not None and not host_allowed(
        reg.subscription.host, request.app[WEBPUSH_HOSTS]
    ):
        raise ApiError(
            400,
            "bad_request",
            f"subscription.endpoint: {reg.subscription.host!r} is not a push service this "
            "server sends to.",
        )
    device = Device.register(claims.sub, reg, ctx.clock.now())
    mine = await ctx.store.devices(claims.sub)
    replacing = any(d.address == device.address for d in mine)
    if not replacing and len(mine) >= MAX_DEVICES:
        raise ApiError(
            400,
            "bad_request",
            f"You have {MAX_DEVICES} devices registered, the most allowed; remove one first.",
        )
    device = await ctx.store.add_device(device)
    return web.json_response(device.wire(), status=200 if replacing else 201)


async def remove_device(request: web.Request) -> web.Response:
    ctx, claims, _ = await authenticate(request)
    device_id = request.match_info["device_id"]
    if len(device_id) > 64 or not await ctx.store.remove_device(claims.sub, device_id):
        raise ApiError(404, "not_found", "You have no device with that id.")
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/me/devices", add_device)
    app.router.add_delete("/v1/me/devices/{device_id}", remove_device)
    app.router.add_get("/v1/push/webpush", webpush_key)
