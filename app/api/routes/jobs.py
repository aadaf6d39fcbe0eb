"""/v1/jobs: submit, list, read (with long polling), fetch artifacts, delete."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterator
from typing import Annotated

from pydantic import AwareDatetime, BeforeValidator

from fastapi import APIRouter, File, Form, Header, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from app.api.deps import (
    BlobStoreDep,
    DispatcherDep,
    ExportPolicyDep,
    ExportsDep,
    IntakeDep,
    JobStoreDep,
    JobWaiterDep,
    Reader,
    SettingsDep,
    Submitter,
)
from app.api.waiting import RECHECK_SECONDS, FinishedJobWaiter, FinishedNotice
from app.errors import ArtifactNotFound, JobNotFound, MedimgError
from app.export.policy import parse_export_to
from app.metrics import JOBS_REJECTED, JOBS_SUBMITTED, UPLOAD_BYTES
from app.dispatch import Dispatcher
from app.schemas.jobs import Job, JobPriority, JobPublic, JobsPublic, JobStatus, new_job_id
from app.security.headers import PATIENT_DATA_HEADERS
from app.security.keys import Principal
from app.schemas.problems import PROBLEM_MEDIA_TYPE, Problem
from app.schemas.tasks import TaskName
from app.storage.blobs import BlobNotFound, FilesystemBlobStore, job_prefix
from app.storage.job_listing import MAX_PAGE, JobQuery, Position
from app.storage.jobs import JobStore

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

PROBLEM = {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}}


def _rfc3339_only(value: object) -> object:
    # pydantic would read a bare number as seconds since the epoch; a time here is written out, with its offset.
    if isinstance(value, str) and not ("T" in value or " " in value):
        raise ValueError("give a date and time with its offset, e.g. 2026-12-01T08:00:00Z")
    return value


Instant = Annotated[AwareDatetime, BeforeValidator(_rfc3339_only)]


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    summary="Submit a job",
    responses={
        200: {"description": "Finished within the wait asked for with `Prefer: wait=<seconds>`",
              "headers": {"Location": {"schema": {"type": "string"}},
                          "Preference-Applied": {"schema": {"type": "string"}}}},
        202: {"description": "Accepted and queued; `Location` names the job", "headers": {"Location": {"schema": {"type": "string"}}}},
        413: PROBLEM | {"description": "Upload larger than MEDIMG_MAX_UPLOAD_BYTES"},
        415: PROBLEM | {"description": "A file is neither DICOM, PNG, JPEG nor a ZIP of DICOM"},
        401: PROBLEM | {"description": "API key missing or not recognised"},
        403: PROBLEM | {"description": "The key lacks the submit scope, or may not use an `export_to` destination"},
        422: PROBLEM | {"description": "Invalid options, input that cannot serve the task, or no model for the task"},
        429: PROBLEM | {"description": "Rate limit exceeded; see Retry-After"},
        503: PROBLEM | {"description": "The queue is unreachable"},
    },
)
async def create_job(
    response: Response,
    intake: IntakeDep,
    jobs: JobStoreDep,
    waiter: JobWaiterDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    export_policy: ExportPolicyDep,
    exports: ExportsDep,
    caller: Submitter,
    task: Annotated[TaskName, Form(description="Which task to run")],
    files: Annotated[
        list[UploadFile], File(min_length=1, description="DICOM files, a ZIP of DICOM files, or a PNG/JPEG")
    ],
    # The optional form fields are typed without `| None`: a form part is text or absent, never null, and with
    # it the schema offered null, which a client can only send as the text "null" (a 422 for `priority`).
    # Absent (or empty) still arrives as the None default.
    options: Annotated[str, Form(description="JSON object of task options")] = None,
    callback_url: Annotated[
        str, Form(max_length=2048, description="HTTPS URL told when the job ends (signed, Standard Webhooks)")
    ] = None,
    priority: Annotated[
        JobPriority, Form(description="`stat` goes ahead of routine jobs of its task (a clinician is waiting); "
                          "default: the API key's priority, else `routine`")
    ] = None,
    export_to: Annotated[
        str, Form(max_length=4096, description='Export destinations for the DICOM results beside the API '
                  'key\'s defaults: a JSON list (["pacs"]) or comma-separated names')
    ] = None,
    idempotency_key: Annotated[
        str | None, Header(max_length=255, description="Same key from the same caller returns the same job")
    ] = None,
    prefer: Annotated[
        str | None, Header(max_length=255, description="`wait=<seconds>` (RFC 7240): answer 200 with the finished "
                           "job if it ends within that time (at most MEDIMG_MAX_WAIT_SECONDS), else 202 as usual")
    ] = None,
) -> JobPublic:
    wait = preferred_wait(prefer)
    destinations = export_policy.destinations(caller, parse_export_to(export_to))
    job_id = new_job_id()
    # Watched before it exists, so that a caller who waits hears the job end however soon it does, and the
    # wait needs no first read of a job just created.
    with waiter.watch(job_id) as finished:
        try:
            job, created = await run_in_threadpool(
                intake.accept, task, [f.file for f in files], options, caller.name, idempotency_key, callback_url,
                job_id, priority or caller.priority, destinations,
            )
        except MedimgError as exc:
            JOBS_REJECTED.labels(task.value, exc.code).inc()
            raise
        if created:
            JOBS_SUBMITTED.labels(task.value, job.priority.value).inc()
            UPLOAD_BYTES.labels(task.value).inc(sum(i.size_bytes for i in job.inputs))
        else:
            response.headers["Idempotent-Replayed"] = "true"
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        if wait is not None:
            # One round trip for callers that want the answer now; the job is queued and stored all the same.
            wait = min(wait, settings.max_wait_seconds)
            if created:
                job = await _wait_on(finished, jobs, job, caller, wait)
            else:  # an earlier job of the same idempotency key, under its own id
                job = await wait_finished(jobs, waiter, job.id, caller, wait)
            response.headers["Preference-Applied"] = f"wait={wait:g}"
            if job.status.finished:
                response.status_code = 200
    return await public(job, dispatcher, jobs, exports)


async def public(job: Job, dispatcher: Dispatcher, jobs: JobStore, exports,
                 include_shadow: bool = False) -> JobPublic:
    """The job's document: a queued job's says where it waits; one whose DICOM results are sent anywhere,
    its exports; an admin's read, a shadow model's result (workers/shadow.py)."""
    queue = None
    if job.status is JobStatus.QUEUED:
        if dispatcher.mode == "embedded":  # the lanes are in memory: no thread-pool hop on every submission
            queue = dispatcher.queue_position(job, jobs)
        else:
            queue = await run_in_threadpool(dispatcher.queue_position, job, jobs)
    records = await run_in_threadpool(exports.public, job) if job.export_to else []
    return JobPublic.from_job(job, queue, records, include_shadow=include_shadow)


def preferred_wait(prefer: str | None) -> float | None:
    """Seconds from an RFC 7240 `Prefer: wait=<seconds>` header; None when absent or not a number."""
    for preference in (prefer or "").split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                return None
            return seconds if seconds >= 0 and math.isfinite(seconds) else None
    return None


async def wait_finished(jobs: JobStore, waiter: FinishedJobWaiter, job_id: str, caller: Principal,
                        seconds: float) -> Job:
    """The job once finished, or as it stands after `seconds`; woken by the store's job-finished notices."""
    with waiter.watch(job_id) as finished:
        return await _wait_on(finished, jobs, await _own_job(jobs, job_id, caller), caller, seconds)


