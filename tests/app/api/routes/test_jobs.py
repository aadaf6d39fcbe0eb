"""POST /v1/jobs → GET ?wait= → result, in embedded and Celery mode, and every refusal at the door."""

from __future__ import annotations

import io
import zipfile

import httpx
import numpy as np
from PIL import Image
import pytest

from devkit.api import get_artifact, run_job, submit_job, wait_job
from devkit.fundus import (
    dicom_fundus_bytes,
    dicom_fundus_ybr_jpeg_bytes,
    dicom_mr_volume_bytes,
    jpeg_bytes,
    make_fundus,
    png_bytes,
)
from devkit.services import Service

PROBLEM = "application/problem+json"
DR_RESULT_FIELDS = {"grade", "grade_name", "probabilities", "referable", "referable_probability",
                    "operating_point", "research_use_only"}


@pytest.fixture(params=["embedded", "celery"])
def service(request) -> Service:
    return request.getfixturevalue(f"{request.param}_service")


def stored_files(service: Service) -> set[str]:
    """Jobs in the blob store and anything in the staging area: a rejected upload must add neither."""
    jobs = service.data_dir / "blobs" / "jobs"
    staging = service.data_dir / "staging"
    stored = {str(p) for p in jobs.iterdir()} if jobs.exists() else set()
    return stored | ({str(p) for p in staging.rglob("*")} if staging.exists() else set())


def assert_dr_result(job: dict) -> None:
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert DR_RESULT_FIELDS <= set(result)
    assert 0 <= result["grade"] <= 4
    assert len(result["probabilities"]) == 5
    assert sum(result["probabilities"]) == pytest.approx(1.0, abs=1e-3)
    assert result["referable_probability"] == pytest.approx(sum(result["probabilities"][2:]), abs=1e-3)
    assert result["referable"] == (result["referable_probability"] >= result["operating_point"]["threshold"])
    assert result["research_use_only"] is True
    assert job["model"]["id"] == "dr-grading-reference" and len(job["model"]["sha256"]) == 64


@pytest.mark.parametrize("encoding", ["png", "jpeg", "dicom", "dicom-ybr-jpeg"])
def test_create_job_dr_grading_succeeds(service: Service, encoding: str) -> None:
    fundus = make_fundus(seed=11, grade=4)
    data = {"png": png_bytes, "jpeg": jpeg_bytes, "dicom": dicom_fundus_bytes,
            "dicom-ybr-jpeg": dicom_fundus_ybr_jpeg_bytes}[encoding](fundus.rgb)

    response = submit_job(service, "dr-grading", [("photo", data)])

    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
    assert response.json()["status"] in ("queued", "running", "succeeded")
    job = wait_job(service, response.json()["id"])
    assert_dr_result(job)
    assert job["result"]["grade"] >= 2, "a proliferative synthetic eye must at least be graded referable-range"
    assert job["result"]["quality"]["gradable"] is True
    assert job["started_at"] and job["finished_at"]
    preview = get_artifact(service, job, "retina.jpg")
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(preview.content)) as shown:  # the crop at the model's input size
        assert shown.format == "JPEG" and shown.size == (224, 224) and shown.mode == "RGB"


@pytest.mark.parametrize("picture, reason", [("black", "no-field-of-view"), ("chest-xray", "not-a-fundus-photo")])
def test_create_job_dr_grading_ungradable_photo_succeeds_with_reasons_and_no_grade(
        embedded_service: Service, picture: str, reason: str) -> None:
    from devkit.quality import chest_xray

    pixels = np.zeros((600, 600, 3), np.uint8) if picture == "black" else chest_xray()

    job = run_job(embedded_service, "dr-grading", [("photo.png", png_bytes(pixels))])

    assert job["status"] == "succeeded", job
    assert set(job["result"]) == {"task", "quality", "research_use_only"}  # no grade, no probability
    quality = job["result"]["quality"]
    assert quality["gradable"] is False and [r["code"] for r in quality["reasons"]] == [reason]
    assert job["notes"][0].startswith(f"Not graded: the input failed the quality gate ({reason})")
    assert job["artifacts"] == []


