"""Redirects answer a relative Location: Starlette's trailing-slash redirects would name the Host header the
caller wrote (`Host: evil.example` came back in `Location`)."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REDIRECTS = {301, 302, 303, 307, 308}


class RelativeRedirects:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def relative_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in REDIRECTS:
                message["headers"] = [(name, _relative(value) if name.lower() == b"location" else value)
                                      for name, value in message["headers"]]
            await send(message)

        await self.app(scope, receive, relative_send)


def _relative(location: bytes) -> bytes:
    parts = urlsplit(location.decode("latin-1"))
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return path.encode("latin-1")
