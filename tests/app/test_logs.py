"""JSON logs: job id and task on every line logged during a job, and never a patient identifier."""

from __future__ import annotations

import json
import logging

import pytest

from app.logs import JsonFormatter, bind_job_task, job_log_context
from tests.utils.ops import json_lines
from devkit.services import Service


def format_line(message: str) -> dict:
    record = logging.LogRecord("medimg.test", logging.INFO, __file__, 1, message, None, None)
    return json.loads(JsonFormatter().format(record))


def test_json_formatter_adds_job_fields_inside_context() -> None:
    assert "job_id" not in format_line("outside")
    with job_log_context("job-1"):
        assert format_line("loading")["job_id"] == "job-1"
        bind_job_task("dr-grading")
        assert format_line("running").items() >= {"job_id": "job-1", "task": "dr-grading"}.items()
    assert "job_id" not in format_line("after") and "task" not in format_line("after")


@pytest.mark.slow
def test_job_logs_carry_job_id_and_task(ops_service: Service, ops_dicom_job: dict) -> None:
    worker_lines = [line for path in ops_service.log_paths[1:] for line in json_lines(path)]
    # Lines of the job's run; Celery's own "Task ... received" comes from the parent process, before the run.
    job_lines = [line for line in worker_lines
                 if ops_dicom_job["id"] in line["message"] and not line["logger"].startswith("celery.")]
    assert any("started" in line["message"] for line in job_lines)
    assert any("succeeded" in line["message"] for line in job_lines)
    for line in job_lines:
        assert line.get("job_id") == ops_dicom_job["id"] and line.get("task") == "dr-grading", line


@pytest.mark.slow
def test_job_logs_contain_no_patient_identifiers(ops_service: Service, ops_dicom_job: dict) -> None:
    text = "\n".join(path.read_text(errors="replace") for path in ops_service.log_paths)
    assert ops_dicom_job["id"] in text  # the capture did see the job
    for attribute, spellings in ops_dicom_job["phi"].items():
        for value in spellings:
            assert value.lower() not in text.lower(), f"{attribute} value {value!r} is in the logs"
