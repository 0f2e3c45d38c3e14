"""Browser tests of the web app: Playwright for Python driving Debian's Chromium.

Playwright's own browsers are never downloaded (no ``playwright install``): the
tests launch ``/usr/bin/chromium`` (Debian package ``chromium``; ``./dev.sh test``
installs it). Without it, without the ``playwright`` package or without a built
bundle, the tests are skipped, and fail when ``CI=true``.

The servers are real (uvicorn, as ``tidings serve``) on loopback; ``LiveServer``
can be stopped and started again on the same port and data directory, which is
what a restart looks like to a browser. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.conftest import API_KEY, test_settings, wait_for
from tests.missing import component_missing
from tidings import Settings, Tidings, web
from tidings.server import TidingsServer, build_server

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
PASSWORD = "correct horse battery staple"
DESKTOP = {"width": 1280, "height": 800}
MOBILE = {"width": 390, "height": 844}
# How long an expectation waits (ms): generous, as a loaded CI machine needs.
EXPECT_TIMEOUT = 10_000


def _missing() -> list[str]:
    missing = []
    if not CHROMIUM.exists():
        missing.append(
            f"Debian's Chromium ({CHROMIUM}; apt-get install chromium, as ./dev.sh test does)"
        )
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if not web.bundle_built():
        missing.append("the web app's bundle (cd src/tidings/web && npm ci && npm run build)")
    return missing


def require_browser() -> None:
    missing = _missing()
    if missing:
        component_missing("browser tests need " + "; ".join(missing))


class LiveServer:
    """A real server on a loopback port that stays the same across restarts."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = 0
        self.tidings: Tidings | None = None
        self._server: TidingsServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, tidings: Tidings | None = None) -> Tidings:
        hub = tidings or Tidings(self.settings)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        server = build_server(hub.settings, host="127.0.0.1", port=self.port, tidings=hub)
        server.config.loop = "none"  # share the test's event loop
        task = asyncio.create_task(server.serve(sockets=[sock]))
        await wait_for(lambda: server.started or task.done(), timeout=10)
        if task.done():
            sock.close()
            task.result()
        self.tidings, self._server, self._task, self._sock = hub, server, task, sock
        return hub

    async def stop(self) -> None:
        server, task, sock = self._server, self._task, self._sock
        self._server = self._task = self._sock = None
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            await asyncio.wait_for(task, timeout=15)
        finally:
            if sock is not None:
                sock.close()

    async def add_user(self, name: str, *, is_admin: bool = False) -> None:
        assert self.tidings is not None
        password_hash = await self.tidings.accounts.passwords.hash_async(PASSWORD)
        await self.tidings.store.create_user(name, password_hash, is_admin=is_admin)

    async def server_api(self, method: str, params: dict[str, Any]) -> Any:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as http:
            response = await http.post(
                f"/api/{method}", json=params, headers={"X-API-Key": API_KEY}
            )
        response.raise_for_status()
        body = response.json()
        assert "error" not in body, body
        return body["result"]

    async def http_as(self, name: str) -> httpx.AsyncClient:
        """An HTTP client with ``name``'s bearer token (the caller closes it)."""
        http = httpx.AsyncClient(base_url=self.url, timeout=10)
        response = await http.post("/token", data={"username": name, "password": PASSWORD})
        assert response.status_code == 200, response.text
        http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
        return http


@pytest.fixture
async def live_server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    require_browser()
    settings = test_settings(tmp_path, allow_registration=True)
    server = LiveServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Pages:
    """Browser contexts (each one a separate user: own storage) and their pages.

    Uncaught errors and dialogs (``alert`` from an injected script) of every
    page are recorded; the fixture fails the test if any page had an uncaught error.
    """

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.errors: list[str] = []
        self.dialogs: list[str] = []

    async def new(self, *, mobile: bool = False) -> Page:
        context = await self.browser.new_context(
            viewport=MOBILE if mobile else DESKTOP,
            locale="en-US",
            timezone_id="UTC",
            is_mobile=mobile,
            has_touch=mobile,
        )
        context.set_default_timeout(EXPECT_TIMEOUT)
        page = await context.new_page()
        page.on("pageerror", lambda error: self.errors.append(f"{page.url}: {error}"))

        async def on_dialog(dialog: Any) -> None:
            self.dialogs.append(dialog.message)
            await dialog.dismiss()

        page.on("dialog", on_dialog)
        return page


@pytest.fixture
async def pages() -> AsyncIterator[Pages]:
    require_browser()
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=EXPECT_TIMEOUT)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            recorder = Pages(browser)
            yield recorder
            assert not recorder.errors, recorder.errors
        finally:
            await browser.close()


async def screenshot(page: Page, name: str) -> None:
    """Save a screenshot of a main screen as test-artifacts/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
