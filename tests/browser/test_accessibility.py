"""WCAG 2.2 AA checks of every page in each of its states (axe-core), the agent console's too,
keyboard-only runs of the main flows (the volunteer's, the recipient's, and an agent taking the
next queued call) with the live region asserted at each step, reflow at 320 px (400% zoom of a 1280 px
window, which covers 200%), reduced motion and target sizes."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Browser, expect

from broker.store.memory import MemoryStore
from tests.browser.pages import (
    assert_accessible,
    axe_violations,
    explain,
    focused,
    live,
    new_context,
    open_as,
    open_page,
)
from tests.helpers import Server, start_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

NOBODY_FREE = (
    "No volunteer is free just now. Still looking… "
    "If no one answers, please try again in about 15 minutes."
)


async def agent_view(server: Server, user_id: str) -> tuple[str, str]:
    """(state, activity) of a demo-org agent as the broker's live queue shows it."""
    view = await server.ctx.broker.queues.snapshot("demo-org")
    assert view is not None
    (agent,) = [a for a in view.agents if a.id == user_id]
    return agent.state, agent.activity


async def test_every_page_in_every_state_has_no_axe_violations(
    browser: Browser, broker_server: Server
) -> None:
    # Signed out (no token): the sign-in state of each page.
    context = await new_context(browser)
    for name in ("recipient", "volunteer", "agent"):
        tab = await open_page(context, broker_server, name)
        await expect(live(tab)).to_have_text("Please sign in.")
        await assert_accessible(tab, "signed-out")
        await tab.close()
    index = await open_page(context, broker_server, "index")
    violations = await axe_violations(index)
    assert violations == [], explain(violations)
    await context.close()

    rec = await open_as(browser, broker_server, "recipient", "rec-axe", "recipient", name="Rae")
    await expect(live(rec)).to_have_text(re.compile("Signed in as Rae"))
    # A demo broker lists its demo organisation, open round the clock.
    await expect(rec.locator("#partners")).to_contain_text("Demo organisation")
    await expect(rec.get_by_role("button", name="Call Demo organisation")).to_be_visible()
    await assert_accessible(rec, "idle")
    # The dark colour scheme meets the same contrast rules.
    await rec.emulate_media(color_scheme="dark")
    await assert_accessible(rec, "idle")
    await rec.emulate_media(color_scheme="light")
    # Searching with nobody on duty (and no help centre to escalate to: told when to retry).
    await rec.click("#call")
    await expect(live(rec)).to_have_text(NOBODY_FREE)
    await assert_accessible(rec, "searching")
    await rec.click("#cancel")
    await expect(live(rec)).to_have_text("Call ended. The call was cancelled.")
    await assert_accessible(rec, "ended")
    await rec.click("#again")
    await expect(live(rec)).to_have_text(re.compile("^Ready"))

    vol = await open_as(browser, broker_server, "volunteer", "vol-axe", "volunteer", name="Val")
    await expect(live(vol)).to_have_text(re.compile("Signed in as Val"))
    await assert_accessible(vol, "idle")
    await vol.click("#duty")
    await expect(live(vol)).to_have_text("You are on duty. Waiting for a call.")
    await assert_accessible(vol, "idle")

    # Ringing: the recipient's search and the volunteer's ring.
    await rec.click("#call")
    await expect(live(rec)).to_have_text("Ringing 1 volunteer.")
    await assert_accessible(rec, "searching")
    await expect(live(vol)).to_have_text(re.compile("^Call from Rae"))
    await assert_accessible(vol, "ringing")
    await vol.emulate_media(color_scheme="dark")
    await assert_accessible(vol, "ringing")
    await vol.emulate_media(color_scheme="light")
    # The ring's pulse stops for people who ask for reduced motion.
    assert (
        await vol.evaluate("getComputedStyle(document.querySelector('.ring')).animationName")
        == "pulse"
    )
    await vol.emulate_media(reduced_motion="reduce")
    assert (
        await vol.evaluate("getComputedStyle(document.querySelector('.ring')).animationName")
        == "none"
    )

    # In call, on both pages.
    await vol.click("#accept")
    await expect(live(vol)).to_have_text("Connected to Rae. You can see their camera.")
    await expect(live(rec)).to_have_text("Connected to Val. They can see your camera now.")
    await assert_accessible(vol, "in-call")
    await assert_accessible(rec, "in-call")

    # Ended, on both pages (the recipient with the feedback form).
    await rec.click("#hang-up")
    await expect(live(rec)).to_have_text("Call ended. You hung up.")
    await expect(live(vol)).to_have_text(re.compile("^Call ended. The caller ended the call."))
    await assert_accessible(rec, "ended")
    await assert_accessible(vol, "ended")
    await expect(rec.locator("#feedback")).to_be_visible()

    agent = await open_as(
        browser, broker_server, "agent", "agent-axe", "agent", name="Ada", org="acme"
    )
    await expect(live(agent)).to_have_text("Signed in as Ada of acme. You are away.")
    await expect(agent.locator("#queue")).to_contain_text("does not run a queue")
    await assert_accessible(agent, "idle")
    for tab in (rec, vol, agent):
        await tab.context.close()


