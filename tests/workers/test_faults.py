"""No job lost, none run to a second result: a SIGKILLed worker, a Redis restart, a gateway restart,
and an input that kills its worker every time — each with real processes, on Redis and on RabbitMQ.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.schemas.tasks import TaskName
from app.storage.jobs import RedisJobStore
from devkit.api import submit_job, wait_job
from devkit.fundus import big_png, jpeg_bytes, make_fundus, png_bytes
from devkit.services import RedisServer, RestartPolicy, Service, service_env

JOBS_IN_FLIGHT = 50
FAST_LIMITS = {  # redelivery after a lost worker waits out the visibility timeout (2 x hard limit)
    "MEDIMG_TASK_SOFT_TIME_LIMIT": "4",
    "MEDIMG_TASK_TIME_LIMIT": "5",
    "MEDIMG_MAX_DELIVERIES": "3",
    "MEDIMG_LOST_JOB_CHECK_SECONDS": "2",
    "MEDIMG_LOST_JOB_GRACE_SECONDS": "5",
}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Service, RedisServer]]:
    if not RedisServer.available():
        pytest.skip("redis-server is not installed, so Redis cannot be restarted by the test")
    server = RedisServer(tmp_path / "redis").start()
    service = Service(tmp_path / "data", service_env(tmp_path / "data", server.url, **FAST_LIMITS))
    service.start_worker(concurrency=2)
    service.start_gateway()
    yield service, server
    service.stop()
    server.stop()


def _submit_many(service: Service, count: int) -> list[str]:
    photos = [png_bytes(make_fundus(seed, size=320).rgb) for seed in range(5)]
    ids = []
    for index in range(count):
        response = submit_job(service, "dr-grading", [("eye.png", photos[index % len(photos)])])
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def _succeeded_lines(service: Service) -> Counter:
    pattern = re.compile(r"job ([0-9a-f-]{36}) succeeded")
    counts: Counter = Counter()
    for path in service.log_paths:
        counts.update(pattern.findall(path.read_text(errors="replace")))
    return counts


def _assert_all_done_once(service: Service, ids: list[str]) -> None:
    jobs = [wait_job(service, job_id, timeout=180) for job_id in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * len(ids), [j["error"] for j in jobs if j["error"]]
    # A result is recorded at most once per job (a line can be missing when Redis dropped the reply to
    # the write that recorded it; the job store above is the proof that it was recorded).
    counts = _succeeded_lines(service)
    assert all(counts[job_id] <= 1 for job_id in ids), {k: v for k, v in counts.items() if v > 1}


def _assert_counts_drained(server: RedisServer) -> None:
    """The per-task count KEDA reads (LLEN) is back to 0 once every job ended, through real workers."""
    client = redis.Redis.from_url(server.url)
    counts = {task.value: client.llen(RedisJobStore.unfinished_list(task)) for task in TaskName}
    client.close()
    assert set(counts.values()) == {0}, counts  # (a list emptied by its last LPOP is gone: LLEN says 0)


def _wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _finished(server: RedisServer, ids: list[str]) -> int:
    client = redis.Redis.from_url(server.url)
    docs = [client.get(f"medimg:job:{job_id}") for job_id in ids]
    return sum(1 for d in docs if d and json.loads(d)["status"] in ("succeeded", "failed"))


def _queue_then_start_worker(service: Service, server: RedisServer) -> list[str]:
    """All jobs queued before a worker takes any, then the first few done: the fault that follows lands with
    most jobs still queued or running, however fast a job has become (they once finished as fast as they
    were submitted, and the kill found none left to lose)."""
    service.workers[0].stop()
    ids = _submit_many(service, JOBS_IN_FLIGHT)
    service.start_worker(concurrency=2)
    _wait_for(lambda: _finished(server, ids) >= 5, 120)
    return ids


def test_worker_sigkilled_mid_run_loses_no_job(stack) -> None:
    service, server = stack
    ids = _queue_then_start_worker(service, server)

    service.workers[-1].stop(signal.SIGKILL)  # the whole worker, parent and children, as an OOM kill would
    assert _finished(server, ids) < JOBS_IN_FLIGHT, "the kill must land while jobs are still in flight"
    service.start_worker(concurrency=2)

    _assert_all_done_once(service, ids)
    _assert_counts_drained(server)


def _job_doc(client: redis.Redis, job_id: str) -> dict:
    return json.loads(client.get(f"medimg:job:{job_id}"))


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_whole_worker_killed_mid_job_resumes_elsewhere_within_60s(broker: str, tmp_path: Path, request) -> None:
    """The default time limits stay (Redis's visibility timeout: 1,200 s): only the heartbeat sweep can be
    this quick. The heartbeat is 1 s here (3 s TTL); a deployment's 10 s makes it about ten times longer."""
    if not RedisServer.available():
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path / "redis").start()
    env = service_env(tmp_path / "data", server.url)
    if broker == "rabbitmq":
        env["MEDIMG_BROKER_URL"] = request.getfixturevalue("rabbitmq_vhost").url
    service = Service(tmp_path / "data", env)
    client = redis.Redis.from_url(server.url)
    try:
        for _ in range(2):
            service.start_worker(queues="dr-grading")
        service.start_gateway()
        _wait_for(lambda: len(_workers_beating(client)) == 2, 120)
        job_id = submit_job(service, "dr-grading", [("big.png", big_png())]).json()["id"]
        _wait_for(lambda: _job_doc(client, job_id)["status"] == "running", 60)
        holder = _job_doc(client, job_id)["worker"]
        killed = next(w for w in service.workers if _parent_of(int(holder.rsplit(":", 1)[1])) == w.process.pid)

        killed_at = time.monotonic()
        killed.stop(signal.SIGKILL)  # the process group: Celery's parent and its pool, as a container kill
        assert _job_doc(client, job_id)["attempts"] == 1, "the kill must land mid-job"
        _wait_for(lambda: _job_doc(client, job_id)["attempts"] == 2, 60)
        resumed_after = time.monotonic() - killed_at
        assert _job_doc(client, job_id)["worker"] != holder

        job = wait_job(service, job_id, timeout=max(1.0, 60 - (time.monotonic() - killed_at)))
        assert job["status"] == "succeeded", job["error"]
        assert time.monotonic() - killed_at < 60
        _wait_for(lambda: _succeeded_lines(service)[job_id] >= 1, 10)  # logged just after it was recorded
        assert _succeeded_lines(service)[job_id] == 1
        _assert_counts_drained(server)
        print(f"{broker}: kill -> running on another worker in {resumed_after:.1f} s")  # README's figure (-s)
    finally:
        service.stop()
        client.close()
        server.stop()


