"""Browser tests: the pages in Debian's Chromium (headless, fake camera), driven by Playwright.

One broker and one browser per test module (both on the module's event loop); each test opens
its own browser contexts, so that two pages are two separate users.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aioice.ice
import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright

from tests.browser.pages import CHROMIUM, CHROMIUM_ARGS
from tests.helpers import Server, start_server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium package")
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def broker_server() -> AsyncIterator[Server]:
    # Every page of a module signs in from one address: more than a person trying demo mode.
    async with start_server(demo=True, demo_signins_per_hour=1000) as srv:
        yield srv


@pytest.fixture(scope="module")
def loopback_ice() -> Iterator[None]:
    """aiortc peers in these tests offer only 127.0.0.1 (aioice never offers loopback itself)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
        yield
