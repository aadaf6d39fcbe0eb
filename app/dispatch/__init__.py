"""How accepted jobs reach a worker: an in-process pool (embedded) or Celery queues (one per task)."""

from app.config import Settings
from app.dispatch.base import Dispatcher, Readiness
from app.storage.blobs import BlobStore
from app.storage.jobs import JobStore


def make_dispatcher(settings: Settings, jobs: JobStore, blobs: BlobStore) -> Dispatcher:
    if settings.celery_mode:
        from app.dispatch.celery import CeleryDispatcher

        return CeleryDispatcher(settings)
    from app.dispatch.embedded import EmbeddedDispatcher

    return EmbeddedDispatcher(settings, jobs, blobs)


__all__ = ["Dispatcher", "Readiness", "make_dispatcher"]
