"""`medimg eval`: read the labels, predict every case (cached), score, write the outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.config import Settings
from app.schemas.tasks import TaskName
from app.storage.factory import make_model_repository
from workers.evaluation.base import LabelOptions, Scored
from workers.evaluation.intervals import BootstrapSettings
from workers.evaluation.operating_point import OperatingPointRule, choose_operating_point, write_site_config
from workers.evaluation.predict import predict_cases
from workers.evaluation.report import write_outputs
from workers.evaluation.tasks import evaluation_for

BOOTSTRAP_UNITS = {TaskName.LUNG_NODULE_DETECTION: "scans"}


@dataclass(frozen=True)
class EvalRequest:
    task: TaskName
    labels: LabelOptions
    out: Path
    processes: int
    bootstrap: BootstrapSettings
    operating_point_rule: OperatingPointRule | None = None
    site_name: str = "site"
    site_config: Path | None = None
    show_progress: bool = True


def evaluate(settings: Settings, request: EvalRequest) -> dict:
    evaluation = evaluation_for(request.task)
    manifest = make_model_repository(settings).for_task(request.task).manifest
    cases = evaluation.read_cases(request.labels)
    records = predict_cases(settings, request.task, cases, manifest, request.out, request.processes,
                            request.show_progress)
    scored_pairs = [(c, r) for c, r in zip(cases, records, strict=True) if r["status"] == "succeeded"]
    scored_cases = [c for c, _ in scored_pairs]
    predictions = [r["prediction"] for _, r in scored_pairs]

    site_point = None
    if request.operating_point_rule is not None:
        if not hasattr(evaluation, "binary_outcomes"):
            raise ValueError(f"{request.task.value} has no probability threshold to choose; "
                             "--choose-operating-point serves dr-grading and thyroid-malignancy")
        outcomes = evaluation.binary_outcomes(scored_cases, predictions)
        site_point = choose_operating_point(outcomes, request.operating_point_rule, request.site_name,
                                            request.bootstrap)
        manifest = manifest.model_copy(update={"operating_points": [*(
            p for p in manifest.operating_points if p.name != site_point.point.name), site_point.point]})

    scored = evaluation.score(scored_cases, predictions, manifest, request.bootstrap) if scored_cases else Scored({})
    document = _document(request, manifest, cases, records, scored)
    if site_point is not None:
        target = request.site_config or request.out / "site-config.json"
        write_site_config(target, manifest, site_point.point)
        document["site_operating_point"] = {"name": site_point.point.name, "threshold": site_point.point.threshold,
                                            "rule": str(request.operating_point_rule), "written_to": str(target)}
    failures = [{"case": c.case_id, "status": r["status"], **(r.get("error") or {})}
                for c, r in zip(cases, records, strict=True) if r["status"] != "succeeded"]
    write_outputs(request.out, document, scored.rows + failures, scored.plots)
    return document


def _document(request: EvalRequest, manifest, cases, records, scored: Scored) -> dict:
    statuses = [r["status"] for r in records]
    point_names = {p.name: p for p in manifest.operating_points}
    return {
        "task": request.task.value,
        "model": {"id": manifest.id, "version": manifest.version, "sha256": manifest.sha256},
        "research_use_only": manifest.research_use_only,
        "cases": {"labelled": len(cases), "scored": statuses.count("succeeded"), "failed": statuses.count("failed"),
                  "refused": statuses.count("refused"), "ungradable": statuses.count("ungradable"),
                  "label_mismatch": statuses.count("label-mismatch")},
        "bootstrap": {**request.bootstrap.as_json(), "unit": BOOTSTRAP_UNITS.get(request.task, "cases")},
        "metrics": scored.metrics,
        "operating_points": {name: {"threshold": p.threshold, "source": p.measured_on}
                             for name, p in point_names.items()},
        "curves": scored.curves,
    }
