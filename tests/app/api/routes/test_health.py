"""Liveness, readiness (warm models; in Celery mode a consuming worker) and Prometheus metrics."""

import httpx

from devkit.api import run_job
from devkit.fundus import make_fundus, png_bytes
from devkit.services import Service, service_env


def test_healthz(embedded_service: Service) -> None:
    assert httpx.get(f"{embedded_service.url}/healthz").json() == {"status": "ok"}


def test_readyz_embedded_reports_warm_models(embedded_service: Service) -> None:
    body = httpx.get(f"{embedded_service.url}/readyz").json()
    assert body["status"] == "ready" and body["mode"] == "embedded"
    model = body["models"]["dr-grading-reference/1"]
    assert model["providers"] == ["CPUExecutionProvider"]


def test_readyz_celery_reports_consuming_worker(celery_service: Service) -> None:
    body = httpx.get(f"{celery_service.url}/readyz").json()
    assert body["status"] == "ready" and body["mode"] == "celery"
    assert "dr-grading" in body["queues_served"]


def test_readyz_celery_without_worker_not_ready(tmp_path, redis_server) -> None:
    # A database of its own, so the heartbeats of the session's workers do not count here.
    lonely_redis = redis_server.url.rsplit("/", 1)[0] + "/7"
    service = Service(tmp_path, service_env(tmp_path, lonely_redis))
    service.start_gateway(wait_ready=False)
    try:
        response = httpx.get(f"{service.url}/readyz")
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert "No worker" in response.json()["detail"]
    finally:
        service.stop()


def test_metrics_count_jobs(embedded_service: Service) -> None:
    run_job(embedded_service, "dr-grading", [("a.png", png_bytes(make_fundus(8).rgb))])
    text = httpx.get(f"{embedded_service.url}/metrics").text
    assert 'medimg_jobs_submitted_total{priority="routine",task="dr-grading"}' in text
    assert 'medimg_jobs_finished_total{failure_kind="",status="succeeded",task="dr-grading"}' in text
    assert 'medimg_pipeline_stage_seconds_count{stage="infer",task="dr-grading"}' in text
    assert "medimg_http_requests_total" in text
