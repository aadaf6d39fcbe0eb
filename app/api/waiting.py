"""Long polls that wake when their job finishes, instead of re-reading the store on a timer.

The job store announces finished jobs from its own threads; this bridges those notices into the event
loop. A notice from the SQLite store carries the finished job (embedded workers write through the very
store object the gateway reads), so the waiter answers without reading it back; a Redis notice carries the
id only. Notices are best effort, so a waiter also re-reads its job every `RECHECK_SECONDS`.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from app.schemas.jobs import Job
from app.storage.jobs import JobStore

RECHECK_SECONDS = 1.0


class FinishedNotice(asyncio.Event):
    """Set when the watched job finishes; `job` is the finished record when the notice carried it."""

    job: Job | None = None


class FinishedJobWaiter:
    def __init__(self, jobs: JobStore, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._notices: defaultdict[str, set[FinishedNotice]] = defaultdict(set)
        self._stop_listening = jobs.listen_finished(self._on_finished)

    def _on_finished(self, job_id: str, job: Job | None) -> None:
        self._loop.call_soon_threadsafe(self._wake, job_id, job)

    def _wake(self, job_id: str, job: Job | None) -> None:
        for notice in self._notices.get(job_id, ()):
            notice.job = job
            notice.set()

    @contextmanager
    def watch(self, job_id: str) -> Iterator[FinishedNotice]:
        """A notice set when `job_id` finishes; enter it before reading the job, so no notice slips by."""
        notice = FinishedNotice()
        self._notices[job_id].add(notice)
        try:
            yield notice
        finally:
            self._notices[job_id].discard(notice)
            if not self._notices[job_id]:
                del self._notices[job_id]

    def close(self) -> None:
        self._stop_listening()
