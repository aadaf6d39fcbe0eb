"""/docs and /redoc from assets shipped in a pinned Python package (fastapi-offline), never from a CDN.

Hospital networks often have no internet: pages that load their scripts from a CDN show blank there, and a
floating CDN version is code the service did not choose. The assets come from the installed wheel.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles

from app.api.route_table import DOCS_ASSETS_PATH

ASSETS = Path(fastapi_offline.__file__).parent / "static"
DOCS_URL, REDOC_URL, OAUTH2_REDIRECT_URL = "/docs", "/redoc", "/docs/oauth2-redirect"


def install_docs(app: FastAPI) -> None:
    """The app must be created with docs_url=None and redoc_url=None (FastAPI's own pages use the CDN)."""
    app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=ASSETS), name="docs-assets")
    app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url = DOCS_URL, REDOC_URL, OAUTH2_REDIRECT_URL

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} - Swagger UI", oauth2_redirect_url=OAUTH2_REDIRECT_URL,
            swagger_js_url=f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_PATH}/favicon.png")

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect():
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc():
        return get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{DOCS_ASSETS_PATH}/redoc.standalone.js",
                              redoc_favicon_url=f"{DOCS_ASSETS_PATH}/favicon.png", with_google_fonts=False)
