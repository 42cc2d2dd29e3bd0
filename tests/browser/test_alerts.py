"""Never silent, never missed: the caller hears a long search at a calm, documented pace (under
Playwright's clock), with a ringback they can mute; a volunteer whose page is in a background
tab sees the ring in the title, hears it and gets a system notification, and the service worker
shows a pushed ring and its withdrawal under one tag. Also the on-duty switch in forced colours,
focus while sign-in is pending, and the camera preview under reduced motion.

Headless Chromium keeps every tab visible (bringing another tab to the front or minimising the
window changes nothing), so a background tab is made by giving the page's ``document`` a
``visibilityState`` of ``hidden`` and firing ``visibilitychange``, exactly what the page reads.
A real Web Push cannot reach headless Chromium here: the push is delivered to the service worker
through the DevTools protocol (``ServiceWorker.deliverPushMessage``)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.browser.pages import CHROMIUM_ARGS, live, new_context, open_page
from tests.helpers import Client, Server, start_server
from tests.push_standins import pem_private

pytestmark = pytest.mark.asyncio(loop_scope="module")

# The documented pace (docs/pages.md; PROGRESS_* in recipient.js).
EARLY_S, EARLY_UNTIL_S, LATE_S = 30, 120, 60

assert "--use-fake-ui-for-media-stream" in CHROMIUM_ARGS  # the camera starts without a prompt


async def said_log(page: Page) -> None:
    """Records every sentence the live region says, with the page's (fake) time."""
    await page.evaluate(
        """() => {
            window.saidLog = [];
            const live = document.querySelector('#live');
            new MutationObserver(() => {
                const text = live.textContent;
                if (text) window.saidLog.push([Date.now(), text]);
            }).observe(live, {childList: true, characterData: true, subtree: true});
        }"""
    )


async def said_since(page: Page, since_ms: float) -> list[tuple[float, str]]:
    log = await page.evaluate("window.saidLog")
    return [(t, text) for t, text in log if t >= since_ms]


async def recipient_on_clock(browser: Browser, server: Server, sub: str, lang: str) -> Page:
    context = await new_context(browser)
    tab = await context.new_page()
    tab.set_default_timeout(15_000)
    await tab.clock.install()
    token = server.token(sub, "recipient", name="Cleo", languages=[lang])
    await tab.goto(f"{server.url}/app/recipient.html#token={token}")
    await expect(live(tab)).to_have_text(re.compile("Signed in as Cleo"))
    return tab


NOBODY_FREE = (
    "No volunteer is free just now. Still looking… "
    "If no one answers, please try again in about 15 minutes."
)


