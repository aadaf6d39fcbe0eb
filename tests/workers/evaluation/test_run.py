"""`medimg eval` end to end per task: labelled sets in the public data sets' formats, through the service's
pipeline, figures checked against values computed here independently (scikit-learn, LUNA16's FROC recipe)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score, roc_curve

from devkit.covid import dice
from tests.utils.evaluation import (
    eyepacs_set,
    luna16_set,
    medimg_eval,
    mosmed_set,
    read_cases,
    read_metrics,
    thyroid_set,
)
from devkit.services import service_env

BOOTSTRAP = "300"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return service_env(tmp_path_factory.mktemp("eval-data"))


def assert_inside_intervals(metrics: dict) -> None:
    for name, figure in metrics.items():
        assert figure["ci95"] is not None, name
        low, high = figure["ci95"]
        assert low - 1e-9 <= figure["value"] <= high + 1e-9, (name, figure)
        assert figure["n"] > 0, name


def assert_report_and_plots(out: Path, plots: list[str]) -> None:
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == len(plots)
    assert "http://" not in report and "https://" not in report  # nothing fetched when opened
    for name in plots:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, name


def test_eval_dr_grading_eyepacs_scores_like_scikit_learn_and_resumes(env, tmp_path) -> None:
    labelled = eyepacs_set(tmp_path / "eyepacs")
    out = tmp_path / "out"
    medimg_eval(env, "--task", "dr-grading", "--data", str(labelled.data), "--labels", str(labelled.labels),
                "--out", str(out), "--jobs", "2", "--bootstrap", BOOTSTRAP, "--seed", "7")
    document = read_metrics(out)
    assert document["cases"] == {"labelled": 10, "scored": 10, "failed": 0, "refused": 0, "ungradable": 0,
                                 "label_mismatch": 0}
    assert document["bootstrap"]["seed"] == 7 and document["bootstrap"]["n_resamples"] == 300
    rows = {row["case"]: row for row in read_cases(out)}
    assert set(rows) == set(labelled.truth)
    names = sorted(rows)
    truth = np.array([labelled.truth[n] for n in names])
    predicted = np.array([int(rows[n]["grade_predicted"]) for n in names])
    probability = np.array([float(rows[n]["referable_probability"]) for n in names])
    metrics = document["metrics"]
    assert metrics["qwk"]["value"] == pytest.approx(cohen_kappa_score(truth, predicted, weights="quadratic"), abs=1e-6)
    assert metrics["referable_auc"]["value"] == pytest.approx(roc_auc_score(truth >= 2, probability), abs=1e-6)
    threshold = document["operating_points"]["referable"]["threshold"]
    assert metrics["sensitivity@referable"]["value"] == pytest.approx((probability[truth >= 2] >= threshold).mean())
    assert metrics["specificity@referable"]["value"] == pytest.approx((probability[truth < 2] < threshold).mean())
    assert metrics["sensitivity@referable"]["n"] == int((truth >= 2).sum())
    assert {"qwk", "referable_auc", "referable_ece", "grade_ece", "accuracy"} <= set(metrics)
    assert_inside_intervals(metrics)
    assert_report_and_plots(out, ["confusion.png", "calibration.png", "roc.png"])

    # Resumable: a run stopped after some cases continues from the per-case cache, running only the rest.
    cache = sorted((out / "cases").glob("*.json"))
    kept = {path: path.stat().st_mtime_ns for path in cache[1:]}
    cache[0].unlink()
    medimg_eval(env, "--task", "dr-grading", "--data", str(labelled.data), "--labels", str(labelled.labels),
                "--out", str(out), "--jobs", "1", "--bootstrap", BOOTSTRAP, "--seed", "7")
    assert cache[0].is_file()
    assert {path: path.stat().st_mtime_ns for path in cache[1:]} == kept
    assert read_metrics(out)["metrics"]["qwk"] == metrics["qwk"]


def luna16_cpm(annotations: dict, candidates: dict) -> float:
    """CPM as noduleCADEvaluationLUNA16.py computes it: hits within the radius, the best hit per nodule,
    sklearn's roc_curve turned into false positives per scan, sensitivity interpolated at 1/8 … 8."""
    gt, prob, excluded = [], [], []
    for uid, nodules in annotations.items():
        remaining = dict(enumerate(candidates[uid]))
        for x, y, z, d in nodules:
            hits = [k for k, c in enumerate(candidates[uid])
                    if (c[0] - x) ** 2 + (c[1] - y) ** 2 + (c[2] - z) ** 2 < (d / 2) ** 2]
            for k in hits:
                remaining.pop(k, None)
            gt.append(1.0)
            prob.append(max(candidates[uid][k][3] for k in hits) if hits else -1e9)
            excluded.append(not hits)
        for c in remaining.values():
            gt.append(0.0)
            prob.append(c[3])
            excluded.append(False)
    gt, prob, excluded = np.array(gt), np.array(prob), np.array(excluded)
    fpr, tpr, _ = roc_curve(gt[~excluded], prob[~excluded])
    detected = gt[~excluded].sum()
    fps = fpr * ((~excluded).sum() - detected) / len(annotations)
    sens = tpr * detected / gt.sum()
    return float(np.mean([np.interp(r, fps, sens) for r in (0.125, 0.25, 0.5, 1, 2, 4, 8)]))


