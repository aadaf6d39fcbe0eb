"""Listing jobs: newest first, filtered, in pages joined by an opaque cursor.

The order is (created_at, id), both descending, so it is total and stable: a job created while a caller pages
through appears on no later page and none is skipped or repeated. Each store answers `list_jobs` from an index
on that key: a column and index in SQLite, sorted sets by creation time in Redis (`RedisJobIndex`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from app.errors import InvalidRequest
from app.schemas.jobs import Job, JobStatus
from app.schemas.tasks import TaskName

MAX_PAGE = 100


def created_micros(when: datetime) -> int:
    """Microseconds since the epoch: an exact integer sort key (a double holds it exactly until year 2255)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True)
class Position:
    """Where a page ended: the last job's sort key. The next page holds only jobs strictly older than it."""

    created_us: int
    job_id: str

    def encode(self) -> str:
        raw = json.dumps([self.created_us, self.job_id], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, cursor: str) -> Position:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            created_us, job_id = json.loads(raw)
            if not isinstance(created_us, int) or not isinstance(job_id, str):
                raise ValueError
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
            raise InvalidRequest(f"cursor {cursor[:80]!r} is not one this service gave out; start again "
                                 "without it and follow the `next` link") from None
        return cls(created_us, job_id)

    @classmethod
    def of(cls, job: Job) -> Position:
        return cls(created_micros(job.created_at), job.id)


@dataclass(frozen=True)
class JobQuery:
    """`owner` None lists every caller's jobs (an admin key); the time bounds are exclusive."""

    owner: str | None
    status: JobStatus | None = None
    task: TaskName | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    after: Position | None = None
    limit: int = 20

    def matches(self, job: Job) -> bool:
        return ((self.owner is None or job.caller == self.owner)
                and (self.status is None or job.status == self.status)
                and (self.task is None or job.task == self.task))

    @property
    def after_us(self) -> int | None:
        return None if self.created_after is None else created_micros(self.created_after)

    @property
    def before_us(self) -> int | None:
        return None if self.created_before is None else created_micros(self.created_before)


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    next: Position | None  # None on the last page


def page_of(candidates: list[Job], query: JobQuery) -> JobPage:
    """The first `limit` of jobs already in order; a next position only when more follow."""
    if len(candidates) > query.limit:
        page = candidates[: query.limit]
        return JobPage(page, Position.of(page[-1]))
    return JobPage(candidates, None)


class RedisJobIndex:
    """Sorted sets of job ids scored by creation time: one per caller, one over all jobs (for admin keys).

    Kept apart from the job records and their transition script: entries are added when a job is created and
    removed when it is deleted (purges delete through the store too); an id whose record is gone is dropped
    when a listing meets it, so a lost removal costs one skipped entry, never a wrong answer.
    """

    ALL = "medimg:jobs:by-created"
    BY_CALLER_PREFIX = "medimg:jobs:by-created:caller:"
    BUILT = "medimg:jobs:by-created:built"  # set once the jobs stored before the index existed are in it
    SCAN_BATCH = 200
    BUILD_BATCH = 1000

    def __init__(self, client: redis.Redis, record_prefix: str) -> None:
        self._redis = client
        self._record_prefix = record_prefix
        self._built = False

    def ensure_built(self, records: Callable[[], Iterable[Job]]) -> None:
        """Indexes the jobs stored before this index existed: once per Redis, checked once per process.

        Idempotent, so two processes building at once only repeat each other's ZADDs.
        """
        if self._built:
            return
        if not self._redis.exists(self.BUILT):
            pipe = self._redis.pipeline(transaction=False)
            for count, job in enumerate(records(), start=1):
                self.add(pipe, job)
                if count % self.BUILD_BATCH == 0:
                    pipe.execute()
            pipe.set(self.BUILT, "1")
            pipe.execute()
        self._built = True

    @classmethod
    def caller_key(cls, caller: str) -> str:
        return cls.BY_CALLER_PREFIX + caller

    def add(self, pipe, job: Job) -> None:
        score = created_micros(job.created_at)
        pipe.zadd(self.ALL, {job.id: score})
        pipe.zadd(self.caller_key(job.caller), {job.id: score})

    def remove(self, pipe, job_id: str, caller: str | None) -> None:
        pipe.zrem(self.ALL, job_id)
        if caller is not None:
            pipe.zrem(self.caller_key(caller), job_id)

    def list_jobs(self, query: JobQuery) -> JobPage:
        key = self.ALL if query.owner is None else self.caller_key(query.owner)
        found: list[Job] = []
        position = query.after
        while len(found) <= query.limit:
            batch = self._ids_after(key, query, position)
            if not batch:
                break
            found.extend(self._matching(key, batch, query))
            position = Position(batch[-1][1], batch[-1][0])
        return page_of(found, query)

    def _ids_after(self, key: str, query: JobQuery, position: Position | None) -> list[tuple[str, int]]:
        """The next ids, newest first, strictly after `position` and inside the query's time bounds.

        Scores are integer microseconds and Redis orders equal scores by member, as the listing orders by id:
        the members tied with `position` are read first, then a batch strictly below its time.
        """
        before, after = query.before_us, query.after_us
        # Redis's "(" bounds are exclusive like the query's, whatever the score's precision.
        top = "+inf" if before is None else f"({before}"
        bottom = "-inf" if after is None else f"({after}"
        ids: list[tuple[str, int]] = []
        if position is not None and (before is None or position.created_us < before):
            at = position.created_us
            if after is None or at > after:
                ties = self._redis.zrevrangebyscore(key, at, at)
                ids = [(m.decode(), at) for m in ties if m.decode() < position.job_id]
            top = f"({at}"
        batch = self._redis.zrevrangebyscore(key, top, bottom, start=0, num=self.SCAN_BATCH, withscores=True)
        return ids + [(m.decode(), int(s)) for m, s in batch]

    def _matching(self, key: str, batch: list[tuple[str, int]], query: JobQuery) -> list[Job]:
        raws = self._redis.mget([self._record_prefix + member for member, _ in batch])
        jobs, gone = [], []
        for (member, _), raw in zip(batch, raws, strict=True):
            if raw is None:
                gone.append(member)
                continue
            job = Job.model_validate_json(raw)
            if query.matches(job):
                jobs.append(job)
        if gone:
            self._redis.zrem(key, *gone)
        return jobs

