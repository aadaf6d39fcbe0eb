"""One audit line per API access: who, which job, what action, when, and the answer. No patient data."""

from __future__ import annotations

import logging

from fastapi import Request

audit_log = logging.getLogger("medimg.audit")


def audit_access(request: Request, status: int) -> None:
    route = request.scope.get("route")
    principal = getattr(request.state, "principal", None)
    audit_log.info(
        "access",
        extra={
            "audit": {
                "caller": principal.name if principal is not None else None,
                "action": f"{request.method} {getattr(route, 'path', 'unmatched')}",
                "job_id": _bounded(request.path_params.get("job_id")),
                "status": status,
                "client": request.client.host if request.client else None,
            }
        },
    )


MAX_LOGGED_CHARS = 64  # a job id is 36; whatever a caller puts in the path is cut to this


def _bounded(value: str | None) -> str | None:
    if value is None or len(value) <= MAX_LOGGED_CHARS:
        return value
    return f"{value[:MAX_LOGGED_CHARS]}…({len(value)} chars)"
