"""Parts of the pages that need no second person: the recipient's partner directory and the
agent's live queue (rendered from the documented shapes of ``GET /v1/orgs`` and
``GET /v1/orgs/{id}/queue``), what a recipient hears as the search moves, and the protocol
module's checking of server messages.

The two org routes belong to the partner-queues work; until the broker serves them, these tests
answer those two requests in the browser (Playwright's request routing) so that the pages'
rendering, wording and accessibility are checked now. Everything else talks to the real broker.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, Route, expect

from broker.moderation import RestrictionKind
from tests.browser.pages import axe_violations, explain, live, open_as
from tests.helpers import Server

pytestmark = pytest.mark.asyncio(loop_scope="module")

DIRECTORY = {
    "orgs": [
        {
            "id": "bank",
            "name": "High Street Bank",
            "description": "Help with cards, statements and cash machines.",
            "languages": ["en"],
            "queues": [{"id": "cards", "name": "Cards"}],
            "open_now": True,
            "next_opening": None,
        },
        {
            "id": "pharmacy",
            "name": "Corner Pharmacy",
            "description": "Reading prescriptions and medicine labels.",
            "languages": ["en"],
            "queues": [],
            "open_now": False,
            "next_opening": "2026-06-16T08:00:00+00:00",
        },
    ]
}

QUEUE = {
    "org": "acme",
    "waiting": [
        {"call": "c_1", "position": 1, "wait_s": 125, "language": "en", "topic": "card blocked"},
        {"call": "c_2", "position": 2, "wait_s": 40, "language": "fr"},
    ],
    "agents": [{"display_name": "Ada", "state": "available"}],
}


async def test_directory_lists_open_and_closed_partners(
    browser: Browser, broker_server: Server
) -> None:
    rec = await open_as(browser, broker_server, "recipient", "rec-dir", "recipient", name="Dan")

    async def directory(route: Route) -> None:
        assert route.request.headers["authorization"].startswith("Bearer ")
        await route.fulfill(status=200, content_type="application/json", body=json.dumps(DIRECTORY))

    await rec.route("**/v1/orgs", directory)
    await rec.reload()  # the token stays in this tab's session storage
    await expect(live(rec)).to_have_text(re.compile("Signed in as Dan"))
    partners = rec.locator("#partners li")
    await expect(partners).to_have_count(2)
    await expect(partners.nth(0)).to_contain_text("Open now.")
    await expect(partners.nth(1)).to_contain_text(re.compile(r"Closed\. Opens \w+"))
    # Only an open partner can be called; the broker (without partner queues) refuses, and the
    # refusal is said.
    await expect(rec.get_by_role("button", name="Call Corner Pharmacy")).to_have_count(0)
    violations = await axe_violations(rec)
    assert violations == [], explain(violations)
    await rec.get_by_role("button", name="Call High Street Bank").click()
    await expect(live(rec)).to_have_text("There is no partner organisation 'bank'.")
    await expect(rec.locator("body")).to_have_attribute("data-state", "idle")
    await rec.context.close()


async def test_agent_console_shows_the_live_queue(browser: Browser, broker_server: Server) -> None:
    agent = await open_as(
        browser, broker_server, "agent", "agent-q", "agent", name="Ada", org="acme"
    )

    async def queue(route: Route) -> None:
        await route.fulfill(status=200, content_type="application/json", body=json.dumps(QUEUE))

    await agent.route("**/v1/orgs/acme/queue", queue)
    await agent.reload()
    await expect(live(agent)).to_have_text("Signed in as Ada of acme. You are away.")
    rows = agent.locator("#queue tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text("card blocked")
    await expect(rows.nth(1)).to_contain_text("French")
    await expect(agent.locator("#queue")).to_contain_text("Ada: available")
    violations = await axe_violations(agent)
    assert violations == [], explain(violations)
    # Reflow: at 320 px, and at 640 px with text at 200%, the table scrolls inside a region
    # named by its caption that the keyboard reaches; the page itself never scrolls sideways.
    for width, text_size in ((320, "100%"), (640, "200%")):
        await agent.set_viewport_size({"width": width, "height": 800})
        await agent.evaluate(
            "(size) => { document.documentElement.style.fontSize = size;"
            " dispatchEvent(new Event('resize')); }",
            text_size,
        )
        assert await agent.evaluate("document.documentElement.scrollWidth") == width
        region = agent.get_by_role("region", name="Waiting calls")
        await expect(region).to_have_attribute("tabindex", "0")
        violations = await axe_violations(agent)
        assert violations == [], f"{width} px, text {text_size}:\n{explain(violations)}"
    await agent.evaluate("document.documentElement.style.fontSize = ''")
    await agent.set_viewport_size({"width": 900, "height": 1100})
    # Keyboard: the status radios are the first stop; arrow keys choose, the broker confirms.
    assert await agent.evaluate("document.activeElement.value") == "away"
    await agent.keyboard.press("ArrowUp")
    await expect(live(agent)).to_have_text(
        "You are available. Calls from the queue will come to you."
    )
    await agent.keyboard.press("ArrowDown")
    await expect(live(agent)).to_have_text("You are away. No calls will come to you.")
    await agent.context.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ui_module_page(browser: Browser, broker_server: Server) -> AsyncIterator[Page]:
    """A page of the site, to import the pages' own modules into."""
    page = await open_as(browser, broker_server, "index", "rec-words", "recipient")
    yield page
    await page.context.close()


