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
            # the bytes so far would fall below the minimum pace.
            latest = min(now + self.read_timeout, started + self.deadline)
            if self.min_rate > 0:
                latest = min(latest, started + self.read_timeout + received / self.min_rate)
            try:
                message = await asyncio.wait_for(receive(), timeout=max(latest - now, 0.001))
            except TimeoutError:
                raise HTTPException(408, self._too_slow(time.monotonic() - started, received),
                                    headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPException from body parsing, so this becomes a 413 problem.
                    raise HTTPException(413, self._too_large(), headers={"Connection": "close"})
            return message

        await self.app(scope, bounded_receive, send)

    def _too_slow(self, elapsed: float, received: int) -> str:
        return (f"The request body was too slow: {received} bytes in {elapsed:.0f} s. A body may pause at most "
                f"{self.read_timeout:g} s (MEDIMG_BODY_READ_TIMEOUT_SECONDS), must end within {self.deadline:g} s "
                f"(MEDIMG_BODY_DEADLINE_SECONDS) and, after the first {self.read_timeout:g} s, average at least "
                f"{self.min_rate} bytes/s (MEDIMG_BODY_MIN_BYTES_PER_SECOND); send it again at a steady pace")
