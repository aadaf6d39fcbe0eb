"""Without a key nothing; with a key only what its scopes allow and only the caller's own jobs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from devkit.api import submit_job, wait_job
from devkit.fundus import make_fundus, png_bytes
from tests.utils.keys import KEYS, auth, keys_env
from devkit.services import Service, service_env


@pytest.fixture(scope="module")
def keyed_service(tmp_path_factory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("keyed")
    service = Service(data_dir, service_env(data_dir, MEDIMG_API_KEYS=keys_env(), MEDIMG_RATE_LIMIT_PER_MINUTE="30"))
    service.start_gateway()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def photo() -> bytes:
    return png_bytes(make_fundus(seed=31).rgb)


@pytest.fixture(scope="module")
def clinic_a_job(keyed_service: Service, photo: bytes) -> dict:
    response = submit_job(keyed_service, "dr-grading", [("a.png", photo)], headers=auth("clinic-a"))
    assert response.status_code == 202, response.text
    return response.json()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer mk_wrong"}, {"X-API-Key": "nope"},
                                     {"Authorization": "Basic dXNlcjpwYXNz"}])
def test_create_job_without_valid_key_unauthorized(keyed_service: Service, photo: bytes, headers: dict) -> None:
    response = submit_job(keyed_service, "dr-grading", [("a.png", photo)], headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["code"] == "unauthorized"


def test_read_job_owner_sees_it(keyed_service: Service, clinic_a_job: dict) -> None:
    response = httpx.get(f"{keyed_service.url}/v1/jobs/{clinic_a_job['id']}", headers=auth("clinic-a"))
    assert response.status_code == 200


def test_read_job_x_api_key_header_works(keyed_service: Service, clinic_a_job: dict) -> None:
    headers = {"X-API-Key": KEYS["clinic-a"][0]}
    assert httpx.get(f"{keyed_service.url}/v1/jobs/{clinic_a_job['id']}", headers=headers).status_code == 200


def test_read_job_other_caller_not_found(keyed_service: Service, clinic_a_job: dict) -> None:
    job_id = clinic_a_job["id"]
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/artifacts/retina.jpg"):
        response = httpx.get(f"{keyed_service.url}{path}", headers=auth("clinic-b"))
        assert response.status_code == 404, path
        assert response.json()["code"] == "job-not-found"
    assert httpx.delete(f"{keyed_service.url}/v1/jobs/{job_id}", headers=auth("clinic-b")).status_code == 404


def test_read_job_without_key_unauthorized(keyed_service: Service, clinic_a_job: dict) -> None:
    assert httpx.get(f"{keyed_service.url}/v1/jobs/{clinic_a_job['id']}").status_code == 401


def test_create_job_read_only_key_forbidden(keyed_service: Service, photo: bytes) -> None:
    response = submit_job(keyed_service, "dr-grading", [("a.png", photo)], headers=auth("viewer"))
    assert response.status_code == 403
    assert "submit" in response.json()["detail"]


def test_read_job_admin_sees_any(keyed_service: Service, clinic_a_job: dict) -> None:
    job = wait_job_as(keyed_service, clinic_a_job["id"], "ops")
    assert job["status"] == "succeeded"


def wait_job_as(service: Service, job_id: str, caller: str) -> dict:
    response = httpx.get(f"{service.url}/v1/jobs/{job_id}", params={"wait": 30}, headers=auth(caller), timeout=40)
    assert response.status_code == 200
    return response.json()


def test_probes_need_no_key(keyed_service: Service) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{keyed_service.url}{path}").status_code == 200


def test_rate_limit_answers_429_with_retry_after(keyed_service: Service) -> None:
    statuses = []
    for _ in range(40):
        response = httpx.get(f"{keyed_service.url}/v1/models", headers=auth("viewer"))
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["code"] == "rate-limited"
            break
    assert 429 in statuses and statuses[0] == 200
    # Another caller's bucket is untouched.
    assert httpx.get(f"{keyed_service.url}/v1/models", headers=auth("ops")).status_code == 200


def test_audit_log_names_caller_job_and_action(keyed_service: Service, clinic_a_job: dict) -> None:
    httpx.get(f"{keyed_service.url}/v1/jobs/{clinic_a_job['id']}", headers=auth("clinic-b"))
    lines = [json.loads(line) for line in keyed_service.gateway.log_path.read_text().splitlines()
             if line.startswith("{") and '"audit"' in line]
    entries = [line["audit"] for line in lines]
    assert any(e["caller"] == "clinic-b" and e["action"] == "GET /v1/jobs/{job_id}"
               and e["job_id"] == clinic_a_job["id"] and e["status"] == 404 for e in entries)
    assert any(e["caller"] == "clinic-a" and e["action"] == "POST /v1/jobs" and e["status"] == 202 for e in entries)
    assert all("time" in line for line in lines)


def test_serve_refuses_public_bind_without_keys(tmp_path) -> None:
    completed = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
                               env=service_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2
    assert "without API keys" in completed.stderr
