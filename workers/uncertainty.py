"""Test-time augmentation: the same input under small changes the model should shrug off (a mirrored eye, a
slightly brighter or darker exposure), run through the same inference path, and the spread of the answers.

Pure functions on arrays and the manifest's `uncertainty` settings; the pipelines run the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.schemas.manifest import UncertaintySettings
from app.schemas.quality import ClassificationUncertainty, FindingSpread, SegmentationUncertainty

ORIGINAL = "original"


def wanted(option: bool | None, settings: UncertaintySettings, volume: bool = False) -> bool:
    """The caller's options.uncertainty, or the manifest's default when they gave none; never for a volume when
    the manifest lists no flip (volumes take no intensity change)."""
    if volume and not volume_augmentations(settings):
        return False
    return settings.default if option is None else option


def augment(image: np.ndarray, name: str, settings: UncertaintySettings, mask: bool = False) -> np.ndarray:
    """One augmentation of a uint8 image (rows, columns[, channels]); a mask takes the flips only."""
    if name == ORIGINAL:
        return image
    if name == "flip-horizontal":
        return np.ascontiguousarray(image[:, ::-1])
    if name == "flip-vertical":
        return np.ascontiguousarray(image[::-1])
    if mask:
        return image
    scale = 1.0 + settings.intensity_change if name == "brighter" else 1.0 - settings.intensity_change
    return np.clip(np.rint(image.astype(np.float32) * scale), 0, 255).astype(np.uint8)


def names(settings: UncertaintySettings) -> list[str]:
    return [ORIGINAL, *settings.augmentations]


def volume_augmentations(settings: UncertaintySettings) -> list[str]:
    """The flips among the manifest's augmentations: volumes (CT in Hounsfield units) take no intensity change."""
    return [name for name in settings.augmentations if name.startswith("flip-")]


def unflip(array: np.ndarray, name: str) -> np.ndarray:
    """Undo an augmentation's flip on an output laid out (..., rows, columns); flips are their own inverse."""
    if name == "flip-horizontal":
        return np.flip(array, axis=-1)
    if name == "flip-vertical":
        return np.flip(array, axis=-2)
    return array


def classification(probabilities: Sequence[float], augmentations: list[str], threshold: float,
                   settings: UncertaintySettings) -> ClassificationUncertainty:
    """`probabilities[i]`: the reported finding's probability under augmentation i (0: the original)."""
    values = np.asarray(probabilities, np.float64)
    spread = float(values.max() - values.min())
    decisions = values >= threshold
    return ClassificationUncertainty(
        augmentations=augmentations,
        probability_spread=round(spread, 6),
        probability_std=round(float(values.std()), 6),
        low_confidence=bool(spread >= settings.low_confidence_spread or decisions.any() != decisions.all()),
        low_confidence_spread=settings.low_confidence_spread,
    )


def segmentation(disagreement: np.ndarray, lesion_voxels: int, voxel_ml: float,
                 augmentations: list[str]) -> SegmentationUncertainty:
    """`disagreement`: per voxel, the share of augmentations whose lesion call differs from the original's."""
    uncertain = int(np.count_nonzero(disagreement))
    return SegmentationUncertainty(
        augmentations=augmentations,
        uncertain_volume_ml=round(uncertain * voxel_ml, 3),
        uncertain_share_of_lesion=round(uncertain / lesion_voxels, 4) if lesion_voxels else 0.0,
    )


def finding_spread(finding_id: int, scores: Sequence[float], settings: UncertaintySettings) -> FindingSpread:
    spread = float(max(scores) - min(scores))
    return FindingSpread(id=finding_id, score_spread=round(min(spread, 1.0), 4),
                         low_confidence=spread >= settings.low_confidence_spread)