def _workers_beating(client: redis.Redis) -> list[bytes]:
    return list(client.scan_iter(match="medimg:worker-heartbeat:*"))


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_redis_restart_mid_run_loses_no_job(stack) -> None:
    service, server = stack
    ids = _queue_then_start_worker(service, server)

    assert _finished(server, ids) < JOBS_IN_FLIGHT, "the restart must land while jobs are still in flight"
    with RestartPolicy(service.workers) as orchestrator:
        server.stop()  # persistence is on (appendonly, fsync always), as in the compose file
        assert server.process is None
        server.start()
        _assert_all_done_once(service, ids)
    print(f"worker processes restarted by the restart policy: {orchestrator.restarts}")
    _assert_counts_drained(server)
    # The gateway went on answering through the restart and still does.
    assert submit_job(service, "dr-grading", [("a.png", png_bytes(make_fundus(1).rgb))]).status_code == 202


def test_gateway_restart_keeps_jobs_and_results(stack) -> None:
    service, _ = stack
    ids = _submit_many(service, 10)
    service.gateway.stop(signal.SIGKILL)
    service.start_gateway()
    _assert_all_done_once(service, ids)


def _children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def test_input_that_kills_its_worker_every_time_fails_after_cap(stack) -> None:
    service, server = stack
    client = redis.Redis.from_url(server.url)
    # A large photograph keeps the job running long enough to be caught in the act each time.
    job_id = submit_job(service, "dr-grading", [("big.png", big_png())]).json()["id"]

    parent = service.workers[0].process.pid
    for attempt in (1, 2, 3):
        def running() -> bool:
            doc = json.loads(client.get(f"medimg:job:{job_id}"))
            return doc["status"] == "running" and doc["attempts"] == attempt

        _wait_for(running, 60)
        for child in _children(parent):  # the pool process running it dies as a segfault would kill it
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)

    failed = wait_job(service, job_id, timeout=120)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "worker-lost"
    assert "started 3 times" in failed["error"]["detail"]
    # The queue keeps moving: the next job runs normally.
    after = wait_job(service, submit_job(service, "dr-grading", [("a.jpg", jpeg_bytes(make_fundus(4).rgb))]).json()["id"])
    assert after["status"] == "succeeded"
    _assert_counts_drained(server)  # the max-deliveries failure left the count too
