"""The CT gate on real DICOM series read by the pipeline's loader, with the reference models' limits.
Small synthetic scans (96 px whole chests, a 128 px targeted field of view): about 5 s in all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.schemas.manifest import CTQuality, ModelManifest
from devkit.covid import covid_case
from devkit.ct import nodule_scan, small_grid, write_series
from devkit.reference_models import reference_model_dir
from workers.imaging.ct_series import load_ct_series
from workers.quality.ct import check_ct


def limits(model_id: str) -> CTQuality:
    path = reference_model_dir(model_id) / "1" / "manifest.json"
    return ModelManifest.model_validate_json(path.read_text()).quality.ct


COVID = limits("covid-lesion-segmentation-reference")
NODULES = limits("lung-nodule-reference")


def gate(tmp_path: Path, hu: np.ndarray, grid, gate_limits: CTQuality):
    return gate_files(sorted(write_series(tmp_path / "series", hu, grid)), gate_limits)


def gate_files(paths: list[Path], gate_limits: CTQuality, keep=None):
    """`paths` in slice order; `keep(index)` drops the slices it refuses."""
    ct = load_ct_series([p for index, p in enumerate(paths) if keep is None or keep(index)])
    return check_ct(ct.hu, ct.geometry, gate_limits)


@pytest.fixture(scope="module")
def chest(tmp_path_factory) -> list[Path]:
    """A whole chest at 5 mm, its files in slice order."""
    case = covid_case(5, matrix=96, slice_spacing=5.0)
    return sorted(write_series(tmp_path_factory.mktemp("chest"), case.hu, case.grid))


def codes(quality) -> list[str]:
    return [reason.code for reason in quality.reasons]


def test_check_ct_whole_chest_is_gradable(chest: list[Path]) -> None:
    quality = gate_files(chest, COVID)

    assert quality.gradable, quality.reasons
    assert quality.measures["lung_volume_ml"] > 1000
    assert max(quality.measures["lung_fraction_superior_end"], quality.measures["lung_fraction_inferior_end"]) < 0.25


def test_check_ct_ten_mm_slices_are_too_far_apart_and_thick(tmp_path: Path) -> None:
    case = covid_case(5, matrix=96, slice_spacing=10.0)

    quality = gate(tmp_path, case.hu, case.grid, COVID)

    assert not quality.gradable
    assert codes(quality) == ["slices-too-far-apart", "slices-too-thick"]
    assert quality.measures["slice_spacing_mm"] == 10.0


def test_check_ct_missing_run_of_slices(chest: list[Path]) -> None:
    middle = len(chest) // 2

    quality = gate_files(chest, COVID, keep=lambda i: not middle <= i < middle + 3)

    assert not quality.gradable
    assert codes(quality) == ["missing-slices"]
    assert quality.measures["longest_missing_run"] == 3


def test_check_ct_one_missing_slice_is_interpolated_over(chest: list[Path]) -> None:
    quality = gate_files(chest, COVID, keep=lambda i: i != len(chest) // 2)

    assert quality.gradable, quality.reasons
    assert quality.measures["missing_slices"] == 1


def test_check_ct_lungs_cut_off_refused_only_where_whole_lungs_are_needed(tmp_path: Path) -> None:
    scan = nodule_scan(seed=7, matrix=128, z_extent_mm=60.0)  # a targeted field of view, lungs cut above and below

    covid = gate(tmp_path / "covid", scan.hu, scan.grid, COVID)
    nodules = gate(tmp_path / "nodules", scan.hu, scan.grid, NODULES)

    assert "lungs-cut-off" in codes(covid)
    assert nodules.gradable, nodules.reasons


def test_check_ct_without_a_chest_is_refused(tmp_path: Path) -> None:
    """A head-sized water cylinder in air: no lung tissue in the field of view."""
    grid = small_grid(n_slices=12, rows=64, columns=64, pixel_spacing=0.9, slice_spacing=2.5)
    r, c = np.ogrid[:64, :64]
    head = np.where((r - 32) ** 2 + (c - 32) ** 2 < 28 ** 2, 30.0, -1000.0).astype(np.float32)

    quality = gate(tmp_path, np.repeat(head[None], 12, axis=0), grid, NODULES)

    assert codes(quality) == ["no-chest-in-field-of-view"]
