"""The report's plots as PNG bytes: scikit-learn's displays on matplotlib's Agg canvas (no display needed)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.calibration import CalibrationDisplay  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # noqa: E402

from workers.evaluation.calibration import N_BINS  # noqa: E402
from workers.evaluation.froc import FP_RATES  # noqa: E402

FIGSIZE = (4.8, 4.2)
DPI = 100


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    return buffer.getvalue()


def roc(truth: np.ndarray, probability: np.ndarray, title: str, points: dict[str, float]) -> bytes:
    figure, axes = plt.subplots(figsize=FIGSIZE)
    RocCurveDisplay.from_predictions(truth, probability, ax=axes, name="model")
    truth = np.asarray(truth, dtype=bool)
    for name, threshold in points.items():
        called = probability >= threshold
        axes.plot(1 - (~called[~truth]).mean(), called[truth].mean(), "o", label=f"{name} ({threshold:g})")
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize=8)
    return _png(figure)


def calibration(truth: np.ndarray, probability: np.ndarray, title: str) -> bytes:
    figure, axes = plt.subplots(figsize=FIGSIZE)
    CalibrationDisplay.from_predictions(truth, probability, n_bins=N_BINS, ax=axes, name="model")
    axes.set_title(f"Reliability: {title}")
    return _png(figure)


def confusion(truth: np.ndarray, predicted: np.ndarray, labels: list, title: str) -> bytes:
    figure, axes = plt.subplots(figsize=FIGSIZE)
    ConfusionMatrixDisplay.from_predictions(truth, predicted, labels=labels, ax=axes, colorbar=False)
    axes.set_title(title)
    return _png(figure)


def froc(fp_per_scan: np.ndarray, sensitivity: np.ndarray, band: tuple[np.ndarray, np.ndarray] | None,
         cpm: float) -> bytes:
    figure, axes = plt.subplots(figsize=FIGSIZE)
    axes.plot(fp_per_scan, sensitivity, lw=2, label=f"model (CPM {cpm:.3f})")
    if band is not None:
        grid = np.asarray(FP_RATES)
        axes.fill_between(grid, band[0], band[1], alpha=0.2, label="95 % interval")
    axes.set_xscale("log", base=2)
    axes.set_xlim(FP_RATES[0], FP_RATES[-1])
    axes.set_ylim(0, 1.02)
    axes.set_xticks(FP_RATES, [f"{r:g}" for r in FP_RATES])
    axes.set_xlabel("False positives per scan")
    axes.set_ylabel("Sensitivity")
    axes.set_title("FROC (LUNA16 hit criterion)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    return _png(figure)


def agreement(truth: np.ndarray, predicted: np.ndarray, quantity: str, unit: str) -> bytes:
    figure, axes = plt.subplots(figsize=FIGSIZE)
    axes.scatter(truth, predicted, s=14)
    top = float(max(np.max(truth, initial=0), np.max(predicted, initial=0))) * 1.05 or 1.0
    axes.plot([0, top], [0, top], "k--", lw=1, label="identity")
    axes.set_xlabel(f"{quantity}, reference ({unit})")
    axes.set_ylabel(f"{quantity}, model ({unit})")
    axes.set_title(f"{quantity}: model against reference")
    axes.legend(loc="upper left", fontsize=8)
    return _png(figure)
