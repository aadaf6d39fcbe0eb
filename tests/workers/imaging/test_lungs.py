"""Classical lung mask on the chest phantom: both lungs found, left and right by patient x, not array order."""

from __future__ import annotations

import numpy as np
import pytest

from devkit.covid import covid_case, dice
from workers.imaging.lungs import LungMask, body_air, lung_extent_z, segment_lungs


@pytest.fixture(scope="module", params=["HFS", "FFS", "HFP"])
def clean_case(request):
    return covid_case(seed=3, matrix=96, orientation=request.param, n_lesions=0)


def test_segment_lungs_matches_the_phantom_lungs_side_by_side(clean_case) -> None:
    lungs = segment_lungs(clean_case.hu, clean_case.grid.affine, clean_case.grid.spacing)

    assert dice(lungs.right, clean_case.lung_side == 1) >= 0.95
    assert dice(lungs.left, clean_case.lung_side == 2) >= 0.95


def test_segment_lungs_names_sides_by_patient_x_not_columns(clean_case) -> None:
    lungs = segment_lungs(clean_case.hu, clean_case.grid.affine, clean_case.grid.spacing)
    affine = clean_case.grid.affine
    for mask, sign in ((lungs.left, 1), (lungs.right, -1)):
        s, r, c = np.nonzero(mask)
        x = affine[0, 3] + affine[0, 0] * c + affine[0, 1] * r + affine[0, 2] * s
        assert np.sign(x.mean()) == sign  # LPS: +x is the patient's left


def test_segment_lungs_splits_lungs_joined_into_one_component() -> None:
    case = covid_case(seed=3, matrix=96, n_lesions=0)
    hu = case.hu.copy()
    # An air bridge between the lungs across the mediastinum on the middle slices.
    middle = hu.shape[0] // 2
    right_rows = np.nonzero(case.lung_side[middle] == 1)[0]
    row = int(np.median(right_rows))
    columns = np.nonzero((case.lung_side[middle] > 0).any(axis=0))[0]
    bridge = np.zeros(hu.shape, bool)
    bridge[middle - 3: middle + 3, row - 2: row + 2, columns.min(): columns.max() + 1] = True
    hu[bridge] = -900
    lungs = segment_lungs(hu, case.grid.affine, case.grid.spacing)

    assert lungs.right.any() and lungs.left.any()
    assert dice(lungs.right, case.lung_side == 1) >= 0.9
    assert dice(lungs.left, case.lung_side == 2) >= 0.9


def test_segment_lungs_of_a_body_without_lungs_is_empty() -> None:
    hu = np.full((8, 64, 64), -1000.0, np.float32)
    hu[:, 10:54, 10:54] = 40.0
    lungs = segment_lungs(hu, np.eye(4), (1.0, 1.0, 1.0))
    assert not lungs.labels.any()
    assert lungs.labels.dtype == np.uint8


def test_body_air_drops_air_connected_to_the_slice_border() -> None:
    hu = np.full((4, 32, 32), -1000.0, np.float32)
    hu[:, 4:28, 4:28] = 40.0
    hu[:, 10:20, 10:20] = -850.0  # enclosed air: a "lung"
    air = body_air(hu)
    assert air[:, 10:20, 10:20].all()
    assert air.sum() == 4 * 100


def test_lung_extent_z_uses_the_affine() -> None:
    mask = np.zeros((10, 4, 4), bool)
    mask[2:5, 1, 1] = True
    affine = np.diag([1.0, 1.0, -2.0, 1.0])  # slice index grows towards the feet
    affine[2, 3] = 100.0
    assert lung_extent_z(mask, affine) == (92.0, 96.0)
    assert LungMask(mask.astype(np.uint8)).right.sum() == 3
