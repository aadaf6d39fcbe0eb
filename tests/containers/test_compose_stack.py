"""The images built with podman and the compose stack run from them: docker-compose.yml + the cpu override +
deploy/podman/compose.test.yml, through podman's Docker-compatible API. `make container-test` builds the
images and runs this module (CI too, from .ci/run); it is skipped in `make test`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from tests.deploy.tools import REPO_ROOT, venv_tool
from devkit.ct import nodule_scan, synthetic_ct, zip_bytes
from devkit.fundus import big_png, make_fundus, png_bytes
from tests.utils.keys import auth, keys_env
from devkit.services import free_port

pytestmark = pytest.mark.skipif(
    not os.environ.get("MEDIMG_CONTAINER_TESTS"),
    reason="`make container-test` runs these: it builds the images with podman first",
)
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.cpu.yml", "deploy/podman/compose.test.yml"]
WORKERS = 3


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    url: str
    redis: redis.Redis

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        files = [arg for name in COMPOSE_FILES for arg in ("-f", name)]
        return subprocess.run([venv_tool("docker-compose"), "-p", self.project, *files, *args], cwd=REPO_ROOT,
                              env=self.env, check=check, capture_output=True, text=True, timeout=600)

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).stdout.split()

    def job(self, job_id: str) -> dict:
        return json.loads(self.redis.get(f"medimg:job:{job_id}"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("compose")
    keys = folder / "api-keys.json"
    keys.write_text(keys_env())
    keys.chmod(0o644)  # read by UID 10001 inside the gateway container
    redis_port, gateway_port = free_port(), free_port()
    env = {**os.environ, "MEDIMG_API_KEYS_FILE_HOST": str(keys), "MEDIMG_CI_REDIS_PORT": str(redis_port),
           "MEDIMG_CI_GATEWAY_PORT": str(gateway_port)}
    stack = Stack(f"medimg-ci-{uuid.uuid4().hex[:8]}", env, f"http://127.0.0.1:{gateway_port}",
                  redis.Redis(port=redis_port))
    try:
        stack.compose("up", "-d", "--no-build", "--scale", f"worker={WORKERS}")
        _wait(lambda: _ready_workers(stack) >= WORKERS, 300, "three warmed workers in /readyz")
        yield stack
    finally:
        (folder / "compose.log").write_text(stack.compose("logs", "--no-color", check=False).stdout)
        stack.compose("down", "--volumes", "--timeout", "5", check=False)
        stack.redis.close()


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout:.0f} s"
        time.sleep(0.5)


def _ready_workers(stack: Stack) -> int:
    try:
        response = httpx.get(f"{stack.url}/readyz", timeout=5)
    except httpx.HTTPError:
        return 0
    return response.json().get("workers", 0) if response.status_code == 200 else 0


def _submit(stack: Stack, task: str, files: list[tuple[str, bytes]]) -> str:
    response = httpx.post(f"{stack.url}/v1/jobs", data={"task": task},
                          files=[("files", (name, data, "application/octet-stream")) for name, data in files],
                          headers=auth("clinic-a"), timeout=60)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _wait_job(stack: Stack, job_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{stack.url}/v1/jobs/{job_id}", params={"wait": 20}, headers=auth("clinic-a"),
                        timeout=30).json()
        if job["status"] in ("succeeded", "failed"):
            return job
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def test_readyz_reports_the_scaled_workers_and_their_providers(stack: Stack) -> None:
    ready = httpx.get(f"{stack.url}/readyz", timeout=5).json()
    assert ready["workers"] == WORKERS and ready["broker"] == "redis"
    assert set(ready["queues_served"]) == {"dr-grading", "lung-nodule-detection"}
    assert ready["model_providers"] and all(p == ["CPUExecutionProvider"] for p in ready["model_providers"].values())


def test_dr_and_ct_jobs_succeed(stack: Stack, tmp_path: Path) -> None:
    dr = _submit(stack, "dr-grading", [("eye.png", png_bytes(make_fundus(1).rgb))])
    scan = nodule_scan(seed=7)
    paths = synthetic_ct().write_ct_series(scan.hu, scan.grid, tmp_path, rng=np.random.default_rng(1))
    ct = _submit(stack, "lung-nodule-detection", [("series.zip", zip_bytes(paths))])
    for job_id in (dr, ct):
        job = _wait_job(stack, job_id)
        assert job["status"] == "succeeded", job["error"]
    assert _wait_job(stack, ct)["result"]["nodules"]


def test_worker_container_killed_mid_job_the_job_still_succeeds(stack: Stack) -> None:
    job_id = _submit(stack, "dr-grading", [("big.png", big_png())])
    _wait(lambda: stack.job(job_id)["status"] == "running", 120, "the job running")
    holder = stack.job(job_id)["worker"]
    namespace = holder.rsplit(":", 2)[1]
    victim = next(c for c in stack.containers("worker") if _pid_namespace(c) == namespace)

    killed_at = time.monotonic()
    subprocess.run(["podman", "kill", "--signal", "KILL", victim], check=True, capture_output=True)
    assert stack.job(job_id)["attempts"] == 1, "the kill must land mid-job"
    job = _wait_job(stack, job_id, timeout=120)
    assert job["status"] == "succeeded", job["error"]
    assert stack.job(job_id)["attempts"] == 2 and stack.job(job_id)["worker"] != holder
    print(f"container killed -> job succeeded elsewhere in {time.monotonic() - killed_at:.1f} s")


def _pid_namespace(container: str) -> str:
    pid = subprocess.run(["podman", "inspect", "--format", "{{.State.Pid}}", container], check=True,
                         capture_output=True, text=True).stdout.strip()
    return str(os.stat(f"/proc/{pid}/ns/pid").st_ino)


def _exec(container: str, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", "exec", container, *command], capture_output=True, text=True, timeout=60)


def test_containers_run_as_10001_with_read_only_models_and_pass_their_healthchecks(stack: Stack) -> None:
    source = hashlib.sha256((REPO_ROOT / "workers" / "runner.py").read_bytes()).hexdigest()
    for service in ("gateway", "worker"):
        container = stack.containers(service)[0]
        installed = _exec(container, "python", "-c", "import hashlib, importlib.util as u; print(hashlib.sha256("
                          "open(u.find_spec('workers.runner').origin, 'rb').read()).hexdigest())").stdout.strip()
        assert installed == source, f"{service} runs an old build of medimg (a stale layer cache?)"
        assert _exec(container, "id", "-u").stdout.strip() == "10001", service
        write = _exec(container, "touch", "/opt/medimg/models/written-by-the-service")
        assert write.returncode != 0, f"{service} could write into its model folder"
        # The image's own HEALTHCHECK command, run on demand (podman schedules it through systemd otherwise).
        health = subprocess.run(["podman", "healthcheck", "run", container], capture_output=True, text=True,
                                timeout=60)
        assert health.returncode == 0, (service, health.stdout, health.stderr)
