"""The console as each role sees it, in a real headless Chromium: staff are not offered what
they cannot do, admins manage sessions and emit structured events with the server's
validation shown inline; the layout at 1440 px and at 390 px, with screenshots saved."""

from __future__ import annotations

import json
import time

import pytest
import pytest_twisted
import treq
from browser import PHONE, WIDE, closing_after, Recorder, chromium, emit_status, expect, future, open_console, screenshot  # noqa: F401
from conftest import aio

ADMIN_CARDS = ("#broadcast-card", "#emit-card", "#sessions-card")


def health(server, session_id: str):
    """GET /api/websocket/health with `session_id` as a bearer token: its status code."""
    d = treq.get(server.http("/api/websocket/health"), headers={"Authorization": f"Bearer {session_id}"},
                 persistent=False)
    return d.addCallback(lambda response: response.code)


@pytest.mark.parametrize("user, role, offered", [("bob", "staff", False), ("alice", "admin", True)],
                         ids=["staff_are_not_offered", "admins_are_offered"])
@pytest_twisted.ensureDeferred
async def test_broadcast_emit_and_session_management_are_offered_to_the_roles_that_may_use_them(
        server, chromium, user, role, offered):
    context, page, session_id = await open_console(server, chromium, user, role)

    async def scenario():
        await expect(page.locator("#who")).to_have_text(f"{user} · {role}")
        await expect(page.locator("#stream")).to_be_visible()
        for card in ADMIN_CARDS:
            assert await page.is_visible(card) is offered, card

    await closing_after(context, scenario())


@pytest_twisted.ensureDeferred
async def test_an_admin_creates_a_kiosk_session_whose_id_is_shown_once_and_works(server, chromium):
    context, page, session_id = await open_console(server, chromium, "alice", "admin", clipboard=True)

    async def scenario():
        await page.fill("#ss-user", "kiosk-9-screen")
        await page.select_option("#ss-role", "kiosk")
        await page.click("#session-form button[type=submit]")
        # The server's rule, shown at the field it concerns.
        await expect(page.locator("#ss-kiosk-error")).to_contain_text("kiosk")
        assert await page.get_attribute("#ss-kiosk", "aria-invalid") == "true"
        assert await page.is_hidden("#new-session")

        await page.fill("#ss-kiosk", "kiosk-9")
        await page.click("#session-form button[type=submit]")
        await expect(page.locator("#new-session")).to_be_visible()
        created = await page.inner_text("#new-session-id")
        assert created and await page.is_hidden("#ss-kiosk-error")
        assert await future(health(server, created)) == 200
        await page.click("#new-session-copy")
        assert await page.evaluate("navigator.clipboard.readText()") == created

        # Listed by reference, never by id; gone from the page once dismissed.
        item = page.locator("#sessions li", has_text="kiosk-9-screen")
        await expect(item).to_contain_text("kiosk · kiosk-9")
        await expect(item).to_contain_text("live")
        assert created not in await page.inner_text("#sessions")
        await page.click("#new-session-done")
        assert created not in await page.content()

    with Recorder(page) as recorded:
        await closing_after(context, scenario())
    assert recorded.errors == []


@pytest_twisted.ensureDeferred
async def test_an_admin_revokes_a_session_with_a_confirming_second_click(server, chromium):
    victim = await server.session("mallory", "staff")
    context, page, session_id = await open_console(server, chromium, "alice", "admin")

    async def scenario():
        item = page.locator("#sessions li", has_text="mallory")
        button = item.locator("button.revoke")
        await button.click()
        await expect(button).to_have_text("Confirm revoke")
        assert await future(health(server, victim)) == 200  # one click does nothing yet
        await button.click()
        await expect(page.locator("#session-result.ok")).to_contain_text("Revoked mallory's session")
        assert await future(health(server, victim)) == 401
        await expect(item).to_have_count(0)  # only live sessions are listed by default
        await page.check("#ss-ended")
        await expect(item).to_contain_text("revoked")
        assert await future(health(server, session_id)) == 200  # the admin's own is untouched

    await closing_after(context, scenario())


