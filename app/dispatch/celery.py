"""Celery mode: jobs go to the broker (the job store's Redis, or MEDIMG_BROKER_URL) on their task's queue,
at their priority (app/dispatch/priority.py).

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
from app.dispatch.priority import (REDIS_PRIORITY_STEPS, broker_is_redis, broker_priority,
                                   broker_transport_options, celery_queues, queue_rank)
from app.errors import ServiceUnavailable
from app.schemas.jobs import Job, JobPriority, JobStatus, QueuePosition, utcnow
from app.storage.jobs import JobStore
from app.schemas.tasks import RUN_JOB_TASK, TaskName
from app.storage.heartbeats import holds, live_workers

log = logging.getLogger(__name__)

UNACKED_KEY = "unacked"
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = tuple(step for step in REDIS_PRIORITY_STEPS if step)  # step 0 is the queue's own list
AGED_SUFFIX = ".aged"  # task id of the STAT copy of a routine job that waited too long
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


class CeleryDispatcher:
    mode = "celery"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker_url = settings.celery_broker_url
        self.client = Celery("medimg-gateway", broker=self.broker_url)
        self.client.conf.update(
            broker_transport_options=broker_transport_options(self.broker_url, settings.visibility_timeout),
            broker_connection_retry_on_startup=True,
            task_serializer="json",
            task_queues=celery_queues([t.value for t in TaskName]),
        )
        self._redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=3)

    def start(self) -> None:
        pass

    def submit(self, job: Job) -> None:
        # The task id is the job id (or that of the message that started it), so a queued message can be found
        # by its job (see recover_lost) and a message sent again takes over a job whose worker was lost.
        priority = JobPriority.STAT if job.promoted else job.priority
        self._send(job, job.delivery_id or job.id, priority)

    def _send(self, job: Job, task_id: str, priority: JobPriority) -> None:
        try:
            self.client.send_task(
                RUN_JOB_TASK, args=[job.id], task_id=task_id, queue=job.task.value, retry=True,
                retry_policy=PUBLISH_RETRY, priority=broker_priority(priority, self.broker_url),
            )
        except (OperationalError, redis.RedisError, OSError) as exc:
            raise ServiceUnavailable(
                f"The job queue (broker) cannot be reached ({type(exc).__name__}); the job was not "
                "accepted, retry later"
            ) from exc

    def promote_aged(self, jobs: JobStore, aging_seconds: float) -> list[str]:
        """Sends a STAT copy of each routine job queued longer than `aging_seconds`, so none starves.

        A broker cannot reorder a message once sent. The copy has its own task id; whichever message a worker
        takes first starts the job, and the other stands down (workers/runner.py compares delivery ids).
        """
        now = utcnow()
        aged = [job for job in jobs.unfinished()
                if job.status is JobStatus.QUEUED and job.priority is JobPriority.ROUTINE and not job.promoted
                and (now - job.created_at).total_seconds() >= aging_seconds]
        promoted = []
        for job in aged:
            job.promoted = True
            if not jobs.transition(job, 0):  # a worker started it meanwhile
                continue
            log.info("job %s waited %.0fs as routine; sending it again as STAT", job.id, aging_seconds)
            self._send(job, job.id + AGED_SUFFIX, JobPriority.STAT)
            promoted.append(job.id)
        return promoted

    def queue_position(self, job: Job, jobs: JobStore) -> QueuePosition | None:
        """Estimated from the job store: queued jobs of the task ranked ahead of this one."""
        if job.status is not JobStatus.QUEUED:
            return None
        aging = self.settings.priority_aging_seconds
        rank = queue_rank(job.priority, job.created_at, aging)
        ahead = sum(1 for other in jobs.unfinished_of_task(job.task)
                    if other.status is JobStatus.QUEUED and other.id != job.id
                    and queue_rank(other.priority, other.created_at, aging) < rank)
        return QueuePosition(lane=job.task.value, position=ahead + 1, exact=False)

    def readiness(self) -> Readiness:
        try:
            self._redis.ping()
            workers = live_workers(self._redis)
        except redis.RedisError as exc:
            return Readiness(False, f"Redis (job store) unreachable ({type(exc).__name__})")
        broker = "redis" if broker_is_redis(self.broker_url) else "rabbitmq"
        if broker != "redis":
            try:
                with self.client.connection_for_write() as connection:
                    connection.ensure_connection(max_retries=1, timeout=3)
            except (OperationalError, OSError) as exc:
                return Readiness(False, f"RabbitMQ broker unreachable ({type(exc).__name__})")
        served = sorted({queue for worker in workers for queue in worker["queues"]})
        checks = {"mode": self.mode, "broker": broker, "workers": len(workers),
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
        if self._redis.info("server")["uptime_in_seconds"] <= grace:
            return []  # Redis just restarted: beats that expired while it was down are not deaths yet
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
        if not broker_is_redis(self.broker_url):
            return []  # only Redis lists can be read back; another broker keeps unacked messages itself
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
