"""The volunteer page's lobby: requests still searching, listed live, taken by keyboard.

Requests come from SDK recipients (and one recipient page, for a call with real media). Each
test uses languages of its own, so that one test's requests never show in another's lobby. The
broker's waves are 10 minutes apart here: a request made while nobody is on duty stays
searching and rings nobody, so a volunteer who goes on duty afterwards finds it in the lobby
(a request they were rung for is never listed: docs/protocol.md, "Lobby").
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Locator, Page, ViewportSize, expect

from tests.browser.pages import (
    LobbyHold,
    assert_accessible,
    focused,
    live,
    new_context,
    open_as,
    presented_frames,
)
from tests.helpers import Client, Server, start_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

WIDE: ViewportSize = {"width": 1280, "height": 900}
NARROW: ViewportSize = {"width": 320, "height": 640}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def broker_server() -> AsyncIterator[Server]:
    async with start_server(
        demo=True, demo_signins_per_hour=1000, wave_interval_s=600.0, max_wait_s=600.0
    ) as srv:
        yield srv


async def ask(
    server: Server, sub: str, language: str, topic: str | None = None
) -> tuple[Client, str]:
    """An SDK recipient asking for help in ``language``; its client and the call's id."""
    client = await server.connect(sub, "recipient", name=f"Secret {sub}", languages=[language])
    message: dict[str, Any] = {"type": "call.request", "language": language}
    if topic is not None:
        message["topic"] = topic
    status = await client.request(message)
    assert status["type"] == "call.status", status
    return client, str(status["call"])


async def on_duty(page: Page) -> None:
    """Goes on duty by keyboard (focus starts on the switch). Notifications are blocked in
    these contexts (camera and microphone granted deny the rest): nothing is asked."""
    assert await focused(page) == "duty"
    await page.keyboard.press("Space")
    await expect(live(page)).to_have_text("You are on duty. Waiting for a call.")
    assert await focused(page) == "duty"


async def open_lobby(page: Page) -> None:
    """Opens the lobby by keyboard: the next control after the duty switch."""
    await page.keyboard.press("Tab")
    assert await focused(page) == "lobby-toggle"
    await page.keyboard.press("Enter")
    await expect(page.locator("#lobby-toggle")).to_have_attribute("aria-expanded", "true")


async def accessible_at_both_widths(page: Page, what: str) -> None:
    """axe finds nothing at 1280 and at 320 px, and at 320 px nothing scrolls sideways."""
    for viewport in (WIDE, NARROW):
        await page.set_viewport_size(viewport)
        await assert_accessible(page, "idle")
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width == viewport["width"], f"{what}: {width} px wide at {viewport['width']} px"
    await page.set_viewport_size(WIDE)


def take_buttons(page: Page) -> Locator:
    return page.locator("#lobby-list .lobby-take")


async def focused_name(page: Page) -> str:
    """The accessible name of the focused Take button (its aria-label)."""
    return str(await page.evaluate("document.activeElement.getAttribute('aria-label')"))


