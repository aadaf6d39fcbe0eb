"""thyroid-malignancy: a CSV `image,malignant` (0/1), images PNG/JPEG/DICOM; optional mask PNGs for Dice.

Masks (`--masks DIR`, `<image>.png`, non-zero = nodule, the frame's rows and columns) score the nodule the
segmentation outlined (`nodule-mask.png`). Figures: AUC, sensitivity and specificity at every operating point
(the TI-RADS band bounds and a site's point), ECE of the malignancy probability, and Dice.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

from app.schemas.jobs import Job
from app.schemas.manifest import ModelManifest
from app.schemas.tasks import TaskName
from workers.evaluation import plots
from workers.evaluation.base import BinaryOutcomes, Case, LabelOptions, Scored
from workers.evaluation.classification import binary_figures, calibration, roc_points
from workers.evaluation.files import LabelError, image_for
from workers.evaluation.intervals import BootstrapSettings, mean_figure

MASK_ARTIFACT = "nodule-mask.png"


def read_malignancy(path: Path) -> dict[str, int]:
    with path.open(newline="") as stream:
        reader = csv.DictReader(stream)
        if not {"image", "malignant"} <= set(reader.fieldnames or ()):
            raise LabelError(f"{path.name}: expected the columns image,malignant; found "
                             f"{','.join(reader.fieldnames or ())}")
        labels = {}
        for line, row in enumerate(reader, start=2):
            if row["malignant"].strip() not in ("0", "1"):
                raise LabelError(f"{path.name} line {line}: malignant {row['malignant']!r} must be 0 or 1")
            labels[row["image"]] = int(row["malignant"])
    return labels


class ThyroidMalignancyEvaluation:
    task = TaskName.THYROID_MALIGNANCY

    def read_cases(self, labels: LabelOptions) -> list[Case]:
        cases = []
        for name, malignant in read_malignancy(labels.labels).items():
            mask = None
            if labels.masks is not None:
                candidate = labels.masks / f"{Path(name).stem}.png"
                mask = str(candidate) if candidate.is_file() else None
            cases.append(Case(case_id=name, files=(str(image_for(labels.data, name)),),
                              truth={"malignant": malignant, "mask": mask}))
        return cases

    def record(self, case: Case, job: Job, artifacts: dict[str, bytes], predictions_dir: Path) -> dict:
        result = job.result or {}
        record = {"probability": result["malignancy_probability"], "risk_band": result["risk_band"], "dice": None}
        if MASK_ARTIFACT in artifacts:  # the outline the model scored, beside the report for review
            from workers.evaluation.predict import safe_name

            (predictions_dir / f"{safe_name(case.case_id)}-mask.png").write_bytes(artifacts[MASK_ARTIFACT])
        if case.truth.get("mask") and MASK_ARTIFACT in artifacts:
            with Image.open(case.truth["mask"]) as image:
                reference = np.asarray(image.convert("L")) > 0
            with Image.open(io.BytesIO(artifacts[MASK_ARTIFACT])) as image:
                model = np.asarray(image.convert("L")) > 0
            if reference.shape != model.shape:
                raise LabelError(f"mask of {case.case_id} is {reference.shape[1]}x{reference.shape[0]}; the frame "
                                 f"is {model.shape[1]}x{model.shape[0]}")
            total = int(reference.sum() + model.sum())
            record["dice"] = 1.0 if total == 0 else 2.0 * int((reference & model).sum()) / total
        return record

    def binary_outcomes(self, cases: list[Case], records: list[dict]) -> BinaryOutcomes:
        return BinaryOutcomes(truth=np.array([c.truth["malignant"] == 1 for c in cases]),
                              probability=np.array([r["probability"] for r in records]))

    def score(self, cases: list[Case], records: list[dict], manifest: ModelManifest,
              settings: BootstrapSettings) -> Scored:
        outcomes = self.binary_outcomes(cases, records)
        points = {p.name: p.threshold for p in manifest.operating_points}
        metrics = binary_figures(outcomes.truth, outcomes.probability, points, settings)
        dice = np.array([r["dice"] for r in records if r["dice"] is not None])
        if len(dice):
            metrics["dice"] = mean_figure(dice, settings)
        plot_files = {"calibration.png": plots.calibration(outcomes.truth, outcomes.probability, "Malignancy")}
        has_both = outcomes.truth.any() and not outcomes.truth.all()
        if has_both:
            plot_files["roc.png"] = plots.roc(outcomes.truth, outcomes.probability, "Malignancy", points)
        default = manifest.operating_point()
        called = outcomes.probability >= default.threshold
        plot_files["confusion.png"] = plots.confusion(outcomes.truth.astype(int), called.astype(int), [0, 1],
                                                      f"Malignant at {default.name} (rows: truth)")
        rows = [{"case": c.case_id, "malignant_true": c.truth["malignant"], "probability": r["probability"],
                 "risk_band": r["risk_band"], "dice": r["dice"]} for c, r in zip(cases, records, strict=True)]
        curves = {"roc": roc_points(outcomes.truth, outcomes.probability) if has_both else None,
                  "calibration": calibration(outcomes.truth, outcomes.probability)}
        return Scored(metrics=metrics, plots=plot_files, rows=rows, curves=curves)


EVALUATION = ThyroidMalignancyEvaluation()
