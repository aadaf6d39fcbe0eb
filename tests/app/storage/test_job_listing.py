"""Both job stores list a caller's jobs newest first, filtered, in pages that neither skip nor repeat a job."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.errors import InvalidRequest
from app.schemas.jobs import Job, JobStatus
from app.schemas.tasks import TaskName
from app.storage.job_listing import JobQuery, Position, RedisJobIndex
from app.storage.jobs import JobStore, RedisJobStore, SqliteJobStore
from tests.app.storage.test_jobs import new_job, store  # noqa: F401  (the fixture runs each test on both stores)


@pytest.fixture
def epoch() -> datetime:
    """A moment no other test's jobs share (the Redis store is shared), so admin listings can be bounded to it.

    Kept before 2255, when microseconds since 1970 outgrow the exact integers of a double (Redis's scores):
    the old draw, to 2274, failed about one run in fourteen.
    """
    return datetime(2001, 1, 1, tzinfo=UTC) + timedelta(days=uuid.uuid4().int % 50_000)


def make_jobs(store: JobStore, caller: str, epoch: datetime, seconds: list[float], **fields) -> list[Job]:
    jobs = []
    for offset in seconds:
        job, _ = store.create(new_job(caller=caller, created_at=epoch + timedelta(seconds=offset), **fields))
        jobs.append(job)
    return jobs


def newest_first(jobs: list[Job]) -> list[str]:
    return [j.id for j in sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)]


def all_pages(store: JobStore, query: JobQuery) -> list[list[str]]:
    pages, position = [], query.after
    while True:
        page = store.list_jobs(JobQuery(**{**query.__dict__, "after": position}))
        pages.append([j.id for j in page.jobs])
        if page.next is None:
            return pages
        position = Position.decode(page.next.encode())  # through the cursor string, as a client would
        assert len(pages) < 50, "pagination does not end"


def test_list_jobs_only_the_callers_newest_first(store: JobStore, epoch: datetime) -> None:
    mine = make_jobs(store, f"a-{uuid.uuid4()}", epoch, [3, 1, 2, 5])
    make_jobs(store, f"b-{uuid.uuid4()}", epoch, [4, 6])
    page = store.list_jobs(JobQuery(owner=mine[0].caller, limit=10))
    assert [j.id for j in page.jobs] == newest_first(mine)
    assert page.next is None


def test_list_jobs_admin_sees_every_caller(store: JobStore, epoch: datetime) -> None:
    jobs = make_jobs(store, f"a-{uuid.uuid4()}", epoch, [1, 3]) + make_jobs(store, f"b-{uuid.uuid4()}", epoch, [2])
    page = store.list_jobs(JobQuery(owner=None, created_after=epoch, created_before=epoch + timedelta(seconds=10)))
    assert [j.id for j in page.jobs] == newest_first(jobs)


def test_list_jobs_filters_status_task_and_time(store: JobStore, epoch: datetime) -> None:
    caller = f"a-{uuid.uuid4()}"
    early, middle, late = make_jobs(store, caller, epoch, [1, 2, 3])
    segmentation, = make_jobs(store, caller, epoch, [4], task=TaskName.COVID_LESION_SEGMENTATION)
    middle.status = JobStatus.SUCCEEDED
    assert store.save(middle)

    def ids(**filters) -> list[str]:
        return [j.id for j in store.list_jobs(JobQuery(owner=caller, **filters)).jobs]

    assert ids(status=JobStatus.SUCCEEDED) == [middle.id]
    assert ids(status=JobStatus.QUEUED) == [segmentation.id, late.id, early.id]
    assert ids(task=TaskName.COVID_LESION_SEGMENTATION) == [segmentation.id]
    assert ids(task=TaskName.DR_GRADING, status=JobStatus.QUEUED) == [late.id, early.id]
    # Bounds are exclusive: created_after=early's time leaves it out.
    assert ids(created_after=early.created_at, created_before=segmentation.created_at) == [late.id, middle.id]


def test_list_jobs_pages_neither_skip_nor_repeat(store: JobStore, epoch: datetime) -> None:
    caller = f"a-{uuid.uuid4()}"
    # Three jobs share one creation time: the id breaks the tie, so the order stays total.
    jobs = make_jobs(store, caller, epoch, [1, 2, 2, 2, 3, 4, 5])
    pages = all_pages(store, JobQuery(owner=caller, limit=3))
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == newest_first(jobs)

    # A job created while a caller pages lands before the first page, not on a later one.
    first = store.list_jobs(JobQuery(owner=caller, limit=2))
    newer, = make_jobs(store, caller, epoch, [9])
    rest = all_pages(store, JobQuery(owner=caller, limit=2, after=first.next))
    assert newer.id not in [i for p in rest for i in p]
    assert [j.id for j in first.jobs] + [i for p in rest for i in p] == newest_first(jobs)


def test_list_jobs_pages_with_filters(store: JobStore, epoch: datetime) -> None:
    caller = f"a-{uuid.uuid4()}"
    finished = make_jobs(store, caller, epoch, range(0, 12))
    for job in finished[::3]:
        job.status = JobStatus.FAILED
        assert store.save(job)
    pages = all_pages(store, JobQuery(owner=caller, status=JobStatus.FAILED, limit=2))
    assert [i for p in pages for i in p] == newest_first(finished[::3])
    assert [len(p) for p in pages] == [2, 2]


def test_list_jobs_leaves_out_deleted_jobs(store: JobStore, epoch: datetime) -> None:
    caller = f"a-{uuid.uuid4()}"
    kept, gone = make_jobs(store, caller, epoch, [1, 2])
    store.delete(gone.id)
    assert [j.id for j in store.list_jobs(JobQuery(owner=caller)).jobs] == [kept.id]


def test_list_jobs_redis_indexes_jobs_stored_before_the_index(redis_server, epoch: datetime) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    older = new_job(caller=f"a-{uuid.uuid4()}", created_at=epoch)
    client.set(RedisJobStore.PREFIX + older.id, older.model_dump_json())  # as a release without the index left it
    client.delete(RedisJobIndex.BUILT)
    store = RedisJobStore(client)
    newer, _ = store.create(new_job(caller=older.caller, created_at=epoch + timedelta(seconds=1)))
    assert [j.id for j in store.list_jobs(JobQuery(owner=older.caller)).jobs] == [newer.id, older.id]
    assert client.exists(RedisJobIndex.BUILT)
    client.close()


def test_list_jobs_sqlite_store_made_before_the_listing_index(tmp_path, epoch: datetime) -> None:
    import sqlite3

    older = new_job(caller="a", created_at=epoch)
    db = sqlite3.connect(tmp_path / "jobs.sqlite3")
    db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, caller TEXT NOT NULL, idempotency_key TEXT,"
               " status TEXT NOT NULL, document TEXT NOT NULL)")  # the table as the release before made it
    db.execute("INSERT INTO jobs VALUES (?, ?, NULL, ?, ?)", (older.id, "a", "queued", older.model_dump_json()))
    db.commit()
    db.close()
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    newer, _ = store.create(new_job(caller="a", created_at=epoch + timedelta(seconds=1)))
    assert [j.id for j in store.list_jobs(JobQuery(owner="a")).jobs] == [newer.id, older.id]


@pytest.mark.parametrize("cursor", ["nonsense!", "", Position(1, "x").encode()[:-3], "WzEsMl0"])
def test_cursor_decode_refuses_foreign_cursor(cursor: str) -> None:
    with pytest.raises(InvalidRequest, match="cursor"):
        Position.decode(cursor)
