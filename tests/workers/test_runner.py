"""The runner records every outcome, never runs a finished job twice, and caps redeliveries."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.schemas.jobs import JobStatus
from devkit.fundus import make_fundus, png_bytes
from tests.utils.jobs import stored_dr_job, make_settings
from workers.runner import run_job
from workers.runtime import WorkerRuntime


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> WorkerRuntime:
    return WorkerRuntime.create(make_settings(tmp_path_factory.mktemp("runner"), max_deliveries=2))


@pytest.fixture(scope="module")
def photo() -> bytes:
    return png_bytes(make_fundus(seed=21).rgb)


def test_run_job_succeeds_and_records_stages(runtime: WorkerRuntime, photo: bytes) -> None:
    job, _ = runtime.jobs.create(stored_dr_job(runtime.blobs, runtime.repository, photo))
    finished = run_job(job.id, runtime)
    assert finished.status is JobStatus.SUCCEEDED
    assert finished.attempts == 1
    assert set(finished.stage_seconds) == {"load", "quality", "preprocess", "infer", "uncertainty", "decode", "outputs"}
    assert runtime.jobs.get(job.id).result == finished.result
    assert runtime.blobs.exists(finished.artifacts[0].key)


def test_run_job_finished_job_not_run_again(runtime: WorkerRuntime, photo: bytes) -> None:
    job, _ = runtime.jobs.create(stored_dr_job(runtime.blobs, runtime.repository, photo))
    first = run_job(job.id, runtime)
    again = run_job(job.id, runtime)  # a redelivered message after the job finished
    assert again.attempts == first.attempts == 1
    assert again.finished_at == first.finished_at


def test_run_job_redelivery_cap_fails_job(runtime: WorkerRuntime, photo: bytes) -> None:
    # Two earlier deliveries started the job and their worker died before recording anything.
    job, _ = runtime.jobs.create(
        stored_dr_job(runtime.blobs, runtime.repository, photo, status=JobStatus.RUNNING, attempts=2)
    )
    failed = run_job(job.id, runtime)
    assert failed.status is JobStatus.FAILED
    assert failed.error.code == "worker-lost" and failed.error.kind == "infrastructure"
    assert "started 2 times" in failed.error.detail
    assert failed.result is None


def test_run_job_undecodable_input_fails_as_bad_input(runtime: WorkerRuntime) -> None:
    broken = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
    job, _ = runtime.jobs.create(stored_dr_job(runtime.blobs, runtime.repository, broken))
    failed = run_job(job.id, runtime)
    assert failed.status is JobStatus.FAILED
    assert failed.error.kind == "bad-input"
    assert "could not be decoded" in failed.error.detail


def test_run_job_deleted_job_is_skipped(runtime: WorkerRuntime, photo: bytes) -> None:
    job, _ = runtime.jobs.create(stored_dr_job(runtime.blobs, runtime.repository, photo))
    runtime.jobs.delete(job.id)
    assert run_job(job.id, runtime) is None


def test_run_job_missing_input_fails_as_infrastructure(runtime: WorkerRuntime, photo: bytes, tmp_path: Path) -> None:
    job, _ = runtime.jobs.create(stored_dr_job(runtime.blobs, runtime.repository, photo))
    runtime.blobs.delete_prefix(f"jobs/{job.id}")
    failed = run_job(job.id, runtime)
    assert failed.error.code == "input-missing" and failed.error.kind == "infrastructure"


def test_run_job_other_message_of_a_running_job_stands_down(runtime: WorkerRuntime, photo: bytes) -> None:
    # The original message started the job; its STAT copy (sent after aging) arrives at another worker.
    job, _ = runtime.jobs.create(stored_dr_job(runtime.blobs, runtime.repository, photo, status=JobStatus.RUNNING,
                                               attempts=1, delivery_id="original"))
    assert run_job(job.id, runtime, delivery_id="original.aged") is None
    assert runtime.jobs.get(job.id).attempts == 1
    taken_over = run_job(job.id, runtime, delivery_id="original")  # the same message again: its worker was lost
    assert taken_over.status is JobStatus.SUCCEEDED and taken_over.attempts == 2
