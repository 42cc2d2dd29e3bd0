"""A partner call between the pages and the real queues: the directory, the caller's place in
line, the agent's console and ring, and the call itself with real media."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Browser, expect

from tests.browser.pages import live, open_as, presented_frames
from tests.helpers import Server
from tests.queue_helpers import make_org

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_recipient_page_calls_a_partner_and_an_agent_page_answers(
    browser: Browser, broker_server: Server
) -> None:
    await broker_server.ctx.store.put_org(make_org("acme"))
    agent = await open_as(
        browser, broker_server, "agent", "agent-acme", "agent", name="Ada", org="acme"
    )
    await expect(live(agent)).to_have_text("Signed in as Ada of acme. You are away.")
    await agent.check('input[value="available"]')
    await expect(live(agent)).to_have_text(re.compile("^You are available"))

    rec = await open_as(
        browser, broker_server, "recipient", "rec-acme", "recipient", name="Rae", languages=["en"]
    )
    await expect(live(rec)).to_have_text(re.compile("Signed in as Rae"))
    await expect(rec.locator("#partners")).to_contain_text("Open now.")
    await rec.get_by_role("button", name="Call Acme").click()
    await expect(live(rec)).to_have_text("You are number 1 in the queue.")
    await expect(live(agent)).to_have_text(re.compile("^Next call: Rae, in English"))
    await expect(agent.locator("#queue")).to_contain_text("Ada")
    await expect(agent.locator("#queue tbody tr")).to_have_count(1)

    await agent.click("#take")
    await expect(live(agent)).to_have_text("Connected to Rae. You can see their camera.")
    await expect(live(rec)).to_have_text("Connected to Ada. They can see your camera now.")
    frames = await presented_frames(agent, "#remote-video", 1.5)
    assert frames >= 10, f"the agent's page presented only {frames} frames in 1.5 s"
    await expect(agent.locator("#queue tbody tr")).to_have_count(0)

    await agent.click("#hang-up")
    await expect(live(rec)).to_have_text("Call ended. The helper ended the call.")
    view = await broker_server.ctx.broker.queues.snapshot("acme")
    assert view is not None and view.today.answered == 1
    for tab in (agent, rec):
        await tab.context.close()
