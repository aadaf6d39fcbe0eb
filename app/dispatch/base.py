from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from app.schemas.jobs import Job, QueuePosition


@dataclass
class Readiness:
    ready: bool
    detail: str
    checks: dict[str, object] = field(default_factory=dict)


class Dispatcher(Protocol):
    mode: str

    def start(self) -> None: ...
    def submit(self, job: Job) -> None:
        """Hands the job to a worker; raises ServiceUnavailable when that is impossible right now."""

    def queue_position(self, job: Job, jobs) -> QueuePosition | None:
        """Where a queued job waits: its lane and place in it; None when it is not waiting."""

    def readiness(self) -> Readiness: ...
    def recover_lost(self, jobs, older_than_seconds: float) -> list[str]:
        """Dispatches again queued jobs whose message was lost; returns their ids."""

    def recover_abandoned(self, jobs) -> list[str]:
        """Dispatches again running jobs whose worker stopped beating; returns their ids."""

    def stop(self) -> None: ...