async def _wait_on(finished: FinishedNotice, jobs: JobStore, job: Job, caller: Principal, seconds: float) -> Job:
    """`job`, read after `finished` began watching it, once finished or as it stands after `seconds`."""
    deadline = time.monotonic() + seconds
    while not job.status.finished and (remaining := deadline - time.monotonic()) > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished.wait(), timeout=min(remaining, RECHECK_SECONDS))
        if finished.job is not None:  # the notice brought the finished job: no read back
            return _readable(finished.job, job.id, caller)
        finished.clear()
        job = await _own_job(jobs, job.id, caller)
    return job


async def _own_job(jobs, job_id: str, caller: Principal) -> Job:
    return _readable(await run_in_threadpool(jobs.get, job_id), job_id, caller)


def _readable(job: Job, job_id: str, caller: Principal) -> Job:
    if not caller.may_read(job.caller):
        # Another caller's job answers exactly like a missing one, so ids cannot be probed.
        raise JobNotFound(f"No job with id {job_id!r}; it never existed, or it was deleted")
    return job


@router.get("", response_model=JobsPublic, summary="List the caller's jobs, newest first (an admin key: all)",
            description="Each job's document as `GET /v1/jobs/{id}` gives it, without the queue position: read a "
                        "queued job itself for where it waits.",
            responses={401: PROBLEM, 422: PROBLEM | {"description": "A filter or the cursor is not valid"}})