@pytest.mark.parametrize(
    ("lang", "status", "said"),
    [
        ("en", {"state": "searching", "notified": 12}, "Ringing 12 volunteers."),
        ("en", {"state": "searching", "notified": 1}, "Ringing 1 volunteer."),
        (
            "en",
            {"state": "searching", "notified": 0},
            "No volunteer is free just now. Still looking…",
        ),
        (
            "en",
            {"state": "queued", "position": 3, "eta_s": 230},
            "You are number 3 in the queue, about 4 minutes.",
        ),
        (
            "en",
            {"state": "queued", "position": 1, "eta_s": 50},
            "You are number 1 in the queue, about 1 minute.",
        ),
        ("en", {"state": "queued", "position": 2}, "You are number 2 in the queue."),
        # Plural forms come from Intl.PluralRules: Spanish one/other, Arabic's six forms.
        ("es", {"state": "searching", "notified": 1}, "Llamando a 1 voluntario."),
        ("es", {"state": "searching", "notified": 3}, "Llamando a 3 voluntarios."),
        ("ar", {"state": "searching", "notified": 1}, "نتصل بمتطوع واحد."),
        ("ar", {"state": "searching", "notified": 2}, "نتصل بمتطوعَين."),
        ("ar", {"state": "searching", "notified": 3}, "نتصل بـ3 متطوعين."),
        ("ar", {"state": "searching", "notified": 11}, "نتصل بـ11 متطوعًا."),
    ],
)
async def test_what_the_recipient_hears_as_the_search_moves(
    ui_module_page: Page, lang: str, status: dict[str, object], said: str
) -> None:
    text = await ui_module_page.evaluate(
        """async ([lang, status]) => {
            await (await import('./i18n.js')).useLanguage(lang);
            return (await import('./ui.js')).progressText(status);
        }""",
        [lang, status],
    )
    assert text == said


