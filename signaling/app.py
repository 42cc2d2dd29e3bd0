"""The aiohttp application: wiring of settings, store, broker, hub and routes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from broker.clock import Clock, RealClock
from broker.model import Profile, lean
from broker.policies import build_policy
from broker.service import Broker
from broker.store import Store, open_store, shown_url
from signaling.auth import Authenticator, Claims, KeySet
from signaling.config import Settings
from signaling.hub import Hub
from signaling.lobby import LobbyWatchers
from signaling.metrics import Metrics
from signaling.turn import ice_servers

log = logging.getLogger("vabroker.app")


@dataclass
class Context:
    """Everything a request handler needs; one per server."""

    settings: Settings
    store: Store
    clock: Clock
    broker: Broker
    auth: Authenticator
    metrics: Metrics
    hub: Hub
    node_id: str
    lobby: LobbyWatchers
    extras: dict[str, Any] = field(default_factory=dict)

    def ice_servers(self, user_id: str) -> list[dict[str, Any]]:
        s = self.settings
        secret = s.turn_secret.get_secret_value() if s.turn_secret else None
        return ice_servers(
            s.stun_urls, s.turn_urls, secret, user_id, self.clock.now(), s.turn_ttl_s
        )

    async def profile_for(self, claims: Claims) -> Profile:
        """The user's profile, created from the token's claims on first sign-in. The token is
        the authority on role and organisation; the profile on everything the user edits."""
        profile = await self.store.get_profile(claims.sub)
        if profile is None:
            languages = claims.languages or ([claims.locale] if claims.locale else ["en"])
            profile = lean(
                Profile(
                    user_id=claims.sub,
                    role=claims.role,
                    org=claims.org,
                    display_name=claims.name or claims.sub,
                    languages=languages,
                    timezone=claims.zoneinfo or "UTC",
                    ring_window=self.settings.ring_window(),
                    daily_ring_cap=self.settings.daily_ring_cap,
                )
            )
            await self.store.put_profile(profile)
        elif profile.role is not claims.role or profile.org != claims.org:
            profile = profile.model_copy(update={"role": claims.role, "org": claims.org})
            await self.store.put_profile(profile)
        return profile


CONTEXT = web.AppKey("context", Context)


def build_context(
    settings: Settings, store: Store | None = None, clock: Clock | None = None
) -> Context:
    clock = clock or RealClock()
    store = store or open_store(settings.store_url)
    policy, timing = build_policy(settings.policy, settings.dispatch())
    broker = Broker(
        store,
        clock,
        timing,
        settings.limits(),
        policy=policy,
        safety=settings.safety(),
        pseudonym_key=settings.pseudonym_secret(),
        escalation=settings.escalation(),
        circle=settings.circle(),
    )
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
    auth = Authenticator(
        secret=secret,
        public_key=settings.public_key_pem(),
        algorithms=list(settings.jwt_algorithms),
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        leeway_s=settings.jwt_leeway_s,
        jwks=KeySet(
            settings.jwt_jwks_url,
            refetch_s=settings.jwt_jwks_refetch_s,
            max_age_s=settings.jwt_jwks_max_age_s,
        )
        if settings.jwt_jwks_url
        else None,
    )
    metrics = Metrics()
    ctx_holder: dict[str, Context] = {}
    hub = Hub(
        broker,
        store,
        metrics,
        lambda user: ctx_holder["ctx"].ice_servers(user),
        settings.heartbeat_s,
        settings.grace_s,
        max_sessions=settings.max_sessions_per_user,
        warning_s=settings.token_warning_s,
    )
    node_id = settings.node_id or "node-" + secrets.token_hex(4)
    from broker.store.redis import RedisStore

    if isinstance(store, RedisStore):  # scale-out: other nodes share the store
        from signaling.routing import RedisRouter

        hub.router = RedisRouter(
            store,
            settings.store_url,
            node_id,
            broker,
            settings.grace_s,
            beat_s=settings.node_beat_s,
            ttl_s=settings.node_ttl_s,
        )
    metrics.store_errors.watch(getattr(store, "errors", None))
    lobby = LobbyWatchers(broker, settings.lobby_interval_s)
    ctx = Context(settings, store, clock, broker, auth, metrics, hub, node_id, lobby)
    ctx_holder["ctx"] = ctx
    return ctx


async def count_nodes(ctx: Context) -> None:
    """Keep ``vabroker_nodes`` at the number of nodes beating into the shared store (one, this
    node, without one)."""
    from signaling import routing

    router = ctx.hub.router
    if not isinstance(router, routing.RedisRouter):
        return
    while True:
        try:
            alive = await router.r.zcount(routing._NODES, time.time() - router.ttl_s, "+inf")
            ctx.metrics.nodes.set(int(alive))
        except Exception as exc:  # a store outage is counted elsewhere; keep the last count
            log.debug("nodes not counted", extra={"why": str(exc)})
        await asyncio.sleep(router.beat_s)


GC_THRESHOLDS = (50_000, 20, 100)


def create_app(
    settings: Settings, store: Store | None = None, clock: Clock | None = None
) -> web.Application:
    from signaling import (  # the route modules import this one for Context
        admin,  # duty of care: cases, restrictions, audit, export and erasure
        api,
        circles,
        openapi,  # the API contract: /v1/openapi.json, /v1/asyncapi.json
        orgs,  # partner organisations
        pages,
        push,
        ws,
    )

    ctx = build_context(settings, store, clock)
    app = web.Application(client_max_size=256 * 1024)
    app[CONTEXT] = ctx
    app.router.add_get("/v1/ws", ws.handle)
    api.add_routes(app)
    pages.add_routes(app)
    push.setup(app)  # device routes; pushes rings to devices once started
    orgs.add_routes(app)
    admin.add_routes(app)
    openapi.add_routes(app)
    circles.add_routes(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await ctx.store.ping()
        await ctx.broker.start()
        await ctx.hub.router.start(ctx.hub)
        ctx.hub.start()
        ctx.lobby.start()
        counting = asyncio.get_running_loop().create_task(count_nodes(ctx))
        # What start-up made lives as long as the process: out of the collector's way, so that
        # a full collection scans only what requests made (tens of ms less at the tail).
        gc.freeze()
        # Thresholds sized for a server: the default (a collection every 700 net allocations)
        # runs one every few messages, and the older generations' collections walk every
        # session's objects, a cost per connection that grows with the connections.
        gc.set_threshold(*GC_THRESHOLDS)
        log.info(
            "broker ready", extra={"node": ctx.node_id, "store": shown_url(settings.store_url)}
        )
        yield
        counting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await counting
        await ctx.lobby.stop()
        await ctx.hub.stop()
        await ctx.hub.router.stop()
        await ctx.auth.close()
        await ctx.store.close()

    async def on_shutdown(app: web.Application) -> None:
        await ctx.hub.shutdown()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    return app
