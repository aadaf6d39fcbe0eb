"""Long polls that wake when their job finishes, instead of re-reading the store on a timer.

The job store announces finished jobs from its own threads; this bridges those notices into the event
loop. Notices are best effort, so a waiter also re-reads its job every `RECHECK_SECONDS`.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from app.storage.jobs import JobStore

RECHECK_SECONDS = 1.0


class FinishedJobWaiter:
    def __init__(self, jobs: JobStore, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._stop_listening = jobs.listen_finished(self._on_finished)

    def _on_finished(self, job_id: str) -> None:
        self._loop.call_soon_threadsafe(self._wake, job_id)

    def _wake(self, job_id: str) -> None:
        for event in self._events.get(job_id, ()):
            event.set()

    @contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set when `job_id` finishes; enter it before reading the job, so no notice slips by."""
        event = asyncio.Event()
        self._events[job_id].add(event)
        try:
            yield event
        finally:
            self._events[job_id].discard(event)
            if not self._events[job_id]:
                del self._events[job_id]

    def close(self) -> None:
        self._stop_listening()
