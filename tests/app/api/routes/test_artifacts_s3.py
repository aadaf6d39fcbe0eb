"""The job path end to end with blobs in S3: gateway and Celery worker on moto's S3 server, artifact streamed."""

from __future__ import annotations

import pytest

from devkit.api import get_artifact
from devkit.services import Service

pytestmark = pytest.mark.slow


def test_read_artifact_streams_from_s3(ops_service: Service, ops_dicom_job: dict, moto_server) -> None:
    artifact = next(a for a in ops_dicom_job["artifacts"] if a["name"] == "retina.jpg")
    response = get_artifact(ops_service, ops_dicom_job, artifact["name"])
    assert response.status_code == 200
    assert response.headers["content-type"] == artifact["media_type"]
    assert len(response.content) == artifact["size_bytes"] and response.content.startswith(b"\xff\xd8\xff")
    bucket = ops_service.env["MEDIMG_BLOB_URL"].removeprefix("s3://").split("/")[0]
    keys = [o["Key"] for o in moto_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert f"blobs/jobs/{ops_dicom_job['id']}/artifacts/{artifact['name']}" in keys
    # Nothing of the job stays on the shared data volume: inputs and outputs live in the bucket only.
    assert not (ops_service.data_dir / "blobs" / "jobs" / ops_dicom_job["id"]).exists()
    assert not list((ops_service.data_dir / "blob-cache").glob(f"jobs/{ops_dicom_job['id']}/inputs/*"))
