"""examples/chest-xray-findings: a task from an installed package, served end to end with no change to medimg.

The package is pip-installed into a private folder put on PYTHONPATH of the processes under test only, so the
shared venv (and every other test) keeps the four shipped tasks. The gateway serves a repository holding only
the example's model: the shipped tasks stay registered but have no model there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.schemas.tasks import TaskName
from devkit.api import run_job, submit_job
from devkit.services import Service, service_env

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "chest-xray-findings"
MODEL_ID = "chest-xray-findings-reference"
TASK = "chest-xray-findings"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """The environment of a process that has the example package installed and its model in the repository."""
    root = tmp_path_factory.mktemp("chest-xray")
    site = root / "site"
    # Built from a copy: setuptools builds in the source tree (build/, *.egg-info), which stays untouched.
    source = shutil.copytree(EXAMPLE, root / "package", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    str(source)], check=True, capture_output=True, timeout=300)
    repository = root / "models"
    repository.mkdir()
    (repository / MODEL_ID).symlink_to(EXAMPLE / "models" / MODEL_ID)
    return service_env(root / "data", MEDIMG_MODEL_REPOSITORY=str(repository), PYTHONPATH=str(site))


@pytest.fixture(scope="module")
def service(installed) -> Iterator[Service]:
    service = Service(Path(installed["MEDIMG_DATA_DIR"]), installed)
    service.start_gateway()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def celery_service(installed, redis_server, tmp_path_factory) -> Iterator[Service]:
    """Celery mode: a worker process consuming only the plug-in task's queue."""
    data_dir = tmp_path_factory.mktemp("chest-xray-celery")
    env = {**installed, "MEDIMG_DATA_DIR": str(data_dir), "MEDIMG_REDIS_URL": redis_server.url}
    service = Service(data_dir, env)
    service.start_worker(queues=TASK)
    service.start_gateway(wait_ready=False)
    yield service
    service.stop()


def radiograph(env: dict[str, str], path: Path, findings: str, seed: int) -> bytes:
    """A synthetic film drawn by the installed package's own generator."""
    subprocess.run([sys.executable, "-m", "medimg_chest_xray.synthetic", str(path), "--findings", findings,
                    "--seed", str(seed)], env=env, check=True, timeout=120)
    return path.read_bytes()


def test_shared_environment_keeps_the_shipped_tasks_only() -> None:
    assert TASK not in {t.value for t in TaskName}


def test_list_models_serves_the_plugin_task(service: Service) -> None:
    models = httpx.get(f"{service.url}/v1/models", timeout=30).json()
    assert [(m["id"], m["task"]) for m in models["data"]] == [(MODEL_ID, TASK)]


def test_job_over_http_finds_what_was_drawn(service: Service, installed, tmp_path: Path) -> None:
    png = radiograph(installed, tmp_path / "cxr.png", "cardiomegaly,pleural-effusion", seed=11)
    job = run_job(service, TASK, [("cxr.png", png)])
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["present"] == ["cardiomegaly", "pleural-effusion"]
    by_name = {f["name"]: f for f in result["findings"]}
    manifest = json.loads((EXAMPLE / "models" / MODEL_ID / "1" / "manifest.json").read_text())
    assert {n: f["threshold"] for n, f in by_name.items()} == manifest["decoding"]["class_thresholds"]
    assert job["stage_seconds"].keys() >= {"load", "preprocess", "infer", "decode"}
    assert any("No DICOM" in note for note in job["notes"])


def test_job_through_celery_runs_on_the_plugin_tasks_queue(celery_service: Service, installed,
                                                            tmp_path: Path) -> None:
    png = radiograph(installed, tmp_path / "cxr.png", "cardiomegaly", seed=14)
    job = run_job(celery_service, TASK, [("cxr.png", png)], timeout=180)
    assert job["status"] == "succeeded", job
    assert job["result"]["present"] == ["cardiomegaly"]
    ready = httpx.get(f"{celery_service.url}/readyz", timeout=30).json()
    assert TASK in ready["queues_served"] and ready["tasks"][TASK] == f"{MODEL_ID}/1"


def test_job_with_caller_threshold_applies_it_to_every_finding(service: Service, installed, tmp_path: Path) -> None:
    png = radiograph(installed, tmp_path / "clear.png", "", seed=12)
    job = run_job(service, TASK, [("clear.png", png)], options={"threshold": 0.0})
    assert job["result"]["present"] == ["cardiomegaly", "pleural-effusion", "pneumothorax"]
    assert job["result"]["thresholds_overridden"] is True


def test_submit_job_refused_by_the_plugins_intake_check(service: Service, installed, tmp_path: Path) -> None:
    from PIL import Image

    Image.new("L", (300, 100), 128).save(tmp_path / "strip.png")
    response = submit_job(service, TASK, [("strip.png", (tmp_path / "strip.png").read_bytes())])
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "at most 2 times as long" in response.json()["detail"]


def test_openapi_documents_the_plugin_result_and_task(service: Service) -> None:
    document = httpx.get(f"{service.url}/openapi.json", timeout=30).json()
    schemas = document["components"]["schemas"]
    assert "ChestXrayFindingsResult" in schemas
    result_refs = json.dumps(schemas["JobPublic"]["properties"]["result"])
    assert "ChestXrayFindingsResult" in result_refs and "DRGradingResult" in result_refs
    assert TASK in schemas["TaskName"]["enum"]


def test_predict_runs_the_plugin_task_in_process(installed, tmp_path: Path) -> None:
    png = tmp_path / "cxr.png"
    radiograph(installed, png, "pleural-effusion", seed=13)
    env = {**installed, "MEDIMG_DATA_DIR": str(tmp_path / "predict")}
    done = subprocess.run([sys.executable, "-m", "app.cli", "predict", "--task", TASK, str(png), "--no-progress",
                           "--out", str(tmp_path / "out")], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"]["present"] == ["pleural-effusion"]


def test_models_check_passes_the_example_model(installed) -> None:
    done = subprocess.run([sys.executable, "-m", "app.cli", "models", "check", str(EXAMPLE / "models" / MODEL_ID)],
                          env=installed, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout and "multilabel-sigmoid" in done.stdout


def test_example_package_needs_no_change_to_medimg() -> None:
    """Everything the task is lives in its package: nothing under app/ or workers/ names it."""
    for tree in ("app", "workers"):
        for path in (REPO_ROOT / tree).rglob("*.py"):
            assert "chest-xray" not in path.read_text() and "medimg_chest_xray" not in path.read_text(), path
    assert os.path.isfile(EXAMPLE / "pyproject.toml")
