"""The review page at /ui: plain HTML, JavaScript and CSS shipped inside the package (app/ui/static).

Nothing is built at install and nothing is fetched at run time, so it works in a network with no internet. The
page only calls the public API with the caller's key, so it can do nothing a caller could not do with curl.
Its files are answered with a strict Content-Security-Policy: scripts and styles from this origin only (no inline
script or style), images from this origin or blob: URLs (artifacts fetched with the key), no framing.
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate, so a new release's page and script arrive together
}


class ReviewPage(StaticFiles):
    """The page's files, each with the headers above."""

    def __init__(self) -> None:
        super().__init__(directory=STATIC_DIR, html=True)

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response
