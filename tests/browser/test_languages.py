"""Every state of the recipient's, the volunteer's and the agent's pages, in each shipped
language (English, Spanish, Arabic right to left): axe-core finds nothing at 1280 px and at
320 px, in dark mode and in forced colours; at 320 px the page never scrolls sideways; the page
says its language (lang, dir), its title names the state in that language, and no catalog key
shows instead of words.

One walk through the states per language, one page load per page, the checks made on the page
as it stands (viewport and media changed in place): a few seconds per state."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.browser.pages import LobbyHold, axe_violations, explain, open_page
from tests.helpers import Server, start_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

CATALOGS = Path(__file__).resolve().parents[2] / "clients" / "web" / "i18n"
LOCALES = {"en": "en-GB", "es": "es-ES", "ar": "ar-EG"}
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 320, "height": 640}
STATE_TITLES = {
    "signed-out": "title.signed-out",
    "searching": "title.searching",
    "ringing": "title.ringing",
    "in-call": "title.in-call",
    "ended": "title.ended",
}
KEY_SHOWN = re.compile(r"\b(?:common|title|recipient|volunteer|agent|sw)\.[a-z0-9-]+\.[a-z0-9.-]+")


def catalog(lang: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CATALOGS / f"{lang}.json").read_text(encoding="utf-8"))
    return data


async def check_state(page: Page, name: str, state: str | None, lang: str) -> None:
    """``page`` (index, recipient, volunteer, agent) in ``state`` (None for the index, which
    has none), checked every way there is."""
    words = catalog(lang)
    where = f"{name} in {state} ({lang})"
    if state is not None:
        await expect(page.locator("body")).to_have_attribute("data-state", state)
    await expect(page.locator("html")).to_have_attribute("lang", lang)
    await expect(page.locator("html")).to_have_attribute("dir", "rtl" if lang == "ar" else "ltr")
    base = words[f"{name}.title"]
    title = words[STATE_TITLES[state]].format(page=base) if state in STATE_TITLES else base
    await expect(page).to_have_title(title)
    text = await page.evaluate("document.body.innerText")
    assert not KEY_SHOWN.search(text), f"{where}: a catalog key shows: {KEY_SHOWN.search(text)}"

    checks: list[tuple[str, dict[str, int], dict[str, Any]]] = [
        ("1280 px", WIDE, {"color_scheme": "light", "forced_colors": "none"}),
        ("320 px", NARROW, {"color_scheme": "light", "forced_colors": "none"}),
        ("320 px dark", NARROW, {"color_scheme": "dark", "forced_colors": "none"}),
        ("1280 px forced colours", WIDE, {"color_scheme": "light", "forced_colors": "active"}),
    ]
    for label, viewport, media in checks:
        await page.set_viewport_size(viewport)
        await page.emulate_media(**media)
        # The page's resize handlers run before the next frame, as after any real resize.
        await page.evaluate(
            "new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))"
        )
        violations = await axe_violations(page)
        assert violations == [], f"{where} at {label}:\n{explain(violations)}"
        if viewport is NARROW:
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width == NARROW["width"], f"{where}: {width} px wide at a 320 px viewport"
    await page.set_viewport_size(WIDE)
    await page.emulate_media(color_scheme="light", forced_colors="none")


async def context_in(browser: Browser, lang: str) -> BrowserContext:
    context = await browser.new_context(viewport=WIDE, locale=LOCALES[lang])
    await context.grant_permissions(["camera", "microphone"])
    return context


@pytest.mark.parametrize("lang", ["en", "es", "ar"])
async def test_every_state_of_every_page_in_every_language(
    browser: Browser, broker_server: Server, lang: str
) -> None:
    words = catalog(lang)
    server = broker_server

    # Signed out: no profile yet, so the browser's language.
    context = await context_in(browser, lang)
    index = await open_page(context, server, "index")
    await check_state(index, "index", None, lang)
    await index.close()
    for name in ("recipient", "volunteer", "agent"):
        tab = await open_page(context, server, name)
        await expect(tab.locator("#live")).to_have_text(words["common.sign-in.please"])
        await check_state(tab, name, "signed-out", lang)
        await tab.close()

    # Signed in: the profile's language (the browser's here is English, to tell them apart).
    people = await browser.new_context(viewport=WIDE, locale="en-US")
    await people.grant_permissions(["camera", "microphone"])

    def token(sub: str, role: str, **claims: Any) -> str:
        return server.token(f"{sub}-{lang}", role, languages=[lang, "en"], **claims)

    rec = await open_page(people, server, "recipient", token("rec-l10n", "recipient", name="Rae"))
    await expect(rec.locator("#partners li")).to_have_count(1)
    await expect(rec.locator("#circle-members")).to_have_text(words["recipient.circle.empty"])
    await expect(rec.locator("#who legend")).to_have_text(words["recipient.who.legend"])
    await check_state(rec, "recipient", "idle", lang)
    # The call language offered first is the recipient's, named in the page's language.
    assert await rec.locator("#language").input_value() == lang

    # Nothing granted: notifications are still to be asked for (granting some permissions
    # denies the others); the fake media UI lets the microphone start.
    helpers = await browser.new_context(viewport=WIDE, locale="en-US")
    vol = await open_page(helpers, server, "volunteer", token("vol-l10n", "volunteer", name="Val"))
    await expect(vol.locator("#live")).to_have_text(re.compile("Val"))
    await expect(vol.locator("#duty .switch-state")).to_have_text(words["common.switch.off"])
    await expect(vol.locator("#impact-summary")).to_have_text(words["volunteer.impact.none"])
    await expect(vol.locator("#circle-list")).to_have_text(words["volunteer.circles.none"])
    await check_state(vol, "volunteer", "idle", lang)
    # Going on duty first explains notifications, then lets the browser ask.
    await vol.click("#duty")
    await expect(vol.locator("#notify-ask")).to_be_visible()
    await expect(vol.locator("#duty .switch-state")).to_have_text(words["common.switch.on"])
    await check_state(vol, "volunteer", "idle", lang)
    await vol.click("#notify-later")
    await expect(vol.locator("#notify-ask")).to_be_hidden()

    await rec.click("#call")
    await expect(rec.locator("#live")).to_have_text(
        words["common.search.ringing"]["one"].replace("{count}", "1")
    )
    await check_state(rec, "recipient", "searching", lang)
    await check_state(vol, "volunteer", "ringing", lang)

    await vol.click("#accept")
    await expect(rec.locator("body")).to_have_attribute("data-state", "in-call")
    await expect(vol.locator("#h-tools")).to_have_text(words["common.tools.heading"])
    await check_state(vol, "volunteer", "in-call", lang)
    await check_state(rec, "recipient", "in-call", lang)

    await rec.click("#hang-up")
    await expect(vol.locator("body")).to_have_attribute("data-state", "ended")
    await check_state(rec, "recipient", "ended", lang)
    # The answered call is in the volunteer's record: its table by month, in the language.
    await expect(vol.locator("#impact-months caption")).to_have_text(
        words["volunteer.impact.caption"]
    )
    await check_state(vol, "volunteer", "ended", lang)
    # Nothing is chosen for the caller; sending without an answer asks for one.
    assert await rec.locator('input[name="rating"]:checked').count() == 0
    await rec.click("#send-feedback")
    await expect(rec.locator("#feedback-error")).to_have_text(words["recipient.feedback.choose"])
    assert await rec.evaluate("document.activeElement.name") == "rating"
    await check_state(rec, "recipient", "ended", lang)
    await vol.click("#duty")  # off duty
    await expect(vol.locator("#duty")).to_have_attribute("aria-checked", "false")

    # The agent console, with a call from the demo organisation's queue (English only).
    agent = await open_page(
        people, server, "agent", token("agent-l10n", "agent", name="Ada", org="demo-org")
    )
    await expect(agent.locator("#queue")).to_contain_text(words["agent.queue.empty"])
    await check_state(agent, "agent", "idle", lang)
    await agent.check('input[value="available"]')
    await expect(agent.locator("#live")).to_have_text(words["agent.status.now-available"])
    await rec.click("#again")
    await rec.locator("#language").select_option("en")
    await rec.locator("#partners button").click()
    await expect(agent.locator("body")).to_have_attribute("data-state", "ringing")
    await check_state(agent, "agent", "ringing", lang)
    await agent.click("#take")
    await expect(rec.locator("body")).to_have_attribute("data-state", "in-call")
    await check_state(agent, "agent", "in-call", lang)
    await agent.click("#hang-up")
    await expect(rec.locator("body")).to_have_attribute("data-state", "ended")
    await check_state(agent, "agent", "ended", lang)
    await agent.click("#ready")
    await expect(agent.locator("body")).to_have_attribute("data-state", "idle")
    await agent.check('input[value="away"]')
    await expect(agent.locator("#live")).to_have_text(words["agent.status.now-away"])
    await people.close()
    await helpers.close()
    await context.close()


@pytest.mark.parametrize("lang", ["en", "es", "ar"])
async def test_the_volunteers_lobby_in_every_language(browser: Browser, lang: str) -> None:
    """The lobby's states on the volunteer page (with requests, after someone else took one
    first, empty), checked like every other state. A broker of its own, whose waves are 10
    minutes apart: requests made before the volunteer is on duty ring nobody and are listed."""
    words = catalog(lang)
    async with start_server(demo=True, wave_interval_s=600.0, max_wait_s=600.0) as server:
        asking = []
        for n, topic in enumerate(["reading a letter", None]):
            client = await server.connect(f"rec-lobby-{n}", "recipient", languages=[lang])
            status = await client.request(
                {"type": "call.request", "language": lang, "topic": topic}
            )
            asking.append((client, status["call"]))
        other = await server.connect("vol-lobby-other", "volunteer", languages=[lang])
        assert (await other.request({"type": "availability", "available": True}))["available"]

        context = await browser.new_context(viewport=WIDE, locale="en-US")
        hold = LobbyHold()
        token = server.token("vol-lobby", "volunteer", name="Val", languages=[lang, "en"])
        vol = await hold.open(context, server, "volunteer", token)
        await expect(vol.locator("#live")).to_have_text(re.compile("Val"))
        await expect(vol.locator("#lobby-off")).to_have_text(words["volunteer.lobby.off-duty"])
        await vol.click("#duty")
        await vol.click("#notify-later")
        await vol.click("#lobby-toggle")
        count = words["volunteer.lobby.count"]["two" if lang == "ar" else "other"]
        await expect(vol.locator("#lobby-count")).to_have_text(count.replace("{count}", "2"))
        take = vol.locator("#lobby-list .lobby-take")
        await expect(take).to_have_count(2)
        await expect(take.first).to_have_text(words["volunteer.lobby.take"])
        # Each Take button's name starts with its visible word and names the request in the
        # page's language, never a catalog key.
        for button in await take.all():
            name = str(await button.get_attribute("aria-label"))
            assert name.startswith(words["volunteer.lobby.take"]), name
            assert not KEY_SHOWN.search(name), name
        await check_state(vol, "volunteer", "idle", lang)

        # Someone else takes the first while the page's list is on its way: the page says so.
        hold.held = True
        taken = await other.request({"type": "call.take", "call": asking[0][1]})
        assert taken["type"] == "call.assigned", taken
        await take.first.click()
        await expect(vol.locator("#lobby-notice")).to_have_text(words["volunteer.lobby.conflict"])
        await check_state(vol, "volunteer", "idle", lang)
        hold.release()

        # Empty.
        await other.request({"type": "call.end", "call": asking[0][1]})
        await asking[1][0].request({"type": "call.cancel", "call": asking[1][1]})
        await expect(take).to_have_count(0)
        await expect(vol.locator("#lobby-count")).to_have_text(words["volunteer.lobby.empty"])
        await check_state(vol, "volunteer", "idle", lang)
        for client, _ in asking:
            await client.close()
        await other.close()
        await context.close()
