"""Inputs, then whole jobs, are purged once their retention is over; unfinished jobs never are."""

from __future__ import annotations

from datetime import timedelta

from app.retention import purge_expired
from app.schemas.jobs import JobStatus, utcnow
from app.storage.blobs import FilesystemBlobStore
from app.storage.factory import make_model_repository
from app.storage.jobs import SqliteJobStore
from tests.utils.jobs import make_settings, stored_dr_job


def test_purge_expired_removes_inputs_then_jobs(tmp_path) -> None:
    settings = make_settings(tmp_path, retention_input_hours=1, retention_job_hours=24)
    jobs, blobs = SqliteJobStore(settings.sqlite_path), FilesystemBlobStore(settings.blob_dir)
    repository = make_model_repository(settings)
    now = utcnow()

    def finished_job(hours_ago: float):
        job = stored_dr_job(blobs, repository, b"png", status=JobStatus.SUCCEEDED,
                            finished_at=now - timedelta(hours=hours_ago))
        blobs.put_bytes(f"jobs/{job.id}/artifacts/retina.jpg", b"png")
        return jobs.create(job)[0]

    fresh, old_inputs, expired = finished_job(0.5), finished_job(2), finished_job(30)
    running, _ = jobs.create(stored_dr_job(blobs, repository, b"png", status=JobStatus.RUNNING))

    report = purge_expired(jobs, blobs, settings, now=now)

    assert (report.inputs_removed, report.jobs_removed) == (1, 1)
    assert blobs.exists(fresh.inputs[0].key)
    assert not blobs.exists(old_inputs.inputs[0].key)
    assert jobs.get(old_inputs.id).inputs == [] and blobs.exists(f"jobs/{old_inputs.id}/artifacts/retina.jpg")
    assert expired.id not in {j.id for j in jobs.iter_jobs()}
    assert not (settings.blob_dir / "jobs" / expired.id).exists()
    assert blobs.exists(running.inputs[0].key)