async def test_a_long_search_is_said_at_the_documented_pace_and_stops_when_cancelled(
    browser: Browser, broker_server: Server
) -> None:
    # Nobody speaks Finnish on this broker: the search goes on until it is cancelled.
    rec = await recipient_on_clock(browser, broker_server, "rec-pace", "fi")
    await said_log(rec)
    await rec.click("#call")
    # Nobody to ring at all: the broker escalates at once and says when to try again.
    await expect(live(rec)).to_have_text(NOBODY_FREE)
    assert await rec.evaluate("window.vabrokerPage.ringback.sounding") is True
    start = await rec.evaluate("window.vabrokerPage.searchStarted")

    # Nothing more until 30 s of quiet, then every 30 s for the first two minutes...
    await rec.clock.fast_forward(EARLY_S * 1000 - 1000)
    await expect(live(rec)).to_have_text(NOBODY_FREE)
    expected = [
        "Still looking, for 30 seconds now. No volunteer has been free to ask yet.",
        "Still looking, for 1 minute now. No volunteer has been free to ask yet.",
        "Still looking, for 1 minute, 30 seconds now. No volunteer has been free to ask yet.",
        "Still looking, for 2 minutes now. No volunteer has been free to ask yet.",
    ]
    await rec.clock.fast_forward(1000)
    await expect(live(rec)).to_have_text(expected[0])
    for text in expected[1:]:
        await rec.clock.fast_forward(EARLY_S * 1000)
        await expect(live(rec)).to_have_text(text)
    # ...then every minute.
    await rec.clock.fast_forward(LATE_S * 1000 - 1000)
    await expect(live(rec)).to_have_text(expected[-1])
    await rec.clock.fast_forward(1000)
    await expect(live(rec)).to_have_text(
        "Still looking, for 3 minutes now. No volunteer has been free to ask yet."
    )
    progress = [(t, s) for t, s in await said_since(rec, start) if s.startswith("Still looking,")]
    offsets = [round((t - start) / 1000) for t, _ in progress]
    assert offsets == [30, 60, 90, 120, 180], progress

    # The caller mutes the ringback: the search goes on, silently.
    await rec.click("#ringback")
    await expect(rec.locator("#ringback")).to_have_attribute("aria-checked", "false")
    assert await rec.evaluate("window.vabrokerPage.ringback.sounding") is False
    await rec.click("#ringback")
    assert await rec.evaluate("window.vabrokerPage.ringback.sounding") is True

    await rec.click("#cancel")
    await expect(live(rec)).to_have_text("Call ended. The call was cancelled.")
    ended_at = await rec.evaluate("Date.now()")
    await rec.clock.fast_forward(10 * 60 * 1000)
    await asyncio.sleep(0.2)
    assert await said_since(rec, ended_at + 1) == []
    await expect(live(rec)).to_have_text("Call ended. The call was cancelled.")
    assert await rec.evaluate("window.vabrokerPage.ringback.playing") is False
    await rec.context.close()


async def test_progress_counts_who_was_asked_and_stops_when_answered(
    browser: Browser, broker_server: Server
) -> None:
    vol = await broker_server.connect("vol-pace", "volunteer", name="Pia", languages=["sv"])
    try:
        assert (await vol.request({"type": "availability", "available": True}))["available"]
        rec = await recipient_on_clock(browser, broker_server, "rec-pace-2", "sv")
        await said_log(rec)
        await rec.click("#call")
        await expect(live(rec)).to_have_text("Ringing 1 volunteer.")
        ring = await vol.expect("call.ring")
        await rec.clock.fast_forward(EARLY_S * 1000)
        await expect(live(rec)).to_have_text(
            "Still looking, for 30 seconds now. 1 volunteer has been asked."
        )
        await vol.request({"type": "call.accept", "call": ring["call"]})
        await expect(live(rec)).to_have_text("Pia answered. Connecting…")
        answered_at = await rec.evaluate("Date.now()")
        assert await rec.evaluate("window.vabrokerPage.ringback.playing") is False
        await rec.clock.fast_forward(5 * 60 * 1000)
        await asyncio.sleep(0.2)
        late = [s for _, s in await said_since(rec, answered_at + 1) if "Still" in s]
        assert late == []
        await vol.request({"type": "call.end", "call": ring["call"]})
        await expect(live(rec)).to_have_text("Call ended. The helper ended the call.")
        await rec.context.close()
    finally:
        await vol.request({"type": "availability", "available": False})
        await vol.close()


