"""Header-only CT series checks at intake: which series, and whether it forms one regular volume."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from app.errors import UnsuitableInput
from app.imaging.ct_geometry import check_volume_files
from devkit.ct import ramp_volume, small_grid, synthetic_ct, write_series

TASK = "task 'lung-nodule-detection'"


def _files(paths) -> list[tuple]:
    return [(p, f"file #{i + 1}") for i, p in enumerate(paths)]


def _check(paths, uid: str | None = None):
    return check_volume_files(_files(paths), ["CT"], TASK, uid)


def test_check_volume_files_accepts_a_regular_series(tmp_path) -> None:
    paths = write_series(tmp_path, ramp_volume(), small_grid(), instance_order="descending", shuffle_names=True)
    series, geometry = _check(paths)
    assert geometry.n_slices == 6 and geometry.warnings == ()
    assert series.n_slices == 6
    np.testing.assert_allclose(geometry.spacing_mm, (0.7, 0.7, 2.5), atol=1e-6)


def test_check_volume_files_refuses_two_series_listing_both(tmp_path) -> None:
    sc = synthetic_ct()
    ids_a, ids_b = sc.SeriesIds.new(), sc.SeriesIds.new()
    paths = (write_series(tmp_path / "a", ramp_volume(), small_grid(), ids=ids_a, description="Lung 1.0")
             + write_series(tmp_path / "b", ramp_volume(n_slices=4), small_grid(n_slices=4), ids=ids_b,
                            description="Mediastinum 1.0"))
    with pytest.raises(UnsuitableInput) as caught:
        _check(paths)
    detail = caught.value.detail
    assert "2 series" in detail and "options.series_instance_uid" in detail
    assert ids_a.series_instance_uid in detail and ids_b.series_instance_uid in detail
    assert "series 1 of the upload" in detail and "6 slices" in detail and "4 slices" in detail
    # SeriesDescription is free text that often holds names: never quoted back.
    assert "Lung 1.0" not in detail and "Lung 1.0" not in str(caught.value.extra)
    listed = {s["series_instance_uid"]: s["n_slices"] for s in caught.value.extra["series"]}
    assert listed == {ids_a.series_instance_uid: 6, ids_b.series_instance_uid: 4}

    series, geometry = _check(paths, ids_b.series_instance_uid)
    assert series.series_instance_uid == ids_b.series_instance_uid and geometry.n_slices == 4


def test_check_volume_files_refuses_an_unknown_series_uid(tmp_path) -> None:
    paths = write_series(tmp_path, ramp_volume(), small_grid())
    with pytest.raises(UnsuitableInput, match="is not in the upload"):
        _check(paths, "1.2.3.4")


def test_check_volume_files_picks_the_axial_series_beside_a_localizer(tmp_path) -> None:
    sc = synthetic_ct()
    axial_ids = sc.SeriesIds.new()
    axial = write_series(tmp_path / "axial", ramp_volume(), small_grid(), ids=axial_ids)
    scout = write_series(tmp_path / "scout", ramp_volume(n_slices=1), small_grid(n_slices=1),
                         description="Topogram")
    ds = pydicom.dcmread(scout[0])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.save_as(scout[0])
    series, _ = _check(axial + scout)
    assert series.series_instance_uid == axial_ids.series_instance_uid


def test_check_volume_files_refuses_a_non_ct_series(tmp_path) -> None:
    paths = write_series(tmp_path, ramp_volume(), small_grid(), modality="MR")
    with pytest.raises(UnsuitableInput, match="has Modality MR; task 'lung-nodule-detection' needs CT"):
        _check(paths)


def test_check_volume_files_refuses_a_single_slice(tmp_path) -> None:
    paths = write_series(tmp_path, ramp_volume(n_slices=1), small_grid(n_slices=1))
    with pytest.raises(UnsuitableInput, match="single slice"):
        _check(paths)


def test_check_volume_files_refuses_mixed_orientations(tmp_path) -> None:
    grid = small_grid()
    orientations = [list(grid.row_dir) + list(grid.col_dir)] * 6
    orientations[3] = [1, 0, 0, 0, 0, -1]  # one coronal slice among axial ones
    paths = write_series(tmp_path, ramp_volume(), grid, orientations=orientations)
    with pytest.raises(UnsuitableInput, match="mixes 2 slice orientations"):
        _check(paths)


def test_check_volume_files_refuses_gantry_tilt(tmp_path) -> None:
    grid = small_grid(n_slices=8)
    # Each slice 2.5 mm up and 0.45 mm towards the back: a ~10 degree tilt, with axial orientation.
    positions = [grid.slice_position(i) + np.array([0.0, 0.45 * i, 0.0]) for i in range(8)]
    paths = write_series(tmp_path, ramp_volume(n_slices=8), grid, positions=positions)
    with pytest.raises(UnsuitableInput, match="gantry tilt of about 10.2 degrees"):
        _check(paths)


def test_check_volume_files_refuses_wildly_irregular_spacing(tmp_path) -> None:
    grid = small_grid(n_slices=8)
    offsets = [0.0, 2.5, 5.0, 6.0, 8.5, 11.0, 17.4, 19.9]
    positions = [np.asarray(grid.origin) + z * grid.normal for z in offsets]
    paths = write_series(tmp_path, ramp_volume(n_slices=8), grid, positions=positions)
    with pytest.raises(UnsuitableInput, match="irregular slice spacing"):
        _check(paths)


def test_check_volume_files_refuses_duplicate_positions(tmp_path) -> None:
    grid = small_grid()
    positions = [grid.slice_position(i) for i in (0, 1, 2, 2, 3, 4)]
    paths = write_series(tmp_path, ramp_volume(), grid, positions=positions)
    with pytest.raises(UnsuitableInput, match="same position"):
        _check(paths)


def test_check_volume_files_refuses_a_series_missing_most_slices(tmp_path) -> None:
    grid = small_grid(n_slices=12)
    paths = write_series(tmp_path, ramp_volume(n_slices=12), grid, slice_indices=[0, 1, 5, 6, 10, 11])
    with pytest.raises(UnsuitableInput, match="is missing 6 of 12 slices"):
        _check(paths)


def test_check_volume_files_refuses_slices_without_position(tmp_path) -> None:
    paths = write_series(tmp_path, ramp_volume(), small_grid())
    ds = pydicom.dcmread(paths[1])
    del ds.ImagePositionPatient
    ds.save_as(paths[1])
    with pytest.raises(UnsuitableInput, match="has no ImagePositionPatient"):
        _check(paths)
