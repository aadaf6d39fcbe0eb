"""Delivers job-finished webhooks from a small background pool, retrying with exponential backoff.

Delivery runs beside inference, never in its way. A message is retried on network errors, 5xx and 429;
other answers end it. Retries live in the worker process: a webhook pending when it dies is not resent,
so callers should also poll GET /v1/jobs/{id} when a callback is late.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx

from app.config import Settings
from app.errors import InvalidRequest
from app.schemas.jobs import Job, JobPublic
from app.webhooks import check_callback_url, webhook_headers

log = logging.getLogger(__name__)

FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0


class WebhookSender:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="medimg-webhook")

    def job_finished(self, job: Job) -> None:
        if job.callback_url and self.settings.webhook_secret:
            self._pool.submit(self._deliver, job)
        elif job.callback_url:
            log.warning("job %s has a callback but MEDIMG_WEBHOOK_SECRET is unset; not sent unsigned", job.id)

    def _deliver(self, job: Job) -> None:
        body = JobPublic.from_job(job).model_dump_json()
        body = f'{{"type":"job.{job.status.value}","data":{body}}}'
        message_id = f"msg_{job.id}_{job.status.value}"
        delay = FIRST_BACKOFF_SECONDS
        for attempt in range(1, self.settings.webhook_max_attempts + 1):
            try:
                # Checked again at send time: the name may resolve elsewhere than when the job was accepted.
                check_callback_url(job.callback_url, self.settings.webhook_allowed_networks)
                response = httpx.post(job.callback_url, content=body, timeout=10, follow_redirects=False,
                                      headers=webhook_headers(self.settings.webhook_secret, message_id, body))
                if response.status_code < 300:
                    log.info("job %s webhook delivered (attempt %d)", job.id, attempt)
                    return
                if response.status_code < 500 and response.status_code != 429:
                    log.warning("job %s webhook refused with %d; not retried", job.id, response.status_code)
                    return
            except InvalidRequest:
                log.warning("job %s webhook destination %s is no longer allowed", job.id, urlsplit(job.callback_url).hostname)
                return
            except httpx.HTTPError as exc:
                log.info("job %s webhook attempt %d failed (%s)", job.id, attempt, type(exc).__name__)
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)
        log.warning("job %s webhook given up after %d attempts", job.id, self.settings.webhook_max_attempts)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