async def list_jobs(
    request: Request,
    jobs: JobStoreDep,
    caller: Reader,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status")] = None,
    task: Annotated[TaskName | None, Query(description="Only jobs of this task")] = None,
    created_after: Annotated[Instant | None, Query(description="Only jobs created after this (exclusive)")] = None,
    created_before: Annotated[Instant | None, Query(description="Only jobs created before this (exclusive)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Jobs per page")] = 20,
    cursor: Annotated[str | None, Query(max_length=512, description="From the previous page's `next` link")] = None,
) -> JobsPublic:
    query = JobQuery(
        owner=None if "admin" in caller.scopes else caller.name, status=status, task=task,
        created_after=created_after, created_before=created_before,
        after=Position.decode(cursor) if cursor is not None else None, limit=limit,
    )
    page = await run_in_threadpool(jobs.list_jobs, query)
    next_url = None
    if page.next is not None:
        # The same filters, the cursor moved on; relative to the server, like the Location of a new job.
        next_url = str(request.url.include_query_params(cursor=page.next.encode()).replace(scheme="", netloc=""))
    return JobsPublic(data=[JobPublic.from_job(j) for j in page.jobs], count=len(page.jobs), next=next_url)


@router.get("/{job_id}", response_model=JobPublic, summary="Read a job, optionally waiting for it to finish",
            responses={401: PROBLEM, 404: PROBLEM | {"description": "No such job, or another caller's"}})
async def read_job(
    job_id: str,
    jobs: JobStoreDep,
    waiter: JobWaiterDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    exports: ExportsDep,
    caller: Reader,
    wait: Annotated[float, Query(ge=0, description="Seconds to wait for the job to finish (long poll)")] = 0,
) -> JobPublic:
    job = await wait_finished(jobs, waiter, job_id, caller, min(wait, settings.max_wait_seconds))
    return await public(job, dispatcher, jobs, exports, include_shadow="admin" in caller.scopes)


@router.get("/{job_id}/artifacts/{name}", summary="Download an artifact (mask, overlay, report)",
            response_class=FileResponse, responses={404: PROBLEM, 200: {"content": {"application/octet-stream": {}}}})
async def read_artifact(job_id: str, name: str, jobs: JobStoreDep, blobs: BlobStoreDep, caller: Reader) -> Response:
    job = await _own_job(jobs, job_id, caller)
    artifact = next((a for a in job.artifacts if a.name == name), None)
    if artifact is None:
        available = ", ".join(a.name for a in job.artifacts) or "none yet"
        raise ArtifactNotFound(f"Job {job_id} has no artifact {name!r}; available: {available}")
    headers = PATIENT_DATA_HEADERS | {"Content-Disposition": f'attachment; filename="{artifact.name}"'}
    try:
        if not isinstance(blobs, FilesystemBlobStore):
            # A remote store (S3): stream the object through in chunks, never whole in memory or on disk.
            body = await run_in_threadpool(blobs.open, artifact.key)
            return StreamingResponse(iterate_in_threadpool(_chunks(body)), media_type=artifact.media_type,
                                     headers=headers)
        path = await run_in_threadpool(blobs.local_path, artifact.key)
    except BlobNotFound:
        raise ArtifactNotFound(f"Artifact {name!r} of job {job_id} is no longer stored") from None
    return FileResponse(path, media_type=artifact.media_type, headers=headers)


def _chunks(body, size: int = 1 << 20) -> Iterator[bytes]:
    try:
        while chunk := body.read(size):
            yield chunk
    finally:
        body.close()


@router.delete("/{job_id}", status_code=204, summary="Delete a job with its inputs and outputs",
               responses={404: PROBLEM})
async def delete_job(job_id: str, jobs: JobStoreDep, blobs: BlobStoreDep, exports: ExportsDep,
                     caller: Submitter) -> Response:
    await _own_job(jobs, job_id, caller)
    await run_in_threadpool(jobs.delete, job_id)
    await run_in_threadpool(exports.store.delete_job, job_id)
    await run_in_threadpool(blobs.delete_prefix, job_prefix(job_id))
    return Response(status_code=204)
