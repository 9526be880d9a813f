"""What the console's browser tests share: Debian's Chromium driven by Playwright (a module
fixture), logging in, a recorder of URLs and server log lines, and where screenshots go."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
import pytest_twisted
from conftest import aio
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher

try:  # the browser tests say what is missing (require_browser)
    from playwright.async_api import async_playwright, expect
except ImportError:
    async_playwright = expect = None

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDE = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}


def future(deferred: defer.Deferred) -> asyncio.Future:
    """Await a Twisted Deferred from asyncio code (the browser scenarios are asyncio)."""
    return deferred.asFuture(asyncio.get_event_loop())


def require_browser():
    """Playwright and Debian's Chromium; under scripts/test (which installs them) or in CI
    their absence is a failure, else a skip."""
    problem = (
        "playwright is not installed (pip install -e '.[test]')" if async_playwright is None
        else "no chromium on PATH (apt-get install chromium)" if CHROMIUM is None
        else None
    )
    if problem:
        if os.environ.get("CI") or os.environ.get("EFORMWS_TEST_REQUIRE_ALL"):
            pytest.fail(f"the console's browser tests need {problem}")
        pytest.skip(problem)


@pytest_twisted.async_yield_fixture(scope="module")
async def chromium():
    require_browser()
    playwright = await aio(async_playwright().start())
    browser = await aio(playwright.chromium.launch(executable_path=CHROMIUM))
    yield browser
    await aio(browser.close())
    await aio(playwright.stop())


class Recorder:
    """Every URL the browser asked for and every line the server logged, to show that a
    session id appears in neither; and every script error or CSP refusal in the page."""

    def __init__(self, page):
        self.urls: list[str] = []
        self.lines: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda request: self.urls.append(request.url))
        page.on("websocket", lambda socket: self.urls.append(socket.url))
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self.console)

    def console(self, message):
        if "Content Security Policy" in message.text:
            self.errors.append(message.text)

    def observe(self, event):
        if event.get("log_format"):
            self.lines.append(formatEvent(event))
        self.lines.extend(str(part) for part in event.get("message", ()))
        if event.get("log_io"):
            self.lines.append(event["log_io"])

    def __enter__(self):
        globalLogPublisher.addObserver(self.observe)
        return self

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self.observe)


async def log_in(page, server, session_id: str):
    await page.goto(server.http("/"))
    assert page.url == server.http("/console")
    await page.fill("#session-id", session_id)
    await page.click("#login-form button")


async def logged_in(page, server, session_id: str):
    """Log in and wait until the event stream is live."""
    await log_in(page, server, session_id)
    await page.wait_for_selector("#link-state.on", timeout=5000)


async def screenshot(page, name: str) -> Path:
    """Save a full-page picture under artifacts/ (CI keeps them); its path."""
    path = ARTIFACTS / name
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(path), full_page=True)
    return path


def emit_status(server, message: str, score: int = 97):
    """A `system_status` event from the server's own emitter (a Deferred of its envelope)."""
    return server.service.events.emit(
        "system_status", {"component": "kiosk", "status": "online", "health_score": score, "message": message}
    )


async def open_console(server, chromium, user: str = "alice", role: str = "admin", viewport: dict | None = None,
                       clipboard: bool = False):
    """A new browser context whose page is logged in (stream live) with a new session of
    `role`: (context, page, session id). Call from Twisted code."""
    session_id = await server.session(user, role)
    context = await aio(chromium.new_context(viewport=viewport or WIDE))
    if clipboard:
        await aio(context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.http("")))
    page = await aio(context.new_page())
    await aio(logged_in(page, server, session_id))
    return context, page, session_id


async def closing_after(context, scenario):
    """Run an asyncio `scenario` from Twisted code, then close the browser `context` (also
    when the scenario fails, so a failed test does not leave its pages open)."""
    async def whole():
        try:
            await scenario
        finally:
            await context.close()

    await aio(whole())
