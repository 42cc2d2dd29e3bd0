"""In-call tools between a page and an aiortc peer over the call's data channel: the
recipient's page answers an SDK helper (the fake camera has no torch: said plainly), and the
helper's page asks an SDK recipient for a 1920x1080 photo and shows it with zoom and pan."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace

import pytest
from playwright.async_api import Browser, expect

from clients.assistant import Assistant
from clients.calltools import ToolFailed, image_size
from clients.roles import Recipient
from clients.sdk import Client
from tests.browser.pages import assert_accessible, focused, live, open_as
from tests.calls import LOOPBACK, until, volunteer
from tests.helpers import Server

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_recipient_page_answers_an_sdk_helpers_tools(
    browser: Browser, broker_server: Server
) -> None:
    vol = await volunteer(broker_server, "sdk-helper-1")
    rec = await open_as(browser, broker_server, "recipient", "rec-tools-1", "recipient", name="Ria")
    try:
        await expect(live(rec)).to_have_text(re.compile("Signed in as Ria"))
        await rec.click("#call")
        await expect(live(rec)).to_have_text(re.compile("They can see your camera now"))
        call = await vol.wait_call(10)
        await call.tools.wait_open(10)

        # Headless Chromium's fake camera has no torch, no zoom and no second camera: the page
        # answers "unsupported" and tells the recipient plainly.
        with pytest.raises(ToolFailed) as torch:
            await call.tools.torch(True)
        assert torch.value.code == "unsupported"
        assert torch.value.message == "This camera has no torch."
        await expect(live(rec)).to_have_text(
            "The helper asked for your torch, but your device does not support it. "
            "This camera has no torch."
        )
        for ask in (call.tools.switch_camera(), call.tools.zoom(2)):
            with pytest.raises(ToolFailed) as unsupported:
                await ask
            assert unsupported.value.code == "unsupported"

        # A photo at the camera's full resolution, byte-exact.
        photo = await call.tools.photo()
        sent = await rec.evaluate("window.vabrokerPage.tools.sent.at(-1)")
        assert photo.sha256 == sent["sha256"] == hashlib.sha256(photo.data).hexdigest()
        settings = await rec.evaluate(
            "(() => { const t = window.vabrokerPage.stream.getVideoTracks()[0];"
            " const c = t.getCapabilities(); return [c.width.max, c.height.max]; })()"
        )
        assert image_size(photo.data) == (photo.width, photo.height) == tuple(settings)
        await expect(live(rec)).to_have_text("Photo sent.")

        # A photo over the helper's limit is not sent.
        with pytest.raises(ToolFailed) as large:
            await call.tools.photo(max_bytes=1000)
        assert large.value.code == "too_large"
        await expect(live(rec)).to_have_text(
            "The helper asked for a photo, but it was too large to send."
        )

        # What an automatic reader read arrives as text and is said in the live region.
        call.tools.send_text("Take one tablet every four hours.", "en")
        await expect(live(rec)).to_have_text("Take one tablet every four hours.")
        assert await rec.evaluate("window.vabrokerPage.tools.texts") == [
            "Take one tablet every four hours."
        ]
        await call.hang_up()
    finally:
        await vol.close()
        await rec.context.close()


async def test_recipient_page_can_refuse_photos(browser: Browser, broker_server: Server) -> None:
    vol = await volunteer(broker_server, "sdk-helper-2")
    rec = await open_as(browser, broker_server, "recipient", "rec-tools-2", "recipient", name="Rex")
    try:
        await expect(live(rec)).to_have_text(re.compile("Signed in as Rex"))
        # The setting is a checkbox on the idle page, operable by keyboard, and it is kept.
        await rec.focus("#allow-photos")
        await rec.keyboard.press("Space")
        assert not await rec.is_checked("#allow-photos")
        await assert_accessible(rec, "idle")
        await rec.click("#call")
        await expect(live(rec)).to_have_text(re.compile("They can see your camera now"))
        call = await vol.wait_call(10)
        await call.tools.wait_open(10)
        with pytest.raises(ToolFailed) as refused:
            await call.tools.photo()
        assert refused.value.code == "refused"
        await expect(live(rec)).to_have_text(
            "The helper asked for a photo. Photos are off in your settings, so none was sent."
        )
        assert await rec.evaluate("window.vabrokerPage.tools.sent.length") == 0
        await call.hang_up()
        await rec.reload()
        await expect(live(rec)).to_have_text(re.compile("Signed in as Rex"))
        assert not await rec.is_checked("#allow-photos")
    finally:
        await vol.close()
        await rec.context.close()


async def test_helper_page_takes_a_full_resolution_photo_and_views_it_by_keyboard(
    browser: Browser, broker_server: Server
) -> None:
    vol = await open_as(
        browser,
        broker_server,
        "volunteer",
        "vol-tools-3",
        "volunteer",
        name="Val",
        languages=["en"],
    )
    token = broker_server.token("sdk-rec-3", "recipient", name="Sam", languages=["en"])
    rec = Recipient(Client(broker_server.ws_url, token), replace(LOOPBACK, photo_size=(1920, 1080)))
    await rec.client.connect()
    try:
        await expect(live(vol)).to_have_text(re.compile("Signed in as Val"))
        await vol.click("#duty")
        await expect(live(vol)).to_have_text("You are on duty. Waiting for a call.")
        await rec.request(topic="small print")
        await expect(live(vol)).to_have_text(re.compile("Call from Sam"))
        await vol.click("#accept")
        await expect(live(vol)).to_have_text("Connected to Sam. You can see their camera.")
        call = await rec.wait_call(10)
        await call.tools.wait_open(10)
        # The first decoded frame may come a moment after "connected" on a busy machine.
        await vol.wait_for_function("document.querySelector('#remote-video').videoWidth > 0")
        size = await vol.evaluate(
            "[document.querySelector('#remote-video').videoWidth,"
            " document.querySelector('#remote-video').videoHeight]"
        )
        assert size == [640, 480]

        # Every tool by keyboard: the torch is not there on the SDK's test camera, zoom is.
        await vol.focus("#tool-torch")
        await vol.keyboard.press("Enter")
        await expect(live(vol)).to_have_text(
            "Not supported on the caller's phone: This camera has no torch."
        )
        assert await vol.get_attribute("#tool-torch", "aria-pressed") == "false"
        await vol.keyboard.press("Tab")
        assert await focused(vol) == "tool-camera"
        await vol.keyboard.press("Tab")
        await vol.keyboard.press("Enter")
        await expect(live(vol)).to_have_text("The caller's camera is zoomed to 2 times.")
        assert call.media.pattern is not None and call.media.pattern.zoom == 2
        await vol.focus("#tool-photo")
        await vol.keyboard.press("Enter")
        await expect(live(vol)).to_have_text(
            "Photo received, 1920 by 1080 pixels. It is shown below the video."
        )
        sent = call.tools.photos_sent[-1]
        assert await vol.get_attribute("#photo-frame", "data-sha256") == sent.sha256
        natural = await vol.evaluate(
            "[document.querySelector('#photo-image').naturalWidth,"
            " document.querySelector('#photo-image').naturalHeight]"
        )
        assert natural == [1920, 1080]
        await until(lambda: "Photo sent." in rec.tool_notices, 5, "the recipient hears it")

        # Zoom and pan the photo with the keyboard.
        await vol.focus("#photo-frame")
        await vol.keyboard.press("+")
        await vol.keyboard.press("+")
        assert await vol.get_attribute("#photo-frame", "data-scale") == "2.25"
        await vol.keyboard.press("ArrowLeft")
        await vol.keyboard.press("ArrowUp")
        assert await vol.get_attribute("#photo-frame", "data-pan") == "10,10"
        await vol.keyboard.press("0")
        assert await vol.get_attribute("#photo-frame", "data-scale") == "1"
        await vol.click("#photo-zoom-in")
        assert await vol.get_attribute("#photo-frame", "data-scale") == "1.5"
        href = await vol.get_attribute("#photo-save", "href")
        assert href is not None and href.startswith("data:image/jpeg;base64,")
        await assert_accessible(vol, "in-call")

        await vol.click("#hang-up")
        await expect(live(vol)).to_have_text(re.compile("Call ended"))
        assert await vol.is_hidden("#photo-viewer")
    finally:
        await rec.close()
        await vol.context.close()


async def test_recipient_page_can_ask_for_the_automatic_reader_first(
    browser: Browser, broker_server: Server
) -> None:
    token = broker_server.token("reader-page", "assistant", name="Reader", languages=["en"])
    reader = Assistant(Client(broker_server.ws_url, token), LOOPBACK)
    await reader.client.connect()
    await reader.set_available(True)
    rec = await open_as(browser, broker_server, "recipient", "rec-tools-4", "recipient", name="Ada")
    try:
        await expect(live(rec)).to_have_text(re.compile("Signed in as Ada"))
        await rec.check("#ask-assistant")
        await rec.click("#call")
        await expect(live(rec)).to_have_text("Connected to Reader. They can see your camera now.")
        # The fake camera shows no print: the reader says so in the call's audio.
        call = await reader.wait_call(10)
        stats = reader.readers[call.id].stats
        await until(lambda: stats.cannot_read == 1, 30, "the cannot-read advice")
        await call.hang_up()
    finally:
        await reader.close()
        await rec.context.close()
