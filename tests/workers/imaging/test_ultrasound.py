"""Ultrasound frame helpers: imaging region, pixel spacing from DICOM, masks and measurements."""

from __future__ import annotations

import numpy as np
import pytest

from app.schemas.manifest import Normalization, Preprocessing
from devkit.ultrasound import dicom_us_bytes, make_frame, ultrasound_region
from workers.imaging.ultrasound import (
    region_input,
    FrameGeometry,
    UltrasoundRegion,
    bounding_box,
    classifier_input,
    connected_component,
    ellipse_in_box,
    fill_holes,
    find_imaging_region,
    is_taller_than_wide,
    mask_from_probabilities,
    max_diameter_px,
    read_geometry,
    resolve_spacing,
    segmentation_input,
    tissue_region,
    to_grey,
)


@pytest.mark.parametrize("seed", range(8))
def test_find_imaging_region_crops_the_ui_border(seed: int) -> None:
    item = make_frame(seed, ui=True)
    region = find_imaging_region(to_grey(item.frame))
    assert np.abs(np.array(region) - np.array(item.region)).max() <= 3, (region, item.region)


def test_find_imaging_region_keeps_a_frame_without_border() -> None:
    item = make_frame(3, ui=False)
    assert find_imaging_region(to_grey(item.frame)) == (0, 0, item.frame.shape[1], item.frame.shape[0])


def test_find_imaging_region_returns_whole_frame_when_all_dark() -> None:
    assert find_imaging_region(np.zeros((100, 120), np.uint8)) == (0, 0, 120, 100)


def test_read_geometry_takes_spacing_in_cm_from_ultrasound_regions(tmp_path) -> None:
    item = make_frame(1, ui=True)
    grey = to_grey(item.frame)
    path = tmp_path / "us.dcm"
    path.write_bytes(dicom_us_bytes(grey, regions=[ultrasound_region(item.region, item.pixel_spacing_mm)]))
    geometry = read_geometry(path, "dicom")
    region = tissue_region(geometry, grey.shape)
    assert region is not None and region.box == item.region
    assert region.spacing_mm == pytest.approx((item.pixel_spacing_mm,) * 2)
    spacing = resolve_spacing(region, geometry, None)
    assert spacing.source == "ultrasound-regions" and spacing.mm == pytest.approx((item.pixel_spacing_mm,) * 2)


def test_read_geometry_skips_regions_not_in_cm_and_falls_back_to_pixel_spacing(tmp_path) -> None:
    region = ultrasound_region((0, 0, 50, 40), 0.1)
    region.PhysicalUnitsYDirection = 4  # seconds: a spectral Doppler region, not distance
    path = tmp_path / "us.dcm"
    path.write_bytes(dicom_us_bytes(np.zeros((40, 50), np.uint8), regions=[region], pixel_spacing_mm=0.2))
    geometry = read_geometry(path, "dicom")
    found = tissue_region(geometry, (40, 50))
    assert found is not None and found.spacing_mm is None
    assert resolve_spacing(found, geometry, None).mm == (0.2, 0.2)
    assert resolve_spacing(found, geometry, None).source == "pixel-spacing"


def test_resolve_spacing_prefers_the_callers_option_and_says_none_when_unknown() -> None:
    region = UltrasoundRegion(box=(0, 0, 10, 10), spacing_mm=(0.1, 0.1))
    assert resolve_spacing(region, FrameGeometry(), 0.3).mm == (0.3, 0.3)
    assert resolve_spacing(region, FrameGeometry(), 0.3).source == "options"
    none = resolve_spacing(None, FrameGeometry(), None)
    assert none.mm is None and none.source == "none"


def test_tissue_region_ignores_regions_outside_the_frame() -> None:
    geometry = FrameGeometry(regions=(UltrasoundRegion((0, 0, 500, 500), (0.1, 0.1)),))
    assert tissue_region(geometry, (100, 100)) is None


def test_max_diameter_of_a_disc_and_a_rectangle() -> None:
    yy, xx = np.mgrid[0:200, 0:200]
    disc = (xx + 0.5 - 100) ** 2 + (yy + 0.5 - 100) ** 2 <= 40**2
    assert max_diameter_px(disc) == pytest.approx(80, rel=0.02)
    assert max_diameter_px(disc, (0.5, 0.5)) == pytest.approx(40, rel=0.02)
    rectangle = np.zeros((100, 100), bool)
    rectangle[10:40, 20:60] = True  # 30 rows x 40 columns
    assert max_diameter_px(rectangle) == pytest.approx(50.0)
    assert max_diameter_px(rectangle, (2.0, 1.0)) == pytest.approx(np.hypot(60, 40))


