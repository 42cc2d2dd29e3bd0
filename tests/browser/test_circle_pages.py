"""Trusted circles on the pages, by keyboard alone: a recipient makes an invitation code, a
volunteer opens the invitation link and joins, the recipient sees and removes them; a past
helper's request is accepted from the volunteer page; the recipient asks their circle only.
axe-core finds no violation in each state."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Browser, Page, expect

from broker.model import Profile, Role
from tests.browser.pages import assert_accessible, focused, live, new_context, open_page
from tests.helpers import Server

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def tab_to(page: Page, element_id: str, most: int = 40) -> None:
    for _ in range(most):
        if await focused(page) == element_id:
            return
        await page.keyboard.press("Tab")
    assert await focused(page) == element_id


async def tab_to_named(page: Page, name: str, most: int = 40) -> None:
    for _ in range(most):
        text = await page.evaluate("() => document.activeElement.textContent.trim()")
        if text == name:
            return
        await page.keyboard.press("Tab")
    raise AssertionError(f"no control named {name!r} reached by Tab")


async def test_invite_join_by_link_and_remove_by_keyboard(
    browser: Browser, broker_server: Server
) -> None:
    rec_token = broker_server.token("circ-r1", "recipient", name="Rae", languages=["en"])
    rec = await open_page(await new_context(browser), broker_server, "recipient", rec_token)
    await expect(live(rec)).to_have_text(re.compile("Signed in as Rae"))
    await expect(rec.locator("#circle-members")).to_have_text(
        re.compile("Nobody is in your circle yet")
    )
    await assert_accessible(rec, "idle")
    await tab_to(rec, "circle-invite")
    await rec.keyboard.press("Enter")
    await expect(live(rec)).to_have_text(re.compile(r"^Your invitation code is [0-9A-Z-]{14}\."))
    said = await live(rec).text_content()
    assert said is not None
    code = re.search(r"code is ([0-9A-Z-]{14})\.", said)
    assert code is not None
    await assert_accessible(rec, "idle")

    # The volunteer opens the link: the code is filled in; Enter on the button joins.
    vol_token = broker_server.token("circ-v1", "volunteer", name="Val", languages=["en"])
    context = await new_context(browser)
    vol = await context.new_page()
    await vol.goto(
        f"{broker_server.url}/app/volunteer.html#token={vol_token}&circle={code.group(1)}"
    )
    await expect(live(vol)).to_have_text(re.compile("You were invited into a circle"))
    await expect(vol.locator("#circle-code")).to_have_value(code.group(1))
    await assert_accessible(vol, "idle")
    await tab_to(vol, "circle-join-button")
    await vol.keyboard.press("Enter")
    await expect(live(vol)).to_have_text("You joined Rae's circle.")
    await expect(vol.locator("#circle-list li")).to_have_count(1)
    await assert_accessible(vol, "idle")

    # The same code again is refused, said in words.
    await vol.locator("#circle-code").fill(code.group(1))
    await tab_to(vol, "circle-join-button")
    await vol.keyboard.press("Enter")
    await expect(live(vol)).to_have_text(re.compile("used already or expired"))

    # The recipient sees Val (after a reload of the list) and removes them by keyboard.
    await rec.reload()
    await expect(rec.locator("#circle-members li")).to_have_count(1)
    await tab_to_named(rec, "Remove Val")
    await rec.keyboard.press("Enter")
    await expect(live(rec)).to_have_text("Val is no longer in your circle.")
    await expect(rec.locator("#circle-members li")).to_have_count(0)
    await assert_accessible(rec, "idle")
    await rec.context.close()
    await context.close()


async def test_a_past_helpers_request_is_accepted_and_left_by_keyboard(
    browser: Browser, broker_server: Server
) -> None:
    broker = broker_server.ctx.broker
    store = broker_server.ctx.store
    vol = await open_page(
        await new_context(browser),
        broker_server,
        "volunteer",
        broker_server.token("circ-v2", "volunteer", name="Vic", languages=["en"]),
    )
    await expect(live(vol)).to_have_text(re.compile("Signed in as Vic"))
    # A call Vic answered for Ros, ended, then Ros's request to join: through the broker.
    ros = Profile(user_id="circ-r2", role=Role.RECIPIENT, display_name="Ros")
    await store.put_profile(ros)
    vic = await store.get_profile("circ-v2")
    assert vic is not None
    await store.set_on_duty("circ-v2", True)
    out = await broker.request(ros)
    assert out.call is not None
    await broker.accept(vic, out.call.id)
    await broker.end("circ-r2", out.call.id)
    await broker.circles.propose(ros, out.call.id)
    await vol.reload()
    await expect(vol.locator("#circle-requests li")).to_have_text(
        re.compile("Ros, whom you helped, asks you to join their circle.")
    )
    await assert_accessible(vol, "idle")
    await tab_to_named(vol, "Join Ros's circle")
    await vol.keyboard.press("Enter")
    await expect(live(vol)).to_have_text("You joined Ros's circle.")
    await expect(vol.locator("#circle-requests li")).to_have_count(0)
    await tab_to_named(vol, "Leave Ros's circle")
    await vol.keyboard.press("Enter")
    await expect(live(vol)).to_have_text("You left Ros's circle.")
    await assert_accessible(vol, "idle")
    await vol.context.close()


async def test_asking_the_circle_only_by_keyboard(browser: Browser, broker_server: Server) -> None:
    store = broker_server.ctx.store
    await store.circle_add("circ-r3", "circ-v3", 0.0)
    vol = await open_page(
        await new_context(browser),
        broker_server,
        "volunteer",
        broker_server.token("circ-v3", "volunteer", name="Viv", languages=["en"]),
    )
    await expect(live(vol)).to_have_text(re.compile("Signed in as Viv"))
    await vol.keyboard.press("Enter")  # the duty switch has the focus
    await expect(vol.locator("#duty")).to_have_attribute("aria-checked", "true")
    rec = await open_page(
        await new_context(browser),
        broker_server,
        "recipient",
        broker_server.token("circ-r3", "recipient", name="Rue", languages=["en"]),
    )
    await expect(live(rec)).to_have_text(re.compile("Signed in as Rue"))
    await rec.locator('input[name="who"][value="only"]').focus()
    await rec.keyboard.press("Space")
    await expect(rec.locator('input[name="who"][value="only"]')).to_be_checked()
    await tab_to(rec, "call")
    await rec.keyboard.press("Enter")
    await expect(rec.locator("body")).to_have_attribute("data-state", "searching")
    await expect(live(vol)).to_have_text(re.compile(r"Call from Rue.*You are in their circle\."))
    await assert_accessible(vol, "ringing")
    await rec.keyboard.press("Enter")  # focus is on Cancel the call
    await expect(rec.locator("body")).to_have_attribute("data-state", "ended")
    await rec.context.close()
    await vol.context.close()
