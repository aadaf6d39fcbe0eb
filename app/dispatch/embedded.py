"""Embedded mode: a pool of worker threads inside the gateway process, fed through a real queue.

ONNX Runtime releases the GIL while it computes, so threads keep the cores busy. This is the only
place the gateway reaches worker code, and it does so lazily, when embedded mode starts.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from app.config import Settings
from app.dispatch.base import Readiness
from app.errors import ServiceUnavailable
from app.schemas.jobs import Job
from app.storage.blobs import BlobStore
from app.storage.jobs import JobStore

log = logging.getLogger(__name__)


class EmbeddedDispatcher:
    mode = "embedded"

    def __init__(self, settings: Settings, jobs: JobStore, blobs: BlobStore) -> None:
        self.settings = settings
        self.jobs = jobs
        self.blobs = blobs
        self._executor: ThreadPoolExecutor | None = None
        self._warmed = threading.Event()
        self._warmup_error: str | None = None
        self._runtime = None

    def start(self) -> None:
        from workers.runner import run_job
        from workers.runtime import WorkerRuntime

        self._run_job = run_job
        self._runtime = WorkerRuntime.create(self.settings, self.jobs, self.blobs)
        self._executor = ThreadPoolExecutor(self.settings.embedded_workers, thread_name_prefix="medimg-worker")
        threading.Thread(target=self._warm_up, name="medimg-warmup", daemon=True).start()
        # Jobs queued or running when the process last stopped are run again; none disappears.
        for job in self.jobs.unfinished():
            log.info("resuming job %s left %s by the previous run", job.id, job.status.value)
            self._executor.submit(self._run, job.id)

    def _warm_up(self) -> None:
        try:
            self._runtime.warm_up()
        except Exception as exc:
            self._warmup_error = f"{type(exc).__name__}: {exc}"
            log.exception("model warm-up failed")
        finally:
            self._warmed.set()

    def _run(self, job_id: str) -> None:
        try:
            self._run_job(job_id, self._runtime)
        except Exception:
            log.exception("job %s: the runner itself failed", job_id)

    def recover_lost(self, jobs, older_than_seconds: float) -> list[str]:
        return []  # the pool lives in this process: queued jobs are resumed at start

    def recover_abandoned(self, jobs) -> list[str]:
        return []  # no other worker process can hold a job

    def _provider_problem(self) -> str | None:
        from workers.onnx import missing_required_provider

        return missing_required_provider(self._runtime.loaded, self.settings.require_provider)

    def submit(self, job: Job) -> None:
        if self._executor is None:
            raise ServiceUnavailable("The worker pool is not running; retry shortly")
        if self._warmed.is_set() and (problem := self._provider_problem()):
            raise ServiceUnavailable(f"{problem}; no job runs on another device")
        self._executor.submit(self._run, job.id)

    def readiness(self) -> Readiness:
        if not self._warmed.is_set():
            return Readiness(False, "Models are loading and warming up")
        if self._warmup_error:
            return Readiness(False, f"Model warm-up failed: {self._warmup_error}")
        if problem := self._provider_problem():
            return Readiness(False, problem)
        models = {
            f"{m.manifest.id}/{m.manifest.version}": {"providers": m.providers, "warmup_seconds": round(m.warmup_seconds, 3)}
            for m in self._runtime.loaded
        }
        return Readiness(True, "Models loaded and warmed", {"mode": self.mode, "models": models})

    def stop(self) -> None:
        if self._executor is not None:
            # Running jobs finish; queued ones stay `queued` in the store and resume at the next start.
            self._executor.shutdown(wait=True, cancel_futures=True)
