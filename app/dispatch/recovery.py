"""Periodically looks for queued jobs whose broker message was lost, and dispatches them again."""

from __future__ import annotations

import asyncio
import logging

from app.config import Settings
from app.dispatch.base import Dispatcher
from app.storage.jobs import JobStore

log = logging.getLogger(__name__)


async def recover_periodically(dispatcher: Dispatcher, jobs: JobStore, settings: Settings) -> None:
    while True:
        await asyncio.sleep(settings.lost_job_check_seconds)
        try:
            await asyncio.to_thread(dispatcher.recover_lost, jobs, settings.lost_job_grace_seconds)
        except Exception as exc:  # the broker may be restarting; the next round tries again
            log.warning("lost-job check failed (%s); retrying at the next interval", type(exc).__name__)
