"""Both job stores keep the same promises: idempotency per caller, no resurrection after delete."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from app.errors import JobNotFound
from app.schemas.jobs import Job, JobStatus, ModelRef
from app.schemas.tasks import TaskName
from app.storage.jobs import JobStore, RedisJobStore, SqliteJobStore


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path, redis_server) -> Iterator[JobStore]:
    if request.param == "sqlite":
        yield SqliteJobStore(tmp_path / "jobs.sqlite3")
    else:
        client = redis.Redis.from_url(redis_server.url)
        yield RedisJobStore(client)
        client.close()


def new_job(**fields) -> Job:
    model = ModelRef(id="m", version=1, sha256="0" * 64, research_use_only=True)
    return Job(**{"id": str(uuid.uuid4()), "task": TaskName.DR_GRADING, "model": model, **fields})


def test_create_and_get_roundtrip(store: JobStore) -> None:
    job, created = store.create(new_job(options={"referable_threshold": 0.3}))
    assert created
    assert store.get(job.id) == job


def test_create_idempotency_key_per_caller(store: JobStore) -> None:
    first, _ = store.create(new_job(caller="a", idempotency_key="k"))
    again, created = store.create(new_job(caller="a", idempotency_key="k"))
    other, other_created = store.create(new_job(caller="b", idempotency_key="k"))
    assert not created and again.id == first.id
    assert other_created and other.id != first.id


def test_save_after_delete_does_not_resurrect(store: JobStore) -> None:
    job, _ = store.create(new_job())
    store.delete(job.id)
    job.status = JobStatus.SUCCEEDED
    assert store.save(job) is False
    with pytest.raises(JobNotFound):
        store.get(job.id)


def test_unfinished_lists_queued_and_running_only(store: JobStore) -> None:
    queued, _ = store.create(new_job())
    running, _ = store.create(new_job(status=JobStatus.RUNNING))
    done, _ = store.create(new_job())
    done.status = JobStatus.SUCCEEDED
    store.save(done)
    ids = {j.id for j in store.unfinished()}
    assert {queued.id, running.id} <= ids and done.id not in ids


def test_listeners_hear_each_job_that_finishes_and_only_those(store: JobStore) -> None:
    """Long polls wake on these notices; a running job or a lost transition race announces nothing."""
    import queue

    heard: queue.Queue[str] = queue.Queue()
    stop = store.listen_finished(lambda job_id, job: heard.put(job_id))
    try:
        time.sleep(0.2)  # the Redis relay subscribes in its own thread
        running, _ = store.create(new_job())
        running.status, running.attempts = JobStatus.RUNNING, 1
        assert store.transition(running, 0)
        failed, _ = store.create(new_job())
        failed.status = JobStatus.FAILED
        assert store.save(failed)
        running.status = JobStatus.SUCCEEDED
        assert store.transition(running, 1)
        assert not store.transition(running, 1)  # already finished: no second notice
        assert [heard.get(timeout=5), heard.get(timeout=5)] == [failed.id, running.id]
        time.sleep(0.2)
        assert heard.empty()
    finally:
        stop()
    late, _ = store.create(new_job())
    late.status = JobStatus.SUCCEEDED
    store.save(late)
    time.sleep(0.2)
    assert heard.empty(), "a stopped listener still hears"


def test_a_notice_carries_the_finished_job_when_this_process_wrote_it(store: JobStore) -> None:
    """Embedded mode: a long poll answers from the notice, without reading the job back."""
    import queue

    heard: queue.Queue = queue.Queue()
    stop = store.listen_finished(lambda job_id, job: heard.put((job_id, job)))
    try:
        time.sleep(0.2)
        job, _ = store.create(new_job())
        job.status, job.attempts = JobStatus.SUCCEEDED, 0
        assert store.transition(job, 0)
        job_id, carried = heard.get(timeout=5)
    finally:
        stop()
    assert job_id == job.id
    if isinstance(store, SqliteJobStore):
        assert carried is not None and carried.status is JobStatus.SUCCEEDED and carried.id == job.id
    else:
        assert carried is None  # Redis: the id crosses processes; readers read the job back


def test_transition_applies_only_over_an_unfinished_record_with_the_expected_starts(store: JobStore) -> None:
    """Two deliveries of one job race through `transition`: exactly one starts it, and only the delivery
    that started the latest attempt records its outcome; a deleted job stays deleted."""
    job, _ = store.create(new_job())
    first = job.model_copy(update={"status": JobStatus.RUNNING, "attempts": 1})
    second = job.model_copy(update={"status": JobStatus.RUNNING, "attempts": 1})
    assert not store.transition(first, 1)  # the stored record has 0 starts, not 1
    assert store.transition(first, 0)
    assert not store.transition(second, 0)  # the other delivery lost the start
    assert store.get(job.id).attempts == 1

    stale = first.model_copy(update={"status": JobStatus.SUCCEEDED})
    retried = first.model_copy(update={"attempts": 2})
    assert store.transition(retried, 1)  # redelivered after its worker died: attempt 2 starts
    assert not store.transition(stale, 1)  # attempt 1's late outcome is discarded
    assert store.get(job.id).status is JobStatus.RUNNING

    done = retried.model_copy(update={"status": JobStatus.FAILED})
    assert store.transition(done, 2)
    assert not store.transition(done.model_copy(update={"status": JobStatus.SUCCEEDED}), 2)  # finished stays
    assert store.get(job.id).status is JobStatus.FAILED

    store.delete(job.id)
    assert not store.transition(retried, 2)
    with pytest.raises(JobNotFound):
        store.get(job.id)
