"""The volunteer page's "Your outlook" section: the figures of ``GET /v1/me/outlook`` in a table
by language, the sentence of the expected wait, what would help when it is long, axe-core clean
at 1280 and 320 px."""

from __future__ import annotations

import re
import time

import pytest
from playwright.async_api import Browser, expect

from broker.model import Call, EndReason, Role
from broker.stats import day_of
from tests.browser.pages import assert_accessible, open_as
from tests.helpers import Server

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def answered_call(
    server: Server, call_id: str, helper: str, language: str, ago: float
) -> None:
    """A call in ``language`` that ``helper`` answered ``ago`` seconds back, in the store."""
    store = server.ctx.store
    at = time.time() - ago
    call = Call(
        id=call_id,
        recipient_id="r-" + call_id,
        language=language,
        languages=[language],
        requested_at=at,
    )
    assert await store.create_call(call)
    await store.update_call(call_id, notified=2)
    assert await store.reserve_ring(call_id, helper, day_of(at), 10, at + 5)
    assert await store.assign(call_id, helper, helper, Role.VOLUNTEER, at + 10) is not None
    assert await store.finish(call_id, EndReason.COMPLETED, Role.RECIPIENT, at + 70)


async def test_a_volunteer_sees_their_outlook_and_what_would_help(
    browser: Browser, broker_server: Server
) -> None:
    # Four Portuguese requests in the last days (before any outlook is asked: a node reuses
    # the period's requests for a few minutes); demo mode has three English ones of its own.
    for n in range(4):
        await answered_call(broker_server, f"c_out_{n}", "out-helper", "pt", (n + 1) * 86400.0)
    vol = await open_as(
        browser, broker_server, "volunteer", "out-pt", "volunteer", languages=["pt"]
    )
    await expect(vol.locator("#outlook-summary")).to_have_text(
        re.compile(r"^While you are on duty, your next call ")
    )
    await expect(vol.locator("#outlook-basis")).to_have_text(
        re.compile(
            r"^About .* calls? a week while on duty, in your 168 hours of ring window a week\.$"
        )
    )
    table = vol.locator("#outlook-languages table")
    await expect(table.locator("caption")).to_have_text("Your languages")
    await expect(table.locator("tbody tr")).to_have_count(1)
    row = table.locator("tbody tr").first
    await expect(row.locator("th")).to_have_text("Portuguese")
    cells = row.locator("td")
    # Nobody else speaks Portuguese; the four requests were all in their (any-time) window;
    # alone in the order.
    await expect(cells.nth(0)).to_have_text("0")
    await expect(cells.nth(1)).to_have_text("4")
    await expect(cells.nth(2)).to_have_text("1 of 1")
    for width in (1280, 320):
        await vol.set_viewport_size({"width": width, "height": 900})
        await assert_accessible(vol, "idle")
    await vol.context.close()

    # A volunteer whose language nobody asked in: more than a month, and what would help.
    other = await open_as(
        browser, broker_server, "volunteer", "out-sw", "volunteer", languages=["sw"]
    )
    await expect(other.locator("#outlook-summary")).to_have_text(
        "While you are on duty, your next call may take more than a month: adding a second "
        "language or widening your hours would help."
    )
    help_box = other.locator("#outlook-help")
    await expect(help_box.locator("h3")).to_have_text("What would help")
    await expect(help_box.locator("li")).to_have_text(
        ["Add Portuguese: 4 requests in the last 30 days, and 0 volunteers on duty speak it."]
    )
    for width in (1280, 320):
        await other.set_viewport_size({"width": width, "height": 900})
        await assert_accessible(other, "idle")
    await other.context.close()
