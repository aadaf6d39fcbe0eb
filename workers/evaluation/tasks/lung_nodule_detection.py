"""lung-nodule-detection: LUNA16 `annotations.csv` (seriesuid,coordX,coordY,coordZ,diameter_mm, world mm).

Each series is a sub-folder or ZIP of the data folder, matched by its SeriesInstanceUID; a series without
annotations is a scan without nodules (its findings are all false positives), as in LUNA16's seriesuids list.
LUNA16's world coordinates are ITK's, which are DICOM's patient LPS millimetres: the findings' `center_mm`.
The job runs with `score_threshold` 0 so every candidate the model proposes enters the FROC curve.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from app.schemas.jobs import Job
from app.schemas.manifest import ModelManifest
from app.schemas.tasks import TaskName
from workers.evaluation import plots
from workers.evaluation.base import Case, LabelOptions, Scored
from workers.evaluation.files import LabelError, series_inputs
from workers.evaluation.froc import FP_RATES, Candidate, Nodule, ScanMatch, cpm, froc_curve, match_scan, sensitivity_at
from workers.evaluation.intervals import BootstrapSettings, bootstrap_figure

COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")


def read_annotations(path: Path) -> dict[str, list[list[float]]]:
    nodules: dict[str, list[list[float]]] = defaultdict(list)
    with path.open(newline="") as stream:
        reader = csv.DictReader(stream)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise LabelError(f"{path.name}: LUNA16 annotations need the columns {','.join(COLUMNS)}; "
                             f"missing {','.join(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                nodules[row["seriesuid"]].append([float(row[c]) for c in COLUMNS[1:]])
            except ValueError:
                raise LabelError(f"{path.name} line {line}: coordinates and diameter must be numbers") from None
    return dict(nodules)


class LungNoduleDetectionEvaluation:
    task = TaskName.LUNG_NODULE_DETECTION

    def read_cases(self, labels: LabelOptions) -> list[Case]:
        annotations = read_annotations(labels.labels)
        series = series_inputs(labels.data)
        unmatched = sorted(set(annotations) - set(series))
        if unmatched:
            raise LabelError(f"{len(unmatched)} annotated series have no folder or ZIP in {labels.data} "
                             f"(first: {unmatched[0]})")
        return [Case(case_id=uid, files=tuple(str(f) for f in files), truth={"nodules": annotations.get(uid, [])},
                     options={"score_threshold": 0.0, "series_instance_uid": uid})
                for uid, files in series.items()]

    def record(self, case: Case, job: Job, artifacts: dict[str, bytes], predictions_dir: Path) -> dict:
        return {"candidates": [[*n["center_mm"], n["score"]] for n in (job.result or {})["nodules"]]}

    def score(self, cases: list[Case], records: list[dict], manifest: ModelManifest,
              settings: BootstrapSettings) -> Scored:
        scans = [match_scan([Nodule(tuple(n[:3]), n[3]) for n in c.truth["nodules"]],
                            [Candidate(tuple(p[:3]), p[3]) for p in r["candidates"]])
                 for c, r in zip(cases, records, strict=True)]
        n_nodules = sum(len(s.nodule_scores) for s in scans)
        every_scan = [np.arange(len(scans))]

        def resampled(index: np.ndarray) -> list[ScanMatch]:
            return [scans[i] for i in index]

        metrics = {"cpm": bootstrap_figure(lambda i: cpm(resampled(i)), every_scan, settings)}
        for rate in FP_RATES:
            metrics[f"sensitivity@{rate:g}fp"] = bootstrap_figure(
                lambda i, rate=rate: sensitivity_at(resampled(i), (rate,))[rate] if _has_nodules(resampled(i))
                else np.nan, every_scan, settings)
        point = manifest.operating_point()
        at_point = [ScanMatch([s if s is not None and s >= point.threshold else None for s in m.nodule_scores],
                              [s for s in m.false_positive_scores if s >= point.threshold]) for m in scans]
        metrics[f"sensitivity@{point.name}"] = bootstrap_figure(
            lambda i: _sensitivity([at_point[k] for k in i]), every_scan, settings)
        metrics[f"fp_per_scan@{point.name}"] = bootstrap_figure(
            lambda i: float(np.mean([len(at_point[k].false_positive_scores) for k in i])), every_scan, settings)
        for figure in metrics.values():
            figure["n_nodules"] = n_nodules
        fp_per_scan, sensitivity, _ = froc_curve(scans)
        band = (np.array([metrics[f"sensitivity@{r:g}fp"]["ci95"] or [np.nan, np.nan] for r in FP_RATES]).T
                if n_nodules else None)
        plot_files = {"froc.png": plots.froc(fp_per_scan, sensitivity, tuple(band) if band is not None else None,
                                             metrics["cpm"]["value"] or 0.0)} if n_nodules else {}
        rows = [{"case": c.case_id, "nodules": len(m.nodule_scores), "hit": m.hits,
                 "candidates": len(r["candidates"]), "false_positives": len(m.false_positive_scores),
                 f"hit@{point.name}": at_point[k].hits,
                 f"false_positives@{point.name}": len(at_point[k].false_positive_scores)}
                for k, (c, r, m) in enumerate(zip(cases, records, scans, strict=True))]
        curves = {"froc": {"fp_per_scan": fp_per_scan.tolist(), "sensitivity": sensitivity.tolist()}}
        return Scored(metrics=metrics, plots=plot_files, rows=rows, curves=curves)


def _has_nodules(scans: list[ScanMatch]) -> bool:
    return any(s.nodule_scores for s in scans)


def _sensitivity(scans: list[ScanMatch]) -> float:
    total = sum(len(s.nodule_scores) for s in scans)
    return sum(s.hits for s in scans) / total if total else float("nan")


EVALUATION = LungNoduleDetectionEvaluation()
