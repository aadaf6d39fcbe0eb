"""Dockerfile and compose files, checked by real tools without a Docker engine: hadolint, `docker-compose config`."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from app.config import Settings
from tests.deploy.tools import REPO_ROOT, venv_tool

DOCKERFILE = REPO_ROOT / "Dockerfile"


def compose_config(*files: str) -> dict:
    args = [venv_tool("docker-compose")]
    for name in files:
        args += ["-f", str(REPO_ROOT / name)]
    result = subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True, timeout=60,
                            cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def go_duration_seconds(text: str) -> float:
    """Compose prints durations the Go way: `10m30s`, `1h`, `45s`."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * units[u] for n, u in parts)


def stages(text: str) -> dict[str, str]:
    """Each build stage's instructions, by stage name."""
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", text, flags=re.MULTILINE | re.IGNORECASE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_hadolint_passes_on_dockerfile() -> None:
    result = subprocess.run([venv_tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_targets_run_as_non_root_with_exec_form_entrypoints() -> None:
    targets = stages(DOCKERFILE.read_text())
    assert {"gateway", "worker-cpu", "worker-gpu"} <= set(targets)
    for name in ("gateway", "worker-cpu", "worker-gpu"):
        body = targets[name]
        assert re.search(r"^USER 10001:10001$", body, re.MULTILINE), name
        assert re.search(r'^ENTRYPOINT \["medimg"\]$', body, re.MULTILINE), name  # exec form: PID 1 gets SIGTERM
        assert re.search(r"^HEALTHCHECK .*\n\s+CMD \[", body, re.MULTILINE), name


def test_dockerfile_gateway_has_no_onnxruntime() -> None:
    targets = stages(DOCKERFILE.read_text())
    assert "onnxruntime" not in targets["gateway"] and "[cpu" not in targets["gateway"]
    assert "[cpu,s3]" in targets["worker-cpu"]
    assert "onnxruntime-gpu==${ORT_GPU_VERSION}" in targets["worker-gpu"]


def test_dockerfile_gpu_base_matches_onnxruntime_gpu_pairing() -> None:
    text = DOCKERFILE.read_text()
    ort = re.search(r"ARG ORT_GPU_VERSION=(\d+)\.(\d+)\.\d+", text)
    cuda = re.search(r"ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.\d+\.\d+-cudnn-runtime-ubuntu[\d.]+", text)
    assert ort and cuda
    # onnxruntime-gpu >= 1.19 on PyPI: CUDA 12.x with cuDNN 9 (the tag's "cudnn" is cuDNN 9 for CUDA 12.x).
    assert (int(ort[1]), int(ort[2])) >= (1, 19) and cuda[1] == "12"


def test_compose_config_valid_with_gpu_reservation() -> None:
    config = compose_config("docker-compose.yml")
    services = config["services"]
    assert set(services) == {"redis", "gateway", "worker"}
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["worker"]["build"]["target"] == "worker-gpu"
    assert services["gateway"]["build"]["target"] == "gateway"


def test_compose_cpu_override_drops_gpu() -> None:
    worker = compose_config("docker-compose.yml", "docker-compose.cpu.yml")["services"]["worker"]
    assert worker["build"]["target"] == "worker-cpu"
    assert not worker.get("deploy", {}).get("resources")


@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.cpu.yml"]])
def test_compose_scales_and_keeps_state(files: list[str]) -> None:
    config = compose_config(*files)
    services = config["services"]
    for name, service in services.items():
        assert "container_name" not in service, f"{name}: a fixed name breaks --scale"
    assert "ports" not in services["worker"]  # a published host port would collide at --scale worker=2
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    data_mounts = {m["source"] for s in ("gateway", "worker") for m in services[s]["volumes"] if m["target"] == "/data"}
    assert data_mounts == {"data"}  # one shared data volume
    grace = go_duration_seconds(services["worker"]["stop_grace_period"])
    assert grace > int(services["worker"]["environment"]["MEDIMG_TASK_TIME_LIMIT"])


def test_dockerignore_keeps_training_material_out() -> None:
    ignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore and "!models/" in ignore and "models/*/data/" in ignore


def test_compose_time_limits_are_valid_settings() -> None:
    env = compose_config("docker-compose.yml")["services"]["worker"]["environment"]
    Settings(task_soft_time_limit=int(env["MEDIMG_TASK_SOFT_TIME_LIMIT"]),
             task_time_limit=int(env["MEDIMG_TASK_TIME_LIMIT"]))


def _instructions(body: str) -> list[str]:
    """A stage's instructions, one string each (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("#")))
    return [" ".join(line.split()) for line in joined.splitlines() if line.strip()]


def test_dockerfile_worker_gpu_differs_from_worker_cpu_only_where_it_must() -> None:
    """worker-gpu cannot be built here (CUDA base image): it is held to worker-cpu's recipe instead."""
    targets = stages(DOCKERFILE.read_text())
    cpu = _instructions(targets["runtime-base"]) + _instructions(targets["worker-cpu"])
    gpu = _instructions(targets["worker-gpu"])
    allowed_in_gpu_only = re.compile(r"ARG ORT_GPU_VERSION|RUN apt-get update|NVIDIA_|onnxruntime-gpu|start-period")
    normalise = {"[cpu,s3]": "[X,s3]", "[gpu,s3]": "[X,s3]"}

    def comparable(lines: list[str]) -> list[str]:
        out = []
        for line in lines:
            for old, new in normalise.items():
                line = line.replace(old, new)
            out.append(line)
        return out

    cpu_only = [line for line in comparable(cpu) if line not in comparable(gpu)]
    gpu_only = [line for line in comparable(gpu) if line not in comparable(cpu)]
    # The venv, user and /data come from one apt RUN on the CUDA base (Python is not there otherwise).
    assert all(re.search(r"RUN groupadd|ENV PYTHONDONTWRITEBYTECODE|HEALTHCHECK|pip install", line) for line in cpu_only), cpu_only
    assert all(allowed_in_gpu_only.search(line) for line in gpu_only), gpu_only


def test_dockerfile_builds_on_a_plain_debian_base_and_from_a_wheelhouse() -> None:
    text = DOCKERFILE.read_text()
    assert not re.search(r"^RUN (pip|python) ", text, re.MULTILINE), "Debian's python3 has no `python` or `pip`"
    assert text.count("--mount=type=bind,source=deploy/wheelhouse,target=/wheelhouse") == 4
    assert (REPO_ROOT / "deploy" / "wheelhouse" / "README.md").exists()  # the folder exists in every checkout
    assert "!deploy/wheelhouse/" in (REPO_ROOT / ".dockerignore").read_text()


def test_compose_rabbitmq_override_gives_gateway_and_workers_the_broker(monkeypatch) -> None:
    monkeypatch.setenv("MEDIMG_RABBITMQ_PASSWORD", "not-a-real-one")
    services = compose_config("docker-compose.yml", "docker-compose.rabbitmq.yml")["services"]
    for name in ("gateway", "worker"):
        url = services[name]["environment"]["MEDIMG_BROKER_URL"]
        assert Settings(redis_url=services[name]["environment"]["MEDIMG_REDIS_URL"], broker_url=url).broker_url
        assert url.startswith("amqp://") and "rabbitmq" in services[name]["depends_on"]
