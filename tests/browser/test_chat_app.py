"""The chat app in a real browser: two users chat, notifications, a restart, XSS, paging.

Each test runs a real server (loopback) and Debian's Chromium through
Playwright; each user is a browser context of their own. Nothing sleeps: every
wait is an expectation that polls (Playwright's ``expect``, ``wait_for``).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from centrifuge import Client

from tests.browser.conftest import PASSWORD, LiveServer, Pages, screenshot
from tests.conftest import test_settings, wait_for
from tests.integration.test_rooms import subscribe
from tidings import Tidings
from tidings.hub.events import ConnectEvent

if TYPE_CHECKING:
    from playwright.async_api import Page


def expect(target: Any) -> Any:
    from playwright.async_api import expect as playwright_expect

    return playwright_expect(target)


def visible(text: str) -> str:
    """What the app shows for ``text``: control characters as visible symbols (dom.js)."""
    out = []
    for char in text:
        code = ord(char)
        if code in (0x09, 0x0A):
            out.append(char)
        elif code < 0x20:
            out.append(chr(0x2400 + code))
        elif code == 0x7F:
            out.append("\u2421")
        elif 0x80 <= code <= 0x9F:
            out.append("\ufffd")
        else:
            out.append(char)
    return "".join(out)


# --- what a user does -------------------------------------------------------


async def sign_up(page: Page, server: LiveServer, name: str) -> None:
    await page.goto(server.url)
    await page.locator("#auth-switch").click()
    await expect(page.locator("#auth-title")).to_have_text("Create an account")
    await page.locator("#auth-form input[name=username]").fill(name)
    await page.locator("#auth-form input[name=password]").fill(PASSWORD)
    await page.locator("#auth-submit").click()
    await expect(page.locator("#status")).to_have_attribute("data-state", "connected")


async def sign_in(page: Page, server: LiveServer, name: str, path: str = "/") -> None:
    await page.goto(server.url + path)
    await page.locator("#auth-form input[name=username]").fill(name)
    await page.locator("#auth-form input[name=password]").fill(PASSWORD)
    await page.locator("#auth-form button[type=submit]").click()


async def create_room(page: Page, name: str) -> None:
    await page.locator("#new-room input[name=name]").fill(name)
    await page.locator("#new-room button[type=submit]").click()
    await expect(page.locator("#room-name")).to_have_text(name)


async def join_room(page: Page, name: str) -> None:
    other = page.locator("#other-rooms li").filter(has_text=name)
    await other.locator("button[data-join]").click()
    await expect(page.locator("#room-name")).to_have_text(name)


async def open_room(page: Page, name: str) -> None:
    await page.locator("#room-list .room-link").filter(has_text=name).click()
    await expect(page.locator("#room-name")).to_have_text(name)


async def send(page: Page, text: str) -> None:
    await page.locator("#compose").fill(text)
    await page.locator("#compose").press("Enter")
    await expect(page.locator("#compose")).to_have_value("")


def texts(page: Page) -> Any:
    return page.locator("#messages .message .text")


async def subscribed(server: LiveServer, channel: str, count: int = 1) -> None:
    """Wait until ``count`` connections are subscribed to ``channel`` on the server."""
    assert server.tidings is not None
    hub = server.tidings.hub
    await wait_for(lambda: hub.channel_counts().get(channel, 0) >= count, timeout=10)


# --- the scenarios ----------------------------------------------------------


async def test_two_users_chat_and_see_each_other(live_server: LiveServer, pages: Pages) -> None:
    alice = await pages.new()
    bob = await pages.new(mobile=True)  # bob is on a phone

    await alice.goto(live_server.url)
    await expect(alice.locator("#auth-form")).to_be_visible()
    await screenshot(alice, "sign-in")
    await sign_up(alice, live_server, "alice")
    await create_room(alice, "Lobby")

    await sign_up(bob, live_server, "bob")
    # At mobile width the rooms are in a drawer, opened with the menu button.
    await expect(bob.locator("#sidebar")).to_be_hidden()
    await bob.locator("#menu-toggle").click()
    await join_room(bob, "Lobby")
    await expect(bob.locator("#sidebar")).to_be_hidden()
    await expect(bob.locator("#composer")).to_be_in_viewport()

    # Presence: each sees both, live (join events) and from the presence call.
    await expect(alice.locator("#online li")).to_have_text(["alice (you)", "bob"])
    await expect(bob.locator("#online li")).to_have_text(["alice", "bob (you)"])
    await expect(bob.locator("#online-count")).to_have_text("2")

    # Typing shows at the other end, and stops with the message.
    await alice.locator("#compose").press_sequentially("hi bo")
    await expect(bob.locator("#typing")).to_have_text("alice is typing…")
    await alice.locator("#compose").press_sequentially("b")
    await alice.locator("#compose").press("Enter")
    await expect(texts(bob)).to_have_text(["hi bob"])
    await expect(bob.locator("#typing")).to_have_text("")

    # Keyboard first: Shift+Enter is a new line, Enter sends.
    compose = bob.locator("#compose")
    await compose.press_sequentially("line one")
    await compose.press("Shift+Enter")
    await compose.press_sequentially("line two")
    await compose.press("Enter")
    await expect(compose).to_have_value("")
    await expect(texts(alice)).to_have_count(2)
    assert await texts(alice).nth(1).text_content() == "line one\nline two"
    await expect(alice.locator("#messages .message .author")).to_have_text(["alice", "bob"])
    await screenshot(alice, "chat")
    await screenshot(bob, "chat-mobile")
    await bob.locator("#people-toggle").click()
    await expect(bob.locator("#people")).to_be_visible()
    await screenshot(bob, "online-mobile")
    await bob.locator("#people .drawer-close").click()
    await expect(bob.locator("#people")).to_be_hidden()

    # Unread counts: bob joins a second room, goes back to the first, and alice
    # writes in the second.
    await create_room(alice, "Side")
    await bob.locator("#menu-toggle").click()
    await bob.locator("#refresh-rooms").click()
    await join_room(bob, "Side")
    await bob.locator("#menu-toggle").click()
    await open_room(bob, "Lobby")
    await subscribed(live_server, await room_channel(alice, "Side"), 2)
    await send(alice, "news in Side")
    side = bob.locator("#room-list .room-link").filter(has_text="Side")
    await expect(side.locator(".unread")).to_have_text("1")
    await expect(bob).to_have_title("(1) Tidings")
    await bob.locator("#menu-toggle").click()
    await open_room(bob, "Side")
    await expect(texts(bob)).to_have_text(["news in Side"])
    await expect(side.locator(".unread")).to_have_count(0)
    await expect(bob).to_have_title("Tidings")

    # Leaving: the room moves to "other rooms", and bob is no longer online in it.
    await expect(alice.locator("#online li")).to_have_text(["alice (you)", "bob"])
    await bob.locator("#leave-room").click()
    await expect(bob.locator("#room-name")).to_be_hidden()
    await expect(bob.locator("#other-rooms li").filter(has_text="Side")).to_have_count(1)
    await expect(alice.locator("#online li")).to_have_text(["alice (you)"])


async def room_channel(page: Page, name: str) -> str:
    link = page.locator("#room-list .room-link").filter(has_text=name)
    room_id = await link.get_attribute("data-room")
    assert room_id
    return f"room:{room_id}"


async def test_a_notification_is_a_toast_for_its_user_only(
    live_server: LiveServer, pages: Pages
) -> None:
    alice, bob = await pages.new(), await pages.new()
    await sign_up(alice, live_server, "alice")
    await sign_up(bob, live_server, "bob")
    await subscribed(live_server, "notifications#alice")
    await subscribed(live_server, "notifications#bob")

    # The server API's send_notification, with markup that must stay text.
    await live_server.server_api(
        "send_notification",
        {"user": "bob", "data": {"title": "Build <b>finished</b>", "text": "Deploy #42 is live"}},
    )
    toast = bob.locator(".toast.notification")
    await expect(toast).to_have_count(1)
    await expect(toast.locator("strong")).to_have_text("Build <b>finished</b>")
    await expect(toast.locator("p")).to_have_text("Deploy #42 is live")
    await expect(bob.locator("#notif-count")).to_have_text("1")

    # And the Python API's send_notification, for alice.
    assert live_server.tidings is not None
    await live_server.tidings.send_notification("alice", "just for alice")
    await expect(alice.locator(".toast.notification p")).to_have_text(["just for alice"])
    # Each connection gets its pushes in order: had bob's notification gone to alice
    # too, it would be on her page by now, before hers.
    await expect(alice.locator("#notification-list li")).to_have_count(1)
    await expect(bob.locator("#notification-list li")).to_have_count(1)
    await expect(bob.locator(".toast b")).to_have_count(0)

    await bob.locator("#notif-toggle").click()
    await expect(bob.locator("#notifications")).to_be_visible()
    await expect(bob.locator("#notification-list li p")).to_have_text(["Deploy #42 is live"])
    await expect(bob.locator("#notif-count")).to_be_hidden()
    await screenshot(bob, "notifications")


async def test_a_restart_mid_session_reconnects_and_shows_what_was_missed(
    live_server: LiveServer, pages: Pages
) -> None:
    alice, bob = await pages.new(), await pages.new()
    await sign_up(alice, live_server, "alice")
    await create_room(alice, "Lobby")
    await sign_up(bob, live_server, "bob")
    await join_room(bob, "Lobby")
    channel = await room_channel(bob, "Lobby")
    await subscribed(live_server, channel, 2)
    await send(alice, "before the restart")
    await expect(texts(bob)).to_have_text(["before the restart"])

    await live_server.stop()
    for page in (alice, bob):
        await expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
        await expect(page.locator("#status")).to_have_text("Reconnecting…")
    # Sending while the server is away fails visibly, and can be retried.
    await send(alice, "written while away")
    failed = alice.locator("#pending .message.failed")
    await expect(failed).to_have_count(1)
    await expect(failed.locator(".note")).to_have_text("Not sent: the server cannot be reached")
    await screenshot(alice, "reconnecting")

    # The same port and data directory (the SQLite history survives); alice's
    # connection is held back until bob has written, so she must catch up.
    released = asyncio.Event()
    tidings = Tidings(live_server.settings)

    @tidings.on_connect
    async def hold_alice(event: ConnectEvent) -> None:
        if event.user == "alice":
            await released.wait()

    await live_server.start(tidings)
    await expect(bob.locator("#status")).to_have_attribute("data-state", "connected")
    await send(bob, "while you were away 1")
    await send(bob, "while you were away 2")
    await expect(texts(bob)).to_have_count(3)
    await expect(alice.locator("#status")).to_have_attribute("data-state", "reconnecting")
    await expect(texts(alice)).to_have_text(["before the restart"])

    released.set()
    await expect(alice.locator("#status")).to_have_attribute("data-state", "connected")
    # Missed messages, once each, in order, after what she had.
    expected = ["before the restart", "while you were away 1", "while you were away 2"]
    await expect(texts(alice)).to_have_text(expected)

    await failed.get_by_role("button", name="Retry").click()
    await expect(alice.locator("#pending li")).to_have_count(0)
    await expect(texts(alice)).to_have_text([*expected, "written while away"])
    await expect(texts(bob)).to_have_text([*expected, "written while away"])
    await expect(bob.locator("#online li")).to_have_text(["alice", "bob (you)"])


XSS_PAYLOADS = [
    '<img src=x onerror="window.__xss = 1; alert(1)">',
    "<script>window.__xss = 2; alert(2)</script>",
    '<svg onload="window.__xss = 3"><circle r="5"/></svg>',
    '"><iframe src="javascript:alert(4)"></iframe>',
    "<b>bold?</b> &amp; &lt;not an entity&gt;",
    "controls: bell\x07 escape\x1b[31m backspace\x08 del\x7f c1\x85 override\u202edone",
]
INJECTED = "#messages img, #messages script, #messages svg, #messages iframe, #messages b"


async def test_xss_payloads_are_shown_as_text_and_never_run(
    live_server: LiveServer, pages: Pages
) -> None:
    alice, bob = await pages.new(), await pages.new()
    for page in (alice, bob):
        await page.add_init_script("window.__xss = undefined")
    room_name = '<img src=x onerror="window.__xss = 5">'
    await sign_up(alice, live_server, "alice")
    await create_room(alice, room_name)
    await sign_up(bob, live_server, "bob")
    await join_room(bob, room_name)
    await subscribed(live_server, await room_channel(bob, room_name), 2)

    # Typed into the app by alice...
    for payload in XSS_PAYLOADS[:3]:
        await send(alice, payload)
    # ...and posted over HTTP by bob, control characters included.
    http = await live_server.http_as("bob")
    token = str(http.headers["Authorization"]).removeprefix("Bearer ")
    try:
        room_id = (await room_channel(bob, room_name)).removeprefix("room:")
        for payload in XSS_PAYLOADS[3:]:
            response = await http.post(f"/rooms/{room_id}/messages", json={"text": payload})
            assert response.status_code == 201, response.text
        stored = (await http.get(f"/rooms/{room_id}/messages")).json()["messages"]
        assert [m["text"] for m in stored] == XSS_PAYLOADS  # kept exactly as sent
    finally:
        await http.aclose()
    await live_server.server_api(
        "send_notification", {"user": "alice", "data": {"text": XSS_PAYLOADS[0]}}
    )

    shown = [visible(p) for p in XSS_PAYLOADS]
    for page in (alice, bob):
        await expect(texts(page)).to_have_count(len(XSS_PAYLOADS))
        assert await texts(page).all_text_contents() == shown
        await expect(page.locator("#room-name")).to_have_text(room_name)
    await expect(alice.locator(".toast.notification p")).to_have_text([XSS_PAYLOADS[0]])
    await screenshot(bob, "escaped")

    # A member who publishes over the protocol cannot forge a stored message (the
    # app trusts only what the server published) nor type in someone else's name.
    channel = await room_channel(bob, room_name)
    forger = Client(live_server.url.replace("http", "ws") + "/connection/websocket", token=token)
    await forger.connect()
    try:
        assert (await subscribe(forger, channel)).subscribed
        await forger.publish(
            channel, {"type": "message", "id": 10**12, "user": "alice", "text": "forged"}
        )
        await forger.publish(channel, {"type": "typing", "user": "carol"})
        await expect(alice.locator("#typing")).to_have_text("bob is typing…")
        await send(bob, "the real one")
        await expect(texts(alice).last).to_have_text("the real one")
        await expect(texts(alice)).to_have_count(len(XSS_PAYLOADS) + 1)
    finally:
        await forger.disconnect()
    shown.append("the real one")

    # The history path renders the same way.
    await bob.reload()
    await expect(texts(bob)).to_have_count(len(shown))
    assert await texts(bob).all_text_contents() == shown

    for page in (alice, bob):
        assert await page.locator(INJECTED).count() == 0
        assert await page.locator(".toast img, #room-list img, #room-name img").count() == 0
        assert await page.evaluate("() => window.__xss") is None
    assert pages.dialogs == []


async def test_load_earlier_pages_back_to_the_start_without_duplicates(
    live_server: LiveServer, pages: Pages
) -> None:
    await live_server.add_user("alice")
    await live_server.add_user("bob")
    alice_http = await live_server.http_as("alice")
    bob_http = await live_server.http_as("bob")
    try:
        room = (await alice_http.post("/rooms", json={"name": "History"})).json()
        assert (await bob_http.post(f"/rooms/{room['id']}/join")).status_code == 200
        for i in range(100):
            http = alice_http if i % 3 else bob_http
            response = await http.post(f"/rooms/{room['id']}/messages", json={"text": f"m{i:03}"})
            assert response.status_code == 201

        bob = await pages.new()
        await sign_in(bob, live_server, "bob")
        await expect(bob.locator("#room-name")).to_have_text("History")
        await expect(texts(bob)).to_have_count(50)
        await expect(texts(bob).first).to_have_text("m050")
        await expect(bob.locator("#load-earlier")).to_be_visible()
        await expect(bob.locator("#history-start")).to_be_hidden()

        # A live message while paging lands at the end, once.
        await subscribed(live_server, room["channel"])
        live = await alice_http.post(f"/rooms/{room['id']}/messages", json={"text": "live one"})
        assert live.status_code == 201
        await expect(texts(bob)).to_have_count(51)
        await expect(texts(bob).last).to_have_text("live one")

        await bob.locator("#load-earlier").click()
        await expect(texts(bob)).to_have_count(81)
        await expect(texts(bob).first).to_have_text("m020")
        await bob.locator("#load-earlier").click()
        await expect(texts(bob)).to_have_count(101)
        await expect(bob.locator("#history-start")).to_be_visible()
        await expect(bob.locator("#load-earlier")).to_be_hidden()
        assert await texts(bob).all_text_contents() == [
            *(f"m{i:03}" for i in range(100)),
            "live one",
        ]
        ids = await bob.locator("#messages .message").evaluate_all(
            "items => items.map(item => Number(item.dataset.id))"
        )
        assert ids == sorted(set(ids))
        await bob.locator("#timeline").evaluate("el => { el.scrollTop = 0; }")
        await screenshot(bob, "history")
    finally:
        await alice_http.aclose()
        await bob_http.aclose()


async def test_the_operator_page_shows_the_node_and_sends_notifications(
    live_server: LiveServer, pages: Pages
) -> None:
    await live_server.add_user("root", is_admin=True)
    await live_server.add_user("bob")
    bob = await pages.new()
    await sign_in(bob, live_server, "bob")
    await expect(bob.locator("#status")).to_have_attribute("data-state", "connected")
    await subscribed(live_server, "notifications#bob")

    admin = await pages.new()
    await sign_in(admin, live_server, "root", "/admin")
    await expect(admin.locator("#num-clients")).to_have_text("1")
    channels = admin.locator("#channels tr")
    await expect(channels).to_have_text([re.compile(r"notifications#bob\s*1")])
    await expect(admin.locator("#clients tr td").first).to_have_text("bob")
    await expect(admin.locator("#rate-in")).to_have_text(re.compile(r"^\d"))

    form = admin.locator("#notify-form")
    await form.locator("input[name=user]").fill("bob")
    await form.locator("input[name=title]").fill("Operator")
    await form.locator("textarea[name=text]").fill("Maintenance at noon")
    await form.get_by_role("button", name="Send notification").click()
    await expect(form.locator(".result")).to_have_text("Sent to notifications#bob.")
    await expect(bob.locator(".toast.notification p")).to_have_text(["Maintenance at noon"])
    await expect(form.locator("textarea[name=text]")).to_have_value("")
    await form.locator("input[name=user]").fill("nobody")
    await form.locator("textarea[name=text]").fill("Anyone there?")
    await form.get_by_role("button", name="Send notification").click()
    await expect(form.locator(".result")).to_have_text("Not sent: user not found")
    await screenshot(admin, "operator")

    # Someone who is not an admin sees no numbers.
    not_admin = await bob.context.new_page()
    await not_admin.goto(live_server.url + "/admin")
    await expect(not_admin.locator("#denied")).to_have_text("bob is not an operator (admins only).")
    await expect(not_admin.locator("#dashboard")).to_be_hidden()


async def test_short_lived_tokens_are_refreshed_and_the_session_goes_on(
    tmp_path: Path, pages: Pages
) -> None:
    # Access tokens live 2 s: the SDK's getToken and the HTTP calls keep refreshing
    # them with the refresh grant. Refresh tokens rotate and are spent once each, so
    # two refreshes racing with one token would end the login (reuse detection).
    server = LiveServer(test_settings(tmp_path, allow_registration=True, access_token_ttl=2))
    await server.start()
    try:
        alice = await pages.new()
        await sign_up(alice, server, "alice")
        read = "() => JSON.parse(localStorage.getItem('tidings.session')).refresh"
        changed = f"old => ({read})() !== old"
        for _ in range(2):
            old = await alice.evaluate(read)
            await alice.wait_for_function(changed, arg=old)
        await create_room(alice, "Lobby")
        await send(alice, "still signed in")
        await expect(texts(alice)).to_have_text(["still signed in"])
        await expect(alice.locator("#status")).to_have_attribute("data-state", "connected")
        assert server.tidings is not None
        closes = server.tidings.hub.metrics.disconnects
        assert not {3005, 3500, 3503} & {code for code, n in closes.items() if n}
    finally:
        await server.stop()
