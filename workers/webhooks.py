"""Delivers job-finished webhooks, retrying with exponential backoff, in one lane per caller.

Delivery runs beside inference, never in its way. A message is retried on network errors, 5xx and 429;
other answers end it. Each caller (tenant) has its own lane, a thread that delivers that caller's messages
in order and exits when idle: one tenant's dead callback, retried for minutes, delays only that tenant's
messages. Each attempt connects to the address checked just before it (app/webhooks.py), never to one
resolved again. Retries live in the worker process: a webhook pending when it dies is not resent, so
callers should also poll GET /v1/jobs/{id} when a callback is late.
"""

from __future__ import annotations

import logging
import queue
import threading
from urllib.parse import urlsplit

import httpx

from app.config import Settings
from app.errors import InvalidRequest
from app.schemas.jobs import Job, JobPublic
from app.webhooks import check_callback_url, pinned_request, webhook_headers

log = logging.getLogger(__name__)

FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
LANE_IDLE_SECONDS = 30.0


def post_pinned(url: str, body: str, headers: dict[str, str], settings: Settings) -> httpx.Response:
    """One delivery attempt: check the destination, then POST to the very address that was checked."""
    address = check_callback_url(url, settings.webhook_allowed_networks)[0]
    pinned_url, host, extensions = pinned_request(url, address)
    with httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False) as client:
        request = client.build_request("POST", pinned_url, content=body, headers=headers | host,
                                       extensions=extensions)
        return client.send(request)


class WebhookSender:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lanes: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def job_finished(self, job: Job) -> None:
        if not job.callback_url:
            return
        if not self.settings.webhook_secret:
            log.warning("job %s has a callback but MEDIMG_WEBHOOK_SECRET is unset; not sent unsigned", job.id)
            return
        with self._lock:
            lane = self._lanes.get(job.caller)
            if lane is None:
                lane = self._lanes[job.caller] = queue.Queue()
                threading.Thread(target=self._run_lane, args=(job.caller, lane), daemon=True,
                                 name="medimg-webhook-lane").start()
            lane.put(job)

    def _run_lane(self, caller: str, lane: queue.Queue) -> None:
        while not self._closed.is_set():
            try:
                job = lane.get(timeout=LANE_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if lane.empty():
                        del self._lanes[caller]
                        return
                continue
            try:
                self._deliver(job)
            except Exception:  # a lane outlives any one message
                log.exception("job %s webhook delivery failed unexpectedly", job.id)

    def _deliver(self, job: Job) -> None:
        body = JobPublic.from_job(job).model_dump_json()
        body = f'{{"type":"job.{job.status.value}","data":{body}}}'
        message_id = f"msg_{job.id}_{job.status.value}"
        delay = FIRST_BACKOFF_SECONDS
        for attempt in range(1, self.settings.webhook_max_attempts + 1):
            try:
                # Checked again at send time: the name may resolve elsewhere than when the job was accepted.
                response = post_pinned(job.callback_url, body,
                                       webhook_headers(self.settings.webhook_secret, message_id, body), self.settings)
                if response.status_code < 300:
                    log.info("job %s webhook delivered (attempt %d)", job.id, attempt)
                    return
                if response.status_code < 500 and response.status_code != 429:
                    log.warning("job %s webhook refused with %d; not retried", job.id, response.status_code)
                    return
            except InvalidRequest:
                log.warning("job %s webhook destination %s is no longer allowed", job.id,
                            urlsplit(job.callback_url).hostname)
                return
            except httpx.HTTPError as exc:
                log.info("job %s webhook attempt %d failed (%s)", job.id, attempt, type(exc).__name__)
            if self._closed.wait(delay):
                return
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)
        log.warning("job %s webhook given up after %d attempts", job.id, self.settings.webhook_max_attempts)

    def close(self) -> None:
        self._closed.set()
