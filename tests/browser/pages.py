"""Helpers of the browser tests and the screenshot script: Chromium, signed-in pages, axe-core,
and counting the frames a <video> element really presents."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, BrowserContext, Locator, Page, WebSocketRoute, expect

from tests.helpers import Server

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; a downloaded browser is never used
CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream",  # a synthetic 640x480 camera at 20 fps and a beep
    "--use-fake-ui-for-media-stream",  # camera and microphone permission granted
    "--allow-loopback-in-peer-connection",  # gather 127.0.0.1 candidates
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
AXE = Path(__file__).parent / ".axe" / "node_modules" / "axe-core" / "axe.min.js"
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]


async def new_context(browser: Browser) -> BrowserContext:
    context = await browser.new_context(viewport={"width": 900, "height": 1100})
    await context.grant_permissions(["camera", "microphone"])
    return context


async def open_page(
    context: BrowserContext, server: Server, page: str, token: str | None = None
) -> Page:
    """``page`` (recipient, volunteer, agent) signed in with ``token`` in the URL fragment."""
    tab = await context.new_page()
    tab.set_default_timeout(15_000)
    fragment = f"#token={token}" if token else ""
    await tab.goto(f"{server.url}/app/{page}.html{fragment}")
    return tab


async def open_as(
    browser: Browser, server: Server, page: str, sub: str, role: str, **claims: Any
) -> Page:
    context = await new_context(browser)
    return await open_page(context, server, page, server.token(sub, role, **claims))


def live(page: Page) -> Locator:
    """The page's ARIA live region: everything the page says to a screen reader."""
    return page.locator("#live")


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's WCAG 2.2 A/AA (and best-practice) violations on the page as it is now."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        # Evaluated rather than added as a <script>: the pages' CSP forbids inline scripts.
        await page.evaluate(AXE.read_text() + "\n;true")
    result = await page.evaluate(
        "async (tags) => (await axe.run(document, {runOnly: {type: 'tag', values: tags}}))"
        ".violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}))",
        WCAG_TAGS,
    )
    return list(result)


def explain(violations: list[dict[str, Any]]) -> str:
    return json.dumps(violations, indent=1)


async def presented_frames(page: Page, selector: str, seconds: float) -> int:
    """Frames the <video> presents within ``seconds``, counted with requestVideoFrameCallback
    (decoded and composited frames, not just bytes received)."""
    count: int = await page.evaluate(
        """([selector, ms]) => new Promise((resolve) => {
            const video = document.querySelector(selector);
            let frames = 0;
            const start = performance.now();
            const tick = () => {
                frames += 1;
                if (performance.now() - start < ms) video.requestVideoFrameCallback(tick);
            };
            video.requestVideoFrameCallback(tick);
            setTimeout(() => resolve(frames), ms);
        })""",
        [selector, seconds * 1000],
    )
    return count


async def assert_accessible(page: Page, state: str) -> None:
    """The page has reached ``state`` (its body's data-state), axe-core finds no violation and
    every visible control is a large enough target."""
    await expect(page.locator("body")).to_have_attribute("data-state", state)
    # A viewport just changed fires its resize event at the next rendering step: let the
    # page's handlers (scrollable tables become focusable regions) run first, as they would
    # before any reader could reach the page.
    await page.evaluate("() => new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)))")
    violations = await axe_violations(page)
    assert violations == [], f"{page.url.split('#')[0]} in state {state}:\n{explain(violations)}"
    # Every visible control is a large target (WCAG 2.5.8 asks for 24 px; these are 44+).
    small = await page.evaluate(
        """() => [...document.querySelectorAll('button, select, input, textarea, a.button')]
            .filter((el) => el.offsetParent !== null)
            .map((el) => [el.id || el.textContent.trim(), el.getBoundingClientRect()])
            .filter(([, r]) => r.width < 24 || r.height < 24)
            .map(([name, r]) => `${name}: ${r.width}x${r.height}`)"""
    )
    assert small == [], f"small targets in state {state}: {small}"


async def focused(page: Page) -> str:
    return str(
        await page.evaluate("() => document.activeElement.id || document.activeElement.tagName")
    )


class LobbyHold:
    """Holds back the broker's lobby lists to a page while ``held`` is set: the test's way of
    making the list in the page older than the broker's (as a message still on its way). The
    page's WebSocket goes through Playwright's route (``open``); the rest passes unchanged."""

    def __init__(self) -> None:
        self.held = False
        self.kept: list[str] = []
        self.route: WebSocketRoute | None = None

    def __call__(self, route: WebSocketRoute) -> None:
        self.route = route
        server = route.connect_to_server()

        def from_broker(message: str | bytes) -> None:
            text = message.decode() if isinstance(message, bytes) else message
            if self.held and json.loads(text).get("type") == "lobby":
                self.kept.append(text)
            else:
                route.send(text)

        server.on_message(from_broker)

    async def open(self, context: BrowserContext, server: Server, page: str, token: str) -> Page:
        tab = await context.new_page()
        tab.set_default_timeout(15_000)
        await tab.route_web_socket(re.compile(r".*/v1/ws$"), self)
        await tab.goto(f"{server.url}/app/{page}.html#token={token}")
        return tab

    def release(self) -> None:
        self.held = False
        assert self.route is not None
        for text in self.kept:
            self.route.send(text)
        self.kept.clear()
