"""Marked patient identifiers reach no log line, metric or error detail, whatever happens to the job."""

from __future__ import annotations

import io

import httpx
import pydicom

from devkit.api import run_job, submit_job
from devkit.fundus import dicom_fundus_bytes, dicom_fundus_ybr_jpeg_bytes, make_fundus
from devkit.services import Service

MARKS = ["Qwertzuiop^Marked", "MRN-7788-MARK", "19011231", "ACC-MARK-42"]


def _marked(data: bytes, modality: str | None = None) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.PatientName, dataset.PatientID, dataset.PatientBirthDate, dataset.AccessionNumber = MARKS
    if modality:
        dataset.Modality = modality
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def test_marked_identifiers_absent_from_logs_metrics_and_errors(embedded_service: Service) -> None:
    rgb = make_fundus(12).rgb
    answers: list[str] = []
    ok = run_job(embedded_service, "dr-grading", [("Qwertzuiop.dcm", _marked(dicom_fundus_bytes(rgb)))])
    answers.append(str(ok))
    answers.append(str(run_job(embedded_service, "dr-grading", [("x.dcm", _marked(dicom_fundus_ybr_jpeg_bytes(rgb)))])))
    wrong_modality = submit_job(embedded_service, "dr-grading", [("x.dcm", _marked(dicom_fundus_bytes(rgb), "MR"))])
    truncated = submit_job(embedded_service, "dr-grading", [("x.dcm", _marked(dicom_fundus_bytes(rgb))[:5000])])
    assert wrong_modality.status_code == truncated.status_code == 422
    answers += [wrong_modality.text, truncated.text]
    answers.append(httpx.get(f"{embedded_service.url}/metrics").text)

    logs = "\n".join(path.read_text(errors="replace") for path in embedded_service.log_paths)
    assert ok["id"] in logs  # the log does record the job, by id
    for mark in MARKS:
        assert mark not in logs, f"{mark} leaked into a log"
        assert all(mark not in answer for answer in answers), f"{mark} leaked into an answer"
