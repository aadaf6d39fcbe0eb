"""Celery mode: the outbox lives in Redis and a worker consuming the `exports` queue sends. The archive is
down when the job ends, so the first attempt fails; once it is up, the retry delivers the study to it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import httpx
import pydicom
import pytest
import redis

from tests.utils.exports import assert_study_viewable, result_uids, sent, us_instance, wait_export, wait_job_as
from tests.utils.pacs import Orthanc, orthanc_available
from devkit.services import RedisServer, Service, service_env

pytestmark = pytest.mark.skipif(not orthanc_available(), reason="Debian packages orthanc, orthanc-dicomweb needed")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path_factory.mktemp("archive"))  # started by the test, after the first attempt
    yield server
    server.stop()


@pytest.fixture(scope="module")
def celery_export_service(tmp_path_factory, redis_server: RedisServer, archive: Orthanc) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("celery-export")
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/3"  # a database of its own: no other test's worker
    destinations = [{"name": "archive", "kind": "dicomweb", "url": archive.dicomweb, "include_sources": True}]
    env = service_env(data_dir, redis_url, MEDIMG_EXPORT_DESTINATIONS=json.dumps(destinations),
                      MEDIMG_EXPORT_RETRY_FIRST_SECONDS="1", MEDIMG_EXPORT_RETRY_MAX_SECONDS="2",
                      MEDIMG_EXPORT_POLL_SECONDS="0.2", MEDIMG_EXPORT_MAX_ATTEMPTS="30")
    service = Service(data_dir, env)
    service.start_worker(queues="thyroid-malignancy,exports")
    service.start_gateway()
    yield service
    service.stop()


def test_worker_exports_from_the_redis_outbox_once_the_archive_is_up(celery_export_service: Service,
                                                                      archive: Orthanc, redis_server) -> None:
    service, data = celery_export_service, us_instance(11)
    response = httpx.post(f"{service.url}/v1/jobs", data={"task": "thyroid-malignancy", "export_to": "archive"},
                          files=[("files", ("us.dcm", data, "application/dicom"))], timeout=60)
    assert response.status_code == 202, response.text
    job = wait_job_as(service, response.json()["id"], None)
    assert job["status"] == "succeeded", job

    failing = wait_export(service, job["id"], "archive", lambda e: e["attempts"] >= 1 and e["last_error"], None)
    assert failing["status"] != "sent" and "STOW-RS" in failing["last_error"], failing
    stored = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/3").hget(f"medimg:exports:{job['id']}",
                                                                                  "archive")
    assert json.loads(stored)["status"] in ("pending", "sending")

    archive.start()
    export = wait_export(service, job["id"], "archive", sent, None)
    assert export["attempts"] >= 2
    source = pydicom.dcmread(io.BytesIO(data))
    assert_study_viewable(archive, source.StudyInstanceUID, source.SOPInstanceUID, result_uids(service, job, None))
    worker_log = service.workers[0].log_path.read_text(errors="replace")
    assert f"job {job['id']}: exported to archive" in worker_log  # sent by the worker, not the gateway