async def test_the_lobby_lists_what_is_waiting_never_who_and_keeps_focus(
    browser: Browser, broker_server: Server
) -> None:
    vol = await open_as(
        browser, broker_server, "volunteer", "lob-vol-1", "volunteer", name="Val", languages=["fr"]
    )
    await expect(live(vol)).to_have_text(re.compile("Signed in as Val"))
    # Off duty there is nothing to open, and the page says how to get there.
    await expect(vol.locator("#lobby-toggle")).to_be_hidden()
    await expect(vol.locator("#lobby-off")).to_be_visible()
    await on_duty(vol)
    await expect(vol.locator("#lobby-off")).to_be_hidden()

    # Empty.
    await open_lobby(vol)
    empty = "No requests waiting just now. This list updates by itself."
    await expect(live(vol)).to_have_text(empty)
    await expect(vol.locator("#lobby-count")).to_have_text(empty)
    await expect(take_buttons(vol)).to_have_count(0)
    await accessible_at_both_widths(vol, "the empty lobby")
    await vol.keyboard.press("Enter")  # focus stayed on the toggle: closed
    await expect(vol.locator("#lobby-toggle")).to_have_attribute("aria-expanded", "false")
    await expect(live(vol)).to_have_text("The requests waiting are hidden.")
    await expect(vol.locator("#lobby-view")).to_be_hidden()

    await vol.keyboard.press("Enter")  # open again
    await expect(vol.locator("#lobby-toggle")).to_have_attribute("aria-expanded", "true")
    await expect(live(vol)).to_have_text(empty)

    # Off duty closes the lobby; while nobody is on duty, 22 requests are made (ringing
    # nobody); back on duty the lobby stays closed until asked for.
    await vol.keyboard.press("Shift+Tab")
    assert await focused(vol) == "duty"
    await vol.keyboard.press("Space")
    await expect(live(vol)).to_have_text("You are off duty.")
    await expect(vol.locator("#lobby-toggle")).to_be_hidden()
    await expect(vol.locator("#lobby-view")).to_be_hidden()
    asked = [await ask(broker_server, "lob-rec-1-0", "fr", "reading a letter")]
    asked.append(await ask(broker_server, "lob-rec-1-1", "fr"))
    for n in range(2, 22):
        asked.append(await ask(broker_server, f"lob-rec-1-{n}", "fr", f"label {n}"))
    await on_duty(vol)
    await expect(vol.locator("#lobby-toggle")).to_have_attribute("aria-expanded", "false")

    # The 20 oldest listed, oldest first, and "2 more".
    await open_lobby(vol)
    await expect(live(vol)).to_have_text("22 requests waiting.")
    await expect(take_buttons(vol)).to_have_count(20)
    await expect(vol.locator("#lobby-more")).to_have_text("and 2 more waiting")
    names = [await b.get_attribute("aria-label") for b in await take_buttons(vol).all()]
    assert names[0] == "Take: French, reading a letter, waiting less than a minute"
    assert names[1] == "Take: French, no topic, waiting less than a minute"
    assert names[2:] == [
        f"Take: French, label {n}, waiting less than a minute" for n in range(2, 20)
    ]
    # Never who: no name of anyone who asked, nor their ids.
    text = await vol.locator("#lobby-view").inner_text()
    html = await vol.locator("#lobby-view").inner_html()
    assert "Secret" not in text and "lob-rec" not in html
    await accessible_at_both_widths(vol, "the lobby with requests")

    # The oldest is cancelled: gone from the list, the next in line comes in at the end.
    client, _ = asked[0]
    await client.request({"type": "call.cancel", "call": asked[0][1]})
    await expect(take_buttons(vol).first).to_have_attribute(
        "aria-label", re.compile("^Take: French, no topic, waiting")
    )
    await expect(take_buttons(vol)).to_have_count(20)
    await expect(take_buttons(vol).last).to_have_attribute(
        "aria-label", re.compile("^Take: French, label 20, waiting")
    )
    await expect(vol.locator("#lobby-more")).to_have_text("and 1 more waiting")
    await expect(vol.locator("#lobby-count")).to_have_text("21 requests waiting.")

    # Focus on a request that goes moves to the one now in its place, and the page says so.
    await vol.keyboard.press("Tab")
    await vol.keyboard.press("Tab")
    assert (await focused_name(vol)).startswith("Take: French, label 2, waiting")
    # A focused request that stays keeps focus while others go.
    await asked[1][0].request({"type": "call.cancel", "call": asked[1][1]})
    await expect(take_buttons(vol)).to_have_count(20)
    await expect(take_buttons(vol).first).to_have_attribute("aria-label", re.compile("label 2,"))
    assert (await focused_name(vol)).startswith("Take: French, label 2, waiting")
    await asked[2][0].request({"type": "call.cancel", "call": asked[2][1]})
    await expect(live(vol)).to_have_text(
        "That request is no longer waiting. 19 requests waiting.", timeout=10_000
    )
    assert (await focused_name(vol)).startswith("Take: French, label 3, waiting")
    await expect(vol.locator("#lobby-more")).to_be_hidden()

    # All gone: focus on the last one goes to the lobby's heading.
    for client, call in asked[3:21]:
        await client.request({"type": "call.cancel", "call": call})
    await expect(take_buttons(vol)).to_have_count(1)
    await take_buttons(vol).first.focus()
    await asked[21][0].request({"type": "call.cancel", "call": asked[21][1]})
    await expect(take_buttons(vol)).to_have_count(0)
    assert await focused(vol) == "h-lobby"
    await expect(live(vol)).to_have_text(f"That request is no longer waiting. {empty}")

    for client, _ in asked:
        await client.close()
    await vol.context.close()


