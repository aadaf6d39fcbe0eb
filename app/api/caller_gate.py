"""Who is calling, decided from the headers before one byte of the body is read (plain ASGI middleware).

Route dependencies run only after FastAPI has parsed the form, and parsing a multipart body means reading
all of it: a caller without a key could make the service spool gigabytes before hearing 401. Here the key,
the rate limit and the scope the route needs are checked first; a refused request is answered at once and
its connection closed, its body never read. Requests without a valid key are also limited per client
address, so a flood of 401s is throttled like any other.

An operation needs a key when its OpenAPI entry declares the API-key security schemes, which `require_key`
(app/api/deps.py) brings; reads need the `read` scope, other methods `submit` (app/api/route_table.py).
Probes and the documentation pass untouched.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.problems import send_problem
from app.api.route_table import key_requirement
from app.security.keys import KeyRing, Principal, presented_key
from app.security.rate_limit import RateLimiter, retry_after_header

UNAUTHORIZED_DETAIL = "Send a valid API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`"


class CallerGate:
    def __init__(self, app: ASGIApp, keyring: KeyRing, limiter: RateLimiter, address_limiter: RateLimiter) -> None:
        self.app = app
        self.keyring = keyring
        self.limiter = limiter
        self.address_limiter = address_limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needs_key, required_scope = key_requirement(scope["app"], scope["method"], scope["path"])
        if not needs_key:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        # A refusal leaves the body unread, so the connection cannot carry another request: close it.
        close = {"Connection": "close"} if _has_body(headers) else {}
        principal = self.keyring.authenticate(presented_key(headers))
        if principal is None:
            client = (scope.get("client") or ("unknown", 0))[0]
            wait = self.address_limiter.acquire(f"address:{client}")
            if wait > 0:
                await send_problem(scope, send, 429, "rate-limited", "Too many requests",
                                   f"Too many requests without a valid API key from {client}; retry after the "
                                   "Retry-After seconds (MEDIMG_UNAUTHENTICATED_RATE_LIMIT_PER_MINUTE)",
                                   {"Retry-After": retry_after_header(wait)} | close)
                return
            await send_problem(scope, send, 401, "unauthorized", "API key missing or not recognised",
                               UNAUTHORIZED_DETAIL, {"WWW-Authenticate": 'Bearer realm="medimg"'} | close)
            return
        scope.setdefault("state", {})["principal"] = principal
        wait = self.limiter.acquire(principal.name)
        if wait > 0:
            await send_problem(scope, send, 429, "rate-limited", "Too many requests",
                               f"Caller {principal.name!r} exceeded {self.limiter.rate_per_minute} requests per "
                               "minute (MEDIMG_RATE_LIMIT_PER_MINUTE); retry after the Retry-After seconds",
                               {"Retry-After": retry_after_header(wait)} | close)
            return
        if required_scope is not None and not _allows(principal, required_scope):
            await send_problem(scope, send, 403, "forbidden", "Not allowed",
                               f"The API key of {principal.name!r} lacks the {required_scope!r} scope this request "
                               "needs", close)
            return
        await self.app(scope, receive, send)


def _allows(principal: Principal, scope: str) -> bool:
    return scope in principal.scopes or "admin" in principal.scopes


def _has_body(headers: dict[bytes, bytes]) -> bool:
    return b"transfer-encoding" in headers or headers.get(b"content-length", b"0") not in (b"0", b"")