@pytest.mark.parametrize(
    ("lang", "status", "said"),
    [
        (
            "en",
            {
                "state": "queued",
                "position": 2,
                "escalation": {"outcome": "queued", "org": "help", "org_name": "City Help Line"},
            },
            "No volunteer could answer, so your call has gone to City Help Line. "
            "You are number 2 in the queue.",
        ),
        (
            "en",
            {
                "state": "searching",
                "notified": 0,
                "escalation": {"outcome": "closed", "retry_after_s": 300},
            },
            "No volunteer is free just now and the help centre is closed. Still looking… "
            "If no one answers, please try again in about 5 minutes.",
        ),
        (
            "en",
            {"state": "searching", "escalation": {"outcome": "unavailable", "retry_after_s": 900}},
            "No volunteer is free just now. Still looking… "
            "If no one answers, please try again in about 15 minutes.",
        ),
        # The same sentences from the catalogs in the recipient's language.
        (
            "es",
            {"state": "searching", "escalation": {"outcome": "full", "retry_after_s": 60}},
            "Ahora mismo no hay ningún voluntario libre y el centro de ayuda está ocupado. "
            "Seguimos buscando… Si nadie contesta, vuelve a intentarlo en alrededor de 1 minuto.",
        ),
        (
            "ar",
            {"state": "searching", "escalation": {"outcome": "queued"}},
            "لم يتمكن أي متطوع من الرد، لذلك حُوّلت مكالمتك إلى مركز مساعدة.",
        ),
    ],
)
async def test_what_the_recipient_hears_when_nobody_answers(
    ui_module_page: Page, lang: str, status: dict[str, object], said: str
) -> None:
    text = await ui_module_page.evaluate(
        """async ([lang, status]) => {
            await (await import('./i18n.js')).useLanguage(lang);
            return (await import('./ui.js')).progressText(status);
        }""",
        [lang, status],
    )
    assert text == said


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        ("not json", "The broker sent something that is not JSON."),
        ('{"call": "c_1"}', "The broker sent a message without a type."),
        ('{"type": "call.ring", "call": 7}', "The broker's call.ring has a bad call."),
        (
            '{"type": "call.assigned", "call": "c", "peer": {}, "ice_servers": [], "offerer": "yes"}',
            "The broker's call.assigned has a bad offerer.",
        ),
        (
            '{"type": "call.status", "call": "c", "state": "queued", "position": "3"}',
            "bad position",
        ),
        (
            '{"type": "call.status", "call": "c", "state": "queued", "escalation": "help"}',
            "bad escalation",
        ),
        (
            '{"type": "call.ended", "call": "c", "reason": "no_answer", "retry_after_s": "9"}',
            "bad retry_after_s",
        ),
        # The lobby: a bad request is never shown with a Take button.
        ('{"type": "lobby", "entries": {}, "more": 0}', "The broker's lobby has a bad entries."),
        ('{"type": "lobby", "entries": [], "more": -1}', "The broker's lobby has a bad more."),
        ('{"type": "lobby", "entries": [], "more": 1.5}', "The broker's lobby has a bad more."),
        ('{"type": "lobby", "entries": []}', "The broker's lobby has a bad more."),
        ('{"type": "lobby", "entries": [], "more": 0, "closed": "yes"}', "bad closed"),
        ('{"type": "lobby", "entries": [], "more": 0, "reason": 3}', "bad reason"),
        *(
            ('{"type": "lobby", "more": 0, "entries": [' + entry + "]}", "bad entries")
            for entry in [
                '"c"',
                '{"language": "en", "topic": null, "waiting_s": 1, "requested_at": 1}',
                '{"call": 7, "language": "en", "topic": null, "waiting_s": 1, "requested_at": 1}',
                '{"call": "c", "topic": null, "waiting_s": 1, "requested_at": 1}',
                '{"call": "c", "language": "en", "topic": 5, "waiting_s": 1, "requested_at": 1}',
                '{"call": "c", "language": "en", "topic": null, "waiting_s": -1, "requested_at": 1}',
                '{"call": "c", "language": "en", "topic": null, "waiting_s": "1", "requested_at": 1}',
                '{"call": "c", "language": "en", "topic": null, "waiting_s": 1}',
                '{"call": "c", "language": "en", "topic": null, "waiting_s": 1, "requested_at": "t"}',
            ]
        ),
    ],
)
async def test_the_pages_check_every_server_message(
    ui_module_page: Page, frame: str, problem: str
) -> None:
    said = await ui_module_page.evaluate(
        """async (frame) => {
            const { parseServer } = await import('./protocol.js');
            try { parseServer(frame); return 'accepted'; } catch (err) { return err.message; }
        }""",
        frame,
    )
    assert problem in said


