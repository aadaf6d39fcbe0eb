"""Queued-plus-running counts per task, which the worker autoscaler (KEDA's redis scaler) reads.

The Redis is the session's, shared with the Celery-mode service: counts are compared with a baseline, and
nothing here flushes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from app.schemas.jobs import JobStatus
from app.schemas.tasks import TaskName
from app.storage.jobs import JobStore, RedisJobStore, SqliteJobStore
from tests.app.storage.test_jobs import new_job


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path, redis_server) -> Iterator[JobStore]:
    if request.param == "sqlite":
        yield SqliteJobStore(tmp_path / "jobs.sqlite3")
    else:
        client = redis.Redis.from_url(redis_server.url)
        yield RedisJobStore(client)
        client.close()


def test_unfinished_count_counts_queued_and_running(store: JobStore) -> None:
    before = {task: store.unfinished_count(task) for task in TaskName}
    queued, _ = store.create(new_job())
    running, _ = store.create(new_job())
    running.status = JobStatus.RUNNING
    store.save(running)
    assert store.unfinished_count(TaskName.DR_GRADING) == before[TaskName.DR_GRADING] + 2
    assert store.unfinished_count(TaskName.THYROID_MALIGNANCY) == before[TaskName.THYROID_MALIGNANCY]


def test_unfinished_count_drops_finished_and_deleted(store: JobStore) -> None:
    before = store.unfinished_count(TaskName.DR_GRADING)
    done, _ = store.create(new_job())
    gone, _ = store.create(new_job())
    store.create(new_job())
    done.status = JobStatus.FAILED
    store.save(done)
    store.save(done)  # saving a finished job again changes nothing
    store.delete(gone.id)
    assert store.unfinished_count(TaskName.DR_GRADING) == before + 1


def test_unfinished_count_idempotent_replay_not_counted_twice(store: JobStore) -> None:
    before = store.unfinished_count(TaskName.DR_GRADING)
    key = str(uuid.uuid4())
    store.create(new_job(caller="a", idempotency_key=key))
    store.create(new_job(caller="a", idempotency_key=key))
    assert store.unfinished_count(TaskName.DR_GRADING) == before + 1


def test_redis_unfinished_list_is_what_keda_reads(redis_server) -> None:
    client = redis.Redis.from_url(redis_server.url)
    store = RedisJobStore(client)
    key = "medimg:jobs:unfinished:dr-grading"
    job, _ = store.create(new_job())
    # The key name in deploy/base/workers.yaml's ScaledObjects; LLEN is the redis scaler's query.
    assert job.id.encode() in client.lrange(key, 0, -1)
    job.status = JobStatus.RUNNING
    store.save(job)
    assert job.id.encode() in client.lrange(key, 0, -1)  # running still counts: its worker is busy
    job.status = JobStatus.SUCCEEDED
    store.save(job)
    assert job.id.encode() not in client.lrange(key, 0, -1)
    client.close()


def test_redis_unfinished_cleans_lists_of_vanished_records(redis_server) -> None:
    client = redis.Redis.from_url(redis_server.url)
    store = RedisJobStore(client)
    job, _ = store.create(new_job())
    client.delete(RedisJobStore.PREFIX + job.id)  # record lost (e.g. restored from an older snapshot)
    assert job.id not in {j.id for j in store.unfinished()}
    assert job.id.encode() not in client.lrange("medimg:jobs:unfinished:dr-grading", 0, -1)
    client.close()
