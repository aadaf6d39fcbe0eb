"""Cases through the service's own path (intake checks, pipeline, decode), in a pool of processes.

Each process holds one WorkerRuntime (models loaded once) over a scratch job store, and sends every case through
`predict_files`, exactly as `medimg predict` does. What scoring needs from each finished job is cached as
`<out>/cases/<case>.json`, keyed by the model's sha256, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from app.config import Settings
from app.errors import MedimgError
from app.schemas.jobs import Job, JobStatus
from app.schemas.manifest import ModelManifest
from app.schemas.tasks import TaskName
from app.storage.blobs import job_prefix
from workers.evaluation.base import Case
from workers.evaluation.files import LabelError

CASES_DIR = "cases"
PREDICTIONS_DIR = "predictions"

_state: dict = {}  # per pool process: its settings, runtime and the task's evaluation


def cache_path(out: Path, case_id: str) -> Path:
    return out / CASES_DIR / f"{safe_name(case_id)}.json"


def safe_name(case_id: str) -> str:
    """A file name for a case id; ids that are not already plain names get a short hash to stay distinct."""
    plain = re.sub(r"[^A-Za-z0-9._-]", "_", case_id)[:100]
    if plain == case_id:
        return plain
    return f"{plain}-{hashlib.sha256(case_id.encode()).hexdigest()[:8]}"


def cached(out: Path, case: Case, manifest: ModelManifest) -> dict | None:
    path = cache_path(out, case.case_id)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a run killed mid-write: do the case again
    return record if record.get("model_sha256") == manifest.sha256 else None


def predict_cases(settings: Settings, task: TaskName, cases: list[Case], manifest: ModelManifest, out: Path,
                  processes: int, show_progress: bool = True) -> list[dict]:
    """One record per case, in the cases' order: from the cache, or by running the case now."""
    from tqdm import tqdm

    (out / CASES_DIR).mkdir(parents=True, exist_ok=True)
    (out / PREDICTIONS_DIR).mkdir(parents=True, exist_ok=True)
    records: dict[str, dict] = {}
    for case in cases:
        if (record := cached(out, case, manifest)) is not None:
            records[case.case_id] = record
    todo = [case for case in cases if case.case_id not in records]
    with tqdm(total=len(cases), initial=len(records), desc=f"eval {task.value}", unit="case",
              disable=not show_progress) as bar:
        if todo:
            processes = max(1, min(processes, len(todo)))
            # spawn: each process starts clean and creates its own ONNX Runtime sessions
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(processes, mp_context=context, initializer=_start,
                                     initargs=(settings.model_dump(mode="json"), task.value, processes)) as pool:
                futures = {pool.submit(_run_case, case, str(out)): case for case in todo}
                for future in as_completed(futures):
                    record = future.result()
                    records[record["case_id"]] = record
                    bar.update(1)
    return [records[case.case_id] for case in cases]


def _start(settings_json: dict, task: str, processes: int) -> None:
    from workers.evaluation.tasks import evaluation_for
    from workers.runtime import WorkerRuntime

    scratch = Path(tempfile.mkdtemp(prefix="medimg-eval-"))
    atexit.register(shutil.rmtree, scratch, True)
    threads = max(1, (os.cpu_count() or 1) // processes)
    settings = Settings.model_validate({**settings_json, "data_dir": str(scratch), "redis_url": None,
                                        "blob_url": None, "inference_threads": threads, "batch_max_rows": 1,
                                        "shadow_models": {}, "webhook_secret": None})
    _state.update(runtime=WorkerRuntime.create(settings), evaluation=evaluation_for(task),
                  settings=settings, task=TaskName(task))


def _run_case(case: Case, out: str) -> dict:
    from workers.local import predict_files

    runtime, evaluation = _state["runtime"], _state["evaluation"]
    manifest = runtime.repository.for_task(_state["task"]).manifest
    record = {"case_id": case.case_id, "model_sha256": manifest.sha256}
    try:
        job, artifacts = predict_files(_state["settings"], _state["task"], [Path(f) for f in case.files],
                                       json.dumps(case.options) if case.options else None,
                                       show_progress=False, runtime=runtime)
    except MedimgError as exc:  # refused at intake, as the service would answer 4xx
        record.update(status="refused", error={"code": exc.code, "detail": exc.detail})
        return _store(Path(out), record)
    try:
        record.update(_outcome(case, job, artifacts, evaluation, Path(out)))
    finally:
        _forget(runtime, job)
    return _store(Path(out), record)


def _outcome(case: Case, job: Job, artifacts: dict[str, bytes], evaluation, out: Path) -> dict:
    if job.status != JobStatus.SUCCEEDED:
        return {"status": "failed", "error": job.error.model_dump() if job.error else None}
    quality = (job.result or {}).get("quality")
    if isinstance(quality, dict) and quality.get("gradable") is False:  # quality gate (issue 20), when present
        reasons = "; ".join(f"{r['code']}: {r['detail']}" for r in quality.get("reasons", []))
        return {"status": "ungradable", "error": {"code": "ungradable", "detail": reasons}}
    try:
        prediction = evaluation.record(case, job, artifacts, out / PREDICTIONS_DIR)
    except LabelError as exc:  # a reference that does not fit the prediction (another grid, another size)
        return {"status": "label-mismatch", "error": {"code": "label-mismatch", "detail": str(exc)}}
    except Exception as exc:  # an unreadable reference: reported with its case, the run goes on
        return {"status": "label-mismatch", "error": {"code": "label-unreadable",
                                                      "detail": f"{type(exc).__name__}: {exc}"}}
    return {"status": "succeeded", "prediction": prediction}


def _forget(runtime, job: Job) -> None:
    """The scratch store keeps nothing between cases."""
    runtime.blobs.delete_prefix(job_prefix(job.id))
    runtime.jobs.delete(job.id)


def _store(out: Path, record: dict) -> dict:
    path = cache_path(out, record["case_id"])
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps(record))
    partial.replace(path)  # atomic: a killed run leaves a whole record or none
    return record
