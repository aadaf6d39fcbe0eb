"""One job in this process, through the same intake and runner as the service (for `medimg predict`)."""

from __future__ import annotations

from pathlib import Path

from app.config import Settings
from app.dispatch.base import Readiness
from app.intake.service import Intake
from app.schemas.jobs import Job
from app.schemas.tasks import TaskName
from workers.pipelines import pipeline_for
from workers.runner import run_job
from workers.runtime import WorkerRuntime


class _RunLater:
    """Intake hands the job here; predict_files then runs it in the foreground."""

    mode = "local"

    def start(self) -> None: ...
    def submit(self, job: Job) -> None: ...
    def readiness(self) -> Readiness:
        return Readiness(True, "local")

    def stop(self) -> None: ...


def predict_files(
    settings: Settings, task: TaskName, files: list[Path], options_json: str | None, show_progress: bool = True,
    runtime: WorkerRuntime | None = None,
) -> tuple[Job, dict[str, bytes]]:
    """`runtime` lets a caller running many predictions (the benchmark) load the models once."""
    from tqdm import tqdm

    runtime = runtime or WorkerRuntime.create(settings)
    intake = Intake(settings, runtime.repository, runtime.jobs, runtime.blobs, _RunLater())
    streams = [path.open("rb") for path in files]
    try:
        job, _ = intake.accept(task, streams, options_json, caller="local")
    finally:
        for stream in streams:
            stream.close()
    stage_names = pipeline_for(task).stages
    with tqdm(total=len(stage_names), desc=task.value, unit="stage", disable=not show_progress,
              file=None) as bar:
        def on_stage(name: str) -> None:
            bar.set_postfix_str(name)
            if name in stage_names and bar.n < stage_names.index(name):
                bar.update(stage_names.index(name) - bar.n)

        finished = run_job(job.id, runtime, on_stage=on_stage)
        bar.update(bar.total - bar.n)
    artifacts = {a.name: runtime.blobs.local_path(a.key).read_bytes() for a in finished.artifacts}
    return finished, artifacts
