"""Mixed workloads over real HTTP: a photo never waits behind CT volumes, and a STAT study starts next.

Embedded pool (default lanes), and Celery with one worker process on Redis and on RabbitMQ. Jobs left queued
when a test has seen what it needs are deleted, so they cost nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest

from devkit.api import TIMEOUT, submit_job, wait_job
from devkit.ct import nodule_scan, synthetic_ct
from devkit.fundus import make_fundus, png_bytes
from devkit.services import RabbitVhost, Service, service_env

CT_TASK = "lung-nodule-detection"


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory) -> list[tuple[str, bytes]]:
    """A small chest CT (16 slices of 128 x 128): seconds of work for the reference model, far more than a photo."""
    scan = nodule_scan(seed=3, matrix=128, z_extent_mm=40.0, diameters=(9.0,))
    paths = synthetic_ct().write_ct_series(scan.hu, scan.grid, tmp_path_factory.mktemp("ct"))
    return [(f"{index}.dcm", path.read_bytes()) for index, path in enumerate(paths)]


@pytest.fixture(scope="module")
def long_ct_files(tmp_path_factory) -> list[tuple[str, bytes]]:
    """A chest CT of 32 slices of 256 x 256: about two seconds of work on a quiet core, so that six of them
    queued behind a lane of one thread keep it busy for longer than any photo takes, however fast the machine."""
    scan = nodule_scan(seed=3, matrix=256, z_extent_mm=80.0, diameters=(9.0,))
    paths = synthetic_ct().write_ct_series(scan.hu, scan.grid, tmp_path_factory.mktemp("long-ct"))
    return [(f"{index}.dcm", path.read_bytes()) for index, path in enumerate(paths)]


@pytest.fixture(scope="module")
def two_thread_service(tmp_path_factory) -> Iterator[Service]:
    """The embedded pool with 2 threads and the default lanes: the CT lane may hold all threads but one (here one),
    so CT work saturates what CT may use while the other lanes keep a thread."""
    data_dir = tmp_path_factory.mktemp("two-threads")
    service = Service(data_dir, service_env(data_dir, MEDIMG_EMBEDDED_WORKERS="2"))
    service.start_gateway()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def rabbitmq_service(tmp_path_factory, redis_server) -> Iterator[Service]:
    """Celery mode with RabbitMQ as the broker (a vhost of its own), job state in Redis, one CT worker process."""
    if not RabbitVhost.available():
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672 (Debian package rabbitmq-server)")
    vhost = RabbitVhost().create()
    data_dir = tmp_path_factory.mktemp("rabbitmq")
    store_url = redis_server.url.rsplit("/", 1)[0] + "/3"
    service = Service(data_dir, service_env(data_dir, store_url, MEDIMG_BROKER_URL=vhost.url))
    try:
        service.start_worker(queues=CT_TASK)
        service.start_gateway()
        yield service
    finally:
        service.stop()
        vhost.delete()


def submitted(service: Service, files, priority: str | None = None, task: str = CT_TASK) -> dict:
    response = submit_job(service, task, files, priority=priority)
    assert response.status_code == 202, response.text
    return response.json()


def read(service: Service, job_id: str) -> dict:
    return httpx.get(f"{service.url}/v1/jobs/{job_id}", timeout=TIMEOUT).json()


def wait_started(service: Service, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while (job := read(service, job_id))["status"] == "queued":
        assert time.monotonic() < deadline, f"job {job_id} still queued after {timeout}s"
        time.sleep(0.2)
    return job


def when(job: dict, field: str) -> datetime:
    return datetime.fromisoformat(job[field])


def assert_started_before(service: Service, first: dict, others: list[dict]) -> None:
    for other in (read(service, job["id"]) for job in others):
        assert other["started_at"] is None or when(first, "started_at") < when(other, "started_at"), (first, other)


def delete(service: Service, jobs: list[dict]) -> None:
    for job in jobs:
        httpx.delete(f"{service.url}/v1/jobs/{job['id']}", timeout=TIMEOUT)


def test_create_job_embedded_photo_and_stat_pass_ct_backlog(two_thread_service: Service, long_ct_files) -> None:
    service = two_thread_service
    routine = [submitted(service, long_ct_files) for _ in range(5)]  # one runs (the CT lane's cap), four wait
    stat = submitted(service, long_ct_files, priority="stat")
    try:
        assert stat["priority"] == "stat" and routine[0]["priority"] == "routine"
        assert stat["queue"] == {"lane": "ct", "position": 1, "exact": True}

        began = time.monotonic()
        photo = submit_job(service, "dr-grading", [("eye.png", png_bytes(make_fundus(4).rgb))],
                           headers={"Prefer": "wait=30"})
        latency = time.monotonic() - began
        assert photo.status_code == 200 and photo.json()["status"] == "succeeded", photo.text
        assert latency < 10, f"the photo took {latency:.1f}s behind CT work"
        photo = photo.json()
        assert (when(photo, "started_at") - when(photo, "created_at")).total_seconds() < 2  # no wait in its lane
        # It overtook CT work submitted before it: some had not even started when the photo was done.
        later = [job for job in (read(service, r["id"]) for r in routine)
                 if job["started_at"] is None or when(job, "started_at") > when(photo, "finished_at")]
        assert later, "the photo should have finished while CT jobs were still waiting"

        # STAT starts next: before every routine job that had not started when the STAT job was queued.
        stat = wait_started(service, stat["id"])
        overtaken = [job for job in (read(service, r["id"]) for r in routine)
                     if job["started_at"] is None or when(job, "started_at") > when(stat, "created_at")]
        assert overtaken, "routine CT jobs should still have been waiting when the STAT job came"
        assert_started_before(service, stat, overtaken)
        metrics = httpx.get(f"{service.url}/metrics", timeout=TIMEOUT).text
        assert 'medimg_job_queue_wait_seconds_count{priority="stat",task="lung-nodule-detection"}' in metrics
        assert 'medimg_lane_running_jobs{lane="ct"}' in metrics
    finally:
        delete(service, [*routine, stat])


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_create_job_celery_stat_starts_next(request, broker: str, ct_files) -> None:
    """One worker process (prefetch 1, late acks); five routine CT jobs and then a STAT one queued before it fetches."""
    service = request.getfixturevalue("celery_service" if broker == "redis" else "rabbitmq_service")
    # The worker is stopped while the jobs are queued, so how fast a CT job runs on this machine cannot reorder
    # them; then it comes back, and its first fetch must be the STAT message.
    paused = [worker for worker in service.workers if worker.process is not None]
    for worker in paused:
        worker.stop()
    waiting, stat = [], None
    try:
        waiting = [submitted(service, ct_files) for _ in range(5)]
        stat = submitted(service, ct_files, priority="stat")
        assert stat["queue"] == {"lane": CT_TASK, "position": 1, "exact": False}
        assert read(service, waiting[4]["id"])["queue"]["position"] == 6  # behind four routine and the STAT
        for worker in paused:
            worker.start()

        stat = wait_job(service, stat["id"], timeout=120)
        assert stat["status"] == "succeeded", stat
        assert_started_before(service, stat, waiting)
    finally:
        for worker in paused:
            if worker.process is None:
                worker.start()
        delete(service, [*waiting, *([stat] if stat else [])])
