"""The operator's console (``/app/admin.html``) against the real broker: axe-core finds no WCAG
2.2 A/AA violation in any state (signed out, overview, moderation queue, a case, the
confirmation dialog, after a resolution, a user with a restriction, statistics, the audit log,
the organisations, and errors), a keyboard-only run takes an open case from the list to a
resolution with a suspension (the live region and focus asserted at each step), and what the
console did is checked in the broker. Cases are made as real ones are: a call over the wire,
then a report in ``call.feedback``."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser.cases import admin_api, case_of, reported_call
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


async def open_console(browser: Browser, server: Server, sub: str, name: str) -> Page:
    admin = await open_as(browser, server, "admin", sub, "admin", name=name)
    await expect(live(admin)).to_have_text(re.compile(f"^Signed in as {name}, administrator\\."))
    return admin


async def test_console_in_every_state_has_no_axe_violations(
    browser: Browser, broker_server: Server
) -> None:
    # Signed out, and signed in with a token for another role.
    context = await new_context(browser)
    tab = await open_page(context, broker_server, "admin")
    await expect(live(tab)).to_have_text("Please sign in.")
    assert await focused(tab) == "demo-sign-in"
    await expect(tab.locator("#console-nav")).to_be_hidden()
    await assert_accessible(tab, "signed-out")
    tab = await open_page(
        context, broker_server, "admin", broker_server.token("vol-not-admin", "volunteer")
    )
    await expect(live(tab)).to_have_text(
        "Please sign in. This page is for administrators, and you signed in as a volunteer."
    )
    await assert_accessible(tab, "signed-out")
    await context.close()

    # Two reports: a recipient reports a volunteer; a volunteer reports a recipient.
    first = await reported_call(
        broker_server, "rec-axe-1", "vol-axe-1", "abusive", comment="Shouted at me."
    )
    second = await reported_call(
        broker_server, "rec-axe-2", "vol-axe-2", "inappropriate", reporter="volunteer"
    )
    first_case = await case_of(broker_server, first)
    second_case = await case_of(broker_server, second)
    assert first_case["reported"] == {"id": "vol-axe-1", "role": "volunteer"}
    assert second_case["reported"] == {"id": "rec-axe-2", "role": "recipient"}
    # A partner organisation that is closed, beside the demo one that is always open.
    status, _ = await admin_api(
        broker_server,
        "PUT",
        "/v1/orgs/night-desk",
        {
            "name": "Night desk",
            "languages": ["en"],
            "timezone": "Europe/London",
            "hours": {},
            "queues": [{"id": "main", "name": "Main"}],
        },
    )
    assert status in (200, 201)

    admin = await open_console(browser, broker_server, "admin-axe", "Ada")
    assert await focused(admin) == "review-cases"
    await expect(admin.locator("#overview")).to_contain_text("Open cases")
    status, overview = await admin_api(broker_server, "GET", "/v1/admin/overview")
    assert status == 200 and overview["open_cases"] >= 2
    await expect(admin.locator("#review-cases")).to_have_text(
        f"Review {overview['open_cases']} open cases"
    )
    await expect(admin.locator('#console-nav button[aria-current="page"]')).to_have_text("Overview")
    await assert_accessible(admin, "overview")
    await admin.emulate_media(color_scheme="dark")
    await assert_accessible(admin, "overview")
    await admin.emulate_media(color_scheme="light")

    # The moderation queue, newest first.
    await admin.click("#review-cases")
    await expect(live(admin)).to_have_text(re.compile(r"^Moderation queue: \d+ open cases\.$"))
    rows = admin.locator("#cases tbody tr")
    await expect(rows.first).to_contain_text("rec-axe-2")
    await expect(rows.nth(1)).to_contain_text("vol-axe-1")
    await assert_accessible(admin, "cases")

    # A case, then an error (no note), the confirmation dialog, and Escape.
    await admin.get_by_role("button", name=re.compile("report about vol-axe-1$")).click()
    await expect(live(admin)).to_have_text(
        f"Case {first_case['id']}: Abusive, vol-axe-1 (volunteer) reported by rec-axe-1 "
        "(recipient). Choose what to do, write a note, then resolve the case."
    )
    await expect(admin.locator("#case-detail")).to_contain_text("Shouted at me.")
    await expect(admin.locator("#case-detail")).to_contain_text("reading a parcel label")
    await assert_accessible(admin, "case")
    await admin.check('input[name="action"][value="ban"]')
    await admin.click("#resolve")
    await expect(live(admin)).to_have_text("Write a note for the record before resolving the case.")
    assert await focused(admin) == "resolve-note"
    await expect(admin.locator("#resolve-note")).to_have_attribute("aria-invalid", "true")
    await assert_accessible(admin, "case")
    await admin.fill("#resolve-note", "Abuse confirmed by the call's timing and both accounts.")
    await admin.click("#resolve")
    await expect(admin.locator("#confirm")).to_have_attribute("open", "")
    await expect(live(admin)).to_have_text(
        "Ban vol-axe-1? vol-axe-1 (volunteer) will be signed out and can no longer sign in. "
        "Confirm with Ban, or Cancel."
    )
    assert await focused(admin) == "confirm-cancel"
    await assert_accessible(admin, "case")
    await admin.keyboard.press("Escape")
    await expect(live(admin)).to_have_text("Nothing was changed. The case is still open.")
    assert await focused(admin) == "resolve"
    await expect(admin.locator("#confirm")).not_to_have_attribute("open", "")
    status, still = await admin_api(broker_server, "GET", f"/v1/admin/cases/{first_case['id']}")
    assert status == 200 and still["state"] == "open"

    # Resolved with a warning (no confirmation for a warning).
    await admin.check('input[name="action"][value="warn"]')
    await admin.click("#resolve")
    await expect(live(admin)).to_have_text(
        re.compile(rf"^Case {first_case['id']} resolved\. vol-axe-1 was warned\. \d+ open case")
    )
    assert await focused(admin) == "back-to-cases"
    await expect(admin.locator("#resolve-form")).to_be_hidden()
    await expect(admin.locator("#case-detail")).to_contain_text("Warned")
    await assert_accessible(admin, "case")
    status, resolved = await admin_api(broker_server, "GET", f"/v1/admin/cases/{first_case['id']}")
    assert status == 200 and resolved["state"] == "resolved"
    assert resolved["resolution"]["action"] == "warn"
    assert resolved["resolution"]["by"] == "admin-axe"

    # A conflict: another administrator resolves a case while this one has it open.
    third = await case_of(
        broker_server, await reported_call(broker_server, "rec-axe-3", "vol-axe-3", "other")
    )
    await admin.click("#back-to-cases")
    await admin.get_by_role("button", name=re.compile("report about vol-axe-3$")).click()
    await expect(live(admin)).to_have_text(re.compile(f"^Case {third['id']}: Other"))
    status, _ = await admin_api(
        broker_server,
        "POST",
        f"/v1/admin/cases/{third['id']}/resolve",
        {"action": "dismiss", "note": "Nothing to act on."},
        sub="admin-other",
    )
    assert status == 200
    await admin.check('input[name="action"][value="warn"]')
    await admin.fill("#resolve-note", "A warning.")
    await admin.click("#resolve")
    await expect(live(admin)).to_have_text(
        "That case is already resolved. The case shows the resolution now."
    )
    await expect(admin.locator("#resolve-form")).to_be_hidden()
    await expect(admin.locator("#case-detail")).to_contain_text("admin-other")
    await assert_accessible(admin, "case")

    # User look-up, from the other case: suspend the recipient for 3 days.
    await admin.click("#back-to-cases")
    await admin.get_by_role("button", name=re.compile("report about rec-axe-2$")).click()
    await expect(live(admin)).to_have_text(re.compile(f"^Case {second_case['id']}"))
    await admin.get_by_role("button", name="Look up rec-axe-2").click()
    await expect(live(admin)).to_have_text(
        "Rec-Axe-2, recipient. Not restricted. 1 report received, 0 given."
    )
    assert await focused(admin) == "h-user-name"
    await expect(admin.locator('#console-nav button[aria-current="page"]')).to_have_text(
        "User look-up"
    )
    await assert_accessible(admin, "user")
    await admin.fill("#restrict-reason", "Inappropriate remarks to a volunteer.")
    await admin.fill("#restrict-days", "3")
    await admin.click("#suspend-user")
    await expect(live(admin)).to_have_text(
        "Suspend rec-axe-2? rec-axe-2 can take or make no calls for 3 days. "
        "Confirm with Suspend, or Cancel."
    )
    await admin.click("#confirm-yes")
    await expect(live(admin)).to_have_text(re.compile("^rec-axe-2: Suspended since .* until "))
    assert await focused(admin) == "user-restriction"
    await expect(admin.locator("#reinstate-user")).to_be_visible()
    await expect(admin.locator("#suspend-user")).to_be_hidden()
    await assert_accessible(admin, "user")
    status, user = await admin_api(broker_server, "GET", "/v1/admin/users/rec-axe-2")
    assert status == 200 and user["restriction"]["kind"] == "suspended"
    until = datetime.fromisoformat(user["restriction"]["until"]).timestamp()
    assert abs(until - (time.time() + 3 * 86400)) < 120
    # The restriction is in force: the recipient cannot ask for help.
    rec = await broker_server.connect("rec-axe-2", "recipient", languages=["en"])
    assert rec.welcome["restriction"]["kind"] == "suspended"
    refused = await rec.request({"type": "call.request"})
    assert refused["type"] == "error" and refused["code"] == "suspended"
    await rec.close()

    # Reinstating needs a reason too, and no confirmation.
    await admin.fill("#restrict-reason", "")
    await admin.click("#reinstate-user")
    await expect(live(admin)).to_have_text("Write the reason for reinstating rec-axe-2.")
    assert await focused(admin) == "restrict-reason"
    await assert_accessible(admin, "user")
    await admin.fill("#restrict-reason", "Apologised; a first offence.")
    await admin.click("#reinstate-user")
    await expect(live(admin)).to_have_text("rec-axe-2 is reinstated.")
    await expect(admin.locator("#user-restriction")).to_have_text("Not restricted.")
    await expect(admin.locator("#suspend-user")).to_be_visible()
    status, user = await admin_api(broker_server, "GET", "/v1/admin/users/rec-axe-2")
    assert status == 200 and user["restriction"] is None

    # A look-up error: an unknown user.
    await admin.fill("#lookup-id", "nobody-at-all")
    await admin.press("#lookup-id", "Enter")
    await expect(live(admin)).to_have_text("No user with the id nobody-at-all.")
    assert await focused(admin) == "lookup-id"
    await expect(admin.locator("#lookup-id")).to_have_attribute("aria-invalid", "true")
    await expect(admin.locator("#restrict-form")).to_be_hidden()
    await assert_accessible(admin, "user")

    # Statistics: each chart is an image with a name, followed by a table of its figures.
    await admin.click('#console-nav button[data-view="stats"]')
    await expect(live(admin)).to_have_text(re.compile(r"^Statistics: \d+ calls, \d+% completed\."))
    charts = admin.locator("figure.chart")
    assert await charts.count() >= 3
    for i in range(await charts.count()):
        chart = charts.nth(i)
        await expect(chart.locator('svg[role="img"]')).to_have_attribute(
            "aria-label", re.compile("The figures are in the table after the chart.$")
        )
        await expect(chart.locator("table caption")).not_to_be_empty()
        assert await chart.locator('th[scope="col"]').count() >= 2
    await expect(admin.locator("#stats")).to_contain_text("English")
    await assert_accessible(admin, "stats")
    await admin.emulate_media(color_scheme="dark")
    await assert_accessible(admin, "stats")
    await admin.emulate_media(color_scheme="light")

    # The audit log: the warning and the suspension, by this administrator.
    await admin.click('#console-nav button[data-view="audit"]')
    await expect(live(admin)).to_have_text(re.compile(r"^Audit log: \d+ entr"))
    audit = admin.locator("#audit")
    await expect(audit).to_contain_text("Case resolved")
    await expect(audit).to_contain_text("User suspended")
    await expect(audit).to_contain_text("Inappropriate remarks to a volunteer.")
    await assert_accessible(admin, "audit")
    await admin.fill("#audit-target", "rec-axe-2")
    await admin.click('#audit-form button[type="submit"]')
    await expect(audit.locator("tbody tr")).to_have_count(2)  # suspended, then reinstated
    await expect(audit).not_to_contain_text("Case resolved")
    await admin.select_option("#audit-action", "user.suspend")
    await admin.click('#audit-form button[type="submit"]')
    await expect(live(admin)).to_have_text("Audit log: 1 entry.")
    await expect(audit.locator("tbody tr")).to_have_count(1)
    await expect(audit).not_to_contain_text("User reinstated")
    # The CSV download carries the same filter.
    async with admin.expect_download() as download_info:
        await admin.click("#audit-csv")
    download = await download_info.value
    assert download.suggested_filename == "audit.csv"
    rows_csv = Path(await download.path()).read_text().splitlines()
    assert len(rows_csv) == 2 and "user.suspend" in rows_csv[1] and "rec-axe-2" in rows_csv[1]
    await expect(live(admin)).to_have_text("The audit log was downloaded as audit.csv.")

    # The organisations, open and closed.
    await admin.click('#console-nav button[data-view="orgs"]')
    await expect(live(admin)).to_have_text(re.compile(r"^Organisations: \d+ organisations: "))
    orgs = admin.locator("#orgs")
    await expect(orgs.locator("tr", has_text="Night desk")).to_contain_text("Closed")
    await expect(orgs.locator("tr", has_text="Demo organisation")).to_contain_text("Open")
    await assert_accessible(admin, "orgs")
    await admin.context.close()


async def test_keyboard_only_case_from_the_list_to_a_suspension(
    browser: Browser, broker_server: Server
) -> None:
    call = await reported_call(
        broker_server, "rec-kb", "vol-kb", "unsafe", comment="Unsafe advice."
    )
    case = await case_of(broker_server, call)
    admin = await open_console(browser, broker_server, "admin-kb", "Kim")
    # Focus starts on the next thing to do, with a visible focus ring.
    assert await focused(admin) == "review-cases"
    assert await admin.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    await admin.keyboard.press("Enter")
    await expect(live(admin)).to_have_text(re.compile(r"^Moderation queue: \d+ open cases?\.$"))
    # The newest case comes first, and focus is on its Review button.
    assert await admin.evaluate("document.activeElement.dataset.case") == case["id"]
    await admin.keyboard.press("Enter")
    await expect(live(admin)).to_have_text(
        f"Case {case['id']}: Unsafe, vol-kb (volunteer) reported by rec-kb (recipient). "
        "Choose what to do, write a note, then resolve the case."
    )
    assert await admin.evaluate("document.activeElement.value") == "dismiss"
    # The action is a radio group: arrows choose; Suspend shows the days field next in order.
    await admin.keyboard.press("ArrowDown")
    await admin.keyboard.press("ArrowDown")
    assert await admin.evaluate("document.activeElement.value") == "suspend"
    await expect(admin.locator("#resolve-days")).to_be_visible()
    await admin.keyboard.press("Tab")
    assert await focused(admin) == "resolve-days"
    await admin.keyboard.type("7")
    await admin.keyboard.press("Tab")
    assert await focused(admin) == "resolve-note"
    await admin.keyboard.type("Gave unsafe advice to cross a road.")
    await admin.keyboard.press("Tab")
    assert await focused(admin) == "resolve"
    await admin.keyboard.press("Enter")
    # The confirmation: a modal dialog, focus on Cancel.
    await expect(live(admin)).to_have_text(
        "Suspend vol-kb? vol-kb (volunteer) can take or make no calls for 7 days. "
        "Confirm with Suspend, or Cancel."
    )
    await expect(admin.locator("#confirm")).to_have_attribute("open", "")
    assert await focused(admin) == "confirm-cancel"
    # The rest of the page is inert: Tab stays in the dialog.
    await admin.keyboard.press("Tab")
    assert await focused(admin) == "confirm-yes"
    await expect(admin.locator("#confirm-yes")).to_have_text("Suspend")
    await admin.keyboard.press("Enter")
    await expect(live(admin)).to_have_text(
        re.compile(rf"^Case {case['id']} resolved\. vol-kb is suspended for 7 days\. ")
    )
    assert await focused(admin) == "back-to-cases"
    await expect(admin.locator("#confirm")).not_to_have_attribute("open", "")

    # The broker has it: the case, the restriction, the audit log, and the volunteer is off.
    status, resolved = await admin_api(broker_server, "GET", f"/v1/admin/cases/{case['id']}")
    assert status == 200 and resolved["state"] == "resolved"
    assert resolved["resolution"]["action"] == "suspend" and resolved["resolution"]["days"] == 7
    assert resolved["resolution"]["note"] == "Gave unsafe advice to cross a road."
    status, user = await admin_api(broker_server, "GET", "/v1/admin/users/vol-kb")
    assert status == 200 and user["restriction"]["kind"] == "suspended"
    status, audit = await admin_api(broker_server, "GET", "/v1/admin/audit?actor=admin-kb")
    assert status == 200
    assert {e["action"] for e in audit["entries"]} >= {"case.resolve"}
    vol = await broker_server.connect("vol-kb", "volunteer", languages=["en"])
    refused = await vol.request({"type": "availability", "available": True})
    assert refused["type"] == "error" and refused["code"] == "suspended"
    await vol.close()

    # Back to the queue by keyboard: the resolved case is no longer in it.
    await admin.keyboard.press("Enter")
    await expect(live(admin)).to_have_text(re.compile(r"^Moderation queue: "))
    await expect(admin.locator(f'#cases button[data-case="{case["id"]}"]')).to_have_count(0)
    await admin.context.close()


async def test_more_cases_than_a_page(browser: Browser, broker_server: Server) -> None:
    """The queue shows 20 cases at a time; More cases adds the next page and focus goes to the
    first case it added."""
    for n in range(21):
        await reported_call(broker_server, f"rec-page-{n}", f"vol-page-{n}", "other")
    status, overview = await admin_api(broker_server, "GET", "/v1/admin/overview")
    assert status == 200 and overview["open_cases"] > 20
    admin = await open_console(browser, broker_server, "admin-page", "Pat")
    await admin.keyboard.press("Enter")
    await expect(live(admin)).to_have_text("Moderation queue: 20 open cases shown; there are more.")
    await expect(admin.locator("#cases tbody tr")).to_have_count(20)
    first_of_next = await admin.evaluate(
        "document.querySelectorAll('#cases button.review')[19].dataset.case"
    )
    await admin.locator("#more-cases").focus()
    await admin.keyboard.press("Enter")
    more = overview["open_cases"] - 20
    await expect(live(admin)).to_have_text(f"{more} more case{'s' if more > 1 else ''} shown.")
    await expect(admin.locator("#cases tbody tr")).to_have_count(overview["open_cases"])
    await expect(admin.locator("#more-cases")).to_be_hidden()
    assert await admin.evaluate("document.activeElement.dataset.case") not in (None, first_of_next)
    assert (
        await admin.evaluate(
            "[...document.querySelectorAll('#cases button.review')].indexOf(document.activeElement)"
        )
        == 20
    )
    # Filters: resolved cases about one user; open cases of a reason nobody reported.
    await admin.select_option("#case-state", "resolved")
    await admin.fill("#case-user", "vol-kb")
    await admin.click('#case-filter button[type="submit"]')
    await expect(live(admin)).to_have_text("Moderation queue: 1 resolved case.")
    await expect(admin.locator("#cases tbody tr")).to_have_count(1)
    await expect(admin.locator("#cases tbody tr")).to_contain_text("Resolved: Suspended")
    await admin.select_option("#case-state", "open")
    await admin.fill("#case-user", "")
    await admin.select_option("#case-reason", "privacy")
    await admin.click('#case-filter button[type="submit"]')
    await expect(live(admin)).to_have_text("Moderation queue: No open cases match.")
    await expect(admin.locator("#cases table")).to_have_count(0)
    await assert_accessible(admin, "cases")
    await admin.context.close()


async def test_an_expired_sign_in_goes_back_to_sign_in_saying_why(
    browser: Browser, broker_server: Server
) -> None:
    # The broker normally allows 30 s of clock skew past a token's expiry; none here, so that
    # the token below lapses within the test.
    auth = broker_server.ctx.auth
    leeway, auth.leeway_s = auth.leeway_s, 0.0
    try:
        context = await new_context(browser)
        expires = int(time.time()) + 5
        token = broker_server.token("admin-brief", "admin", name="Bri", ttl_s=5)
        admin = await open_page(context, broker_server, "admin", token)
        await expect(live(admin)).to_have_text(re.compile("^Signed in as Bri, administrator"))
        await asyncio.sleep(max(0.0, expires + 1 - time.time()))
        await admin.click('#console-nav button[data-view="audit"]')
        await expect(live(admin)).to_have_text(re.compile(r"^Please sign in\. .*expired"))
        await expect(admin.locator("#sign-in-error")).to_contain_text("expired")
        assert await focused(admin) == "demo-sign-in"
        assert await admin.evaluate("sessionStorage.getItem('vabroker.token')") is None
        await expect(admin.locator("#console-nav")).to_be_hidden()
        await assert_accessible(admin, "signed-out")
        await context.close()
    finally:
        auth.leeway_s = leeway


async def test_an_organisations_administrator_sees_only_its_own(
    browser: Browser, broker_server: Server
) -> None:
    """An administrator whose token names an organisation: greeted as such; volunteers' cases
    are not in their queue, and a volunteer is not a user they can look up."""
    admin = await open_as(
        browser, broker_server, "admin", "admin-org", "admin", name="Oren", org="demo-org"
    )
    await expect(live(admin)).to_have_text(
        re.compile(r"^Signed in as Oren of demo-org, administrator\. .* No open cases\.$")
    )
    await expect(admin.locator("#admin-who")).to_have_text("— Oren of demo-org")
    await admin.keyboard.press("Enter")
    await expect(live(admin)).to_have_text(
        "Moderation queue: No open cases. The moderation queue is empty."
    )
    await admin.click('#console-nav button[data-view="user"]')
    assert await focused(admin) == "lookup-id"
    await admin.keyboard.type("vol-kb")
    await admin.keyboard.press("Enter")
    await expect(live(admin)).to_have_text("No user with the id vol-kb.")
    await assert_accessible(admin, "user")
    await admin.context.close()


async def test_console_reflows_at_320_css_pixels(browser: Browser, broker_server: Server) -> None:
    """400% zoom of a 1280 px window: no sideways scrolling of the page (WCAG 1.4.10); wide
    tables scroll in their own box, which is then a focusable, named region."""
    context = await browser.new_context(viewport={"width": 320, "height": 640})
    admin = await open_page(
        context, broker_server, "admin", broker_server.token("admin-zoom", "admin", name="Zed")
    )
    await expect(live(admin)).to_have_text(re.compile("^Signed in as Zed"))
    said = {
        "overview": "^Today: ",
        "cases": "^Moderation queue: ",
        "stats": "^(Statistics: |No calls)",
        "audit": "^Audit log: ",
        "orgs": "^Organisations: ",
    }
    for view, text in said.items():
        await admin.click(f'#console-nav button[data-view="{view}"]')
        await expect(admin.locator("body")).to_have_attribute("data-state", view)
        await expect(live(admin)).to_have_text(re.compile(text))
        width = await admin.evaluate("document.documentElement.scrollWidth")
        assert width <= 320, f"the console's {view} is {width} px wide at a 320 px viewport"
        violations = await axe_violations(admin)
        assert violations == [], f"{view} at 320 px:\n{explain(violations)}"
    await context.close()


async def test_demo_sign_in_as_administrator(browser: Browser) -> None:
    """A demo broker offers a demo administrator, and has a few demo cases to look at (a fresh
    broker: none of this module's cases)."""
    async with start_server(demo=True) as demo:
        context = await new_context(browser)
        tab = await open_page(context, demo, "admin")
        await expect(live(tab)).to_have_text("Please sign in.")
        assert await focused(tab) == "demo-sign-in"
        await tab.keyboard.press("Enter")
        await expect(live(tab)).to_have_text(re.compile(r"^Signed in as .+, administrator\."))
        status, overview = await admin_api(demo, "GET", "/v1/admin/overview")
        assert status == 200 and overview["open_cases"] >= 1, overview
        assert await focused(tab) == "review-cases"
        await tab.keyboard.press("Enter")
        await expect(tab.locator("#cases tbody tr")).to_have_count(overview["open_cases"])
        await assert_accessible(tab, "cases")
        await context.close()
