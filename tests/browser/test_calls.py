"""Whole calls between browser pages, and between a page and an aiortc volunteer: real media."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Browser, expect

from tests.browser.pages import live, open_as, presented_frames
from tests.helpers import Server

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

    await vol.click("#hang-up")
    await expect(live(vol)).to_have_text(re.compile("Call ended. You hung up."))
    await expect(live(rec)).to_have_text("Call ended. The helper ended the call.")
    for tab in (vol, rec):
        await tab.context.close()
