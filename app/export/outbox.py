"""Export as durable work: a job's DICOM results go to its destinations through an outbox.

When a job succeeds with DICOM artifacts, each destination named in its `export_to` gets a record
(`job_finished`, called by the runner). One attempt (`deliver`) begins a record, sends what the peer has not
confirmed yet, and stores the outcome: sent; pending again with exponential backoff when the peer is down or
refuses with a transient status; dead after MEDIMG_EXPORT_MAX_ATTEMPTS or a permanent refusal, with the
reason. Attempts run in workers (the `medimg.export` Celery task on the `exports` queue) or, embedded, in
the gateway's background sender; the scheduler (app/export/scheduler.py) hands out what is due, so a
record whose attempt was lost is picked up again when its lease ends.

Task-agnostic: what is sent is every `application/dicom` artifact of the job (and, if the destination asks,
its DICOM inputs). Their SOP Instance UIDs are derived from the job id, so sending again never duplicates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from io import BytesIO

import pydicom

from app.config import Settings
from app.errors import JobNotFound
from app.export.senders import Instance, SendFailed, sender_for
from app.metrics import EXPORTS
from app.schemas.exports import ExportPublic, ExportRecord, ExportStatus, utcnow
from app.schemas.jobs import Job, JobStatus
from app.schemas.tasks import EXPORT_QUEUE, EXPORT_TASK
from app.storage.blobs import BlobNotFound, BlobStore
from app.storage.exports import ExportStore, begin, finish, make_export_store
from app.storage.jobs import JobStore

log = logging.getLogger(__name__)

DICOM_MEDIA_TYPE = "application/dicom"
# After a kick (a Celery message sent at once), the scheduler leaves a first attempt alone this long.
KICK_GRACE_SECONDS = 30.0


class ExportOutbox:
    def __init__(self, settings: Settings, store: ExportStore, jobs: JobStore, blobs: BlobStore,
                 kick: Callable[[str, str], None] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.jobs = jobs
        self.blobs = blobs
        self.kick = kick  # starts an attempt elsewhere at once (Celery); None: this process's sender polls

    @property
    def lease_seconds(self) -> float:
        """How long an attempt holds its record: past this, its worker is taken for lost."""
        return max(300.0, self.settings.export_timeout_seconds * 5)

    def backoff(self, attempts: int) -> float:
        first, longest = self.settings.export_retry_first_seconds, self.settings.export_retry_max_seconds
        return min(first * 2 ** max(attempts - 1, 0), longest)

    # --- recording -------------------------------------------------------------------------------------

    def job_finished(self, job: Job) -> list[ExportRecord]:
        """Records an export per destination of a job that succeeded with DICOM results, and starts them."""
        if job.status is not JobStatus.SUCCEEDED or not job.export_to:
            return []
        if not any(a.media_type == DICOM_MEDIA_TYPE for a in job.artifacts):
            log.info("job %s has no DICOM results; nothing to export", job.id)
            return []
        now = time.time()
        due = now + (KICK_GRACE_SECONDS if self.kick else 0.0)
        records = [ExportRecord(job_id=job.id, destination=name, due_at=due) for name in job.export_to]
        self.store.add(records)
        self._start(records)
        return records

    def resend(self, job_id: str, destination: str) -> ExportRecord | None:
        """Sends a dead-lettered (or already sent) export again, with a fresh count of attempts.

        None when the export is still pending or being sent."""
        def reopen(record: ExportRecord) -> ExportRecord | None:
            if record.status.open:
                return None
            return record.model_copy(update={
                "status": ExportStatus.PENDING, "attempts": 0, "sent_at": None, "stored_instances": [],
                "due_at": time.time() + (KICK_GRACE_SECONDS if self.kick else 0.0)})

        record = self.store.update(job_id, destination, reopen)
        if record is not None:
            log.info("job %s: export to %s reopened for resending", job_id, destination)
            self._start([record])
        return record

    def _start(self, records: list[ExportRecord]) -> None:
        if self.kick is None:
            return  # embedded: the store wakes the background sender
        for record in records:
            try:
                self.kick(record.job_id, record.destination)
            except Exception as exc:  # the scheduler sends it once the grace has passed
                log.warning("job %s: export to %s not started now (%s); the scheduler will", record.job_id,
                            record.destination, type(exc).__name__)

    def public(self, job: Job) -> list[ExportPublic]:
        """The job's exports; while it runs, its destinations show as pending, attempts 0."""
        exports = [ExportPublic.from_record(r) for r in self.store.for_job(job.id)]
        if not job.status.finished:
            exports += [ExportPublic(destination=name, status=ExportStatus.PENDING, attempts=0)
                        for name in job.export_to if name not in {e.destination for e in exports}]
        return exports

    # --- sending -------------------------------------------------------------------------------------

    def deliver(self, job_id: str, destination: str) -> ExportRecord | None:
        """One attempt; None when the record is not due, already done or held by another attempt."""
        now = time.time()
        held = begin(self.store, job_id, destination, now, now + self.lease_seconds)
        if held is None:
            return None
        outcome = self._attempt(held)
        if not finish(self.store, held, outcome):
            log.info("job %s: export to %s was taken over by another attempt", job_id, destination)
            return None
        EXPORTS.labels(destination, "sent" if outcome.status is ExportStatus.SENT else
                       "dead" if outcome.status is ExportStatus.DEAD else "retry").inc()
        if outcome.status is ExportStatus.SENT:
            log.info("job %s: exported to %s (attempt %d)", job_id, destination, outcome.attempts)
        elif outcome.status is ExportStatus.DEAD:
            log.warning("job %s: export to %s dead-lettered after %d attempt(s): %s", job_id, destination,
                        outcome.attempts, outcome.last_error)
        else:
            log.info("job %s: export to %s failed (attempt %d), retrying in %.0fs: %s", job_id, destination,
                     outcome.attempts, outcome.due_at - time.time(), outcome.last_error)
        return outcome

    def _attempt(self, held: ExportRecord) -> ExportRecord:
        destination = self.settings.export_destination(held.destination)
        if destination is None:
            return self._failed(held, f"destination {held.destination!r} is no longer in MEDIMG_EXPORT_DESTINATIONS",
                                transient=False)
        try:
            job = self.jobs.get(held.job_id)
            instances = self._instances(job, destination.include_sources)
        except JobNotFound:
            return self._failed(held, "the job was deleted before its results were sent", transient=False)
        except BlobNotFound:
            return self._failed(held, "the job's DICOM files are no longer stored (deleted or purged)",
                                transient=False)
        remaining = [i for i in instances if i.sop_instance_uid not in held.stored_instances]
        try:
            stored = sender_for(destination, self.settings.export_timeout_seconds).send(remaining) if remaining else []
        except SendFailed as exc:
            return self._failed(held, exc.reason, exc.transient, exc.stored)
        except Exception as exc:  # a fault of ours or of a library: worth another try, reported by type only
            log.exception("job %s: export to %s failed unexpectedly", held.job_id, held.destination)
            return self._failed(held, f"export failed ({type(exc).__name__})", transient=True)
        return held.model_copy(update={"status": ExportStatus.SENT, "sent_at": utcnow(), "due_at": None,
                                       "stored_instances": [*held.stored_instances, *stored]})

    def _failed(self, held: ExportRecord, reason: str, transient: bool,
                stored: list[str] | None = None) -> ExportRecord:
        update = {"last_error": reason, "stored_instances": [*held.stored_instances, *(stored or [])]}
        if transient and held.attempts < self.settings.export_max_attempts:
            update |= {"status": ExportStatus.PENDING, "due_at": time.time() + self.backoff(held.attempts)}
        else:
            if transient:
                update["last_error"] = f"{reason} (gave up after {held.attempts} attempts)"
            update |= {"status": ExportStatus.DEAD, "due_at": None}
        return held.model_copy(update=update)

    def _instances(self, job: Job, include_sources: bool) -> list[Instance]:
        keys = [a.key for a in job.artifacts if a.media_type == DICOM_MEDIA_TYPE]
        if include_sources:
            keys = [i.key for i in job.inputs if i.format == "dicom"] + keys
        instances = []
        for key in keys:
            with self.blobs.open(key) as handle:
                data = handle.read()
            header = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
            instances.append(Instance(str(header.SOPInstanceUID), data))
        return instances


class CeleryExportPublisher:
    """Sends `medimg.export` by name with a bare Celery client: the gateway imports no worker code."""

    PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}

    def __init__(self, settings: Settings) -> None:
        from celery import Celery

        from app.dispatch.priority import redis_transport_options

        self.client = Celery("medimg-exports", broker=settings.celery_broker_url)  # the job queues' broker
        self.client.conf.update(broker_transport_options=redis_transport_options(settings.visibility_timeout),
                                broker_connection_retry_on_startup=True, task_serializer="json")

    def __call__(self, job_id: str, destination: str) -> None:
        self.client.send_task(EXPORT_TASK, args=[job_id, destination], queue=EXPORT_QUEUE, retry=True,
                              retry_policy=self.PUBLISH_RETRY)


def make_export_outbox(settings: Settings, jobs: JobStore, blobs: BlobStore) -> ExportOutbox:
    """Embedded, the gateway's own sender polls the store; in Celery mode an attempt is a task on `exports`."""
    kick = CeleryExportPublisher(settings) if settings.celery_mode and settings.export_destinations else None
    return ExportOutbox(settings, make_export_store(settings), jobs, blobs, kick)
