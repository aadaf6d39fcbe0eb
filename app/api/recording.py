"""Request metrics and the audit line, as plain ASGI middleware.

Starlette's BaseHTTPMiddleware would run every request through an extra task and memory stream: a cost
paid on each status poll and upload, for two counters and a log line.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import HTTP_LATENCY, HTTP_REQUESTS
from app.security.audit import audit_access

UNAUDITED_ROUTES = {"/healthz", "/readyz", "/metrics"}  # probes and scrapes, every few seconds


class RequestRecorder:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before starting a response

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            # The router wrote the matched route into this same scope.
            template = getattr(scope.get("route"), "path", "unmatched")
            HTTP_REQUESTS.labels(scope["method"], template, str(status)).inc()
            HTTP_LATENCY.labels(scope["method"], template).observe(time.perf_counter() - started)
            if template not in UNAUDITED_ROUTES:
                audit_access(Request(scope), status)