async def test_the_pages_accept_good_and_newer_messages(ui_module_page: Page) -> None:
    kinds = await ui_module_page.evaluate(
        """async () => {
            const { parseServer } = await import('./protocol.js');
            return [
                '{"type": "call.withdrawn", "call": "c", "reason": "answered", "extra": 1}',
                '{"type": "call.ended", "call": "c", "reason": "completed"}',
                '{"type": "something.new", "x": 1}',
                '{"type": "lobby", "entries": [{"call": "c", "language": "en", "topic": null,'
                + ' "waiting_s": 0, "requested_at": 1.5e9}], "more": 0}',
                '{"type": "lobby", "entries": [], "more": 0, "closed": true, "reason": "in_call"}',
            ].map((f) => parseServer(f).type);
        }"""
    )
    assert kinds == ["call.withdrawn", "call.ended", "something.new", "lobby", "lobby"]


async def test_the_pages_number_and_acknowledge_signals_as_the_sdk_does(
    ui_module_page: Page,
) -> None:
    """The pages' ``SignalLink`` (clients/web/protocol.js) fed by hand, the same cases as the
    SDK's (tests/test_signal_link.py): kept until acknowledged, sent again only to a peer
    that acknowledges, handed on once and in order, a late joiner finding its place."""
    said = await ui_module_page.evaluate(
        """async () => {
            const { SignalLink, parseServer } = await import('./protocol.js');
            const out = {};
            const link = new SignalLink('c1', { resendAfterS: 1 });
            out.hello = link.acknowledgement();
            out.seqs = [0, 1, 2].map((i) => link.send({ candidate: { n: i } }, 0).seq);
            out.beforePeerAcks = link.due(5, true).length;
            link.acknowledged(0);
            out.early = link.due(0.5).length;
            out.due = link.due(1).map((m) => m.seq);
            out.again = link.due(1.5).length;
            link.acknowledged(2);
            out.afterAck = link.due(2).map((m) => m.seq);
            out.afterResume = link.due(2.1, true).map((m) => m.seq);

            const rx = new SignalLink('c1');
            out.noAck = rx.ack();
            out.r1 = rx.receive(1, 'offer');
            out.r3 = rx.receive(3, 'c3');
            out.ack1 = rx.ack().seq;
            out.r2 = rx.receive(2, 'c2');
            out.copy = rx.receive(3, 'c3');
            out.copies = rx.copies;
            out.ack3 = rx.ack().seq;

            const late = new SignalLink('c1', { joinedLate: true });
            out.lateSend = late.send({ candidate: null }, 0);
            out.late = [late.receive(41, 'a'), late.receive(43, 'c'), late.receive(42, 'b')];

            out.parsed = parseServer('{"type": "signal.ack", "call": "c1", "seq": 4}').seq;
            try { parseServer('{"type": "signal.ack", "call": "c1"}'); } catch (err) {
                out.badAck = err.message;
            }
            try { parseServer('{"type": "signal", "call": "c1", "data": {}, "seq": "1"}'); }
            catch (err) { out.badSeq = err.message; }
            return out;
        }"""
    )
    assert said["hello"] == {"type": "signal.ack", "call": "c1", "seq": 0}
    assert said["seqs"] == [1, 2, 3] and said["beforePeerAcks"] == 0
    assert said["early"] == 0 and said["due"] == [1, 2, 3] and said["again"] == 0
    assert said["afterAck"] == [3] and said["afterResume"] == [3]
    assert said["noAck"] is None and said["r1"] == ["offer"] and said["r3"] == []
    assert said["ack1"] == 1 and said["r2"] == ["c2", "c3"]
    assert said["copy"] == [] and said["copies"] == 1 and said["ack3"] == 3
    assert said["lateSend"] == {"type": "signal", "call": "c1", "data": {"candidate": None}}
    assert said["late"] == [["a"], [], ["b", "c"]]
    assert said["parsed"] == 4
    assert said["badAck"] == "The broker's signal.ack has a bad seq."
    assert said["badSeq"] == "The broker's signal has a bad seq."


