"""Both export outboxes keep the same promises: a record is created once, one attempt at a time holds it,
only that attempt records its outcome, and a lost attempt's record becomes due again when its lease ends."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from app.schemas.exports import ExportRecord, ExportStatus
from app.storage.exports import ExportStore, RedisExportStore, SqliteExportStore, begin, finish


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path, redis_server) -> Iterator[ExportStore]:
    if request.param == "sqlite":
        yield SqliteExportStore(tmp_path / "jobs.sqlite3")
    else:
        client = redis.Redis.from_url(redis_server.url)
        yield RedisExportStore(client)
        client.close()


def new_record(due_in: float = 0.0) -> ExportRecord:
    return ExportRecord(job_id=str(uuid.uuid4()), destination="pacs", due_at=time.time() + due_in)


def test_add_keeps_an_existing_record(store: ExportStore) -> None:
    record = new_record()
    store.add([record])
    held = begin(store, record.job_id, "pacs", time.time(), time.time() + 60)
    store.add([record])  # the job ran twice: its export is not reset
    assert store.get(record.job_id, "pacs") == held
    assert [r.destination for r in store.for_job(record.job_id)] == ["pacs"]


def test_one_attempt_at_a_time_and_only_it_records_the_outcome(store: ExportStore) -> None:
    record = new_record()
    store.add([record])
    now = time.time()
    winners = []

    def attempt() -> None:
        held = begin(store, record.job_id, "pacs", now, now + 60)
        if held is not None:
            winners.append(held)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1 and winners[0].attempts == 1 and winners[0].status is ExportStatus.SENDING
    assert (record.job_id, "pacs") not in [d[:2] for d in store.due(now + 1)]  # held, not due

    # Its lease runs out (the worker died): a second attempt takes over, and the first may not finish it.
    later = now + 61
    assert [d[:2] for d in store.due(later) if d[0] == record.job_id] == [(record.job_id, "pacs")]
    second = begin(store, record.job_id, "pacs", later, later + 60)
    assert second is not None and second.attempts == 2
    assert not finish(store, winners[0], winners[0].model_copy(update={"status": ExportStatus.SENT}))
    assert finish(store, second, second.model_copy(update={"status": ExportStatus.DEAD, "due_at": None,
                                                           "last_error": "refused"}))
    assert store.get(record.job_id, "pacs").status is ExportStatus.DEAD
    assert record.job_id in [r.job_id for r in store.dead()]
    assert begin(store, record.job_id, "pacs", later + 100, later + 160) is None  # dead stays dead


def test_a_retry_waits_until_due(store: ExportStore) -> None:
    record = new_record()
    store.add([record])
    now = time.time()
    held = begin(store, record.job_id, "pacs", now, now + 60)
    assert finish(store, held, held.model_copy(update={"status": ExportStatus.PENDING, "due_at": now + 30}))
    assert begin(store, record.job_id, "pacs", now + 1, now + 61) is None  # an early duplicate message
    assert begin(store, record.job_id, "pacs", now + 31, now + 91).attempts == 2
    store.delete_job(record.job_id)
    assert store.for_job(record.job_id) == [] and record.job_id not in [d[0] for d in store.due(now + 1000)]
