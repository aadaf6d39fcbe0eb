"""Job records: SQLite in embedded mode, Redis in Celery mode, one interface for both.

Updates from workers never resurrect a deleted job: they apply only while the record exists. Each store also
announces finished jobs (`listen_finished`), so a long-polling reader wakes when its job ends instead of
polling the store: in-process for SQLite (embedded workers share the store), with the finished job itself,
so the reader need not read it back; Redis pub/sub otherwise, with the id only.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import redis

from app.errors import JobNotFound
from app.schemas.jobs import Job, JobStatus
from app.schemas.tasks import TaskName
from app.storage.job_listing import JobPage, JobQuery, RedisJobIndex, created_micros, page_of

log = logging.getLogger(__name__)
FinishedListener = Callable[[str, Job | None], None]  # job id, and the finished job when the store has it


class JobStore(Protocol):
    def create(self, job: Job) -> tuple[Job, bool]:
        """Stores `job`, or returns the caller's earlier job with the same idempotency key (created=False)."""

    def get(self, job_id: str) -> Job: ...
    def save(self, job: Job) -> bool:
        """Overwrites an existing record; False when the job was deleted meanwhile."""

    def transition(self, job: Job, expected_attempts: int) -> bool:
        """Saves `job` only if the stored record is unfinished and has `expected_attempts` starts.

        Two deliveries of one job race through here; exactly one starts it, and only the delivery that
        started the latest attempt records its outcome.
        """

    def delete(self, job_id: str) -> None: ...
    def unfinished(self) -> list[Job]: ...
    def unfinished_count(self, task: TaskName) -> int:
        """Queued plus running jobs of one task."""

    def unfinished_of_task(self, task: TaskName) -> list[Job]:
        """Queued and running jobs of one task."""

    def iter_jobs(self) -> Iterator[Job]: ...
    def list_jobs(self, query: JobQuery) -> JobPage:
        """One page of jobs, newest first, by (created_at, id) descending (app/storage/job_listing.py)."""

    def ping(self) -> None: ...
    def listen_finished(self, listener: FinishedListener) -> Callable[[], None]:
        """Calls `listener(job_id, job)` (from any thread) when a job finishes; returns a function that stops it.

        `job` is the finished record as stored when this process wrote it, else None. Listeners only read it.
        Best effort: a notice can be missed (a broker reconnect, another process), so waiters re-read too.
        """


class _Listeners:
    """Fan-out of job ids to the listeners of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[FinishedListener] = []

    def add(self, listener: FinishedListener) -> Callable[[], int]:
        """Returns a function that removes the listener and tells how many remain."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> int:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
                return len(self._listeners)

        return remove

    def notify(self, job_id: str, job: Job | None = None) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(job_id, job)
            except Exception:  # a listener's fault must not fail the job update that announced it
                log.exception("job-finished listener failed")


def _not_found(job_id: str) -> JobNotFound:
    return JobNotFound(f"No job with id {job_id!r}; it never existed, or it was deleted")


class SqliteJobStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._finished = _Listeners()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, caller TEXT NOT NULL, idempotency_key TEXT,"
            " status TEXT NOT NULL, document TEXT NOT NULL)"
        )
        self._db.execute(
            "CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (caller, idempotency_key)"
            " WHERE idempotency_key IS NOT NULL"
        )
        self._add_listing_index()

    def _add_listing_index(self) -> None:
        """created_us (creation time in integer microseconds) orders listings; stores made before it get it."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "created_us" not in columns:
            with self._lock:
                self._db.execute("ALTER TABLE jobs ADD COLUMN created_us INTEGER")
                rows = self._db.execute("SELECT id, document FROM jobs").fetchall()
                self._db.executemany("UPDATE jobs SET created_us = ? WHERE id = ?", [
                    (created_micros(Job.model_validate_json(document).created_at), job_id)
                    for job_id, document in rows])
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_by_caller_created ON jobs (caller, created_us, id)")
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_us, id)")

    def create(self, job: Job) -> tuple[Job, bool]:
        with self._lock:
            if job.idempotency_key is not None:
                row = self._db.execute(
                    "SELECT document FROM jobs WHERE caller = ? AND idempotency_key = ?",
                    (job.caller, job.idempotency_key),
                ).fetchone()
                if row:
                    return Job.model_validate_json(row[0]), False
            self._db.execute(
                "INSERT INTO jobs (id, caller, idempotency_key, status, document, created_us)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (job.id, job.caller, job.idempotency_key, job.status.value, job.model_dump_json(),
                 created_micros(job.created_at)),
            )
        return job, True

    def get(self, job_id: str) -> Job:
        with self._lock:
            row = self._db.execute("SELECT document FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise _not_found(job_id)
        return Job.model_validate_json(row[0])

    def save(self, job: Job) -> bool:
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status = ?, document = ? WHERE id = ?",
                (job.status.value, job.model_dump_json(), job.id),
            )
        if cursor.rowcount == 1 and job.status.finished:
            self._finished.notify(job.id, job)
        return cursor.rowcount == 1

    def transition(self, job: Job, expected_attempts: int) -> bool:
        document = job.model_dump_json()
        with self._lock:
            # One conditional UPDATE: the stored record's status and attempts are compared in SQLite, without
            # reading and parsing its document (twice per job, under the lock the gateway also reads through).
            cursor = self._db.execute(
                "UPDATE jobs SET status = ?, document = ? WHERE id = ? AND status IN (?, ?)"
                " AND json_extract(document, '$.attempts') = ?",
                (job.status.value, document, job.id, JobStatus.QUEUED.value, JobStatus.RUNNING.value,
                 expected_attempts),
            )
        if cursor.rowcount != 1:
            return False
        if job.status.finished:
            self._finished.notify(job.id, job)
        return True

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def unfinished(self) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                "SELECT document FROM jobs WHERE status IN (?, ?) ORDER BY rowid",
                (JobStatus.QUEUED.value, JobStatus.RUNNING.value),
            ).fetchall()
        return [Job.model_validate_json(row[0]) for row in rows]

    def unfinished_count(self, task: TaskName) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status IN (?, ?) AND json_extract(document, '$.task') = ?",
                (JobStatus.QUEUED.value, JobStatus.RUNNING.value, TaskName(task).value),
            ).fetchone()
        return int(row[0])

    def unfinished_of_task(self, task: TaskName) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                "SELECT document FROM jobs WHERE status IN (?, ?) AND json_extract(document, '$.task') = ?",
                (JobStatus.QUEUED.value, JobStatus.RUNNING.value, TaskName(task).value),
            ).fetchall()
        return [Job.model_validate_json(row[0]) for row in rows]

    def iter_jobs(self) -> Iterator[Job]:
        with self._lock:
            rows = self._db.execute("SELECT document FROM jobs ORDER BY rowid").fetchall()
        for row in rows:
            yield Job.model_validate_json(row[0])

    def list_jobs(self, query: JobQuery) -> JobPage:
        clauses: list[tuple[str, tuple]] = []
        if query.owner is not None:
            clauses.append(("caller = ?", (query.owner,)))
        if query.status is not None:
            clauses.append(("status = ?", (query.status.value,)))
        if query.task is not None:
            clauses.append(("json_extract(document, '$.task') = ?", (query.task.value,)))
        if query.after_us is not None:
            clauses.append(("created_us > ?", (query.after_us,)))
        if query.before_us is not None:
            clauses.append(("created_us < ?", (query.before_us,)))
        if query.after is not None:
            at = query.after
            clauses.append(("(created_us < ? OR (created_us = ? AND id < ?))",
                            (at.created_us, at.created_us, at.job_id)))
        where = " WHERE " + " AND ".join(c for c, _ in clauses) if clauses else ""
        params = [value for _, values in clauses for value in values]
        with self._lock:
            rows = self._db.execute(f"SELECT document FROM jobs{where} ORDER BY created_us DESC, id DESC LIMIT ?",
                                    [*params, query.limit + 1]).fetchall()
        return page_of([Job.model_validate_json(row[0]) for row in rows], query)

    def ping(self) -> None:
        with self._lock:
            self._db.execute("SELECT 1")

    def listen_finished(self, listener: FinishedListener) -> Callable[[], None]:
        remove = self._finished.add(listener)  # embedded workers write through this very store

        def stop() -> None:
            remove()

        return stop


class RedisJobStore:
    PREFIX = "medimg:job:"
    IDEMPOTENCY_PREFIX = "medimg:idempotency:"
    UNFINISHED = "medimg:jobs:unfinished"
    # Per task, a list whose length is the number of its queued and running jobs, for autoscalers that read a
    # list's length (KEDA's redis scaler): Celery's own queue list drops a job once a worker takes it, this one
    # at its end. Its entries are tokens, not job ids, so a finished job leaves it by LPOP, O(1) however long
    # the queue (LREM of an id was O(queue length) per finished job). The hash below says which task counted
    # a job; HDEL answering 1 is what lets exactly one step take a job's token.
    UNFINISHED_BY_TASK_PREFIX = "medimg:jobs:unfinished:"
    COUNTED_TASK = "medimg:jobs:counted-task"
    FINISHED_CHANNEL = "medimg:jobs:finished"  # pub/sub: the id of each job as it finishes

    # Shared by the scripts below: KEYS[2] the UNFINISHED set, KEYS[3] the COUNTED_TASK hash, KEYS[4] the
    # job's per-task list, ARGV[1] the job id. Takes the job out of every unfinished count, at most once.
    _FORGET = """
    local function forget(id)
        redis.call('SREM', KEYS[2], id)
        if redis.call('HDEL', KEYS[3], id) == 1 then redis.call('LPOP', KEYS[4]) end
    end
    -- After writing a record: a finished job leaves the counts and is announced (KEYS[5], the channel).
    local function settle()
        if ARGV[4] == '1' then
            forget(ARGV[1])
            redis.call('PUBLISH', KEYS[5], ARGV[1])
        end
        return 1
    end
    """
    # Compare-and-set in one server-side step, so racing deliveries on different hosts cannot both win; the
    # outcome and the count's decrement land together. ARGV: id, document, expected attempts, finished (0/1).
    TRANSITION_SCRIPT = _FORGET + """
    local raw = redis.call('GET', KEYS[1])
    if not raw then return 0 end
    local stored = cjson.decode(raw)
    if stored['status'] == 'succeeded' or stored['status'] == 'failed' then return 0 end
    if tonumber(stored['attempts']) ~= tonumber(ARGV[3]) then return 0 end
    redis.call('SET', KEYS[1], ARGV[2])
    return settle()
    """
    # Overwrite of an existing record (retention trims inputs; tests set states directly). ARGV as above.
    SAVE_SCRIPT = _FORGET + """
    if not redis.call('SET', KEYS[1], ARGV[2], 'XX') then return 0 end
    return settle()
    """
    # Delete, cancel and purge: the record, its idempotency key (KEYS[5], when any) and its count together.
    DELETE_SCRIPT = _FORGET + """
    redis.call('DEL', KEYS[1])
    if KEYS[5] then redis.call('DEL', KEYS[5]) end
    forget(ARGV[1])
    return 1
    """
    # Create: the record, its membership of the unfinished set and its token, in one step.
    CREATE_SCRIPT = """
    redis.call('SET', KEYS[1], ARGV[2])
    if ARGV[4] == '0' then
        redis.call('SADD', KEYS[2], ARGV[1])
        if redis.call('HSETNX', KEYS[3], ARGV[1], ARGV[5]) == 1 then redis.call('RPUSH', KEYS[4], 'job') end
    end
    return 1
    """

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._transition = client.register_script(self.TRANSITION_SCRIPT)
        self._save = client.register_script(self.SAVE_SCRIPT)
        self._delete = client.register_script(self.DELETE_SCRIPT)
        self._create = client.register_script(self.CREATE_SCRIPT)
        self._index = RedisJobIndex(client, self.PREFIX)  # listings: sorted sets of its own keys
        self._finished = _Listeners()
        self._relay_lock = threading.Lock()
        self._relay_stop: threading.Event | None = None

    @classmethod
    def unfinished_list(cls, task: TaskName | str) -> str:
        return f"{cls.UNFINISHED_BY_TASK_PREFIX}{TaskName(task).value}"

    def unfinished_count(self, task: TaskName) -> int:
        """Queued plus running jobs of `task`: what a worker autoscaler should scale on."""
        return int(self._redis.llen(self.unfinished_list(task)))

    def _keys(self, job_id: str, task: TaskName | str | None) -> list[str]:
        list_key = self.unfinished_list(task) if task is not None else self.unfinished_list(TaskName.DR_GRADING)
        return [self.PREFIX + job_id, self.UNFINISHED, self.COUNTED_TASK, list_key]

    def _args(self, job: Job, expected_attempts: int = 0) -> list:
        return [job.id, job.model_dump_json(), expected_attempts, "1" if job.status.finished else "0",
                job.task.value]

    def unfinished_of_task(self, task: TaskName) -> list[Job]:
        # The per-task list holds tokens, not ids: the hash of counted jobs says which job is of which task.
        ids = [raw_id for raw_id, counted in self._redis.hgetall(self.COUNTED_TASK).items()
               if counted.decode() == TaskName(task).value]
        if not ids:
            return []
        documents = self._redis.mget([self.PREFIX + raw_id.decode() for raw_id in ids])
        return [Job.model_validate_json(raw) for raw in documents if raw is not None]

    @classmethod
    def from_url(cls, url: str) -> RedisJobStore:
        return cls(redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30))

    def create(self, job: Job) -> tuple[Job, bool]:
        if job.idempotency_key is not None:
            idem_key = f"{self.IDEMPOTENCY_PREFIX}{json.dumps([job.caller, job.idempotency_key])}"
            # SET NX decides atomically which of two racing requests creates the job.
            if not self._redis.set(idem_key, job.id, nx=True):
                existing_id = self._redis.get(idem_key)
                if existing_id is not None:
                    try:
                        return self.get(existing_id.decode()), False
                    except JobNotFound:
                        self._redis.set(idem_key, job.id)  # the earlier job was deleted: start anew
        pipe = self._redis.pipeline()  # MULTI: the record, its counts and its listing entries together
        self._create(keys=self._keys(job.id, job.task), args=self._args(job), client=pipe)
        self._index.add(pipe, job)
        pipe.execute()
        return job, True

    def get(self, job_id: str) -> Job:
        raw = self._redis.get(self.PREFIX + job_id)
        if raw is None:
            raise _not_found(job_id)
        return Job.model_validate_json(raw)

    def save(self, job: Job) -> bool:
        keys = [*self._keys(job.id, job.task), self.FINISHED_CHANNEL]
        return bool(self._save(keys=keys, args=self._args(job)))

    def transition(self, job: Job, expected_attempts: int) -> bool:
        keys = [*self._keys(job.id, job.task), self.FINISHED_CHANNEL]
        return bool(self._transition(keys=keys, args=self._args(job, expected_attempts)))

    def delete(self, job_id: str) -> None:
        job = None
        try:
            job = self.get(job_id)
        except JobNotFound:
            pass
        self._forget(job_id, job)

    def _forget(self, job_id: str, job: Job | None) -> None:
        """Deletes the record (if any) and takes the job out of the unfinished counts, whatever its state."""
        task = job.task if job is not None else self._redis.hget(self.COUNTED_TASK, job_id)
        keys = self._keys(job_id, task.decode() if isinstance(task, bytes) else task)
        if job is not None and job.idempotency_key is not None:
            keys.append(f"{self.IDEMPOTENCY_PREFIX}{json.dumps([job.caller, job.idempotency_key])}")
        pipe = self._redis.pipeline()  # MULTI: the record, its counts and its listing entries together
        self._delete(keys=keys, args=[job_id], client=pipe)
        self._index.remove(pipe, job_id, job.caller if job is not None else None)
        pipe.execute()

    def unfinished(self) -> list[Job]:
        jobs = []
        for raw_id in self._redis.smembers(self.UNFINISHED):
            try:
                jobs.append(self.get(raw_id.decode()))
            except JobNotFound:
                self._forget(raw_id.decode(), None)
        return jobs

    def iter_jobs(self) -> Iterator[Job]:
        for key in self._redis.scan_iter(match=f"{self.PREFIX}*", count=500):
            raw = self._redis.get(key)
            if raw is not None:
                yield Job.model_validate_json(raw)

    def list_jobs(self, query: JobQuery) -> JobPage:
        self._index.ensure_built(self.iter_jobs)
        return self._index.list_jobs(query)

    def ping(self) -> None:
        self._redis.ping()

    def listen_finished(self, listener: FinishedListener) -> Callable[[], None]:
        remove = self._finished.add(listener)
        with self._relay_lock:
            if self._relay_stop is None:
                self._relay_stop = threading.Event()
                threading.Thread(target=self._relay_finished, args=(self._relay_stop,), name="medimg-job-finished",
                                 daemon=True).start()

        def stop() -> None:
            if remove() == 0:
                with self._relay_lock:
                    if self._relay_stop is not None:
                        self._relay_stop.set()
                        self._relay_stop = None

        return stop

    def _relay_finished(self, stop: threading.Event) -> None:
        """Relays the finished-job channel to this process's listeners, resubscribing after a broker outage."""
        while not stop.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.FINISHED_CHANNEL)
                while not stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        self._finished.notify(message["data"].decode())
            except (redis.RedisError, OSError, ValueError) as exc:
                if stop.is_set():
                    return  # stopped while waiting for a message: the client may be closed under it
                log.warning("job-finished channel: %s; resubscribing", type(exc).__name__)
                stop.wait(1.0)
            finally:
                pubsub.close()
