"""The chat app (``GET /``) and the operator's page (``GET /admin``), served from the built bundle.

The browser code lives in ``src/`` next to this file and uses the ``centrifuge``
npm SDK; ``npm ci && npm run build`` here (``./dev.sh`` does it) bundles it with
esbuild into ``dist/``, which is git-ignored and ships inside the wheel. Node is
only needed to build: a server serves ``dist/`` as plain files. Without a
bundle, the pages answer 503 with how to build it.

``tidings serve`` installs all this (``create_app``, unless ``web_app`` is off);
an app that mounts Tidings can call ``install_web_app(app, tidings)`` itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from ..api.admin import build_admin_router

if TYPE_CHECKING:
    from ..app import Tidings

WEB = Path(__file__).parent
DIST = WEB / "dist"
ASSETS = DIST / "assets"

# The pages load only their own scripts and styles and talk only to their own
# origin (HTTP and WebSocket): no inline script can run, whatever ends up in the DOM.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

NOT_BUILT = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Tidings: the web app is not built</title></head>
<body>
<h1>The chat app is not built</h1>
<p>This Tidings server is running, but the browser bundle of its chat app is missing.
Build it from a source checkout (it needs Node.js and npm, only at build time):</p>
<pre>./dev.sh serve</pre>
<p>or by hand:</p>
<pre>cd src/tidings/web
npm ci
npm run build</pre>
<p>then reload this page. Wheels built after that include the bundle.</p>
</body>
</html>
"""


def bundle_built() -> bool:
    return all((DIST / name).is_file() for name in ("index.html", "admin.html", "assets/app.js"))


def _page(name: str) -> Response:
    if not bundle_built():
        return HTMLResponse(NOT_BUILT, status_code=503, headers={"Cache-Control": "no-store"})
    return FileResponse(DIST / name, media_type="text/html", headers=PAGE_HEADERS)


def install_web_app(app: FastAPI, tidings: Tidings) -> None:
    """Add ``/`` (chat), ``/admin`` (operator page), ``/assets`` and ``/admin/api``."""
    app.include_router(build_admin_router(tidings.accounts))

    @app.get("/", include_in_schema=False)
    async def chat_page() -> Response:
        return _page("index.html")

    @app.get("/admin", include_in_schema=False)
    async def admin_page() -> Response:
        return _page("admin.html")

    # check_dir=False: a server without the bundle still starts (and says so at /).
    app.mount("/assets", StaticFiles(directory=ASSETS, check_dir=False), name="assets")
