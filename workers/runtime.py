"""What a worker process holds: the model repository, its live ONNX sessions, and the stores."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from app.config import Settings
from app.export.outbox import ExportOutbox, make_export_outbox
from app.model_repository import ModelRepository
from app.schemas.tasks import TaskName
from app.storage.blobs import BlobStore
from app.storage.heartbeats import Heartbeat
from app.storage.factory import make_blob_store, make_job_store, make_model_repository
from app.storage.jobs import JobStore
from workers.onnx import LoadedModel, load_model
from workers.webhooks import WebhookSender

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    settings: Settings
    repository: ModelRepository
    jobs: JobStore
    blobs: BlobStore
    webhooks: WebhookSender | None = None
    heartbeat: Heartbeat | None = None  # Celery workers: lists the jobs this process holds
    exports: ExportOutbox | None = None
    _loaded: dict[str, LoadedModel] = field(default_factory=dict)
    shadow_models: dict[str, LoadedModel] = field(default_factory=dict)  # "<id>@<version>", see workers/shadow.py
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, settings: Settings, jobs: JobStore | None = None, blobs: BlobStore | None = None) -> WorkerRuntime:
        jobs = jobs or make_job_store(settings)
        blobs = blobs or make_blob_store(settings)
        return cls(
            settings=settings,
            repository=make_model_repository(settings),
            jobs=jobs,
            blobs=blobs,
            webhooks=WebhookSender(settings),
            exports=make_export_outbox(settings, jobs, blobs),
        )

    def model(self, model_id: str) -> LoadedModel:
        """The loaded, warm model, with the models its manifest `requires` loaded into `requirements`."""
        with self._lock:
            return self._load(model_id, ())

    def _load(self, model_id: str, chain: tuple[str, ...]) -> LoadedModel:
        if model_id in chain:
            raise ValueError(f"models require each other in a cycle: {' -> '.join((*chain, model_id))}")
        if model_id not in self._loaded:
            loaded = load_model(self.repository.get(model_id), self.settings.providers,
                                self.settings.inference_threads, self.settings.inference_thread_spinning)
            loaded.warm_up()
            loaded.enable_batching(self.settings.batch_max_rows, self.settings.batch_max_wait_ms / 1000,
                                   self.settings.inference_parallel_runs)
            loaded.requirements = {r: self._load(r, (*chain, model_id)) for r in loaded.manifest.requires}
            self._loaded[model_id] = loaded
        return self._loaded[model_id]

    def warm_up(self, tasks: list[TaskName] | None = None) -> list[LoadedModel]:
        """Loads and warms the model of every task this worker serves, and the models those require; a worker
        is ready only after this."""
        warmed = []
        for version in self.repository.served():
            if tasks is None or version.manifest.task in tasks:
                warmed.append(self.model(version.manifest.id))
        return warmed

    @property
    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())
