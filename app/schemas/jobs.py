"""Jobs: the stored record, and the document the API returns."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from app.plugins import task_plugin, task_plugins
from app.schemas.exports import ExportPublic
from app.schemas.quality import UngradableResult
from app.schemas.tasks import TaskName

# Every registered task's result schema, and the answer of any task's quality gate: the OpenAPI document of a job
# lists exactly the installed tasks'.
TaskResult = Union[(*(plugin.result for plugin in task_plugins().values()), UngradableResult)]  # noqa: UP007

InputFormat = Literal["dicom", "png", "jpeg"]
FailureKind = Literal["bad-input", "model-error", "infrastructure"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return str(uuid.uuid4())


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED)


class JobPriority(StrEnum):
    """STAT: a clinician is waiting; it goes ahead of routine work of its task (see MEDIMG_PRIORITY_AGING_SECONDS)."""

    STAT = "stat"
    ROUTINE = "routine"


class QueuePosition(BaseModel):
    lane: str = Field(description="The lane (embedded pool) or queue (Celery) the job waits in")
    position: int = Field(ge=1, description="1: the next job of its lane to start, once a worker thread is free")
    exact: bool = Field(description="False in Celery mode: counted from the job store, not read from the broker")


class ModelRef(BaseModel):
    id: str
    version: int
    sha256: str
    research_use_only: bool


class JobError(BaseModel):
    code: str = Field(description="Stable kebab-case identifier, e.g. bad-input or worker-lost")
    kind: FailureKind
    detail: str


class InputFile(BaseModel):
    """One stored input. The caller's file name is not kept: it may carry patient identifiers."""

    key: str
    format: InputFormat
    size_bytes: int


class Artifact(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    media_type: str
    key: str
    size_bytes: int


class ShadowRun(BaseModel):
    """A candidate model's result on the same inputs (issue: shadow runs). Admins only; never DICOM."""

    model: ModelRef
    result: dict | None = None
    error: JobError | None = None
    artifact_keys: dict[str, str] = Field(
        default_factory=dict, description="Mask artifacts kept for agreement (name → blob key), not downloadable"
    )
    seconds: float = 0.0


class Job(BaseModel):
    """The stored record; only the job store and the runner see all of it."""

    model_config = ConfigDict(use_enum_values=False)

    id: str
    task: TaskName
    status: JobStatus = JobStatus.QUEUED
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    model: ModelRef
    options: dict = Field(default_factory=dict)
    inputs: list[InputFile] = Field(default_factory=list)
    result: dict | None = None
    error: JobError | None = None
    artifacts: list[Artifact] = Field(default_factory=list)
    caller: str = "anonymous"
    priority: JobPriority = JobPriority.ROUTINE
    promoted: bool = Field(False, description="Celery mode: re-sent as STAT after waiting MEDIMG_PRIORITY_AGING_SECONDS")
    delivery_id: str | None = Field(None, description="Celery mode: the task id of the message that started the job")
    idempotency_key: str | None = None
    request_fingerprint: str | None = Field(
        None, description="sha256 of what the submission asked (task, options, callback, file bytes); a reused "
        "Idempotency-Key with another fingerprint is refused"
    )
    callback_url: str | None = None
    attempts: int = Field(0, description="Times a worker started the job; redeliveries count")
    worker: str | None = Field(
        None, description="The worker process that started the latest attempt: host:pid-namespace:pid (heartbeats.py)"
    )
    stage_seconds: dict[str, float] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    export_to: list[str] = Field(
        default_factory=list, description="Destinations its DICOM results are sent to (MEDIMG_EXPORT_DESTINATIONS)"
    )
    shadow: ShadowRun | None = None


class ArtifactPublic(BaseModel):
    name: str
    media_type: str
    size_bytes: int
    url: str


class JobPublic(BaseModel):
    id: str
    task: TaskName
    status: JobStatus
    priority: JobPriority
    queue: QueuePosition | None = Field(None, description="Present while the job is queued: where it waits")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    model: ModelRef
    result: TaskResult | None = Field(None, description="Present when status is succeeded")
    error: JobError | None = Field(None, description="Present when status is failed")
    artifacts: list[ArtifactPublic]
    callback_url: str | None = None
    stage_seconds: dict[str, float] = Field(
        default_factory=dict, description="Wall time of each pipeline stage (load, preprocess, infer, …)"
    )
    notes: list[str] = Field(
        default_factory=list,
        description="Why an output is absent, e.g. no DICOM SEG/SR (seg.dcm, sr.dcm) for a PNG or JPEG input",
    )
    exports: list[ExportPublic] = Field(
        default_factory=list, description="Where its DICOM results are being sent, one entry per destination"
    )
    shadow: ShadowRun | None = Field(
        None, description="A candidate model's result on this job (MEDIMG_SHADOW_MODELS); shown to admin keys only"
    )

    @classmethod
    def from_job(cls, job: Job, queue: QueuePosition | None = None,
                 exports: list[ExportPublic] | None = None, include_shadow: bool = False) -> JobPublic:
        return cls(
            id=job.id,
            task=job.task,
            status=job.status,
            priority=job.priority,
            queue=queue,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            model=job.model,
            result=_task_result(job),
            error=job.error,
            artifacts=[
                ArtifactPublic(
                    name=a.name,
                    media_type=a.media_type,
                    size_bytes=a.size_bytes,
                    url=f"/v1/jobs/{job.id}/artifacts/{a.name}",
                )
                for a in job.artifacts
            ],
            callback_url=job.callback_url,
            stage_seconds=job.stage_seconds,
            notes=job.notes,
            exports=exports or [],
            shadow=job.shadow if include_shadow else None,
        )


class JobsPublic(BaseModel):
    """One page of a job listing, newest first."""

    data: list[JobPublic]
    count: int = Field(description="Jobs on this page")
    next: str | None = Field(None, description="URL of the next page (same filters); null on the last page")


def _task_result(job: Job) -> BaseModel | None:
    """The stored result validated by the job's own task (or as the quality gate's answer), so two tasks' result
    schemas can never be confused."""
    if job.result is None:
        return None
    if set(job.result) == set(UngradableResult.model_fields):
        return UngradableResult.model_validate(job.result)
    return task_plugin(job.task).result.model_validate(job.result)