async def test_a_request_taken_by_keyboard_becomes_a_call_with_media(
    browser: Browser, broker_server: Server
) -> None:
    rec = await open_as(
        browser, broker_server, "recipient", "lob-rec-2", "recipient", name="Rae", languages=["de"]
    )
    await expect(live(rec)).to_have_text(re.compile("Signed in as Rae"))
    await rec.fill("#topic", "reading a letter")
    await rec.click("#call")
    await expect(rec.locator("body")).to_have_attribute("data-state", "searching")

    vol = await open_as(
        browser, broker_server, "volunteer", "lob-vol-2", "volunteer", name="Val", languages=["de"]
    )
    await expect(live(vol)).to_have_text(re.compile("Signed in as Val"))
    await on_duty(vol)
    await open_lobby(vol)
    await expect(live(vol)).to_have_text("1 request waiting.")
    await vol.keyboard.press("Tab")
    assert await focused_name(vol) == "Take: German, reading a letter, waiting less than a minute"
    await vol.keyboard.press("Enter")
    await expect(live(vol)).to_have_text("Connected to Rae. You can see their camera.")
    await expect(live(rec)).to_have_text("Connected to Val. They can see your camera now.")
    frames = await presented_frames(vol, "#remote-video", 1.5)
    assert frames >= 10, f"the volunteer's page presented only {frames} frames in 1.5 s"
    assert await focused(vol) == "hang-up"
    # In the call the lobby is closed.
    assert await vol.evaluate("window.vabrokerPage.lobby.wanted") is False

    await vol.keyboard.press("Enter")
    await expect(live(vol)).to_have_text(
        "Call ended. You hung up. You are on duty. Waiting for a call."
    )
    await expect(live(rec)).to_have_text("Call ended. The helper ended the call.")
    # It was open before the call: open again after it, without talking over the call's end.
    await expect(vol.locator("#lobby-toggle")).to_have_attribute("aria-expanded", "true")
    await expect(vol.locator("#lobby-count")).to_have_text(
        "No requests waiting just now. This list updates by itself."
    )
    await expect(live(vol)).to_have_text(
        "Call ended. You hung up. You are on duty. Waiting for a call."
    )
    for tab in (vol, rec):
        await tab.context.close()