@pytest.mark.parametrize(
    ("before", "status", "said"),
    [
        (
            {"state": "searching", "notified": 2},
            {"state": "searching", "notified": 3, "language": "fr"},
            "The search is wider now: looking for volunteers who speak French. "
            "Ringing 3 volunteers.",
        ),
        (
            {"state": "queued", "position": 1},
            {"state": "searching", "notified": 4},
            "No agent was free in time, so your call now goes to volunteers. Ringing 4 volunteers.",
        ),
        (
            {"state": "queued", "position": 3, "eta_s": 400},
            {"state": "queued", "position": 2, "eta_s": 200},
            "You are number 2 in the queue, about 3 minutes.",
        ),
        (
            {"state": "searching", "notified": 1, "language": "fr"},
            {"state": "searching", "notified": 2, "language": "fr"},
            "Ringing 2 volunteers.",
        ),
    ],
)
async def test_the_search_says_when_it_moves_on(
    browser: Browser,
    broker_server: Server,
    before: dict[str, Any],
    status: dict[str, Any],
    said: str,
) -> None:
    """A wider search (another language), a queue handing the call to volunteers, a new place
    in the queue: each said from the call.status the broker sends (docs/protocol.md)."""
    context = await new_context(browser)
    tab = await context.new_page()
    await tab.goto(f"{broker_server.url}/app/")
    text = await tab.evaluate(
        """async ([before, status]) => {
            await (await import('./i18n.js')).useLanguage('en');
            return (await import('./ui.js')).searchNews(status, before, 'en');
        }""",
        [before, status],
    )
    assert text == said
    await context.close()


async def hide(page: Page) -> None:
    """The page as in a background tab (see the module's docstring)."""
    await page.evaluate(
        """() => {
            Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'});
            Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
            document.dispatchEvent(new Event('visibilitychange'));
        }"""
    )


async def shown_eventually(
    page: Page, tag: str, count: int, title: str | None = None
) -> list[dict[str, Any]]:
    """The notifications tagged ``tag`` once there are ``count`` of them (within 5 s), the
    first titled ``title`` if given."""
    for _ in range(100):
        shown = await notifications(page, tag)
        if len(shown) == count and (title is None or shown[0]["title"] == title):
            return shown
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(shown)} notifications tagged {tag}, not {count}: {shown}")


async def notifications(page: Page, tag: str) -> list[dict[str, Any]]:
    shown: list[dict[str, Any]] = await page.evaluate(
        """async (tag) => {
            const registration = await navigator.serviceWorker.ready;
            return (await registration.getNotifications({tag}))
                .map((n) => ({title: n.title, body: n.body, tag: n.tag}));
        }""",
        tag,
    )
    return shown


async def volunteer_with_notifications(
    browser: Browser, server: Server, sub: str, lang: str
) -> tuple[BrowserContext, Page]:
    context = await new_context(browser)
    await context.grant_permissions(["camera", "microphone", "notifications"])
    vol = await open_page(
        context, server, "volunteer", server.token(sub, "volunteer", name="Nia", languages=[lang])
    )
    await expect(live(vol)).to_have_text(re.compile("Nia"))
    await vol.click("#duty")
    await expect(vol.locator("#duty")).to_have_attribute("aria-checked", "true")
    # Notifications were granted: going on duty registers the service worker without asking.
    await vol.evaluate("navigator.serviceWorker.ready.then(() => true)")
    await expect(vol.locator("#notify-ask")).to_be_hidden()
    return context, vol


async def caller(server: Server, sub: str, lang: str) -> Client:
    return await server.connect(sub, "recipient", name="Bo", languages=[lang])


