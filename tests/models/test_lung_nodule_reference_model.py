"""The lung-nodule reference model: manifest, ONNX graph, synthetic CT generator and DICOM writer, card metrics."""

from __future__ import annotations


import numpy as np
import pydicom
import pytest

from app.model_repository import file_sha256
from app.schemas.manifest import ModelManifest
from devkit.ct import synthetic_ct
from devkit.reference_models import load_reference_module, reference_model_dir

MODEL_ID = "lung-nodule-reference"
VERSION_DIR = reference_model_dir(MODEL_ID) / "1"


@pytest.fixture(scope="module")
def manifest() -> ModelManifest:
    return ModelManifest.model_validate_json((VERSION_DIR / "manifest.json").read_text())


# --- manifest and graph ---------------------------------------------------------------------------


def test_manifest_validates_and_sha256_matches_model(manifest: ModelManifest) -> None:
    assert manifest.sha256 == file_sha256(VERSION_DIR / "model.onnx")
    assert manifest.id == MODEL_ID and manifest.task == "lung-nodule-detection"
    assert manifest.research_use_only is True
    assert manifest.accepts.volume is True and manifest.accepts.modalities == ["CT"]
    assert manifest.decoding.kind == "segmentation-components" and manifest.decoding.activation == "sigmoid"
    assert manifest.preprocessing.target_spacing_mm is not None and manifest.preprocessing.window_hu is not None
    assert tuple(manifest.inputs[0].shape[2:]) == tuple(manifest.preprocessing.patch_size)
    assert 0 < manifest.operating_point().threshold < 1
    assert (VERSION_DIR / "CARD.md").is_file()


def test_model_onnx_io_matches_manifest_with_dynamic_batch(manifest: ModelManifest) -> None:
    import onnxruntime as ort

    assert (VERSION_DIR / "model.onnx").stat().st_size <= 5_000_000
    session = ort.InferenceSession(str(VERSION_DIR / "model.onnx"), providers=["CPUExecutionProvider"])
    (given,), (returned,) = session.get_inputs(), session.get_outputs()
    assert given.name == manifest.inputs[0].name and given.shape == manifest.inputs[0].shape
    assert returned.name == manifest.outputs[0].name and returned.shape == manifest.outputs[0].shape
    batch = np.zeros((2, *manifest.inputs[0].shape[1:]), np.float32)
    (logits,) = session.run([returned.name], {given.name: batch})
    assert logits.shape == batch.shape


# --- the generator --------------------------------------------------------------------------------


def test_simulate_scan_is_deterministic() -> None:
    sc = synthetic_ct()
    first = sc.simulate_scan(np.random.default_rng(3), matrix=64, pixel_spacing=1.0, slice_spacing=5.0, z_extent_mm=40)
    again = sc.simulate_scan(np.random.default_rng(3), matrix=64, pixel_spacing=1.0, slice_spacing=5.0, z_extent_mm=40)
    assert np.array_equal(first.hu, again.hu)
    assert first.nodules == again.nodules


def test_make_phantom_places_nodules_of_3_to_30_mm_inside_the_lungs() -> None:
    sc = synthetic_ct()
    rng = np.random.default_rng(8)
    kinds = set()
    for _ in range(5):
        phantom = sc.make_phantom(rng, n_nodules=5)
        assert phantom.vessels and phantom.airways
        for nodule in phantom.nodules:
            assert 3.0 <= nodule.diameter_mm <= 30.0
            assert phantom.inside_lung(nodule.centre_mm, margin=nodule.radius_mm)
            kinds.add(nodule.kind)
    assert kinds == {"solid", "part-solid"}


def test_nodules_are_denser_than_lung_and_vessels_are_tubes() -> None:
    sc = synthetic_ct()
    rng = np.random.default_rng(4)
    phantom = sc.make_phantom(rng, nodule_diameters=[14.0], part_solid_fraction=0.0)
    (nodule,) = phantom.nodules
    grid = sc.grid_around(nodule.centre_mm, 48, 0.8, 17, 2.0)
    rendered = sc.render(phantom, grid)
    centre = rendered.hu[8, 23:25, 23:25].mean()
    assert centre > -100  # solid nodule centre
    lung_only = rendered.hu[rendered.lung_mask]
    assert np.median(lung_only) < -700
    # The nodule occupancy target covers a ball of the nodule's volume.
    occupancy = sc.nodule_occupancy(phantom, grid)
    volume = occupancy.sum() * 0.8 * 0.8 * 2.0
    assert volume == pytest.approx(np.pi / 6 * 14.0**3, rel=0.1)


@pytest.mark.parametrize("orientation", ["HFS", "FFS", "HFP", "FFP"])
def test_grid_orientations_have_no_tilt_and_the_affine_inverts(orientation: str) -> None:
    sc = synthetic_ct()
    grid = sc.grid_around((5.0, -3.0, 20.0), 32, 0.6, 10, 1.25, orientation, rotation_deg=10.0)
    assert abs(grid.normal[2]) == pytest.approx(1.0)
    voxel = np.array([3.5, 7.25, 4.0])
    np.testing.assert_allclose(grid.to_voxel(grid.to_patient(voxel)), voxel, atol=1e-9)
    np.testing.assert_allclose(grid.to_patient(np.array([(32 - 1) / 2, (32 - 1) / 2, 4.5])), (5.0, -3.0, 20.0),
                               atol=1e-9)


