"""The tasks the service runs; each task name is also its Celery queue name."""

from enum import StrEnum


class TaskName(StrEnum):
    LUNG_NODULE_DETECTION = "lung-nodule-detection"
    DR_GRADING = "dr-grading"
    COVID_LESION_SEGMENTATION = "covid-lesion-segmentation"
    THYROID_MALIGNANCY = "thyroid-malignancy"

# The Celery task name the gateway sends and the workers register: one contract, no shared import.
RUN_JOB_TASK = "medimg.run_job"
# Sending results to MEDIMG_EXPORT_DESTINATIONS: its own Celery task and queue (app/export/outbox.py).
EXPORT_TASK = "medimg.export"
EXPORT_QUEUE = "exports"
