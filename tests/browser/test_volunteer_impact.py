"""The volunteer page's "Your impact" section: the record from ``GET /v1/me/impact`` said in
words and as a table by month, axe-core clean, and its CSV download reached by keyboard alone."""

from __future__ import annotations

import re
import time

import pytest
from playwright.async_api import Browser, expect

from broker.model import Call, EndReason, Role
from broker.stats import day_of
from tests.browser.pages import assert_accessible, focused, live, open_as
from tests.helpers import Server

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def answered_call(server: Server, call_id: str, recipient: str, helper: str) -> None:
    """A call ``helper`` answered and talked in for a minute, put straight into the store."""
    store = server.ctx.store
    now = time.time()
    call = Call(
        id=call_id,
        recipient_id=recipient,
        language="en",
        languages=["en"],
        requested_at=now - 90,
    )
    assert await store.create_call(call)
    assert await store.reserve_ring(call_id, helper, day_of(now), 10, now - 80)
    assert await store.assign(call_id, helper, helper, Role.VOLUNTEER, now - 75) is not None
    assert await store.finish(call_id, EndReason.COMPLETED, Role.RECIPIENT, now - 15)


async def test_a_volunteer_sees_their_record_and_downloads_it_by_keyboard(
    browser: Browser, broker_server: Server
) -> None:
    await answered_call(broker_server, "c_impact_1", "imp-r1", "imp-v1")
    await answered_call(broker_server, "c_impact_2", "imp-r2", "imp-v1")
    vol = await open_as(browser, broker_server, "volunteer", "imp-v1", "volunteer")
    summary = vol.locator("#impact-summary")
    await expect(summary).to_have_text(
        re.compile(
            r"^You have answered 2 calls: 2 minutes of help for 2 people, in English, since "
        )
    )
    table = vol.locator("#impact-months table")
    await expect(table.locator("caption")).to_have_text("Your calls by month")
    await expect(table.locator("tbody tr")).to_have_count(1)
    await expect(table.locator("tbody td").nth(1)).to_have_text("2")
    await assert_accessible(vol, "idle")
    # Keyboard alone: from the duty switch, Tab to the download and press Enter.
    await expect(live(vol)).to_have_text(re.compile("Signed in as"))
    for _ in range(20):
        if await focused(vol) == "impact-csv":
            break
        await vol.keyboard.press("Tab")
    assert await focused(vol) == "impact-csv"
    async with vol.expect_download() as info:
        await vol.keyboard.press("Enter")
    download = await info.value
    assert download.suggested_filename == "impact.csv"
    await expect(live(vol)).to_have_text("Your record was downloaded as impact.csv.")
    await vol.context.close()


async def test_a_new_volunteer_is_told_their_calls_will_be_counted(
    browser: Browser, broker_server: Server
) -> None:
    vol = await open_as(browser, broker_server, "volunteer", "imp-new", "volunteer")
    await expect(vol.locator("#impact-summary")).to_have_text(
        "You have not answered a call yet. Every call you answer will be counted here."
    )
    await expect(vol.locator("#impact-months table")).to_have_count(0)
    await assert_accessible(vol, "idle")
    await vol.context.close()