def test_create_job_prefer_wait_answers_the_finished_job_in_one_round_trip(service: Service) -> None:
    fundus = make_fundus(seed=5, grade=3)
    response = submit_job(service, "dr-grading", [("photo.png", png_bytes(fundus.rgb))],
                          headers={"Prefer": "wait=30"})
    assert response.status_code == 200, response.text
    assert response.headers["preference-applied"] == "wait=30"
    job = response.json()
    assert job["status"] == "succeeded" and response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert_dr_result(job)
    # The same job as the stored one: nothing is skipped by answering at once.
    assert wait_job(service, job["id"]) == job


def test_create_job_prefer_wait_zero_or_junk_answers_202_at_once(embedded_service: Service) -> None:
    data = png_bytes(make_fundus(seed=6).rgb)
    for prefer in ("wait=0", "wait=soon, respond-async", "respond-async"):
        response = submit_job(embedded_service, "dr-grading", [("photo.png", data)], headers={"Prefer": prefer})
        assert response.status_code in (200, 202), response.text
        if prefer != "wait=0":
            assert response.status_code == 202 and "preference-applied" not in response.headers
        wait_job(embedded_service, response.json()["id"])


def test_create_job_same_grade_from_png_and_dicom(embedded_service: Service) -> None:
    fundus = make_fundus(seed=3, grade=2)
    from_png = run_job(embedded_service, "dr-grading", [("a.png", png_bytes(fundus.rgb))])
    from_dicom = run_job(embedded_service, "dr-grading", [("a.dcm", dicom_fundus_bytes(fundus.rgb))])
    assert from_png["result"]["probabilities"] == pytest.approx(from_dicom["result"]["probabilities"], abs=1e-4)


def test_create_job_referable_threshold_option_is_honoured(embedded_service: Service) -> None:
    fundus = make_fundus(seed=5, grade=0)
    strict = run_job(embedded_service, "dr-grading", [("a.png", png_bytes(fundus.rgb))],
                     options={"referable_threshold": 0.0})
    assert strict["result"]["referable"] is True
    assert strict["result"]["operating_point"] == {"name": "caller", "threshold": 0.0, "sensitivity": None,
                                                   "specificity": None, "sensitivity_ci95": None,
                                                   "specificity_ci95": None, "measured_on": None, "overridden": True}


