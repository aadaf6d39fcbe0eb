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
from devkit.services import RedisServer


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
    key = "medimg:jobs:unfinished:dr-grading"  # the key name in deploy/base/workers.yaml's ScaledObjects
    before = client.llen(key)  # LLEN is the redis scaler's query
    job, _ = store.create(new_job())
    assert client.llen(key) == before + 1
    job.status = JobStatus.RUNNING
    assert store.transition(job, 0)
    assert client.llen(key) == before + 1  # running still counts: its worker is busy
    job.status = JobStatus.SUCCEEDED
    assert store.transition(job, 0)
    assert client.llen(key) == before  # the outcome and the count's decrement are one step
    assert not store.transition(job, 0) and client.llen(key) == before
    client.close()


def test_redis_every_path_out_leaves_the_count_once(redis_server) -> None:
    client = redis.Redis.from_url(redis_server.url)
    store = RedisJobStore(client)
    key = RedisJobStore.unfinished_list(TaskName.DR_GRADING)
    before = client.llen(key)
    failed, deleted_running, deleted_finished, saved = (store.create(new_job())[0] for _ in range(4))
    assert client.llen(key) == before + 4
    failed.status = JobStatus.FAILED  # e.g. the runner's max-deliveries path
    assert store.transition(failed, 0)
    deleted_running.status = JobStatus.RUNNING
    assert store.transition(deleted_running, 0)
    store.delete(deleted_running.id)  # DELETE /v1/jobs/{id} while it runs
    store.delete(deleted_running.id)
    deleted_finished.status = JobStatus.SUCCEEDED
    store.save(deleted_finished)
    store.delete(deleted_finished.id)  # the retention purge deletes finished jobs
    saved.status = JobStatus.SUCCEEDED
    store.save(saved)
    store.save(saved)
    assert client.llen(key) == before
    client.close()


def test_redis_unfinished_cleans_lists_of_vanished_records(redis_server) -> None:
    client = redis.Redis.from_url(redis_server.url)
    store = RedisJobStore(client)
    before = client.llen("medimg:jobs:unfinished:dr-grading")
    job, _ = store.create(new_job())
    client.delete(RedisJobStore.PREFIX + job.id)  # record lost (e.g. restored from an older snapshot)
    assert job.id not in {j.id for j in store.unfinished()}
    assert client.llen("medimg:jobs:unfinished:dr-grading") == before
    client.close()


def test_redis_recording_an_outcome_with_10000_queued_stays_sub_millisecond(tmp_path) -> None:
    """The count leaves in O(1): recording one outcome costs the same with 10,000 jobs queued behind it."""
    server = RedisServer(tmp_path / "redis").start()  # private: 10,000 jobs must not land in the session's Redis
    try:
        client = redis.Redis.from_url(server.url)
        store = RedisJobStore(client)
        queued = [new_job() for _ in range(10_000)]
        pipe = client.pipeline(transaction=False)  # the store's own create script, 10,000 calls in one round trip
        for job in queued:
            store._create(keys=store._keys(job.id, job.task), args=store._args(job), client=pipe)
        pipe.execute()
        assert store.unfinished_count(TaskName.DR_GRADING) == 10_000
        client.config_resetstat()
        for job in queued[:200]:
            job.status = JobStatus.SUCCEEDED
            assert store.transition(job, 0)
        # Redis's own time per script call (round trips on a loaded test machine would measure the machine).
        # The former LREM of an id from a 10,000-long list took O(queue length) here.
        stats = client.info("commandstats")["cmdstat_evalsha"]
        assert stats["calls"] >= 200  # the first may be refused with NOSCRIPT before the script is loaded
        assert stats["usec_per_call"] < 1000, stats
        assert store.unfinished_count(TaskName.DR_GRADING) == 10_000 - 200
    finally:
        server.stop()