@pytest_twisted.ensureDeferred
async def test_an_admin_emits_a_structured_event_from_its_types_template(server, chromium):
    context, page, session_id = await open_console(server, chromium, "alice", "admin")

    async def scenario():
        types = await page.locator("#em-type option").all_inner_texts()
        assert types == ["locker_state_changed", "help_requested", "help_status_updated", "command_applied",
                         "system_status"]
        for name in types:  # each template is one the server accepts
            await page.select_option("#em-type", name)
            await page.click("#emit-form button[type=submit]")
            await expect(page.locator("#emit-result.ok")).to_contain_text("Stored as seq")
            seq = (await page.inner_text("#emit-result")).split()[3]
            row = page.locator(f'#events tbody tr.event[data-seq="{seq}"]')
            await expect(row).to_have_attribute("data-type", name)

    await closing_after(context, scenario())


@pytest_twisted.ensureDeferred
async def test_an_event_the_server_refuses_is_explained_at_the_data_field(server, chromium):
    context, page, session_id = await open_console(server, chromium, "alice", "admin")
    error = page.locator("#em-data-error")

    async def scenario():
        await page.select_option("#em-type", "system_status")
        data = json.loads(await page.input_value("#em-data"))
        data["status"] = "sleepy"
        await page.fill("#em-data", json.dumps(data, indent=2))
        await page.click("#emit-form button[type=submit]")
        await expect(error).to_contain_text("status must be one of")
        assert await page.get_attribute("#em-data", "aria-invalid") == "true"
        selected = await page.evaluate("(t => t.value.slice(t.selectionStart, t.selectionEnd))(document.getElementById('em-data'))")
        assert selected == '"status"'  # the refused field is where the cursor is

        await page.fill("#em-data", "{not json")
        await page.click("#emit-form button[type=submit]")
        await expect(error).to_contain_text("Not valid JSON")

        await page.click("#em-template")
        assert await page.get_attribute("#em-data", "aria-invalid") is None
        await expect(error).to_be_empty()
        assert await page.is_hidden("#emit-result.ok")

    await closing_after(context, scenario())


async def admin_page_with_events(server, chromium, viewport):
    """An admin's console at `viewport` with a few events (one far wider than any cell)."""
    context, page, _ = await open_console(server, chromium, viewport=viewport)
    for n in range(6):
        await emit_status(server, f"kiosk {n} reporting " + "very-long-value-" * (30 if n == 3 else 1))
    await aio(expect(page.locator("#events tbody tr.event")).to_have_count(6))
    await aio(expect(page.locator("#lat-p99")).not_to_have_text("–"))
    return context, page


@pytest_twisted.ensureDeferred
async def test_at_1440_px_the_event_stream_comes_first_and_fills_the_window(server, chromium):
    context, page = await admin_page_with_events(server, chromium, WIDE)

    async def scenario():
        stream = await page.locator("#stream").bounding_box()
        side = await page.locator(".side").bounding_box()
        assert stream["x"] < side["x"] and stream["y"] < 80  # left, at the top
        assert stream["height"] >= 0.85 * (WIDE["height"] - 48 - 32)  # as tall as the window allows
        assert stream["width"] > side["width"]
        await page.locator("#events tbody tr.event").first.click()
        path = await screenshot(page, "console-1440.png")
        assert path.stat().st_size > 10_000

    await closing_after(context, scenario())


async def sideways(page) -> list:
    """What sticks out past the right edge of the window: the page's scroll width if it
    is wider than the window, and up to five visible elements that reach past it."""
    widths = await page.evaluate("[document.documentElement.scrollWidth, document.body.scrollWidth]")
    wider = await page.evaluate(
        "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > innerWidth + 0.5"
        " && e.offsetParent !== null).map(e => e.id || e.className || e.tagName).slice(0, 5)"
    )
    return ([max(widths)] if max(widths) > await page.evaluate("innerWidth") else []) + wider


