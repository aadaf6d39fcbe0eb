"""Calibration of a probability output: reliability bins and expected calibration error (ECE).

ECE = sum over equal-width bins of (cases in bin / all cases) * |observed rate - mean predicted probability|,
with the bins of scikit-learn's `calibration_curve` (strategy "uniform"), which also draws the diagram.
"""

from __future__ import annotations

import numpy as np
from sklearn.calibration import calibration_curve

N_BINS = 10


def expected_calibration_error(outcome: np.ndarray, probability: np.ndarray, n_bins: int = N_BINS) -> float:
    outcome, probability = np.asarray(outcome, dtype=np.float64), np.asarray(probability, dtype=np.float64)
    if len(outcome) == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # The bin rule of calibration_curve: a probability of exactly 1 falls in the last bin.
    bins = np.clip(np.searchsorted(edges[1:-1], probability, side="right"), 0, n_bins - 1)
    error = 0.0
    for b in np.unique(bins):
        members = bins == b
        error += members.mean() * abs(outcome[members].mean() - probability[members].mean())
    return float(error)


def reliability_bins(outcome: np.ndarray, probability: np.ndarray, n_bins: int = N_BINS) -> dict:
    observed, predicted = calibration_curve(outcome, probability, n_bins=n_bins, strategy="uniform")
    return {"mean_predicted": [round(float(v), 6) for v in predicted],
            "observed_rate": [round(float(v), 6) for v in observed], "n_bins": n_bins}
