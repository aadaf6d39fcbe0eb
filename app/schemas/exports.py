"""Exports: one outbox record per (job, destination), and the part of it the job document shows."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


class ExportStatus(StrEnum):
    PENDING = "pending"  # waiting for its (next) attempt, at `due_at`
    SENDING = "sending"  # an attempt holds it until `due_at` (its lease); after that another may take over
    SENT = "sent"
    DEAD = "dead"  # dead-lettered: out of attempts, or refused for good; an admin may resend it

    @property
    def open(self) -> bool:
        return self in (ExportStatus.PENDING, ExportStatus.SENDING)


class ExportRecord(BaseModel):
    job_id: str
    destination: str
    status: ExportStatus = ExportStatus.PENDING
    attempts: int = 0
    last_error: str | None = None
    due_at: float | None = Field(None, description="Epoch seconds: next attempt (pending) or lease end (sending)")
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None
    stored_instances: list[str] = Field(
        default_factory=list, description="SOP Instance UIDs the peer confirmed; a retry sends only the others"
    )


class ExportPublic(BaseModel):
    destination: str
    status: ExportStatus
    attempts: int
    last_error: str | None = Field(None, description="Why the last attempt failed (or why it was dead-lettered)")
    sent_at: datetime | None = None

    @classmethod
    def from_record(cls, record: ExportRecord) -> ExportPublic:
        return cls(destination=record.destination, status=record.status, attempts=record.attempts,
                   last_error=record.last_error, sent_at=record.sent_at)
