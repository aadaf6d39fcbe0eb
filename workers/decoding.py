"""Turning raw model outputs into probabilities and decisions, as the manifest's `decoding` says."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.errors import BadInputError, ModelError
from app.schemas.manifest import BoxOutputs, Calibration, Decoding, ModelManifest
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


def calibrated(logits: np.ndarray, calibration: Calibration | None) -> np.ndarray:
    """Temperature scaling (Guo et al. 2017): logits / T, fitted on the validation split; identity without one."""
    return logits if calibration is None else np.asarray(logits, np.float64) / calibration.temperature


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


# --- multilabel-sigmoid ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelDecision:
    """One finding of a multi-label model: its probability and its own operating point."""

    name: str
    probability: float
    threshold: float
    present: bool


def multilabel_decisions(raw: np.ndarray, manifest: ModelManifest,
                         threshold_override: float | None = None) -> list[LabelDecision]:
    """Independent findings from one item's outputs (K values, one per class name), each at its own threshold:
    the caller's override, else decoding.class_thresholds, else the default operating point's."""
    decoding = manifest.decoding
    values = np.asarray(raw, dtype=np.float64).reshape(-1)
    if values.shape[0] != len(manifest.class_names):
        raise ModelError(f"{manifest.id}: {values.shape[0]} outputs for {len(manifest.class_names)} class_names")
    # Sigmoid whatever `activation` says, unless the graph already gives probabilities ("none").
    probabilities = values if decoding.activation == "none" else 1.0 / (1.0 + np.exp(-values))
    default = manifest.operating_point().threshold
    per_class = decoding.class_thresholds or {}
    decisions = []
    for name, probability in zip(manifest.class_names, probabilities, strict=True):
        threshold = threshold_override if threshold_override is not None else per_class.get(name, default)
        probability = float(np.clip(probability, 0.0, 1.0))
        decisions.append(LabelDecision(name, probability, threshold, probability >= threshold))
    return decisions


# --- box-detection --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Boxes:
    """Boxes in the model's input grid, axes in array order (z, y, x for volumes; y, x for images).

    `low` and `high` are (N, D) voxel index ranges [low, high) as a slice takes them; `scores` (N,), `labels`
    (N,) int (zeros when the model gives none).
    """

    low: np.ndarray
    high: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def shifted(self, origin: tuple[int, ...]) -> Boxes:
        offset = np.asarray(origin, dtype=np.float64)
        return Boxes(self.low + offset, self.high + offset, self.scores, self.labels)


# Position of each array axis (z, y, x or y, x) in a box's low half, for each box_format.
_AXIS_ORDER = {"xyzxyz": (2, 1, 0), "zyxzyx": (0, 1, 2), "xyxy": (1, 0), "yxyx": (0, 1)}


def decode_boxes(outputs: dict[str, np.ndarray], manifest: ModelManifest) -> Boxes:
    """The box-detection outputs of one input (boxes [N, 2D], scores [N], optional labels [N]), reordered to
    array axes. A leading batch axis of 1 is accepted and dropped."""
    decoding = manifest.decoding
    roles = decoding.box_outputs or BoxOutputs()
    order = _AXIS_ORDER[decoding.box_format or "xyzxyz"]
    dims = len(order)

    def take(name: str, rank: int) -> np.ndarray:
        if name not in outputs:
            raise ModelError(f"{manifest.id}: box-detection output {name!r} missing; outputs are {sorted(outputs)}")
        array = np.asarray(outputs[name])
        if array.ndim == rank + 1 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != rank:
            raise ModelError(f"{manifest.id}: output {name!r} has shape {array.shape}, expected rank {rank}")
        return array

    boxes = take(roles.boxes, 2).astype(np.float64)
    if boxes.shape[1] != 2 * dims:
        raise ModelError(f"{manifest.id}: boxes are {boxes.shape}; box_format {decoding.box_format} has "
                         f"{2 * dims} numbers per box")
    raw_scores = take(roles.scores, 1)
    scores = activate(raw_scores, decoding) if decoding.activation == "sigmoid" else raw_scores.astype(np.float64)
    labels = take(roles.labels, 1).astype(np.int64) if roles.labels else np.zeros(len(scores), np.int64)
    if not (len(scores) == len(labels) == boxes.shape[0]):
        raise ModelError(f"{manifest.id}: {boxes.shape[0]} boxes, {len(scores)} scores, {len(labels)} labels")
    low = boxes[:, list(order)]
    high = boxes[:, [dims + i for i in order]]
    if np.any(high < low):
        raise ModelError(f"{manifest.id}: a box's upper corner lies below its lower corner (box_format "
                         f"{decoding.box_format} may be wrong)")
    return Boxes(low, high, np.clip(scores, 0.0, 1.0), labels)


def suppress_overlaps(low: np.ndarray, high: np.ndarray, scores: np.ndarray, iou_threshold: float | None,
                      radius_mm: float | None) -> list[int]:
    """Non-maximum suppression of boxes given in millimetres ((N, D) corners, any D): best score first, a box is
    dropped when its intersection over union with a kept box reaches `iou_threshold`, or its centre lies within
    `radius_mm` of a kept box's centre. Either criterion may be None (not applied). Returns the kept indices,
    best first."""
    centres = (low + high) / 2
    volumes = np.prod(high - low, axis=1)
    kept: list[int] = []
    for index in np.argsort(-scores, kind="stable"):
        if kept:
            others = np.asarray(kept)
            if radius_mm is not None and np.any(np.linalg.norm(centres[others] - centres[index], axis=1) <= radius_mm):
                continue
            if iou_threshold is not None:
                overlap = np.prod(np.clip(np.minimum(high[others], high[index]) - np.maximum(low[others], low[index]),
                                          0.0, None), axis=1)
                union = volumes[others] + volumes[index] - overlap
                if np.any(overlap >= iou_threshold * np.maximum(union, 1e-12)):
                    continue
        kept.append(int(index))
    return kept
