"""dr-grading: EyePACS `trainLabels.csv` (image,level) or APTOS `train.csv` (id_code,diagnosis); ICDR 0-4.

Figures: quadratic-weighted kappa and accuracy over the five grades, referable (grade >= 2) AUC, sensitivity
and specificity at every operating point the model serves (manifest and site), and the ECE of the referable
probability and of the top grade's probability.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from sklearn.metrics import cohen_kappa_score

from app.schemas.jobs import Job
from app.schemas.manifest import ModelManifest
from app.schemas.tasks import TaskName
from workers.evaluation import plots
from workers.evaluation.base import BinaryOutcomes, Case, LabelOptions, Scored
from workers.evaluation.calibration import expected_calibration_error
from workers.evaluation.classification import binary_figures, calibration, roc_points
from workers.evaluation.files import LabelError, image_for
from workers.evaluation.intervals import BootstrapSettings, bootstrap_figure

LABEL_COLUMNS = {("image", "level"): "EyePACS trainLabels.csv", ("id_code", "diagnosis"): "APTOS train.csv"}
REFERABLE_FROM_GRADE = 2


def read_grades(path: Path) -> dict[str, int]:
    with path.open(newline="") as stream:
        reader = csv.DictReader(stream)
        header = tuple(reader.fieldnames or ())
        columns = next((c for c in LABEL_COLUMNS if set(c) <= set(header)), None)
        if columns is None:
            raise LabelError(f"{path.name}: expected the columns image,level (EyePACS) or id_code,diagnosis "
                             f"(APTOS); found {','.join(header)}")
        name, grade = columns
        grades = {}
        for line, row in enumerate(reader, start=2):
            try:
                value = int(row[grade])
            except (TypeError, ValueError):
                raise LabelError(f"{path.name} line {line}: {grade} {row[grade]!r} is not a grade 0-4") from None
            if not 0 <= value <= 4:
                raise LabelError(f"{path.name} line {line}: {grade} {value} is not a grade 0-4")
            grades[row[name]] = value
    return grades


class DRGradingEvaluation:
    task = TaskName.DR_GRADING

    def read_cases(self, labels: LabelOptions) -> list[Case]:
        return [Case(case_id=name, files=(str(image_for(labels.data, name)),), truth={"grade": grade})
                for name, grade in read_grades(labels.labels).items()]

    def record(self, case: Case, job: Job, artifacts: dict[str, bytes], predictions_dir: Path) -> dict:
        result = job.result or {}
        return {"grade": result["grade"], "probabilities": result["probabilities"],
                "referable_probability": result["referable_probability"], "referable": result["referable"],
                "operating_point": result["operating_point"]}

    def binary_outcomes(self, cases: list[Case], records: list[dict]) -> BinaryOutcomes:
        return BinaryOutcomes(truth=np.array([c.truth["grade"] >= REFERABLE_FROM_GRADE for c in cases]),
                              probability=np.array([r["referable_probability"] for r in records]))

    def score(self, cases: list[Case], records: list[dict], manifest: ModelManifest,
              settings: BootstrapSettings) -> Scored:
        truth = np.array([c.truth["grade"] for c in cases])
        predicted = np.array([r["grade"] for r in records])
        probabilities = np.array([r["probabilities"] for r in records])
        everyone = [np.arange(len(cases))]
        metrics = {
            "qwk": bootstrap_figure(lambda i: _qwk(truth[i], predicted[i]), everyone, settings),
            "accuracy": bootstrap_figure(lambda i: float((truth[i] == predicted[i]).mean()), everyone, settings),
        }
        referable = self.binary_outcomes(cases, records)
        points = {p.name: p.threshold for p in manifest.operating_points}
        metrics.update(binary_figures(referable.truth, referable.probability, points, settings, prefix="referable_"))
        confidence, correct = probabilities.max(axis=1), predicted == truth
        metrics["grade_ece"] = bootstrap_figure(
            lambda i: expected_calibration_error(correct[i], confidence[i]), everyone, settings)
        plot_files = {
            "confusion.png": plots.confusion(truth, predicted, labels=list(range(5)),
                                             title="ICDR grade (rows: truth)"),
            "calibration.png": plots.calibration(referable.truth, referable.probability, "Referable DR"),
        }
        if referable.truth.any() and not referable.truth.all():
            plot_files["roc.png"] = plots.roc(referable.truth, referable.probability, "Referable DR (grade >= 2)",
                                              points)
        rows = [{"case": c.case_id, "grade_true": c.truth["grade"], "grade_predicted": r["grade"],
                 "referable_true": int(c.truth["grade"] >= REFERABLE_FROM_GRADE),
                 "referable_probability": r["referable_probability"], "referable_called": int(r["referable"])}
                for c, r in zip(cases, records, strict=True)]
        curves = {"roc": roc_points(referable.truth, referable.probability) if "roc.png" in plot_files else None,
                  "calibration": calibration(referable.truth, referable.probability)}
        return Scored(metrics=metrics, plots=plot_files, rows=rows, curves=curves)


def _qwk(truth: np.ndarray, predicted: np.ndarray) -> float:
    if len(np.unique(np.r_[truth, predicted])) < 2:
        return float("nan")
    return float(cohen_kappa_score(truth, predicted, weights="quadratic"))


EVALUATION = DRGradingEvaluation()