async def test_a_ring_in_a_background_tab_shows_in_the_title_sounds_and_notifies(
    browser: Browser, broker_server: Server
) -> None:
    context, vol = await volunteer_with_notifications(browser, broker_server, "vol-bg", "de")
    await expect(live(vol)).to_have_text("You are on duty. Waiting for a call.")
    # No Web Push on this broker: the page says that rings reach it only while it is open.
    await expect(vol.locator("#notify-status")).to_have_text(
        re.compile("^Notifications are on while this page is open")
    )
    await expect(vol).to_have_title("Volunteer — vabroker")
    await hide(vol)
    rec = await caller(broker_server, "rec-bg", "de")
    try:
        status = await rec.request({"type": "call.request", "topic": "a parcel"})
        call = str(status["call"])
        await expect(vol).to_have_title("Ringing — Volunteer — vabroker")
        assert await vol.evaluate("window.vabrokerPage.ringSound.sounding") is True
        # Real sound: oscillators on the page's running audio context (unlocked by the click
        # that went on duty).
        assert (
            await vol.evaluate("async () => (await import('./sound.js')).unlockAudio().state")
            == "running"
        )
        assert await vol.evaluate("window.vabrokerPage.ringSound.nodes.length") == 2
        await shown_eventually(vol, call, 1)
        (shown,) = await notifications(vol, call)
        assert shown["title"] == "Someone needs help"
        assert shown["body"] == "Call from Bo about a parcel, in German. Accept or decline."

        # The volunteer turns the ring sound off: silent at once, and the choice is kept.
        await vol.click("#ring-sound")
        await expect(vol.locator("#ring-sound")).to_have_attribute("aria-checked", "false")
        await expect(vol.locator("#ring-sound .switch-state")).to_have_text("Off")
        assert await vol.evaluate("window.vabrokerPage.ringSound.sounding") is False
        assert await vol.evaluate("localStorage.getItem('vabroker.ring-sound')") == "off"
        await vol.click("#ring-sound")
        assert await vol.evaluate("window.vabrokerPage.ringSound.sounding") is True

        # The caller gives up: title, sound and notification all stop.
        await rec.request({"type": "call.cancel", "call": call})
        await expect(live(vol)).to_have_text("The caller cancelled.")
        await expect(vol).to_have_title("Volunteer — vabroker")
        assert await vol.evaluate("window.vabrokerPage.ringSound.playing") is False
        await shown_eventually(vol, call, 0)

        # Another ring, answered from the background tab: "In a call" in the title.
        status = await rec.request({"type": "call.request"})
        call = str(status["call"])
        await expect(vol).to_have_title("Ringing — Volunteer — vabroker")
        await vol.click("#accept")
        await expect(vol).to_have_title("In a call — Volunteer — vabroker")
        assert await vol.evaluate("window.vabrokerPage.ringSound.playing") is False
        await shown_eventually(vol, call, 0)
        await rec.request({"type": "call.end", "call": call})
        await expect(vol).to_have_title("Call ended — Volunteer — vabroker")
    finally:
        await rec.close()
        await context.close()


async def test_a_visible_page_rings_without_a_system_notification(
    browser: Browser, broker_server: Server
) -> None:
    context, vol = await volunteer_with_notifications(browser, broker_server, "vol-fg", "it")
    rec = await caller(broker_server, "rec-fg", "it")
    try:
        call = str((await rec.request({"type": "call.request"}))["call"])
        await expect(vol).to_have_title("Ringing — Volunteer — vabroker")
        assert await vol.evaluate("window.vabrokerPage.ringSound.sounding") is True
        await asyncio.sleep(0.3)
        assert await notifications(vol, call) == []
        await rec.request({"type": "call.cancel", "call": call})
        await expect(vol).to_have_title("Volunteer — vabroker")
    finally:
        await rec.close()
        await context.close()


async def push_to_worker(page: Page, payload: dict[str, Any]) -> None:
    """A Web Push message delivered to the page's service worker (DevTools protocol)."""
    cdp = await page.context.new_cdp_session(page)
    registrations: list[dict[str, Any]] = []
    cdp.on(
        "ServiceWorker.workerRegistrationUpdated",
        lambda event: registrations.extend(event["registrations"]),
    )
    await cdp.send("ServiceWorker.enable")
    for _ in range(50):
        if registrations:
            break
        await asyncio.sleep(0.05)
    origin = page.url.split("/app/")[0]
    (registration,) = [r for r in registrations if r["scopeURL"] == f"{origin}/app/"]
    await cdp.send(
        "ServiceWorker.deliverPushMessage",
        {
            "origin": origin,
            "registrationId": registration["registrationId"],
            "data": json.dumps(payload),
        },
    )
    await cdp.detach()


