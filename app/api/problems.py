"""One place that turns every error into application/problem+json (RFC 9457)."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.route_table import allowed_methods
from app.errors import MedimgError, PayloadTooLarge, RequestTimeout
from app.schemas.problems import PROBLEM_MEDIA_TYPE, Problem

log = logging.getLogger(__name__)


def problem_response(status: int, code: str, title: str, detail: str, request: Request,
                     headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    problem = Problem(
        type=f"urn:medimg:problem:{code}", title=title, status=status, detail=detail,
        instance=request.url.path, code=code, **extra,
    )
    return JSONResponse(problem.model_dump(exclude_none=True), status_code=status,
                        media_type=PROBLEM_MEDIA_TYPE, headers=headers)


async def send_problem(scope, send, status: int, code: str, title: str, detail: str,
                       headers: dict[str, str] | None = None) -> None:
    """A problem answered by ASGI middleware, outside the routing layer where no exception handler runs."""
    problem = Problem(type=f"urn:medimg:problem:{code}", title=title, status=status, detail=detail,
                      instance=scope["path"][:256], code=code)
    response = JSONResponse(problem.model_dump(exclude_none=True), status_code=status,
                            media_type=PROBLEM_MEDIA_TYPE, headers=headers)
    await response(scope, _no_receive, send)


async def _no_receive():  # a problem response never reads the request
    return {"type": "http.disconnect"}


async def _medimg_error(request: Request, exc: MedimgError) -> JSONResponse:
    return problem_response(exc.status, exc.code, exc.title, exc.detail, request, headers=exc.headers, **exc.extra)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    phrase = HTTPStatus(exc.status_code).phrase
    code = phrase.lower().replace(" ", "-").replace("'", "")
    if exc.status_code == 413:  # the same code whether the limit was declared or hit mid-stream
        code, phrase = PayloadTooLarge.code, PayloadTooLarge.title
    elif exc.status_code == 408:
        code, phrase = RequestTimeout.code, RequestTimeout.title
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else _default_detail(exc.status_code, request)
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request.app, request.url.path))
    return problem_response(exc.status_code, code, phrase, detail, request, headers=headers or None)


def _default_detail(status: int, request: Request) -> str:
    if status == 404:
        return f"No resource at {request.url.path}; see /docs for the API"
    if status == 405:
        return f"{request.method} is not allowed on {request.url.path}"
    return HTTPStatus(status).description


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body",))
        message = error.get("msg", "invalid")
        if error.get("type") == "enum" and "expected" in error.get("ctx", {}):
            message = f"must be one of {error['ctx']['expected']}"
        errors.append({"field": location, "message": message})
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem_response(422, "invalid-request", "Invalid request", detail, request, errors=errors)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return problem_response(500, "internal-error", "Internal error",
                            "The service failed unexpectedly; the logs have the details", request)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(MedimgError, _medimg_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
