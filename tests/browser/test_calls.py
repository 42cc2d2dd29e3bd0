"""Whole calls between browser pages, and between a page and an aiortc volunteer: real media."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import Callable

import pytest
from playwright.async_api import Browser, expect

from tests.browser.bot import Bot
from tests.browser.pages import live, open_as, presented_frames
from tests.helpers import Server, start_server

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_recipient_page_calls_volunteer_page(browser: Browser, broker_server: Server) -> None:
    vol = await open_as(
        browser, broker_server, "volunteer", "vol-page-1", "volunteer", name="Val", languages=["en"]
    )
    await expect(live(vol)).to_have_text(re.compile("Signed in as Val"))
    await vol.click("#duty")
    await expect(live(vol)).to_have_text("You are on duty. Waiting for a call.")

    rec = await open_as(
        browser, broker_server, "recipient", "rec-page-1", "recipient", name="Rae", languages=["en"]
    )
    await expect(live(rec)).to_have_text(re.compile("Signed in as Rae"))
    await rec.fill("#topic", "reading a label")
    await rec.click("#call")
    await expect(live(rec)).to_have_text("Ringing 1 volunteer.")
    await expect(live(vol)).to_have_text(re.compile("Call from Rae about reading a label"))
    await vol.click("#accept")
    await expect(live(vol)).to_have_text("Connected to Rae. You can see their camera.")
    await expect(live(rec)).to_have_text("Connected to Val. They can see your camera now.")

    frames = await presented_frames(vol, "#remote-video", 1.5)
    assert frames >= 10, f"the volunteer's page presented only {frames} frames in 1.5 s"
    size = await vol.evaluate(
        "() => [document.querySelector('#remote-video').videoWidth,"
        " document.querySelector('#remote-video').videoHeight]"
    )
    assert size == [640, 480]

    # The recipient asked for the rear camera (a phone's back camera shows what they point at).
    constraints = await rec.evaluate(
        "window.vabrokerPage.stream.getVideoTracks()[0].getConstraints()"
    )
    assert constraints["facingMode"] in ("environment", {"ideal": "environment"})

    # Both pages numbered their signals and acknowledged the other's (docs/protocol.md,
    # "Numbered signals"): every signal arrived once, nothing is left to send again.
    for tab in (rec, vol):
        await tab.wait_for_function(
            "() => { const l = window.vabrokerPage.media.link;"
            " return l.peerAcknowledges && l.unacked.size === 0 && l.received > 0; }",
            timeout=5000,
        )
    links = [
        await tab.evaluate(
            "() => { const l = window.vabrokerPage.media.link;"
            " return [l.sent, l.received, l.copies]; }"
        )
        for tab in (rec, vol)
    ]
    assert links[0][0] == links[1][1] and links[1][0] == links[0][1], links
    assert links[0][2] == links[1][2] == 0, links

    await vol.click("#hang-up")
    await expect(live(vol)).to_have_text(re.compile("Call ended. You hung up."))
    await expect(live(rec)).to_have_text("Call ended. The helper ended the call.")
    for tab in (vol, rec):
        await tab.context.close()


async def test_recipient_hangs_up_and_both_pages_end(
    browser: Browser, broker_server: Server
) -> None:
    vol = await open_as(browser, broker_server, "volunteer", "vol-page-2", "volunteer", name="Vic")
    await expect(live(vol)).to_have_text(re.compile("Signed in as Vic"))
    await vol.click("#duty")
    await expect(live(vol)).to_have_text("You are on duty. Waiting for a call.")
    rec = await open_as(browser, broker_server, "recipient", "rec-page-2", "recipient", name="Ros")
    await expect(live(rec)).to_have_text(re.compile("Signed in as Ros"))
    await rec.click("#call")
    await expect(live(vol)).to_have_text(re.compile("Call from Ros, in English"))
    await vol.click("#accept")
    await expect(live(rec)).to_have_text("Connected to Vic. They can see your camera now.")
    await rec.click("#hang-up")
    await expect(live(rec)).to_have_text("Call ended. You hung up.")
    await expect(live(vol)).to_have_text(
        "Call ended. The caller ended the call. You are on duty. Waiting for a call."
    )
    # Both pages let go of the camera, the microphone and the peer connection.
    assert await rec.evaluate("() => window.vabrokerPage.media === null")
    assert await vol.evaluate("() => window.vabrokerPage.media === null")
    assert await rec.evaluate("() => document.querySelector('#preview').srcObject === null")
    # The volunteer's history shows the call, and the CSV export downloads it.
    await expect(vol.locator("#history table tbody tr")).to_have_count(1)
    async with vol.expect_download() as download_info:
        await vol.click("#export-csv")
    download = await download_info.value
    path = await download.path()
    header, *rows = list(csv.reader(io.StringIO(path.read_text())))
    assert header[:3] == ["call", "role", "language"]
    assert len(rows) == 1 and rows[0][1:3] == ["volunteer", "en"] and "completed" in rows[0]
    await expect(live(vol)).to_have_text("Your calls were downloaded as calls.csv.")
    for tab in (vol, rec):
        await tab.context.close()


async def test_recipient_page_with_an_aiortc_volunteer(
    browser: Browser, broker_server: Server, loopback_ice: None
) -> None:
    client = await broker_server.connect("bot-1", "volunteer", name="Bot", languages=["en"])
    assert (await client.request({"type": "availability", "available": True}))["available"]
    bot = Bot(client)
    answering = asyncio.ensure_future(bot.answer_first_ring())
    rec = await open_as(browser, broker_server, "recipient", "rec-bot-1", "recipient", name="Ria")
    try:
        await expect(live(rec)).to_have_text(re.compile("Signed in as Ria"))
        await rec.click("#call")
        await expect(live(rec)).to_have_text("Connected to Bot. They can see your camera now.")
        # Decoded frames of the page's fake camera arrive at the bot.
        await wait_for(lambda: bot.frames >= 20, 10, lambda: f"{bot.frames} frames")
        assert bot.sizes == {(640, 480)}
        # The bot's tone reaches the page: the page's inbound audio is loud, not silence.
        level = 0.0
        for _ in range(100):
            level = await rec.evaluate(INBOUND_AUDIO_LEVEL)
            if level > 0.1:
                break
            await asyncio.sleep(0.1)
        assert level > 0.1, f"the page hears the bot's tone at level {level}"
        await rec.keyboard.press("Enter")  # focus is on Hang up
        await expect(live(rec)).to_have_text("Call ended. You hung up.")
        await asyncio.wait_for(bot.ended.wait(), 5)
        await asyncio.wait_for(answering, 5)
    finally:
        answering.cancel()
        await bot.close()
        await rec.context.close()


INBOUND_AUDIO_LEVEL = """async () => {
    const stats = await window.vabrokerPage.media.pc.getStats();
    let level = 0;
    stats.forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "audio" && s.totalSamplesReceived > 0) {
            level = s.audioLevel || 0;
        }
    });
    return level;
}"""


async def wait_for(
    condition: Callable[[], bool], timeout: float, describe: Callable[[], str]
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {describe()}")
        await asyncio.sleep(0.05)


async def test_a_dropped_connection_resumes_and_the_call_goes_on(
    browser: Browser, broker_server: Server
) -> None:
    vol = await open_as(browser, broker_server, "volunteer", "vol-resume", "volunteer", name="Uma")
    await expect(live(vol)).to_have_text(re.compile("Signed in as Uma"))
    await vol.keyboard.press("Space")
    await expect(live(vol)).to_have_text("You are on duty. Waiting for a call.")
    rec = await open_as(browser, broker_server, "recipient", "rec-resume", "recipient", name="Ike")
    await expect(live(rec)).to_have_text(re.compile("Signed in as Ike"))
    await rec.keyboard.press("Enter")
    await expect(live(vol)).to_have_text(re.compile("^Call from Ike"))
    await expect(vol.locator("#ring-expires")).to_have_text(re.compile("^This ring lasts until"))
    await vol.keyboard.press("Enter")
    await expect(live(vol)).to_have_text("Connected to Ike. You can see their camera.")
    first_session = await vol.evaluate("window.vabrokerPage.session.welcome.session")

    # The volunteer's WebSocket drops (as on a network change); the page resumes its session.
    await vol.evaluate("window.vabrokerPage.session.ws.close(3000)")
    await expect(live(vol)).to_have_text("Reconnected.")
    assert await vol.evaluate("window.vabrokerPage.session.welcome.session") == first_session
    # Media never went through the broker, so it kept flowing; and the call is still there.
    frames = await presented_frames(vol, "#remote-video", 1.0)
    assert frames >= 5, f"{frames} frames after the reconnect"
    await vol.keyboard.press("Enter")  # focus stayed on Hang up
    await expect(live(rec)).to_have_text("Call ended. The helper ended the call.")
    await expect(live(vol)).to_have_text(re.compile("^Call ended. You hung up."))
    for tab in (vol, rec):
        await tab.context.close()


async def test_volunteer_declines_by_keyboard(browser: Browser, broker_server: Server) -> None:
    vol = await open_as(browser, broker_server, "volunteer", "vol-decl", "volunteer", name="Dot")
    await expect(live(vol)).to_have_text(re.compile("Signed in as Dot"))
    await vol.keyboard.press("Space")
    await expect(live(vol)).to_have_text("You are on duty. Waiting for a call.")
    rec = await open_as(browser, broker_server, "recipient", "rec-decl", "recipient", name="Eve")
    await expect(live(rec)).to_have_text(re.compile("Signed in as Eve"))
    await rec.keyboard.press("Enter")
    await expect(live(vol)).to_have_text(re.compile("^Call from Eve"))
    await vol.keyboard.press("Tab")
    assert await vol.evaluate("document.activeElement.id") == "decline"
    await vol.keyboard.press("Enter")
    await expect(live(vol)).to_have_text("Declined. You are on duty. Waiting for a call.")
    assert await vol.evaluate("document.activeElement.id") == "duty"
    # The search goes on (nobody else is on duty); the recipient cancels it.
    assert await rec.evaluate("document.activeElement.id") == "cancel"
    await rec.keyboard.press("Enter")
    await expect(live(rec)).to_have_text("Call ended. The call was cancelled.")
    for tab in (vol, rec):
        await tab.context.close()


async def test_a_reloaded_recipient_page_takes_up_its_open_search(
    browser: Browser, broker_server: Server
) -> None:
    rec = await open_as(browser, broker_server, "recipient", "rec-reload", "recipient", name="Ola")
    await expect(live(rec)).to_have_text(re.compile("Signed in as Ola"))
    await rec.keyboard.press("Enter")
    # Nobody on duty and no help centre to escalate to: told when to try again, also after
    # the reload.
    nobody_free = (
        "No volunteer is free just now. Still looking… "
        "If no one answers, please try again in about 15 minutes."
    )
    await expect(live(rec)).to_have_text(nobody_free)
    await rec.reload()
    await expect(live(rec)).to_have_text(f"Signed in as Ola. {nobody_free}")
    assert await rec.evaluate("document.activeElement.id") == "cancel"
    await expect(rec.locator("body")).to_have_attribute("data-state", "searching")
    await rec.click("#cancel")
    await expect(live(rec)).to_have_text("Call ended. The call was cancelled.")
    await rec.context.close()


async def test_a_reloaded_volunteer_page_shows_it_is_still_on_duty(
    browser: Browser, broker_server: Server
) -> None:
    vol = await open_as(browser, broker_server, "volunteer", "vol-reload", "volunteer", name="Kit")
    await expect(live(vol)).to_have_text("Signed in as Kit. You are off duty.")
    await vol.click("#duty")
    await expect(live(vol)).to_have_text("You are on duty. Waiting for a call.")
    await vol.reload()
    await expect(live(vol)).to_have_text("Signed in as Kit. You are on duty. Waiting for a call.")
    await expect(vol.locator("#duty")).to_have_attribute("aria-checked", "true")
    await vol.click("#duty")
    await expect(live(vol)).to_have_text("You are off duty.")
    await vol.context.close()


async def test_a_page_follows_the_brokers_reconnect(browser: Browser) -> None:
    """A broker node shutting down tells its clients to reconnect; the page comes back and
    resumes its session (here the same server, which keeps running)."""
    async with start_server() as srv:
        vol = await open_as(browser, srv, "volunteer", "vol-restart", "volunteer", name="Rey")
        await expect(live(vol)).to_have_text(re.compile("Signed in as Rey"))
        session = await vol.evaluate("window.vabrokerPage.session.welcome.session")
        await srv.ctx.hub.shutdown()
        await expect(live(vol)).to_have_text("Reconnected.")
        assert await vol.evaluate("window.vabrokerPage.session.welcome.session") == session
        await vol.keyboard.press("Space")
        await expect(live(vol)).to_have_text("You are on duty. Waiting for a call.")
        await vol.context.close()
