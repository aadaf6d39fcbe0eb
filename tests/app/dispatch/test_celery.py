"""Celery dispatch on a real Redis: routine and STAT land on kombu's priority lists; waiting routine work ages."""

from __future__ import annotations

import json
from datetime import timedelta

import redis

from app.dispatch.celery import AGED_SUFFIX, PRIORITY_SEPARATOR, CeleryDispatcher
from app.schemas.jobs import Job, JobPriority, JobStatus, ModelRef, utcnow
from app.schemas.tasks import TaskName
from app.storage.jobs import RedisJobStore
from tests.utils.jobs import make_settings

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
