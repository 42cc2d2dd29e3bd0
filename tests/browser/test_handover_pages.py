"""A person one tap away, on the pages: the recipient's page in a call with an SDK automatic
reader asks for a volunteer (sharing what the reader read), the volunteer's page is rung with
that text and takes the call over; the recipient's media moves to the volunteer's call. Every
new state passes axe."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Browser, expect

from clients.assistant import Assistant
from clients.sdk import Client
from tests.browser.pages import assert_accessible, live, open_as
from tests.calls import LOOPBACK, until
from tests.helpers import Server

pytestmark = pytest.mark.asyncio(loop_scope="module")

READ = "EXP 07/2026\nTake one tablet twice a day"


async def test_get_me_a_volunteer_from_the_reader_on_the_pages(
    browser: Browser, broker_server: Server
) -> None:
    token = broker_server.token("reader-handover", "assistant", name="Reader", languages=["en"])
    reader = Assistant(Client(broker_server.ws_url, token), LOOPBACK)
    await reader.client.connect()
    await reader.set_available(True)
    vol = await open_as(
        browser, broker_server, "volunteer", "vol-handover", "volunteer", name="Val"
    )
    rec = await open_as(
        browser, broker_server, "recipient", "rec-handover", "recipient", name="Ida"
    )
    try:
        await expect(live(vol)).to_have_text(re.compile("Signed in as Val"))
        await vol.click("#duty")
        await expect(live(vol)).to_have_text("You are on duty. Waiting for a call.")
        await expect(live(rec)).to_have_text(re.compile("Signed in as Ida"))
        assert await rec.is_hidden("#handover")
        await rec.check("#ask-assistant")
        await rec.click("#call")
        await expect(live(rec)).to_have_text("Connected to Reader. They can see your camera now.")
        await expect(rec.locator("#get-volunteer")).to_be_visible()
        await expect(rec.locator("#cancel-handover")).to_be_hidden()
        await assert_accessible(rec, "in-call")
        first = await reader.wait_call(10)
        await first.tools.wait_open(10)
        first.tools.send_text(READ, "en")
        await expect(live(rec)).to_have_text(re.compile("EXP 07/2026"))

        # Asked, then stopped: the reader stays on.
        await rec.click("#get-volunteer")
        await expect(live(rec)).to_have_text("Looking for a volunteer; the reader stays with you.")
        await expect(rec.locator("#cancel-handover")).to_be_focused()
        await assert_accessible(rec, "in-call")
        await expect(live(vol)).to_have_text(re.compile("Call from Ida"))
        assert await vol.is_hidden("#ring-reading")  # nothing was shared
        await rec.click("#cancel-handover")
        await expect(live(rec)).to_have_text(
            "You stopped looking for a volunteer. The reader is still with you."
        )
        await expect(live(vol)).to_have_text(re.compile("cancelled"))
        await expect(rec.locator("#get-volunteer")).to_be_focused()
        assert reader.call is not None and reader.call.id == first.id

        # Asked again, sharing what the reader read; the volunteer takes over.
        await rec.check("#share-reading")
        await rec.click("#get-volunteer")
        await expect(live(rec)).to_have_text("Looking for a volunteer; the reader stays with you.")
        await expect(live(vol)).to_have_text(re.compile("Call from Ida"))
        await expect(vol.locator("#ring-reading")).to_have_text(READ)
        await assert_accessible(vol, "ringing")
        await vol.click("#accept")
        await expect(live(rec)).to_have_text("Connected to Val. They can see your camera now.")
        await expect(live(vol)).to_have_text("Connected to Ida. You can see their camera.")
        await expect(vol.locator("#call-reading-text")).to_have_text(READ)
        await assert_accessible(vol, "in-call")
        await expect(rec.locator("#handover")).to_be_hidden()
        await assert_accessible(rec, "in-call")
        await until(lambda: reader.call is None, 5, "the reader's call ended")
        said = await rec.evaluate("window.vabrokerPage.callId")
        assert said != first.id
        await rec.click("#hang-up")
        await expect(live(rec)).to_have_text("Call ended. You hung up.")
        await expect(vol.locator("#call-reading")).to_be_hidden()
    finally:
        await reader.close()
        await rec.context.close()
        await vol.context.close()
