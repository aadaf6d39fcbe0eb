"""Periodically dispatches again the jobs a broker or a worker lost.

Every heartbeat: running jobs whose worker stopped beating (a killed worker, a lost node). Every
MEDIMG_LOST_JOB_CHECK_SECONDS: queued jobs whose message is in no Redis queue.
"""

from __future__ import annotations

import asyncio
import logging

from app.config import Settings
from app.dispatch.base import Dispatcher
from app.storage.jobs import JobStore

log = logging.getLogger(__name__)


async def recover_periodically(dispatcher: Dispatcher, jobs: JobStore, settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    next_lost_check = loop.time() + settings.lost_job_check_seconds
    while True:
        await asyncio.sleep(min(settings.worker_heartbeat_seconds, settings.lost_job_check_seconds))
        try:
            await asyncio.to_thread(dispatcher.recover_abandoned, jobs)
            if loop.time() >= next_lost_check:
                next_lost_check = loop.time() + settings.lost_job_check_seconds
                await asyncio.to_thread(dispatcher.recover_lost, jobs, settings.lost_job_grace_seconds)
        except Exception as exc:  # the broker may be restarting; the next round tries again
            log.warning("lost-job check failed (%s); retrying at the next interval", type(exc).__name__)
