"""Turning raw model outputs into probabilities and decisions, as the manifest's `decoding` says."""

from __future__ import annotations

import numpy as np

from app.schemas.manifest import Calibration, Decoding


def activate(raw: np.ndarray, decoding: Decoding, axis: int = -1) -> np.ndarray:
    raw = raw.astype(np.float64)
    if decoding.activation == "softmax":
        shifted = raw - raw.max(axis=axis, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=axis, keepdims=True)
    if decoding.activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-raw))
    return raw


def positive_probability(probabilities: np.ndarray, decoding: Decoding) -> float:
    return float(np.clip(probabilities[decoding.positive_classes].sum(), 0.0, 1.0))


def calibrated(logits: np.ndarray, calibration: Calibration | None) -> np.ndarray:
    """Temperature scaling (Guo et al. 2017): logits / T, fitted on the validation split; identity without one."""
    return logits if calibration is None else np.asarray(logits, np.float64) / calibration.temperature