async def test_the_service_worker_shows_a_pushed_ring_and_replaces_it_with_its_withdrawal(
    browser: Browser, broker_server: Server
) -> None:
    context, vol = await volunteer_with_notifications(browser, broker_server, "vol-push", "es")
    # The volunteer's language is Spanish (from the profile): so is the service worker.
    await expect(vol.locator("html")).to_have_attribute("lang", "es")
    script = await vol.evaluate("navigator.serviceWorker.ready.then((r) => r.active.scriptURL)")
    assert script.endswith("/app/sw.js?lang=es")
    # The payloads the broker pushes (docs/protocol.md, "Payloads").
    ring = {
        "type": "call.ring",
        "call": "c_push1",
        "language": "es",
        "expires_at": "1",
        "topic": "una carta",
    }
    await push_to_worker(vol, ring)
    await shown_eventually(vol, "c_push1", 1)
    (shown,) = await notifications(vol, "c_push1")
    assert shown["title"] == "Alguien necesita ayuda"
    assert shown["body"] == (
        "Una llamada en español sobre una carta. Abra la página de voluntario para responder."
    )
    await push_to_worker(vol, {"type": "call.withdrawn", "call": "c_push1", "reason": "answered"})
    assert await shown_eventually(vol, "c_push1", 1, "La llamada dejó de sonar") == [
        {
            "title": "La llamada dejó de sonar",
            "body": "Otra persona respondió a esa llamada. Gracias por estar ahí.",
            "tag": "c_push1",
        }
    ]
    await context.close()


async def test_the_duty_switch_shows_its_state_without_colour(
    browser: Browser, broker_server: Server
) -> None:
    context = await new_context(browser)
    vol = await open_page(
        context, broker_server, "volunteer", broker_server.token("vol-fc", "volunteer", name="Fe")
    )
    await expect(live(vol)).to_have_text("Signed in as Fe. You are off duty.")
    await vol.emulate_media(forced_colors="active", reduced_motion="reduce")
    duty = vol.get_by_role("switch", name="On duty")
    await expect(duty).to_have_attribute("aria-checked", "false")
    await expect(duty).to_have_text(re.compile(r"^\s*On duty\s*Off\s*$"))
    await vol.mouse.move(0, 0)
    await vol.locator("h1").focus()  # no focus ring in either picture
    off = await duty.screenshot()
    await duty.click()
    await expect(live(vol)).to_have_text("You are on duty. Waiting for a call.")
    # The same name for assistive technology, which hears the state from aria-checked; the
    # visible text and the knob's side of the track change with it.
    await expect(duty).to_have_attribute("aria-checked", "true")
    await expect(duty).to_have_text(re.compile(r"^\s*On duty\s*On\s*$"))
    await vol.locator("h1").focus()
    on = await duty.screenshot()
    assert on != off, "in forced colours the switch looks the same on and off"
    side = await vol.evaluate(
        "getComputedStyle(document.querySelector('#duty .switch-track')).justifyContent"
    )
    assert side == "flex-end"
    await duty.click()
    await expect(duty).to_have_attribute("aria-checked", "false")
    await context.close()


async def test_focus_stays_on_the_sign_in_button_while_sign_in_is_pending(
    browser: Browser, broker_server: Server
) -> None:
    context = await new_context(browser)
    tab = await open_page(context, broker_server, "volunteer")
    await expect(live(tab)).to_have_text("Please sign in.")
    held = asyncio.Event()
    release = asyncio.Event()

    async def slow(route: Any) -> None:
        held.set()
        await release.wait()
        await route.continue_()

    await tab.route("**/v1/demo/token", slow)
    assert await tab.evaluate("document.activeElement.id") == "demo-sign-in"
    await tab.keyboard.press("Enter")
    await asyncio.wait_for(held.wait(), 10)
    await expect(live(tab)).to_have_text("Signing in…")
    assert await tab.evaluate("document.activeElement.id") == "demo-sign-in"
    await expect(tab.locator("#demo-sign-in")).to_have_attribute("aria-disabled", "true")
    await tab.keyboard.press("Enter")  # a second press while pending asks nothing more
    release.set()
    await expect(live(tab)).to_have_text(re.compile(r"^Signed in as Demo volunteer"))
    assert await tab.evaluate("document.activeElement.id") == "duty"
    await context.close()


