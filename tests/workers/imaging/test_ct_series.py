"""CT series assembly on real DICOM files: order, HU, geometry, enhanced CT, gaps, memory, refusals."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pydicom
import pytest

from app.errors import BadInputError
from devkit.ct import ramp_volume, small_grid, synthetic_ct, write_series
from workers.imaging.ct_series import load_ct_series


def _ipp_by_uid(paths) -> dict[str, np.ndarray]:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    return {str(h.SOPInstanceUID): np.array([float(v) for v in h.ImagePositionPatient]) for h in headers}


def _assert_affine_places_every_slice(ct, paths) -> None:
    positions = _ipp_by_uid(paths)
    for index, uid in enumerate(ct.sop_instance_uids):
        np.testing.assert_allclose(ct.affine @ [0, 0, index, 1], [*positions[uid], 1], atol=1e-3)


@pytest.mark.parametrize("orientation", ["HFS", "FFS", "HFP"])
def test_load_ct_series_sorts_along_the_normal_not_by_name_or_instance_number(tmp_path, orientation: str) -> None:
    hu = ramp_volume()
    grid = small_grid(orientation=orientation)
    paths = write_series(tmp_path, hu, grid, instance_order="descending", shuffle_names=True,
                         rng=np.random.default_rng(3))

    ct = load_ct_series(sorted(paths))  # name order is random; instance numbers run against the normal

    assert ct.hu.shape == hu.shape and ct.hu.dtype == np.float32
    np.testing.assert_allclose(ct.hu, np.round(hu), atol=0.5)
    np.testing.assert_allclose(ct.spacing_mm, (0.7, 0.7, 2.5), atol=1e-6)
    np.testing.assert_allclose(ct.affine, grid.affine, atol=1e-3)
    _assert_affine_places_every_slice(ct, paths)
    assert len(set(ct.sop_instance_uids)) == hu.shape[0]
    assert ct.warnings == ()


def test_load_ct_series_affine_maps_columns_rows_and_slices_to_lps(tmp_path) -> None:
    grid = small_grid(orientation="FFS", rotation_deg=12.0)
    paths = write_series(tmp_path, ramp_volume(), grid)
    ct = load_ct_series(paths)
    # FFS: the row direction is -x and the slice normal -z; rotation keeps the normal (no tilt).
    np.testing.assert_allclose(ct.geometry.normal, [0, 0, -1], atol=1e-6)
    voxel = np.array([5.0, 7.0, 3.0])
    expected = grid.to_patient(voxel)
    np.testing.assert_allclose(ct.affine @ [*voxel, 1], [*expected, 1], atol=1e-3)
    np.testing.assert_allclose(ct.geometry.voxel_to_patient(*voxel), expected, atol=1e-3)


def test_load_ct_series_applies_each_slices_rescale(tmp_path) -> None:
    hu = ramp_volume()
    paths = write_series(tmp_path, hu, small_grid(), rescale="varied", rng=np.random.default_rng(5))
    slopes = {float(pydicom.dcmread(p, stop_before_pixels=True).RescaleSlope) for p in paths}
    assert len(slopes) > 1  # the test is only meaningful if the slices differ
    ct = load_ct_series(paths)
    # A slope of 2 stores HU at 2-HU steps: allow the rounding of the coarsest slope.
    np.testing.assert_allclose(ct.hu, hu, atol=max(slopes) / 2 + 1e-3)


def test_load_ct_series_reads_enhanced_multiframe_ct(tmp_path) -> None:
    sc = synthetic_ct()
    hu = ramp_volume(n_slices=5)
    grid = small_grid(n_slices=5, orientation="FFS")
    path = sc.write_enhanced_ct(hu, grid, tmp_path / "enhanced.dcm", frame_order=[3, 0, 4, 1, 2])

    ct = load_ct_series([path])

    np.testing.assert_allclose(ct.hu, np.round(hu), atol=0.5)
    np.testing.assert_allclose(ct.affine, grid.affine, atol=1e-3)
    assert [s.frame for s in ct.geometry.slices] == [1, 3, 4, 0, 2]
    assert len(set(ct.sop_instance_uids)) == 1


def test_load_ct_series_reports_missing_slices_and_keeps_true_positions(tmp_path) -> None:
    hu = ramp_volume(n_slices=10)
    grid = small_grid(n_slices=10)
    kept = [0, 1, 2, 3, 5, 6, 7, 8, 9]  # slice 4 lost in transfer
    paths = write_series(tmp_path, hu, grid, slice_indices=kept)

    ct = load_ct_series(paths)

    assert ct.hu.shape[0] == 9
    assert any("1 slice(s) missing" in w for w in ct.warnings)
    np.testing.assert_allclose(ct.geometry.slice_positions_mm, np.array(kept) * 2.5, atol=1e-3)
    # Slice index 4 of the volume is the original slice 5: its true position, not the affine's.
    np.testing.assert_allclose(ct.geometry.voxel_to_patient(0, 0, 4), grid.slice_position(5), atol=1e-3)


def test_load_ct_series_decodes_the_same_with_one_thread_or_many(tmp_path) -> None:
    paths = write_series(tmp_path, ramp_volume(n_slices=12), small_grid(n_slices=12), shuffle_names=True)
    serial = load_ct_series(paths, threads=1)
    parallel = load_ct_series(paths, threads=4)
    assert np.array_equal(serial.hu, parallel.hu)
    assert serial.sop_instance_uids == parallel.sop_instance_uids


def test_load_ct_series_peak_memory_stays_near_one_volume(tmp_path) -> None:
    n_slices, rows, columns = 40, 128, 128
    hu = ramp_volume(n_slices, rows, columns)
    paths = write_series(tmp_path, hu, small_grid(n_slices, rows, columns))
    volume_bytes = n_slices * rows * columns * 4

    tracemalloc.start()
    try:
        ct = load_ct_series(paths, threads=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert ct.hu.nbytes == volume_bytes
    # One float32 volume, plus a few slices in flight per thread and header bookkeeping.
    assert peak < 1.35 * volume_bytes + 2_000_000, peak


def test_load_ct_series_picks_the_requested_series(tmp_path) -> None:
    sc = synthetic_ct()
    first = write_series(tmp_path / "a", ramp_volume(), small_grid(), ids=sc.SeriesIds.new())
    second_ids = sc.SeriesIds.new()
    second = write_series(tmp_path / "b", ramp_volume(n_slices=4) + 7, small_grid(n_slices=4), ids=second_ids)

    ct = load_ct_series(first + second, series_instance_uid=second_ids.series_instance_uid)

    assert ct.series_instance_uid == second_ids.series_instance_uid
    assert ct.hu.shape[0] == 4


def test_load_ct_series_refuses_two_series_as_bad_input(tmp_path) -> None:
    first = write_series(tmp_path / "a", ramp_volume(), small_grid())
    second = write_series(tmp_path / "b", ramp_volume(), small_grid())
    with pytest.raises(BadInputError, match="options.series_instance_uid"):
        load_ct_series(first + second)


def test_load_ct_series_refuses_pixel_data_that_cannot_be_decoded(tmp_path) -> None:
    paths = write_series(tmp_path, ramp_volume(), small_grid())
    ds = pydicom.dcmread(paths[2])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(paths[2])
    with pytest.raises(BadInputError, match="could not be decoded"):
        load_ct_series(paths)
