"""Runs one job by id: load its record, run the task's pipeline, record the outcome.

Safe to run twice (late acks redeliver): a finished job is left alone, and each start counts as a
delivery, so an input that kills its worker every time fails for good after `max_deliveries`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError

from app.errors import BadInputError, JobNotFound, MedimgError
from app.logs import bind_job_task, job_log_context
from app.metrics import JOBS_FINISHED, JOBS_STARTED, QUEUE_WAIT_SECONDS, STAGE_SECONDS
from app.plugins import task_plugin
from app.schemas.jobs import Artifact, FailureKind, Job, JobError, JobPriority, JobStatus, utcnow
from app.storage.blobs import BlobNotFound, job_prefix
from app.storage.heartbeats import holds
from workers import busy
from workers.batching import urgent_calls
from workers.dicom_results import dicom_results
from workers.pipelines import pipeline_for
from workers.pipelines.base import JobContext, JobInput, PipelineOutput, StageTimer
from workers.runtime import WorkerRuntime
from workers.shadow import run_shadow

log = logging.getLogger(__name__)


def run_job(job_id: str, runtime: WorkerRuntime, on_stage: Callable[[str], None] | None = None,
            delivery_id: str | None = None) -> Job | None:
    """`delivery_id`: the task id of the broker message (Celery); a job has two once aged (a STAT copy)."""
    # Every line logged while the job runs, by any module, carries its id and task (app/logs.py).
    with job_log_context(job_id):
        try:
            return _run_job(job_id, runtime, on_stage, delivery_id)
        finally:
            if runtime.heartbeat is not None:
                runtime.heartbeat.release(job_id)
            # Remote blob stores keep local copies of inputs for the pipeline; they are not needed any more.
            runtime.blobs.release_local(job_prefix(job_id))


def _run_job(job_id: str, runtime: WorkerRuntime, on_stage: Callable[[str], None] | None,
             delivery_id: str | None) -> Job | None:
    try:
        job = runtime.jobs.get(job_id)
    except JobNotFound:
        log.info("job %s was deleted before it ran; nothing to do", job_id)
        return None
    bind_job_task(job.task.value)
    if job.status.finished:
        log.info("job %s already %s; not running it again", job_id, job.status.value)
        return job
    if job.status is JobStatus.RUNNING and None not in (delivery_id, job.delivery_id) and delivery_id != job.delivery_id:
        # Another message of this job started it (its STAT copy, or the original); only a redelivery of that
        # message may take the job over, when its worker is lost.
        log.info("job %s runs from another message; this one stands down", job_id)
        return None
    if _held_elsewhere(job, runtime):
        # A second message for a job another live worker runs (RabbitMQ requeues a dead consumer's messages at
        # once, a gateway may resend): standing down leaves one run. Should that worker die, its beat stops
        # listing the job and the gateway's sweep sends it again.
        log.info("job %s is running on live worker %s; this delivery stands down", job.id, job.worker)
        return None
    if job.attempts >= runtime.settings.max_deliveries:
        return _finish_failed(
            runtime, job, "worker-lost", "infrastructure",
            f"The job was started {job.attempts} times and its worker stopped each time before finishing "
            "(crash, out of memory or a killed container). The input may be too large or malformed for the "
            "model; it was not retried again.",
        )
    previous_attempts = job.attempts
    job.attempts += 1
    job.status = JobStatus.RUNNING
    job.started_at = utcnow()
    job.delivery_id = delivery_id
    if runtime.heartbeat is not None:
        runtime.heartbeat.hold(job.id)  # listed in this process's beat before the store names it the holder
        job.worker = runtime.heartbeat.worker_id
    if not runtime.jobs.transition(job, previous_attempts):
        log.info("job %s was started or finished by another delivery; this one stands down", job.id)
        return None
    JOBS_STARTED.labels(job.task.value).inc()
    if job.attempts == 1:
        QUEUE_WAIT_SECONDS.labels(job.task.value, job.priority.value).observe((job.started_at - job.created_at).total_seconds())
    log.info("job %s started (task %s, attempt %d)", job.id, job.task.value, job.attempts)

    stages = StageTimer(on_stage=on_stage)
    try:
        with urgent_calls(job.priority is JobPriority.STAT):  # its model runs go before routine jobs' runs
            output = _run_pipeline(job, runtime, stages)
        with stages("outputs"):  # DICOM SEG/SR are outputs too; their time adds to the pipeline's own
            dicom = dicom_results(job, output, [JobInput(path=runtime.blobs.local_path(i.key), format=i.format)
                                                for i in job.inputs])
        output.artifacts.extend(dicom.artifacts)
        job.notes = dicom.notes
        job.artifacts = _store_artifacts(job, output, runtime)
        job.result = output.result.model_dump(mode="json")
    except BadInputError as exc:
        return _finish_failed(runtime, job, exc.code, "bad-input", exc.detail, stages)
    except BlobNotFound:
        return _finish_failed(
            runtime, job, "input-missing", "infrastructure",
            "The job's stored input is missing from the blob store (deleted, or storage not shared with this "
            "worker: check MEDIMG_DATA_DIR)", stages,
        )
    except SoftTimeLimitExceeded:
        return _finish_failed(
            runtime, job, "time-limit", "infrastructure",
            f"The job ran out of time ({runtime.settings.task_soft_time_limit} s, MEDIMG_TASK_SOFT_TIME_LIMIT)",
            stages,
        )
    except MedimgError as exc:
        return _finish_failed(runtime, job, exc.code, "model-error", exc.detail, stages)
    except Exception as exc:
        # The message may quote input values, so only the type reaches the log and the caller.
        log.exception("job %s failed in the pipeline (%s)", job.id, type(exc).__name__)
        return _finish_failed(
            runtime, job, "model-error", "model-error",
            f"The model pipeline failed ({type(exc).__name__}); the service logs have the job id",
            stages,
        )

    job.status = JobStatus.SUCCEEDED
    job.finished_at = utcnow()
    job.stage_seconds = stages.seconds
    _record_metrics(job)  # before the outcome is visible, so a scrape after GET /v1/jobs sees this job
    if not _record_outcome(runtime, job):
        return None
    _announce(runtime, job)
    log.info("job %s succeeded in %.3fs", job.id, sum(stages.seconds.values()))
    run_shadow(job, runtime)  # after the outcome is visible: the caller never waits for a candidate model
    return job


def _held_elsewhere(job: Job, runtime: WorkerRuntime) -> bool:
    heartbeat = runtime.heartbeat
    if heartbeat is None or job.status is not JobStatus.RUNNING or not job.worker or job.worker == heartbeat.worker_id:
        return False  # this process takes over what it held itself (e.g. after a job-store outage)
    return holds(heartbeat.client, job.worker, job.id)


def _run_pipeline(job: Job, runtime: WorkerRuntime, stages: StageTimer) -> PipelineOutput:
    pipeline = pipeline_for(job.task)
    try:
        options = task_plugin(job.task).options.model_validate(job.options)
    except ValidationError as exc:
        raise BadInputError(f"Stored options are invalid for {job.task.value}: {exc.error_count()} error(s)") from exc
    model = runtime.model(job.model.id)
    if model.manifest.sha256 != job.model.sha256:
        raise MedimgError(
            f"This worker serves {model.manifest.id} version {model.manifest.version}, not the version "
            f"{job.model.version} the job was accepted for; deploy matching model repositories"
        )
    inputs = [JobInput(path=runtime.blobs.local_path(i.key), format=i.format) for i in job.inputs]
    context = JobContext(job_id=job.id, caller=job.caller, jobs=runtime.jobs, blobs=runtime.blobs)
    with busy.job_running():  # the banded resize splits a job only while it runs alone
        return pipeline.run(inputs, options, model, stages, context=context)


def _store_artifacts(job: Job, output: PipelineOutput, runtime: WorkerRuntime) -> list[Artifact]:
    artifacts = []
    for item in output.artifacts:
        key = f"{job_prefix(job.id)}/artifacts/{item.name}"
        size = runtime.blobs.put_bytes(key, item.data)
        artifacts.append(Artifact(name=item.name, media_type=item.media_type, key=key, size_bytes=size))
    return artifacts


def _finish_failed(
    runtime: WorkerRuntime, job: Job, code: str, kind: FailureKind, detail: str, stages: StageTimer | None = None
) -> Job | None:
    job.status = JobStatus.FAILED
    job.finished_at = utcnow()
    job.error = JobError(code=code, kind=kind, detail=detail)
    if stages is not None:
        job.stage_seconds = stages.seconds
    _record_metrics(job)  # before the outcome is visible, so a scrape after GET /v1/jobs sees this job
    if not _record_outcome(runtime, job):
        return None
    _announce(runtime, job)
    log.warning("job %s failed: %s (%s)", job.id, code, kind)
    return job


def _record_outcome(runtime: WorkerRuntime, job: Job) -> bool:
    """Stores the outcome unless another delivery took the job over or it was deleted meanwhile."""
    if runtime.jobs.transition(job, job.attempts):
        return True
    try:
        runtime.jobs.get(job.id)
        log.info("job %s: a later delivery took over; this delivery's outcome is discarded", job.id)
    except JobNotFound:
        # Deleted while it ran: what it just wrote must not outlive the deletion.
        runtime.blobs.delete_prefix(job_prefix(job.id))
        log.info("job %s was deleted while running; its outputs were discarded", job.id)
    return False


def _announce(runtime: WorkerRuntime, job: Job) -> None:
    if runtime.exports is not None:
        try:  # its DICOM results go to the job's export destinations (app/export/outbox.py)
            runtime.exports.job_finished(job)
        except Exception as exc:
            log.error("job %s: its exports could not be recorded (%s)", job.id, type(exc).__name__)
    if runtime.webhooks is not None:
        runtime.webhooks.job_finished(job)


def _record_metrics(job: Job) -> None:
    JOBS_FINISHED.labels(job.task.value, job.status.value, job.error.kind if job.error else "").inc()
    for stage, seconds in job.stage_seconds.items():
        STAGE_SECONDS.labels(job.task.value, stage).observe(seconds)