async def test_the_camera_preview_is_still_under_reduced_motion_and_can_be_played(
    browser: Browser, broker_server: Server
) -> None:
    context = await browser.new_context(reduced_motion="reduce")
    await context.grant_permissions(["camera", "microphone"])
    rec = await open_page(
        context,
        broker_server,
        "recipient",
        broker_server.token("rec-still", "recipient", name="Sol", languages=["pl"]),
    )
    await expect(live(rec)).to_have_text(re.compile("Signed in as Sol"))
    await rec.click("#call")
    await expect(rec.locator("body")).to_have_attribute("data-state", "searching")
    pause = rec.get_by_role("button", name="Pause the preview")
    await expect(pause).to_have_attribute("aria-pressed", "true")
    assert await rec.evaluate("document.querySelector('#preview').paused") is True
    await pause.click()
    await expect(pause).to_have_attribute("aria-pressed", "false")
    assert await rec.evaluate("document.querySelector('#preview').paused") is False
    await pause.click()
    await expect(pause).to_have_attribute("aria-pressed", "true")
    assert await rec.evaluate("document.querySelector('#preview').paused") is True
    await rec.click("#cancel")
    await expect(live(rec)).to_have_text("Call ended. The call was cancelled.")
    await context.close()


# The browser's push service (Google's, for Chromium) cannot be reached here: pushManager's
# subscribe is answered in the page with a subscription to a push service the test broker
# accepts, and the key the page asked with is kept to compare with the broker's.
SUBSCRIBE_HERE = """
(() => {
  const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
      .replace(/\\+/g, '-').replace(/\\//g, '_').replace(/=+$/, '');
  const p256dh = b64url(Uint8Array.from([4, ...Array(64).fill(1)]));
  const auth = b64url(Uint8Array.from(Array(16).fill(2)));
  let subscription = null;
  PushManager.prototype.getSubscription = async function () { return subscription; };
  PushManager.prototype.subscribe = async function (options) {
    window.subscribedWithKey = b64url(options.applicationServerKey);
    window.userVisibleOnly = options.userVisibleOnly;
    subscription = { toJSON: () => ({ endpoint: 'https://push.example.org/s/page-1',
                                      keys: { p256dh, auth } }) };
    return subscription;
  };
})();
"""


async def test_going_on_duty_registers_this_browser_for_web_push(browser: Browser) -> None:
    async with start_server(
        vapid_private_key=pem_private(ec.generate_private_key(ec.SECP256R1())),
        vapid_subject="https://example.org/contact",
        webpush_hosts=["push.example.org"],
    ) as server:
        context = await new_context(browser)
        await context.grant_permissions(["camera", "microphone", "notifications"])
        await context.add_init_script(SUBSCRIBE_HERE)
        vol = await open_page(
            context, server, "volunteer", server.token("vol-wp", "volunteer", name="Wim")
        )
        await expect(live(vol)).to_have_text("Signed in as Wim. You are off duty.")
        await vol.click("#duty")
        await expect(vol.locator("#notify-status")).to_have_text(
            "Notifications are on, also when this page is closed."
        )
        async with (
            aiohttp.ClientSession() as http,
            http.get(server.url + "/v1/push/webpush") as resp,
        ):
            key = (await resp.json())["public_key"]
        assert await vol.evaluate("window.subscribedWithKey") == key
        assert await vol.evaluate("window.userVisibleOnly") is True
        devices = await server.ctx.store.devices("vol-wp")
        assert [
            (d.platform.value, d.subscription and d.subscription.endpoint) for d in devices
        ] == [("webpush", "https://push.example.org/s/page-1")]
        await context.close()