async def test_someone_else_took_it_first(browser: Browser, broker_server: Server) -> None:
    first, first_call = await ask(broker_server, "lob-rec-3-0", "it", "which bus is this")
    second, _ = await ask(broker_server, "lob-rec-3-1", "it")
    other = await broker_server.connect("lob-vol-3b", "volunteer", name="Oz", languages=["it"])
    assert (await other.request({"type": "availability", "available": True}))["available"]

    hold = LobbyHold()
    context = await new_context(browser)
    token = broker_server.token("lob-vol-3", "volunteer", name="Val", languages=["it"])
    vol = await hold.open(context, broker_server, "volunteer", token)
    await expect(live(vol)).to_have_text(re.compile("Signed in as Val"))
    await on_duty(vol)
    await open_lobby(vol)
    await expect(live(vol)).to_have_text("2 requests waiting.")

    # The other volunteer takes the first request while the page's list is still on its way.
    hold.held = True
    assigned = await other.request({"type": "call.take", "call": first_call})
    assert assigned["type"] == "call.assigned", assigned
    await vol.keyboard.press("Tab")
    assert await focused_name(vol) == "Take: Italian, which bus is this, waiting less than a minute"
    await vol.keyboard.press("Enter")
    conflict = "Someone else is already helping this person."
    await expect(live(vol)).to_have_text(conflict)
    await expect(vol.locator("#lobby-notice")).to_have_text(conflict)
    await expect(vol.locator("body")).to_have_attribute("data-state", "idle")
    await expect(vol.locator("#lobby-toggle")).to_have_attribute("aria-expanded", "true")
    await accessible_at_both_widths(vol, "the lobby after a take conflict")

    # The list catches up: the taken request goes, focus moves to the next without a word
    # over what was said.
    hold.release()
    await expect(take_buttons(vol)).to_have_count(1)
    assert await focused_name(vol) == "Take: Italian, no topic, waiting less than a minute"
    await expect(live(vol)).to_have_text(conflict)
    await expect(vol.locator("#lobby-count")).to_have_text("1 request waiting.")

    await other.request({"type": "call.end", "call": first_call})
    for client in (first, second, other):
        await client.close()
    await context.close()


async def test_the_count_is_said_sparingly_and_the_waits_count_on(
    browser: Browser, broker_server: Server
) -> None:
    """Under Playwright's clock: a change of the count within 15 s of the last one said is said
    when those 15 s are over, once; time passing alone changes the waits' words, once a
    minute, and says nothing."""
    asked = [await ask(broker_server, f"lob-rec-4-{n}", "pt", f"label {n}") for n in range(3)]
    context = await new_context(browser)
    vol = await context.new_page()
    vol.set_default_timeout(15_000)
    await vol.clock.install()
    token = broker_server.token("lob-vol-4", "volunteer", name="Val", languages=["pt"])
    await vol.goto(f"{broker_server.url}/app/volunteer.html#token={token}")
    await expect(live(vol)).to_have_text(re.compile("Signed in as Val"))
    await on_duty(vol)
    await vol.evaluate(
        """() => {
            window.saidLog = [];
            const live = document.querySelector('#live');
            new MutationObserver(() => {
                if (live.textContent) window.saidLog.push([Date.now(), live.textContent]);
            }).observe(live, {childList: true, characterData: true, subtree: true});
        }"""
    )
    await open_lobby(vol)
    await expect(live(vol)).to_have_text("3 requests waiting.")

    # Two go at once: the list follows at once, the live region not yet.
    for client, call in asked[:2]:
        await client.request({"type": "call.cancel", "call": call})
    await expect(vol.locator("#lobby-count")).to_have_text("1 request waiting.")
    await expect(take_buttons(vol)).to_have_count(1)
    await expect(live(vol)).to_have_text("3 requests waiting.")
    await vol.clock.fast_forward(15_000)
    await expect(live(vol)).to_have_text("1 request waiting.")

    # A minute on, the wait's words change; nothing is said.
    await vol.clock.fast_forward(60_000)
    await expect(take_buttons(vol)).to_have_attribute(
        "aria-label", "Take: Portuguese, label 2, waiting 1 minute"
    )
    await expect(vol.locator("#lobby-list .lobby-waiting")).to_have_text("waiting 1 minute")
    await vol.clock.fast_forward(60_000)
    await expect(vol.locator("#lobby-list .lobby-waiting")).to_have_text("waiting 2 minutes")
    said = [text for _, text in await vol.evaluate("window.saidLog")]
    assert said == ["3 requests waiting.", "1 request waiting."], said
    await asked[2][0].request({"type": "call.cancel", "call": asked[2][1]})
    for client, _ in asked:
        await client.close()
    await context.close()


