"""What a hostile caller found in the API itself: options, QIDO, 405, headers, Host, admin, idempotency, STOW."""

from __future__ import annotations

import functools
import io
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.app.security.test_access import wait_job_as
from devkit.api import submit_job
from devkit.fundus import dicom_fundus_bytes, make_fundus, png_bytes
from tests.utils.keys import auth, keys_env
from devkit.services import Service, service_env


@pytest.fixture(scope="module")
def api_service(tmp_path_factory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("hardened")
    service = Service(data_dir, service_env(data_dir, MEDIMG_API_KEYS=keys_env(), MEDIMG_RATE_LIMIT_PER_MINUTE="40",
                                            MEDIMG_MAX_UPLOAD_FILES="500"))
    service.start_gateway()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def dicom_job(api_service: Service) -> dict:
    """clinic-a's finished DR job on a DICOM photograph: it has an sr.dcm with the patient's name."""
    response = submit_job(api_service, "dr-grading", [("eye.dcm", dicom_fundus_bytes(make_fundus(5).rgb))],
                          headers=auth("clinic-a"))
    assert response.status_code == 202, response.text
    job = wait_job_as(api_service, response.json()["id"], "clinic-a")
    assert job["status"] == "succeeded" and "sr.dcm" in {a["name"] for a in job["artifacts"]}, job
    return job


def test_create_job_deeply_nested_options_invalid(api_service: Service) -> None:
    response = httpx.post(
        f"{api_service.url}/v1/jobs", headers=auth("clinic-a"), timeout=30,
        data={"task": "dr-grading", "options": "[" * 100_000},
        files=[("files", ("a.png", _photo(1)))])
    assert response.status_code == 422, response.text  # before: 500 (RecursionError)
    assert response.json()["code"] == "invalid-options"


def test_create_job_null_options_accepted(api_service: Service) -> None:
    response = httpx.post(f"{api_service.url}/v1/jobs", headers=auth("clinic-a"), timeout=30,
                          data={"task": "dr-grading", "options": "null"},
                          files=[("files", ("a.png", _photo(1)))])
    assert response.status_code == 202, response.text


def test_search_without_match_204_without_body(api_service: Service) -> None:
    with httpx.Client(base_url=api_service.url, headers=auth("clinic-a")) as client:
        response = client.get("/dicomweb/studies", params={"StudyInstanceUID": "1.2.3.4"})
        assert response.status_code == 204
        assert response.content == b"" and response.headers.get("content-length", "0") == "0"
        # The same connection carries the next request (before: reset after a 204 that had a body).
        assert client.get("/v1/models").status_code == 200


def test_wrong_method_405_names_allowed_methods(api_service: Service) -> None:
    response = httpx.put(f"{api_service.url}/v1/jobs", headers=auth("clinic-a"))
    assert response.status_code == 405 and "POST" in response.headers["allow"]
    response = httpx.post(f"{api_service.url}/v1/models", headers=auth("clinic-a"))
    assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"


def test_read_artifact_patient_data_headers_and_private_files(api_service: Service, dicom_job: dict) -> None:
    response = httpx.get(f"{api_service.url}/v1/jobs/{dicom_job['id']}/artifacts/sr.dcm", headers=auth("clinic-a"))
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-disposition"] == 'attachment; filename="sr.dcm"'
    stored = [p for p in (api_service.data_dir / "blobs").rglob("*") if p.is_file()]
    assert any(p.name == "sr.dcm" for p in stored) and any(p.parent.name == "inputs" for p in stored)
    for path in [*stored, api_service.data_dir / "jobs.sqlite3"]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path} is {oct(path.stat().st_mode)}"


