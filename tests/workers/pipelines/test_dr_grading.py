"""DR grading of camera-sized JPEGs: decoded at reduced scale, graded as at full resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.model_repository import load_model_version
from devkit.fundus import jpeg_bytes, make_fundus
from devkit.reference_models import reference_model_dir
from workers.decoding import activate
from workers.imaging.fundus import preprocess_fundus
from workers.imaging.photo import load_photo
from workers.onnx import load_model
from workers.pipelines.dr_grading import decode_side


@pytest.fixture(scope="module")
def model():
    return load_model(load_model_version(reference_model_dir("dr-grading-reference") / "1"), ["CPUExecutionProvider"])


def _probabilities(model, photo: np.ndarray) -> np.ndarray:
    tensor = preprocess_fundus(photo, model.manifest.preprocessing)
    logits = model.run({model.manifest.inputs[0].name: tensor[None]})[model.manifest.outputs[0].name][0]
    return activate(logits, model.manifest.decoding)


@pytest.mark.parametrize("seed", [0, 7, 8])
def test_camera_jpeg_is_decoded_small_and_graded_as_at_full_resolution(model, tmp_path: Path, seed: int):
    fundus = make_fundus(seed, size=2000)
    path = tmp_path / "camera.jpg"
    path.write_bytes(jpeg_bytes(fundus.rgb))
    side = decode_side(model.manifest)

    full = load_photo(path, "jpeg")
    reduced = load_photo(path, "jpeg", min_side=side)

    assert full.shape == (2000, 2000, 3)
    assert reduced.shape == (500, 500, 3)  # 1/4 scale: the largest that keeps `side` (448) pixels
    full_probabilities, reduced_probabilities = _probabilities(model, full), _probabilities(model, reduced)
    assert int(np.argmax(reduced_probabilities)) == int(np.argmax(full_probabilities)) == fundus.grade
    assert np.abs(reduced_probabilities - full_probabilities).max() < 0.03


def test_jpeg_without_a_smaller_scale_that_keeps_enough_pixels_decodes_in_full(tmp_path: Path):
    fundus = make_fundus(1)
    path = tmp_path / "small.jpg"
    path.write_bytes(jpeg_bytes(fundus.rgb))
    assert load_photo(path, "jpeg", min_side=448).shape == fundus.rgb.shape  # 629 px: no 1/2 scale keeps 448
