"""The Celery application of the workers."""

from celery import Celery

celery_app = Celery("medimg-worker", include=["workers.tasks", "workers.export_tasks"])
celery_app.config_from_object("workers.celeryconfig")
