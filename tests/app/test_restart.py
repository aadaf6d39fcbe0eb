"""Embedded mode keeps jobs, results and artifacts across a restart, and finishes what was queued."""

from __future__ import annotations

import signal

import httpx

from devkit.api import get_artifact, submit_job, wait_job
from devkit.fundus import make_fundus, png_bytes
from devkit.services import Service, service_env


def test_restart_keeps_results_and_resumes_queued_jobs(tmp_path) -> None:
    service = Service(tmp_path, service_env(tmp_path, MEDIMG_EMBEDDED_WORKERS="1"))
    service.start_gateway()
    try:
        done = wait_job(service, submit_job(service, "dr-grading", [("a.png", png_bytes(make_fundus(1).rgb))]).json()["id"])
        pending = [
            submit_job(service, "dr-grading", [("a.png", png_bytes(make_fundus(seed).rgb))]).json()["id"]
            for seed in range(2, 8)
        ]
        service.gateway.stop(signal.SIGKILL)  # no goodbye: whatever was queued or running is cut off

        service.start_gateway()

        again = httpx.get(f"{service.url}/v1/jobs/{done['id']}").json()
        assert again["status"] == "succeeded" and again["result"] == done["result"]
        assert get_artifact(service, again, "retina.jpg").status_code == 200
        finished = [wait_job(service, job_id, timeout=120) for job_id in pending]
        assert [job["status"] for job in finished] == ["succeeded"] * len(pending)
    finally:
        service.stop()
