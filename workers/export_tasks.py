"""The export task: one attempt at sending a job's DICOM results to one destination (app/export/outbox.py).

It takes ids only. A failed attempt does not retry here: the outbox stores when the next one is due, and
the gateway's export scheduler sends the task again then, so retries survive any worker's restart.
"""

from __future__ import annotations

from app.schemas.tasks import EXPORT_TASK
from workers.celery_app import celery_app
from workers.tasks import get_runtime


@celery_app.task(name=EXPORT_TASK, acks_late=True)  # safe twice: an attempt first begins its record atomically
def export_task(job_id: str, destination: str) -> str | None:
    exports = get_runtime().exports
    record = exports.deliver(job_id, destination) if exports is not None else None
    return None if record is None else record.status.value
