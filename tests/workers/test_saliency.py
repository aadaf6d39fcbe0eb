"""Occlusion saliency with the DR reference model on photos whose lesions are known (about 3 s a photo)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from app.model_repository import load_model_version
from app.schemas.manifest import SaliencySettings
from devkit.fundus import lesions_in_one_quadrant
from devkit.reference_models import reference_model_dir
from workers import saliency
from workers.imaging.fundus import fit_to_model, retina_square, to_model_tensor
from workers.onnx import load_model
from workers.pipelines.dr_grading import referable_scores


@pytest.fixture(scope="module")
def dr_model():
    return load_model(load_model_version(reference_model_dir("dr-grading-reference") / "1"), ["CPUExecutionProvider"])


@pytest.mark.parametrize("seed", [1, 3])
def test_occlusion_map_concentrates_on_the_known_lesions(dr_model, seed: int) -> None:
    photo, lesion = lesions_in_one_quadrant(seed)
    manifest = dr_model.manifest
    tensor = to_model_tensor(fit_to_model(photo, manifest.preprocessing), manifest.preprocessing)

    heat, runs = saliency.occlusion_map(tensor, saliency.log_odds(referable_scores(dr_model)), manifest.saliency)
    on_photo = saliency.to_source_grid(heat, retina_square(Image.fromarray(photo)), lesion.shape)

    assert on_photo.shape == lesion.shape
    assert runs == 1 + -(-13 * 13 // manifest.saliency.batch_size)  # 13 x 13 patches of 32 px every 16 px
    positive = np.clip(on_photo, 0.0, None)
    rows, cols = lesion.shape
    assert positive[:rows // 2, cols // 2:].sum() > 0.5 * positive.sum()  # the lesion quadrant holds most of it
    near_lesion = ndimage.binary_dilation(lesion, iterations=8)
    assert positive[near_lesion].mean() > 2 * positive.mean()  # twice as dense near the lesions as on average


def test_to_source_grid_places_the_map_in_its_box_and_clips_outside() -> None:
    heat = np.ones((4, 4), np.float32)

    placed = saliency.to_source_grid(heat, (-2, 3, 6, 11), (10, 5))

    assert placed.shape == (10, 5)
    assert placed[3:10, 0:5].min() == 1.0
    assert placed[:3].max() == 0.0


def test_occlusion_map_of_a_constant_score_is_zero() -> None:
    tensor = np.random.default_rng(0).normal(size=(3, 40, 40)).astype(np.float32)

    heat, runs = saliency.occlusion_map(tensor, lambda batch: np.full(len(batch), 0.5), SaliencySettings(batch_size=8))

    assert np.abs(heat).max() == 0.0
    assert runs == 1 + -(-4 // 8)  # patches at 0 and 8 on each axis: 4 occlusions in one batch
