"""Test-time augmentation helpers on arrays (milliseconds)."""

from __future__ import annotations

import numpy as np

from app.schemas.manifest import UncertaintySettings
from workers import uncertainty

SETTINGS = UncertaintySettings(augmentations=["flip-horizontal", "flip-vertical", "brighter", "darker"],
                               intensity_change=0.1, low_confidence_spread=0.2)


def test_augment_flips_are_undone_by_unflip_and_masks_take_only_flips() -> None:
    image = np.arange(24, dtype=np.uint8).reshape(4, 6)
    for name in ("flip-horizontal", "flip-vertical"):
        assert np.array_equal(uncertainty.unflip(uncertainty.augment(image, name, SETTINGS), name), image)
    assert np.array_equal(uncertainty.augment(image, "brighter", SETTINGS, mask=True), image)
    brighter = uncertainty.augment(np.array([[0, 100, 250]], np.uint8), "brighter", SETTINGS)
    assert brighter.tolist() == [[0, 110, 255]]


def test_classification_flags_a_spread_or_a_split_decision() -> None:
    steady = uncertainty.classification([0.90, 0.92, 0.88], ["original", "a", "b"], 0.5, SETTINGS)
    spread = uncertainty.classification([0.90, 0.65, 0.88], ["original", "a", "b"], 0.5, SETTINGS)
    split = uncertainty.classification([0.55, 0.45, 0.50], ["original", "a", "b"], 0.5, SETTINGS)

    assert not steady.low_confidence and abs(steady.probability_spread - 0.04) < 1e-9
    assert spread.low_confidence and abs(spread.probability_spread - 0.25) < 1e-9
    assert split.low_confidence and split.probability_spread < SETTINGS.low_confidence_spread


def test_volume_augmentations_keep_the_flips_only() -> None:
    assert uncertainty.volume_augmentations(SETTINGS) == ["flip-horizontal", "flip-vertical"]


def test_segmentation_summary_counts_uncertain_voxels_against_the_lesion() -> None:
    disagreement = np.zeros((2, 4, 4), np.uint8)
    disagreement[0, :2, :2] = 1

    summary = uncertainty.segmentation(disagreement, lesion_voxels=8, voxel_ml=0.5, augmentations=["original", "f"])

    assert summary.uncertain_volume_ml == 2.0
    assert summary.uncertain_share_of_lesion == 0.5
