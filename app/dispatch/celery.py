"""Celery mode: jobs go to the broker (Redis or RabbitMQ) on the queue named after their task.

The gateway sends tasks by name with a bare Celery client, so it never imports worker code or ONNX Runtime.
Job state stays in Redis whichever the broker.
"""

from __future__ import annotations

import logging

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from app.config import Settings
from app.dispatch.base import Readiness
from app.errors import ServiceUnavailable
from app.dispatch.queues import task_queues, transport_options
from app.schemas.jobs import Job, JobStatus, utcnow
from app.storage.jobs import JobStore
from app.schemas.tasks import RUN_JOB_TASK, TaskName
from app.storage.heartbeats import holds, live_workers

log = logging.getLogger(__name__)

UNACKED_KEY = "unacked"
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


class CeleryDispatcher:
    mode = "celery"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = Celery("medimg-gateway", broker=settings.celery_broker_url)
        self.client.conf.update(
            broker_transport_options=transport_options(settings),
            broker_connection_retry_on_startup=True,
            task_serializer="json",
            task_queues=task_queues(settings),  # declared as the workers declare them (RabbitMQ compares)
        )
        self._redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=3)

    def start(self) -> None:
        pass

    def submit(self, job: Job) -> None:
        try:
            # The task id is the job id, so a queued message can be found by its job (see recover_lost).
            self.client.send_task(
                RUN_JOB_TASK, args=[job.id], task_id=job.id, queue=job.task.value, retry=True,
                retry_policy=PUBLISH_RETRY,
            )
        except (OperationalError, redis.RedisError, OSError) as exc:
            raise ServiceUnavailable(
                f"The job queue ({self._broker_name} broker) cannot be reached ({type(exc).__name__}); the job "
                "was not accepted, retry later"
            ) from exc

    @property
    def _broker_name(self) -> str:
        return "Redis" if self.settings.broker_is_redis else "RabbitMQ"

    def readiness(self) -> Readiness:
        try:
            self._redis.ping()
            workers = live_workers(self._redis)
        except redis.RedisError as exc:
            return Readiness(False, f"Redis (job store) unreachable ({type(exc).__name__})")
        if not self.settings.broker_is_redis:
            try:
                with self.client.connection_for_write() as connection:
                    connection.ensure_connection(max_retries=1, timeout=3)
            except (OperationalError, OSError) as exc:
                return Readiness(False, f"RabbitMQ broker unreachable ({type(exc).__name__})")
        served = sorted({queue for worker in workers for queue in worker["queues"]})
        checks = {"mode": self.mode, "broker": self._broker_name.lower(), "workers": len(workers),
                  "queues_served": served,
                  "queues_unserved": sorted(t.value for t in TaskName if t.value not in served),
                  "model_providers": _model_providers(workers)}
        if not workers:
            return Readiness(False, "No worker with warmed models is consuming any queue", checks)
        return Readiness(True, f"{len(workers)} worker process(es) consuming {', '.join(served)}", checks)

    def recover_abandoned(self, jobs: JobStore) -> list[str]:
        """Sends again every running job whose worker's heartbeat expired or no longer lists it.

        A whole worker killed (a container, a node) leaves its jobs `running`: Redis keeps their messages
        unacknowledged until the visibility timeout (twice the hard time limit), and on RabbitMQ the message
        that came straight back stood down while the dead worker's beat still lived. The job goes back to
        `queued` by compare-and-set on its attempts, so of several gateways one resends it; the runner lets
        only one delivery start it and only the latest attempt record an outcome.
        """
        now = utcnow()
        grace = self.settings.worker_heartbeat_ttl
        recovered = []
        for job in jobs.unfinished():
            if job.status is not JobStatus.RUNNING or not job.worker or job.started_at is None:
                continue
            if (now - job.started_at).total_seconds() <= grace or holds(self._redis, job.worker, job.id):
                continue
            abandoned_by = job.worker
            requeued = job.model_copy(update={"status": JobStatus.QUEUED, "worker": None})
            if jobs.transition(requeued, job.attempts):
                log.warning("job %s: its worker %s stopped beating; sending the job again", job.id, abandoned_by)
                self.submit(requeued)
                recovered.append(job.id)
        return recovered

    def recover_lost(self, jobs: JobStore, older_than_seconds: float) -> list[str]:
        """Sends again every unfinished job whose message is in no queue and in no worker's hands.

        Redis hands a message to a worker with BRPOP; if the server stops between the pop and the reply,
        the message is gone though the job is still queued. A running job's message stays in the
        `unacked` hash until its worker acknowledges it (late acks), so a running job without one has
        lost its worker and its message. Resending is safe: the job store lets only one delivery start
        a job and only the latest attempt record an outcome.
        """
        if not self.settings.broker_is_redis:
            return []  # RabbitMQ confirms each publish and keeps durable queues on disk; it cannot be listed
        now = utcnow()
        stale = [job for job in jobs.unfinished()
                 if (now - (job.started_at or job.created_at)).total_seconds() > older_than_seconds]
        if not stale:
            return []
        in_broker = self._messages_in_broker({job.task.value for job in stale})
        lost = [job for job in stale if job.id.encode() not in in_broker]
        for job in lost:
            log.warning("job %s is %s but its message is gone from the broker; sending it again", job.id,
                        job.status.value)
            self.submit(job)
        return [job.id for job in lost]

    def _messages_in_broker(self, queues: set[str]) -> bytes:
        # kombu keeps one list per queue (and per priority step) and an `unacked` hash of delivered messages.
        chunks = []
        for queue in queues:
            for key in [queue, *(f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS)]:
                chunks.extend(self._redis.lrange(key, 0, -1))
        chunks.extend(self._redis.hvals(UNACKED_KEY))
        return b"\n".join(chunks)

    def stop(self) -> None:
        self._redis.close()


def _model_providers(workers: list[dict]) -> dict[str, list[str]]:
    """`model-id/version` -> the providers its sessions got, over all live workers (several when they differ)."""
    seen: dict[str, set[str]] = {}
    for worker in workers:
        providers = worker.get("providers")
        for model, got in (providers.items() if isinstance(providers, dict) else ()):
            seen.setdefault(model, set()).add(got[0] if got else "none")
    return {model: sorted(got) for model, got in sorted(seen.items())}
