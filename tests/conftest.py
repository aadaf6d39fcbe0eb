"""Session fixtures: real services over real HTTP, a real Redis and a real Celery worker process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.utils.services import RedisServer, Service, service_env, start_redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
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