def test_ellipse_in_box_has_the_box_as_bounding_box() -> None:
    for box in [(10, 20, 60, 45), (0, 0, 7, 30), (33, 5, 34, 6)]:
        assert bounding_box(ellipse_in_box(box, (80, 90))) == box


def test_taller_than_wide_uses_physical_units() -> None:
    mask = np.zeros((50, 50), bool)
    mask[5:35, 10:35] = True  # 30 rows, 25 columns
    assert is_taller_than_wide(mask, None)
    assert not is_taller_than_wide(mask, (0.1, 0.2))


def test_connected_component_and_fill_holes() -> None:
    mask = np.zeros((30, 30), bool)
    mask[2:12, 2:12] = True
    mask[5:8, 5:8] = False  # a hole
    mask[20:25, 20:25] = True  # another blob
    blob = connected_component(mask, (2, 2))
    assert blob.sum() == 100 - 9 and not blob[20:25, 20:25].any()
    assert fill_holes(blob).sum() == 100


def test_mask_from_probabilities_keeps_the_most_confident_blob_in_frame_coordinates() -> None:
    probabilities = np.zeros((32, 32), np.float32)
    probabilities[4:10, 4:10] = 0.7
    probabilities[20:28, 20:28] = 0.95
    mask = mask_from_probabilities(probabilities, (10, 5, 74, 69), (80, 90))
    assert mask.shape == (80, 90)
    x0, y0, x1, y1 = bounding_box(mask)
    assert 10 + 38 <= x0 <= 10 + 42 and 5 + 38 <= y0 <= 5 + 42  # the 0.95 blob, scaled x2, offset
    assert not mask[:30, :40].any()
    assert not mask_from_probabilities(np.zeros((8, 8), np.float32), (0, 0, 8, 8), (8, 8)).any()


def test_tensors_have_the_manifest_sizes() -> None:
    item = make_frame(2)
    grey = to_grey(item.frame)
    seg = Preprocessing(color_order="GRAY", crop="imaging-region", target_size=(96, 96),
                        normalization=Normalization(scale=1 / 255, mean=[0.4], std=[0.2]))
    assert segmentation_input(grey, item.region, seg).shape == (1, 96, 96)
    cls = Preprocessing(color_order="GRAY", crop="imaging-region", target_size=(64, 64),
                        normalization=Normalization(scale=1 / 255, mean=[0.4, 0.0], std=[0.2, 1.0]))
    tensor = classifier_input(grey, item.mask, cls)
    assert tensor.shape == (2, 64, 64) and tensor.dtype == np.float32
    assert set(np.unique(tensor[1])) <= {0.0, 1.0} and tensor[1].mean() > 0.2


def test_letterbox_keeps_the_aspect_centres_the_region_and_maps_back() -> None:
    frame = np.zeros((40, 100, 3), np.uint8)
    frame[..., 0], frame[..., 2] = 200, 50  # red 200, blue 50: BGR puts blue first
    preprocessing = Preprocessing(color_order="BGR", target_size=(40, 40), resize="letterbox", letterbox_fill=114)
    tensor, placement = region_input(frame, (10, 0, 90, 40), preprocessing)  # 80 x 40 -> 40 x 20, 10 px above/below

    assert tensor.shape == (3, 40, 40)
    assert placement.content == (0, 10, 40, 30) and placement.scale == (2.0, 2.0)
    assert np.all(tensor[:, :10] == 114) and np.all(tensor[:, 30:] == 114)
    assert np.allclose(tensor[0, 10:30], 50) and np.allclose(tensor[2, 10:30], 200)
    np.testing.assert_allclose(placement.to_frame(np.array([0.0, 40.0]), np.array([10.0, 30.0])), [[10, 90], [0, 40]])


def test_stretch_scales_each_axis_on_its_own() -> None:
    grey = np.full((60, 200), 90, np.uint8)
    tensor, placement = region_input(grey, (0, 10, 200, 60), Preprocessing(color_order="GRAY", target_size=(25, 50)))

    assert tensor.shape == (1, 25, 50) and np.allclose(tensor, 90)
    assert placement.scale == (4.0, 2.0) and placement.pad == (0, 0)
    np.testing.assert_allclose(placement.to_frame(np.array([50.0]), np.array([25.0])), [[200], [60]])