def test_host_header_never_echoed(api_service: Service) -> None:
    evil = {"Host": "evil.example"}
    response = httpx.get(f"{api_service.url}/v1/models/", headers=auth("clinic-a") | evil, follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/v1/models"
    body, boundary = _stow_body([_fundus_instance()])
    response = httpx.post(f"{api_service.url}/dicomweb/studies", params={"task": "dr-grading"}, content=body,
                          headers=auth("clinic-a") | evil | _stow_type(boundary), timeout=60)
    assert response.status_code == 200, response.text
    assert "evil.example" not in response.text
    retrieve_url = response.json()["00081190"]["Value"][0]
    assert retrieve_url.startswith("/dicomweb/studies/")  # relative: MEDIMG_PUBLIC_BASE_URL is unset


def test_search_admin_sees_every_callers_results(api_service: Service, dicom_job: dict) -> None:
    study = pydicom.dcmread(io.BytesIO(httpx.get(
        f"{api_service.url}/v1/jobs/{dicom_job['id']}/artifacts/sr.dcm", headers=auth("clinic-a")).content))
    uid = study.StudyInstanceUID
    for caller, expected in (("ops", 200), ("clinic-a", 200), ("clinic-b", 204)):
        response = httpx.get(f"{api_service.url}/dicomweb/studies", params={"StudyInstanceUID": uid},
                             headers=auth(caller))
        assert response.status_code == expected, caller


def test_idempotency_key_reused_for_another_request_refused(api_service: Service) -> None:
    headers = auth("clinic-b") | {"Idempotency-Key": f"retry-{time.monotonic_ns()}"}
    first = submit_job(api_service, "dr-grading", [("a.png", _photo(7))], headers=headers)
    again = submit_job(api_service, "dr-grading", [("a.png", _photo(7))], headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    other = submit_job(api_service, "dr-grading", [("b.png", _photo(8))], headers=headers)
    assert other.status_code == 422, other.text  # before: the first job, silently
    assert other.json()["code"] == "idempotency-key-reused"
    options = submit_job(api_service, "dr-grading", [("a.png", _photo(7))], headers=headers,
                         options={"referable_threshold": 0.2})
    assert options.status_code == 422


def test_store_jobs_counted_against_rate_limit(api_service: Service) -> None:
    instances = [_fundus_instance() for _ in range(60)]  # 60 series, one job each, over 40 a minute
    body, boundary = _stow_body(instances)
    jobs_before = _accepted_jobs(api_service)
    response = httpx.post(f"{api_service.url}/dicomweb/studies", params={"task": "dr-grading"}, content=body,
                          headers=auth("clinic-b") | _stow_type(boundary), timeout=60)
    assert response.status_code == 429, response.text[:300]  # before: 60 jobs under one token
    assert "60 jobs" in response.json()["detail"] and int(response.headers["retry-after"]) >= 1
    assert _accepted_jobs(api_service) == jobs_before  # nothing was created


def test_store_many_parts_refused_quickly(api_service: Service) -> None:
    boundary = "junk"
    body = b"".join(b"--junk\r\nContent-Type: application/dicom\r\n\r\nx\r\n" for _ in range(100_000)) + b"--junk--"
    started = time.monotonic()
    response = httpx.post(f"{api_service.url}/dicomweb/studies", content=body, timeout=60,
                          headers=auth("clinic-b") | _stow_type(boundary))
    elapsed = time.monotonic() - started
    assert response.status_code == 413, response.text[:300]
    assert "MEDIMG_MAX_UPLOAD_FILES" in response.json()["detail"]
    assert elapsed < 5, elapsed  # before: 9 s of CPU, then 409


def test_docs_served_without_a_cdn(api_service: Service, tmp_path) -> None:
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{api_service.url}{page}").text
        sources = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert sources and all(s.startswith("/docs-assets/") for s in sources), sources
        assert "cdn" not in html.lower() and "fonts.googleapis" not in html
        for source in sources:
            assert httpx.get(f"{api_service.url}{source}").status_code == 200, source
    schemes = httpx.get(f"{api_service.url}/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["Bearer"]["scheme"] == "bearer" and schemes["ApiKey"]["name"] == "X-API-Key"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed: the page was not rendered")
    rendered = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}",
         "--virtual-time-budget=5000", "--dump-dom", f"{api_service.url}/docs"],
        capture_output=True, text=True, timeout=90)
    assert "opblock-summary" in rendered.stdout, rendered.stderr[-2000:]  # operations drawn by Swagger UI
    assert "authorize" in rendered.stdout.lower()  # the API-key schemes give the Authorize button


@functools.cache
def _fundus_dicom() -> bytes:
    return dicom_fundus_bytes(make_fundus(2).rgb[:256, :256])


@functools.cache
def _photo(seed: int) -> bytes:
    return png_bytes(make_fundus(seed).rgb)


def _fundus_instance() -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(_fundus_dicom()))
    dataset.SeriesInstanceUID = generate_uid()
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def _stow_body(instances: list[bytes]) -> tuple[bytes, str]:
    boundary = "medimg-test-boundary"
    parts = [b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), i) for i in instances]
    return b"".join(parts) + b"--%s--\r\n" % boundary.encode(), boundary


def _stow_type(boundary: str) -> dict[str, str]:
    return {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}


def _accepted_jobs(service: Service) -> int:
    return service.gateway.log_path.read_text().count("accepted: task")


def test_openapi_declares_what_the_service_refuses(api_service: Service) -> None:
    paths = httpx.get(f"{api_service.url}/openapi.json").json()["paths"]
    stow = paths["/dicomweb/studies"]["post"]
    assert any(t.startswith("multipart/related") for t in stow["requestBody"]["content"])
    assert {"413", "415", "429"} <= set(stow["responses"])
    assert {"413", "415", "422"} <= set(paths["/v1/jobs"]["post"]["responses"])
    assert {"Bearer", "ApiKey"} == {name for item in paths["/v1/jobs"]["post"]["security"] for name in item}
    assert "security" not in paths["/healthz"]["get"]
