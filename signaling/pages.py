"""The browser clients: static pages under ``clients/web`` and, in demo mode, a demo sign-in.

The pages take their token from the URL fragment (never a query string: fragments do not reach
server logs or ``Referer`` headers) or from a ``postMessage`` by the deployment's sign-in page.
``vabroker serve --demo`` adds ``POST /v1/demo/token``, which mints tokens for demo users so that
a person can try a whole call in two browser tabs; without demo mode that route answers 404.
"""

from __future__ import annotations

import secrets
from importlib import resources
from pathlib import Path
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from broker.model import Language, PlainText, Profile, RingWindow, Role, TimeZone
from signaling.api import ApiError, read_model
from signaling.app import CONTEXT
from signaling.auth import mint

PAGES = "/app/"
DEMO_ORG = "demo-org"

# Pages hold a bearer token in memory: no third-party script, frame or referrer may see it.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; media-src 'self' blob: mediastream:; "
        "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Permissions-Policy": "camera=(self), microphone=(self)",
}


def web_root() -> Path:
    """Where the pages are: inside the installed ``clients`` package (package data)."""
    return Path(str(resources.files("clients") / "web"))


class DemoSignIn(BaseModel):
    """``POST /v1/demo/token``: who to be. Unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["recipient", "volunteer", "agent", "admin"]
    name: PlainText | None = Field(default=None, min_length=1, max_length=120)
    languages: list[Language] = Field(default_factory=lambda: ["en"], min_length=1, max_length=10)
    timezone: TimeZone = "UTC"
    org: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$")


async def demo_token(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    if not ctx.settings.demo:
        raise ApiError(
            404,
            "not_found",
            "Demo sign-in is off on this broker. Start it with 'vabroker serve --demo' to try the "
            "pages with demo users, or sign in through your organisation.",
        )
    if ctx.settings.jwt_secret is None:
        raise ApiError(
            403,
            "forbidden",
            "Demo sign-in needs the broker's HS256 secret (VABROKER_JWT_SECRET); this broker "
            "only verifies tokens from an identity provider.",
        )
    # Tokens for anyone who asks: few per address, short-lived, and never for a real
    # organisation. Behind a proxy every client shares its address: demo mode is for trying.
    hits = await ctx.store.hit(f"demo|{request.remote}", ctx.clock.now(), 3600.0)
    if hits > ctx.settings.demo_signins_per_hour:
        raise ApiError(
            429,
            "rate_limited",
            f"At most {ctx.settings.demo_signins_per_hour} demo sign-ins an hour from one address; "
            "please wait a while.",
        )
    who = await read_model(request, DemoSignIn, "the demo sign-in, with a 'role'")
    role = Role(who.role)
    if who.org is not None and who.org != DEMO_ORG:
        raise ApiError(
            403,
            "forbidden",
            f"org: demo sign-in gives access to the demo organisation {DEMO_ORG!r} only.",
        )
    org = DEMO_ORG if role is Role.AGENT else None
    sub = f"demo-{role.value}-{secrets.token_hex(6)}"
    name = who.name or f"Demo {role.value} {sub[-4:]}"
    # Demo volunteers take rings at any hour and never hit a ring cap: a person trying the pages
    # late at night should still see a call go through.
    await ctx.store.put_profile(
        Profile(
            user_id=sub,
            role=role,
            org=org,
            display_name=name,
            languages=list(who.languages),
            timezone=who.timezone,
            ring_window=RingWindow.model_validate({"start": "00:00", "end": "00:00"}),
            daily_ring_cap=1000,
        )
    )
    token = mint(
        ctx.settings.jwt_secret.get_secret_value(),
        sub=sub,
        role=role,
        name=name,
        org=org,
        languages=list(who.languages),
        timezone=who.timezone,
        ttl_s=ctx.settings.demo_token_ttl_s,
        now=ctx.clock.now(),
    )
    body_out: dict[str, object] = {"token": token, "user": {"id": sub, "role": role.value}}
    if org:
        body_out["user"] = {"id": sub, "role": role.value, "org": org}
    return web.json_response(body_out)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(web_root() / "index.html")


async def to_pages(request: web.Request) -> web.Response:
    raise web.HTTPFound(PAGES)


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    if isinstance(response, web.WebSocketResponse):
        return  # the broker's socket, not a page
    if request.path == "/" or request.path.startswith(PAGES):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        # Pages change with the broker; a stale module against a newer protocol helps no one.
        response.headers.setdefault("Cache-Control", "no-cache")


def add_routes(app: web.Application) -> None:
    root = web_root()
    if not (root / "index.html").is_file():
        raise RuntimeError(f"the browser pages are missing from {root}: reinstall vabroker")
    app.router.add_get("/", to_pages)
    app.router.add_get(PAGES, index)
    app.router.add_static(PAGES, root, follow_symlinks=False)
    app.router.add_post("/v1/demo/token", demo_token)
    app.on_response_prepare.append(_headers)
