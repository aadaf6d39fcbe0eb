"""The thyroid reference models: manifests, the synthetic generator, and the card metrics."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from app.model_repository import file_sha256
from app.schemas.manifest import ModelManifest
from app.schemas.tirads import RiskBand, band_bounds_from_operating_points
from devkit.reference_models import load_reference_module, reference_model_dir
from devkit.ultrasound import synthetic_us

CLASSIFIER = "thyroid-malignancy-reference"
SEGMENTER = "thyroid-nodule-segmentation-reference"
# Card metrics must be reproduced within this (the evaluation is deterministic; this absorbs ORT/BLAS noise).
METRIC_TOLERANCE = 0.02


def _manifest(model_id: str) -> ModelManifest:
    return ModelManifest.model_validate_json((reference_model_dir(model_id) / "1" / "manifest.json").read_text())


@pytest.mark.parametrize("model_id", [CLASSIFIER, SEGMENTER])
def test_manifest_validates_and_sha256_matches_model(model_id: str) -> None:
    manifest = _manifest(model_id)
    onnx_path = reference_model_dir(model_id) / "1" / "model.onnx"
    assert manifest.sha256 == file_sha256(onnx_path)
    assert onnx_path.stat().st_size <= 3_000_000
    assert manifest.task.value == "thyroid-malignancy" and manifest.research_use_only is True
    assert set(manifest.accepts.formats) == {"png", "jpeg", "dicom"}
    assert manifest.accepts.modalities == ["US", "OT", "SC"] and manifest.accepts.max_frames is None
    assert (reference_model_dir(model_id) / "1" / "CARD.md").is_file()


def test_classifier_requires_the_segmenter_and_carries_band_bounds() -> None:
    manifest = _manifest(CLASSIFIER)
    assert manifest.requires == [SEGMENTER]
    bounds = band_bounds_from_operating_points(manifest.operating_points)
    assert bounds[RiskBand.TR4] == manifest.operating_point().threshold
    assert manifest.inputs[0].shape[1] == 2  # image and mask


@pytest.mark.parametrize("model_id", [CLASSIFIER, SEGMENTER])
def test_model_onnx_io_matches_manifest(model_id: str) -> None:
    import onnxruntime as ort

    manifest = _manifest(model_id)
    session = ort.InferenceSession(str(reference_model_dir(model_id) / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    (given,), (returned,) = session.get_inputs(), session.get_outputs()
    assert given.name == manifest.inputs[0].name and given.shape == manifest.inputs[0].shape
    assert returned.name == manifest.outputs[0].name and returned.shape == manifest.outputs[0].shape
    (out,) = session.run(None, {given.name: np.zeros((2, *manifest.inputs[0].shape[1:]), np.float32)})
    assert out.shape[0] == 2


# --- the generator --------------------------------------------------------------------------------


def test_split_item_is_deterministic_and_splits_differ() -> None:
    generator = synthetic_us()
    first, again = generator.split_item("test", 3), generator.split_item("test", 3)
    assert np.array_equal(first.frame, again.frame) and np.array_equal(first.mask, again.mask)
    assert first.malignant == again.malignant
    digests = {s: hashlib.sha256(generator.split_item(s, 0).frame.tobytes()).hexdigest()
               for s in ("train", "val", "test")}
    assert len(set(digests.values())) == 3


def test_points_follow_acr_tirads() -> None:
    generator = synthetic_us()
    features = generator.NoduleFeatures
    assert features("cystic", "anechoic", False, "smooth", "none").points == 0
    assert features("solid", "hypoechoic", False, "smooth", "none").points == 4
    assert features("solid", "very-hypoechoic", True, "extrathyroidal", "punctate").points == 14
    assert features("mixed", "isoechoic", False, "lobulated", "macrocalcification").points == 5
    assert [generator.tirads_level(p) for p in (0, 1, 2, 3, 4, 6, 7, 14)] == [1, 1, 2, 3, 4, 4, 5, 5]


def test_malignancy_label_is_drawn_from_a_risk_rising_with_points() -> None:
    generator = synthetic_us()
    risks = [generator.malignancy_probability(p) for p in range(15)]
    assert all(a < b for a, b in zip(risks, risks[1:], strict=False))
    items = [generator.split_item("val", i) for i in range(80)]
    low = [i.malignant for i in items if i.points <= 3]
    high = [i.malignant for i in items if i.points >= 8]
    assert low and high and np.mean(high) > np.mean(low) + 0.5


def test_features_are_drawn_into_the_pixels() -> None:
    """The same frame with a very hypoechoic versus a hyperechoic nodule differs inside the nodule."""
    generator = synthetic_us()
    dark = generator.generate_frame(np.random.default_rng(5), generator.NoduleFeatures(
        "solid", "very-hypoechoic", False, "smooth", "none"), ui=False)
    bright = generator.generate_frame(np.random.default_rng(5), generator.NoduleFeatures(
        "solid", "hyperechoic", False, "smooth", "none"), ui=False)
    assert np.array_equal(dark.mask, bright.mask)
    assert bright.frame[bright.mask].mean() > dark.frame[dark.mask].mean() + 40
    taller = generator.generate_frame(np.random.default_rng(6), generator.NoduleFeatures(
        "solid", "hypoechoic", True, "smooth", "none"), ui=False)
    rows, cols = np.nonzero(taller.mask)
    assert np.ptp(rows) > np.ptp(cols)


# --- the card metrics -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cascade_results() -> dict:
    """One pass of the classifier's evaluate.py over the full held-out split (segmentation included)."""
    return load_reference_module(CLASSIFIER, "evaluate").evaluate()


def test_card_metrics_are_reproduced_through_onnx_runtime(cascade_results: dict) -> None:
    evaluate = load_reference_module(CLASSIFIER, "evaluate")
    results = cascade_results
    manifest = _manifest(CLASSIFIER)
    assert results["n_images"] == evaluate.N_TEST
    for key in evaluate.METRIC_KEYS:
        assert key in manifest.metrics, f"manifest has no {key}; run evaluate.py --write"
        assert abs(results[key] - manifest.metrics[key]) <= METRIC_TOLERANCE, (key, results[key])
    assert results["nodule_dice_mean"] >= 0.80
    assert results["malignancy_auc"] >= 0.85  # the card reports the value; the API test holds the 0.90 target
    point = manifest.operating_point()
    assert abs(results["tr4_sensitivity"] - point.sensitivity) <= METRIC_TOLERANCE


def test_segmentation_card_metrics_are_reproduced(cascade_results: dict) -> None:
    """The segmentation model's evaluate.py measures the same frames through the same steps; its card
    numbers must match the cascade pass (running it again would double this test's time)."""
    evaluate = load_reference_module(SEGMENTER, "evaluate")
    same = {"dice_mean": "nodule_dice_mean", "dice_median": "nodule_dice_median", "dice_p10": "nodule_dice_p10"}
    results = {key: cascade_results[same.get(key, key)] for key in evaluate.METRIC_KEYS}
    manifest = _manifest(SEGMENTER)
    assert manifest.metrics and evaluate.N_TEST == load_reference_module(CLASSIFIER, "evaluate").N_TEST
    for key in evaluate.METRIC_KEYS:
        assert key in manifest.metrics, f"manifest has no {key}; run evaluate.py --write"
        assert abs(results[key] - manifest.metrics[key]) <= METRIC_TOLERANCE, (key, results[key])