def test_create_job_idempotency_key_returns_same_job(embedded_service: Service) -> None:
    data = png_bytes(make_fundus(seed=7).rgb)
    headers = {"Idempotency-Key": "order-123-photo-1"}
    first = submit_job(embedded_service, "dr-grading", [("a.png", data)], headers=headers)
    second = submit_job(embedded_service, "dr-grading", [("a.png", data)], headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers.get("idempotent-replayed") == "true"
    other = submit_job(embedded_service, "dr-grading", [("a.png", data)], headers={"Idempotency-Key": "other"})
    assert other.json()["id"] != first.json()["id"]


def test_create_job_prefer_wait_on_a_replayed_idempotency_key_waits_for_the_earlier_job(
        embedded_service: Service) -> None:
    """The replay names the job of the first submission, not the id the second one would have had."""
    data = png_bytes(make_fundus(seed=8).rgb)
    headers = {"Idempotency-Key": "order-124-photo-1"}
    first = submit_job(embedded_service, "dr-grading", [("a.png", data)], headers=headers)
    replay = submit_job(embedded_service, "dr-grading", [("a.png", data)], headers=headers | {"Prefer": "wait=30"})
    assert replay.status_code == 200, replay.text
    assert replay.headers.get("idempotent-replayed") == "true"
    assert replay.json()["id"] == first.json()["id"] and replay.json()["status"] == "succeeded"


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


BAD_INPUTS = {
    "text file": (415, "unsupported-media-type", "neither DICOM",
                  [("notes.txt", b"patient notes, not an image\n" * 20)]),
    "pdf renamed to png": (415, "unsupported-media-type", "neither DICOM", [("scan.png", b"%PDF-1.7\n" + b"0" * 500)]),
    "MR volume": (422, "unsuitable-input", "Modality MR", [("mr.dcm", dicom_mr_volume_bytes())]),
    "ZIP without DICOM": (422, "unsuitable-input", "no DICOM file inside",
                          [("study.zip", _zip({"README.txt": b"hello", "a.jpg": b"x"}))]),
    "truncated DICOM": (422, "unsuitable-input", "truncated",
                        [("f.dcm", _truncated(dicom_fundus_bytes(make_fundus(1).rgb)))]),
    "truncated compressed DICOM": (422, "unsuitable-input", "truncated",
                                   [("f.dcm", _truncated(dicom_fundus_ybr_jpeg_bytes(make_fundus(1).rgb)))]),
    "truncated PNG": (422, "unsuitable-input", "truncated", [("f.png", _truncated(png_bytes(make_fundus(1).rgb)))]),
    "truncated JPEG": (422, "unsuitable-input", "truncated", [("f.jpg", _truncated(jpeg_bytes(make_fundus(1).rgb)))]),
    "tiny image": (422, "unsuitable-input", "at least", [("f.png", png_bytes(make_fundus(1).rgb[:64, :64]))]),
    "two photos in one job": (422, "unsuitable-input", "at most 1",
                              [("a.png", png_bytes(make_fundus(1).rgb)), ("b.png", png_bytes(make_fundus(2).rgb))]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_create_job_bad_input_refused_and_nothing_stored(service: Service, case: str) -> None:
    status, code, explanation, files = BAD_INPUTS[case]
    before = stored_files(service)

    response = submit_job(service, "dr-grading", files)

    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == status and problem["code"] == code
    assert explanation in problem["detail"]
    assert stored_files(service) == before


@pytest.mark.parametrize(
    ("options", "field"),
    [({"referable_threshold": 1.5}, "options.referable_threshold"),
     ({"no_such_option": 1}, "options.no_such_option")],
)
def test_create_job_invalid_options_refused(embedded_service: Service, options: dict, field: str) -> None:
    response = submit_job(embedded_service, "dr-grading", [("a.png", png_bytes(make_fundus(1).rgb))], options)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["code"] == "invalid-options"
    assert field in response.json()["detail"]


def test_create_job_options_not_json_refused(embedded_service: Service) -> None:
    response = httpx.post(f"{embedded_service.url}/v1/jobs", data={"task": "dr-grading", "options": "{oops"},
                          files=[("files", ("a.png", png_bytes(make_fundus(1).rgb)))])
    assert response.status_code == 422
    assert "not valid JSON" in response.json()["detail"]


def test_create_job_unknown_task_refused(embedded_service: Service) -> None:
    response = submit_job(embedded_service, "tea-leaf-reading", [("a.png", png_bytes(make_fundus(1).rgb))])
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert "dr-grading" in response.json()["detail"]


def test_create_job_without_files_refused(embedded_service: Service) -> None:
    response = httpx.post(f"{embedded_service.url}/v1/jobs", data={"task": "dr-grading"})
    assert response.status_code == 422
    assert "files" in response.json()["detail"]


def test_read_job_not_found(embedded_service: Service) -> None:
    response = httpx.get(f"{embedded_service.url}/v1/jobs/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["code"] == "job-not-found"


def test_read_artifact_not_found_names_available(embedded_service: Service) -> None:
    job = run_job(embedded_service, "dr-grading", [("a.png", png_bytes(make_fundus(2).rgb))])
    response = get_artifact(embedded_service, job, "nope.png")
    assert response.status_code == 404
    assert "retina.jpg" in response.json()["detail"]


def test_read_job_wait_returns_when_finished(embedded_service: Service) -> None:
    response = submit_job(embedded_service, "dr-grading", [("a.png", png_bytes(make_fundus(9).rgb))])
    job = httpx.get(f"{embedded_service.url}{response.headers['location']}", params={"wait": 30}, timeout=40).json()
    assert job["status"] == "succeeded"


def test_delete_job_removes_everything(service: Service) -> None:
    job = run_job(service, "dr-grading", [("a.png", png_bytes(make_fundus(4).rgb))])
    job_dir = service.data_dir / "blobs" / "jobs" / job["id"]
    assert any(job_dir.rglob("*"))

    response = httpx.delete(f"{service.url}/v1/jobs/{job['id']}")

    assert response.status_code == 204
    assert not job_dir.exists()
    assert httpx.get(f"{service.url}/v1/jobs/{job['id']}").status_code == 404
    assert get_artifact(service, job, "retina.jpg").status_code == 404
