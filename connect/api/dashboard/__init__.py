"""The dashboard: a browser page at `/` on the API port, over the `/v1` REST routes.

The page is plain HTML, CSS and JavaScript modules shipped in this package
(`static/`); there is nothing to build. Every asset is read into memory when
the API is created and served from there:

- `GET /` answers `static/index.html`; `GET /dashboard/<path>` answers the
  file `static/<path>`, and only the files that ship (no path reaches
  outside them; anything else is a JSON 404 like every other unknown route).
- Every answer carries `Cache-Control: no-cache` and an `ETag` (a hash of the
  content): a browser keeps its copy and asks again each time the page loads,
  and an unchanged asset is answered `304 Not Modified` without a body. So an
  upgraded server is seen at the next load, with no stale page.
- `Content-Security-Policy` lets the page load scripts, styles and data from
  its own origin only (no inline script), and it may not be framed.

The page loads without a key. Under `connect serve` every `/v1` call it makes
needs the signing key: the page asks for it once (with an event key, used to
send events from the page), keeps both in the tab's `sessionStorage` (gone
when the tab closes; never in a cookie, so no other site can make the browser
use them) and sends the signing key as `Authorization: Bearer <key>`. Under
`connect dev` nothing is asked.
"""

from __future__ import annotations

import hashlib
import mimetypes
from importlib import resources
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

#: Sent with every dashboard asset (see the module doc).
HEADERS: Final = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_TYPES: Final = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}


class Asset:
    """One shipped file: its bytes, media type and entity tag."""

    def __init__(self, body: bytes, media_type: str) -> None:
        self.body = body
        self.media_type = media_type
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'

    def response(self, request: Request) -> Response:
        headers = {**HEADERS, "ETag": self.etag}
        if self.etag in _etags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)


def _etags(header: str) -> set[str]:
    tags = {t.strip() for t in header.split(",")}
    return tags | {t[2:] for t in tags if t.startswith("W/")}


def load_assets() -> dict[str, Asset]:
    """Every file under `static/`, by its path there (`js/main.js`)."""
    assets: dict[str, Asset] = {}
    pending = [(resources.files(__package__).joinpath("static"), "")]
    while pending:
        folder, prefix = pending.pop()
        for entry in folder.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                pending.append((entry, name + "/"))
            elif not entry.name.startswith("."):
                suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
                media = _TYPES.get(suffix) or mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
                assets[name] = Asset(entry.read_bytes(), media)
    return assets


def dashboard_routes() -> list[BaseRoute]:
    """`GET /` and `GET /dashboard/{path}` (see the module doc)."""
    assets = load_assets()
    index = assets["index.html"]

    async def page(request: Request) -> Response:
        return index.response(request)

    async def asset(request: Request) -> Response:
        found = assets.get(request.path_params["path"])
        if found is None:
            return Response(b'{"status": 404, "error": "no such dashboard file"}', 404, media_type="application/json")
        return found.response(request)

    return [
        Route("/", page, methods=["GET", "HEAD"]),
        Route("/dashboard/{path:path}", asset, methods=["GET", "HEAD"]),
    ]
