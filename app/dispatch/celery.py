"""Celery mode: jobs go to the Redis broker on the queue named after their task.

The gateway sends tasks by name with a bare Celery client, so it never imports worker code or ONNX Runtime.
"""

from __future__ import annotations

import logging

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from app.config import Settings
from app.dispatch.base import Readiness
from app.errors import ServiceUnavailable
from app.schemas.jobs import Job
from app.schemas.tasks import RUN_JOB_TASK, TaskName
from app.storage.heartbeats import live_workers

log = logging.getLogger(__name__)

PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


class CeleryDispatcher:
    mode = "celery"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = Celery("medimg-gateway", broker=settings.redis_url)
        self.client.conf.update(
            broker_transport_options={"visibility_timeout": settings.visibility_timeout},
            broker_connection_retry_on_startup=True,
            task_serializer="json",
        )
        self._redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=3)

    def start(self) -> None:
        pass

    def submit(self, job: Job) -> None:
        try:
            self.client.send_task(
                RUN_JOB_TASK, args=[job.id], queue=job.task.value, retry=True, retry_policy=PUBLISH_RETRY
            )
        except (OperationalError, redis.RedisError, OSError) as exc:
            raise ServiceUnavailable(
                f"The job queue (Redis broker) cannot be reached ({type(exc).__name__}); the job was not "
                "accepted, retry later"
            ) from exc

    def readiness(self) -> Readiness:
        try:
            self._redis.ping()
            workers = live_workers(self._redis)
        except redis.RedisError as exc:
            return Readiness(False, f"Redis broker unreachable ({type(exc).__name__})")
        served = sorted({queue for worker in workers for queue in worker["queues"]})
        checks = {"mode": self.mode, "workers": len(workers), "queues_served": served,
                  "queues_unserved": sorted(t.value for t in TaskName if t.value not in served)}
        if not workers:
            return Readiness(False, "No worker with warmed models is consuming any queue", checks)
        return Readiness(True, f"{len(workers)} worker process(es) consuming {', '.join(served)}", checks)

    def stop(self) -> None:
        self._redis.close()
