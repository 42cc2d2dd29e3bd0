"""The coverage heat map on the operator's console: requests and volunteers by hour of the week
in words and colour, with the hours that had requests as a table; axe-core clean; asked again
for another time zone by keyboard alone."""

from __future__ import annotations

import re
import time

import pytest
from playwright.async_api import Browser, expect

from broker.model import Call, EndReason, Profile, Role
from tests.browser.pages import assert_accessible, focused, live, open_as
from tests.helpers import Server

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_coverage_heat_map_and_table_by_keyboard(
    browser: Browser, broker_server: Server
) -> None:
    store = broker_server.ctx.store
    now = time.time()
    # A French request nobody could answer an hour ago; no French volunteer is on duty.
    await store.put_profile(Profile(user_id="cov-r1", role=Role.RECIPIENT, languages=["fr"]))
    call = Call(id="c_cov_1", recipient_id="cov-r1", language="fr", requested_at=now - 3600)
    assert await store.create_call(call)
    assert await store.finish("c_cov_1", EndReason.NO_ANSWER, None, now - 3500)
    admin = await open_as(browser, broker_server, "admin", "cov-admin", "admin", name="Ada")
    await expect(live(admin)).to_have_text(re.compile("^Signed in as Ada, administrator\\."))
    await admin.click('#console-nav button[data-view="stats"]')
    await expect(admin.locator('#coverage-language option[value="fr"]')).to_have_count(1)
    # Keyboard alone: French, a time zone, then Enter on the button.
    await admin.locator("#coverage-language").focus()
    await admin.locator("#coverage-language").select_option("fr")
    await admin.keyboard.press("Tab")
    assert await focused(admin) == "coverage-tz"
    await admin.keyboard.press("Control+A")
    await admin.keyboard.type("Pacific/Auckland")
    await admin.keyboard.press("Tab")
    assert await focused(admin) == "BUTTON"
    await admin.keyboard.press("Enter")
    await expect(live(admin)).to_have_text(
        "Coverage in French: 1 hour with requests and nobody to ring."
    )
    heat = admin.locator("#coverage table").first
    await expect(heat.locator("caption")).to_have_text(
        "French: requests/volunteers by hour of the week (Pacific/Auckland)"
    )
    await expect(heat.locator("tbody tr")).to_have_count(7)
    await expect(heat.locator("td.gap-short")).to_have_count(1)
    await expect(heat.locator("td.gap-short")).to_have_text("1/0 short")
    detail = admin.locator("#coverage table").nth(1)
    await expect(detail.locator("tbody tr")).to_have_count(1)
    await expect(detail.locator("tbody td").nth(1)).to_have_text("0%")
    await assert_accessible(admin, "stats")
    # A time zone that does not exist is refused, said in words.
    await admin.locator("#coverage-tz").fill("Mars/Base")
    await admin.keyboard.press("Enter")
    await expect(live(admin)).to_have_text(re.compile("tz: .*IANA time zone"))
    await assert_accessible(admin, "stats")
    await admin.context.close()
