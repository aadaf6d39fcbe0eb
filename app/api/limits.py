"""Refuse request bodies over the upload limit, whether declared by Content-Length or streamed chunked."""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from app.schemas.problems import PROBLEM_MEDIA_TYPE
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout

    def _too_large(self) -> HTTPException:
        return HTTPException(
            413, f"The request body exceeds {self.max_bytes} bytes (MEDIMG_MAX_UPLOAD_BYTES); send fewer or smaller files"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            # Outside the routing layer no exception handler runs, so answer here, before reading a byte.
            response = JSONResponse(
                {"type": "urn:medimg:problem:payload-too-large", "title": "Upload too large", "status": 413,
                 "detail": self._too_large().detail, "instance": scope["path"], "code": "payload-too-large"},
                status_code=413, media_type=PROBLEM_MEDIA_TYPE, headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            try:
                # A client that trickles its body (slow-loris) would hold a worker slot forever.
                message = await asyncio.wait_for(receive(), timeout=self.read_timeout)
            except TimeoutError:
                raise HTTPException(
                    408, f"The request body stalled for over {self.read_timeout:g} s "
                    "(MEDIMG_BODY_READ_TIMEOUT_SECONDS); send it again at a steady pace",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPException from body parsing, so this becomes a 413 problem.
                    raise self._too_large()
            return message

        await self.app(scope, counting_receive, send)
