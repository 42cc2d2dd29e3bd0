"""Screenshots of the pages in their main states, for the README.

    .venv/bin/python -m tests.browser.screenshots [OUT_DIR]   (default docs/screenshots)

Starts a broker on 127.0.0.1, drives the pages in Debian's headless Chromium with the fake
camera (the same helpers as the browser tests), and writes one PNG per page and state.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from playwright.async_api import Page, async_playwright, expect

from tests.browser.cases import reported_call
from tests.browser.pages import CHROMIUM, CHROMIUM_ARGS, live, new_context, open_as, open_page
from tests.helpers import start_server


async def shoot(page: Page, out: Path, name: str) -> None:
    path = out / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    print(path)


async def until(page: Page, expression: str, timeout_s: float = 15.0) -> None:
    """Waits until ``expression`` is true in the page. Polled with evaluate: Playwright's
    wait_for_function builds its predicate with eval, which the pages' CSP refuses."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await page.evaluate(expression):
        if loop.time() > deadline:
            raise TimeoutError(f"{expression} stayed false for {timeout_s} s")
        await asyncio.sleep(0.1)


async def main(out: Path) -> None:
    async with (
        # Waves 10 minutes apart: the lobby's requests below ring nobody while it is shot.
        start_server(demo=True, demo_signins_per_hour=1000, wave_interval_s=600.0) as server,
        async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        # Notifications allowed, as a volunteer who said yes when going on duty.
        vol_context = await new_context(browser)
        await vol_context.grant_permissions(["camera", "microphone", "notifications"])
        vol = await open_page(
            vol_context, server, "volunteer", server.token("vol-shot", "volunteer", name="Val")
        )
        await expect(live(vol)).to_have_text(re.compile("Signed in as"))
        await vol.click("#duty")
        await expect(live(vol)).to_have_text("You are on duty. Waiting for a call.")
        await shoot(vol, out, "volunteer-on-duty")

        rec = await open_as(browser, server, "recipient", "rec-shot", "recipient", name="Rae")
        await expect(live(rec)).to_have_text(re.compile("Signed in as"))
        await expect(rec.locator("#partners")).not_to_contain_text("Loading")
        await shoot(rec, out, "recipient-idle")
        await rec.fill("#topic", "reading a medicine label")
        await rec.click("#call")
        await expect(live(rec)).to_have_text("Ringing 1 volunteer.")
        await until(rec, "document.querySelector('#preview').readyState >= 2")
        await shoot(rec, out, "recipient-searching")
        await expect(live(vol)).to_have_text(re.compile("^Call from Rae"))
        await vol.emulate_media(reduced_motion="reduce")  # a still frame of the ring
        await shoot(vol, out, "volunteer-ringing")
        await vol.click("#accept")
        await expect(live(vol)).to_have_text(re.compile("^Connected"))
        await expect(live(rec)).to_have_text(re.compile("^Connected"))
        await until(vol, "document.querySelector('#remote-video').readyState >= 2")
        await asyncio.sleep(0.5)  # a few frames in, so the picture is not the first one
        await shoot(vol, out, "volunteer-in-call")
        await shoot(rec, out, "recipient-in-call")
        await rec.click("#hang-up")
        await expect(live(rec)).to_have_text("Call ended. You hung up.")
        await shoot(rec, out, "recipient-ended")

        # The recipient's page in Arabic (the language of the caller's profile), right to left.
        rec_ar = await open_as(
            browser, server, "recipient", "rec-shot-ar", "recipient", name="ريم", languages=["ar"]
        )
        await expect(live(rec_ar)).to_have_text(re.compile("ريم"))
        await expect(rec_ar.locator("#partners li")).to_have_count(1)
        await shoot(rec_ar, out, "recipient-idle-ar")
        await rec_ar.click("#call")
        await expect(rec_ar.locator("body")).to_have_attribute("data-state", "searching")
        await until(rec_ar, "document.querySelector('#preview').readyState >= 2")
        await shoot(rec_ar, out, "recipient-searching-ar")
        await rec_ar.click("#cancel")

        agent = await open_as(
            browser, server, "agent", "agent-shot", "agent", name="Ada", org="acme"
        )
        await expect(live(agent)).to_have_text(re.compile("Signed in as"))
        await agent.check('input[value="available"]')
        await expect(live(agent)).to_have_text(re.compile("^You are available"))
        await shoot(agent, out, "agent-available")

        # The lobby: requests made while nobody is on duty, seen by a volunteer who came on
        # duty afterwards.
        await vol.click("#duty")
        await expect(live(vol)).to_have_text("You are off duty.")
        asking = []
        for n, (language, topic) in enumerate(
            [
                ("en", "reading a letter"),
                ("en", None),
                ("es", "which bus is this"),
                ("en", "a photo"),
            ]
        ):
            client = await server.connect(f"rec-lobby-shot-{n}", "recipient", languages=[language])
            await client.request({"type": "call.request", "language": language, "topic": topic})
            asking.append(client)
        lobby = await open_page(
            vol_context,
            server,
            "volunteer",
            server.token("vol-lobby-shot", "volunteer", name="Lee", languages=["en", "es"]),
        )
        await expect(live(lobby)).to_have_text(re.compile("Signed in as"))
        await lobby.click("#duty")
        await lobby.click("#lobby-toggle")
        await expect(lobby.locator("#lobby-list li")).to_have_count(4)
        await shoot(lobby, out, "volunteer-lobby")
        for client in asking:
            await client.close()

        # The operator's console, with a few reports to look at.
        for n, (report, comment) in enumerate(
            [
                ("privacy", "They asked me to show my bank card to the camera."),
                ("unsafe", None),
                ("abusive", "Shouted at me when I could not find the label."),
            ]
        ):
            await reported_call(server, f"rec-case-{n}", f"vol-case-{n}", report, comment=comment)
        context = await browser.new_context(viewport={"width": 1100, "height": 900})
        admin = await open_page(
            context, server, "admin", server.token("admin-shot", "admin", name="Ola")
        )
        await expect(live(admin)).to_have_text(re.compile("Signed in as"))
        await shoot(admin, out, "admin-overview")
        await admin.click("#review-cases")
        await expect(live(admin)).to_have_text(re.compile("^Moderation queue"))
        await admin.locator("#cases button.review").first.click()
        await expect(live(admin)).to_have_text(re.compile("^Case "))
        await admin.check('input[name="action"][value="suspend"]')
        await admin.fill("#resolve-days", "14")
        await admin.fill("#resolve-note", "Shouting at a caller: a first suspension.")
        await admin.click("#resolve")
        await expect(admin.locator("#confirm")).to_have_attribute("open", "")
        await shoot(admin, out, "admin-case")
        await admin.click("#confirm-yes")
        await expect(live(admin)).to_have_text(re.compile("resolved"))
        await admin.click('#console-nav button[data-view="stats"]')
        await expect(live(admin)).to_have_text(re.compile("^Statistics"))
        await shoot(admin, out, "admin-stats")
        await admin.click('#console-nav button[data-view="audit"]')
        await expect(live(admin)).to_have_text(re.compile("^Audit log"))
        await shoot(admin, out, "admin-audit")
        await browser.close()


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/screenshots")
    target.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(target))
