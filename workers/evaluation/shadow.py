"""`medimg eval --shadow`: how a shadow (candidate) model agrees with the served one on live jobs.

Reads the job store the service writes (MEDIMG_DATA_DIR, or Redis in Celery mode): every finished job of the
task with a shadow result. Per task: DR — quadratic-weighted kappa between the grades and referable flips;
thyroid — malignancy flips at the served operating point and Dice between the nodule masks; COVID — Dice
between the lesion masks and the lesion volume difference; lung nodules — findings matched within the served
finding's radius; a multi-label task (its result lists `findings`) — presence flips and probability
differences per finding. Which measure a task gets is its registration's `shadow_agreement` (app/plugins).
Intervals by bootstrap over jobs.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from pkgutil import resolve_name

import numpy as np
from sklearn.metrics import cohen_kappa_score

from app.config import Settings
from app.plugins import TaskPlugin, task_plugin
from app.schemas.jobs import Job, JobStatus
from app.schemas.tasks import TaskName
from app.storage.blobs import BlobStore
from app.storage.factory import make_blob_store, make_job_store
from workers.evaluation.froc import Candidate, Nodule, match_scan
from workers.evaluation.intervals import BootstrapSettings, bootstrap_figure, mean_figure

SHADOW_FILE = "shadow.json"


def shadow_jobs(settings: Settings, task: TaskName, since: str | None = None) -> list[Job]:
    start = datetime.fromisoformat(since) if since else None
    jobs = []
    for job in make_job_store(settings).iter_jobs():
        if job.task != task or job.status != JobStatus.SUCCEEDED or job.shadow is None or job.shadow.result is None:
            continue
        if _ungradable(job.result) or _ungradable(job.shadow.result):  # nothing to compare: the gate refused it
            continue
        if start is not None and job.created_at < (start if start.tzinfo else start.replace(tzinfo=job.created_at.tzinfo)):
            continue
        jobs.append(job)
    return sorted(jobs, key=lambda j: j.created_at)


def _ungradable(result: dict | None) -> bool:
    quality = (result or {}).get("quality")
    return isinstance(quality, dict) and quality.get("gradable") is False


def shadow_report(settings: Settings, task: TaskName, out: Path, since: str | None = None,
                  bootstrap: BootstrapSettings | None = None) -> dict:
    bootstrap = bootstrap or BootstrapSettings()
    jobs = shadow_jobs(settings, task, since)
    blobs = make_blob_store(settings)
    agreement = agreement_for(task)(jobs, blobs, bootstrap) if jobs else {}
    document = {
        "task": task.value, "jobs": len(jobs),
        "served_models": sorted({f"{j.model.id}@{j.model.version}" for j in jobs}),
        "shadow_models": sorted({f"{j.shadow.model.id}@{j.shadow.model.version}" for j in jobs}),
        "period": [jobs[0].created_at.isoformat(), jobs[-1].created_at.isoformat()] if jobs else None,
        "bootstrap": {**bootstrap.as_json(), "unit": "jobs"},
        "agreement": agreement,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / SHADOW_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return document


def dr_agreement(jobs: list[Job], blobs, settings: BootstrapSettings) -> dict:
    served = np.array([j.result["grade"] for j in jobs])
    shadow = np.array([j.shadow.result["grade"] for j in jobs])
    flips = np.array([j.result["referable"] != j.shadow.result["referable"] for j in jobs], dtype=float)
    every = [np.arange(len(jobs))]

    def kappa(i):
        if len(np.unique(np.r_[served[i], shadow[i]])) < 2:
            return 1.0 if np.array_equal(served[i], shadow[i]) else float("nan")
        return float(cohen_kappa_score(served[i], shadow[i], weights="quadratic"))

    return {"qwk": bootstrap_figure(kappa, every, settings),
            "grade_agreement": mean_figure((served == shadow).astype(float), settings),
            "referable_flip_rate": mean_figure(flips, settings), "referable_flips": int(flips.sum())}


def thyroid_agreement(jobs: list[Job], blobs, settings: BootstrapSettings) -> dict:
    threshold = np.array([j.result["operating_point"]["threshold"] for j in jobs])
    served = np.array([j.result["malignancy_probability"] for j in jobs]) >= threshold
    shadow = np.array([j.shadow.result["malignancy_probability"] for j in jobs]) >= threshold
    flips = (served != shadow).astype(float)
    out = {"malignant_flip_rate": mean_figure(flips, settings), "malignant_flips": int(flips.sum())}
    dice = [d for j in jobs if (d := _mask_dice(j, "nodule-mask.png", blobs, _png_mask)) is not None]
    if dice:
        out["dice"] = mean_figure(np.array(dice), settings)
    return out


def covid_agreement(jobs: list[Job], blobs, settings: BootstrapSettings) -> dict:
    out = {"lesion_volume_difference_ml": mean_figure(np.array(
        [abs(j.result["lesion_volume_ml"]["total"] - j.shadow.result["lesion_volume_ml"]["total"]) for j in jobs]),
        settings)}
    dice = [d for j in jobs if (d := _mask_dice(j, "lesions.nii.gz", blobs, _nifti_lesions)) is not None]
    if dice:
        out["dice_lesion"] = mean_figure(np.array(dice), settings)
    return out


def nodule_agreement(jobs: list[Job], blobs, settings: BootstrapSettings) -> dict:
    matched, served_only, shadow_only = [], [], []
    for job in jobs:
        served = [Nodule(tuple(n["center_mm"]), n["diameter_mm"]) for n in job.result["nodules"]]
        shadow = [Candidate(tuple(n["center_mm"]), n["score"]) for n in job.shadow.result["nodules"]]
        scan = match_scan(served, shadow)
        matched.append(scan.hits)
        served_only.append(len(served) - scan.hits)
        shadow_only.append(len(scan.false_positive_scores))
    total = np.array(matched) + np.array(served_only)
    share = np.divide(np.array(matched, float), total, out=np.ones(len(total)), where=total > 0)
    return {"matched_nodules": int(sum(matched)), "served_only": int(sum(served_only)),
            "shadow_only": int(sum(shadow_only)), "matched_share": mean_figure(share, settings)}


def _mask_dice(job: Job, name: str, blobs, read) -> float | None:
    served_key = next((a.key for a in job.artifacts if a.name == name), None)
    shadow_key = job.shadow.artifact_keys.get(name)
    if served_key is None or shadow_key is None:
        return None
    a, b = read(blobs.local_path(served_key).read_bytes()), read(blobs.local_path(shadow_key).read_bytes())
    if a.shape != b.shape:
        return None
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _png_mask(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L")) > 0


def _nifti_lesions(data: bytes) -> np.ndarray:
    import nibabel as nib

    image = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    return np.asarray(image.dataobj) > 0


def multilabel_agreement(jobs: list[Job], blobs, settings: BootstrapSettings) -> dict:
    """Independent findings (a result's `findings`: name, probability, present): per job, the share of findings
    whose presence call is the same, and the mean absolute probability difference; flips counted by finding."""
    same, difference, flips = [], [], {}
    for job in jobs:
        served = {f["name"]: f for f in job.result["findings"]}
        shadow = {f["name"]: f for f in job.shadow.result["findings"]}
        common = sorted(served.keys() & shadow.keys())
        if not common:
            continue
        agree = [served[n]["present"] == shadow[n]["present"] for n in common]
        same.append(float(np.mean(agree)))
        difference.append(float(np.mean([abs(served[n]["probability"] - shadow[n]["probability"]) for n in common])))
        for name, agrees in zip(common, agree, strict=True):
            flips[name] = flips.get(name, 0) + (not agrees)
    if not same:
        return {}
    return {"presence_agreement": mean_figure(np.array(same), settings),
            "probability_difference": mean_figure(np.array(difference), settings),
            "presence_flips": dict(sorted(flips.items()))}


def agreement_for(task: str) -> Callable[[list[Job], BlobStore | None, BootstrapSettings], dict]:
    """The registered task's agreement measure (`measure_of` its registration)."""
    return measure_of(task_plugin(task))


def measure_of(plugin: TaskPlugin) -> Callable[[list[Job], BlobStore | None, BootstrapSettings], dict]:
    """The registration's `shadow_agreement`, else the measure for its result's kind."""
    if plugin.shadow_agreement is not None:
        return resolve_name(plugin.shadow_agreement)
    if "findings" in plugin.result.model_fields:  # a multi-label result (decoding kind multilabel-sigmoid)
        return multilabel_agreement
    raise ValueError(f"task {plugin.name!r} registers no shadow_agreement and its result has no kind shadow "
                     "evaluation knows; its TaskPlugin can name one")
