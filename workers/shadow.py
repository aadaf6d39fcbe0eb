"""Shadow runs: a candidate model (version N+1, or another model for the task) on a sample of live jobs.

Run after the served result is recorded, so the caller never waits for it and never sees it: the shadow
result is stored on the job (`Job.shadow`, shown to admin keys only), its mask artifacts under the job's
`shadow/` prefix (not listed as artifacts, so never downloadable), and no DICOM is written for it. A failing
shadow run is recorded as such and never touches the served result.
"""

from __future__ import annotations

import hashlib
import logging
import time

from app.config import ShadowModel
from app.model_repository import load_model_version
from app.plugins import task_plugin
from app.schemas.jobs import Job, JobError, ModelRef, ShadowRun
from app.storage.blobs import job_prefix
from workers.onnx import LoadedModel, load_model
from workers.pipelines import pipeline_for
from workers.pipelines.base import JobContext, JobInput, StageTimer
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

# Artifacts kept for `medimg eval --shadow` (Dice between masks); overlays and DICOM are not.
MASK_ARTIFACTS = ("lesions.nii.gz", "nodule-mask.png")


def sampled(job_id: str, rate: float) -> bool:
    """The same answer for a job on every delivery and every worker: a hash of its id, not a random draw."""
    return int(hashlib.sha256(job_id.encode()).hexdigest()[:8], 16) / 0x1_0000_0000 < rate


def shadow_model(runtime: WorkerRuntime, wanted: ShadowModel) -> LoadedModel:
    """The candidate's live session, loaded once per worker process beside the served models."""
    served = runtime.repository.get(wanted.model_id) if wanted.version is None else None
    version = wanted.version or served.manifest.version
    key = f"{wanted.model_id}@{version}"
    with runtime._lock:
        if key not in runtime.shadow_models:
            directory = runtime.settings.model_repository / wanted.model_id / str(version)
            loaded = load_model(load_model_version(directory), runtime.settings.providers,
                                runtime.settings.inference_threads, runtime.settings.inference_thread_spinning)
            loaded.warm_up()
            loaded.requirements = {r: runtime._load(r, (wanted.model_id,)) for r in loaded.manifest.requires}
            runtime.shadow_models[key] = loaded
        return runtime.shadow_models[key]


def run_shadow(job: Job, runtime: WorkerRuntime) -> None:
    """Runs the task's shadow model on a succeeded job, if one is configured and the job is in its sample,
    and stores the outcome on the job."""
    wanted = runtime.settings.shadow_models.get(job.task.value)
    if wanted is None or not sampled(job.id, wanted.sample_rate):
        return
    started = time.perf_counter()
    try:
        model = shadow_model(runtime, wanted)
    except Exception as exc:
        log.error("job %s: shadow model %s not loaded (%s)", job.id, wanted.model_id, type(exc).__name__)
        return
    manifest = model.manifest
    shadow = ShadowRun(model=ModelRef(id=manifest.id, version=manifest.version, sha256=manifest.sha256,
                                      research_use_only=manifest.research_use_only))
    try:
        pipeline = pipeline_for(job.task)
        options = task_plugin(job.task).options.model_validate(job.options)
        inputs = [JobInput(path=runtime.blobs.local_path(i.key), format=i.format) for i in job.inputs]
        context = JobContext(job_id=job.id, caller=job.caller, jobs=runtime.jobs, blobs=runtime.blobs)
        output = pipeline.run(inputs, options, model, StageTimer(), context=context)
        shadow.result = output.result.model_dump(mode="json")
        for item in output.artifacts:
            if item.name in MASK_ARTIFACTS:
                key = f"{job_prefix(job.id)}/shadow/{item.name}"
                runtime.blobs.put_bytes(key, item.data)
                shadow.artifact_keys[item.name] = key
    except Exception as exc:
        # The message may quote input values, so only the type is kept.
        shadow.error = JobError(code="shadow-failed", kind="model-error",
                                detail=f"The shadow model's pipeline failed ({type(exc).__name__})")
    shadow.seconds = round(time.perf_counter() - started, 4)
    job.shadow = shadow
    if not runtime.jobs.save(job):  # deleted meanwhile: nothing of it may stay
        runtime.blobs.delete_prefix(job_prefix(job.id))
