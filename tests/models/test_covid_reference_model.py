"""The COVID lesion reference model: manifest, ONNX graph, lesion generator, and the card's metrics reproduced."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.model_repository import file_sha256
from app.schemas.manifest import ModelManifest
from devkit.covid import COVID_MODEL_ID, covid_case, synthetic_covid
from devkit.reference_models import load_reference_module, reference_model_dir

VERSION_DIR = reference_model_dir(COVID_MODEL_ID) / "1"


@pytest.fixture(scope="module")
def manifest() -> ModelManifest:
    return ModelManifest.model_validate_json((VERSION_DIR / "manifest.json").read_text())


def test_manifest_validates_and_sha256_matches_model(manifest: ModelManifest) -> None:
    assert manifest.sha256 == file_sha256(VERSION_DIR / "model.onnx")
    assert manifest.id == COVID_MODEL_ID and manifest.task == "covid-lesion-segmentation"
    assert manifest.research_use_only is True
    assert manifest.accepts.volume is True and manifest.accepts.modalities == ["CT"]
    assert manifest.decoding.kind == "segmentation-labels" and manifest.decoding.min_component_voxels
    assert manifest.class_names == ["background", "ground-glass-opacity", "consolidation"]
    assert manifest.preprocessing.window_hu and manifest.preprocessing.batch_size
    assert (VERSION_DIR / "CARD.md").is_file()


def test_model_onnx_is_small_with_a_dynamic_batch(manifest: ModelManifest) -> None:
    import onnxruntime as ort

    assert (VERSION_DIR / "model.onnx").stat().st_size <= 3_000_000
    session = ort.InferenceSession(str(VERSION_DIR / "model.onnx"), providers=["CPUExecutionProvider"])
    (given,), (returned,) = session.get_inputs(), session.get_outputs()
    assert given.name == manifest.inputs[0].name and given.shape == manifest.inputs[0].shape
    (logits,) = session.run([returned.name], {given.name: np.zeros((3, *manifest.inputs[0].shape[1:]), np.float32)})
    assert logits.shape == (3, 3, *manifest.preprocessing.target_size)


def test_simulate_case_lesions_are_in_the_lungs_with_their_hu() -> None:
    sv = synthetic_covid()
    case = covid_case(seed=11, matrix=96, n_lesions=6, noise_hu=0.0)
    again = covid_case(seed=11, matrix=96, n_lesions=6, noise_hu=0.0)

    assert np.array_equal(case.labels, again.labels)
    assert (case.labels > 0).any()
    assert not (case.labels[~case.lung_mask] > 0).any()
    ggo, consolidation = case.labels == sv.GGO, case.labels == sv.CONSOLIDATION
    if consolidation.sum() > 50:
        assert -200 < float(np.median(case.hu[consolidation])) < 100
    if ggo.sum() > 50:
        assert -800 < float(np.median(case.hu[ggo])) < -300


def test_card_metrics_are_reproduced_by_evaluate(manifest: ModelManifest) -> None:
    """A quick check on the first scans of the test split; `evaluate.py --check` reproduces the whole card."""
    evaluate = load_reference_module(COVID_MODEL_ID, "evaluate")
    metrics = evaluate.evaluate(n_scans=3)
    recorded = json.loads((VERSION_DIR / "manifest.json").read_text())["metrics"]
    assert recorded, "run evaluate.py --write"
    assert metrics["dice_lesion"] >= recorded["dice_lesion"] - 0.08
    assert metrics["dice_lung"] >= 0.9
