"""Lung-nodule pipeline steps without Celery: resampling, sliding window, decoding, NMS, mapping, outputs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.schemas.manifest import ModelManifest
from app.schemas.options import LungNoduleDetectionOptions
from devkit.ct import ramp_volume, small_grid, synthetic_ct, write_series
from devkit.reference_models import reference_model_dir
from workers.imaging.ct_resample import resample_to_spacing, window
from workers.imaging.ct_series import load_ct_series
from workers.pipelines.lung_nodule_detection import (
    Candidate,
    build_result,
    decode_components,
    non_maximum_suppression,
    nodule_overlay,
    preprocess,
    sliding_window_probability,
)

MANIFEST_PATH = reference_model_dir("lung-nodule-reference") / "1" / "manifest.json"


@pytest.fixture(scope="module")
def manifest() -> ModelManifest:
    return ModelManifest.model_validate_json(MANIFEST_PATH.read_text())


def _with(manifest: ModelManifest, **decoding) -> ModelManifest:
    return manifest.model_copy(update={"decoding": manifest.decoding.model_copy(update=decoding)})


def _ball(shape, centre, radius, spacing=1.5) -> np.ndarray:
    zz, yy, xx = np.indices(shape).astype(np.float32)
    distance = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) * spacing
    return np.clip(0.5 - (distance - radius) / spacing, 0, 1).astype(np.float32)


# --- resampling -----------------------------------------------------------------------------------


def test_resample_to_spacing_keeps_positions_and_maps_back(tmp_path) -> None:
    hu = ramp_volume(n_slices=10, rows=60, columns=64)
    kept = [0, 1, 2, 4, 5, 6, 7, 8, 9]
    paths = write_series(tmp_path, hu, small_grid(n_slices=10, rows=60, columns=64), slice_indices=kept,
                         rescale="signed")
    ct = load_ct_series(paths)
    resampled = resample_to_spacing(ct.hu, ct.spacing_mm, ct.geometry.slice_positions_mm, (1.5, 1.5, 1.5))

    assert resampled.volume.shape == (16, 28, 30)  # 22.5 mm / 1.5 + 1; 41.3 mm; 44.1 mm
    # Output slice 5 sits 7.5 mm along the normal: 3 slices of 2.5 mm, i.e. original slice 3 (the missing one).
    column, row, slice_index = resampled.to_input_voxel(5, 10, 12, ct.geometry)
    assert (column, row) == pytest.approx((12 * 1.5 / 0.7, 10 * 1.5 / 0.7))
    assert ct.geometry.position_at(slice_index) == pytest.approx(7.5)
    # The ramp is linear in slice position, so the interpolated value across the gap is exact.
    assert resampled.volume[5, 0, 0] == pytest.approx(-1000 + 100 * 3, abs=25)


def test_window_scales_hu_to_unit_range() -> None:
    volume = np.array([-2000, -1000, -300, 400, 3000], np.float32)
    np.testing.assert_allclose(window(volume, (-1000, 400)), [0, 0, 0.5, 1, 1], atol=1e-6)


# --- sliding window -------------------------------------------------------------------------------


def test_sliding_window_probability_matches_a_whole_volume_run(manifest: ModelManifest) -> None:
    patch = manifest.preprocessing.patch_size
    rng = np.random.default_rng(0)
    volume = rng.uniform(0, 1, (patch[0] + 20, patch[1] + 37, patch[2] - 10)).astype(np.float32)
    calls = []

    def pointwise(batch: np.ndarray) -> np.ndarray:  # a voxel-wise "model": logit = 8 x - 4
        calls.append(batch.shape)
        assert batch.shape[1:] == (1, *patch)
        return 8 * batch - 4

    probability = sliding_window_probability(volume, manifest, pointwise)

    assert probability.shape == volume.shape
    np.testing.assert_allclose(probability, 1 / (1 + np.exp(-(8 * volume - 4))), atol=1e-5)
    assert all(shape[0] <= 2 for shape in calls)  # batched patches


# --- decoding -------------------------------------------------------------------------------------


def test_decode_components_recovers_centre_and_diameter(manifest: ModelManifest) -> None:
    shape = (40, 50, 60)
    probability = np.maximum(_ball(shape, (12.3, 20.0, 30.6), 6.0) * 0.9, _ball(shape, (30, 35, 12), 2.25) * 0.6)

    found = decode_components(probability, (1.5, 1.5, 1.5), manifest)

    assert [round(c.score, 2) for c in found] == [0.9, 0.6]
    big, small = found
    np.testing.assert_allclose(big.centre, (12.3, 20.0, 30.6), atol=0.1)
    # Summed probability is 0.9 of the ball's volume: diameter 12 * 0.9^(1/3).
    assert big.diameter_mm == pytest.approx(12.0 * 0.9 ** (1 / 3), rel=0.05)
    np.testing.assert_allclose(small.centre, (30, 35, 12), atol=0.1)
    assert big.low[0] <= 12 <= big.high[0]


def test_decode_components_drops_components_below_the_minimum_size(manifest: ModelManifest) -> None:
    probability = np.zeros((20, 20, 20), np.float32)
    probability[5, 5, 5] = 0.95  # a single hot voxel
    probability[12:15, 12:15, 12:15] = 0.8
    found = decode_components(probability, (1.5, 1.5, 1.5), _with(manifest, min_component_voxels=2))
    assert len(found) == 1 and found[0].score == pytest.approx(0.8)


def test_non_maximum_suppression_keeps_the_best_of_close_findings() -> None:
    def candidate(score, centre, diameter=6.0):
        return Candidate(score, centre, diameter, (0, 0, 0), (1, 1, 1))

    kept = non_maximum_suppression(
        [candidate(0.5, (10, 10, 10)), candidate(0.9, (10, 10, 12)), candidate(0.7, (10, 10, 30))],
        (1.5, 1.5, 1.5), radius_mm=5.0,
    )
    assert [c.score for c in kept] == [0.9, 0.7]


# --- result ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ffs_series(tmp_path_factory):
    """A feet-first series, instance numbers against the normal, one slice missing."""
    hu = ramp_volume(n_slices=16, rows=64, columns=72)
    grid = small_grid(n_slices=16, rows=64, columns=72, orientation="FFS", rotation_deg=8.0)
    kept = [i for i in range(16) if i != 6]
    paths = write_series(tmp_path_factory.mktemp("ffs"), hu, grid, slice_indices=kept,
                         instance_order="descending", shuffle_names=True)
    return load_ct_series(paths), grid, kept


def test_build_result_maps_findings_to_voxels_patient_mm_and_key_slice(manifest, ffs_series) -> None:
    ct, grid, kept = ffs_series
    resampled = preprocess(ct, manifest)
    candidate = Candidate(score=0.8, centre=(10.0, 12.0, 20.0), diameter_mm=7.0, low=(8, 10, 18), high=(12, 14, 22))

    result = build_result([candidate], ct, resampled, manifest, LungNoduleDetectionOptions(score_threshold=0.5))

    (finding,) = result.nodules
    # Output voxel (10, 12, 20) at 1.5 mm: 15 mm along the normal, 18 mm down the rows, 30 mm along the columns.
    expected_mm = grid.to_patient(np.array([30 / 0.7, 18 / 0.7, 15 / 2.5]))
    np.testing.assert_allclose(finding.center_mm, expected_mm, atol=0.02)
    column, row, slice_index = finding.center_voxel
    assert (column, row) == pytest.approx((30 / 0.7, 18 / 0.7), abs=0.01)
    # 15 mm = original slice 6, which is missing: halfway between volume slices 5 and 6 (original 5 and 7).
    assert slice_index == pytest.approx(5.5, abs=0.01)
    assert finding.key_slice.index in (5, 6)
    assert finding.key_slice.sop_instance_uid == ct.sop_instance_uids[finding.key_slice.index]
    low, high = np.array(finding.bbox_mm)
    assert np.all(low <= finding.center_mm) and np.all(np.array(finding.center_mm) <= high)
    assert result.series_instance_uid == ct.series_instance_uid
    assert result.n_slices == 15 and result.spacing_mm == pytest.approx((0.7, 0.7, 2.5))
    assert any("missing" in w for w in result.warnings)
    assert result.research_use_only is True


def test_build_result_honours_the_score_threshold(manifest, ffs_series) -> None:
    ct, _, _ = ffs_series
    resampled = preprocess(ct, manifest)
    candidates = [Candidate(s, (5.0, 10.0, 10.0 + 8 * i), 5.0, (4, 9, 9 + 8 * i), (6, 11, 11 + 8 * i))
                  for i, s in enumerate((0.95, 0.6, 0.2))]

    default = build_result(candidates, ct, resampled, manifest, LungNoduleDetectionOptions())
    assert default.operating_point.name == manifest.default_operating_point
    assert default.operating_point.overridden is False
    assert all(n.score >= manifest.operating_point().threshold for n in default.nodules)

    caller = build_result(candidates, ct, resampled, manifest, LungNoduleDetectionOptions(score_threshold=0.5))
    assert [n.score for n in caller.nodules] == [0.95, 0.6]
    assert [n.id for n in caller.nodules] == [1, 2]
    assert caller.operating_point.overridden is True and caller.operating_point.threshold == 0.5


def test_nodule_overlay_is_a_png_of_the_key_slice(manifest, ffs_series) -> None:
    ct, _, _ = ffs_series
    resampled = preprocess(ct, manifest)
    candidate = Candidate(0.9, (10.0, 20.0, 20.0), 8.0, (8, 18, 18), (12, 22, 22))
    (finding,) = build_result([candidate], ct, resampled, manifest,
                              LungNoduleDetectionOptions(score_threshold=0.1)).nodules

    artifact = nodule_overlay(ct, finding)

    assert artifact.name == "nodule-1.png" and artifact.media_type == "image/png"
    image = Image.open(io.BytesIO(artifact.data))
    assert image.mode == "RGB" and min(image.size) >= 512
    pixels = np.asarray(image)
    assert np.any((pixels[..., 0] > 200) & (pixels[..., 1] < 120))  # the red circle is drawn


def test_synthetic_phantom_lung_mask_and_nodules_are_consistent() -> None:
    sc = synthetic_ct()
    scan = sc.simulate_scan(np.random.default_rng(1), matrix=96, pixel_spacing=1.0, slice_spacing=5.0,
                            z_extent_mm=60, nodule_diameters=[12.0], noise_hu=0)
    (nodule,) = scan.nodules
    column, row, slice_index = np.round(scan.grid.to_voxel(np.asarray(nodule.centre_mm))).astype(int)
    assert scan.lung_mask.mean() > 0.1
    assert scan.hu[slice_index, row, column] > -300  # solid centre, or the ground glass of a part-solid one
    assert scan.hu[scan.lung_mask].mean() < -600


def test_uncertainty_gives_each_finding_its_score_spread(tmp_path) -> None:
    """options.uncertainty: one mirrored run more; every reported nodule gets its spread (a small scan, ~10 s)."""
    from app.config import Settings
    from app.schemas.tasks import TaskName
    from devkit.ct import nodule_scan, write_series
    from workers.local import predict_files

    scan = nodule_scan(seed=7, matrix=128, z_extent_mm=60.0, diameters=(12.0, 18.0))
    paths = write_series(tmp_path / "series", scan.hu, scan.grid)

    job, _ = predict_files(Settings(data_dir=tmp_path / "data"), TaskName.LUNG_NODULE_DETECTION, paths,
                           '{"uncertainty": true}', show_progress=False)

    assert job.status == "succeeded", job.error
    assert "uncertainty" in job.stage_seconds
    nodules, spread = job.result["nodules"], job.result["uncertainty"]
    assert nodules, "the scan's nodules are found"
    assert [f["id"] for f in spread["findings"]] == [n["id"] for n in nodules]
    assert all(0.0 <= f["score_spread"] <= 1.0 for f in spread["findings"])
    assert spread["augmentations"] == ["original", "flip-horizontal"]