async def test_pages_reflow_at_320_css_pixels(browser: Browser, broker_server: Server) -> None:
    """400% zoom of a 1280 px window is a 320 px viewport: no sideways scrolling (WCAG 1.4.10)."""
    for name, role, extra in (
        ("recipient", "recipient", {}),
        ("volunteer", "volunteer", {}),
        ("agent", "agent", {"org": "acme"}),
    ):
        context = await browser.new_context(viewport={"width": 320, "height": 640})
        tab = await open_page(
            context, broker_server, name, broker_server.token(f"{name}-zoom", role, **extra)
        )
        await expect(live(tab)).to_have_text(re.compile("Signed in as"))
        width = await tab.evaluate("document.documentElement.scrollWidth")
        assert width <= 320, f"{name} page is {width} px wide at a 320 px viewport"
        await context.close()


async def test_keyboard_only_call_accept_and_hang_up(
    browser: Browser, broker_server: Server
) -> None:
    vol = await open_as(browser, broker_server, "volunteer", "vol-kb", "volunteer", name="Kay")
    await expect(live(vol)).to_have_text("Signed in as Kay. You are off duty.")
    assert await focused(vol) == "duty"
    # The focus ring is visible on the focused control.
    outline = await vol.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
    await vol.keyboard.press("Space")
    await expect(live(vol)).to_have_text("You are on duty. Waiting for a call.")
    await expect(vol.locator("#duty")).to_have_attribute("aria-checked", "true")

    rec = await open_as(browser, broker_server, "recipient", "rec-kb", "recipient", name="Lee")
    await expect(live(rec)).to_have_text("Signed in as Lee. Ready to call a volunteer.")
    # From the top of the page, Tab order reaches the language, the topic, then the big button.
    await rec.keyboard.press("Shift+Tab")
    assert await focused(rec) == "topic"
    await rec.keyboard.type("my post")
    await rec.keyboard.press("Tab")
    assert await focused(rec) == "call"
    await rec.keyboard.press("Enter")
    await expect(live(rec)).to_have_text("Ringing 1 volunteer.")
    assert await focused(rec) == "cancel"

    await expect(live(vol)).to_have_text(
        "Call from Lee about my post, in English. Accept or decline."
    )
    assert await focused(vol) == "accept"
    await vol.keyboard.press("Enter")
    await expect(live(vol)).to_have_text("Connected to Lee. You can see their camera.")
    assert await focused(vol) == "hang-up"
    await expect(live(rec)).to_have_text("Connected to Kay. They can see your camera now.")
    assert await focused(rec) == "hang-up"

    await rec.keyboard.press("Enter")
    await expect(live(rec)).to_have_text("Call ended. You hung up.")
    assert await focused(rec) == "h-ended"
    await expect(live(vol)).to_have_text(
        "Call ended. The caller ended the call. You are on duty. Waiting for a call."
    )
    assert await focused(vol) == "h-ended"

    # Feedback by keyboard: no answer is chosen beforehand (it would nudge the rating); Tab
    # reaches the first radio, the arrow key chooses "No"; report nothing, submit.
    assert await rec.locator('input[name="rating"]:checked').count() == 0
    await rec.keyboard.press("Tab")
    assert await rec.evaluate("document.activeElement.name") == "rating"
    await rec.keyboard.press("ArrowDown")
    assert await rec.evaluate("document.activeElement.value") == "down"
    for _ in range(3):  # report, comment, send
        await rec.keyboard.press("Tab")
    assert await focused(rec) == "send-feedback"
    await rec.keyboard.press("Enter")
    await expect(live(rec)).to_have_text("Thank you. Your feedback was sent.")
    assert await focused(rec) == "again"
    call_id = await rec.evaluate("window.vabrokerPage.callId")
    store = broker_server.ctx.store
    assert isinstance(store, MemoryStore)
    given = [(f.user_id, f.rating, f.report) for f in store._feedback_log if f.call_id == call_id]
    assert given == [("rec-kb", "down", None)]
    await rec.keyboard.press("Enter")
    await expect(live(rec)).to_have_text("Ready. Press Call a volunteer when you need help.")
    assert await focused(rec) == "call"
    for tab in (vol, rec):
        await tab.context.close()


