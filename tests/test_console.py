"""The staff console at `/console`: its files and security headers over HTTP, then a real
headless Chromium (Debian's, driven by Playwright) logging in and using it as staff would."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid

import pytest
import pytest_twisted
import treq
from browser import (  # noqa: F401
    WIDE,
    Recorder,
    chromium,
    closing_after,
    emit_status,
    expect,
    future,
    log_in,
    logged_in,
    open_console,
)
from conftest import aio

from eformws.http.console import content_security_policy

LOCKERS = "/ws/lockers"


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


# -- in a real browser: logging in, the event stream, the status cards --------------------


@pytest_twisted.ensureDeferred
async def test_staff_log_in_see_a_live_event_within_a_second_and_broadcast_to_another_client(server, chromium):
    session_id = await server.session("alice", "admin")
    kiosk = await server.join(LOCKERS, await server.session("kiosk-7", "kiosk", kiosk="kiosk-7"))
    context = await aio(chromium.new_context(viewport=WIDE))
    page = await aio(context.new_page())

    async def scenario():
        await logged_in(page, server, session_id)
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
        stored = await future(emit_status(server, marker))
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
        await expect(page.locator("#lat-p99")).to_have_text(re.compile(r"^(?!0\.00$)[0-9]+\.[0-9]{2}$"))

    with Recorder(page) as recorded:
        await closing_after(context, scenario())
    await kiosk.close()
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

    async def scenario():
        await logged_in(page, server, session_id)  # recorded from the first socket on
        before = [await future(emit_status(server, f"m{n}", 90)) for n in range(3)]
        await expect(page.locator("#events tbody tr[data-seq]")).to_have_count(3)
        for connection in list(server.hub.namespaces["/ws/events"].connections.values()):
            connection.abort()  # the network drops it: no close frame
        await page.wait_for_selector("#link-state.warn", timeout=5000)
        missed = [await future(emit_status(server, f"m{n}", 90)) for n in range(3, 13)]  # while the page reconnects
        await page.wait_for_selector("#link-state.on", timeout=10_000)
        rows = page.locator("#events tbody tr[data-seq]")
        await expect(rows).to_have_count(13)
        seqs = [await rows.nth(i).get_attribute("data-seq") for i in range(13)]
        assert sorted(seqs, key=int) == [e["seq"] for e in before + missed]  # each once

    with Recorder(page) as recorded:
        await closing_after(context, scenario())
    sockets = [url for url in recorded.urls if "/ws/events" in url]
    assert len(sockets) == 2 and "since=" in sockets[1] and "epoch=" in sockets[1], sockets
    assert recorded.errors == []


@pytest_twisted.ensureDeferred
async def test_clicking_an_event_row_shows_its_full_json_and_copies_it(server, chromium):
    context, page, session_id = await open_console(server, chromium, "alice", "admin", clipboard=True)

    async def scenario():
        stored = await future(emit_status(server, "x" * 400))  # far wider than its cell
        row = page.locator(f'#events tbody tr.event[data-seq="{stored["seq"]}"]')
        await row.click()
        assert await row.get_attribute("aria-expanded") == "true"
        detail = page.locator("#events tbody tr.detail")
        shown = json.loads(await detail.locator("pre").inner_text())
        assert shown == stored  # the whole envelope, data untruncated
        await detail.locator("button.copy").click()
        await expect(detail.locator("button.copy")).to_have_text("Copied")
        assert json.loads(await page.evaluate("navigator.clipboard.readText()")) == stored
        await row.press("Enter")  # the keyboard closes it as a click does
        await expect(detail).to_have_count(0)
        assert await row.get_attribute("aria-expanded") == "false"

    with Recorder(page) as recorded:
        await closing_after(context, scenario())
    assert recorded.errors == []


class ScriptedStatus:
    """Answers the page's status polls: each poll the first answer of `answers` (a p99 in
    ms, or None for a failed request), the last one repeating. `polled(n)` fires once n
    more polls were answered."""

    def __init__(self, real: dict):
        self.real = real
        self.answers: list[float | None] = [1.0]
        self.polls = 0
        self.waiting: list[tuple[int, asyncio.Future]] = []

    async def handle(self, route):
        value = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if value is None:
            await route.abort("connectionrefused")
        else:
            body = dict(self.real, latency_metrics={"median": value / 4, "p95": value / 2, "p99": value})
            await route.fulfill(status=200, content_type="application/json", body=json.dumps(body))
        self.polls += 1
        for target, waiter in list(self.waiting):
            if self.polls >= target and not waiter.done():
                waiter.set_result(None)

    def polled(self, n: int) -> asyncio.Future:
        waiter = asyncio.get_event_loop().create_future()
        self.waiting.append((self.polls + n, waiter))
        return waiter


async def scripted_status(server, page) -> ScriptedStatus:
    response = await future(treq.get(server.http("/api/websocket/status"), persistent=False))
    script = ScriptedStatus(await future(response.json()))
    await page.route("**/api/websocket/status", script.handle)
    return script


@pytest.mark.slow  # ~8 s: seven status polls in the browser
@pytest_twisted.ensureDeferred
async def test_the_latency_scale_stays_put_while_values_move_within_its_decades(server, chromium):
    context, page, _ = await open_console(server, chromium)
    chart = page.locator("#latency-chart")

    async def showing(p99: float) -> str:
        await expect(page.locator("#lat-p99")).to_have_text(f"{p99:.2f}")
        return await chart.get_attribute("data-top")

    async def scenario():
        script = await scripted_status(server, page)
        tops = []
        for p99 in (2.0, 9.0, 3.0, 8.0, 5.0):
            script.answers = [p99]
            tops.append(await showing(p99))
        assert tops == ["10"] * 5  # a linear 1-2-5 axis would have jumped between 5 and 10
        script.answers = [40.0]
        assert await showing(40.0) == "100"
        script.answers = [3.0]
        assert await showing(3.0) == "100"  # the spike is still in the window: no jump back
        assert await chart.get_attribute("data-bottom") == "0.1"  # the p50s (a quarter of the p99s) reach below 1 ms

    await closing_after(context, scenario())


@pytest.mark.slow  # ~6 s: status polls through an outage in the browser
@pytest_twisted.ensureDeferred
async def test_while_the_status_cannot_be_fetched_the_numbers_are_greyed_and_the_chart_has_a_gap(server, chromium):
    context, page, session_id = await open_console(server, chromium, "alice", "admin")
    app = page.locator("#app")
    cell = page.locator("#namespaces tbody td").first

    async def scenario():
        script = await scripted_status(server, page)
        script.answers = [5.0]
        await expect(page.locator("#lat-p99")).to_have_text("5.00")
        live_colour = await cell.evaluate("td => getComputedStyle(td).color")
        script.answers = [None]
        await expect(app).to_have_class(re.compile(r"\bstale\b"))
        await expect(page.locator("#updated")).to_contain_text("status unavailable since")
        assert await cell.evaluate("td => getComputedStyle(td).color") != live_colour
        await expect(page.locator(".live-numbers .stale-note").first).to_be_visible()
        await script.polled(2)
        script.answers = [6.0]
        await expect(page.locator("#lat-p99")).to_have_text("6.00")
        await expect(app).not_to_have_class(re.compile(r"\bstale\b"))
        assert await cell.evaluate("td => getComputedStyle(td).color") == live_colour
        path = await page.locator("#latency-chart path.p99").get_attribute("d")
        assert path.count("M") == 2, path  # before the outage, after it: no line across it

    await closing_after(context, scenario())


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

    await closing_after(context, scenario())


@pytest_twisted.ensureDeferred
async def test_a_revoked_session_returns_to_the_login_saying_so_and_a_reload_stays_there(start_server, chromium):
    server = await start_server({"sessions.recheck_interval": 0.1})
    context, page, session_id = await open_console(server, chromium, "carol", "admin")

    async def scenario():
        await future(server.service.sessions.revoke(session_id))
        await page.wait_for_selector("#login", state="visible", timeout=5000)
        assert await page.inner_text("#login-error") == "Session revoked"
        assert [c for c in await context.cookies() if c["name"] == "sessionId"] == []
        await page.reload()
        await page.wait_for_selector("#login", state="visible", timeout=5000)
        assert await page.is_hidden("#app")

    await closing_after(context, scenario())


@pytest_twisted.ensureDeferred
async def test_logging_out_forgets_the_cookie_and_closes_the_event_stream(server, chromium):
    context, page, session_id = await open_console(server, chromium, "dave", "admin")

    async def scenario():
        assert server.hub.connection_count("/ws/events") == 1
        connection = next(iter(server.hub.namespaces["/ws/events"].connections.values()))
        closed = connection.closed
        await page.click("#logout")
        await page.wait_for_selector("#login", state="visible")
        assert [c for c in await context.cookies() if c["name"] == "sessionId"] == []
        await future(closed)
        assert server.hub.connection_count("/ws/events") == 0

    await closing_after(context, scenario())


@pytest_twisted.ensureDeferred
async def test_with_redis_each_node_is_listed_with_its_connections(start_server, chromium, redis_url, redis_prefix):
    server = await start_server({"redis.url": redis_url, "redis.prefix": redis_prefix})
    for part in (server.service.sessions, server.service.nodes):
        await part.connection.when_connected()
    context, page, session_id = await open_console(server, chromium, "erin", "admin")

    async def scenario():
        row = page.locator("#nodes tbody tr", has_text=server.service.node_id)
        await expect(row).to_contain_text("/ws/events 1")

    await closing_after(context, scenario())
