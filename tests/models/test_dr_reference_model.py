"""The DR-grading reference model: its manifest, its synthetic data, its preprocessing and its card metrics."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from app.model_repository import file_sha256
from app.schemas.manifest import ModelManifest, Normalization, Preprocessing
from devkit.reference_models import load_reference_module, reference_model_dir
from workers.imaging.fundus import crop_to_retina, preprocess_fundus

MODEL_ID = "dr-grading-reference"
VERSION_DIR = reference_model_dir(MODEL_ID) / "1"
# Card metrics must be reproduced within this on the full held-out split (the brief's tolerance).
METRIC_TOLERANCE = 0.03


@pytest.fixture(scope="module")
def manifest() -> ModelManifest:
    return ModelManifest.model_validate_json((VERSION_DIR / "manifest.json").read_text())


@pytest.fixture(scope="module")
def synthetic():
    return load_reference_module(MODEL_ID, "synthetic_fundus")


def _disc_image(height: int, width: int, cx: float, cy: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
    image = np.zeros((height, width, 3), np.uint8)
    image[inside] = (200, 90, 40)
    return image


def _disc_centre(image: np.ndarray) -> tuple[float, float]:
    """Centre of the bright disc in a crop: middle of its widest rows and of its columns."""
    mask = image.max(axis=-1) > 30
    widths = mask.sum(axis=1)
    rows = np.flatnonzero(widths == widths.max())
    cols = np.flatnonzero(mask.any(axis=0))
    return float(rows.mean()), float((cols[0] + cols[-1]) / 2)


# --- manifest -------------------------------------------------------------------------------------


def test_manifest_validates_and_sha256_matches_model(manifest: ModelManifest) -> None:
    digest = file_sha256(VERSION_DIR / "model.onnx")
    assert manifest.sha256 == digest
    assert manifest.id == MODEL_ID and manifest.version == 1
    assert manifest.research_use_only is True
    assert manifest.decoding.positive_classes == [2, 3, 4]
    assert len(manifest.class_names) == 5
    assert manifest.operating_point().name == "referable"


def test_model_onnx_io_matches_manifest(manifest: ModelManifest) -> None:
    import onnxruntime as ort

    assert (VERSION_DIR / "model.onnx").stat().st_size <= 3_000_000
    session = ort.InferenceSession(str(VERSION_DIR / "model.onnx"), providers=["CPUExecutionProvider"])
    (given,), (returned,) = session.get_inputs(), session.get_outputs()
    assert given.name == manifest.inputs[0].name and given.shape == manifest.inputs[0].shape
    assert returned.name == manifest.outputs[0].name and returned.shape == manifest.outputs[0].shape
    batch = np.zeros((3, *manifest.inputs[0].shape[1:]), np.float32)
    (logits,) = session.run([returned.name], {given.name: batch})
    assert logits.shape == (3, len(manifest.class_names))


# --- synthetic data -------------------------------------------------------------------------------


def test_split_item_is_deterministic(synthetic) -> None:
    first, again = synthetic.split_item("test", 7), synthetic.split_item("test", 7)
    assert np.array_equal(first.rgb, again.rgb)
    assert first.grade == again.grade and first.lesions == again.lesions


def test_splits_are_disjoint(synthetic) -> None:
    digests = {
        split: {hashlib.sha256(item.rgb.tobytes()).hexdigest() for item in synthetic.iter_split(split, 10)}
        for split in ("train", "val", "test")
    }
    assert all(len(d) == 10 for d in digests.values())
    assert not digests["train"] & digests["val"]
    assert not digests["train"] & digests["test"]
    assert not digests["val"] & digests["test"]


@pytest.mark.parametrize("grade", range(5))
def test_grade_follows_from_lesions(synthetic, grade: int) -> None:
    rng = np.random.default_rng(100 + grade)
    for _ in range(4):
        item = synthetic.generate_fundus(rng, grade=grade, size=384)
        lesions = item.lesions
        assert synthetic.icdr_grade(lesions) == item.grade
        assert item.rgb.dtype == np.uint8 and item.rgb.ndim == 3 and item.rgb.shape[-1] == 3
        if item.grade == 0:
            assert lesions.total == 0
        if item.grade == 1:
            assert lesions.microaneurysms > 0 and lesions.total == lesions.microaneurysms
        if item.grade == 3:
            severe_haemorrhages = min(lesions.haemorrhages_per_quadrant) >= 20
            assert severe_haemorrhages or lesions.venous_beading_quadrants >= 2
        if item.grade == 4:
            assert lesions.neovascular_tufts > 0 or lesions.preretinal_haemorrhages > 0


def test_icdr_grade_applies_the_four_quadrant_rule(synthetic) -> None:
    counts = synthetic.LesionCounts
    assert synthetic.icdr_grade(counts()) == 0
    assert synthetic.icdr_grade(counts(microaneurysms=3)) == 1
    assert synthetic.icdr_grade(counts(microaneurysms=3, hard_exudates=1)) == 2
    assert synthetic.icdr_grade(counts(haemorrhages_per_quadrant=(25, 25, 25, 19))) == 2
    assert synthetic.icdr_grade(counts(haemorrhages_per_quadrant=(20, 20, 20, 20))) == 3
    assert synthetic.icdr_grade(counts(venous_beading_quadrants=2)) == 3
    assert synthetic.icdr_grade(counts(venous_beading_quadrants=1, cotton_wool_spots=1)) == 2
    assert synthetic.icdr_grade(counts(neovascular_tufts=1)) == 4
    assert synthetic.icdr_grade(counts(preretinal_haemorrhages=1)) == 4


def test_lesions_are_what_differs_between_grades(synthetic) -> None:
    """The same seed draws the same eye at every grade, so the pixels that differ are the lesions."""
    healthy = synthetic.generate_fundus(np.random.default_rng(5), grade=0, size=400)
    mild = synthetic.generate_fundus(np.random.default_rng(5), grade=1, size=400)
    proliferative = synthetic.generate_fundus(np.random.default_rng(5), grade=4, size=400)
    assert healthy.lesions.total == 0 and mild.lesions.total > 0 and proliferative.lesions.total > 0

    def changed(item) -> np.ndarray:
        return np.abs(item.rgb.astype(int) - healthy.rgb.astype(int)).max(axis=-1) > 40

    # Microaneurysms are a few small dark dots: some pixels change, and they get darker.
    mild_changed = changed(mild)
    assert 0 < mild_changed.mean() < 0.01
    assert mild.rgb[mild_changed].astype(int).sum() < healthy.rgb[mild_changed].astype(int).sum()
    # Proliferative disease touches much more of the retina than a handful of microaneurysms.
    assert changed(proliferative).mean() > mild_changed.mean()


# --- preprocessing --------------------------------------------------------------------------------


def test_crop_to_retina_centres_an_off_centre_disc() -> None:
    image = _disc_image(300, 400, cx=120, cy=170, radius=100)
    cropped = crop_to_retina(image)
    assert cropped.shape[0] == cropped.shape[1]
    assert abs(cropped.shape[0] - 200) <= 8
    cy, cx = _disc_centre(cropped)
    assert abs(cy - cropped.shape[0] / 2) <= 4 and abs(cx - cropped.shape[1] / 2) <= 4


def test_crop_to_retina_recentres_a_disc_cut_at_top_and_bottom() -> None:
    # Radius 150 centred 100 px from the top of a 240 px frame: 50 px cut at the top, 10 at the bottom.
    image = _disc_image(240, 420, cx=210, cy=100, radius=150)
    cropped = crop_to_retina(image)
    assert cropped.shape[0] == cropped.shape[1]
    assert abs(cropped.shape[0] - 300) <= 8
    cy, cx = _disc_centre(cropped)
    assert abs(cy - 150) <= 10 and abs(cx - 150) <= 4


def test_crop_to_retina_returns_an_all_black_image_unchanged() -> None:
    black = np.zeros((200, 260, 3), np.uint8)
    assert crop_to_retina(black) is black
    noisy_dark = np.random.default_rng(0).integers(0, 8, (200, 260, 3), dtype=np.uint8)
    assert crop_to_retina(noisy_dark).shape == noisy_dark.shape


def test_preprocess_fundus_follows_the_manifest(manifest: ModelManifest, synthetic) -> None:
    preprocessing = manifest.preprocessing
    height, width = preprocessing.target_size
    images = [preprocess_fundus(item.rgb, preprocessing) for item in synthetic.iter_split("train", 20)]
    for tensor in images:
        assert tensor.shape == (3, height, width)
        assert tensor.dtype == np.float32 and tensor.flags.c_contiguous
    # The manifest's mean/std were measured on train images, so they come out roughly standardised.
    stacked = np.stack(images).transpose(1, 0, 2, 3).reshape(3, -1)
    assert np.all(np.abs(stacked.mean(axis=1)) < 0.25)
    assert np.all(np.abs(stacked.std(axis=1) - 1.0) < 0.25)


def test_preprocess_fundus_normalises_with_the_given_numbers() -> None:
    preprocessing = Preprocessing(
        color_order="BGR", crop="none", target_size=(32, 48),
        normalization=Normalization(scale=1 / 255, mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 0.125]),
    )
    rgb = np.zeros((64, 96, 3), np.uint8)
    rgb[...] = (255, 51, 0)
    tensor = preprocess_fundus(rgb, preprocessing)
    assert tensor.shape == (3, 32, 48)
    # BGR order: channel 0 is blue (0), channel 2 is red (255).
    np.testing.assert_allclose(tensor[:, 0, 0], [(0 - 0.1) / 0.5, (0.2 - 0.2) / 0.25, (1.0 - 0.3) / 0.125], atol=1e-5)


def test_preprocess_fundus_accepts_grey_input(manifest: ModelManifest) -> None:
    grey = np.full((300, 300), 128, np.uint8)
    tensor = preprocess_fundus(grey, manifest.preprocessing)
    assert tensor.shape == (3, *manifest.preprocessing.target_size)


# --- the card metrics -----------------------------------------------------------------------------


def test_card_metrics_are_reproduced_through_onnx_runtime(manifest: ModelManifest) -> None:
    """The full held-out split (500 images, ~25 s on 2 idle cores), so the tolerance can stay tight."""
    evaluate = load_reference_module(MODEL_ID, "evaluate")
    results = evaluate.evaluate()
    assert results["n_images"] == evaluate.N_TEST
    for key in ("quadratic_weighted_kappa", "referable_auc"):
        assert key in manifest.metrics, f"manifest has no {key}; run evaluate.py --write"
        assert abs(results[key] - manifest.metrics[key]) <= METRIC_TOLERANCE, (key, results[key])
    point = manifest.operating_point()
    assert abs(results["referable_sensitivity"] - point.sensitivity) <= METRIC_TOLERANCE
    assert abs(results["referable_specificity"] - point.specificity) <= METRIC_TOLERANCE
