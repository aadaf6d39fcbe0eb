"""/metrics of the gateway and of a Celery worker (multiprocess mode, one endpoint per worker) after a job."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.utils.ops import scrape, total
from devkit.services import Service

pytestmark = pytest.mark.slow


def worker_metrics_url(service: Service) -> str:
    return f"http://127.0.0.1:{service.env['MEDIMG_WORKER_METRICS_PORT']}/metrics"


def test_worker_metrics_after_job(ops_service: Service, ops_dicom_job: dict) -> None:
    # The worker records metrics just after the outcome becomes visible: give it a moment to catch up.
    deadline = time.monotonic() + 5
    while True:
        samples = scrape(worker_metrics_url(ops_service))
        observed = {labels["stage"] for labels, value in samples.get("medimg_pipeline_stage_seconds_count", [])
                    if value > 0}
        if set(ops_dicom_job["stage_seconds"]) <= observed or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    task = {"task": "dr-grading"}
    assert total(samples, "medimg_jobs_finished_total", status="succeeded", **task) >= 1
    assert total(samples, "medimg_jobs_started_total", **task) >= 1
    assert total(samples, "medimg_job_queue_wait_seconds_count", **task) >= 1
    stages = {labels["stage"] for labels, value in samples["medimg_pipeline_stage_seconds_count"] if value > 0}
    assert set(ops_dicom_job["stage_seconds"]) <= stages
    assert total(samples, "medimg_inference_batch_size_count", model="dr-grading-reference") >= 1
    assert total(samples, "medimg_model_load_seconds_count", model="dr-grading-reference") >= 1
    assert total(samples, "medimg_model_warmup_seconds_count", model="dr-grading-reference") >= 1
    # Failures are split by kind in one label; a succeeded job carries an empty one.
    kinds = {labels["failure_kind"] for labels, _ in samples["medimg_jobs_finished_total"]}
    assert "" in kinds and kinds <= {"", "bad-input", "model-error", "infrastructure"}


def test_gateway_metrics_after_job(ops_service: Service, ops_dicom_job: dict) -> None:
    samples = scrape(f"{ops_service.url}/metrics")
    assert total(samples, "medimg_jobs_submitted_total", task="dr-grading") >= 1
    assert total(samples, "medimg_upload_bytes_total", task="dr-grading") > 0
    assert total(samples, "medimg_http_requests_total", route="/v1/jobs", method="POST", status="202") >= 1
    assert total(samples, "medimg_http_request_duration_seconds_count", route="/v1/jobs/{job_id}") >= 1


def test_worker_probe_heartbeat_fresh(ops_service: Service, ops_dicom_job: dict) -> None:
    probe = subprocess.run([sys.executable, "-m", "app.cli", "worker-probe", "--max-age", "10"],
                           env=ops_service.env, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
