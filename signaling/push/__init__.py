"""Push delivery at the edge: APNs, FCM and Web Push senders and the ``Pusher`` that drives
them from the hub's rings and withdrawals. ``setup`` wires it into the application."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from broker.notify.devices import Platform
from broker.notify.outcome import Backoff
from broker.notify.planner import PushPlanner
from signaling.app import CONTEXT
from signaling.config import Settings
from signaling.push import credentials
from signaling.push.base import Sender
from signaling.push.pusher import Pusher
from signaling.push.routes import ENABLED, WEBPUSH_HOSTS, WEBPUSH_KEY, add_routes


def pusher_of(app: web.Application) -> Pusher | None:
    """The running pusher, if any platform is configured."""
    pusher = app[CONTEXT].extras.get("pusher")
    return pusher if isinstance(pusher, Pusher) else None


def build_senders(settings: Settings) -> dict[Platform, Sender]:
    """A sender for each platform whose credentials are configured. Reads and checks the
    credentials now, so that a bad key stops start-up with a ``ConfigError``."""
    from signaling.push.apns import ApnsSender
    from signaling.push.fcm import FcmSender
    from signaling.push.webpush import WebPushSender

    s = settings
    tls = credentials.ssl_context(s.push_ca_file)
    senders: dict[Platform, Sender] = {}
    if s.apns_key:
        assert s.apns_key_id and s.apns_team_id and s.apns_topic  # the settings check this
        senders[Platform.APNS] = ApnsSender(
            credentials.apns_key(s.apns_key),
            s.apns_key_id,
            s.apns_team_id,
            s.apns_topic,
            use_sandbox=s.apns_use_sandbox,
            base_url=s.apns_base_url,
            ssl_context=tls,
            max_connections=s.apns_max_connections,
        )
    if s.fcm_service_account:
        senders[Platform.FCM] = FcmSender(
            credentials.service_account(s.fcm_service_account),
            base_url=s.fcm_base_url,
            token_url=s.fcm_token_url,
            ssl_context=tls,
        )
    if s.vapid_private_key:
        assert s.vapid_subject
        senders[Platform.WEBPUSH] = WebPushSender(
            credentials.vapid_key(s.vapid_private_key), s.vapid_subject, ssl_context=tls
        )
    return senders


def setup(app: web.Application) -> None:
    """Device routes, and a pusher fed by the hub once the application starts."""
    from signaling.push.webpush import WebPushSender

    ctx = app[CONTEXT]
    s = ctx.settings
    senders = build_senders(s)
    app[ENABLED] = frozenset(senders)
    app[WEBPUSH_HOSTS] = list(s.webpush_hosts)
    webpush = senders.get(Platform.WEBPUSH)
    app[WEBPUSH_KEY] = webpush.public_key if isinstance(webpush, WebPushSender) else None
    add_routes(app)
    if not senders:
        return

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        pusher = Pusher(
            PushPlanner(ctx.store, frozenset(senders), s.push_also_when_connected),
            senders,
            ctx.store,
            ctx.clock,
            ctx.metrics,
            concurrency=s.push_concurrency,
            timeout_s=s.push_timeout_s,
            backoff=Backoff(retries=s.push_retries, base_s=s.push_backoff_s),
        )
        await pusher.start()
        ctx.extras["pusher"] = pusher
        ctx.hub.observers.append(pusher.observe)
        yield
        ctx.hub.observers.remove(pusher.observe)
        ctx.extras.pop("pusher", None)
        await pusher.close()

    app.cleanup_ctx.append(lifecycle)
