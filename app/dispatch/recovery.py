"""Periodically dispatches again the jobs a broker or a worker lost.

Every heartbeat: running jobs whose worker stopped beating (a killed worker, a lost node). Every
MEDIMG_LOST_JOB_CHECK_SECONDS: queued jobs whose message is in no Redis queue; in Celery mode also re-sends as
STAT the routine jobs that have waited MEDIMG_PRIORITY_AGING_SECONDS (no starvation).
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
        except Exception as exc:  # the broker may be restarting; the next round tries again
            log.warning("abandoned-job check failed (%s); retrying at the next heartbeat", type(exc).__name__)
        if loop.time() < next_lost_check:
            continue
        next_lost_check = loop.time() + settings.lost_job_check_seconds
        try:
            await asyncio.to_thread(dispatcher.recover_lost, jobs, settings.lost_job_grace_seconds)
        except Exception as exc:  # the broker may be restarting; the next round tries again
            log.warning("lost-job check failed (%s); retrying at the next interval", type(exc).__name__)
        promote_aged = getattr(dispatcher, "promote_aged", None)  # the embedded lanes age jobs themselves
        if promote_aged is not None:
            try:
                await asyncio.to_thread(promote_aged, jobs, settings.priority_aging_seconds)
            except Exception as exc:
                log.warning("aging check failed (%s); retrying at the next interval", type(exc).__name__)
