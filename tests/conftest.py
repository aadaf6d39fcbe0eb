"""Session fixtures: real services over real HTTP, a real Redis and a real Celery worker process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.utils.s3 import MotoServer
from devkit.services import RabbitVhost, RedisServer, Service, free_port, service_env, start_redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory) -> Iterator[MotoServer]:
    """moto's S3 API as a real server process on a free port, for the S3 blob store."""
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def embedded_service(tmp_path_factory) -> Iterator[Service]:
    """The gateway in its default embedded mode: in-process worker pool, SQLite, blobs on disk."""
    data_dir = tmp_path_factory.mktemp("embedded")
    service = Service(data_dir, service_env(data_dir))
    service.start_gateway()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def celery_service(tmp_path_factory, redis_server) -> Iterator[Service]:
    """The gateway in Celery mode with one worker process consuming every queue."""
    data_dir = tmp_path_factory.mktemp("celery")
    service = Service(data_dir, service_env(data_dir, redis_server.url))
    service.start_worker()
    service.start_gateway()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def ops_service(tmp_path_factory, redis_server, moto_server) -> Iterator[Service]:
    """Celery mode as deployed on many hosts: blobs in S3 (moto), worker /metrics and heartbeat file on.

    It uses a Redis database of its own, so its worker and the `celery_service` one never take each other's jobs.
    """
    data_dir = tmp_path_factory.mktemp("ops")
    redis_url = redis_server.url.rsplit("/", 1)[0] + ("/1" if not redis_server.url.endswith("/1") else "/2")
    env = service_env(
        data_dir, redis_url, **moto_server.settings_env(moto_server.new_bucket()),
        MEDIMG_WORKER_METRICS_PORT=str(free_port()),
        MEDIMG_WORKER_HEARTBEAT_FILE=str(data_dir / "run" / "worker.heartbeat"),
    )
    service = Service(data_dir, env)
    service.start_worker(queues="dr-grading")
    service.start_gateway()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def ops_dicom_job(ops_service: Service) -> dict:
    """One DR job on a DICOM photograph with patient identifiers, run through `ops_service` to the end."""
    from devkit.api import run_job
    from tests.utils.ops import PHI, phi_dicom_fundus

    job = run_job(ops_service, "dr-grading", [("Quixote_Alonso.dcm", phi_dicom_fundus())])
    assert job["status"] == "succeeded", job
    return job | {"phi": PHI}


@pytest.fixture
def rabbitmq_vhost() -> Iterator[RabbitVhost]:
    """A private vhost on the machine's RabbitMQ (127.0.0.1:5672, shared with other runs), deleted at the end.
    .ci/run starts the server where none answers, so here a missing server is a failure, not a skip."""
    assert RabbitVhost.available(), "RabbitMQ does not answer on 127.0.0.1:5672 (.ci/run starts rabbitmq-server)"
    vhost = RabbitVhost().create()
    yield vhost
    vhost.delete()