def test_eval_lung_nodules_luna16_cpm_matches_the_luna16_recipe(env, tmp_path) -> None:
    labelled = luna16_set(tmp_path / "luna16")
    out = tmp_path / "out"
    medimg_eval(env, "--task", "lung-nodule-detection", "--data", str(labelled.data), "--labels",
                str(labelled.labels), "--out", str(out), "--jobs", "1", "--bootstrap", BOOTSTRAP)
    document = read_metrics(out)
    assert document["cases"]["scored"] == 2 and document["bootstrap"]["unit"] == "scans"
    candidates = {}
    for uid in labelled.truth:
        record = json.loads(next((out / "cases").glob(f"{uid}*.json")).read_text())
        candidates[uid] = record["prediction"]["candidates"]
    metrics = document["metrics"]
    assert metrics["cpm"]["value"] == pytest.approx(luna16_cpm(labelled.truth, candidates), abs=1e-6)
    assert metrics["cpm"]["n"] == 2 and metrics["cpm"]["n_nodules"] == 2
    assert {f"sensitivity@{r}fp" for r in ("0.125", "0.25", "0.5", "1", "2", "4", "8")} <= set(metrics)
    assert_inside_intervals(metrics)
    assert_report_and_plots(out, ["froc.png"])


def test_eval_covid_nifti_masks_dice_and_volume_match_the_reference(env, tmp_path) -> None:
    import nibabel as nib

    labelled = mosmed_set(tmp_path / "mosmed")
    out = tmp_path / "out"
    medimg_eval(env, "--task", "covid-lesion-segmentation", "--data", str(labelled.data), "--labels",
                str(labelled.labels), "--mask-label", "lesion=1", "--out", str(out), "--jobs", "1",
                "--bootstrap", BOOTSTRAP)
    document = read_metrics(out)
    assert document["cases"]["scored"] == 2
    dices, volume_errors = [], []
    for name, case in labelled.truth.items():
        predicted = nib.Nifti1Image.from_bytes(gzip.decompress((out / "predictions" / f"{name}.nii.gz").read_bytes()))
        labels = np.asarray(predicted.dataobj).transpose(2, 1, 0)  # the series' (slice, row, column)
        dices.append(dice(labels > 0, case.labels > 0))
        record = json.loads((out / "cases" / f"{name}.json").read_text())["prediction"]
        true_ml = float((case.labels > 0).sum() * np.prod(case.grid.spacing)) / 1000
        volume_errors.append(abs(record["lesion_ml"] - true_ml))
    metrics = document["metrics"]
    assert metrics["dice_lesion"]["value"] == pytest.approx(np.mean(dices), abs=1e-6)
    assert metrics["dice_lesion"]["value"] > 0.9
    assert metrics["volume_error_ml"]["value"] == pytest.approx(np.mean(volume_errors), abs=1e-3)
    assert {"volume_error_percent", "involvement_error"} <= set(metrics)
    assert_inside_intervals(metrics)
    assert_report_and_plots(out, ["volume.png"])


def test_eval_thyroid_auc_and_dice_match_scikit_learn(env, tmp_path) -> None:
    from PIL import Image

    labelled = thyroid_set(tmp_path / "thyroid")
    out = tmp_path / "out"
    medimg_eval(env, "--task", "thyroid-malignancy", "--data", str(labelled.data), "--labels", str(labelled.labels),
                "--masks", str(labelled.masks), "--out", str(out), "--jobs", "1", "--bootstrap", BOOTSTRAP)
    document = read_metrics(out)
    rows = {row["case"]: row for row in read_cases(out)}
    names = sorted(rows)
    truth = np.array([labelled.truth[n][0] for n in names])
    probability = np.array([float(rows[n]["probability"]) for n in names])
    metrics = document["metrics"]
    assert truth.any() and not truth.all()
    assert metrics["auc"]["value"] == pytest.approx(roc_auc_score(truth, probability), abs=1e-6)
    dices = []
    for name in names:
        with Image.open(out / "predictions" / f"{name}-mask.png") as image:
            dices.append(dice(np.asarray(image) > 0, labelled.truth[name][1]))
    assert metrics["dice"]["value"] == pytest.approx(np.mean(dices), abs=1e-6)
    assert {"sensitivity@TR5", "specificity@TR5", "ece"} <= set(metrics)
    assert_inside_intervals(metrics)
    assert_report_and_plots(out, ["calibration.png", "roc.png", "confusion.png"])