async def test_a_take_the_broker_forbids_is_said_in_its_words(
    browser: Browser, broker_server: Server
) -> None:
    """A volunteer at their daily number of calls sees requests but may not take one: the page
    says the broker's reason and keeps the lobby."""
    client, call = await ask(broker_server, "lob-rec-5", "nl", "a parcel")
    claims: dict[str, Any] = {"name": "Val", "languages": ["nl"]}
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            f"{broker_server.url}/v1/me/profile",
            json={"daily_ring_cap": 0},
            headers=broker_server.auth("lob-vol-5", "volunteer", **claims),
        ) as response,
    ):
        assert response.status == 200, await response.text()
    vol = await open_as(browser, broker_server, "volunteer", "lob-vol-5", "volunteer", **claims)
    await expect(live(vol)).to_have_text(re.compile("Signed in as Val"))
    await on_duty(vol)
    await open_lobby(vol)
    await expect(live(vol)).to_have_text("1 request waiting.")
    await vol.keyboard.press("Tab")
    await vol.keyboard.press("Enter")
    refused = "You have reached your daily number of calls. Thank you!"
    await expect(live(vol)).to_have_text(refused)
    await expect(vol.locator("#lobby-notice")).to_have_text(refused)
    await expect(vol.locator("body")).to_have_attribute("data-state", "idle")
    await expect(take_buttons(vol)).to_have_count(1)
    assert (await focused_name(vol)).startswith("Take: Dutch, a parcel, waiting")
    await client.request({"type": "call.cancel", "call": call})
    await client.close()
    await vol.context.close()


async def test_the_lobby_survives_a_reconnect_and_a_ring(
    browser: Browser, broker_server: Server
) -> None:
    """A dropped connection resumes and the lobby goes on (the broker forgets a resumed
    session's lobby; the page opens it again, without a word). A ring while the lobby is open
    takes the page; declined, the lobby is back as it was."""
    first, first_call = await ask(broker_server, "lob-rec-6-0", "sv", "a timetable")
    vol = await open_as(
        browser, broker_server, "volunteer", "lob-vol-6", "volunteer", name="Val", languages=["sv"]
    )
    await expect(live(vol)).to_have_text(re.compile("Signed in as Val"))
    await on_duty(vol)
    await open_lobby(vol)
    await expect(live(vol)).to_have_text("1 request waiting.")

    await vol.evaluate("window.vabrokerPage.session.ws.close(3000)")
    await expect(live(vol)).to_have_text("Reconnected.")

    # A new request rings the page (it is on duty): the lobby is hidden while it rings.
    second, second_call = await ask(broker_server, "lob-rec-6-1", "sv", "a letter")
    await expect(live(vol)).to_have_text(re.compile("^Call from Secret lob-rec-6-1"))
    await expect(vol.locator("#lobby-view")).to_be_hidden()
    await vol.keyboard.press("Tab")
    assert await focused(vol) == "decline"
    await vol.keyboard.press("Enter")
    await expect(live(vol)).to_have_text("Declined. You are on duty. Waiting for a call.")
    # Back: still open, and the declined request is not offered (answer the ring instead).
    await expect(vol.locator("#lobby-view")).to_be_visible()
    await expect(vol.locator("#lobby-toggle")).to_have_attribute("aria-expanded", "true")
    await expect(take_buttons(vol)).to_have_count(1)
    await expect(take_buttons(vol)).to_have_attribute(
        "aria-label", re.compile("^Take: Swedish, a timetable, waiting")
    )
    # The lists still come after the reconnect: a cancelled request goes.
    await first.request({"type": "call.cancel", "call": first_call})
    await expect(take_buttons(vol)).to_have_count(0)
    await expect(vol.locator("#lobby-count")).to_have_text(
        "No requests waiting just now. This list updates by itself."
    )
    await second.request({"type": "call.cancel", "call": second_call})
    for client in (first, second):
        await client.close()
    await vol.context.close()
