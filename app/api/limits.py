"""Bound every request body: its size (declared or streamed chunked), its pauses, its whole duration, its pace.

A body that trickles in (one byte every 25 s: a slow-loris) would otherwise hold a connection and a
worker slot for ever; the pause limit alone does not stop it. So a body must also end within
MEDIMG_BODY_DEADLINE_SECONDS, and once MEDIMG_BODY_READ_TIMEOUT_SECONDS have passed it must average at least
MEDIMG_BODY_MIN_BYTES_PER_SECOND.
"""

from __future__ import annotations

import asyncio
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import send_problem


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout: float = 30.0, deadline: float = 900.0,
                 min_bytes_per_second: int = 0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout
        self.deadline = deadline
        self.min_rate = min_bytes_per_second

    def _too_large(self) -> str:
        return f"The request body exceeds {self.max_bytes} bytes (MEDIMG_MAX_UPLOAD_BYTES); send fewer or smaller files"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await send_problem(scope, send, 413, "payload-too-large", "Upload too large", self._too_large(),
                               {"Connection": "close"})
            return
        received = 0
        started = time.monotonic()

        async def bounded_receive() -> Message:
            nonlocal received
            now = time.monotonic()
            # The latest moment the next bytes may come: the pause limit, the overall deadline, and the moment
            # the bytes so far would fall below the minimum pace. The one that ends the wait is the one named.
            bounds = [(now + self.read_timeout, "pause"), (started + self.deadline, "deadline")]
            if self.min_rate > 0:
                # With nothing received yet it is the pause limit counted from the start, and is named so.
                bounds.append((started + self.read_timeout + received / self.min_rate, "pace" if received else "pause"))
            latest, limit = min(bounds)
            try:
                message = await asyncio.wait_for(receive(), timeout=max(latest - now, 0.001))
            except TimeoutError:
                raise HTTPException(408, self._too_slow(limit, time.monotonic() - started, received),
                                    headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPException from body parsing, so this becomes a 413 problem.
                    raise HTTPException(413, self._too_large(), headers={"Connection": "close"})
            return message

        await self.app(scope, bounded_receive, send)

    def _too_slow(self, limit: str, elapsed: float, received: int) -> str:
        broken = {
            "pause": f"no bytes came for {self.read_timeout:g} s, the longest pause a body may make "
                     "(MEDIMG_BODY_READ_TIMEOUT_SECONDS)",
            "deadline": f"a body must end within {self.deadline:g} s (MEDIMG_BODY_DEADLINE_SECONDS)",
            "pace": f"after the first {self.read_timeout:g} s a body must average at least {self.min_rate} bytes/s "
                    "(MEDIMG_BODY_MIN_BYTES_PER_SECOND)",
        }[limit]
        return (f"The request body was too slow: {received} bytes in {elapsed:.1f} s, and {broken}; send it again "
                "at a steady pace, or in several smaller requests")