@pytest_twisted.ensureDeferred
async def test_at_390_px_nothing_scrolls_sideways(server, chromium):
    context, page = await admin_page_with_events(server, chromium, PHONE)

    async def scenario():
        await page.locator("#events tbody tr.event", has_text="very-long-value-very").click()
        await page.select_option("#ss-role", "kiosk")
        await page.click("#session-form button[type=submit]")
        await expect(page.locator("#ss-user-error")).not_to_be_empty()
        assert await sideways(page) == []
        stream = await page.locator("#stream").bounding_box()
        connections = await page.locator("#connections-title").bounding_box()
        assert stream["y"] < connections["y"]  # the stream first on a phone too
        await screenshot(page, "console-390.png")

    await closing_after(context, scenario())


@pytest_twisted.ensureDeferred
async def test_ids_as_long_as_a_session_may_have_wrap_instead_of_widening_the_page(server, chromium):
    longest = "u" * 128
    await server.session("k" * 128, "kiosk", kiosk="kiosk-" + "9" * 122)
    context, page, session_id = await open_console(server, chromium, longest, "admin", PHONE)

    async def scenario():
        await expect(page.locator("#who")).to_contain_text(longest)
        await expect(page.locator("#sessions li")).to_have_count(2)
        assert await sideways(page) == []
        await page.set_viewport_size(WIDE)
        assert await sideways(page) == []

    await closing_after(context, scenario())


@pytest_twisted.ensureDeferred
async def test_a_revoke_waiting_for_its_second_click_stays_on_its_session_when_the_list_changes(server, chromium):
    gone = await server.session("first", "staff")
    target = await server.session("target", "staff")
    await server.session("innocent", "staff")
    await server.service.sessions.revoke(gone)
    context, page, session_id = await open_console(server, chromium, "alice", "admin")

    async def scenario():
        target_button = page.locator("#sessions li", has_text="target").locator("button.revoke")
        await target_button.click()
        await expect(target_button).to_have_text("Confirm revoke")
        await page.check("#ss-ended")  # the list is drawn again, a revoked row above the target
        await expect(page.locator("#sessions li")).to_have_count(4)
        await expect(target_button).to_have_text("Confirm revoke")
        assert await page.locator("#sessions li", has_text="innocent").locator("button.revoke").inner_text() == "Revoke"
        await target_button.click()
        await expect(page.locator("#session-result.ok")).to_contain_text("Revoked target's session")
        assert (await future(health(server, target)), await future(health(server, session_id))) == (401, 200)
        states = {s.user_id: s.state(time.time()) for s in await future(server.service.sessions.list())}
        assert states["innocent"] == "live"

    await closing_after(context, scenario())


@pytest_twisted.ensureDeferred
async def test_after_log_out_the_next_person_sees_nothing_of_the_last_session(server, chromium):
    staff = await server.session("bob", "staff")
    context, page, session_id = await open_console(server, chromium, "alice", "admin")

    async def scenario():
        await page.fill("#ss-user", "new-screen")
        await page.click("#session-form button[type=submit]")
        await expect(page.locator("#new-session")).to_be_visible()
        created = await page.inner_text("#new-session-id")
        await future(emit_status(server, "seen by alice"))
        await expect(page.locator("#events tbody tr.event")).to_have_count(1)
        await page.click("#logout")  # the new id was never dismissed with Done
        await expect(page.locator("#events tbody tr.event")).to_have_count(0)  # what alice's role was shown
        await page.fill("#session-id", staff)
        await page.click("#login-form button")
        await page.wait_for_selector("#link-state.on", timeout=5000)
        await expect(page.locator("#who")).to_have_text("bob · staff")
        content = await page.content()
        assert created not in content and "new-screen" not in content
        assert await page.is_hidden("#new-session")

    await closing_after(context, scenario())
