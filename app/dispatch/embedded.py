"""Embedded mode: a pool of worker threads inside the gateway process, fed through lanes (app/dispatch/lanes.py).

ONNX Runtime releases the GIL while it computes, so threads keep the cores busy. This is the only
place the gateway reaches worker code, and it does so lazily, when embedded mode starts.
"""

from __future__ import annotations

import logging
import threading

from app.config import Settings
from app.dispatch.base import Readiness
from app.dispatch.lanes import LaneScheduler
from app.errors import ServiceUnavailable
from app.schemas.jobs import Job, QueuePosition
from app.storage.blobs import BlobStore
from app.storage.jobs import JobStore

log = logging.getLogger(__name__)


class EmbeddedDispatcher:
    mode = "embedded"

    def __init__(self, settings: Settings, jobs: JobStore, blobs: BlobStore) -> None:
        self.settings = settings
        self.jobs = jobs
        self.blobs = blobs
        # Built here, so that invalid lanes stop the service at startup with the settings' names in the message.
        self._lanes = LaneScheduler(settings.embedded_lanes, settings.embedded_workers,
                                    settings.priority_aging_seconds)
        self._threads: list[threading.Thread] = []
        self._warmed = threading.Event()
        self._warmup_error: str | None = None
        self._runtime = None

    def start(self) -> None:
        from workers.runner import run_job
        from workers.runtime import WorkerRuntime

        self._run_job = run_job
        self._runtime = WorkerRuntime.create(self.settings, self.jobs, self.blobs)
        threading.Thread(target=self._warm_up, name="medimg-warmup", daemon=True).start()
        # Jobs queued or running when the process last stopped are run again, in their order; none disappears.
        for job in self.jobs.unfinished():
            log.info("resuming job %s left %s by the previous run", job.id, job.status.value)
            self._lanes.put(job)
        self._threads = [threading.Thread(target=self._serve_lanes, name=f"medimg-worker-{index}", daemon=True)
                         for index in range(self.settings.embedded_workers)]
        for thread in self._threads:
            thread.start()

    def _warm_up(self) -> None:
        try:
            self._runtime.warm_up()
        except Exception as exc:
            self._warmup_error = f"{type(exc).__name__}: {exc}"
            log.exception("model warm-up failed")
        finally:
            self._warmed.set()

    def _serve_lanes(self) -> None:
        while (taken := self._lanes.take()) is not None:
            job_id, lane = taken
            try:
                self._run_job(job_id, self._runtime)
            except Exception:
                log.exception("job %s: the runner itself failed", job_id)
            finally:
                self._lanes.done(lane)

    def recover_lost(self, jobs, older_than_seconds: float) -> list[str]:
        return []  # the pool lives in this process: queued jobs are resumed at start

    def recover_abandoned(self, jobs) -> list[str]:
        return []  # no other worker process can hold a job

    def _provider_problem(self) -> str | None:
        from workers.onnx import missing_required_provider

        return missing_required_provider(self._runtime.loaded, self.settings.require_provider)

    def submit(self, job: Job) -> None:
        if not self._threads:
            raise ServiceUnavailable("The worker pool is not running; retry shortly")
        if self._warmed.is_set() and (problem := self._provider_problem()):
            raise ServiceUnavailable(f"{problem}; no job runs on another device")
        self._lanes.put(job)

    def queue_position(self, job: Job, jobs: JobStore) -> QueuePosition | None:
        return self._lanes.position(job.id)

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
        # Running jobs finish; queued ones stay `queued` in the store and resume at the next start.
        self._lanes.close()
        for thread in self._threads:
            thread.join()
