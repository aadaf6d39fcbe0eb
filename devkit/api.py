"""Client helpers for the HTTP API, used by API tests."""

from __future__ import annotations

import json
import time

import httpx

from devkit.services import Service

TIMEOUT = httpx.Timeout(60.0, connect=5.0)


def submit_job(
    service: Service,
    task: str,
    files: list[tuple[str, bytes]],
    options: dict | None = None,
    headers: dict[str, str] | None = None,
    priority: str | None = None,
) -> httpx.Response:
    form = {"task": task}
    if priority is not None:
        form["priority"] = priority
    if options is not None:
        form["options"] = json.dumps(options)
    multipart = [("files", (name, data, "application/octet-stream")) for name, data in files]
    return httpx.post(f"{service.url}/v1/jobs", data=form, files=multipart, headers=headers, timeout=TIMEOUT)


def wait_job(service: Service, job_id: str, timeout: float = 120) -> dict:
    """Long-polls until the job finishes; fails the test if it does not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        response = httpx.get(f"{service.url}/v1/jobs/{job_id}", params={"wait": min(max(remaining, 0), 30)},
                             timeout=TIMEOUT)
        response.raise_for_status()
        job = response.json()
        if job["status"] in ("succeeded", "failed") or remaining <= 0:
            assert job["status"] in ("succeeded", "failed"), f"job {job_id} still {job['status']} after {timeout}s"
            return job


def run_job(service: Service, task: str, files: list[tuple[str, bytes]], options: dict | None = None,
            timeout: float = 120) -> dict:
    response = submit_job(service, task, files, options)
    assert response.status_code == 202, response.text
    return wait_job(service, response.json()["id"], timeout)


def get_artifact(service: Service, job: dict, name: str) -> httpx.Response:
    return httpx.get(f"{service.url}/v1/jobs/{job['id']}/artifacts/{name}", timeout=TIMEOUT)