async def test_ping_is_answered(browser: Browser, broker_server: Server) -> None:
    rec = await open_as(browser, broker_server, "recipient", "rec-ping", "recipient")
    await expect(live(rec)).to_have_text(re.compile("Signed in as"))
    assert (
        await rec.evaluate("async () => (await window.vabrokerPage.session.ping()).type") == "pong"
    )
    await rec.context.close()


async def test_the_session_refreshes_its_token_when_warned(
    ui_module_page: Page, broker_server: Server
) -> None:
    # A token this short is warned about at once (auth.expiring comes a minute ahead).
    short = broker_server.token("rec-refresh", "recipient", ttl_s=2)
    fresh = broker_server.token("rec-refresh", "recipient", ttl_s=3600)
    got = await ui_module_page.evaluate(
        """async ([short, fresh]) => {
            const { Session } = await import('./protocol.js');
            let asked = 0;
            const tokenSource = async () => { asked += 1; return fresh; };
            const session = new Session(short, { tokenSource });
            const warned = new Promise((resolve) => session.on('auth.expiring', resolve));
            await session.connect();
            const warning = await warned;
            for (let i = 0; i < 100 && session.token !== fresh; i++) {
                await new Promise((wake) => setTimeout(wake, 50));
            }
            const pong = await session.ping();
            session.close();
            return { asked, refreshed: session.token === fresh, left: warning.expires_in_s,
                     pong: pong.type };
        }""",
        [short, fresh],
    )
    assert got["asked"] == 1 and got["refreshed"] is True and got["pong"] == "pong"
    assert 0 < got["left"] <= 32


async def test_a_volunteer_hears_of_a_suspension_and_its_end(
    browser: Browser, broker_server: Server
) -> None:
    vol = await open_as(browser, broker_server, "volunteer", "vol-held", "volunteer", name="Vi")
    await expect(live(vol)).to_have_text(re.compile("Signed in as Vi"))
    await vol.locator("#duty").click()
    await expect(vol.locator("#duty")).to_have_attribute("aria-checked", "true")
    profile = await broker_server.ctx.store.get_profile("vol-held")
    assert profile is not None
    _, events = await broker_server.ctx.broker.restrict(
        profile, RestrictionKind.SUSPENDED, "under review", "boss", "admin", days=3
    )
    broker_server.ctx.hub.deliver(events)
    # Taken off duty by the broker: the switch follows and the volunteer is told why.
    await expect(vol.locator("#duty")).to_have_attribute("aria-checked", "false")
    await expect(live(vol)).to_have_text(
        re.compile("You were taken off duty. Your account is suspended")
    )
    # Going on duty again is refused with the end date in words.
    await vol.locator("#duty").click()
    await expect(live(vol)).to_have_text(
        re.compile(r"suspended.*It ends on \d+ \w+ \d{4} at \d\d:\d\d UTC")
    )
    await expect(vol.locator("#duty")).to_have_attribute("aria-checked", "false")
    # Signing in again: the welcome carries the restriction, and the page says it.
    await vol.reload()
    await expect(live(vol)).to_have_text(
        re.compile(r"Signed in as Vi\. You are off duty\. Your account is suspended")
    )
    violations = await axe_violations(vol)
    assert violations == [], explain(violations)
    await vol.context.close()
