"""`medimg predict` runs one job in-process, prints the result JSON and writes the artifacts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from devkit.fundus import dicom_fundus_bytes, make_fundus
from devkit.reference_models import REPO_ROOT


def test_predict_dicom_prints_result_and_writes_artifacts(tmp_path: Path) -> None:
    photo = tmp_path / "eye.dcm"
    photo.write_bytes(dicom_fundus_bytes(make_fundus(seed=2, grade=4).rgb))
    out = tmp_path / "out"

    completed = subprocess.run(
        [sys.executable, "-m", "app.cli", "predict", "--task", "dr-grading", str(photo), "--out", str(out)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )

    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert document["status"] == "succeeded"
    assert document["result"]["grade"] >= 2
    assert (out / "retina.jpg").read_bytes().startswith(b"\xff\xd8\xff")  # JPEG
    assert "100%" in completed.stderr  # the progress bar reached its end


def test_predict_unsuitable_input_explains(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    completed = subprocess.run(
        [sys.executable, "-m", "app.cli", "predict", "--task", "dr-grading", str(text), "--no-progress"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )
    assert completed.returncode == 1
    assert json.loads(completed.stdout)["code"] == "unsupported-media-type"


def test_models_list_prints_the_model_of_every_registered_task(capsys) -> None:
    from app.cli import main
    from app.schemas.tasks import TaskName

    assert main(["models", "list", "--repository", str(REPO_ROOT / "models")]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(lines) == {t.value for t in TaskName}
    assert "dr-grading-reference/1" in lines["dr-grading"]
    assert "thyroid-malignancy-reference/1" in lines["thyroid-malignancy"]


def test_deploy_workers_prints_one_worker_per_served_task(capsys) -> None:
    from app.cli import main

    assert main(["deploy-workers", "--template", str(REPO_ROOT / "deploy" / "templates" / "worker.yaml"),
                 "--repository", str(REPO_ROOT / "models")]) == 0
    out = capsys.readouterr().out
    for task in ("dr-grading", "lung-nodule-detection", "covid-lesion-segmentation", "thyroid-malignancy"):
        assert f'args: ["worker", "--queues", "{task}", "--concurrency", "1"]' in out
    assert "${task}" not in out.split("---", 1)[1]


CELERY_WORKER_THAT_FAILS = """
import sys
from celery import Celery, bootsteps
from app.cli import _run_celery_worker

class Broken(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Pool"}

    def start(self, worker):
        raise RuntimeError("a component that cannot start")

app = Celery("broken", broker="memory://")
app.steps["worker"].add(Broken)
sys.exit(_run_celery_worker(app, ["worker", "--pool", "solo", "--without-gossip", "--without-mingle",
                                  "--without-heartbeat"]))
"""


def test_worker_stopped_by_an_unrecoverable_error_exits_non_zero() -> None:
    """Celery's worker_main drops the worker's exit code; `medimg worker` keeps it, so a container that
    stopped on an error is not taken for one that was told to stop."""
    completed = subprocess.run([sys.executable, "-c", CELERY_WORKER_THAT_FAILS], capture_output=True, text=True,
                               cwd=REPO_ROOT, timeout=60)
    assert "Unrecoverable error" in completed.stderr
    assert completed.returncode == 1, completed.stderr[-2000:]