# --- the DICOM writer -----------------------------------------------------------------------------


def test_write_ct_series_writes_valid_ct_image_storage(tmp_path) -> None:
    sc = synthetic_ct()
    scan = sc.simulate_scan(np.random.default_rng(2), matrix=64, pixel_spacing=0.9, slice_spacing=2.0,
                            orientation="FFS", z_extent_mm=12, noise_hu=0)
    paths = sc.write_ct_series(scan.hu, scan.grid, tmp_path, instance_order="descending", shuffle_names=True)
    datasets = [pydicom.dcmread(p) for p in paths]
    assert len({d.SOPInstanceUID for d in datasets}) == len(paths)
    assert len({d.SeriesInstanceUID for d in datasets}) == 1 and len({d.StudyInstanceUID for d in datasets}) == 1
    for ds in datasets:
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.Modality == "CT" and ds.RescaleType == "HU"
        assert [float(v) for v in ds.PixelSpacing] == [0.9, 0.9]
        assert float(ds.SliceThickness) == 2.0
        assert [float(v) for v in ds.ImageOrientationPatient] == [-1, 0, 0, 0, 1, 0]
    by_number = sorted(datasets, key=lambda d: int(d.InstanceNumber))
    # Descending: instance 1 is the last slice along the normal (-z for FFS), i.e. the highest z.
    z = [float(d.ImagePositionPatient[2]) for d in by_number]
    assert z == sorted(z)
    hu = by_number[0].pixel_array * float(by_number[0].RescaleSlope) + float(by_number[0].RescaleIntercept)
    np.testing.assert_allclose(hu, np.round(scan.hu[-1]), atol=0.5)


# --- card metrics ---------------------------------------------------------------------------------


def test_card_reports_froc_and_a_cpm_of_at_least_080(manifest: ModelManifest) -> None:
    keys = ["cpm"] + [f"sensitivity_at_{rate:g}_fp" for rate in (0.125, 0.25, 0.5, 1, 2, 4, 8)]
    for key in keys:
        assert key in manifest.metrics, f"manifest has no {key}; run evaluate.py --write"
    assert manifest.metrics["cpm"] == pytest.approx(np.mean([manifest.metrics[k] for k in keys[1:]]), abs=1e-3)
    assert manifest.metrics["cpm"] >= 0.80
    card = (VERSION_DIR / "CARD.md").read_text()
    assert f"**{manifest.metrics['cpm']:.3f}**" in card


def test_metrics_on_a_few_held_out_scans_agree_with_the_card(manifest: ModelManifest) -> None:
    """The full split takes minutes (`evaluate.py --check`); four scans must already come close."""
    evaluate = load_reference_module(MODEL_ID, "evaluate")
    results = evaluate.evaluate(n=4, model=evaluate.model_folder(1))
    assert results["n_scans"] == 4 and results["n_nodules"] > 0
    assert results["operating_point"]["sensitivity_6mm_plus"] >= 0.8
    assert results["cpm"] >= manifest.metrics["cpm"] - 0.2


def test_card_intervals_come_from_medimg_evals_froc_and_hold_the_cards_cpm(manifest: ModelManifest) -> None:
    """Scored candidates (no model run): the interval code's CPM is the card's FROC's, inside its interval; the
    manifest stores the card's CPM interval."""
    evaluate = load_reference_module(MODEL_ID, "evaluate")
    sc = synthetic_ct()
    rng = np.random.default_rng(5)
    outcomes = []
    for _ in range(12):
        nodules = [sc.Nodule(tuple(rng.uniform(-50, 50, 3)), float(rng.uniform(4, 20)), "solid", 0.0)
                   for _ in range(int(rng.integers(1, 4)))]
        # Hits outscore false positives: the card's FROC (steps) and LUNA16's (interpolated) then agree.
        hits = [(float(rng.uniform(0.5, 1)), np.asarray(n.centre_mm) + 0.5, n.diameter_mm) for n in nodules
                if rng.uniform() < 0.8]
        misses = [(float(rng.uniform(0, 0.5)), rng.uniform(100, 200, 3), 5.0) for _ in range(int(rng.integers(0, 4)))]
        outcomes.append(evaluate.ScanOutcome(nodules, hits + misses, "", 0.0))
    figures = evaluate.intervals(outcomes, manifest)["figures"]
    cpm = figures["cpm"]
    assert cpm["value"] == pytest.approx(evaluate.froc(outcomes)["cpm"], abs=1e-6) and cpm["n"] == 12
    assert cpm["ci95"][0] <= cpm["value"] <= cpm["ci95"][1]
    stored = manifest.metrics
    assert stored["cpm_ci95_low"] <= stored["cpm"] <= stored["cpm_ci95_high"] and stored["cpm_ci95_n"] == 30
    assert f"| cpm | {stored['cpm']:.4f} | {stored['cpm_ci95_low']:.4f} – {stored['cpm_ci95_high']:.4f} | 30 |" in (
        VERSION_DIR / "CARD.md").read_text()