async def test_volunteer_hears_someone_else_answered(
    browser: Browser, broker_server: Server
) -> None:
    first = await open_as(browser, broker_server, "volunteer", "vol-w1", "volunteer", name="Wes")
    second = await open_as(browser, broker_server, "volunteer", "vol-w2", "volunteer", name="Xia")
    for tab in (first, second):
        await expect(live(tab)).to_have_text(re.compile("You are off duty"))
        await tab.keyboard.press("Space")
        await expect(live(tab)).to_have_text("You are on duty. Waiting for a call.")
    rec = await open_as(browser, broker_server, "recipient", "rec-w", "recipient", name="Yan")
    await expect(live(rec)).to_have_text(re.compile("Signed in as Yan"))
    await rec.keyboard.press("Enter")
    await expect(live(rec)).to_have_text("Ringing 2 volunteers.")
    await expect(live(first)).to_have_text(re.compile("^Call from Yan"))
    await expect(live(second)).to_have_text(re.compile("^Call from Yan"))
    await first.keyboard.press("Enter")
    await expect(live(second)).to_have_text(
        "Someone else answered that call. Thank you for being there."
    )
    assert await focused(second) == "duty"
    await expect(live(rec)).to_have_text("Connected to Wes. They can see your camera now.")
    await first.keyboard.press("Enter")
    await expect(live(rec)).to_have_text("Call ended. The helper ended the call.")
    for tab in (first, second, rec):
        await tab.context.close()


async def test_demo_sign_in_only_in_demo_mode(browser: Browser, broker_server: Server) -> None:
    context = await new_context(browser)
    tab = await open_page(context, broker_server, "volunteer")
    await expect(live(tab)).to_have_text("Please sign in.")
    assert await focused(tab) == "demo-sign-in"
    await tab.keyboard.press("Enter")
    await expect(live(tab)).to_have_text(re.compile(r"^Signed in as Demo volunteer \w+\."))
    # The fragment never holds the token after sign-in, and a reload keeps this tab signed in.
    await tab.reload()
    await expect(live(tab)).to_have_text(re.compile(r"^Signed in as Demo volunteer"))
    await context.close()

    async with start_server() as plain:
        context = await new_context(browser)
        tab = await open_page(context, plain, "recipient")
        await expect(live(tab)).to_have_text("Please sign in.")
        await tab.keyboard.press("Enter")
        await expect(live(tab)).to_have_text(re.compile("^Demo sign-in is off on this broker"))
        assert await tab.evaluate("sessionStorage.getItem('vabroker.token')") is None
        await context.close()


async def test_the_axe_check_can_fail(browser: Browser, broker_server: Server) -> None:
    """The check above is real: the same helper reports a broken page."""
    tab = await open_as(browser, broker_server, "recipient", "rec-broken", "recipient")
    await expect(live(tab)).to_have_text(re.compile("Signed in as"))
    await tab.evaluate(
        "() => { const img = document.createElement('img'); img.src = 'data:,';"
        " document.querySelector('main').append(img);"
        " document.querySelector('#call').textContent = ''; }"
    )
    ids = {v["id"] for v in await axe_violations(tab)}
    assert {"image-alt", "button-name"} <= ids, ids
    await tab.context.close()


