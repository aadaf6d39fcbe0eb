"""Figures of a binary probability output (referable DR, thyroid malignancy) with intervals.

scikit-learn computes each figure; intervals resample positives and negatives apart (intervals.py).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from workers.evaluation.calibration import expected_calibration_error, reliability_bins
from workers.evaluation.intervals import BootstrapSettings, bootstrap_figure


def binary_figures(truth: np.ndarray, probability: np.ndarray, thresholds: dict[str, float],
                   settings: BootstrapSettings, prefix: str = "") -> dict:
    """`{prefix}auc`, `{prefix}ece`, and `sensitivity@<point>` / `specificity@<point>` for each named threshold."""
    truth, probability = np.asarray(truth, dtype=bool), np.asarray(probability, dtype=np.float64)
    positives, negatives = np.flatnonzero(truth), np.flatnonzero(~truth)
    figures: dict[str, dict] = {}

    def auc(pos, neg):
        return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))],
                                   np.r_[probability[pos], probability[neg]]))

    if len(positives) and len(negatives):
        figures[f"{prefix}auc"] = bootstrap_figure(auc, [positives, negatives], settings)
    for name, threshold in thresholds.items():
        called = probability >= threshold
        if len(positives):
            figures[f"sensitivity@{name}"] = bootstrap_figure(lambda pos: float(called[pos].mean()), [positives],
                                                              settings)
        if len(negatives):
            figures[f"specificity@{name}"] = bootstrap_figure(lambda neg: float((~called[neg]).mean()), [negatives],
                                                              settings)
    everyone = np.arange(len(truth))
    figures[f"{prefix}ece"] = bootstrap_figure(
        lambda idx: expected_calibration_error(truth[idx], probability[idx]), [everyone], settings)
    return figures


def roc_points(truth: np.ndarray, probability: np.ndarray) -> dict:
    fpr, tpr, thresholds = roc_curve(np.asarray(truth, dtype=bool), probability)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def calibration(truth: np.ndarray, probability: np.ndarray) -> dict:
    return reliability_bins(np.asarray(truth, dtype=bool), np.asarray(probability, dtype=np.float64))
