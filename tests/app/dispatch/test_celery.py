"""Celery dispatch on a real Redis: routine and STAT land on kombu's priority lists; waiting routine work ages."""

from __future__ import annotations

import contextlib
import io
import json
import time
from datetime import timedelta

import pytest
import redis
from kombu import Consumer

from app.dispatch.celery import AGED_SUFFIX, PRIORITY_SEPARATOR, CeleryDispatcher
from app.dispatch.priority import celery_queues
from app.schemas.jobs import Job, JobPriority, JobStatus, ModelRef, utcnow
from app.schemas.tasks import TaskName
from app.storage.jobs import RedisJobStore
from tests.utils.jobs import make_settings
from devkit.services import RedisServer

TASK = TaskName.LUNG_NODULE_DETECTION
MODEL = ModelRef(id="m", version=1, sha256="0" * 64, research_use_only=True)


def queued_job(name: str, waited_seconds: float, priority=JobPriority.ROUTINE, **fields) -> Job:
    return Job(id=name, task=TASK, model=MODEL, priority=priority,
               created_at=utcnow() - timedelta(seconds=waited_seconds), **fields)


def task_ids(client: redis.Redis, key: str) -> list[str]:
    return [json.loads(raw)["headers"]["id"] for raw in reversed(client.lrange(key, 0, -1))]  # oldest first


def test_promote_aged_sends_a_stat_copy_of_long_waiting_routine_jobs(redis_server, tmp_path) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/4"
    client = redis.Redis.from_url(url)
    client.flushdb()
    dispatcher = CeleryDispatcher(make_settings(tmp_path, redis_url=url))
    jobs = RedisJobStore(client)
    try:
        for job in [queued_job("old", 400), queued_job("fresh", 10), queued_job("stat", 400, JobPriority.STAT),
                    queued_job("running", 400, status=JobStatus.RUNNING, attempts=1)]:
            jobs.create(job)
            dispatcher.submit(job)
        routine_list, stat_list = f"{TASK.value}{PRIORITY_SEPARATOR}9", TASK.value  # step 0 is the queue's own list
        assert task_ids(client, routine_list) == ["old", "fresh", "running"]
        assert task_ids(client, stat_list) == ["stat"]

        assert dispatcher.promote_aged(jobs, aging_seconds=300) == ["old"]
        assert dispatcher.promote_aged(jobs, aging_seconds=300) == []  # once only
        assert task_ids(client, stat_list) == ["stat", "old" + AGED_SUFFIX]
        assert jobs.get("old").promoted
    finally:
        dispatcher.stop()
        client.flushdb()


def test_a_queued_job_whose_message_a_worker_took_before_a_redis_restart_is_sent_again(tmp_path) -> None:
    """A worker took the message (kombu's `unacked` hash) but had not started the job when Redis restarted: its
    consumer forgets the message and kombu's restore of it fails against the stopped server, so it stays in
    `unacked` until the visibility timeout. The job is still queued: the lost-message check must resend it,
    not count it as in a worker's hands (it once did, and the job stalled `queued`)."""
    if not RedisServer.available():
        pytest.skip("redis-server is not installed, so Redis cannot be restarted by the test")
    server = RedisServer(tmp_path / "redis").start()
    dispatcher = CeleryDispatcher(make_settings(tmp_path, redis_url=server.url))
    client = redis.Redis.from_url(server.url)
    jobs = RedisJobStore(client)
    try:
        for job in [queued_job("taken", 60), queued_job("running", 60, status=JobStatus.RUNNING, attempts=1)]:
            jobs.create(job)
            dispatcher.submit(job)
        worker = dispatcher.client.connection_for_read()
        taken = []
        Consumer(worker.default_channel, queues=celery_queues([TASK.value]), accept=["json"],
                 callbacks=[lambda body, message: taken.append(message)]).consume()
        while len(taken) < 2:
            worker.drain_events(timeout=5)
        assert client.hlen("unacked") == 2  # delivered, not acknowledged: late acks

        server.stop()  # persistence is on (appendonly), as in the compose file
        with contextlib.suppress(Exception), contextlib.redirect_stderr(io.StringIO()):
            worker.release()  # kombu's restore of the unacked messages fails: Redis is down
        server.start()
        assert client.hlen("unacked") == 2  # orphans: their consumer is gone
        time.sleep(0.3)

        # Only the queued job: a running job's message stays unacknowledged for as long as it runs (a dead
        # worker's jobs are the heartbeat sweep's).
        assert dispatcher.recover_lost(jobs, older_than_seconds=0.2) == ["taken"]
        assert task_ids(client, f"{TASK.value}{PRIORITY_SEPARATOR}9") == ["taken"]
        assert dispatcher.recover_lost(jobs, older_than_seconds=0.2) == []  # its message waits in the queue
    finally:
        dispatcher.stop()
        client.close()
        server.stop()
