"""What the API's operations need, read from its own OpenAPI document, for code that runs before routing.

The OpenAPI document lists every operation with its methods and the security it requires (declared by
`require_key`'s API-key schemes). Reading it, rather than walking the router, works however routers are
nested (FastAPI's included routers keep their routes out of `app.router.routes`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.routing import Mount, compile_path

READ_METHODS = {"GET", "HEAD"}


@dataclass(frozen=True)
class Operations:
    """One path template: its regex and, per method, whether the operation needs an API key."""

    regex: re.Pattern
    needs_key: dict[str, bool]


def operations(app) -> list[Operations]:
    table = getattr(app.state, "operation_table", None)
    if table is None:
        table = []
        for template, path_item in app.openapi().get("paths", {}).items():
            regex, _, _ = compile_path(template)
            methods = {method.upper(): bool(operation.get("security"))
                       for method, operation in path_item.items() if isinstance(operation, dict)}
            if "GET" in methods:
                methods["HEAD"] = methods["GET"]  # Starlette answers HEAD wherever GET is served
            table.append(Operations(regex, methods))
        app.state.operation_table = table
    return table


def allowed_methods(app, path: str) -> list[str]:
    """Every method served at `path`, for a 405's Allow header."""
    methods: set[str] = set()
    for entry in operations(app):
        if entry.regex.match(path):
            methods |= set(entry.needs_key)
    return sorted(methods)


def key_requirement(app, method: str, path: str) -> tuple[bool, str | None]:
    """(a key is needed, the scope it needs) for this request, before the body is read.

    A path the document does not list needs a key unless it is the documentation itself or a mounted
    static app (documentation assets, the review page, which calls the API with the user's key): callers
    without a key learn nothing else, not even which paths exist. Reads need the `read` scope, anything else `submit`; the
    route's own dependency repeats the exact check."""
    for entry in operations(app):
        if entry.regex.match(path):
            needs = entry.needs_key.get(method)
            if needs is False:
                return False, None
            return True, ("read" if method in READ_METHODS else "submit") if needs else None
    if path in {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}:
        return False, None
    if any(path == mount or path.startswith(mount + "/") for mount in _mounts(app)):
        return False, None
    return True, None


def _mounts(app) -> list[str]:
    mounts = getattr(app.state, "public_mounts", None)
    if mounts is None:
        mounts = app.state.public_mounts = [route.path for route in app.router.routes if isinstance(route, Mount)]
    return mounts


DOCS_ASSETS_PATH = "/docs-assets"
