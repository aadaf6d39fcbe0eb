"""Patient data lives no longer than it must: inputs and then whole jobs are purged on a schedule.

Inputs of finished jobs go after MEDIMG_RETENTION_INPUT_HOURS; the job record with its result and
artifacts after MEDIMG_RETENTION_JOB_HOURS. Unfinished jobs are never purged.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.config import Settings
from app.schemas.jobs import utcnow
from app.storage.blobs import BlobStore, job_prefix
from app.storage.exports import make_export_store
from app.storage.jobs import JobStore

log = logging.getLogger(__name__)


@dataclass
class PurgeReport:
    inputs_removed: int = 0
    jobs_removed: int = 0


def purge_expired(jobs: JobStore, blobs: BlobStore, settings: Settings, now: datetime | None = None) -> PurgeReport:
    now = now or utcnow()
    input_cutoff = now - timedelta(hours=settings.retention_input_hours)
    job_cutoff = now - timedelta(hours=settings.retention_job_hours)
    report = PurgeReport()
    for job in list(jobs.iter_jobs()):
        if not job.status.finished or job.finished_at is None:
            continue
        if job.finished_at < job_cutoff:
            jobs.delete(job.id)
            blobs.delete_prefix(job_prefix(job.id))
            make_export_store(settings).delete_job(job.id)  # its export records (outbox) go with it
            report.jobs_removed += 1
        elif job.finished_at < input_cutoff and job.inputs:
            blobs.delete_prefix(f"{job_prefix(job.id)}/inputs")
            job.inputs = []
            jobs.save(job)
            report.inputs_removed += 1
    if report.jobs_removed or report.inputs_removed:
        log.info("retention purge: %d job(s) and the inputs of %d more removed", report.jobs_removed,
                 report.inputs_removed)
    return report


async def purge_periodically(jobs: JobStore, blobs: BlobStore, settings: Settings) -> None:
    while True:
        try:
            await asyncio.to_thread(purge_expired, jobs, blobs, settings)
        except Exception:
            log.exception("retention purge failed; retrying at the next interval")
        await asyncio.sleep(settings.purge_interval_seconds)
