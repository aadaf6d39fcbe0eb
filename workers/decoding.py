"""Turning raw model outputs into probabilities and decisions, as the manifest's `decoding` says."""

from __future__ import annotations

import numpy as np

from app.errors import BadInputError
from app.schemas.manifest import Decoding, ModelManifest
from app.schemas.results import OperatingPointUsed


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


def operating_point_used(manifest: ModelManifest, name: str | None = None) -> OperatingPointUsed:
    """The named operating point (the default when None), a site's own included, as results report it."""
    try:
        point = manifest.operating_point(name)
    except KeyError:
        raise BadInputError(
            f"options.operating_point {name!r} is not an operating point of {manifest.id}; it has "
            f"{', '.join(p.name for p in manifest.operating_points)}"
        ) from None
    return OperatingPointUsed(
        name=point.name, threshold=point.threshold, sensitivity=point.sensitivity, specificity=point.specificity,
        sensitivity_ci95=point.sensitivity_ci95, specificity_ci95=point.specificity_ci95, measured_on=point.measured_on,
    )