async def test_a_refused_token_sends_the_person_back_to_sign_in(
    browser: Browser, broker_server: Server
) -> None:
    context = await new_context(browser)
    tab = await open_page(context, broker_server, "recipient", "not-a-token")
    await expect(live(tab)).to_have_text("Please sign in. The token is not a JWT.")
    assert await tab.evaluate("sessionStorage.getItem('vabroker.token')") is None
    assert await focused(tab) == "demo-sign-in"
    await tab.keyboard.press("Enter")  # demo mode is on for this broker
    await expect(live(tab)).to_have_text(re.compile(r"^Signed in as Demo recipient"))
    # A volunteer's token on the recipient's page is refused with a reason.
    tab = await open_page(
        context, broker_server, "recipient", broker_server.token("v-wrong", "volunteer")
    )
    await expect(live(tab)).to_have_text(
        "Please sign in. This page is for recipients, and you signed in as a volunteer."
    )
    await context.close()


async def test_sign_in_by_fragment_or_post_message_never_query_string(
    browser: Browser, broker_server: Server
) -> None:
    token = broker_server.token("rec-qs", "recipient", name="Quin")
    context = await new_context(browser)
    tab = await context.new_page()
    await tab.goto(f"{broker_server.url}/app/recipient.html?token={token}")
    await expect(live(tab)).to_have_text("Please sign in.")
    # The deployment's sign-in page (same origin) posts the token.
    await tab.evaluate(
        "(token) => window.postMessage({type: 'vabroker.token', token}, location.origin)", token
    )
    await expect(live(tab)).to_have_text("Signed in as Quin. Ready to call a volunteer.")
    await context.close()

    tab = await open_as(browser, broker_server, "recipient", "rec-frag", "recipient", name="Fay")
    await expect(live(tab)).to_have_text(re.compile("Signed in as Fay"))
    assert "token" not in tab.url
    await tab.context.close()


async def test_agent_console_in_every_state_has_no_axe_violations(
    browser: Browser, broker_server: Server
) -> None:
    """The agent console signed in (away), available with a call waiting, offered a call, in
    the call, in wrap-up, and ready again: each state of a demo-org agent's console."""
    agent = await open_as(
        browser, broker_server, "agent", "agent-axe-q", "agent", name="Abe", org="demo-org"
    )
    await expect(live(agent)).to_have_text("Signed in as Abe of demo-org. You are away.")
    await expect(agent.locator("#queue")).to_contain_text("Nobody is waiting.")
    await assert_accessible(agent, "idle")

    # Another agent, available first (so longest idle), is offered the call first: the
    # console then shows the call waiting while its own agent is available.
    other = await broker_server.connect("agent-axe-other", "agent", org="demo-org", name="Oz")
    assert (await other.request({"type": "agent.status", "state": "available"}))[
        "state"
    ] == "available"
    await agent.check('input[value="available"]')
    await expect(live(agent)).to_have_text(
        "You are available. Calls from the queue will come to you."
    )
    rec = await open_as(
        browser, broker_server, "recipient", "rec-axe-q", "recipient", name="Rue", languages=["en"]
    )
    await expect(live(rec)).to_have_text(re.compile("Signed in as Rue"))
    await rec.get_by_role("button", name="Call Demo organisation").click()
    await expect(live(rec)).to_have_text("You are number 1 in the queue.")
    ring = await other.expect("call.ring")
    await expect(agent.locator("#queue")).to_contain_text("1 waiting.")
    await expect(agent.locator("#queue tbody tr")).to_have_count(1)
    await assert_accessible(agent, "idle")

    # The other agent passes: the call is offered to this console.
    await other.request({"type": "call.decline", "call": ring["call"]})
    await other.request({"type": "agent.status", "state": "away"})
    await expect(live(agent)).to_have_text("Next call: Rue, in English. Take it or pass.")
    await expect(agent.locator("#queue tbody tr")).to_have_count(1)
    await assert_accessible(agent, "ringing")
    await agent.emulate_media(color_scheme="dark")
    await assert_accessible(agent, "ringing")
    await agent.emulate_media(color_scheme="light")

    await agent.click("#take")
    await expect(live(agent)).to_have_text("Connected to Rue. You can see their camera.")
    await expect(live(rec)).to_have_text("Connected to Abe. They can see your camera now.")
    await assert_accessible(agent, "in-call")

    await agent.click("#hang-up")
    await expect(live(agent)).to_have_text(
        "Call ended. You hung up. Wrap up, then choose Ready for the next call."
    )
    await expect(live(rec)).to_have_text("Call ended. The helper ended the call.")
    await assert_accessible(agent, "ended")
    await agent.fill("#wrap-notes", "Read a parcel label.")
    await assert_accessible(agent, "ended")

    await agent.click("#ready")
    await expect(live(agent)).to_have_text(
        "You are available. Calls from the queue will come to you."
    )
    await expect(agent.locator("#queue")).to_contain_text("Nobody is waiting.")
    await assert_accessible(agent, "idle")
    await other.close()
    for tab in (agent, rec):
        await tab.context.close()


