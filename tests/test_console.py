"""The staff console at `/console`: its files and security headers over HTTP, then a real
headless Chromium (Debian's, driven by Playwright) logging in and using it as staff would."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path

import pytest
import pytest_twisted
import treq
from conftest import aio
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher

from eformws.console import content_security_policy

try:  # the browser tests say what is missing (tests/test_console.py::_playwright)
    from playwright.async_api import async_playwright, expect
except ImportError:
    async_playwright = expect = None

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "artifacts" / "console.png"
LOCKERS = "/ws/lockers"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def future(deferred: defer.Deferred) -> asyncio.Future:
    """Await a Twisted Deferred from asyncio code (the browser scenarios are asyncio)."""
    return deferred.asFuture(asyncio.get_event_loop())


async def get(server, path: str, method: str = "GET", **kwargs):
    response = await treq.request(method, server.http(path), persistent=False, allow_redirects=False, **kwargs)
    body = await response.content()
    return response, body


def header(response, name: str) -> str:
    return response.headers.getRawHeaders(name.encode(), [b""])[0].decode()


def assert_secure(response) -> None:
    policy = header(response, "content-security-policy")
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["form-action"] == "'none'"
    assert directives["connect-src"].startswith("'self'")
    assert "unsafe" not in policy
    assert header(response, "x-content-type-options") == "nosniff"
    assert header(response, "referrer-policy") == "no-referrer"
    assert header(response, "x-frame-options") == "DENY"
    assert header(response, "cache-control") == "no-store"


# -- over HTTP -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_root_redirects_to_the_console(server):
    response, _ = await get(server, "/")
    assert response.code == 302
    assert header(response, "location") == "/console"
    assert_secure(response)
    response, _ = await get(server, "/", method="HEAD")
    assert response.code == 302


@pytest_twisted.ensureDeferred
async def test_other_methods_and_paths_at_the_root_are_json_errors(server):
    response, body = await get(server, "/", method="POST", data=b"{}")
    assert response.code == 405
    assert json.loads(body) == {"statusCode": 405, "error": "Method Not Allowed", "message": "Method Not Allowed"}
    response, body = await get(server, "//elsewhere")
    assert response.code == 404
    assert json.loads(body)["statusCode"] == 404
    response, body = await get(server, "/nothing-here")
    assert response.code == 404  # still the API's answer


@pytest_twisted.ensureDeferred
async def test_console_files_are_served_with_their_types_and_strict_security_headers(server):
    expected = {
        "/console": "text/html",
        "/console/": "text/html",
        "/console/console.js": "text/javascript",
        "/console/console.css": "text/css",
        "/console/icon.svg": "image/svg+xml",
    }
    for path, kind in expected.items():
        response, body = await get(server, path)
        assert response.code == 200, path
        assert header(response, "content-type").startswith(kind), path
        assert body, path
        assert_secure(response)
    for path in ("/console/index.html", "/console/nope.js", "/console/static/console.js", "/console/a/b"):
        response, body = await get(server, path)
        assert response.code == 404, path
        assert json.loads(body)["message"] == "Not Found"
        assert_secure(response)
    response, _ = await get(server, "/console", method="POST", data=b"x")
    assert response.code == 405
    assert header(response, "allow") == "GET, HEAD"


@pytest_twisted.ensureDeferred
async def test_the_page_has_no_inline_script_style_or_handler(server):
    _, page = await get(server, "/console")
    text = page.decode()
    assert "<script src=\"/console/console.js\" defer></script>" in text
    assert text.count("<script") == 1
    assert "<style" not in text
    assert not re.search(r"<[^>]*\sstyle\s*=", text)
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", text)  # no onclick= and the like
    assert not re.search(r"javascript:", text, re.IGNORECASE)
    assert "http://" not in text and "https://" not in text  # nothing from elsewhere (no CDN)


def test_the_policy_names_the_host_only_when_it_is_a_plain_host():
    assert b"connect-src 'self' ws://127.0.0.1:3000 wss://127.0.0.1:3000;" in content_security_policy(b"127.0.0.1:3000")
    assert b"ws://[::1]:3000" in content_security_policy(b"[::1]:3000")
    assert b"ws://gw.example" in content_security_policy(b"gw.example")
    for hostile in (b"a; script-src *", b"x y", b"a'b", b"", None, b"h\r\nx"):
        assert b"connect-src 'self';" in content_security_policy(hostile)


# -- in a real browser -------------------------------------------------------------------


def _playwright():
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
    _playwright()
    playwright = await aio(async_playwright().start())
    browser = await aio(playwright.chromium.launch(executable_path=CHROMIUM))
    yield browser
    await aio(browser.close())
    await aio(playwright.stop())


class Recorder:
    """Every URL the browser asked for and every line the server logged, to show that a
    session id appears in neither."""

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


@pytest_twisted.ensureDeferred
async def test_staff_log_in_see_a_live_event_within_a_second_and_broadcast_to_another_client(server, chromium, capsys):
    session_id = await server.session("alice", "admin")
    kiosk = await server.join(LOCKERS, await server.session("kiosk-7", "kiosk", kiosk="kiosk-7"))
    context = await aio(chromium.new_context(viewport={"width": 1280, "height": 900}))
    page = await aio(context.new_page())

    async def scenario():
        await log_in(page, server, session_id)
        await page.wait_for_selector("#link-state.on", timeout=5000)  # /ws/events is open
        assert await page.is_hidden("#login")

        cookies = {c["name"]: c for c in await context.cookies()}
        cookie = cookies["sessionId"]
        assert cookie["value"] == session_id
        assert (cookie["sameSite"], cookie["path"], cookie["secure"]) == ("Strict", "/", False)

        # Connections and rooms as the server counts them (the console itself is one).
        await expect(page.locator("#namespaces tbody")).to_contain_text("/ws/lockers1")
        await expect(page.locator("#rooms tbody")).to_contain_text("system_events1")
        rooms = await page.inner_text("#rooms tbody")
        assert "/ws/lockers\tlocker_updates\t1" in rooms and "/ws/events\tsystem_events\t1" in rooms

        # A live event, timed from just before its emission to its row in the page.
        marker = f"health-{uuid.uuid4().hex[:8]}"
        emitted_ms = time.time() * 1000
        stored = await future(server.service.events.emit(
            "system_status", {"component": "kiosk", "status": "online", "health_score": 97, "message": marker}
        ))
        row = await page.wait_for_selector(f'#events tbody tr:has-text("{marker}")', timeout=1000)
        received_ms = float(await row.get_attribute("data-received"))
        assert received_ms - emitted_ms < 1000
        assert await row.get_attribute("data-seq") == stored["seq"]
        assert await row.get_attribute("data-type") == "system_status"

        # The filters: a type that does not match hides the row, clearing it shows it again.
        await page.fill("#f-type", "locker_state")
        assert await page.locator(f'#events tbody tr:has-text("{marker}")').count() == 0
        await page.fill("#f-type", "")
        assert await page.locator(f'#events tbody tr:has-text("{marker}")').count() == 1

        # A broadcast from the page reaches a kiosk connected with another client.
        await page.select_option("#bc-namespace", LOCKERS)
        await page.fill("#bc-event", "maintenance")
        await page.fill("#bc-data", '{"minutes": 5}')
        await page.click("#broadcast-form button")
        message = json.loads(await asyncio.wait_for(kiosk.connection.recv(), 5))
        assert (message["type"], message["namespace"], message["data"]) == ("maintenance", LOCKERS, {"minutes": 5})
        await page.wait_for_selector("#broadcast-result.ok", timeout=5000)
        assert (await page.inner_text("#broadcast-result")).startswith("Broadcast sent to /ws/lockers (1 connection")

        # Let the latency chart draw a few points, then keep a picture for CI.
        await expect(page.locator("#lat-p99")).to_have_text(re.compile(r"^(?!0\.00$)[0-9]+\.[0-9]{2}$"))
        await asyncio.sleep(2.5)
        SCREENSHOT.parent.mkdir(exist_ok=True)
        await page.screenshot(path=str(SCREENSHOT), full_page=True)

    with Recorder(page) as recorded:
        await aio(scenario())
        await aio(context.close())
    await kiosk.close()
    with capsys.disabled():
        print(f"\nconsole screenshot: {SCREENSHOT}")
    assert recorded.errors == []
    assert any(url.endswith("/ws/events") for url in recorded.urls)
    assert recorded.lines, "the access log was not observed"
    assert not [url for url in recorded.urls if session_id in url]
    assert not [line for line in recorded.lines if session_id in line]


@pytest_twisted.ensureDeferred
async def test_the_event_stream_resumes_after_a_dropped_connection_with_every_event_once(server, chromium):
    session_id = await server.session("alice", "admin")
    context = await aio(chromium.new_context())
    page = await aio(context.new_page())

    def emit(n: int):
        return server.service.events.emit(
            "system_status", {"component": "kiosk", "status": "online", "health_score": 90, "message": f"m{n}"}
        )

    async def scenario():
        await log_in(page, server, session_id)
        await page.wait_for_selector("#link-state.on", timeout=5000)
        before = [await future(emit(n)) for n in range(3)]
        await expect(page.locator("#events tbody tr[data-seq]")).to_have_count(3)
        for connection in list(server.hub.namespaces["/ws/events"].connections.values()):
            connection.abort()  # the network drops it: no close frame
        await page.wait_for_selector("#link-state.warn", timeout=5000)
        missed = [await future(emit(n)) for n in range(3, 13)]  # while the page reconnects
        await page.wait_for_selector("#link-state.on", timeout=10_000)
        rows = page.locator("#events tbody tr[data-seq]")
        await expect(rows).to_have_count(13)
        seqs = [await rows.nth(i).get_attribute("data-seq") for i in range(13)]
        assert sorted(seqs, key=int) == [e["seq"] for e in before + missed]  # each once
        await context.close()

    with Recorder(page) as recorded:
        await aio(scenario())
    sockets = [url for url in recorded.urls if "/ws/events" in url]
    assert len(sockets) == 2 and "since=" in sockets[1] and "epoch=" in sockets[1], sockets
    assert recorded.errors == []


@pytest_twisted.ensureDeferred
async def test_a_wrong_session_id_is_refused_and_not_kept(server, chromium):
    context = await aio(chromium.new_context())
    page = await aio(context.new_page())

    async def scenario():
        await log_in(page, server, "not-a-session-" + uuid.uuid4().hex)
        await expect(page.locator("#login-error")).to_have_text("Authentication failed")
        assert await page.is_hidden("#app")
        assert await page.input_value("#session-id") == ""
        assert [c for c in await context.cookies() if c["name"] == "sessionId"] == []
        await page.fill("#session-id", "has;semicolon=x")
        await page.click("#login-form button")
        await expect(page.locator("#login-error")).to_have_text("That is not a session id.")
        await context.close()

    await aio(scenario())


@pytest_twisted.ensureDeferred
async def test_a_staff_session_sees_why_its_broadcast_was_refused(server, chromium):
    session_id = await server.session("bob", "staff")
    context = await aio(chromium.new_context())
    page = await aio(context.new_page())

    async def scenario():
        await log_in(page, server, session_id)
        await page.wait_for_selector("#link-state.on", timeout=5000)
        await page.fill("#bc-event", "maintenance")
        await page.click("#broadcast-form button")
        await page.wait_for_selector("#broadcast-result.error", timeout=5000)
        assert await page.inner_text("#broadcast-result") == "403 Forbidden: This session may not do that"
        await page.fill("#bc-data", "[1, 2]")
        await page.click("#broadcast-form button")
        await expect(page.locator("#broadcast-result")).to_have_text("Data must be a JSON object.")
        await context.close()

    await aio(scenario())


@pytest_twisted.ensureDeferred
async def test_a_revoked_session_returns_to_the_login_and_a_reload_stays_there(start_server, chromium):
    server = await start_server({"sessions.recheck_interval": 0.1})
    session_id = await server.session("carol", "admin")
    context = await aio(chromium.new_context())
    page = await aio(context.new_page())

    async def scenario():
        await log_in(page, server, session_id)
        await page.wait_for_selector("#link-state.on", timeout=5000)
        await future(server.service.sessions.revoke(session_id))
        await page.wait_for_selector("#login", state="visible", timeout=5000)
        assert await page.inner_text("#login-error") == "Session expired"
        assert [c for c in await context.cookies() if c["name"] == "sessionId"] == []
        await page.reload()
        await page.wait_for_selector("#login", state="visible", timeout=5000)
        assert await page.is_hidden("#app")
        await context.close()

    await aio(scenario())


@pytest_twisted.ensureDeferred
async def test_logging_out_forgets_the_cookie_and_closes_the_event_stream(server, chromium):
    session_id = await server.session("dave", "admin")
    context = await aio(chromium.new_context())
    page = await aio(context.new_page())

    async def scenario():
        await log_in(page, server, session_id)
        await page.wait_for_selector("#link-state.on", timeout=5000)
        assert server.hub.connection_count("/ws/events") == 1
        await page.click("#logout")
        await page.wait_for_selector("#login", state="visible")
        assert [c for c in await context.cookies() if c["name"] == "sessionId"] == []
        for _ in range(50):
            if server.hub.connection_count("/ws/events") == 0:
                break
            await asyncio.sleep(0.05)
        assert server.hub.connection_count("/ws/events") == 0
        await context.close()

    await aio(scenario())


@pytest_twisted.ensureDeferred
async def test_with_redis_each_node_is_listed_with_its_connections(start_server, chromium, redis_url, redis_prefix):
    server = await start_server({"redis.url": redis_url, "redis.prefix": redis_prefix})
    for part in (server.service.sessions, server.service.nodes):
        await part.connection.when_connected()
    session_id = await server.session("erin", "admin")
    context = await aio(chromium.new_context())
    page = await aio(context.new_page())

    async def scenario():
        await log_in(page, server, session_id)
        await page.wait_for_selector("#link-state.on", timeout=5000)
        row = page.locator("#nodes tbody tr", has_text=server.service.node_id)
        await expect(row).to_contain_text("/ws/events 1")
        await context.close()

    await aio(scenario())
