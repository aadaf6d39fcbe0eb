"""Celery tasks: thin wrappers that take a job id and hand it to the runner.

Each worker process builds its own runtime after the fork (ONNX Runtime sessions are not fork-safe),
warms the models of the queues it consumes, and only then starts its heartbeat, so readiness means warm.
With `--pool threads` one process runs several jobs at once and their model runs are micro-batched.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time

import redis
from celery.exceptions import Reject
from celery.signals import worker_process_init, worker_process_shutdown, worker_ready

from app.config import get_settings
from app.schemas.tasks import RUN_JOB_TASK, TaskName
from app.storage.heartbeats import Heartbeat
from workers.celery_app import celery_app
from workers.runner import run_job
from workers.onnx import missing_required_provider, providers_by_model
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

_runtime: WorkerRuntime | None = None
_heartbeat: Heartbeat | None = None
_refused: str | None = None  # why this process must not run jobs (a required provider is missing)
# Set by a pool process that refuses, read by `medimg worker` in the parent once Celery has stopped: created
# before the fork, it is the one flag parent and children share.
_refused_anywhere = multiprocessing.Value("b", 0, lock=False)
REFUSED_EXIT_CODE = 78  # EX_CONFIG: the host does not give the worker what its settings require


def worker_refused() -> bool:
    return bool(_refused_anywhere.value)


def consumed_tasks() -> list[TaskName]:
    queues = get_settings().worker_queues
    tasks = {t.value for t in TaskName}
    return [TaskName(q) for q in queues if q in tasks] if queues else list(TaskName)  # `exports` is no task


def get_runtime() -> WorkerRuntime:
    global _runtime
    if _runtime is None:
        _runtime = WorkerRuntime.create(get_settings())
    return _runtime


@worker_ready.connect
def _prepare_thread_pool(sender=None, **_) -> None:
    # Pools of threads share the parent process, where worker_process_init never fires.
    if get_settings().worker_pool == "threads":
        _prepare_process()


@worker_process_init.connect
def _prepare_process(**_) -> None:
    global _heartbeat, _refused
    settings = get_settings()
    runtime = get_runtime()
    tasks = consumed_tasks()
    warmed = runtime.warm_up(tasks)
    served = {m.manifest.task for m in warmed}
    queues = [t.value for t in tasks if t in served]
    providers = providers_by_model(warmed)
    log.info("worker process ready: queues %s, providers %s", queues, providers)
    if problem := missing_required_provider(warmed, settings.require_provider):
        # No beat, so never ready (/readyz, `medimg worker-probe`); no job runs here; the worker stops, so the
        # orchestrator shows the failure instead of jobs running on the wrong device.
        _refused = problem
        _refused_anywhere.value = 1
        log.critical("%s; this worker refuses to run jobs and shuts down", problem)
        os.kill(os.getpid() if settings.worker_pool == "threads" else os.getppid(), signal.SIGTERM)
        return
    _heartbeat = Heartbeat(
        redis.Redis.from_url(settings.redis_url), queues, sorted(providers), providers,
        settings.worker_heartbeat_seconds, heartbeat_file=settings.worker_heartbeat_file,
    ).start()
    runtime.heartbeat = _heartbeat


@worker_process_shutdown.connect
def _stop_process(**_) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


@celery_app.task(name=RUN_JOB_TASK, acks_late=True, bind=True)
def run_job_task(self, job_id: str) -> str | None:
    if _refused is not None:
        raise Reject(_refused, requeue=True)  # for a worker whose models run where they must
    runtime = get_runtime()
    delivery_id = self.request.id  # the job id, or that of its STAT copy after aging (app/dispatch/celery.py)
    try:
        return _run(job_id, runtime, delivery_id)
    except redis.RedisError as exc:
        # The job store is unreachable (Redis restarting). The broker is usually that same Redis, so a
        # requeue now could be lost with it: wait for the store to answer, then run the job again here
        # (the runner takes over a job left `running`). Only if that fails too does the message go back.
        if not _store_answers_within(runtime, STORE_OUTAGE_WAIT_SECONDS):
            raise _back_to_queue(job_id, exc) from exc
        log.warning("job %s: job store was unreachable (%s); running the job again", job_id, type(exc).__name__)
    try:
        return _run(job_id, runtime, delivery_id)
    except redis.RedisError as exc:
        raise _back_to_queue(job_id, exc) from exc


def _run(job_id: str, runtime: WorkerRuntime, delivery_id: str | None = None) -> str | None:
    job = run_job(job_id, runtime, delivery_id=delivery_id)
    return None if job is None else job.status.value


def _back_to_queue(job_id: str, exc: redis.RedisError) -> Reject:
    log.warning("job %s: job store unreachable (%s); the message goes back to the queue", job_id,
                type(exc).__name__)
    return Reject(f"job store unreachable: {type(exc).__name__}", requeue=True)


STORE_OUTAGE_WAIT_SECONDS = 30.0


def _store_answers_within(runtime: WorkerRuntime, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            runtime.jobs.ping()
            return True
        except redis.RedisError:
            time.sleep(0.5)
    return False