async def test_keyboard_only_agent_takes_the_next_queued_call(
    browser: Browser, broker_server: Server
) -> None:
    agent = await open_as(
        browser, broker_server, "agent", "agent-kb", "agent", name="Kit", org="demo-org"
    )
    await expect(live(agent)).to_have_text("Signed in as Kit of demo-org. You are away.")
    # Focus starts on the status group's checked radio, with a visible focus ring.
    assert await focused(agent) == "INPUT"
    assert await agent.evaluate("document.activeElement.value") == "away"
    assert await agent.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    # A radio group is one Tab stop; its arrow keys move to and choose the other status.
    await agent.keyboard.press("ArrowUp")
    await expect(live(agent)).to_have_text(
        "You are available. Calls from the queue will come to you."
    )
    assert await agent.evaluate("document.activeElement.value") == "available"
    await expect(agent.locator('input[value="available"]')).to_be_checked()
    # The page says so only once the broker has answered: the broker has it too.
    assert await agent_view(broker_server, "agent-kb") == ("available", "idle")

    rec = await open_as(
        browser, broker_server, "recipient", "rec-kb-q", "recipient", name="Mo", languages=["en"]
    )
    await expect(live(rec)).to_have_text(re.compile("Signed in as Mo"))
    await rec.fill("#topic", "a letter")
    await rec.get_by_role("button", name="Call Demo organisation").click()
    await expect(live(rec)).to_have_text("You are number 1 in the queue.")

    await expect(live(agent)).to_have_text(
        "Next call: Mo about a letter, in English. Take it or pass."
    )
    assert await focused(agent) == "take"
    await expect(agent.locator("#ring-topic")).to_have_text("a letter")
    # The ring is heard too (the status change was the click that allowed sound), and the
    # title says it for a background tab.
    assert await agent.evaluate("window.vabrokerPage.ringSound.sounding") is True
    await expect(agent).to_have_title("Ringing — Agent console — vabroker")
    await agent.keyboard.press("Enter")
    await expect(live(agent)).to_have_text("Connected to Mo. You can see their camera.")
    assert await agent.evaluate("window.vabrokerPage.ringSound.playing") is False
    await expect(agent).to_have_title("In a call — Agent console — vabroker")
    assert await focused(agent) == "hang-up"
    await expect(live(rec)).to_have_text("Connected to Kit. They can see your camera now.")

    await agent.keyboard.press("Space")
    await expect(live(agent)).to_have_text(
        "Call ended. You hung up. Wrap up, then choose Ready for the next call."
    )
    assert await focused(agent) == "ready"
    await expect(live(rec)).to_have_text("Call ended. The helper ended the call.")
    # Wrap-up notes by keyboard: Shift+Tab reaches the notes, Tab comes back to Ready.
    await agent.keyboard.press("Shift+Tab")
    assert await focused(agent) == "wrap-notes"
    await agent.keyboard.type("Read the letter's sender.")
    await agent.keyboard.press("Tab")
    assert await focused(agent) == "ready"
    await agent.keyboard.press("Enter")
    await expect(live(agent)).to_have_text(
        "You are available. Calls from the queue will come to you."
    )
    assert await agent.evaluate("document.activeElement.value") == "available"
    await expect(agent.locator("body")).to_have_attribute("data-state", "idle")
    # Still available in the broker, which holds the queue's wrap-up time before the next ring.
    assert (await agent_view(broker_server, "agent-kb"))[0] == "available"
    view = await broker_server.ctx.broker.queues.snapshot("demo-org")
    assert view is not None and view.today.answered >= 1
    for tab in (agent, rec):
        await tab.context.close()
