"""The export outbox: one record per (job, destination), in SQLite (embedded) or Redis (Celery mode).

Kept apart from the job records (their own table, their own keys), so the job store's transitions never
touch them. An attempt first *begins* a record: atomically, only a record that is pending and due, or
whose previous attempt's lease ran out, can be begun, so two senders never send one record at once. The
attempt then *finishes* it, and only while it still holds it (same status and attempt number).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import redis

from app.config import Settings
from app.schemas.exports import ExportRecord, ExportStatus

Change = Callable[[ExportRecord], ExportRecord | None]  # returns the new record, or None to leave it


def can_begin(record: ExportRecord, now: float) -> bool:
    """Due, or a first attempt (started at once by a kick, before the scheduler would hand it out)."""
    first = record.status is ExportStatus.PENDING and record.attempts == 0
    return record.status.open and ((record.due_at or 0.0) <= now or first)


def began(record: ExportRecord, lease_until: float) -> ExportRecord:
    return record.model_copy(update={"status": ExportStatus.SENDING, "attempts": record.attempts + 1,
                                     "due_at": lease_until})


class ExportStore(Protocol):
    def add(self, records: list[ExportRecord]) -> None:
        """Stores the records that do not exist yet; existing ones (a job run twice) are left as they are."""

    def for_job(self, job_id: str) -> list[ExportRecord]: ...
    def get(self, job_id: str, destination: str) -> ExportRecord | None: ...
    def due(self, now: float, limit: int = 100) -> list[tuple[str, str, float]]:
        """(job id, destination, due_at) of the open records due by `now`, earliest first."""

    def update(self, job_id: str, destination: str, change: Change) -> ExportRecord | None:
        """Applies `change` to the stored record atomically; returns the record stored, or None."""

    def dead(self, limit: int = 100) -> list[ExportRecord]: ...
    def delete_job(self, job_id: str) -> None: ...
    def wait_added(self, timeout: float) -> bool:
        """Waits until this process adds a record (or `timeout`); the embedded sender wakes on it."""


def begin(store: ExportStore, job_id: str, destination: str, now: float, lease_until: float) -> ExportRecord | None:
    return store.update(job_id, destination, lambda r: began(r, lease_until) if can_begin(r, now) else None)


def finish(store: ExportStore, held: ExportRecord, outcome: ExportRecord) -> bool:
    """Stores `outcome` of the attempt that began `held`, unless another attempt took the record over."""
    def change(stored: ExportRecord) -> ExportRecord | None:
        same = stored.status is ExportStatus.SENDING and stored.attempts == held.attempts
        return outcome if same else None

    return store.update(held.job_id, held.destination, change) is not None


class SqliteExportStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._added = threading.Condition(self._lock)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS exports (job_id TEXT NOT NULL, destination TEXT NOT NULL,"
            " status TEXT NOT NULL, due_at REAL, document TEXT NOT NULL, PRIMARY KEY (job_id, destination))"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS exports_due ON exports (due_at) WHERE due_at IS NOT NULL")

    def add(self, records: list[ExportRecord]) -> None:
        with self._lock:
            for record in records:
                self._db.execute(
                    "INSERT OR IGNORE INTO exports (job_id, destination, status, due_at, document)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (record.job_id, record.destination, record.status.value, record.due_at, record.model_dump_json()),
                )
            self._added.notify_all()

    def for_job(self, job_id: str) -> list[ExportRecord]:
        with self._lock:
            rows = self._db.execute("SELECT document FROM exports WHERE job_id = ? ORDER BY rowid",
                                    (job_id,)).fetchall()
        return [ExportRecord.model_validate_json(row[0]) for row in rows]

    def get(self, job_id: str, destination: str) -> ExportRecord | None:
        with self._lock:
            row = self._db.execute("SELECT document FROM exports WHERE job_id = ? AND destination = ?",
                                   (job_id, destination)).fetchone()
        return ExportRecord.model_validate_json(row[0]) if row else None

    def due(self, now: float, limit: int = 100) -> list[tuple[str, str, float]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, destination, due_at FROM exports WHERE due_at IS NOT NULL AND due_at <= ?"
                " ORDER BY due_at LIMIT ?", (now, limit)).fetchall()
        return [(row[0], row[1], row[2]) for row in rows]

    def update(self, job_id: str, destination: str, change: Change) -> ExportRecord | None:
        with self._lock:
            # IMMEDIATE takes SQLite's write lock before the read, so another process cannot change it between.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT document FROM exports WHERE job_id = ? AND destination = ?",
                                       (job_id, destination)).fetchone()
                new = change(ExportRecord.model_validate_json(row[0])) if row else None
                if new is not None:
                    self._db.execute(
                        "UPDATE exports SET status = ?, due_at = ?, document = ? WHERE job_id = ? AND destination = ?",
                        (new.status.value, new.due_at if new.status.open else None, new.model_dump_json(), job_id,
                         destination),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if new is not None and new.status.open:
                self._added.notify_all()
        return new

    def dead(self, limit: int = 100) -> list[ExportRecord]:
        with self._lock:
            rows = self._db.execute("SELECT document FROM exports WHERE status = ? ORDER BY rowid DESC LIMIT ?",
                                    (ExportStatus.DEAD.value, limit)).fetchall()
        return [ExportRecord.model_validate_json(row[0]) for row in rows]

    def delete_job(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM exports WHERE job_id = ?", (job_id,))

    def wait_added(self, timeout: float) -> bool:
        with self._added:
            return self._added.wait(timeout)


class RedisExportStore:
    """A hash per job (field: destination, value: the record as JSON), a sorted set of what is due when."""

    PREFIX = "medimg:exports:"
    DUE = "medimg:exports:due"  # member "<job id>/<destination>", score: due_at
    DEAD = "medimg:exports:dead"  # the same members, for the dead-letter list

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._added = threading.Event()

    @classmethod
    def from_url(cls, url: str) -> RedisExportStore:
        return cls(redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30))

    @staticmethod
    def _member(job_id: str, destination: str) -> str:
        return f"{job_id}/{destination}"

    def add(self, records: list[ExportRecord]) -> None:
        pipe = self._redis.pipeline()
        for record in records:
            pipe.hsetnx(self.PREFIX + record.job_id, record.destination, record.model_dump_json())
        created = pipe.execute()
        pipe = self._redis.pipeline()
        for record, new in zip(records, created, strict=True):
            if new and record.due_at is not None:
                pipe.zadd(self.DUE, {self._member(record.job_id, record.destination): record.due_at})
        pipe.execute()
        self._added.set()

    def for_job(self, job_id: str) -> list[ExportRecord]:
        stored = self._redis.hgetall(self.PREFIX + job_id)
        records = [ExportRecord.model_validate_json(raw) for raw in stored.values()]
        return sorted(records, key=lambda r: (r.created_at, r.destination))

    def get(self, job_id: str, destination: str) -> ExportRecord | None:
        raw = self._redis.hget(self.PREFIX + job_id, destination)
        return ExportRecord.model_validate_json(raw) if raw is not None else None

    def due(self, now: float, limit: int = 100) -> list[tuple[str, str, float]]:
        members = self._redis.zrangebyscore(self.DUE, "-inf", now, start=0, num=limit, withscores=True)
        return [(*m.decode().split("/", 1), score) for m, score in members]

    def update(self, job_id: str, destination: str, change: Change) -> ExportRecord | None:
        key, member = self.PREFIX + job_id, self._member(job_id, destination)
        result: list[ExportRecord | None] = [None]

        def apply(pipe: redis.client.Pipeline) -> None:  # optimistic: re-run if the hash changes meanwhile
            raw = pipe.hget(key, destination)
            new = change(ExportRecord.model_validate_json(raw)) if raw is not None else None
            result[0] = new
            if new is None:
                pipe.multi()
                return
            pipe.multi()
            pipe.hset(key, destination, new.model_dump_json())
            if new.status.open and new.due_at is not None:
                pipe.zadd(self.DUE, {member: new.due_at})
            else:
                pipe.zrem(self.DUE, member)
            if new.status is ExportStatus.DEAD:
                pipe.zadd(self.DEAD, {member: time.time()})
            else:
                pipe.zrem(self.DEAD, member)

        self._redis.transaction(apply, key)
        return result[0]

    def dead(self, limit: int = 100) -> list[ExportRecord]:
        records = []
        for member in self._redis.zrevrange(self.DEAD, 0, limit - 1):
            record = self.get(*member.decode().split("/", 1))
            if record is not None:
                records.append(record)
        return records

    def delete_job(self, job_id: str) -> None:
        destinations = [d.decode() for d in self._redis.hkeys(self.PREFIX + job_id)]
        pipe = self._redis.pipeline()
        pipe.delete(self.PREFIX + job_id)
        for destination in destinations:
            pipe.zrem(self.DUE, self._member(job_id, destination))
            pipe.zrem(self.DEAD, self._member(job_id, destination))
        pipe.execute()

    def wait_added(self, timeout: float) -> bool:
        added = self._added.wait(timeout)
        self._added.clear()
        return added


_stores: dict[str, ExportStore] = {}
_stores_lock = threading.Lock()


def make_export_store(settings: Settings) -> ExportStore:
    """One store per process and location, so the embedded workers' additions wake the gateway's sender."""
    location = settings.redis_url or str(settings.sqlite_path.resolve())
    with _stores_lock:
        if location not in _stores:
            _stores[location] = (RedisExportStore.from_url(settings.redis_url) if settings.redis_url
                                 else SqliteExportStore(settings.sqlite_path))
        return _stores[location]
